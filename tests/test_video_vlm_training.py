"""The combined video pipeline's two-stage recipe (training/video_vlm.py) on a handful of tiny clips: the dual encoder
takes STORM as its video tower, stage 1 (sigmoid loss on captions) and stage 2 (LoRA on the decoder + the projector)
lower their losses, stage 2 starts from the stage-1 tower (and keeps it frozen), and the saved VLM answers the same
with AutoModelForCausalLM / AutoProcessor (trust_remote_code) where ssmvl is not installed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from isolated import run_isolated

from ssmvl.training.dual_encoder import DualEncoderCollator
from ssmvl.training.moving_shapes import (CLIP_QUESTION_TYPES, build_moving_shapes_tokenizer,
                                          make_moving_shapes_qa_dataset)
from ssmvl.training.video_vlm import (STAGE1_SUBDIR, align_video_tower, clip_rows, storm_video_tower_config,
                                      storm_video_vlm, train_video_qa, train_video_qa_pipeline,
                                      video_caption_dual_encoder, video_caption_processor, video_vlm_processor)
from ssmvl.training.vlm import VqaCollator, answer_questions

FRAMES, SIDE = 4, 16  # 4 frames x 4 patches = 16 tokens -> pooled 2 frames -> 8 -> kept 0.5 -> 4 video tokens


def tiny_tower():
    return storm_video_tower_config(num_frames=FRAMES, image_size=SIDE, patch_size=8, hidden=16, keep_ratio=0.5,
                                    temporal_pool=2, num_memory_tokens=2, state_size=4, ssm_backend="torch")


@pytest.fixture(scope="module")
def tokenizer():
    return build_moving_shapes_tokenizer()


@pytest.fixture(scope="module")
def data():
    kw = dict(num_frames=8, image_size=SIDE, max_questions=3)
    return (make_moving_shapes_qa_dataset(16, seed=0, split="train", **kw),
            make_moving_shapes_qa_dataset(4, seed=1, split="test", **kw))


def rows_of(ds, n):
    return [ds[i] for i in range(min(n, len(ds)))]


def test_dual_encoder_takes_storm_as_its_video_tower(tokenizer, data):
    torch.manual_seed(0)
    dual = video_caption_dual_encoder(tokenizer, tiny_tower(), text_hidden=16, text_layers=1, projection_dim=16)
    processor = video_caption_processor(tokenizer, dual.config.vision_config)
    batch = DualEncoderCollator(processor, "video", "caption")(rows_of(clip_rows(data[0]), 4))
    assert batch["pixel_values"].shape == (4, FRAMES, 3, SIDE, SIDE)
    out = dual(**batch)
    assert out.logits_per_image.shape == (4, 4) and torch.isfinite(out.loss)
    videos = batch.pop("pixel_values")
    torch.testing.assert_close(dual(**batch, pixel_values_videos=videos).loss, out.loss)  # the video processor's name
    with pytest.raises(ValueError, match="takes videos"):
        dual.get_image_features(videos[:, 0])
    with pytest.raises(ValueError, match="not both"):
        dual.get_image_features(videos, pixel_values_videos=videos)


def _loss(model, batch):
    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss)


def test_both_stages_lower_their_loss_and_stage2_starts_from_the_stage1_tower(tokenizer, data, tmp_path):
    train, _ = data
    clips = clip_rows(train)
    torch.manual_seed(0)
    dual = video_caption_dual_encoder(tokenizer, tiny_tower(), text_hidden=16, text_layers=1, projection_dim=16)
    processor = video_caption_processor(tokenizer, dual.config.vision_config)
    batch1 = DualEncoderCollator(processor, "video", "caption")(rows_of(clips, 8))
    before1 = _loss(dual, batch1)
    fresh_tower = {k: v.clone() for k, v in dual.vision_model.state_dict().items()}
    stage1 = align_video_tower(dual, processor, clips, tmp_path / "s1", max_steps=8, lr=1e-2, batch_size=8,
                               logging_steps=2, save=False, disable_tqdm=True)
    assert all(np.isfinite(stage1["loss_history"]))
    assert _loss(stage1.model, batch1) < before1
    tower = stage1.model.vision_model.state_dict()
    assert any(not torch.equal(tower[k], fresh_tower[k]) for k in tower)  # stage 1 trained the tower

    model = storm_video_vlm(tokenizer, video_tower=stage1.model, hidden=32, layers=1)
    vlm_tower = model.model.vision_tower.state_dict()
    assert all(torch.equal(vlm_tower[k], tower[k]) for k in tower)  # stage 2 starts from the stage-1 tower
    vlm_processor = video_vlm_processor(model, tokenizer)
    batch2 = VqaCollator(vlm_processor)(rows_of(train, 8))
    assert batch2["pixel_values_videos"].shape == (8, FRAMES, 3, SIDE, SIDE)
    before2 = _loss(model, batch2)
    stage2 = train_video_qa(model, vlm_processor, train, tmp_path / "s2", max_steps=8, lr=1e-2, batch_size=8,
                            lora_r=4, logging_steps=2, disable_tqdm=True)
    assert all(np.isfinite(stage2["loss_history"]))
    assert _loss(stage2.model, batch2) < before2
    after = stage2.model.model.vision_tower.state_dict()
    assert all(torch.equal(after[k], tower[k]) for k in tower)  # the tower stayed frozen
    assert not any("lora" in k for k in stage2.model.state_dict())  # merged: a plain model was saved


def test_stage2_with_a_trainable_tower_trains_it_beside_lora(tokenizer, data, tmp_path):
    """freeze_tower=False with LoRA: the tower is trained in full (PEFT's modules_to_save) and merged back into a plain
    model whose keys are the base model's."""
    train, _ = data
    torch.manual_seed(0)
    model = storm_video_vlm(tokenizer, tower_config=tiny_tower(), hidden=32, layers=1)
    keys = set(model.state_dict())
    tower = {k: v.clone() for k, v in model.model.vision_tower.state_dict().items()}
    stage2 = train_video_qa(model, video_vlm_processor(model, tokenizer), train, tmp_path / "s2", max_steps=3, lr=1e-2,
                            batch_size=8, lora_r=4, freeze_tower=False, logging_steps=1, disable_tqdm=True)
    assert all(np.isfinite(stage2["loss_history"]))
    after = stage2.model.model.vision_tower.state_dict()
    assert any(not torch.equal(after[k], tower[k]) for k in tower)  # the tower was trained
    assert set(stage2.model.state_dict()) == keys  # no lora_ / modules_to_save copies left


def test_pipeline_reports_and_its_saved_model_loads_without_ssmvl(tokenizer, data, tmp_path):
    train, test = data
    report = train_video_qa_pipeline(tmp_path / "run", train, test, tokenizer=tokenizer, tower_config=tiny_tower(),
                                     stage1_steps=4, stage1_batch_size=8, stage2_steps=4, stage2_batch_size=8,
                                     lora_r=4, decoder_hidden=32, decoder_layers=1)
    assert report["tokens"] == {"frames": FRAMES, "patches_per_frame": 4, "frames_x_patches": 16,
                                "after_temporal_pool": 8, "video_tokens_to_decoder": 4}
    assert 0.0 <= report["stage1"]["video_to_caption_recall@1"] <= 1.0
    assert report["stage1"]["retrieval"]["num_queries"] >= 2
    assert 0.0 <= report["stage2"]["exact_match"] <= 1.0
    assert set(report["stage2"]["exact_match_per_type"]) <= set(CLIP_QUESTION_TYPES)
    assert report["stage2"]["num_questions"] == len(test)
    assert (tmp_path / "run" / STAGE1_SUBDIR / "config.json").is_file()

    model, processor = report["model"], report["processor"]
    videos, questions = [np.asarray(v) for v in test[:3]["video"]], list(test[:3]["question"])
    expected = answer_questions(model, processor, videos, questions)
    np.save(tmp_path / "videos.npy", np.stack(videos))
    code = f"""
import json, numpy as np
from transformers import AutoModelForCausalLM, AutoProcessor
folder = {str(tmp_path / "run")!r}
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
tok = processor.tokenizer
tok.padding_side = "left"
content = lambda q: [{{"type": "text", "text": q}}, {{"type": "video"}}]
prompts = [tok.apply_chat_template([{{"role": "user", "content": content(q)}}], add_generation_prompt=True,
                                   tokenize=False) for q in {questions!r}]
enc = processor(videos=list(np.load({str(tmp_path / "videos.npy")!r})), text=prompts, padding=True,
                return_tensors="pt")
out = model.generate(**enc, max_new_tokens=6, do_sample=False, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id)
print("ANSWERS", json.dumps([tok.decode(r, skip_special_tokens=True).strip()
                             for r in out[:, enc["input_ids"].shape[1]:]]))
"""
    out = run_isolated(code, tmp_path).stdout
    assert json.loads(out.split("ANSWERS", 1)[1]) == expected
