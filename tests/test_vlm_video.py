"""The VLM with STORM as its video tower: a video's reduced tokens go in at its "<video>" placeholder, generate()
runs the tower once and decodes from the decoder's cache, the processor samples frames and expands the placeholder,
bad video input gets clear errors, and a saved folder loads with the Auto classes without ssmvl."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from isolated import run_isolated

from ssmvl.modeling import SsmVlmConfig, SsmVlmForConditionalGeneration, SsmVlmProcessor, StormVideoProcessor
from ssmvl.training.moving_shapes import build_moving_shapes_tokenizer, make_moving_shapes_qa_dataset

FRAMES, SIDE = 4, 16
STORM = dict(model_type="ssmvl_storm", image_size=SIDE, patch_size=8, hidden_size=32, num_hidden_layers=2,
             keep_ratios=[0.5, 0.5], num_memory_tokens=2, frame_layers=1, temporal_layers=1, num_frames=FRAMES,
             state_size=4, ssm_backend="torch")


@pytest.fixture(scope="module")
def tokenizer():
    return build_moving_shapes_tokenizer()


def make_config(tokenizer, decoder="mamba", **kw):
    special = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id)
    if decoder == "mamba":
        text = dict(model_type="ssmvl_mamba", hidden_size=32, num_hidden_layers=2, state_size=4,
                    ssm_backend="torch", **special)
    else:
        text = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256, **special)
    return SsmVlmConfig(vision_config=dict(STORM), text_config=text, projector_type="mlp",
                        image_token_id=tokenizer.convert_tokens_to_ids("<video>"), **kw)


def make_model(config, seed=0):
    torch.manual_seed(seed)
    return SsmVlmForConditionalGeneration(config).eval()


def clips(n=2, seed=0):
    ds = make_moving_shapes_qa_dataset(n, seed=seed, split="test", num_frames=8, image_size=SIDE, max_questions=1)
    return [np.asarray(row["video"], dtype=np.uint8) for row in ds], [row["question"] for row in ds]


def processor_for(config, tokenizer):
    return SsmVlmProcessor.from_config(config, StormVideoProcessor.from_config(config.vision_config), tokenizer)


def prompt(processor, question):
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def test_config_counts_storm_tokens_and_uses_the_video_placeholder(tokenizer):
    config = make_config(tokenizer)
    assert config.is_video and config.num_frames == FRAMES and config.image_token == "<video>"
    # 4 frames x 4 patches = 16 tokens, kept 0.5 then 0.5 -> 4 tokens per video
    assert config.num_image_tokens == config.vision_config.num_output_tokens(FRAMES) == 4
    with pytest.raises(ValueError, match="vision_feature_layer must be -1"):
        make_config(tokenizer, vision_feature_layer=-2)


@pytest.mark.parametrize("decoder", ["mamba", "llama"])
def test_video_tokens_at_the_placeholder_and_cached_generation_equals_full_passes(tokenizer, decoder):
    config = make_config(tokenizer, decoder)
    model, processor = make_model(config), processor_for(config, tokenizer)
    videos, questions = clips(2)
    inputs = processor(videos=videos, text=[prompt(processor, q) for q in questions], padding=True,
                       return_tensors="pt")
    assert inputs["pixel_values_videos"].shape == (2, FRAMES, 3, SIDE, SIDE)
    assert int((inputs["input_ids"] == config.image_token_id).sum()) == 2 * config.num_image_tokens
    calls = []
    model.model.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
        assert len(calls) == 1  # the tower runs once per generate call
        # cache-free reference: re-run the whole sequence for each new token
        seq, mask = inputs["input_ids"], inputs["attention_mask"]
        for _ in range(4):
            logits = model(input_ids=seq, attention_mask=mask, pixel_values_videos=inputs["pixel_values_videos"],
                           use_cache=False).logits[:, -1]
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    assert torch.equal(out, seq)


def test_video_content_changes_the_output(tokenizer):
    config = make_config(tokenizer)
    model, processor = make_model(config), processor_for(config, tokenizer)
    videos, questions = clips(2)
    text = prompt(processor, questions[0])
    a = processor(videos=[videos[0]], text=text, return_tensors="pt")
    b = processor(videos=[videos[1]], text=text, return_tensors="pt")
    with torch.no_grad():
        la, lb = model(**a).logits[:, -1], model(**b).logits[:, -1]
    assert not torch.allclose(la, lb)


def test_bad_video_inputs_name_the_problem(tokenizer):
    config = make_config(tokenizer)
    model, processor = make_model(config), processor_for(config, tokenizer)
    videos, questions = clips(1)
    inputs = processor(videos=videos, text=prompt(processor, questions[0]), return_tensors="pt")
    pv = inputs["pixel_values_videos"]
    with pytest.raises(ValueError, match=f"exactly {FRAMES} frames"):
        model(input_ids=inputs["input_ids"], pixel_values_videos=pv[:, :2])
    with pytest.raises(ValueError, match="takes videos"):
        model(input_ids=inputs["input_ids"], pixel_values=pv[:, 0])
    with pytest.raises(ValueError, match="not both"):
        model(input_ids=inputs["input_ids"], pixel_values=pv, pixel_values_videos=pv)
    with pytest.raises(ValueError, match="no images were given"):
        processor(text=prompt(processor, questions[0]))
    with pytest.raises(ValueError, match="images or videos, not both"):
        processor(images=videos, videos=videos, text="x")


def test_saved_video_vlm_loads_without_ssmvl(tokenizer, tmp_path):
    config = make_config(tokenizer)
    model, processor = make_model(config), processor_for(config, tokenizer)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    videos, questions = clips(1)
    np.save(tmp_path / "video.npy", videos[0])
    text = prompt(processor, questions[0])
    with torch.no_grad():
        expected = model(**processor(videos=videos, text=text, return_tensors="pt")).logits[0, -1, :5].tolist()
    code = f"""
import numpy as np, torch
from transformers import AutoModelForImageTextToText, AutoProcessor
model = AutoModelForImageTextToText.from_pretrained(r"{tmp_path}", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(r"{tmp_path}", trust_remote_code=True)
video = np.load(r"{tmp_path / 'video.npy'}")
with torch.no_grad():
    logits = model(**processor(videos=[video], text={text!r}, return_tensors="pt")).logits[0, -1, :5]
print("LOGITS", logits.tolist())
"""
    out = run_isolated(code, tmp_path).stdout
    got = [float(v) for v in out.split("LOGITS")[1].strip().strip("[]").split(",")]
    assert np.allclose(got, expected, atol=1e-5)
