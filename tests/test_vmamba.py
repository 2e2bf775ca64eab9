"""VMamba family: shapes, save/load, loading through trust_remote_code without ssmvl, any size multiple of 32,
batching, stage features, input/config errors, loss, gradient checkpointing, SS2D init, PEFT LoRA on the SS2D
projections, and the converter against an independent
reference forward written here over the official key names (MzeroMiko/VMamba classification/models/vmamba.py)."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from ssmvl.conversion import convert_vmamba_to_hf as conv
from ssmvl.modeling import ssm_ops
from ssmvl.modeling.configuration_vmamba import VMambaConfig
from ssmvl.modeling.modeling_vmamba import (
    VMAMBA_LORA_TARGETS, VMambaForImageClassification, VMambaModel, cross_merge, cross_scan,
)


TINY = dict(image_size=64, embed_dim=8, depths=[1, 1, 2, 1], d_state=2, ssm_ratio=2.0, num_labels=3,
            drop_path_rate=0.0)


def tiny_config(**kw):
    return VMambaConfig(**{**TINY, **kw})


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return VMambaForImageClassification(tiny_config(**kw)).eval()


def images(b=2, size=64, seed=1):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------------------
def test_shapes_and_outputs():
    model = tiny_model()
    with torch.no_grad():
        out = model(images(), output_hidden_states=True)
        base = model.vmamba(images())
    assert out.logits.shape == (2, 3)
    assert [tuple(h.shape) for h in out.hidden_states] == [
        (2, 8, 16, 16), (2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)]
    assert base.last_hidden_state.shape == (2, 64, 2, 2)  # channel-first
    assert torch.allclose(base.pooler_output, base.last_hidden_state.mean((2, 3)), atol=1e-6)
    assert [f.shape[1] for f in base.feature_maps] == [8, 16, 32, 64]  # default: every stage


def test_gated_forward_type_and_other_stems():
    for kw in (dict(forward_type="v2"), dict(forward_type="v05_noz", downsample="v2", patchembed="v1"),
               dict(downsample="v1", ssm_conv=1, mlp_ratio=0.0)):
        model = tiny_model(**kw)
        with torch.no_grad():
            assert torch.isfinite(model(images()).logits).all(), kw
    assert model.vmamba.layers[0].blocks[0].mlp is None
    gated = tiny_model(forward_type="v2")
    assert gated.vmamba.layers[0].blocks[0].op.in_proj.weight.shape == (32, 8)  # 2 * d_inner


def test_cross_scan_merge_is_adjoint_sum():
    x = torch.randn(2, 3, 4, 5)
    xs = cross_scan(x)
    assert xs.shape == (2, 4, 3, 20)
    assert torch.equal(xs[:, 1, :, 0:4], x[:, :, :, 0])  # column-major: first column first
    assert torch.equal(cross_merge(xs, 4, 5), 4 * x)  # each direction returns to its own pixel


def test_save_load_roundtrip(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = VMambaForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(model(images()).logits, loaded(images()).logits)
    from transformers import AutoModel

    base = AutoModel.from_pretrained(tmp_path)
    assert isinstance(base, VMambaModel)


def test_trust_remote_code_without_ssmvl(tmp_path):
    model_dir, work = tmp_path / "model", tmp_path / "work"
    work.mkdir()
    model = tiny_model()
    model.save_pretrained(model_dir)
    conv.make_image_processor(model.config).save_pretrained(model_dir)
    x = images()
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(x).logits, tmp_path / "logits.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["ssmvl"] = None  # the editable install must not help: `import ssmvl` now fails
        try:
            import ssmvl
            raise SystemExit("ssmvl importable")
        except ImportError:
            pass
        import numpy as np, torch
        from PIL import Image
        from transformers import AutoImageProcessor, AutoModelForImageClassification, AutoConfig
        d = {str(model_dir)!r}
        model = AutoModelForImageClassification.from_pretrained(d, trust_remote_code=True).eval()
        assert "ssmvl" not in type(model).__module__.split(".")[0], type(model).__module__
        assert AutoConfig.from_pretrained(d, trust_remote_code=True).model_type == "ssmvl_vmamba"
        x = torch.load({str(tmp_path / "x.pt")!r})
        with torch.no_grad():
            logits = model(pixel_values=x).logits
        ref = torch.load({str(tmp_path / "logits.pt")!r})
        print("maxdiff", float((logits - ref).abs().max()))
        assert torch.allclose(logits, ref, atol=1e-6)
        proc = AutoImageProcessor.from_pretrained(d)
        img = Image.fromarray((np.random.RandomState(0).rand(90, 120, 3) * 255).astype("uint8"))
        pv = proc(img, return_tensors="pt")["pixel_values"]
        assert tuple(pv.shape) == (1, 3, 64, 64), pv.shape
        with torch.no_grad():
            model(pixel_values=pv)
        print("OK")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    res = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr


def test_any_multiple_of_32():
    model = tiny_model()
    with torch.no_grad():
        for size in (96, 128):
            out = model.vmamba(images(1, size))
            assert out.last_hidden_state.shape == (1, 64, size // 32, size // 32)
        out = model.vmamba(torch.randn(1, 3, 64, 96))
        assert out.last_hidden_state.shape == (1, 64, 2, 3)


def test_batched_equals_one_by_one():
    model = tiny_model()
    x = images(3)
    with torch.no_grad():
        batched = model(x).logits
        single = torch.cat([model(x[i:i + 1]).logits for i in range(3)])
    assert (batched - single).abs().max() <= 1e-5


def test_stage_features_out_indices():
    model = tiny_model(out_indices=[0, 2, -1])
    assert model.config.out_features == ["stem", "stage2", "stage4"]
    with torch.no_grad():
        out = model.vmamba(images(), output_hidden_states=True)
    assert [tuple(f.shape) for f in out.feature_maps] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 64, 2, 2)]
    assert torch.equal(out.feature_maps[1], out.hidden_states[2])
    same = tiny_config(out_features=["stem", "stage2", "stage4"])
    assert same.out_indices == [0, 2, 4]
    with pytest.raises(ValueError, match="name different stages"):
        tiny_config(out_features=["stage1"], out_indices=[2])
    with pytest.raises(ValueError, match="not in stage_names"):
        tiny_config(out_features=["stage9"])
    with pytest.raises(ValueError, match="out_indices"):
        tiny_config(out_indices=[7])


def test_bad_inputs():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"multiples of 32.*100x100.*128x128"):
        model(torch.randn(1, 3, 100, 100))
    with pytest.raises(ValueError, match="4 channels.*num_channels=3"):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match="pixel_values must be"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="needs pixel_values"):
        model.vmamba(None)


def test_config_validation():
    with pytest.raises(ValueError, match="hidden_sizes has 3 entries"):
        tiny_config(hidden_sizes=[8, 16, 32])
    with pytest.raises(ValueError, match="forward_type='v9'"):
        tiny_config(forward_type="v9")
    with pytest.raises(ValueError, match="image_size=60"):
        tiny_config(image_size=60)
    with pytest.raises(ValueError, match="depths"):
        tiny_config(depths=[1, 0, 1, 1])
    with pytest.raises(ValueError, match="ssm_conv"):
        tiny_config(ssm_conv=4)
    cfg = VMambaConfig()  # defaults = the tiny preset
    preset = conv.load_variant_config("vmamba-tiny")
    for name in ("depths", "hidden_sizes", "d_state", "ssm_ratio", "forward_type", "downsample", "patchembed"):
        assert getattr(cfg, name) == getattr(preset, name), name


def test_losses_and_gradient_checkpointing():
    model = tiny_model().train()
    x = images()
    out = model(x, labels=torch.tensor([0, 2]))
    assert out.loss.ndim == 0
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert all(any(f"{p}.{k}." in n for n in grads) for p in ("x_proj", "dt_projs") for k in range(4))
    assert any("A_logs" in n for n in grads)
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert model.vmamba.layers[0].blocks[0].gradient_checkpointing
    model(x, labels=torch.tensor([0, 2])).loss.backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], atol=1e-5), n
    multi = tiny_model(problem_type="multi_label_classification")
    assert multi(x, labels=torch.tensor([[1.0, 0, 1], [0, 1, 0]])).loss.ndim == 0
    reg = tiny_model(num_labels=1)
    assert reg(x, labels=torch.tensor([0.5, -1.0])).loss.ndim == 0


def test_ss2d_per_direction_projections_and_init():
    cfg = tiny_config(dt_min=0.002, dt_max=0.05)
    model = tiny_model(dt_min=0.002, dt_max=0.05)
    op = model.vmamba.layers[2].blocks[0].op  # dim 32: d_inner 64, dt_rank 2
    d, R, N = op.d_inner, op.dt_rank, cfg.d_state
    assert [type(m) for m in (*op.x_proj, *op.dt_projs)] == [torch.nn.Linear] * 8
    assert all(m.weight.shape == (R + 2 * N, d) and m.bias is None for m in op.x_proj)
    assert all(m.weight.shape == (d, R) and m.bias.shape == (d,) for m in op.dt_projs)
    names = {n for n, _ in model.named_parameters()}
    assert not any("x_proj_weight" in n or "dt_projs_weight" in n or "dt_projs_bias" in n for n in names)
    # Mamba init survives _init_weights (not the generic Linear trunc_normal(0.02)): x_proj U(+-d^-0.5),
    # dt weight U(+-R^-0.5), softplus(dt bias) in [dt_min, dt_max]
    xw = torch.stack([m.weight for m in op.x_proj])
    assert xw.abs().max() <= d**-0.5 and xw.std() > 0.5 * d**-0.5 / math.sqrt(3)
    dw = torch.stack([m.weight for m in op.dt_projs])
    assert dw.abs().max() <= R**-0.5 and dw.std() > 0.5 * R**-0.5 / math.sqrt(3)
    dt = F.softplus(torch.stack([m.bias for m in op.dt_projs]))
    assert dt.min() >= 0.002 * (1 - 1e-4) and dt.max() <= 0.05 * (1 + 1e-4)
    assert not torch.equal(op.dt_projs[0].bias, op.dt_projs[1].bias)  # each direction drawn independently


def test_lora_adapts_every_ss2d_projection():
    peft = pytest.importorskip("peft")
    # larger weights and dt than the fresh init so that the scan (not the D skip) carries the signal: the effect of
    # the x_proj / dt_projs adapters is then well above float noise
    model = tiny_model(initializer_range=0.3, dt_min=0.1, dt_max=1.0)
    x = images()
    with torch.no_grad():
        base = model(x).logits
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=VMAMBA_LORA_TARGETS,
                                                      init_lora_weights=False, modules_to_save=["classifier"]))
    adapted = {n.split("base_model.model.", 1)[1] for n, m in lora.named_modules()
               if isinstance(m, peft.tuners.lora.LoraLayer)}
    ops = [f"vmamba.layers.{i}.blocks.{j}.op" for i, depth in enumerate(TINY["depths"]) for j in range(depth)]
    expected = {f"{op}.{name}" for op in ops for name in
                ["in_proj", "out_proj"] + [f"{p}.{k}" for p in ("x_proj", "dt_projs") for k in range(4)]}
    assert adapted == expected  # every direction's x_proj / dt_projs, and nothing else (no MLP, no classifier)
    # why a regex: PEFT's list form matches name suffixes, so "x_proj" names the ModuleList, not its Linears
    from peft.tuners.tuners_utils import check_target_module_exists

    key = "vmamba.layers.0.blocks.0.op.x_proj.0"
    assert not check_target_module_exists(peft.LoraConfig(target_modules=["x_proj", "dt_projs"]), key)
    assert check_target_module_exists(peft.LoraConfig(target_modules=VMAMBA_LORA_TARGETS), key)
    assert lora.peft_config["default"].target_modules == VMAMBA_LORA_TARGETS
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert any(".x_proj.3.lora_A." in n for n in trainable) and any(".dt_projs.2.lora_B." in n for n in trainable)
    assert any("classifier.modules_to_save" in n for n in trainable)
    lora.eval()
    calls = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
             for n, m in lora.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    with torch.no_grad():
        adapted_logits = lora(x).logits
    for h in hooks:
        h.remove()
    assert len(calls) == len(expected) and set(calls.values()) == {1}  # each direction's Linear called once
    with torch.no_grad():
        # with only the x_proj / dt_projs adapters on, the output still changes: the scan calls them as modules
        in_out = [m for n, m in lora.named_modules()
                  if isinstance(m, peft.tuners.lora.LoraLayer) and n.endswith(("in_proj", "out_proj"))]
        for module in in_out:
            module.enable_adapters(False)
        scan_only = lora(x).logits
        for module in in_out:
            module.enable_adapters(True)
    scale = float(base.abs().max())
    assert (adapted_logits - base).abs().max() > 1e-2 * scale
    assert (scan_only - base).abs().max() > 1e-2 * scale
    merged = lora.merge_and_unload().eval()
    assert not any(isinstance(m, peft.tuners.lora.LoraLayer) for m in merged.modules())
    assert isinstance(merged.vmamba.layers[0].blocks[0].op.x_proj[0], torch.nn.Linear)
    with torch.no_grad():
        merged_logits = merged(x).logits
    diff = float((merged_logits - adapted_logits).abs().max())
    assert diff <= 1e-5, (diff, scale)


# ---------------------------------------------------------------------------------------------------------------------
# converter: a random state dict in the official layout, and an independent forward over it
# ---------------------------------------------------------------------------------------------------------------------
def official_state_dict(cfg: VMambaConfig, seed=0, linear2d_as_conv=False):
    """Key names and shapes of upstream `VSSM` (norm_layer ln2d, patchembed v2, downsample v3, forward v05_noz,
    conv bias off), written from upstream's module definitions, not from our model."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=None):
        scale = scale if scale is not None else 1.0 / math.sqrt(shape[-1] if len(shape) > 1 else 4)
        return torch.randn(*shape, generator=g) * scale

    def norm(prefix, c):
        return {f"{prefix}.weight": 1 + 0.1 * rnd(c, scale=1.0), f"{prefix}.bias": 0.1 * rnd(c, scale=1.0)}

    def lin(prefix, out, inp, bias=True):
        w = rnd(out, inp)
        d = {f"{prefix}.weight": w[:, :, None, None] if linear2d_as_conv else w}
        if bias:
            d[f"{prefix}.bias"] = 0.1 * rnd(out, scale=1.0)
        return d

    dims, N, K = cfg.hidden_sizes, cfg.d_state, 4
    sd = {"patch_embed.0.weight": rnd(dims[0] // 2, 3, 3, 3, scale=0.3), "patch_embed.0.bias": rnd(dims[0] // 2),
          "patch_embed.5.weight": rnd(dims[0], dims[0] // 2, 3, 3, scale=0.2), "patch_embed.5.bias": rnd(dims[0])}
    sd.update(norm("patch_embed.2", dims[0] // 2))
    sd.update(norm("patch_embed.7", dims[0]))
    for i, (dim, depth) in enumerate(zip(dims, cfg.depths)):
        di, R = int(cfg.ssm_ratio * dim), math.ceil(dim / 16)
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}"
            sd.update(norm(f"{p}.norm", dim))
            sd.update(lin(f"{p}.op.in_proj", di, dim, bias=False))
            sd[f"{p}.op.conv2d.weight"] = rnd(di, 1, 3, 3, scale=0.3)
            sd[f"{p}.op.x_proj_weight"] = rnd(K, R + 2 * N, di)
            sd[f"{p}.op.dt_projs_weight"] = rnd(K, di, R)
            sd[f"{p}.op.dt_projs_bias"] = torch.log(torch.expm1(torch.rand(K, di, generator=g) * 0.1 + 0.001))
            sd[f"{p}.op.A_logs"] = torch.log(torch.rand(K * di, N, generator=g) * 3 + 0.5)
            sd[f"{p}.op.Ds"] = 1 + 0.1 * rnd(K * di, scale=1.0)
            sd.update(norm(f"{p}.op.out_norm", di))
            sd.update(lin(f"{p}.op.out_proj", dim, di, bias=False))
            sd.update(norm(f"{p}.norm2", dim))
            sd.update(lin(f"{p}.mlp.fc1", int(dim * cfg.mlp_ratio), dim))
            sd.update(lin(f"{p}.mlp.fc2", dim, int(dim * cfg.mlp_ratio)))
        if i < len(dims) - 1:
            sd[f"layers.{i}.downsample.1.weight"] = rnd(dims[i + 1], dim, 3, 3, scale=0.1)
            sd[f"layers.{i}.downsample.1.bias"] = 0.1 * rnd(dims[i + 1], scale=1.0)
            sd.update(norm(f"layers.{i}.downsample.3", dims[i + 1]))
    sd.update(norm("classifier.norm", dims[-1]))
    sd.update(lin("classifier.head", cfg.num_labels, dims[-1]))
    return sd


def reference_forward(sd, cfg: VMambaConfig, x):
    """Upstream VSSM forward, channel-first (ln2d), over the official keys, with one sequential scan per direction."""

    def ln2d(t, p):
        t = F.layer_norm(t.permute(0, 2, 3, 1), (t.shape[1],), sd[p + ".weight"], sd[p + ".bias"])
        return t.permute(0, 3, 1, 2)

    def lin2d(t, p):
        w = sd[p + ".weight"]
        return F.conv2d(t, w.reshape(w.shape[0], w.shape[1], 1, 1), sd.get(p + ".bias"))

    x = F.conv2d(x, sd["patch_embed.0.weight"], sd["patch_embed.0.bias"], stride=2, padding=1)
    x = F.gelu(ln2d(x, "patch_embed.2"))
    x = ln2d(F.conv2d(x, sd["patch_embed.5.weight"], sd["patch_embed.5.bias"], stride=2, padding=1), "patch_embed.7")
    N = cfg.d_state
    for i, depth in enumerate(cfg.depths):
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}"
            h = lin2d(ln2d(x, p + ".norm"), p + ".op.in_proj")
            di = h.shape[1]
            h = F.silu(F.conv2d(h, sd[p + ".op.conv2d.weight"], padding=1, groups=di))
            B, D, H, W = h.shape
            L = H * W
            xs = [h.reshape(B, D, L), h.transpose(2, 3).reshape(B, D, L)]
            xs += [xs[0].flip(-1), xs[1].flip(-1)]
            R = sd[p + ".op.dt_projs_weight"].shape[-1]
            outs = []
            for k in range(4):
                dbl = torch.einsum("bdl,cd->bcl", xs[k], sd[p + ".op.x_proj_weight"][k])
                dt, Bk, Ck = dbl[:, :R], dbl[:, R:R + N], dbl[:, R + N:]
                dt = torch.einsum("brl,dr->bdl", dt, sd[p + ".op.dt_projs_weight"][k])
                A = -torch.exp(sd[p + ".op.A_logs"][k * di:(k + 1) * di])
                outs.append(ssm_ops.selective_scan_ref(
                    xs[k], dt, A, Bk, Ck, D=sd[p + ".op.Ds"][k * di:(k + 1) * di],
                    delta_bias=sd[p + ".op.dt_projs_bias"][k], delta_softplus=True))
            # upstream CHECK.cross_merge: y0 + flip(y2) + transpose(y1) + transpose(flip(y3))
            y = (outs[0] + outs[2].flip(-1)).reshape(B, D, H, W)
            y = y + (outs[1] + outs[3].flip(-1)).reshape(B, D, W, H).transpose(2, 3)
            y = lin2d(ln2d(y, p + ".op.out_norm"), p + ".op.out_proj")
            x = x + y
            x = x + lin2d(F.gelu(lin2d(ln2d(x, p + ".norm2"), p + ".mlp.fc1")), p + ".mlp.fc2")
        if i < len(cfg.depths) - 1:
            x = F.conv2d(x, sd[f"layers.{i}.downsample.1.weight"], sd[f"layers.{i}.downsample.1.bias"], stride=2,
                         padding=1)
            x = ln2d(x, f"layers.{i}.downsample.3")
    x = ln2d(x, "classifier.norm").mean((2, 3))
    return F.linear(x, sd["classifier.head.weight"], sd["classifier.head.bias"])


class Opaque:
    """Stands for any non-tensor object a training checkpoint pickles (upstream: the yacs config)."""


CONV_TINY = dict(image_size=64, embed_dim=16, depths=[1, 2, 1, 1], d_state=2, ssm_ratio=1.0, num_labels=5,
                 drop_path_rate=0.0)


def test_converter_parity_with_independent_reference():
    cfg = VMambaConfig(**CONV_TINY)
    sd = official_state_dict(cfg)
    model = VMambaForImageClassification(cfg).eval()
    model.load_state_dict(conv.convert_state_dict(sd, cfg), strict=True)
    x = images(2, 64, seed=3)
    with torch.no_grad():
        ours = model(x).logits
        ref = reference_forward(sd, cfg, x)
    diff = float((ours - ref).abs().max())
    print(f"converter parity: max |logits - reference| = {diff:.2e} (logit scale {float(ref.abs().max()):.2f})")
    assert diff <= 1e-4
    # upstream Linear2d weights stored as (out, in, 1, 1) convert to the same model
    sd4 = official_state_dict(cfg, linear2d_as_conv=True)
    a, b = conv.convert_state_dict(sd4, cfg), conv.convert_state_dict(sd, cfg)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_converter_key_errors():
    cfg = VMambaConfig(**CONV_TINY)
    sd = official_state_dict(cfg)
    missing = dict(sd)
    del missing["layers.1.blocks.1.op.A_logs"]
    with pytest.raises(conv.ConversionError, match=r"missing \(1\).*layers\.1\.blocks\.1\.op\.A_logs"):
        conv.convert_state_dict(missing, cfg)
    extra = {**sd, "layers.0.blocks.0.op.bogus": torch.zeros(1), "pos_embed": torch.zeros(1)}
    with pytest.raises(conv.ConversionError, match=r"unexpected \(2\).*op\.bogus.*pos_embed"):
        conv.convert_state_dict(extra, cfg)
    bad = {**sd, "layers.0.blocks.0.mlp.fc1.weight": torch.zeros(7, 16)}
    with pytest.raises(conv.ConversionError, match=r"mis-shaped \(1\).*mlp\.fc1\.weight: checkpoint \(7, 16\)"):
        conv.convert_state_dict(bad, cfg)
    # upstream's stacked per-direction projections are accounted for (and named) in the official layout
    gone = dict(sd)
    del gone["layers.2.blocks.0.op.dt_projs_bias"]
    with pytest.raises(conv.ConversionError, match=r"missing \(1\).*layers\.2\.blocks\.0\.op\.dt_projs_bias") as err:
        conv.convert_state_dict(gone, cfg)
    assert "dt_projs.0" not in str(err.value)
    three = {**sd, "layers.0.blocks.0.op.x_proj_weight": sd["layers.0.blocks.0.op.x_proj_weight"][:3]}
    with pytest.raises(conv.ConversionError, match=r"mis-shaped \(1\).*layers\.0\.blocks\.0\.op\.x_proj_weight: "
                       r"checkpoint \(3, 5, 16\), model .*op\.x_proj_weight expects \(4, 5, 16\)"):
        conv.convert_state_dict(three, cfg)
    split = conv.convert_state_dict(sd, cfg)
    ours, theirs = "vmamba.layers.1.blocks.1.op.", "layers.1.blocks.1.op."
    for k in range(4):
        assert torch.equal(split[f"{ours}x_proj.{k}.weight"], sd[f"{theirs}x_proj_weight"][k])
        assert torch.equal(split[f"{ours}dt_projs.{k}.weight"], sd[f"{theirs}dt_projs_weight"][k])
        assert torch.equal(split[f"{ours}dt_projs.{k}.bias"], sd[f"{theirs}dt_projs_bias"][k])
    assert not any(k.endswith(("x_proj_weight", "dt_projs_weight", "dt_projs_bias")) for k in split)
    other = official_state_dict(VMambaConfig(**{**CONV_TINY, "depths": [1, 1, 1, 1]}))
    with pytest.raises(conv.ConversionError, match="another VMamba variant.*depths"):
        conv.convert_state_dict(other, cfg)
    wider = official_state_dict(VMambaConfig(**{**CONV_TINY, "embed_dim": 32}))
    with pytest.raises(conv.ConversionError, match="another VMamba variant.*hidden_sizes"):
        conv.convert_state_dict(wider, cfg)
    with pytest.raises(conv.ConversionError, match="Unknown VMamba variant"):
        conv.load_variant_config("vmamba-huge")


def test_convert_cli_path_end_to_end(tmp_path):
    cfg = VMambaConfig(**CONV_TINY)
    sd = official_state_dict(cfg)
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"model": sd, "epoch": 3}, ckpt)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.save(reference_forward(sd, cfg, x), tmp_path / "upstream_logits.pt")
    out = tmp_path / "hf"
    report = conv.convert(str(ckpt), "vmamba-tiny", str(out), config=cfg,
                          reference_logits=str(tmp_path / "upstream_logits.pt"))
    assert report["max_abs_diff_vs_upstream"] <= 1e-4 and report["top1_agree"]
    assert report["max_abs_diff_vs_reference_scan"] <= 1e-4
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_vmamba.py",
                 "configuration_vmamba.py", "ssm_ops.py", "parity_report.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["auto_map"]["AutoModelForImageClassification"] == \
        "modeling_vmamba.VMambaForImageClassification"
    # a full training checkpoint with pickled non-tensor objects is refused with instructions
    torch.save({"model": sd, "config": Opaque()}, tmp_path / "full.pth")
    with pytest.raises(conv.ConversionError, match="weights_only=True"):
        conv.load_original(str(tmp_path / "full.pth"))
