"""Vim family: shapes, save/load, remote code and pipeline without ssmvl importable, any input size, batching,
gradient checkpointing, heads, input errors, and the converter (parity against an independent forward written here
over the *official* key names, strict key accounting, variant check, CLI end to end)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ssmvl.conversion import convert_vim_to_hf as conv
from ssmvl.modeling.configuration_vim import VimConfig
from ssmvl.modeling.modeling_vim import VimForImageClassification, VimModel, resample_pos_embed
from ssmvl.modeling.ssm_ops import selective_scan_ref


def tiny_config(**kw):
    base = dict(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=2, state_size=4, num_labels=3,
                ssm_backend="torch")
    base.update(kw)
    return VimConfig(**base)


def pixels(batch=2, size=64, seed=0, channels=3):
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VimForImageClassification(tiny_config()).eval()


# ---------------------------------------------------------------------------------------------------------------------
# an official-layout checkpoint and an independent forward over it (hustvl/Vim vim/models_mamba.py, mamba_simple.py)
# ---------------------------------------------------------------------------------------------------------------------
def official_state_dict(d=32, depth=2, n=4, patch=16, img=64, classes=3, expand=2, k=4, chans=3, seed=0,
                        device=None):
    """Random weights with the exact official key names and shapes (shapes written from mamba_simple.py, not read from
    our model). Values are scaled like a trained model so that activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    i, r, m = expand * d, -(-d // 16), (img // patch) ** 2

    def rnd(*shape, s=0.02, mean=0.0):
        if device == "meta":
            return torch.empty(*shape, device="meta")
        return torch.randn(*shape, generator=g) * s + mean

    sd = {
        "patch_embed.proj.weight": rnd(d, chans, patch, patch, s=0.05), "patch_embed.proj.bias": rnd(d),
        "cls_token": rnd(1, 1, d, s=0.5), "pos_embed": rnd(1, m + 1, d, s=0.5),
    }
    for layer in range(depth):
        p = f"layers.{layer}.mixer."
        sd[p + "in_proj.weight"] = rnd(2 * i, d, s=d**-0.5)
        for s in ("", "_b"):
            sd[f"{p}conv1d{s}.weight"] = rnd(i, 1, k, s=0.3)
            sd[f"{p}conv1d{s}.bias"] = rnd(i, s=0.1)
            sd[f"{p}x_proj{s}.weight"] = rnd(r + 2 * n, i, s=i**-0.5)
            sd[f"{p}dt_proj{s}.weight"] = rnd(i, r, s=r**-0.5)
            sd[f"{p}dt_proj{s}.bias"] = rnd(i, s=0.5, mean=-3.0)
            a = "A_log" if s == "" else "A_b_log"
            sd[p + a] = (torch.log(torch.arange(1, n + 1.0)).expand(i, n) + rnd(i, n, s=0.1)
                         if device != "meta" else rnd(i, n))
            sd[f"{p}D{s}"] = rnd(i, s=0.1, mean=1.0)
        sd[p + "out_proj.weight"] = rnd(d, i, s=i**-0.5)
        sd[f"layers.{layer}.norm.weight"] = rnd(d, s=0.1, mean=1.0)
    sd["norm_f.weight"] = rnd(d, s=0.1, mean=1.0)
    sd["head.weight"], sd["head.bias"] = rnd(classes, d, s=0.2), rnd(classes, s=0.1)
    return sd


def reference_vim_logits(sd, x, eps=1e-5, k=4):
    """Official VisionMamba.forward (eval, bimamba v2, middle cls token, rms norm, divide_out), written here step by
    step with explicit loops; only the scan itself is ssm_ops.selective_scan_ref."""
    w = sd["patch_embed.proj.weight"]
    d, patch = w.shape[0], w.shape[-1]
    n = sd["layers.0.mixer.A_log"].shape[1]
    r = sd["layers.0.mixer.dt_proj.weight"].shape[1]
    depth = 1 + max(int(key.split(".")[1]) for key in sd if key.startswith("layers."))
    b, _, hh, ww = x.shape
    # PatchEmbed: conv as an unfold + matmul
    cols = F.unfold(x, kernel_size=patch, stride=patch)  # (b, C*p*p, M)
    tok = (w.reshape(d, -1) @ cols).transpose(1, 2) + sd["patch_embed.proj.bias"]  # (b, M, D)
    m = tok.shape[1]
    mid = m // 2
    tok = torch.cat([tok[:, :mid], sd["cls_token"].expand(b, 1, d), tok[:, mid:]], dim=1) + sd["pos_embed"]

    def rms(v, weight):
        return v / torch.sqrt((v * v).mean(-1, keepdim=True) + eps) * weight

    def one_direction(xz, pre, suffix, a_key):
        seqlen = xz.shape[-1]
        xs, z = xz[:, : xz.shape[1] // 2], xz[:, xz.shape[1] // 2:]
        cw, cb = sd[f"{pre}conv1d{suffix}.weight"][:, 0], sd[f"{pre}conv1d{suffix}.bias"]  # (I, K)
        padded = F.pad(xs, (k - 1, 0))
        conv = sum(padded[:, :, j:j + seqlen] * cw[:, j, None] for j in range(k)) + cb[:, None]
        u = conv * torch.sigmoid(conv)  # silu
        proj = sd[f"{pre}x_proj{suffix}.weight"] @ u  # (b, R + 2N, L)
        dt = sd[f"{pre}dt_proj{suffix}.weight"] @ proj[:, :r]
        return selective_scan_ref(u, dt, -torch.exp(sd[pre + a_key]), proj[:, r:r + n], proj[:, r + n:],
                                  D=sd[f"{pre}D{suffix}"], z=z, delta_bias=sd[f"{pre}dt_proj{suffix}.bias"],
                                  delta_softplus=True)

    residual, hidden = None, tok
    for layer in range(depth):
        pre = f"layers.{layer}.mixer."
        residual = hidden if residual is None else residual + hidden
        h = rms(residual, sd[f"layers.{layer}.norm.weight"])
        xz = sd[pre + "in_proj.weight"] @ h.transpose(1, 2)  # (b, 2I, L)
        y_f = one_direction(xz, pre, "", "A_log")
        y_b = torch.flip(one_direction(torch.flip(xz, [2]), pre, "_b", "A_b_log"), [2])
        hidden = ((y_f + y_b) / 2).transpose(1, 2) @ sd[pre + "out_proj.weight"].T
    out = rms(residual + hidden, sd["norm_f.weight"])
    return out[:, mid] @ sd["head.weight"].T + sd["head.bias"]


# ---------------------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------------------
def test_output_shapes(model):
    cfg = model.config
    out = model(pixels(), output_hidden_states=True)
    assert out.logits.shape == (2, 3)
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1
    assert all(h.shape == (2, 16 + 1, 32) for h in out.hidden_states)
    base = model.vim(pixels(), output_hidden_states=True)
    assert base.last_hidden_state.shape == (2, 17, 32) and base.pooler_output.shape == (2, 32)
    torch.testing.assert_close(base.hidden_states[-1], base.last_hidden_state)
    torch.testing.assert_close(base.pooler_output, base.last_hidden_state[:, 8])  # middle cls token: 16 // 2
    torch.testing.assert_close(model.head(base.pooler_output), out.logits)
    loss = model(pixels(), labels=torch.tensor([0, 2])).loss
    assert loss.ndim == 0 and torch.isfinite(loss)
    mean_cfg = tiny_config(final_pool_type="mean", use_cls_token=False)
    m2 = VimModel(mean_cfg).eval()
    o2 = m2(pixels())
    assert o2.last_hidden_state.shape == (2, 16, 32)
    torch.testing.assert_close(o2.pooler_output, o2.last_hidden_state.mean(1))


def test_problem_types():
    torch.manual_seed(0)
    reg = VimForImageClassification(tiny_config(num_labels=1)).eval()
    assert reg(pixels(), labels=torch.tensor([0.5, -1.0])).loss.ndim == 0
    ml = VimForImageClassification(tiny_config(problem_type="multi_label_classification")).eval()
    assert ml(pixels(), labels=torch.tensor([[1.0, 0, 1], [0, 1, 0]])).loss.ndim == 0


def test_config_validation():
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        VimConfig(image_size=100, patch_size=16)
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        VimConfig(hidden_size=0)
    with pytest.raises(ValueError, match="use_cls_token"):
        VimConfig(use_cls_token=False, final_pool_type="cls")
    for variant, d in (("vim-tiny", 192), ("vim-small", 384), ("vim-base", 768)):
        cfg = conv.load_preset(variant)
        assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.state_size, cfg.patch_size) == (d, 24, 16, 16)
        assert cfg.final_pool_type == "cls" and cfg.use_middle_cls_token and cfg.rms_norm and cfg.bimamba


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = VimForImageClassification.from_pretrained(tmp_path).eval()
    x = pixels()
    torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)
    assert (tmp_path / "modeling_vim.py").is_file() and (tmp_path / "ssm_layers.py").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"]["AutoModelForImageClassification"] == \
        "modeling_vim.VimForImageClassification"


def test_other_input_sizes(model):
    x64 = pixels()
    torch.testing.assert_close(model(x64, interpolate_pos_encoding=True).logits, model(x64).logits, rtol=0, atol=0)
    for size in (96, 128):
        out = model(pixels(size=size), interpolate_pos_encoding=True, output_hidden_states=True)
        assert out.logits.shape == (2, 3) and out.hidden_states[-1].shape == (2, (size // 16) ** 2 + 1, 32)
    out = model(torch.randn(1, 3, 48, 96), interpolate_pos_encoding=True)  # non-square
    assert out.logits.shape == (1, 3)


def test_patchify_as_a_matrix_product_equals_the_conv(model):
    """The patch embedding runs as one matrix product of patch rows (kernel = stride): the conv's numbers, and a hook
    on the conv (or any other module in its place) keeps the module call."""
    pe = model.vim.patch_embed
    x = pixels(size=64, seed=4)
    want = pe.proj(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pe(x), want, rtol=1e-5, atol=1e-5)
    calls = []
    handle = pe.proj.register_forward_hook(lambda *a: calls.append(1))
    try:
        torch.testing.assert_close(pe(x), want, rtol=0, atol=0)
    finally:
        handle.remove()
    assert calls == [1]


def test_cuda_graph_setting_is_off_by_default_and_inert_on_cpu():
    assert VimConfig().use_cuda_graph is False
    torch.manual_seed(0)
    graphed = VimForImageClassification(tiny_config(use_cuda_graph=True)).eval()
    torch.manual_seed(0)
    plain = VimForImageClassification(tiny_config()).eval()
    x = pixels(seed=5)
    with torch.no_grad():
        for _ in range(3):  # CPU: always the eager forward, no graph kept
            torch.testing.assert_close(graphed(x).logits, plain(x).logits, rtol=0, atol=0)
    from ssmvl.modeling.cuda_graphs import ForwardGraphs

    assert ForwardGraphs.count(graphed.vim) == 0


def test_pos_embed_resampling_keeps_middle_cls_position():
    pos = torch.randn(1, 16 + 1, 8)
    new = resample_pos_embed(pos, (4, 4), (6, 6), 8, 18)  # middle cls: 16 // 2 -> 36 // 2
    assert new.shape == (1, 37, 8)
    torch.testing.assert_close(new[:, 18], pos[:, 8])
    patch = torch.cat([pos[:, :8], pos[:, 9:]], 1).reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    want = F.interpolate(patch, size=(6, 6), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(torch.cat([new[:, :18], new[:, 19:]], 1), want.permute(0, 2, 3, 1).reshape(1, 36, 8))


def test_batched_equals_one_by_one(model):
    x = pixels(batch=3, seed=1)
    batched = model(x).logits
    single = torch.cat([model(x[i:i + 1]).logits for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    cfg = tiny_config(num_hidden_layers=3)
    m = VimForImageClassification(cfg)
    m.train()
    x, labels = pixels(), torch.tensor([1, 2])

    def grads():
        m.zero_grad()
        m(x, labels=labels).loss.backward()
        return {k: p.grad.clone() for k, p in m.named_parameters()}

    plain = grads()
    (getattr(m, "activation_checkpointing_enable", None) or m.gradient_checkpointing_enable)()
    assert all(b.gradient_checkpointing for b in m.vim.layers)
    ckpt = grads()
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-6, msg=k)


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    m = VimForImageClassification(tiny_config(drop_path_rate=0.5))
    x = pixels(batch=4)
    m.eval()
    torch.testing.assert_close(m(x).logits, m(x).logits)
    m.train()
    torch.manual_seed(1)
    a = m(x).logits
    torch.manual_seed(2)
    assert not torch.allclose(a, m(x).logits)


def test_bad_inputs(model):
    with pytest.raises(ValueError, match=r"60x64 is not a multiple of the patch size 16"):
        model(torch.randn(1, 3, 60, 64))
    with pytest.raises(ValueError, match="1 channels.*num_channels=3"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"96x96 differs from the model's image_size 64x64.*interpolate_pos_encoding"):
        model(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match="pixel_values must be"):
        model(torch.randn(3, 64, 64))


def test_new_head_with_other_num_labels(model, tmp_path):
    model.save_pretrained(tmp_path)
    m5 = VimForImageClassification.from_pretrained(tmp_path, num_labels=5, ignore_mismatched_sizes=True).eval()
    assert m5(pixels()).logits.shape == (2, 5)
    torch.testing.assert_close(m5.vim.pos_embed, model.vim.pos_embed)
    with pytest.raises(Exception, match="ignore_mismatched_sizes"):
        VimForImageClassification.from_pretrained(tmp_path, num_labels=5)


def test_processor_grayscale_and_rgba(model):
    proc = conv.vim_image_processor(model.config)
    rng = np.random.default_rng(0)
    for mode in ("L", "RGBA", "RGB", "P"):
        img = Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).convert(mode)
        pv = proc(img, return_tensors="pt")["pixel_values"]
        assert pv.shape == (1, 3, 64, 64), mode
        assert model(pv).logits.shape == (1, 3)


# ---------------------------------------------------------------------------------------------------------------------
# remote code + pipeline, in a subprocess where ssmvl cannot be imported
# ---------------------------------------------------------------------------------------------------------------------
REMOTE_SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys
    class BlockSsmvl(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "ssmvl" or name.startswith("ssmvl."):
                raise ModuleNotFoundError("ssmvl is blocked in this test")
    sys.meta_path.insert(0, BlockSsmvl())
    try:
        import ssmvl
        raise SystemExit("ssmvl importable")
    except ModuleNotFoundError:
        pass
    import numpy as np, torch
    from PIL import Image
    from sklearn.datasets import load_sample_image
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, pipeline
    d = sys.argv[1]
    m = AutoModelForImageClassification.from_pretrained(d, trust_remote_code=True).eval()
    x = torch.load(d + "/x.pt")
    with torch.no_grad():
        torch.save(m(x).logits, d + "/remote_logits.pt")
    img = Image.fromarray(load_sample_image("china.jpg"))
    clf = pipeline("image-classification", model=d, trust_remote_code=True)
    preds = clf(img, top_k=3)
    gray = clf(img.convert("L"), top_k=1)
    rgba = clf(img.convert("RGBA"), top_k=1)
    proc = AutoImageProcessor.from_pretrained(d)
    print(json.dumps({"model_class": type(m).__name__, "module": type(m).__module__, "preds": preds,
                      "gray": gray, "rgba": rgba, "processor": type(proc).__name__,
                      "ssmvl_loaded": any(k.startswith("ssmvl") for k in sys.modules)}))
""")


@pytest.fixture(scope="module")
def remote_run(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("vim_remote")
    model.config.id2label = {0: "cat", 1: "dog", 2: "bird"}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    model.save_pretrained(d)
    conv.vim_image_processor(model.config).save_pretrained(d)
    x = pixels(seed=3)
    torch.save(x, d / "x.pt")
    with torch.no_grad():
        local = model(x).logits
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(d / "hf_modules"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    script = d / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(d)], cwd=d, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return d, local, result


def test_trust_remote_code_without_ssmvl(remote_run):
    d, local, result = remote_run
    assert result["model_class"] == "VimForImageClassification" and not result["ssmvl_loaded"]
    assert result["module"].startswith("transformers_modules")
    torch.testing.assert_close(torch.load(d / "remote_logits.pt"), local, rtol=0, atol=1e-6)


def test_pipeline_without_ssmvl(remote_run):
    _, _, result = remote_run
    assert len(result["preds"]) == 3 and {p["label"] for p in result["preds"]} == {"cat", "dog", "bird"}
    assert abs(sum(p["score"] for p in result["preds"]) - 1) < 1e-4
    assert result["gray"][0]["label"] in {"cat", "dog", "bird"} and result["rgba"][0]["label"] in {"cat", "dog", "bird"}
    assert result["processor"].startswith("CLIPImageProcessor")  # what vim_image_processor saves


# ---------------------------------------------------------------------------------------------------------------------
# converter
# ---------------------------------------------------------------------------------------------------------------------
def test_convert_parity_against_independent_forward():
    sd = official_state_dict()
    cfg = conv.infer_config_from_state_dict(sd, ssm_backend="torch")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.state_size, cfg.patch_size, cfg.image_size,
            cfg.num_labels, cfg.time_step_rank) == (32, 2, 4, 16, 64, 3, 2)
    converted = conv.convert_state_dict(sd, cfg)
    assert set(converted) == {("head." + k[5:]) if k.startswith("head.") else "vim." + k for k in sd}
    m = VimForImageClassification(cfg).eval()
    m.load_state_dict(converted, strict=True)
    x = pixels(seed=5)
    with torch.no_grad():
        ours = m(x).logits
        ref = reference_vim_logits(sd, x)
        conv_ref = conv.original_forward(sd, cfg, x)
    assert ref.abs().max() > 0.05  # a real signal, not all zeros
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(conv_ref, ref, rtol=0, atol=1e-4)
    report = conv.parity_report(m, sd, cfg)
    assert report["passed"] and report["max_abs_diff"] <= 1e-4 and report["top1_agreement"] == 1.0
    # the reference backend agrees too
    m.config.ssm_backend = "reference"
    for block in m.vim.layers:
        block.mixer.ssm_backend = "reference"
    with torch.no_grad():
        torch.testing.assert_close(m(x).logits, ref, rtol=0, atol=1e-4)


def test_convert_strict_key_accounting():
    sd = official_state_dict()
    cfg = conv.infer_config_from_state_dict(sd)
    bad = dict(sd)
    del bad["layers.1.mixer.D_b"]
    bad["layers.0.mixer.extra_scale"] = torch.ones(1)
    bad["layers.0.mixer.x_proj_b.weight"] = torch.zeros(5, 64)
    with pytest.raises(ValueError) as err:
        conv.convert_state_dict(bad, cfg)
    msg = str(err.value)
    assert "1 missing key(s): layers.1.mixer.D_b" in msg
    assert "1 unexpected key(s): layers.0.mixer.extra_scale" in msg
    assert "layers.0.mixer.x_proj_b.weight: checkpoint (5, 64) vs expected (10, 64)" in msg


def test_wrong_variant_error():
    small = official_state_dict(d=384, depth=24, n=16, img=224, classes=1000, device="meta")
    with pytest.raises(ValueError, match=r"not vim-tiny: patch_embed\.proj\.weight has shape \(384, 3, 16, 16\), "
                                          r"vim-tiny expects \(192, 3, 16, 16\).*hidden_size=384"):
        conv.check_variant(small, conv.load_preset("vim-tiny"), "vim-tiny")
    conv.check_variant(small, conv.load_preset("vim-small"), "vim-small")  # the right one passes
    shallow = {k: v for k, v in small.items() if not k.startswith("layers.23.")}
    with pytest.raises(ValueError, match="23 blocks"):
        conv.check_variant(shallow, conv.load_preset("vim-small"), "vim-small")


def _cli_round_trip(tmp_path, variant, sd, size, hidden, classes):
    ckpt = tmp_path / "vim.pth"
    torch.save({"model": sd, "epoch": 300}, ckpt)
    out = tmp_path / "out"
    conv.main(["--checkpoint", str(ckpt), "--variant", str(variant), "--out", str(out)])
    report = json.loads((out / "parity_report.json").read_text())
    assert report["passed"] and report["max_abs_diff"] <= 1e-4
    for f in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_vim.py"):
        assert (out / f).is_file(), f
    m = VimForImageClassification.from_pretrained(out).eval()
    assert m.config.hidden_size == hidden and m.config.num_labels == classes
    x = pixels(batch=1, size=size, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(m(x).logits, reference_vim_logits(sd, x), rtol=0, atol=1e-4)
    return report


def test_cli_end_to_end(tmp_path):
    """CLI .pth -> folder with a tiny JSON config as the variant (the presets are checked by the slow test below)."""
    variant = tmp_path / "vim-micro.json"
    variant.write_text(json.dumps(dict(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=2,
                                       state_size=4, _note="a comment key")))
    _cli_round_trip(tmp_path, variant, official_state_dict(seed=1), 64, 32, 3)
    with pytest.raises(ValueError, match="Unknown Vim variant 'vim-huge'"):
        conv.main(["--checkpoint", str(tmp_path / "vim.pth"), "--variant", "vim-huge", "--out", str(tmp_path / "x")])


@pytest.mark.slow
def test_cli_end_to_end_vim_tiny_preset(tmp_path):
    """The real vim-tiny preset (random weights in the official layout, 24 blocks at 224 px) through the CLI."""
    sd = official_state_dict(d=192, depth=24, n=16, img=224, classes=1000, seed=1)
    _cli_round_trip(tmp_path, "vim-tiny", sd, 224, 192, 1000)
