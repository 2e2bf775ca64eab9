"""The fused C++ CPU scan (kernels/cpu_scan.py, registered by ssmvl.modeling) under the `torch` backend: output, last
state and every gradient against the sequential `reference` in float64 (odd lengths around the 64-step block,
batch > 1, grouped B / C, initial state, channel-major tensors and a mixer's time-major views, each optional input
left out), the time-major op that torch.compile calls, the switch (SSMVL_CPU_SCAN_KERNEL=0 gives the eager path, equal
numbers) and the fallback when the build fails (one warning, correct numbers). The kernel is compiled once per machine
(about 25 s on 2 cores, then cached by torch); the tests skip where there is no C++ compiler or ninja."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from ssmvl.kernels import cpu_scan as ssm_cpu_kernel
from ssmvl.modeling import ssm_ops


@pytest.fixture(scope="module")
def kernel():
    if shutil.which("ninja") is None or not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler or ninja on this machine: the CPU scan kernel cannot be built (eager path only)")
    ops = ssm_cpu_kernel.load()
    assert ops is not None, f"the CPU scan kernel did not build: {ssm_cpu_kernel.error()}"
    return ops


@pytest.fixture
def calls(monkeypatch):
    """How often each kernel entry point ran."""
    counts = {"fused": 0, "forward": 0, "backward": 0}
    for name, key in (("selective_scan", "fused"), ("scan_forward", "forward"), ("scan_backward", "backward")):
        fn = getattr(ssm_cpu_kernel, name)

        def counted(*args, _fn=fn, _key=key, **kwargs):
            counts[_key] += 1
            return _fn(*args, **kwargs)

        monkeypatch.setattr(ssm_cpu_kernel, name, counted)
    return counts


def make_inputs(batch, dim, seqlen, dstate=4, groups=0, z=True, D=True, bias=True, h0=True, layout="channel",
                seed=0):
    """float64 leaves. layout "channel": contiguous (batch, dim, seqlen); "time": u / delta / z as a mixer hands
    them over, (batch, dim, seqlen) views of time-major (batch, seqlen, 2 * dim) projections, B / C slices of one."""
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64)

    def seq(scale=1.0):
        if layout == "channel":
            return torch.randn(batch, dim, seqlen, generator=g, **f64) * scale
        proj = torch.randn(batch, seqlen, 2 * dim, generator=g, **f64) * scale
        return proj[..., 1:dim + 1].transpose(1, 2)  # a strided view, channel stride 1

    def bc():
        shape = (batch, dstate, seqlen) if groups == 0 else (batch, groups, dstate, seqlen)
        if layout == "channel":
            return torch.randn(*shape, generator=g, **f64)
        rows = torch.randn(batch, seqlen, 3 * groups * dstate if groups else 3 * dstate, generator=g, **f64)
        part = rows[..., : (groups or 1) * dstate].transpose(1, 2)
        return part if groups == 0 else part.unflatten(1, (groups, dstate))

    inputs = dict(
        u=seq(), delta=seq(0.5), A=-torch.rand(dim, dstate, generator=g, **f64) * 4 - 0.1, B=bc(), C=bc(),
        D=torch.randn(dim, generator=g, **f64) if D else None, z=seq() if z else None,
        delta_bias=torch.rand(dim, generator=g, **f64) - 2 if bias else None,
        initial_state=torch.randn(batch, dim, dstate, generator=g, **f64) if h0 else None,
    )
    return {k: (v.detach().requires_grad_() if v is not None else None) for k, v in inputs.items()}


def run(backend, inputs, softplus=True):
    """y, last state and the gradient of every input, of a random weighting of y and the last state."""
    def copy(t):  # with t's strides, a view's gaps included (clone() would make a strided view dense)
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype).copy_(t.detach()).requires_grad_()

    fresh = {k: (copy(v) if v is not None else None) for k, v in inputs.items()}
    y, last = ssm_ops.selective_scan(**fresh, delta_softplus=softplus, return_last_state=True, backend=backend)
    g = torch.Generator().manual_seed(123)
    wy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    wl = torch.randn(last.shape, generator=g, dtype=last.dtype)
    ((y * wy).sum() + (last * wl).sum()).backward()
    return y, last, {k: v.grad for k, v in fresh.items() if v is not None}


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def assert_matches_reference(inputs, softplus=True, tol=1e-10):
    y_ref, last_ref, g_ref = run("reference", inputs, softplus)
    y, last, g = run("torch", inputs, softplus)
    assert y.dtype == torch.float64 and y.shape == y_ref.shape
    assert rel_err(y, y_ref) < tol
    # the last state is float32 by contract (see ssm_ops): compare it at that precision
    assert rel_err(last, last_ref) < 1e-6
    assert g.keys() == g_ref.keys()
    for name in g_ref:
        assert rel_err(g[name], g_ref[name]) < tol, name


@pytest.mark.parametrize("seqlen", [1, 63, 64, 65, 130])
def test_every_gradient_matches_reference(kernel, calls, seqlen):
    assert_matches_reference(make_inputs(batch=2, dim=20, seqlen=seqlen))
    assert calls["fused"] == 1


@pytest.mark.parametrize(
    "batch,dim,groups,layout,flags",
    [
        (1, 24, 4, "channel", dict()),  # VMamba-style grouped B / C
        (3, 16, 2, "time", dict()),  # a mixer's time-major views, grouped
        (2, 40, 0, "time", dict(z=False)),  # 40 channels: two vector blocks and a partial one
        (2, 12, 0, "channel", dict(D=False, bias=False, h0=False)),
        (1, 5, 0, "time", dict(z=False, D=False)),
    ],
)
def test_layouts_groups_and_optional_inputs(kernel, calls, batch, dim, groups, layout, flags):
    assert_matches_reference(make_inputs(batch=batch, dim=dim, seqlen=70, groups=groups, layout=layout, **flags))
    assert calls["fused"] == 1


def test_without_softplus(kernel):
    inputs = make_inputs(batch=2, dim=9, seqlen=33, bias=False)
    with torch.no_grad():
        inputs["delta"].abs_()  # a step size > 0 without the softplus
    assert_matches_reference(inputs, softplus=False)


@pytest.mark.parametrize("layout", ["channel", "time"])
def test_float32_and_bfloat16_inputs_use_it_too(kernel, calls, layout):
    """float32 has its own code (vector exp, 8 x 8 transposes of channel-major tiles, eight gB / gC sums at once):
    16 states and 20 channels take it and its remainders."""
    inputs = {k: (v.detach().float().requires_grad_() if v is not None else None)
              for k, v in make_inputs(batch=2, dim=20, seqlen=65, dstate=16, layout=layout).items()}
    y_ref, last_ref, g_ref = run("reference", inputs)
    y, last, g = run("torch", inputs)
    assert y.dtype == torch.float32 and last.dtype == torch.float32
    assert rel_err(y, y_ref) < 1e-5 and rel_err(last, last_ref) < 1e-5
    for name in g_ref:
        assert rel_err(g[name], g_ref[name]) < 1e-4, name
    y16 = ssm_ops.selective_scan(*(inputs[k].detach().bfloat16() for k in ("u", "delta")), inputs["A"].detach(),
                                 inputs["B"].detach().bfloat16(), inputs["C"].detach().bfloat16(), backend="torch")
    assert y16.dtype == torch.bfloat16
    assert calls["fused"] == 2


def test_switched_off_gives_the_eager_path_with_equal_numbers(kernel, calls, monkeypatch):
    inputs = make_inputs(batch=2, dim=20, seqlen=65, groups=2)
    y, last, g = run("torch", inputs)
    assert calls["fused"] == 1
    for value in ("0", "off"):
        monkeypatch.setenv("SSMVL_CPU_SCAN_KERNEL", value)
        y0, last0, g0 = run("torch", inputs)
        assert calls == {"fused": 1, "forward": 0, "backward": 0}  # not called again
        assert rel_err(y0, y) < 1e-12 and rel_err(last0, last) < 1e-6
        for name in g:
            assert rel_err(g0[name], g[name]) < 1e-12, name
    monkeypatch.setenv("SSMVL_CPU_SCAN_KERNEL", "auto")
    run("torch", inputs)
    assert calls["fused"] == 2


def test_time_major_op_as_torch_compile_calls_it(kernel, calls, monkeypatch):
    """torch.compile traces ssm_ops' time-major custom op (the fused path is an eager autograd Function); the op runs
    the kernel too, forward and backward, with the eager numbers."""
    L, b, G, dg, N = 70, 2, 2, 11, 4
    g = torch.Generator().manual_seed(0)
    args = [torch.rand(L, b, G, dg, 1, generator=g, dtype=torch.float64) + 0.1,
            torch.randn(L, b, G, dg, 1, generator=g, dtype=torch.float64),
            -torch.rand(G, dg, N, generator=g, dtype=torch.float64),
            torch.randn(L, b, G, 1, N, generator=g, dtype=torch.float64),
            torch.randn(L, b, G, 1, N, generator=g, dtype=torch.float64),
            torch.randn(b, G, dg, N, generator=g, dtype=torch.float64)]

    def grads():
        leaves = [a.clone().requires_grad_() for a in args]
        ys, h = ssm_ops._time_major_scan(*leaves)
        (ys.sin().sum() + h.cos().sum()).backward()
        return [ys.detach(), h.detach()] + [leaf.grad for leaf in leaves]

    with_kernel = grads()
    assert calls["forward"] == 1 and calls["backward"] == 1
    monkeypatch.setenv("SSMVL_CPU_SCAN_KERNEL", "0")
    eager = grads()
    assert calls["forward"] == 1
    for a, e in zip(with_kernel, eager):
        assert rel_err(a, e) < 1e-12


def test_under_torch_compile(kernel, calls):
    x = {k: (v.detach().float() if v is not None else None) for k, v in make_inputs(2, 12, 20).items()}
    u = x["u"].clone().requires_grad_()

    def f(u):
        return ssm_ops.selective_scan(u * 2, x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"],
                                      True, backend="torch")

    out = torch.compile(f, backend="eager", fullgraph=True)(u)
    out.sum().backward()
    assert calls["fused"] == 0 and calls["forward"] == 1 and calls["backward"] == 1
    u2 = x["u"].clone().requires_grad_()
    expected = f(u2)  # eager: the fused Function
    expected.sum().backward()
    assert calls["fused"] == 1
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-4)
    assert torch.allclose(u.grad, u2.grad, atol=1e-5, rtol=1e-4)


def test_a_failed_build_falls_back_with_one_warning(kernel, monkeypatch, caplog):
    def broken_compiler(**kwargs):
        raise RuntimeError("simulated build failure: no C++ compiler")

    monkeypatch.setattr(ssm_cpu_kernel, "_OPS", None)
    monkeypatch.setattr(ssm_cpu_kernel, "_ERROR", None)
    monkeypatch.setattr(ssm_cpu_kernel, "_registered", lambda name: None)  # not already loaded in this process
    monkeypatch.setattr(ssm_cpu_kernel, "_load_inline", broken_compiler)
    inputs = make_inputs(batch=2, dim=12, seqlen=40)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            assert_matches_reference(inputs)
    assert ssm_cpu_kernel.load() is None and "simulated build failure" in ssm_cpu_kernel.error()
    warnings = [r for r in caplog.records if "simulated build failure" in r.getMessage()]
    assert len(warnings) == 1 and "using the eager torch scan" in warnings[0].getMessage()


def test_the_build_is_named_for_its_source_flags_and_cpu(kernel):
    name, cflags, _ = ssm_cpu_kernel._build_settings()
    cap = "".join(c for c in torch.backends.cpu.get_cpu_capability().lower() if c.isalnum())
    assert name.startswith(f"ssmvl_cpu_scan_{cap}_") and f"-DSSMVL_NAMESPACE={name}" in cflags
    assert "-march=native" not in cflags and "-ffast-math" not in cflags
    assert ssm_cpu_kernel.load() is getattr(torch.ops, name)


def test_registered_by_the_package_not_shipped_as_remote_code():
    """ssmvl.modeling registers the kernel with ssm_ops; the modeling files (what save_pretrained ships) neither hold
    nor import it, so a checkpoint's remote code compiles nothing."""
    from pathlib import Path

    assert ssm_ops._CPU_KERNEL is ssm_cpu_kernel
    modeling = Path(ssm_ops.__file__).parent
    assert not (modeling / "cpu_scan.py").exists()
    for path in modeling.glob("*.py"):
        if path.name != "__init__.py":
            text = path.read_text()
            assert "cpp_extension" not in text and "import cpu_scan" not in text and "load_inline" not in text, path
