"""SSM-bridge parts (modeling/vlm_bridge.py) and their converter (conversion/convert_ssm_bridge_to_hf.py): parity with
the installed ``ssm-bridge`` 0.0.2 package (skipped where it is not installed), step-by-step == full pass, strict key
accounting, and every upstream defect of docs/ssm_bridge.md reproduced under its compat flag and absent without it."""

from __future__ import annotations

import json
import types

import pytest
import torch
import torch.nn.functional as F

from ssmvl.conversion import convert_ssm_bridge_to_hf as conv
from ssmvl.modeling.vlm_bridge import (
    BridgeBlock,
    BridgeDecoderConfig,
    BridgeDecoderForCausalLM,
    BridgeDenseSsm,
    BridgeVisionConfig,
    BridgeVisionModel,
    CrossModalFusion,
    SsmBridgeProjector,
    resolve_fusion_config,
    resolve_projector_config,
    text_position_ids,
)

try:
    from ssm_bridge import model as upstream
except ImportError:  # pragma: no cover - the dev extra installs it
    upstream = None
needs_upstream = pytest.mark.skipif(upstream is None, reason="ssm-bridge==0.0.2 is not installed (pip install "
                                                             "ssm-bridge==0.0.2: pure Python, needs only torch)")

# a tiny upstream VLMConfig: every width / count differs so that a mix-up shows
TINY = dict(img_size=32, patch_size=8, vision_embed_dim=48, vision_num_layers=2, vision_num_heads=4, vocab_size=97,
            text_embed_dim=64, text_num_layers=2, text_num_heads=4, text_kv_heads=2, max_seq_length=32,
            ssm_state_dim=8, ssm_hidden_dim=24, ssm_num_layers=2, ssm_dropout=0.1, cross_attn_layers=2,
            cross_attn_heads=4, dropout=0.1, layer_norm_eps=1e-5)


def ns(projector_config=None, fusion_config=None, vision_hidden=32, text_hidden=24):
    """The attributes the bridge parts read, on a plain namespace (no VLM config needed)."""
    return types.SimpleNamespace(vision_config=types.SimpleNamespace(hidden_size=vision_hidden),
                                 text_config={"hidden_size": text_hidden}, projector_config=projector_config,
                                 fusion_config=fusion_config)


def tiny_decoder_config(**kw):
    base = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                intermediate_size=64, max_position_embeddings=48)
    return BridgeDecoderConfig(**{**base, **kw})


try:
    from ssmvl.modeling.modeling_ssm_vlm import SsmVlmForConditionalGeneration
except ImportError:  # pragma: no cover - the VLM family is part of the package
    SsmVlmForConditionalGeneration = None
needs_vlm = pytest.mark.skipif(SsmVlmForConditionalGeneration is None, reason="modeling/modeling_ssm_vlm.py is absent")


@pytest.fixture(scope="module")
def tiny_pair():
    """(upstream EnhancedVLM, its state dict, our parts composed as upstream (ComposedBridgeVLM)), eval mode."""
    if upstream is None:
        pytest.skip("ssm-bridge==0.0.2 is not installed")
    torch.manual_seed(0)
    up = upstream.EnhancedVLM(upstream.VLMConfig(**TINY)).eval()
    sd = up.state_dict()
    config = conv.config_from_enhanced_vlm(TINY, target="parts")
    ours = conv.build_model(config).eval()
    ours.load_state_dict(conv.convert_state_dict(sd, config), strict=True)
    return up, sd, ours


@pytest.fixture(scope="module")
def tiny_vlm(tiny_pair):
    """The same weights converted to SsmVlmForConditionalGeneration."""
    if SsmVlmForConditionalGeneration is None:
        pytest.skip("modeling/modeling_ssm_vlm.py is absent")
    config = conv.config_from_enhanced_vlm(TINY, target="vlm")
    model = conv.build_model(config).eval()
    assert isinstance(model, SsmVlmForConditionalGeneration)
    model.load_state_dict(conv.convert_state_dict(tiny_pair[1], config), strict=True)
    return model


def inputs(seed=0, batch=2, seq=7):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, TINY["img_size"], TINY["img_size"], generator=g),
            torch.randint(0, TINY["vocab_size"], (batch, seq), generator=g))


# ---------------------------------------------------------------------------------------------------------------------
# parity with the installed package
# ---------------------------------------------------------------------------------------------------------------------
@needs_upstream
def test_upstream_defaults_match_package():
    assert conv.UPSTREAM_DEFAULTS == {k: getattr(upstream.VLMConfig(), k) for k in conv.UPSTREAM_DEFAULTS}
    assert set(conv.UPSTREAM_DEFAULTS) == set(upstream.VLMConfig.__dataclass_fields__)


@needs_upstream
def test_full_model_logits_parity(tiny_pair):
    up, sd, ours = tiny_pair
    px, ids = inputs()
    with torch.no_grad():
        ref, got = up(px, ids), ours(px, ids)
    assert got.shape == ref.shape == (2, 7, TINY["vocab_size"])
    assert (got - ref).abs().max().item() <= 1e-5
    report = conv.parity_report(ours, sd, TINY)
    assert report["passed"] and report["max_abs_diff"] <= 1e-5 and report["argmax_agreement"] == 1.0


@needs_upstream
@needs_vlm
def test_vlm_logits_and_greedy_generation_parity(tiny_pair, tiny_vlm):
    """SsmVlmForConditionalGeneration with num_image_tokens placeholders in front of the text computes upstream's
    logits; its cached greedy generate() (fusion of each new token, text positions) equals upstream's greedy loop."""
    up, sd, _ = tiny_pair
    report = conv.parity_report(tiny_vlm, sd, TINY)
    assert report["model"] == "SsmVlmForConditionalGeneration"
    assert report["passed"] and report["max_abs_diff"] <= 1e-5 and report["argmax_agreement"] == 1.0
    assert report["image_token_logit_max"] <= conv.IMAGE_TOKEN_LOGIT_BIAS + 100 and not report["argmax_is_image_token"]
    assert tiny_vlm.config.image_token_id == TINY["vocab_size"] == tiny_vlm.config.text_config.vocab_size - 1
    px, _ = inputs(6)
    n = tiny_vlm.config.num_image_tokens
    assert n == (TINY["img_size"] // TINY["patch_size"]) ** 2 + 1  # cls + patches, as upstream's bridge reads
    prompt = torch.cat([torch.full((2, n), tiny_vlm.config.image_token_id), torch.zeros(2, 1, dtype=torch.long)], 1)
    with torch.no_grad():
        gen = tiny_vlm.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), pixel_values=px,
                                max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=TINY["vocab_size"])
        seq = torch.zeros(2, 1, dtype=torch.long)  # upstream's generate starts from token 0
        for _ in range(6):
            seq = torch.cat([seq, up(px, seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(gen[:, n:], seq)


@needs_upstream
def test_parity_with_large_activations():
    """Weights scaled up (logits ~10, the SSM state in its clamp, fusion outputs ~100): still equal. Upstream's
    operations in upstream's order make the conversion bit-exact on CPU; the test allows 1e-5."""
    torch.manual_seed(0)
    up = upstream.EnhancedVLM(upstream.VLMConfig(**TINY)).eval()
    with torch.no_grad():
        for name, p in up.named_parameters():
            if (name.endswith("weight") and p.dim() == 2) or name.endswith(".A"):
                p.mul_(3)
    sd = up.state_dict()
    for target in ("parts", "vlm") if SsmVlmForConditionalGeneration is not None else ("parts",):
        config = conv.config_from_enhanced_vlm(TINY, target=target)
        model = conv.build_model(config)
        model.load_state_dict(conv.convert_state_dict(sd, config), strict=True)
        report = conv.parity_report(model, sd, TINY)
        assert report["max_abs_logit"] > 5 and report["max_abs_diff"] <= 1e-5, report


@needs_upstream
def test_component_parity(tiny_pair):
    up, _, ours = tiny_pair
    px, ids = inputs(1)
    with torch.no_grad():
        v_ref = up.vit(px)
        v = ours.vision_tower(px, output_hidden_states=True)
        torch.testing.assert_close(v.last_hidden_state, v_ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(v.hidden_states[-1], v_ref, rtol=0, atol=0)  # vision_feature_layer=-1 is it
        b_ref = up.ssm_bridge(v_ref)
        torch.testing.assert_close(ours.multi_modal_projector(v_ref), b_ref, rtol=0, atol=1e-5)
        text = up.token_embed(ids) + up.pos_embed[:, : ids.shape[1]]
        torch.testing.assert_close(ours.language_model.embed(ids), text, rtol=0, atol=0)
        f_ref = text
        for layer in up.cross_attn_layers:
            f_ref = layer(f_ref, b_ref, b_ref)
        torch.testing.assert_close(ours.fusion(text, b_ref), f_ref, rtol=0, atol=1e-5)


@needs_upstream
def test_loss_equals_upstream_with_shifted_targets(tiny_pair):
    """Upstream's loss is not shifted: its ``targets`` are our labels shifted by one (the last one ignored)."""
    up, _, ours = tiny_pair
    px, ids = inputs(2)
    with torch.no_grad():
        targets = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)
        _, ref_loss = up(px, ids, targets)
        image = ours.image_tokens(px)
        text = ours.fusion(ours.language_model.embed(ids), image)
        labels = torch.cat([torch.full(image.shape[:2], -100), ids], dim=1)
        labels[:, image.shape[1]] = -100  # upstream does not predict the first text token from the image tokens
        out = ours.language_model(inputs_embeds=torch.cat([image, text], 1), inputs_embeds_include_positions=True,
                                  labels=labels, use_cache=False)
    torch.testing.assert_close(out.loss, ref_loss, rtol=0, atol=1e-5)


@needs_upstream
def test_convert_cli_check_only(tmp_path, capsys):
    torch.manual_seed(3)
    sd = upstream.EnhancedVLM(upstream.VLMConfig(**TINY)).state_dict()
    torch.save({"model": sd}, tmp_path / "ckpt.pt")
    heads = {k: TINY[k] for k in ("vision_num_heads", "text_num_heads", "cross_attn_heads")}
    (tmp_path / "cfg.json").write_text(json.dumps(heads))
    report = conv.main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--upstream-config", str(tmp_path / "cfg.json"),
                        "--check-only"])
    assert report["passed"] and report["max_abs_diff"] <= 1e-5
    assert {k: report["upstream_config"][k] for k in TINY} == TINY  # shapes + the JSON give back the config
    with pytest.raises(SystemExit):
        conv.main(["--checkpoint", str(tmp_path / "ckpt.pt")])  # neither --out nor --check-only


@needs_upstream
@needs_vlm
def test_convert_cli_saves_a_vlm_that_loads_without_ssmvl(tmp_path):
    from isolated import run_isolated

    torch.manual_seed(4)
    up = upstream.EnhancedVLM(upstream.VLMConfig(**TINY)).eval()
    torch.save(up.state_dict(), tmp_path / "ckpt.pt")
    heads = {k: TINY[k] for k in ("vision_num_heads", "text_num_heads", "cross_attn_heads")}
    (tmp_path / "cfg.json").write_text(json.dumps(heads))
    out = tmp_path / "out"
    report = conv.main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--upstream-config", str(tmp_path / "cfg.json"),
                        "--out", str(out)])
    assert report["passed"] and json.loads((out / "parity_report.json").read_text())["passed"]
    assert (out / "vlm_bridge.py").is_file() and (out / "model.safetensors").is_file()
    px, ids = inputs(7)
    torch.save({"px": px, "ids": ids}, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(up(px, ids), tmp_path / "ref.pt")
    run_isolated(f"""
        import torch
        from transformers import AutoModelForImageTextToText
        d = {str(tmp_path)!r}
        m = AutoModelForImageTextToText.from_pretrained(d + "/out", trust_remote_code=True).eval()
        x = torch.load(d + "/x.pt")
        n, tok = m.config.num_image_tokens, m.config.image_token_id
        prompt = torch.cat([torch.full((x["ids"].shape[0], n), tok), x["ids"]], 1)
        with torch.no_grad():
            torch.save(m(input_ids=prompt, pixel_values=x["px"]).logits[:, n:], d + "/remote.pt")
    """, cwd=tmp_path)
    remote = torch.load(tmp_path / "remote.pt")
    torch.testing.assert_close(remote[..., : TINY["vocab_size"]], torch.load(tmp_path / "ref.pt"), rtol=0, atol=1e-5)
    with pytest.raises(FileExistsError):
        conv.main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--out", str(out)])


# ---------------------------------------------------------------------------------------------------------------------
# step by step == full pass
# ---------------------------------------------------------------------------------------------------------------------
def test_fusion_step_by_step_equals_full_pass():
    for fc in ({"num_heads": 4, "num_key_value_heads": 2}, {"upstream_compat": True, "num_heads": 4}):
        torch.manual_seed(0)
        fusion = CrossModalFusion(ns(fusion_config=fc)).eval()
        text, image = torch.randn(2, 6, 24), torch.randn(2, 5, 24)
        with torch.no_grad():
            full = fusion(text, image)
            kv = fusion.precompute_image_kv(image)
            steps = torch.cat([fusion(text[:, t:t + 1], image_kv=kv) for t in range(6)], dim=1)
        torch.testing.assert_close(steps, full, rtol=0, atol=1e-6)


def test_composed_cached_decoding_equals_full_pass():
    """What a VLM does while generating: image tokens and their fusion keys / values once; then each text token is
    embedded at its text position, fused and appended to the decoder's cache."""
    torch.manual_seed(0)
    config = conv.config_from_enhanced_vlm(TINY, target="parts")
    model = conv.build_model(config).eval()
    px, ids = inputs(4, seq=9)
    with torch.no_grad():
        full = model(px, ids)
        image = model.image_tokens(px)
        kv = model.fusion.precompute_image_kv(image)
        lm = model.language_model
        prompt = model.fusion(lm.embed(ids[:, :4]), image_kv=kv)
        out = lm(inputs_embeds=torch.cat([image, prompt], 1), inputs_embeds_include_positions=True, use_cache=True)
        logits, cache = [out.logits[:, image.shape[1]:]], out.cache
        for t in range(4, ids.shape[1]):
            step = model.fusion(lm.embed(ids[:, t:t + 1], torch.tensor([[t]])), image_kv=kv)
            out = lm(inputs_embeds=step, inputs_embeds_include_positions=True, cache=cache, use_cache=True)
            logits.append(out.logits)
            cache = out.cache
    torch.testing.assert_close(torch.cat(logits, 1), full, rtol=0, atol=1e-5)


def test_text_position_ids():
    is_text = torch.tensor([[False, False, True, True, True], [True, True, True, True, True]])
    assert text_position_ids(is_text).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return BridgeDecoderForCausalLM(tiny_decoder_config()).eval()


def test_decoder_cached_steps_equal_full_pass(decoder):
    ids = torch.randint(0, 61, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = decoder(ids, use_cache=False).logits
        out = decoder(ids[:, :3], use_cache=True)
        steps, cache = [out.logits], out.cache
        for t in range(3, 10):
            out = decoder(ids[:, t:t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
            cache = out.cache
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-5)


def test_decoder_generate_equals_greedy_loop(decoder):
    ids = torch.randint(0, 61, (2, 4), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        gen = decoder.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                               eos_token_id=None, pad_token_id=0)
        seq = ids
        for _ in range(6):
            seq = torch.cat([seq, decoder(seq, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(gen, seq)


def test_decoder_left_padding_and_inputs_embeds(decoder):
    ids = torch.randint(2, 61, (1, 5), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)], 1)
    with torch.no_grad():
        plain = decoder(ids).logits
        left = decoder(padded, attention_mask=mask).logits[:, 2:]
        embeds = decoder(inputs_embeds=decoder.get_input_embeddings()(ids)).logits
        with_pos = decoder(inputs_embeds=decoder.embed(ids), inputs_embeds_include_positions=True).logits
    torch.testing.assert_close(left, plain, rtol=0, atol=1e-5)
    torch.testing.assert_close(embeds, plain, rtol=0, atol=0)
    torch.testing.assert_close(with_pos, plain, rtol=0, atol=0)


def test_decoder_labels_and_errors(decoder):
    ids = torch.randint(0, 61, (2, 6), generator=torch.Generator().manual_seed(4))
    out = decoder(ids, labels=ids)
    ref = F.cross_entropy(out.logits[:, :-1].reshape(-1, 61), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, ref)
    with pytest.raises(TypeError, match="unexpected argument"):
        decoder(ids, bogus=1)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        decoder(torch.zeros(1, 49, dtype=torch.long))


def test_save_load_round_trip(decoder, tmp_path):
    decoder.save_pretrained(tmp_path / "dec")
    again = BridgeDecoderForCausalLM.from_pretrained(tmp_path / "dec").eval()
    ids = torch.randint(0, 61, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, decoder(ids).logits, rtol=0, atol=0)
    torch.manual_seed(0)
    vision = BridgeVisionModel(BridgeVisionConfig(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=1,
                                                  num_attention_heads=4, intermediate_size=64, upstream_compat=True))
    vision.save_pretrained(tmp_path / "vis")
    loaded = BridgeVisionModel.from_pretrained(tmp_path / "vis")
    assert loaded.config.upstream_ffn_residual and loaded.config.activation_clamp == 10.0
    px = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(px).last_hidden_state, vision.eval()(px).last_hidden_state, rtol=0, atol=0)
    with pytest.raises(ValueError, match="fixed"):
        vision(torch.randn(1, 3, 48, 48))


def test_decoder_remote_code_without_ssmvl(decoder, tmp_path):
    from isolated import run_isolated

    decoder.save_pretrained(tmp_path / "dec")
    ids = torch.randint(0, 61, (1, 5))
    torch.save(ids, tmp_path / "ids.pt")
    with torch.no_grad():
        torch.save(decoder(ids).logits, tmp_path / "local.pt")
    run_isolated(f"""
        import torch
        from transformers import AutoModelForCausalLM
        d = {str(tmp_path)!r}
        m = AutoModelForCausalLM.from_pretrained(d + "/dec", trust_remote_code=True).eval()
        assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
        with torch.no_grad():
            torch.save(m(torch.load(d + "/ids.pt")).logits, d + "/remote.pt")
            m.generate(torch.load(d + "/ids.pt"), max_new_tokens=3, do_sample=False)
    """, cwd=tmp_path)
    torch.testing.assert_close(torch.load(tmp_path / "remote.pt"), torch.load(tmp_path / "local.pt"), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# key map
# ---------------------------------------------------------------------------------------------------------------------
@needs_upstream
@pytest.mark.parametrize("target", ["vlm", "parts"])
def test_key_map_errors_name_the_keys(tiny_pair, target):
    if target == "vlm" and SsmVlmForConditionalGeneration is None:
        pytest.skip("modeling/modeling_ssm_vlm.py is absent")
    _, sd, _ = tiny_pair
    config = conv.config_from_enhanced_vlm(TINY, target=target)
    broken = dict(sd)
    del broken["text_blocks.1.ffn.w2.weight"], broken["ssm_bridge.ssm_layers.0.A"]
    broken["cross_attn_layers.0.extra.weight"] = torch.zeros(1)
    broken["vit.pos_embed"] = torch.zeros(1, 3, TINY["vision_embed_dim"])
    with pytest.raises(ValueError) as err:
        conv.convert_state_dict(broken, config)
    msg = str(err.value)
    assert "2 missing key(s): ssm_bridge.ssm_layers.0.A; text_blocks.1.ffn.w2.weight" in msg
    assert "1 unexpected key(s): cross_attn_layers.0.extra.weight" in msg
    assert "1 mis-shaped key(s): vit.pos_embed: checkpoint (1, 3, 48) vs expected (1, 17, 48)" in msg
    wrong = conv.config_from_enhanced_vlm({**TINY, "text_embed_dim": 32}, target=target)
    with pytest.raises(ValueError, match=r"mis-shaped key\(s\): .*token_embed.weight: checkpoint \(97, 64\) vs "):
        conv.convert_state_dict(sd, wrong)


@needs_upstream
def test_key_map_round_trip(tiny_pair):
    _, sd, _ = tiny_pair
    for prefixes in (conv.VLM_PREFIXES, conv.PARTS_PREFIXES):
        for key in sd:
            new = conv.original_key_to_hf(key, prefixes)
            assert new is not None, key
            assert conv.hf_key_to_original(new, prefixes) == key
    assert conv.original_key_to_hf("text_blocks.3.ffn.layer_norm.bias") == "language_model.model.layers.3.mlp.norm.bias"
    assert conv.original_key_to_hf("ssm_bridge.ssm_layers.1.bias_A") == "model.projector.layers.1.mixer.bias_A"
    assert conv.original_key_to_hf("text_blocks.0.ffn.w4.weight") is None
    for target in ("vlm", "parts") if SsmVlmForConditionalGeneration is not None else ("parts",):
        config = conv.config_from_enhanced_vlm(TINY, target=target)
        converted = conv.convert_state_dict(sd, config)
        assert {k: tuple(v.shape) for k, v in converted.items()} == conv.expected_shapes(config)


def test_config_validation():
    with pytest.raises(ValueError, match="Unknown projector_config key"):
        resolve_projector_config({"state_dim": 4})
    with pytest.raises(ValueError, match="only apply to ssm_type='mamba'"):
        resolve_projector_config({"ssm_type": "dense_recurrence", "expand": 2})
    with pytest.raises(ValueError, match="Unknown fusion_config key"):
        resolve_fusion_config({"heads": 4})
    with pytest.raises(ValueError, match="multiple"):
        resolve_fusion_config({"num_heads": 6, "num_key_value_heads": 4})
    up = resolve_projector_config({"upstream_compat": True})
    assert up["ssm_type"] == "dense_recurrence" and up["residual_from_normed"] and up["state_clamp"] == 10.0
    fc = resolve_fusion_config({"upstream_compat": True, "residual": True})  # explicit keys win
    assert fc["residual"] and not fc["query_norm"] and fc["num_key_value_heads"] == fc["num_heads"]
    assert resolve_fusion_config(None)["num_key_value_heads"] == 1
    with pytest.raises(ValueError, match="Unknown VLMConfig field"):
        conv.config_from_enhanced_vlm({"text_dim": 3})


def test_mamba_bridge_projector():
    torch.manual_seed(0)
    proj = SsmBridgeProjector(ns({"hidden_size": 16, "num_layers": 2, "state_size": 4, "bidirectional": True}))
    assert type(proj.layers[0]).__name__ == "MambaBlock" and proj.layers[0].mixer.bidirectional
    x = torch.randn(2, 9, 32, requires_grad=True)
    y = proj(x)
    assert y.shape == (2, 9, 24)
    y.sum().backward()
    assert proj.layers[1].mixer.x_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="expects"):
        proj(torch.randn(2, 9, 31))


# ---------------------------------------------------------------------------------------------------------------------
# upstream's defects: reproduced with the compat flags, gone without them (docs/ssm_bridge.md)
# ---------------------------------------------------------------------------------------------------------------------
def _block_pair(upstream_ffn_residual, **kw):
    cfg = tiny_decoder_config(upstream_ffn_residual=upstream_ffn_residual, **kw)
    return BridgeBlock(cfg, 0).eval()


@needs_upstream
def test_defect_ffn_residual():
    """Upstream's TransformerBlock drops its residual around the MLP and SwiGLU normalises again: the block returns
    LN2(h) + MLP(LN(LN2(h))), so the residual stream is re-normalised in every block."""
    torch.manual_seed(0)
    ref = upstream.TransformerBlock(32, 4, kv_heads=1, ffn_dim=64, dropout=0.0).eval()
    ours = _block_pair(True, attention_score_clamp=100.0, activation_clamp=10.0)
    fixed = _block_pair(False)
    sd = {conv.original_key_to_hf("text_blocks.0." + k).split("layers.0.", 1)[1]: v
          for k, v in ref.state_dict().items()}
    ours.load_state_dict(sd, strict=True)
    fixed.load_state_dict({k: v for k, v in sd.items() if not k.startswith("mlp.norm.")}, strict=True)
    x = torch.randn(2, 5, 32) * 20 + 3  # a residual stream far from unit scale
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)
        h = x + fixed.self_attn(fixed.input_layernorm(x))
        torch.testing.assert_close(fixed(x), h + fixed.mlp(fixed.post_attention_layernorm(h)), rtol=0, atol=1e-5)
        assert (fixed(x) - ours(x)).abs().max() > 1.0
        assert ref(x).norm(dim=-1).max() < x.norm(dim=-1).min() / 5  # upstream's output forgot the stream's scale


@needs_upstream
def test_defect_cross_attention_replaces_text():
    """Upstream's cross-attention has no residual: with one image token every text position comes out the same
    (attention to one key is 1), whatever the token was; the fixed fusion keeps the text."""
    torch.manual_seed(0)
    compat = CrossModalFusion(ns(fusion_config={"upstream_compat": True, "num_heads": 4}, text_hidden=32)).eval()
    fixed = CrossModalFusion(ns(fusion_config={"num_heads": 4, "num_key_value_heads": 4, "query_norm": False},
                                text_hidden=32)).eval()
    fixed.load_state_dict(compat.state_dict())
    text, image = torch.randn(1, 4, 32), torch.randn(1, 1, 32)
    with torch.no_grad():
        out = compat(text, image)
        assert (out - out[:, :1]).abs().max() < 1e-6  # all four text positions identical
        ref = text
        for i in range(2):
            layer = upstream.CrossModalAttention(32, 4, 0.0).eval()
            layer.load_state_dict({k.split("cross_attn.")[1]: v for k, v in compat.state_dict().items()
                                   if k.startswith(f"layers.{i}.")})
            ref = layer(ref, image, image)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
        kept = fixed(text, image)
        assert (kept - kept[:, :1]).abs().max() > 0.1
    # the README's "multi-query" cross-attention is plain multi-head upstream: as many key heads as query heads
    assert upstream.CrossModalAttention(32, 4).k_proj.out_features == 32
    assert compat.layers[0].cross_attn.k_proj.out_features == 32
    default = CrossModalFusion(ns(fusion_config={"num_heads": 4}, text_hidden=32))
    assert default.layers[0].cross_attn.k_proj.out_features == 8  # ours: multi-query by default


@needs_upstream
def test_defect_score_and_activation_clamps():
    """Upstream clamps attention scores to [-100, 100] and Swish's sigmoid input to [-10, 10]: different functions
    once the values get there (a trained model's can)."""
    torch.manual_seed(0)
    ref = upstream.MultiQueryAttention(32, 4, 1, dropout=0.0).eval()
    with torch.no_grad():
        ref.q_proj.weight.mul_(30)
    clamped = _block_pair(False, attention_score_clamp=100.0).self_attn
    plain = _block_pair(False).self_attn
    clamped.load_state_dict(ref.state_dict())
    plain.load_state_dict(ref.state_dict())
    x = torch.randn(1, 6, 32) * 3
    mask = torch.tril(torch.ones(6, 6)).bool()[None, None]
    with torch.no_grad():
        torch.testing.assert_close(clamped(x, mask=mask), ref(x, torch.tril(torch.ones(6, 6))[None]), rtol=0, atol=1e-5)
        assert (clamped(x, mask=mask) - plain(x, mask=mask)).abs().max() > 1e-2
    swish = upstream.SwiGLU(8, 16, dropout=0.0).eval()
    with torch.no_grad():
        swish.w1.weight.mul_(40)  # gate pre-activations well beyond 10
    cfg_on = tiny_decoder_config(hidden_size=8, num_attention_heads=2, intermediate_size=16, activation_clamp=10.0,
                                 upstream_ffn_residual=True)
    on, off = BridgeBlock(cfg_on, 0).mlp.eval(), BridgeBlock(tiny_decoder_config(
        hidden_size=8, num_attention_heads=2, intermediate_size=16, upstream_ffn_residual=True), 0).mlp.eval()
    sd = {"gate_proj.weight": swish.w1.weight, "gate_proj.bias": swish.w1.bias, "up_proj.weight": swish.w2.weight,
          "up_proj.bias": swish.w2.bias, "down_proj.weight": swish.w3.weight, "down_proj.bias": swish.w3.bias,
          "norm.weight": swish.layer_norm.weight, "norm.bias": swish.layer_norm.bias}
    on.load_state_dict(sd)
    off.load_state_dict(sd)
    with torch.no_grad():
        x = torch.randn(2, 3, 8)
        torch.testing.assert_close(x + on(on.norm(x)), swish(x), rtol=0, atol=1e-5)
        assert (on(on.norm(x)) - off(off.norm(x))).abs().max() > 1e-3


@needs_upstream
def test_defect_bridge_residual_from_normed():
    """Upstream's bridge does ``x = ln(x); x = x + ssm(x)``: the residual adds to the normalised stream."""
    torch.manual_seed(0)
    ref = upstream.EnhancedSSMBridge(32, state_dim=8, hidden_dim=16, output_dim=24, num_layers=2, dropout=0.0).eval()
    pc = {"ssm_type": "dense_recurrence", "hidden_size": 16, "num_layers": 2, "state_size": 8}
    compat = SsmBridgeProjector(ns({**pc, "residual_from_normed": True})).eval()
    fixed = SsmBridgeProjector(ns(pc)).eval()
    prefix = conv.PARTS_PREFIXES["projector"]
    sd = {conv.original_key_to_hf("ssm_bridge." + k, conv.PARTS_PREFIXES)[len(prefix):]: v
          for k, v in ref.state_dict().items()}
    compat.load_state_dict(sd, strict=True)
    fixed.load_state_dict(sd, strict=True)
    x = torch.randn(2, 7, 32) * 5
    with torch.no_grad():
        torch.testing.assert_close(compat(x), ref(x), rtol=0, atol=1e-5)
        assert (compat(x) - fixed(x)).abs().max() > 1e-2


@needs_upstream
def test_dense_ssm_matches_upstream_layer_and_runs_in_bf16():
    """BridgeDenseSsm is upstream's SSMLayer (state clamp included); upstream's fails in bf16 (its state is always
    float32), ours keeps the state in float32 and runs."""
    torch.manual_seed(0)
    ref = upstream.SSMLayer(16, 8).eval()
    ours = BridgeDenseSsm(16, 8, state_clamp=10.0)
    ours.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        ref.A.mul_(20)  # an unstable A: the state runs into the clamp
        ours.A.copy_(ref.A)
        x = torch.randn(2, 12, 16) * 3
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)
        assert ours.scan(ours.input_proj(x)).abs().max() == 10.0
        with pytest.raises(RuntimeError, match="dtype"):
            ref.to(torch.bfloat16)(x.bfloat16())
        y16 = ours.to(torch.bfloat16)(x.bfloat16())
    assert y16.dtype == torch.bfloat16 and torch.isfinite(y16).all()


@needs_upstream
def test_compat_flags_off_changes_the_whole_model(tiny_pair):
    """The corrected computation (no upstream_compat) is a different function of the same weights."""
    _, sd, ours = tiny_pair
    config = conv.config_from_enhanced_vlm(TINY, target="parts")
    fixed_cfg = types.SimpleNamespace(**vars(config))
    fixed_cfg.vision_config = BridgeVisionConfig(**{**config.vision_config.to_dict(), "upstream_ffn_residual": False})
    fixed_cfg.text_config = BridgeDecoderConfig(**{**config.text_config.to_dict(), "upstream_ffn_residual": False})
    fixed_cfg.fusion_config = {**config.fusion_config, "residual": True}
    fixed = conv.build_model(fixed_cfg).eval()
    converted = conv.convert_state_dict(sd, config)
    missing, unexpected = fixed.load_state_dict(converted, strict=False)
    assert not missing and all(".mlp.norm." in k for k in unexpected) and unexpected
    px, ids = inputs(5)
    with torch.no_grad():
        assert (fixed(px, ids) - ours(px, ids)).abs().max() > 1e-2


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    cfg = tiny_decoder_config(upstream_compat=True, hidden_dropout=0.0, attention_dropout=0.0)
    plain = BridgeDecoderForCausalLM(cfg).train()
    ckpt = BridgeDecoderForCausalLM(cfg).train()
    ckpt.load_state_dict(plain.state_dict())
    enable = getattr(ckpt, "activation_checkpointing_enable", None) or ckpt.gradient_checkpointing_enable  # 5.24 / 5.0
    enable()
    ids = torch.randint(0, 61, (2, 7))
    plain(ids, labels=ids).loss.backward()
    ckpt(ids, labels=ids).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-6, msg=name)
