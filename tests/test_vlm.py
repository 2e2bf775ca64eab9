"""The composable VLM (SsmVlmConfig / SsmVlmForConditionalGeneration / SsmVlmProcessor): presets at tiny and real size,
towers, projectors, the LLaVA merge, cached decoding for both decoder kinds, left-padded batches, the vision tower run
once per generate(), cross-attention fusion, clear errors, save / load (also as remote code without ssmvl), LoRA.
Tiny random configs; CPU; fp32. Runs under every transformers release we support (`make test-oldest/-latest`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from isolated import run_isolated
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, CLIPImageProcessor

from ssmvl.modeling.configuration_ssm_vlm import PROJECTOR_TYPES, SsmVlmConfig
from ssmvl.modeling.modeling_ssm_vlm import SsmVlmForConditionalGeneration, SsmVlmModel
from ssmvl.modeling.processing_ssm_vlm import SsmVlmProcessor
from ssmvl.modeling.vlm_projectors import PROJECTORS, sincos_2d
from ssmvl.training.vlm_presets import VLM_PRESETS, vlm_preset

VOCAB, IMG, PAD, BOS, EOS = 64, 4, 0, 1, 2
SIDE = 32  # image side of every tiny tower (patch 8 -> a 4 x 4 grid)

TOWERS = {
    "vit": dict(model_type="vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                image_size=SIDE, patch_size=8),
    "siglip": dict(model_type="siglip_vision_model", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, image_size=SIDE, patch_size=8, vision_use_head=False),
    "clip": dict(model_type="clip_vision_model", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, image_size=SIDE, patch_size=8),
    "dinov2": dict(model_type="dinov2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=SIDE,
                   patch_size=8),
    "vim": dict(model_type="ssmvl_vim", hidden_size=32, num_hidden_layers=2, state_size=8, image_size=SIDE,
                patch_size=8),
    "vmamba": dict(model_type="ssmvl_vmamba", embed_dim=16, depths=[1, 1], d_state=4, image_size=SIDE, patch_size=4,
                   drop_path_rate=0.0),
}
DECODERS = {
    "mamba": dict(model_type="ssmvl_mamba", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8,
                  pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS),
    "llama": dict(model_type="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256, pad_token_id=PAD,
                  bos_token_id=BOS, eos_token_id=EOS, tie_word_embeddings=False),
}


def tiny_config(decoder="mamba", tower="vit", projector="mlp", **kw) -> SsmVlmConfig:
    kw.setdefault("projector_config", {"num_queries": 4, "num_heads": 4} if projector == "resampler" else None)
    vision = None if projector == "patch_linear" else TOWERS[tower]
    extra = dict(image_size=SIDE, patch_size=8) if projector == "patch_linear" else {}
    return SsmVlmConfig(vision_config=vision, text_config=DECODERS[decoder], projector_type=projector,
                        image_token_id=IMG, **extra, **kw)


def make_model(config, seed=0) -> SsmVlmForConditionalGeneration:
    torch.manual_seed(seed)
    return SsmVlmForConditionalGeneration(config).eval()


def text_ids(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(IMG + 1, VOCAB, (n,), generator=g)


def prompt(n_image_tokens, before=2, after=3, seed=0, images=1):
    """1-D ids: `before` text tokens, then per image its placeholders and `after` text tokens."""
    parts = [text_ids(before, seed)]
    for i in range(images):
        parts += [torch.full((n_image_tokens,), IMG), text_ids(after, seed + 100 + i)]
    return torch.cat(parts)


def left_pad(seqs):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = s
        mask[i, width - len(s):] = 1
    return ids, mask


def pixels(n=1, seed=0, side=SIDE):
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def greedy(model, ids, new=6, **kw):
    out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, **kw)
    return out[:, ids.shape[1]:]


@pytest.fixture(scope="module", params=["mamba", "llama"])
def decoder_model(request):
    return make_model(tiny_config(request.param))


# ---------------------------------------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------------------------------------
def test_projector_table_matches_config():
    assert set(PROJECTORS) == set(PROJECTOR_TYPES)


@pytest.mark.parametrize("name", VLM_PRESETS)
def test_preset_tiny_builds_and_runs(name):
    config = vlm_preset(name, "tiny")
    model = make_model(config)
    n = config.num_image_tokens
    ids = prompt(n, before=0).unsqueeze(0) if config.uses_image_placeholders else text_ids(5, 0)[None]
    ids[ids >= config.text_config.vocab_size] = BOS
    ids[ids == IMG] = config.image_token_id
    if config.is_video:  # STORM tower: one video of num_frames frames
        side = config.vision_config.image_size
        out = model(ids, pixel_values_videos=torch.randn(1, config.num_frames, 3, side, side), labels=ids)
    else:
        out = model(ids, pixel_values=pixels(1), labels=ids)
    assert out.logits.shape == (1, ids.shape[1], config.text_config.vocab_size)
    assert out.image_hidden_states.shape == (1, n, config.text_config.hidden_size)
    assert torch.isfinite(out.loss)


# documented real sizes (meta device: no memory): the seed systems' published sizes where there is one
REAL_PARAMS = {
    "vlm-qwen-vl-style": (9.4e9, 9.9e9),  # Qwen-VL: 9.6B (ViT-bigG 1.9B + Qwen-7B 7.7B + resampler)
    "vlm-cobra-style": (3.0e9, 3.4e9),  # SigLIP-so400m + Mamba-2.8B (Cobra adds DINOv2: 3.5B)
    "vlm-mamba": (1.0e8, 1.8e8),  # Vim 768 x 12 + Mamba LM 768 x 12 + BridgerFFN
    "vlm-mamba-fuyu": (7e7, 1.0e8),  # Mamba LM 768 x 12 + one Linear + BridgerFFN
    "vlm-ssm-bridge": (2.0e8, 3.0e8),  # ViT 768 x 12 (MQA) + bridge + 2 cross-attention layers + decoder 768 x 12
    "vlm-storm-video": (1.4e8, 1.7e8),  # STORM-small 384 (26.6M) + MLP + Mamba LM 768 x 24 (mamba-130m)
}


@pytest.mark.parametrize("name", VLM_PRESETS)
def test_preset_real_size_parameter_count(name):
    config = vlm_preset(name, "real")
    with torch.device("meta"):
        model = SsmVlmForConditionalGeneration(config)
    assert all(p.device.type == "meta" for p in model.parameters())
    # tied weights count once (transformers 5.0 does not tie them on the meta device: skip the tied copies by name)
    tied = set(model.all_tied_weights_keys)
    count = sum(p.numel() for n, p in model.named_parameters() if n not in tied)
    parts = {k: sum(p.numel() for n, p in model.named_parameters() if n.startswith(k + ".") and n not in tied)
             for k in ("model", "language_model")}
    print(f"{name}: {count / 1e6:.1f}M parameters (image side {parts['model'] / 1e6:.1f}M, decoder "
          f"{parts['language_model'] / 1e6:.1f}M), {config.num_image_tokens} image tokens per image")
    low, high = REAL_PARAMS[name]
    assert low <= count <= high, count


def test_preset_names_and_errors():
    assert vlm_preset("cobra-style").to_dict() == vlm_preset("vlm-cobra-style").to_dict()
    with pytest.raises(ValueError, match="Unknown VLM preset"):
        vlm_preset("nope")
    with pytest.raises(ValueError, match="size"):
        vlm_preset("vlm-mamba", "huge")


# ---------------------------------------------------------------------------------------------------------------------
# towers and projectors
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tower", sorted(TOWERS))
def test_vision_towers(tower):
    config = tiny_config("mamba", tower)
    model = make_model(config)
    feats = model.model.select_vision_features(pixels(2))
    assert feats.shape == (2, config.num_vision_tokens, config.vision_hidden_size)
    out = model.get_image_features(pixels(2))
    assert out.shape == (2, config.num_image_tokens, 32)
    expected = {"vit": 16, "siglip": 16, "clip": 16, "dinov2": 16, "vim": 16, "vmamba": 16}[tower]
    assert config.num_image_tokens == expected


def test_select_strategy_drops_cls_tokens():
    full = tiny_config("mamba", "vit", vision_feature_select_strategy="full")
    assert (full.num_image_tokens, tiny_config("mamba", "vit").num_image_tokens) == (17, 16)
    model = make_model(tiny_config("mamba", "vim"))
    tower_out = model.model.vision_tower(pixels(1), output_hidden_states=True).hidden_states[-1]  # (1, 17, D)
    middle = model.model.vision_tower.cls_token_index(16)
    assert middle == 8
    manual = torch.cat([tower_out[:, :middle], tower_out[:, middle + 1:]], dim=1)
    torch.testing.assert_close(model.model.select_vision_features(pixels(1)), manual)


def test_vmamba_feature_layer_picks_a_stage():
    config = tiny_config("mamba", "vmamba", vision_feature_layer=-2)  # stage 1: 8 x 8 grid, 16 channels
    assert (config.vision_grid, config.vision_hidden_size, config.num_image_tokens) == ((8, 8), 16, 64)
    assert make_model(config).get_image_features(pixels(1)).shape == (1, 64, 32)


def test_patch_linear_patchify_order():
    model = make_model(tiny_config("mamba", projector="patch_linear"))
    x = pixels(1)
    patches = model.model.projector.patchify(x)  # (1, 16, 8*8*3), pixels (row, col, channel) in each patch
    manual = x[0, :, 8:16, 16:24].permute(1, 2, 0).reshape(-1)  # patch row 1, col 2
    torch.testing.assert_close(patches[0, 1 * 4 + 2], manual)
    assert model.model.vision_tower is None and model.config.num_image_tokens == 16


def test_patch_linear_bridger_ffn_is_vlm_mamba_fuyu_path():
    """With bridger_ffn, the Fuyu tokens pass through a text-width BridgerFFN (VLM-Mamba's VLMamba.forward: processor
    -> bridger): Linear -> GELU -> Linear -> LayerNorm, computed here by hand from the weights."""
    model = make_model(tiny_config("mamba", projector="patch_linear", projector_config={"bridger_ffn": True}))
    proj, x = model.model.projector, pixels(2)
    assert [type(m).__name__ for m in proj.bridger.net] == ["Linear", "GELUActivation", "Linear", "LayerNorm"]
    with torch.no_grad():
        proj.pos_embed.normal_()
        tokens = proj.projection(proj.patchify(x)) + proj.pos_embed  # (2, 16, 32)
        net = proj.bridger.net
        hidden = F.gelu(tokens @ net[0].weight.T + net[0].bias) @ net[2].weight.T + net[2].bias
        expected = F.layer_norm(hidden, (32,), net[3].weight, net[3].bias, eps=1e-5)
        torch.testing.assert_close(model.get_image_features(x), expected)
        plain = make_model(tiny_config("mamba", projector="patch_linear"))  # Fuyu: linear in the pixels
        assert plain.model.projector.bridger is None
        torch.testing.assert_close(plain.get_image_features(2 * x) - plain.model.projector.pos_embed,
                                   2 * (plain.get_image_features(x) - plain.model.projector.pos_embed)
                                   - plain.model.projector.projection.bias)


def test_resampler_outputs_num_queries_with_resized_key_positions():
    config = tiny_config("llama", projector="resampler", projector_config={"num_queries": 4, "num_heads": 4})
    model = make_model(config)
    assert model.get_image_features(pixels(3)).shape == (3, 4, 32)
    pos = sincos_2d(8, 2, 3)  # (6, 8): first half encodes the column, second half the row
    torch.testing.assert_close(pos[4, :2], torch.tensor([math.sin(1.0), math.sin(1.0 / 100)]))  # row 1, col 1
    torch.testing.assert_close(pos[2, 4:6], torch.tensor([0.0, 0.0]))  # row 0: sin(0) = 0


# ---------------------------------------------------------------------------------------------------------------------
# the merge and the loss
# ---------------------------------------------------------------------------------------------------------------------
def test_masked_scatter_places_features_at_image_tokens():
    model = make_model(tiny_config("llama"))
    n = model.config.num_image_tokens
    seqs = [prompt(n, before=1, seed=1), prompt(n, before=3, after=2, seed=2, images=2)]
    ids, mask = left_pad(seqs)
    px = pixels(3, seed=5)
    seen = {}
    hook = model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"].detach().clone()), with_kwargs=True)
    with torch.no_grad():
        model(ids, pixel_values=px, attention_mask=mask)
        features = model.get_image_features(px)  # (3, n, D): image 0 -> row 0, images 1, 2 -> row 1
    hook.remove()
    manual = model.get_input_embeddings()(ids).detach().clone()
    width = ids.shape[1]
    start0 = width - len(seqs[0]) + 1
    manual[0, start0:start0 + n] = features[0]
    start1 = width - len(seqs[1]) + 3
    manual[1, start1:start1 + n] = features[1]
    manual[1, start1 + n + 2:start1 + 2 * n + 2] = features[2]
    torch.testing.assert_close(seen["embeds"], manual, rtol=0, atol=0)


def test_loss_shifts_labels_and_ignores_minus_100(decoder_model):
    n = decoder_model.config.num_image_tokens
    ids = prompt(n)[None]
    labels = ids.clone()
    labels[ids == IMG] = -100
    labels[:, :2] = -100
    out = decoder_model(ids, pixel_values=pixels(1), labels=labels)
    manual = torch.nn.functional.cross_entropy(out.logits[0, :-1], labels[0, 1:], ignore_index=-100)
    torch.testing.assert_close(out.loss, manual)


# ---------------------------------------------------------------------------------------------------------------------
# decoding: both decoder kinds
# ---------------------------------------------------------------------------------------------------------------------
def test_prefix_then_cached_steps_equal_one_full_forward(decoder_model):
    n = decoder_model.config.num_image_tokens
    ids = prompt(n, after=5)[None]
    px = pixels(1)
    with torch.no_grad():
        full = decoder_model(ids, pixel_values=px, use_cache=False).logits
        split = ids.shape[1] - 3
        out = decoder_model(ids[:, :split], pixel_values=px, use_cache=True)
        steps = [out.logits]
        cache = out.cache
        for t in range(split, ids.shape[1]):
            out = decoder_model(ids[:, t:t + 1], cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)
    kind = type(cache).__name__
    assert kind == ("SsmCache" if decoder_model.config.text_config.model_type == "ssmvl_mamba" else "DynamicCache")


def test_batched_left_padded_generate_equals_one_by_one(decoder_model):
    n = decoder_model.config.num_image_tokens
    seqs = [prompt(n, before=1, after=2, seed=3), prompt(n, before=4, after=5, seed=4)]
    px = pixels(2, seed=7)
    ids, mask = left_pad(seqs)
    batched = greedy(decoder_model, ids, attention_mask=mask, pixel_values=px)
    for i, s in enumerate(seqs):
        alone = greedy(decoder_model, s[None], pixel_values=px[i:i + 1])
        assert torch.equal(batched[i], alone[0]), (i, batched[i], alone[0])


def test_generate_with_and_without_cache_agree_and_run_the_tower_once(decoder_model):
    n = decoder_model.config.num_image_tokens
    ids = prompt(n, seed=9)[None]
    calls = []
    hook = decoder_model.model.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    cached = greedy(decoder_model, ids, pixel_values=pixels(1))
    assert len(calls) == 1
    no_cache = greedy(decoder_model, ids, pixel_values=pixels(1), use_cache=False)
    assert len(calls) == 2  # the image tokens of the prefill are carried to the later full passes
    hook.remove()
    assert torch.equal(cached, no_cache)


def test_generate_returns_cache_and_beam_search_runs(decoder_model):
    n = decoder_model.config.num_image_tokens
    ids = prompt(n, seed=11)[None]
    out = decoder_model.generate(ids, pixel_values=pixels(1), max_new_tokens=4, min_new_tokens=4,
                                 return_dict_in_generate=True, do_sample=False)
    assert out.sequences.shape[1] == ids.shape[1] + 4
    beams = decoder_model.generate(ids, pixel_values=pixels(1), max_new_tokens=4, min_new_tokens=4, num_beams=2,
                                   do_sample=False)
    assert beams.shape == (1, ids.shape[1] + 4)


# ---------------------------------------------------------------------------------------------------------------------
# cross-attention fusion (vlm_bridge.py)
# ---------------------------------------------------------------------------------------------------------------------
def test_cross_attention_with_image_prefix_generate():
    config = vlm_preset("vlm-ssm-bridge", "tiny")  # bridge ViT, SSM bridge, fusion + image prefix, text positions
    model = make_model(config)
    n, img = config.num_image_tokens, config.image_token_id
    seqs = [torch.cat([torch.full((n,), img), text_ids(k, k)]) for k in (2, 5)]
    ids, mask = left_pad(seqs)
    px = pixels(2, seed=3)
    with torch.no_grad():  # cached steps equal the full pass (text positions and image kv carried)
        full = model(ids, pixel_values=px, attention_mask=mask).logits
        out = model(ids[:, :-1], pixel_values=px, attention_mask=mask[:, :-1], use_cache=True)
        pos = (mask.cumsum(-1) - 1 - n)[:, -1:]  # the text position of the last token
        step = model(ids[:, -1:], attention_mask=mask, position_ids=pos, cache=out.cache, use_cache=True,
                     image_hidden_states=out.image_hidden_states)
    torch.testing.assert_close(step.logits[:, -1], full[:, -1], rtol=1e-4, atol=1e-5)
    calls = []
    hook = model.model.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    batched = greedy(model, ids, attention_mask=mask, pixel_values=px)
    hook.remove()
    assert len(calls) == 1
    for i, s in enumerate(seqs):
        assert torch.equal(batched[i], greedy(model, s[None], pixel_values=px[i:i + 1])[0])
    assert torch.equal(batched, greedy(model, ids, attention_mask=mask, pixel_values=px, use_cache=False))


def test_cross_attention_without_placeholders_on_a_llama_decoder():
    config = tiny_config("llama", fusion="cross_attention",
                         cross_attention_config={"num_layers": 1, "num_heads": 4, "image_prefix": False})
    assert not config.uses_image_placeholders
    model = make_model(config)
    ids, mask = left_pad([text_ids(3, 1), text_ids(6, 2)])
    px = pixels(2)
    cached = greedy(model, ids, attention_mask=mask, pixel_values=px)
    assert torch.equal(cached, greedy(model, ids, attention_mask=mask, pixel_values=px, use_cache=False))
    with torch.no_grad():  # the image reaches the logits
        with_image = model(ids, attention_mask=mask, pixel_values=px).logits
        assert not torch.allclose(with_image, model(ids, attention_mask=mask).logits, atol=1e-6)
    with pytest.raises(ValueError, match="exactly one image per sequence"):
        model(ids, pixel_values=pixels(3), attention_mask=mask)


def test_fusion_config_name_is_not_stored_as_fusion_config():
    # transformers >= 5.24 reads config.fusion_config in from_pretrained for its own runtime fusions
    config = tiny_config("llama", fusion="cross_attention", fusion_config={"num_heads": 4, "num_layers": 1})
    assert config.cross_attention_config["num_heads"] == 4
    assert "fusion_config" not in config.to_dict() and not hasattr(config, "fusion_config")


# ---------------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------------
def test_input_errors():
    model = make_model(tiny_config("mamba"))
    n = model.config.num_image_tokens
    one = prompt(n)[None]
    with pytest.raises(ValueError, match="no pixel_values"):
        model(one)
    with pytest.raises(ValueError, match="holds no image token"):
        model(text_ids(6, 0)[None], pixel_values=pixels(1))
    with pytest.raises(ValueError, match=r"more images \(2\) than image placeholders \(1\)"):
        model(one, pixel_values=pixels(2))
    with pytest.raises(ValueError, match=r"more image placeholders \(2\) in the text than images \(1\)"):
        model(prompt(n, images=2)[None], pixel_values=pixels(1))
    with pytest.raises(ValueError, match=f"{n - 1} image tokens but 1 image.*not expanded"):
        model(torch.cat([text_ids(2, 0), torch.full((n - 1,), IMG)])[None], pixel_values=pixels(1))
    with pytest.raises(ValueError, match="Image size 48x48 differs from the model's 32x32"):
        model(one, pixel_values=pixels(1, side=48))
    with pytest.raises(ValueError, match="1 channels but the model expects 3"):
        model(one, pixel_values=pixels(1)[:, :1])
    model.config.image_token_id = None
    with pytest.raises(ValueError, match="image_token_id is not set"):
        model(one, pixel_values=pixels(1))


def test_config_errors():
    with pytest.raises(ValueError, match="projector_type='nope' is unknown"):
        tiny_config(projector="nope")
    with pytest.raises(ValueError, match="fusion='late' is unknown"):
        tiny_config(fusion="late")
    with pytest.raises(ValueError, match="needs a vision tower but vision_config is None"):
        SsmVlmConfig(text_config=DECODERS["mamba"], projector_type="mlp")
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        SsmVlmConfig(text_config=DECODERS["mamba"], projector_type="patch_linear", image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="must be a square number"):
        tiny_config(projector="resampler", projector_config={"num_queries": 5, "num_heads": 4})
    with pytest.raises(ValueError, match="does not take"):
        tiny_config(projector="mlp", projector_config={"num_queries": 4})
    with pytest.raises(ValueError, match="vision_feature_layer=5 is out of range"):
        tiny_config(vision_feature_layer=5)
    with pytest.raises(ValueError, match="must be one int"):
        tiny_config(vision_feature_layer=[-1, -2])
    with pytest.raises(ValueError, match="image_size=64 differs from vision_config.image_size=32"):
        tiny_config(image_size=64)
    with pytest.raises(ValueError, match="without 'model_type'"):
        SsmVlmConfig(vision_config={"hidden_size": 8}, text_config=DECODERS["mamba"])


# ---------------------------------------------------------------------------------------------------------------------
# embeddings, freezing, gradient checkpointing, LoRA
# ---------------------------------------------------------------------------------------------------------------------
def test_resize_token_embeddings_keeps_the_tie():
    model = make_model(tiny_config("mamba"))
    model.resize_token_embeddings(VOCAB + 8)
    assert model.config.text_config.vocab_size == VOCAB + 8
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model(prompt(16)[None], pixel_values=pixels(1)).logits.shape[-1] == VOCAB + 8


def test_freeze_vision_tower_and_gradient_checkpointing():
    model = make_model(tiny_config("llama", freeze_vision_tower=True)).train()
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    model.gradient_checkpointing_enable()
    ids = prompt(16)[None]
    model(ids, pixel_values=pixels(1), labels=ids).loss.backward()
    assert model.model.projector.linear_1.weight.grad is not None
    assert model.language_model.model.layers[0].self_attn.q_proj.weight.grad is not None


def test_lora_on_decoder_and_projector_changes_outputs():
    from peft import LoraConfig, get_peft_model

    model = make_model(tiny_config("mamba"))
    ids = prompt(16)[None]
    with torch.no_grad():
        before = model(ids, pixel_values=pixels(1)).logits
    targets = (r".*(language_model\.backbone\.layers\.\d+\.mixer\.(in_proj|x_proj|dt_proj|out_proj)"
               r"|projector\.linear_\d)")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                  init_lora_weights=False))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_modules() if n.endswith(".lora_A")}
    assert any("projector.linear_1" in n for n in adapted) and any("mixer.x_proj" in n for n in adapted)
    with torch.no_grad():
        after = peft_model(input_ids=ids, pixel_values=pixels(1)).logits
    assert not torch.allclose(before, after, atol=1e-4)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    out = peft_model.generate(input_ids=ids, pixel_values=pixels(1), max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3


# ---------------------------------------------------------------------------------------------------------------------
# save / load, processor, remote code without ssmvl
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder", ["mamba", "llama"])
def test_save_load_round_trip(decoder, tmp_path):
    model = make_model(tiny_config(decoder, "vim"))
    ids, px = prompt(16)[None], pixels(1)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_ssm_vlm.SsmVlmForConditionalGeneration"
    assert config["auto_map"]["AutoModel"] == "modeling_ssm_vlm.SsmVlmModel"
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, SsmVlmForConditionalGeneration)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, pixel_values=px).logits, model(ids, pixel_values=px).logits,
                                   rtol=0, atol=0)
    if decoder == "mamba":  # the decoder's tied head survives the round trip
        assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight
    image_side = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(image_side, SsmVlmModel)
    with torch.no_grad():
        torch.testing.assert_close(image_side(px).last_hidden_state, model.get_image_features(px), rtol=0, atol=0)


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]  # ids 0..4: PAD, BOS, EOS, unk, IMG
    words = "a an the red green blue circle square triangle what color shape is it user assistant : ?".split()
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", padding_side="left")
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
        "{% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %}assistant :"
        "{% endif %}")
    return tokenizer


def tiny_processor(config):
    image_processor = CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
    return SsmVlmProcessor.from_config(config, image_processor, tiny_tokenizer())


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.random((40, 48, 3)) * 255).astype("uint8") for _ in range(n)]


def test_processor_expands_checks_and_templates(tmp_path):
    config = tiny_config("mamba")
    processor = tiny_processor(config)
    assert processor.image_token_id == IMG == config.image_token_id
    batch = processor(images=images(3), text=["<image> what color is it ?", "<image> a <image> circle"],
                      padding=True)
    assert batch["pixel_values"].shape == (3, 3, SIDE, SIDE)
    assert (batch["input_ids"] == IMG).sum(-1).tolist() == [16, 32]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is it ?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "user : <image> what color is it ? assistant :"
    model = make_model(config)
    out = model.generate(**processor(images=images(1), text=text), max_new_tokens=3, do_sample=False)
    assert len(processor.batch_decode(out[:, -3:])) == 1
    for kwargs, message in [
        (dict(images=images(2), text="<image> what"), r"More images \(2\) than '<image>' placeholders \(1\)"),
        (dict(images=images(1), text="<image> <image> a"), r"More '<image>' placeholders \(2\) than images \(1\)"),
        (dict(text="<image> what"), "no images were given"),
        (dict(images=images(1), text="what color"), "holds no '<image>' placeholder"),
        (dict(images=[images(2), []], text=["<image> a", "<image> b"]), "do not match"),
        (dict(images=images(1), text="<image> what color is it", truncation=True, max_length=8), "truncation"),
    ]:
        with pytest.raises(ValueError, match=message):
            processor(**kwargs)
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    word_level = models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>")
    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(word_level), unk_token="<unk>")
    with pytest.raises(ValueError, match=r"tokenizer.add_tokens\(\['<image>'\], special_tokens=True\)"):
        SsmVlmProcessor(processor.image_processor, bare, num_image_tokens=16)
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert (reloaded.num_image_tokens, reloaded.image_token) == (16, "<image>")
    assert reloaded.chat_template == processor.chat_template


def test_processor_without_placeholders_for_cross_attention():
    config = tiny_config("llama", fusion="cross_attention",
                         cross_attention_config={"num_layers": 1, "num_heads": 4, "image_prefix": False})
    processor = tiny_processor(config)
    assert processor.num_image_tokens == 0
    batch = processor(images=images(2), text=["<image> what color", "a circle"], padding=True)
    assert not (batch["input_ids"] == IMG).any() and batch["pixel_values"].shape[0] == 2
    with pytest.raises(ValueError, match="exactly one image"):
        processor(images=images(1), text=["a", "b"], padding=True)


REMOTE = """
import json, torch
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor
results = {}
for name in ("vim-mamba", "ssm-bridge"):
    model = AutoModelForImageTextToText.from_pretrained(name, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(name, trust_remote_code=True)
    inputs = torch.load(name + "/inputs.pt")
    batch = processor(images=[im.numpy() for im in inputs["images"]], text=inputs["texts"], padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    generated = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    torch.save({"input_ids": batch["input_ids"], "logits": logits, "generated": generated}, name + "/remote.pt")
    results[name] = [type(model).__module__, type(processor).__name__,
                     type(AutoModel.from_pretrained(name, trust_remote_code=True)).__name__]
print(json.dumps(results))
"""


def test_remote_code_without_ssmvl(tmp_path, monkeypatch):
    # remote code (the modeling files without the package) runs the eager torch scan: the package's C++ CPU scan
    # (kernels/cpu_scan.py) is registered by `import ssmvl.modeling` only. The local model runs the same scan, so
    # that the two agree to 1e-6 and generate the same tokens (the kernel agrees with it to fp32 rounding)
    monkeypatch.setenv("SSMVL_CPU_SCAN_KERNEL", "0")
    local = {}
    for name, config in (("vim-mamba", tiny_config("mamba", "vim")), ("ssm-bridge", vlm_preset("vlm-ssm-bridge"))):
        config.image_token_id = IMG
        model = make_model(config)
        processor = tiny_processor(config)
        model.save_pretrained(tmp_path / name)
        processor.save_pretrained(tmp_path / name)
        texts = ["<image> what color is it ?", "<image> what shape is the red circle ?"]
        inputs = {"images": images(2, seed=1), "texts": texts}
        torch.save({"images": [torch.from_numpy(im) for im in inputs["images"]], "texts": texts},
                   tmp_path / name / "inputs.pt")
        batch = processor(images=inputs["images"], text=texts, padding=True)
        with torch.no_grad():
            local[name] = (batch["input_ids"], model(**batch).logits,
                           model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False))
    proc = run_isolated(REMOTE, cwd=tmp_path)
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (ids, logits, generated) in local.items():
        module, processor_class, base_class = results[name]
        assert module.startswith("transformers_modules") and processor_class == "SsmVlmProcessor"
        assert base_class == "SsmVlmModel"
        remote = torch.load(tmp_path / name / "remote.pt")
        assert torch.equal(remote["input_ids"], ids)
        torch.testing.assert_close(remote["logits"], logits, rtol=0, atol=1e-6)
        assert torch.equal(remote["generated"], generated)


def test_image_text_to_text_pipeline(tmp_path):
    from PIL import Image
    from transformers import pipeline

    config = tiny_config("llama")
    make_model(config).save_pretrained(tmp_path)
    tiny_processor(config).save_pretrained(tmp_path)
    pipe = pipeline("image-text-to-text", model=str(tmp_path), trust_remote_code=True)
    out = pipe(images=Image.fromarray(images(1)[0]), text="<image> what color is it ?", max_new_tokens=2)
    assert out[0]["input_text"] == "<image> what color is it ?"
