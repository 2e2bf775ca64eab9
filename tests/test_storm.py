"""STORM family: image and video shapes, token counts per retention step, the memory pool, retention gradients,
parity with a plain Mamba stack (an independent forward written here), input errors, save/load, remote code without
ssmvl importable (tests/isolated.py), gradient checkpointing, Vim and ViT frame encoders, presets."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageClassification, AutoModelForVideoClassification, ViTConfig

import ssmvl.modeling  # noqa: F401  (registers the Auto classes)
from isolated import run_isolated
from ssmvl.modeling.configuration_storm import StormConfig, default_keep_ratios, num_kept
from ssmvl.modeling.configuration_vim import VimConfig
from ssmvl.modeling.modeling_storm import (StormForImageClassification, StormForVideoClassification,
                                           StormModel, StormRetention)
from ssmvl.modeling.ssm_ops import selective_scan_ref

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def tiny_config(**kw):
    base = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, keep_ratios=[1.0, 0.5, 0.5],
                num_memory_tokens=4, state_size=4, frame_layers=1, temporal_layers=1, num_frames=4, temporal_pool=2,
                num_labels=3, ssm_backend="torch")
    base.update(kw)
    return StormConfig(**base)


def images(batch=2, size=32, seed=0, channels=3):
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def videos(batch=2, frames=3, size=32, seed=0, channels=3):
    return torch.randn(batch, frames, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return StormForVideoClassification(tiny_config()).eval()


# ---------------------------------------------------------------------------------------------------------------------
# shapes, token counts, memory, retention
# ---------------------------------------------------------------------------------------------------------------------
def test_image_and_video_shapes(model):
    cfg = model.config
    with torch.no_grad():
        img = model.storm(pixel_values=images(), output_hidden_states=True)
        vid = model.storm(pixel_values_videos=videos(frames=3), output_hidden_states=True)
        logits_v = model(videos(frames=3)).logits
        logits_i = StormForImageClassification(cfg).eval()(images()).logits
    assert logits_v.shape == (2, 3) and logits_i.shape == (2, 3)
    # image: 16 tokens -> 16 -> 8 -> 4; video of 3 frames, temporal_pool 2: 2 pooled frames x 16 = 32 -> 32 -> 16 -> 8
    assert cfg.token_counts(1) == [16, 16, 8, 4] and cfg.token_counts(3) == [32, 32, 16, 8]
    for out, frames in ((img, 1), (vid, 3)):
        counts = cfg.token_counts(frames)
        assert out.last_hidden_state.shape == (2, cfg.num_output_tokens(frames), 32)
        assert out.pooler_output.shape == (2, 32) and out.memory_tokens.shape == (2, 4, 32)
        assert [k.shape[1] for k in out.kept_tokens] == counts[1:]
        assert [h.shape[1] for h in out.hidden_states] == counts
        torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
        torch.testing.assert_close(out.pooler_output,
                                   torch.cat([out.memory_tokens, out.last_hidden_state], 1).mean(1))
        for kept in out.kept_tokens:  # positions in the first block's sequence, in their original order
            assert (kept.diff(dim=1) > 0).all() and kept.min() >= 0 and kept.max() < counts[0]
        for earlier, later in zip(out.kept_tokens, out.kept_tokens[1:]):  # each step keeps a subset of the last
            assert all(set(later[b].tolist()) <= set(earlier[b].tolist()) for b in range(2))
    # a 5-D pixel_values is a video too
    torch.testing.assert_close(model.storm(pixel_values=videos(frames=3)).last_hidden_state, vid.last_hidden_state)
    loss = model(videos(frames=2), labels=torch.tensor([0, 2])).loss
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model(videos(frames=2)).kept_tokens[-1].shape == (2, cfg.num_output_tokens(2))


def test_token_counts_match_keep_ratios():
    cfg = tiny_config(image_size=48, keep_ratios=[0.5, 0.75, 0.3, 1.0], num_hidden_layers=4, temporal_pool=1)
    torch.manual_seed(0)
    m = StormModel(cfg).eval()
    for frames in (1, 2, 4):
        with torch.no_grad():
            out = m(pixel_values_videos=videos(batch=1, frames=frames, size=48))
        n = frames * 36
        expected = []
        for ratio in cfg.keep_ratios:
            n = num_kept(n, ratio)
            expected.append(n)
        assert [k.shape[1] for k in out.kept_tokens] == expected == cfg.token_counts(frames)[1:]
        assert out.last_hidden_state.shape[1] == cfg.num_output_tokens(frames)
    assert [num_kept(10, 0.7), num_kept(5, 0.5), num_kept(3, 0.01), num_kept(8, 1.0)] == [7, 3, 1, 8]
    assert default_keep_ratios(6) == [1.0, 1.0, 0.7, 1.0, 1.0, 0.7]
    # no scorer where nothing is dropped
    assert [b.retention is None for b in m.layers] == [False, False, False, True]


def test_memory_is_updated_and_affects_the_output(model):
    x = videos(frames=2)
    block = model.storm.layers[0]
    tokens = torch.randn(2, 32, 32)
    memory0 = model.storm.memory_tokens.expand(2, -1, -1)
    with torch.no_grad():
        _, memory1, _ = block(tokens, memory0, torch.arange(32).expand(2, -1))
        # the memory write alone already reads the tokens: other tokens, other memory
        _, memory2, _ = block(tokens + 1.0, memory0, torch.arange(32).expand(2, -1))
    assert memory1.shape == memory0.shape and (memory1 - memory0).abs().max() > 1e-3
    assert (memory2 - memory1).abs().max() > 1e-4
    with torch.no_grad():
        base = model.storm(pixel_values_videos=x)
        saved = model.storm.memory_tokens.detach().clone()
        try:
            model.storm.memory_tokens.add_(torch.randn_like(saved))
            moved = model.storm(pixel_values_videos=x)
        finally:
            model.storm.memory_tokens.copy_(saved)
    assert (moved.memory_tokens - base.memory_tokens).abs().max() > 1e-3
    # the tokens read the memory (through the scan), not only the pooled feature
    assert (moved.last_hidden_state - base.last_hidden_state).abs().max() > 1e-4
    assert (moved.pooler_output - base.pooler_output).abs().max() > 1e-4


def test_memory_carries_dropped_tokens():
    """A change to a token that the first block drops still reaches the output through the memory (and does not
    without memory)."""
    torch.manual_seed(0)
    for memory, expect_change in ((4, True), (0, False)):
        cfg = tiny_config(num_hidden_layers=2, keep_ratios=[0.25, 1.0], num_memory_tokens=memory, frame_layers=0,
                          temporal_layers=0)
        m = StormModel(cfg).eval()
        x = images(batch=1)
        with torch.no_grad():
            out = m(pixel_values=x)
            dropped = sorted(set(range(16)) - set(out.kept_tokens[0][0].tolist()))
            patch = dropped[0]
            row, col = divmod(patch, 4)
            x2 = x.clone()
            x2[..., row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] += 0.01  # small: the same tokens stay kept
            out2 = m(pixel_values=x2)
        assert torch.equal(out2.kept_tokens[0], out.kept_tokens[0])
        changed = (out2.last_hidden_state - out.last_hidden_state).abs().max() > 1e-7
        assert bool(changed) == expect_change


def test_retention_keeps_top_scores_in_order_and_trains():
    cfg = tiny_config(hidden_size=8, intermediate_size=16)
    ret = StormRetention(cfg, keep_ratio=0.5)
    with torch.no_grad():
        ret.scorer.weight.zero_()
        ret.scorer.weight[0, 0] = 1.0
        ret.scorer.bias.zero_()
    x = torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    positions = torch.arange(100, 110).expand(2, -1)
    kept, kept_pos, scores = ret(x, positions)
    want = scores.topk(5, dim=1).indices.sort(dim=1).values
    assert torch.equal(kept_pos, want + 100)
    # straight-through: the kept tokens are unchanged in value ...
    torch.testing.assert_close(kept, x.gather(1, want[..., None].expand(-1, -1, 8)), rtol=0, atol=0)
    # ... and the scorer gets gradients
    kept.pow(2).sum().backward()
    assert ret.scorer.weight.grad.abs().sum() > 0 and ret.scorer.bias.grad.abs() > 0
    sig = StormRetention(tiny_config(hidden_size=8, intermediate_size=16, retention_gate="sigmoid"), 0.5)
    sig.load_state_dict(ret.state_dict())
    kept_s, _, scores_s = sig(x.detach(), positions)
    gate = torch.sigmoid(scores_s.gather(1, want))[..., None]
    torch.testing.assert_close(kept_s, x.detach().gather(1, want[..., None].expand(-1, -1, 8)) * gate)


@pytest.mark.parametrize("gate", ["straight_through", "sigmoid"])
def test_scorers_get_gradients_from_the_loss(gate):
    torch.manual_seed(0)
    m = StormForVideoClassification(tiny_config(retention_gate=gate)).train()
    m(videos(frames=3), labels=torch.tensor([0, 1])).loss.backward()
    scorers = [b.retention.scorer for b in m.storm.layers if b.retention is not None]
    assert len(scorers) == 2
    for scorer in scorers:
        assert scorer.weight.grad is not None and scorer.weight.grad.abs().sum() > 0
    assert m.storm.memory_tokens.grad.abs().sum() > 0
    assert m.storm.temporal_embed.grad[:, :3].abs().sum() > 0 and m.storm.temporal_embed.grad[:, 3:].abs().sum() == 0


def test_batched_equals_one_by_one(model):
    x = videos(batch=3, frames=2, seed=1)
    with torch.no_grad():
        batched = model(x).logits
        single = torch.cat([model(x[i:i + 1]).logits for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# parity: keep ratios 1.0 and no memory = a plain stack of pre-norm Mamba blocks, written here independently
# ---------------------------------------------------------------------------------------------------------------------
def reference_storm_logits(sd, cfg, video, eps=1e-5):
    """Plain stack of pre-norm bidirectional Mamba blocks over STORM's embeddings, written from the state dict with
    explicit loops; only the scan itself is ssm_ops.selective_scan_ref."""
    d, p, k = cfg.hidden_size, cfg.patch_size, cfg.conv_kernel
    n, r = cfg.state_size, cfg.time_step_rank
    b, t = video.shape[:2]
    frames = video.flatten(0, 1)
    w = sd["storm.patch_embed.proj.weight"]
    cols = F.unfold(frames, kernel_size=p, stride=p)  # (b*T, C*p*p, M)
    x = (w.reshape(d, -1) @ cols).transpose(1, 2) + sd["storm.patch_embed.proj.bias"] + sd["storm.pos_embed"]

    def rms(v, weight):
        return v / torch.sqrt((v * v).mean(-1, keepdim=True) + eps) * weight

    def direction(xz, pre, s, a_key):
        length = xz.shape[-1]
        xs, z = xz[:, : xz.shape[1] // 2], xz[:, xz.shape[1] // 2:]
        cw, cb = sd[f"{pre}conv1d{s}.weight"][:, 0], sd[f"{pre}conv1d{s}.bias"]
        padded = F.pad(xs, (k - 1, 0))
        conv = sum(padded[:, :, j:j + length] * cw[:, j, None] for j in range(k)) + cb[:, None]
        u = conv * torch.sigmoid(conv)
        proj = sd[f"{pre}x_proj{s}.weight"] @ u
        dt = sd[f"{pre}dt_proj{s}.weight"] @ proj[:, :r]
        return selective_scan_ref(u, dt, -torch.exp(sd[pre + a_key]), proj[:, r:r + n], proj[:, r + n:],
                                  D=sd[f"{pre}D{s}"], z=z, delta_bias=sd[f"{pre}dt_proj{s}.bias"],
                                  delta_softplus=True)

    def block(h, prefix):
        pre = prefix + "mixer."
        xz = sd[pre + "in_proj.weight"] @ rms(h, sd[prefix + "norm.weight"]).transpose(1, 2)  # (b, 2I, L)
        y = (direction(xz, pre, "", "A_log") + direction(xz.flip(2), pre, "_b", "A_b_log").flip(2)) / 2
        return h + y.transpose(1, 2) @ sd[pre + "out_proj.weight"].T

    for i in range(cfg.frame_layers):
        x = block(x, f"storm.frame_layers.{i}.")
    m = x.shape[1]
    x = (x.reshape(b, t, m, d) + sd["storm.temporal_embed"][:, :t]).reshape(b, t * m, d)
    for i in range(cfg.temporal_layers):
        x = block(x, f"storm.temporal_layers.{i}.")
    x = x.reshape(b, t, m, d)
    q = cfg.temporal_pool
    x = torch.stack([x[:, i:i + q].mean(1) for i in range(0, t, q)], 1).reshape(b, -1, d)
    for i in range(cfg.num_hidden_layers):
        x = block(x, f"storm.layers.{i}.")
    pooled = rms(x, sd["storm.norm_f.weight"]).mean(1)
    return pooled @ sd["head.weight"].T + sd["head.bias"]


@pytest.mark.parametrize("frames,pool", [(1, 1), (3, 1), (3, 2)])
def test_parity_with_plain_mamba_stack(frames, pool):
    torch.manual_seed(0)
    cfg = tiny_config(keep_ratios=[1.0, 1.0, 1.0], num_memory_tokens=0, temporal_pool=pool, frame_layers=2)
    m = StormForVideoClassification(cfg).eval()
    with torch.no_grad():  # trained-like scales so that every part matters
        for name, param in m.named_parameters():
            if name.endswith(("pos_embed", "temporal_embed")):
                param.normal_(0, 0.5)
            elif name.endswith("norm.weight"):
                param.normal_(1.0, 0.1)
        sd = {k: v.clone() for k, v in m.state_dict().items()}
        assert not any("retention" in k or "memory" in k for k in sd)
        x = videos(frames=frames, seed=4)
        ours = m(x).logits
        ref = reference_storm_logits(sd, cfg, x)
    assert ref.abs().max() > 1e-3
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------------
def test_bad_inputs(model):
    image_model = StormForImageClassification(model.config).eval()
    with pytest.raises(ValueError, match=r"no frames.*frames == 0.*at least one frame"):
        model(torch.randn(2, 0, 3, 32, 32))
    with pytest.raises(ValueError, match=r"5 frames but config.num_frames=4.*at most 4 frames.*num_frames>=5"):
        model(videos(frames=5))
    with pytest.raises(ValueError, match=r"5 frames but config.num_frames=4"):
        model.storm(pixel_values=videos(frames=5))
    with pytest.raises(ValueError, match=r"30x32 is not a multiple of the patch size 8x8.*24x32"):
        model(torch.randn(1, 2, 3, 30, 32))
    with pytest.raises(ValueError, match=r"30x32 is not a multiple of the patch size"):
        image_model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"1 channels but the model expects num_channels=3"):
        model(torch.randn(1, 2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"1 channels but the model expects num_channels=3"):
        image_model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"40x40 differs from the model's image_size 32x32.*interpolate_pos_encoding"):
        model(videos(size=40))
    # 4-D vs 5-D mixups
    with pytest.raises(ValueError, match=r"StormForVideoClassification takes videos.*StormForImageClassification"):
        model(images())
    with pytest.raises(ValueError, match=r"StormForVideoClassification takes videos"):
        model(pixel_values=images())
    with pytest.raises(ValueError, match=r"StormForImageClassification takes images.*StormForVideoClassification"):
        image_model(videos())
    with pytest.raises(ValueError, match=r"pixel_values_videos must be 5-D.*unsqueeze\(1\)"):
        model.storm(pixel_values_videos=images())
    with pytest.raises(ValueError, match=r"pixel_values must be \(batch, 3, height, width\)"):
        model.storm(pixel_values=torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="not both"):
        model.storm(pixel_values=images(), pixel_values_videos=videos())
    with pytest.raises(ValueError, match="needs pixel_values"):
        model.storm()


def test_other_input_sizes(model):
    with torch.no_grad():
        x = videos(frames=2)
        torch.testing.assert_close(model(x, interpolate_pos_encoding=True).logits, model(x).logits, rtol=0, atol=0)
        out = model.storm(pixel_values_videos=videos(frames=2, size=48), interpolate_pos_encoding=True)
    assert out.last_hidden_state.shape[1] == model.config.num_output_tokens(2, image_size=48) == 9


def test_config_validation():
    with pytest.raises(ValueError, match="keep_ratios has 2 entries but num_hidden_layers=3"):
        StormConfig(num_hidden_layers=3, keep_ratios=[1.0, 0.5])
    with pytest.raises(ValueError, match=r"keep_ratios must lie in \(0, 1\]"):
        StormConfig(num_hidden_layers=2, keep_ratios=[1.0, 0.0])
    with pytest.raises(ValueError, match="retention_gate"):
        StormConfig(retention_gate="gumbel")
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        StormConfig(image_size=100, patch_size=16)
    with pytest.raises(ValueError, match="num_frames must be a positive integer"):
        StormConfig(num_frames=0)
    with pytest.raises(ValueError, match="num_memory_tokens must be an integer >= 0"):
        StormConfig(num_memory_tokens=-1)
    with pytest.raises(ValueError, match="without 'model_type'"):
        StormConfig(vision_config={"hidden_size": 32})
    with pytest.raises(ValueError, match="not a supported frame encoder"):
        StormConfig(vision_config={"model_type": "bert"})
    with pytest.raises(ValueError, match="image_size=64 differs from vision_config.image_size=32"):
        StormConfig(image_size=64, vision_config=ViTConfig(image_size=32, patch_size=8))


# ---------------------------------------------------------------------------------------------------------------------
# save / load, Auto classes, remote code
# ---------------------------------------------------------------------------------------------------------------------
def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {"AutoConfig": "configuration_storm.StormConfig", "AutoModel": "modeling_storm.StormModel",
                        "AutoModelForImageClassification": "modeling_storm.StormForImageClassification",
                        "AutoModelForVideoClassification": "modeling_storm.StormForVideoClassification"}
    for name in ("modeling_storm.py", "configuration_storm.py", "modeling_vim.py", "ssm_layers.py", "ssm_ops.py",
                 "cuda_graphs.py"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "cpu_scan.py").exists()  # the compiled CPU kernel stays with the installed package
    x = videos(seed=3)
    loaded = StormForVideoClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.keep_ratios == model.config.keep_ratios
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)
        # the registered Auto classes (ssmvl.modeling imported) and the image head over the same weights
        auto = AutoModelForVideoClassification.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(auto(x).logits, model(x).logits, rtol=0, atol=0)
        image = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
        assert type(image) is StormForImageClassification
        torch.testing.assert_close(image(x[:, 0]).logits, model(x[:, :1]).logits, rtol=0, atol=0)


REMOTE = """
    import json, sys, torch
    from transformers import AutoModel, AutoModelForImageClassification, AutoModelForVideoClassification
    result = {}
    for name in ("own", "vim"):
        d = FOLDER + "/" + name
        video = AutoModelForVideoClassification.from_pretrained(d, trust_remote_code=True).eval()
        image = AutoModelForImageClassification.from_pretrained(d, trust_remote_code=True).eval()
        base = AutoModel.from_pretrained(d, trust_remote_code=True).eval()
        x = torch.load(d + "/x.pt")
        with torch.no_grad():
            torch.save({"video": video(x).logits, "image": image(x[:, 0]).logits,
                        "tokens": base(pixel_values_videos=x).last_hidden_state}, d + "/remote.pt")
        result[name] = [type(m).__module__ + "." + type(m).__name__ for m in (video, image, base)]
    result["ssmvl"] = any(k == "ssmvl" or k.startswith("ssmvl.") for k in sys.modules)
    print(json.dumps(result))
"""


def test_trust_remote_code_without_ssmvl(model, tmp_path, monkeypatch):
    monkeypatch.setenv("SSMVL_CPU_SCAN_KERNEL", "0")  # the local side as remote code runs it: the eager torch scan
    torch.manual_seed(0)
    vim_model = StormForVideoClassification(tiny_config(vision_config=vim_frame_encoder())).eval()
    local = {}
    for name, m in (("own", model), ("vim", vim_model)):
        d = tmp_path / "models" / name
        m.save_pretrained(d)
        x = videos(frames=2, seed=5)
        torch.save(x, d / "x.pt")
        with torch.no_grad():
            local[name] = {"video": m(x).logits, "image": m(x[:, :1]).logits,
                           "tokens": m.storm(pixel_values_videos=x).last_hidden_state}
    proc = run_isolated(REMOTE.replace("FOLDER", repr(str(tmp_path / "models"))), cwd=tmp_path)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["ssmvl"]
    for name in ("own", "vim"):
        modules = result[name]
        assert all(mod.startswith("transformers_modules") for mod in modules), modules
        assert [mod.rsplit(".", 1)[-1] for mod in modules] == ["StormForVideoClassification",
                                                               "StormForImageClassification", "StormModel"]
        remote = torch.load(tmp_path / "models" / name / "remote.pt")
        for key in ("video", "image", "tokens"):
            torch.testing.assert_close(remote[key], local[name][key], rtol=0, atol=1e-6, msg=f"{name} {key}")


# ---------------------------------------------------------------------------------------------------------------------
# gradient checkpointing
# ---------------------------------------------------------------------------------------------------------------------
def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    m = StormForVideoClassification(tiny_config(retention_gate="sigmoid")).train()
    x, labels = videos(frames=3), torch.tensor([1, 2])

    def grads():
        m.zero_grad()
        m(x, labels=labels).loss.backward()
        return {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}

    plain = grads()
    (getattr(m, "activation_checkpointing_enable", None) or m.gradient_checkpointing_enable)()
    layers = list(m.storm.layers) + list(m.storm.frame_layers) + list(m.storm.temporal_layers)
    assert all(layer.gradient_checkpointing for layer in layers)
    ckpt = grads()
    assert plain.keys() == ckpt.keys() and any("scorer" in k for k in plain)
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-6, msg=k)


# ---------------------------------------------------------------------------------------------------------------------
# frame encoders: Vim (ssmvl) and ViT (transformers)
# ---------------------------------------------------------------------------------------------------------------------
def vim_frame_encoder(**kw):
    return VimConfig(**{**dict(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=1, state_size=4,
                               ssm_backend="torch"), **kw})


def vit_frame_encoder(**kw):
    return ViTConfig(**{**dict(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=48), **kw})


@pytest.mark.parametrize("encoder", ["vim", "vim_first_cls", "vit", "vit_dict"])
def test_frame_encoders(encoder, tmp_path):
    vision = {"vim": vim_frame_encoder(), "vim_first_cls": vim_frame_encoder(use_middle_cls_token=False),
              "vit": vit_frame_encoder(), "vit_dict": {"model_type": "vit", **vit_frame_encoder().to_diff_dict()}}
    cfg = tiny_config(image_size=None, patch_size=None, num_channels=None, vision_config=vision[encoder])
    assert (cfg.image_size, cfg.patch_size, cfg.num_channels) == (32, 8, 3)
    torch.manual_seed(0)
    m = StormForVideoClassification(cfg).eval()
    assert m.storm.patch_embed is None and m.storm.pos_embed is None
    assert m.storm.frame_proj.in_features == 24 and m.storm.frame_proj.out_features == 32
    x = videos(frames=3)
    with torch.no_grad():
        frames = x.flatten(0, 1)
        tower = m.storm.frame_encoder(frames, return_dict=True).last_hidden_state  # (6, 16 + 1, 24)
        embedded = m.storm.embed_frames(frames)
        cls_index = {"vim": 8, "vim_first_cls": 0, "vit": 0, "vit_dict": 0}[encoder]
        patches = torch.cat([tower[:, :cls_index], tower[:, cls_index + 1:]], 1)  # the CLS token is dropped
        torch.testing.assert_close(embedded, m.storm.frame_proj(patches))
        out = m(x, output_hidden_states=True)
    assert out.logits.shape == (2, 3)
    assert [k.shape[1] for k in out.kept_tokens] == cfg.token_counts(3)[1:] == [32, 16, 8]
    loss = m.train()(x, labels=torch.tensor([0, 1])).loss
    loss.backward()
    assert all(p.grad is not None for p in m.storm.frame_encoder.parameters() if p.requires_grad)
    if encoder in ("vim", "vit_dict"):  # save / load keeps the nested encoder
        m.eval().save_pretrained(tmp_path)
        saved = json.loads((tmp_path / "config.json").read_text())
        assert saved["vision_config"]["model_type"] == ("ssmvl_vim" if encoder == "vim" else "vit")
        loaded = StormForVideoClassification.from_pretrained(tmp_path).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(x).logits, m(x).logits, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["storm-tiny", "storm-small"])
def test_presets(preset):
    data = json.loads((CONFIGS / f"{preset}.json").read_text())
    assert data["model_type"] == "ssmvl_storm"
    cfg = StormConfig(**{k: v for k, v in data.items() if not k.startswith("_") and k != "model_type"})
    with torch.device("meta"):
        m = StormForVideoClassification(cfg)
    params = sum(p.numel() for p in m.parameters())
    assert f"{params:,} parameters" in data["_about"]
    assert cfg.num_output_tokens(cfg.num_frames) == data["_output_tokens_at_num_frames"]
