"""compose_vlm (conversion/compose_vlm.py): a VLM from a vision checkpoint folder and a causal-LM folder. Tiny random
checkpoints saved to tmp folders act as the originals (SigLIP vision, full CLIP, ViT with pooler, ssmvl Vim; ssmvl
Mamba LM, Llama, GPT-2). Checked: parity numbers, the image token and the grown embeddings (old rows kept), the fresh
projector, the saved folder loading with AutoModelForImageTextToText + AutoProcessor (in process and without ssmvl)
and generating from an image and an "<image> question" prompt, the CLI, refusing a non-empty output folder, and the
errors for bad inputs. CPU, fp32; runs under transformers 5.0 and 5.24."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from isolated import run_isolated
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (AutoModelForImageTextToText, AutoProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel,
                          GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, SiglipImageProcessor,
                          SiglipVisionConfig, SiglipVisionModel, ViTConfig, ViTImageProcessor, ViTModel)

from ssmvl.conversion.compose_vlm import ComposeError, compose_vlm, ensure_image_token
from ssmvl.modeling.configuration_mamba_lm import MambaLMConfig
from ssmvl.modeling.configuration_vim import VimConfig
from ssmvl.modeling.configuration_vmamba import VMambaConfig
from ssmvl.modeling.modeling_mamba_lm import MambaLMForCausalLM
from ssmvl.modeling.modeling_vim import VimForImageClassification
from ssmvl.modeling.modeling_vmamba import VMambaForImageClassification
from ssmvl.training import cli
from ssmvl.training.shapes import IMAGE_TOKEN, build_shapes_tokenizer

SIDE = 32  # every tiny tower: 32 px, patch 8 -> 4 x 4 patches
VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=SIDE,
           patch_size=8)
SQUARE = {"height": SIDE, "width": SIDE}  # transformers 5.0's ViTImageProcessor refuses shortest_edge sizes


def _vision(folder, model, processor):
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def _language(folder, model, tokenizer):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """name -> folder of a tiny saved original (vision folders with their image processor, LMs with a tokenizer)."""
    root = tmp_path_factory.mktemp("originals")
    torch.manual_seed(0)
    plain = build_shapes_tokenizer(extra_special_tokens=())  # no <image>: compose_vlm adds it
    with_image = build_shapes_tokenizer()  # <image> is id 4 already
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    folders = {
        "siglip": _vision(root / "siglip", SiglipVisionModel(SiglipVisionConfig(**VIT)),
                          SiglipImageProcessor(size=SQUARE)),
        "clip": _vision(root / "clip", CLIPModel(CLIPConfig(vision_config=VIT, projection_dim=16, text_config=dict(
                            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                            vocab_size=50))),
                        CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size=SQUARE)),
        "vit": _vision(root / "vit", ViTModel(ViTConfig(**VIT)), ViTImageProcessor(size=SQUARE)),  # with a pooler
        "vim": _vision(root / "vim", VimForImageClassification(VimConfig(
                           hidden_size=32, num_hidden_layers=2, state_size=8, image_size=SIDE, patch_size=8,
                           num_labels=3, ssm_backend="torch")),
                       CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size=SQUARE)),
        "mamba": _language(root / "mamba", MambaLMForCausalLM(MambaLMConfig(
                               vocab_size=len(plain), hidden_size=32, num_hidden_layers=2, state_size=8,
                               ssm_backend="torch", **ids)), plain),
        "llama": _language(root / "llama", LlamaForCausalLM(LlamaConfig(
                               vocab_size=len(plain), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=128,
                               tie_word_embeddings=False, **ids)), plain),
        "llama_padded": _language(root / "llama_padded", LlamaForCausalLM(LlamaConfig(  # 14 spare rows, tied head
                                      vocab_size=len(plain) + 14, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=1,
                                      max_position_embeddings=128, tie_word_embeddings=True, **ids)), plain),
        "vmamba": _vision(root / "vmamba", VMambaForImageClassification(VMambaConfig(
                              embed_dim=16, depths=[1, 1], d_state=4, image_size=SIDE, patch_size=4, num_labels=3,
                              drop_path_rate=0.0, ssm_backend="torch")), ViTImageProcessor(size=SQUARE)),
        "gpt2": _language(root / "gpt2", GPT2LMHeadModel(GPT2Config(
                              vocab_size=len(with_image), n_embd=32, n_layer=2, n_head=2, n_positions=128, **ids)),
                          with_image),
    }
    no_processor = root / "siglip-no-processor"
    SiglipVisionModel(SiglipVisionConfig(**VIT)).save_pretrained(no_processor)
    folders["no_processor"] = str(no_processor)
    return folders


CASES = [("siglip", "mamba"), ("clip", "llama"), ("vit", "gpt2"), ("vim", "mamba")]


@pytest.fixture(scope="module")
def composed(ckpt, tmp_path_factory):
    """(vision, language) -> (out folder, report), each composed once."""
    root = tmp_path_factory.mktemp("composed")
    results = {}
    for vision, language in CASES:
        out = root / f"{vision}-{language}"
        results[vision, language] = (str(out), compose_vlm(ckpt[vision], ckpt[language], str(out)))
    return results


def _image(seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------------------------------
# composition and parity
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vision,language", CASES)
def test_parity_and_report(composed, vision, language):
    out, report = composed[vision, language]
    parity = report["parity"]
    for key in ("vision_hidden_states_max_abs_diff", "vision_features_max_abs_diff", "text_logits_max_abs_diff",
                "kept_embedding_rows_max_abs_diff"):
        assert parity[key] <= 1e-5, (key, parity[key])
    assert parity["passed"] and parity["text_logits_max_abs"] > 0
    assert parity["vision_features_shape"] == [2, 16, 32]  # 4 x 4 patches, CLS-like tokens dropped
    assert report["fresh_modules"] == ["model.projector"] and report["fresh_parameters"] > 0
    assert "freshly initialised" in report["projector"]
    assert json.loads(open(os.path.join(out, "parity_report.json")).read()) == report
    card = open(os.path.join(out, "README.md")).read()
    assert "freshly initialised" in card and "text_logits_max_abs_diff" in card


def test_dropped_weights_are_listed(composed):
    clip = composed["clip", "llama"][1]["vision"]
    assert clip["class"] == "CLIPVisionModel" and "vision part" in clip["taken"]
    assert clip["dropped_keys"] > 0 and all(k.startswith(("text_model.", "logit_scale", "text_projection",
                                                           "visual_projection")) for k in clip["dropped_key_examples"])
    vit = composed["vit", "gpt2"][1]["vision"]
    assert vit["dropped_key_examples"] == ["pooler.dense.bias", "pooler.dense.weight"]
    vim = composed["vim", "mamba"][1]["vision"]
    assert vim["class"] == "VimModel" and vim["dropped_key_examples"] == ["head.bias", "head.weight"]


@pytest.mark.parametrize("language", ["mamba", "llama"])
def test_image_token_added_and_embeddings_grown(ckpt, composed, language):
    vision = "siglip" if language == "mamba" else "clip"
    out, report = composed[vision, language]
    old = len(build_shapes_tokenizer(extra_special_tokens=()))
    assert report["image_token_added"] and report["embeddings_resized"]
    assert (report["vocab_size_before"], report["vocab_size_after"], report["image_token_id"]) == (old, old + 1, old)
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == old and len(processor.tokenizer) == old + 1
    model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True)
    assert model.config.image_token_id == old and model.config.text_config.vocab_size == old + 1
    original = (MambaLMForCausalLM if language == "mamba" else LlamaForCausalLM).from_pretrained(ckpt[language])
    for ours, theirs in ((model.get_input_embeddings(), original.get_input_embeddings()),
                         (model.get_output_embeddings(), original.get_output_embeddings())):
        assert ours.weight.shape[0] == old + 1
        assert torch.equal(ours.weight[:old], theirs.weight)  # the old rows are the original's
    if language == "llama":  # untied head: grown too, and still untied
        assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()


def test_existing_image_token_is_reused(composed):
    report = composed["vit", "gpt2"][1]
    assert not report["image_token_added"] and not report["embeddings_resized"]
    assert report["image_token_id"] == 4 and report["vocab_size_after"] == report["vocab_size_before"]


def test_padded_vocab_gives_the_token_a_spare_row(ckpt, tmp_path):
    """A vocabulary larger than the tokenizer (padded, tied head): the new token takes a spare row, nothing grows.
    With a VMamba tower read at its first stage (vision_feature_layer=-2: 8 x 8 tokens of width 16)."""
    report = compose_vlm(ckpt["vmamba"], ckpt["llama_padded"], str(tmp_path / "out"), vision_feature_layer=-2)
    old = len(build_shapes_tokenizer(extra_special_tokens=()))
    assert report["image_token_added"] and not report["embeddings_resized"]
    assert (report["image_token_id"], report["vocab_size_before"], report["vocab_size_after"]) == (old, old + 14,
                                                                                                   old + 14)
    parity = report["parity"]
    assert parity["passed"] and parity["vision_features_shape"] == [2, 64, 16]
    assert max(parity["vision_hidden_states_max_abs_diff"], parity["text_logits_max_abs_diff"]) <= 1e-5
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out", trust_remote_code=True)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_ensure_image_token_needs_the_token_itself():
    tokenizer = build_shapes_tokenizer(extra_special_tokens=())  # lower-cases: "CIRCLE" encodes as "circle"'s id
    circle = tokenizer.convert_tokens_to_ids("circle")
    assert tokenizer.encode("CIRCLE", add_special_tokens=False) == [circle]
    token_id, added = ensure_image_token(tokenizer, "CIRCLE")
    assert added and token_id == len(tokenizer) - 1 != circle
    assert tokenizer.encode("CIRCLE circle", add_special_tokens=False) == [token_id, circle]
    assert ensure_image_token(tokenizer, "CIRCLE") == (token_id, False)


# ---------------------------------------------------------------------------------------------------------------------
# the saved folder
# ---------------------------------------------------------------------------------------------------------------------
PROMPT = "<image> what color is the circle?"


@pytest.mark.parametrize("vision,language", [("siglip", "mamba"), ("clip", "llama")])
def test_saved_folder_generates(composed, vision, language):
    out = composed[vision, language][0]
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
    inputs = processor(images=_image(), text=PROMPT, return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, SIDE, SIDE)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == model.config.num_image_tokens == 16
    generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 4)
    assert isinstance(processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:])[0], str)


REMOTE = """
    import json, sys
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    result = {}
    for out in sys.argv[1:] or json.loads(open("folders.json").read()):
        processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
        model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
        inputs = processor(images=image, text="<image> what color is the circle?", return_tensors="pt")
        generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        result[out] = [type(model).__module__, generated[0].tolist()]
    print(json.dumps(result))
"""


def test_saved_folder_loads_without_ssmvl(composed, tmp_path):
    folders = [composed[case][0] for case in (("siglip", "mamba"), ("clip", "llama"))]
    (tmp_path / "folders.json").write_text(json.dumps(folders))
    remote = json.loads(run_isolated(REMOTE, cwd=tmp_path).stdout.strip().splitlines()[-1])
    for out in folders:
        module, generated = remote[out]
        assert module.startswith("transformers_modules")
        processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
        model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
        inputs = processor(images=_image(), text=PROMPT, return_tensors="pt")
        local = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert generated == local[0].tolist()


# ---------------------------------------------------------------------------------------------------------------------
# CLI, output folder, options
# ---------------------------------------------------------------------------------------------------------------------
def _snapshot(folder):
    return {name: (os.path.getmtime(os.path.join(folder, name)), open(os.path.join(folder, name), "rb").read())
            for name in sorted(os.listdir(folder))}


def test_cli_refuses_non_empty_out_and_overwrites_when_asked(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["compose-vlm", "--vision", ckpt["siglip"], "--language", ckpt["mamba"], "--out", str(out)]
    assert cli.main(argv + ["--projector", "resampler", "--projector-config", '{"num_queries": 4}']) == 0
    assert json.loads((out / "config.json").read_text())["projector_type"] == "resampler"
    before = _snapshot(out)
    capsys.readouterr()
    assert cli.main(argv) == 2  # default projector, same folder: refused
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err
    assert _snapshot(out) == before  # untouched
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]  # no staging folder left behind
    with pytest.raises(FileExistsError, match="not empty"):
        compose_vlm(ckpt["siglip"], ckpt["mamba"], str(out))
    assert _snapshot(out) == before
    assert cli.main(argv + ["--overwrite", "--dtype", "bfloat16"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["projector_type"] == "mlp" and config.get("dtype", config.get("torch_dtype")) == "bfloat16"


def test_cross_attention_fusion_leaves_fusion_fresh(ckpt, tmp_path):
    report = compose_vlm(ckpt["siglip"], ckpt["llama"], str(tmp_path / "out"), fusion="cross_attention",
                         projector_config={"num_layers": 1}, vision_feature_select_strategy="full")
    assert report["fresh_modules"] == ["fusion", "model.projector"] and report["parity"]["passed"]
    assert "cross-attention fusion" in report["projector"]


def test_push_to_local_hub(ckpt, tmp_path, hub_env):
    from huggingface_hub import HfApi

    repo = "ssmvl-test/composed-vlm"
    compose_vlm(ckpt["siglip"], ckpt["mamba"], str(tmp_path / "out"), push_to_hub=repo)
    files = set(HfApi(endpoint=hub_env["endpoint"]).list_repo_files(repo))
    assert {"config.json", "model.safetensors", "parity_report.json", "README.md", "processor_config.json",
            "tokenizer.json", "processing_ssm_vlm.py", "modeling_ssm_vlm.py"} <= files


# ---------------------------------------------------------------------------------------------------------------------
# clear errors
# ---------------------------------------------------------------------------------------------------------------------
def test_vision_folder_without_image_processor(ckpt, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ComposeError, match=r"No image processor .*--image-processor"):
        compose_vlm(ckpt["no_processor"], ckpt["mamba"], str(out))
    assert not out.exists()
    report = compose_vlm(ckpt["no_processor"], ckpt["mamba"], str(out), image_processor=ckpt["siglip"])
    assert report["parity"]["passed"]


def test_image_processor_of_another_size(ckpt, tmp_path):
    with pytest.raises(ComposeError, match=r"\(3, 64, 64\).*\(3, 32, 32\)"):
        compose_vlm(ckpt["siglip"], ckpt["mamba"], str(tmp_path / "out"),
                    image_processor=SiglipImageProcessor(size={"height": 64, "width": 64}))


def test_language_folder_that_is_not_a_causal_lm(ckpt, tmp_path):
    with pytest.raises(ComposeError, match="not a decoder-only causal language model"):
        compose_vlm(ckpt["siglip"], ckpt["vit"], str(tmp_path / "out"))  # said before "no tokenizer"
    with pytest.raises(ComposeError, match="not a vision tower"):
        compose_vlm(ckpt["llama"], ckpt["mamba"], str(tmp_path / "out"))


def test_bad_options_are_refused_before_loading(ckpt, tmp_path):
    with pytest.raises(ValueError, match="does not take"):
        compose_vlm(ckpt["siglip"], ckpt["mamba"], str(tmp_path / "out"), projector_config={"bogus": 1})
    with pytest.raises(ValueError, match="vision_feature_layer=7 is out of range"):
        compose_vlm(ckpt["siglip"], ckpt["mamba"], str(tmp_path / "out"), vision_feature_layer=7)
    with pytest.raises(ComposeError, match="patch_linear"):
        compose_vlm(ckpt["siglip"], ckpt["mamba"], str(tmp_path / "out"), projector_type="patch_linear")
    assert not (tmp_path / "out").exists()


def test_image_token_other_than_the_tokenizers(ckpt, tmp_path):
    with pytest.raises(ComposeError, match="names '<image>' as its image token.*image_token='<image>'"):
        compose_vlm(ckpt["vit"], ckpt["gpt2"], str(tmp_path / "out"), image_token="<img>")


def test_missing_folder(ckpt, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist.*--local-dir"):
        compose_vlm(str(tmp_path / "nowhere"), ckpt["mamba"], str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="language folder"):
        compose_vlm(ckpt["siglip"], str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert cli.main(["compose-vlm", "--vision", str(tmp_path / "nowhere"), "--language", ckpt["mamba"],
                     "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_checkpoint_lacking_weights_is_refused(ckpt, tmp_path):
    broken = tmp_path / "llama-broken"
    LlamaForCausalLM.from_pretrained(ckpt["llama"]).save_pretrained(broken)
    build_shapes_tokenizer(extra_special_tokens=()).save_pretrained(broken)
    weights = load_file(broken / "model.safetensors")
    del weights["model.layers.1.mlp.down_proj.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ComposeError, match=r"missing.*layers\.1\.mlp\.down_proj\.weight"):
        compose_vlm(ckpt["siglip"], str(broken), str(tmp_path / "out"))
