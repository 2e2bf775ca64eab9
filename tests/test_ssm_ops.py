"""Every CPU backend of ssm_ops against the sequential `reference` scan: outputs and all gradients, fp32 and bf16,
odd lengths, length 1, batch > 1, with and without z / D / delta_bias, grouped B/C, initial/last state; plus the
decoding step ops and the input checks. (GPU backends: tests/test_ssm_gpu.py.)"""

import itertools

import pytest
import torch

from ssmvl.modeling import ssm_ops


CPU_BACKENDS = ["torch"]


def make_inputs(batch=2, dim=12, seqlen=9, dstate=4, groups=0, dtype=torch.float32, z=True, D=True, bias=True,
                h0=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).requires_grad_()

    bc_shape = (batch, dstate, seqlen) if groups == 0 else (batch, groups, dstate, seqlen)
    inputs = dict(
        u=rnd(batch, dim, seqlen),
        delta=rnd(batch, dim, seqlen, scale=0.5),
        A=(-torch.rand(dim, dstate, generator=g) * 4 - 0.1).requires_grad_(),  # A stays fp32, as in Mamba
        B=rnd(*bc_shape),
        C=rnd(*bc_shape),
        D=torch.randn(dim, generator=g).requires_grad_() if D else None,
        z=rnd(batch, dim, seqlen) if z else None,
        delta_bias=(torch.rand(dim, generator=g) - 2).requires_grad_() if bias else None,
        initial_state=torch.randn(batch, dim, dstate, generator=g).requires_grad_() if h0 else None,
    )
    return inputs


def run(backend, inputs, softplus=True):
    fresh = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    y, last = ssm_ops.selective_scan(**fresh, delta_softplus=softplus, return_last_state=True, backend=backend)
    g = torch.Generator().manual_seed(123)
    w = torch.randn(y.shape, generator=g).to(y.dtype)
    wl = torch.randn(last.shape, generator=g)
    ((y.float() * w.float()).sum() + (last * wl).sum()).backward()
    grads = {k: v.grad for k, v in fresh.items() if v is not None}
    return y, last, grads


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "seqlen,batch,groups,flags",
    [
        (1, 1, 0, (True, True, True)),
        (7, 2, 0, (True, True, True)),
        (9, 3, 0, (False, False, False)),
        (33, 2, 0, (True, False, True)),
        (70, 1, 0, (False, True, False)),  # > one checkpoint chunk of the torch backend
        (130, 2, 0, (True, True, True)),
        (17, 2, 4, (False, True, True)),  # VMamba-style grouped B/C
    ],
)
def test_backend_matches_reference_fp32(backend, seqlen, batch, groups, flags):
    z, D, bias = flags
    inputs = make_inputs(batch=batch, dim=12 if groups == 0 else 16, seqlen=seqlen, groups=groups, z=z, D=D, bias=bias,
                         h0=seqlen % 2 == 1)
    y_ref, last_ref, g_ref = run("reference", inputs)
    y, last, g = run(backend, inputs)
    assert y.dtype == torch.float32 and last.dtype == torch.float32
    assert torch.allclose(y, y_ref, atol=1e-5, rtol=1e-4), (y - y_ref).abs().max()
    assert torch.allclose(last, last_ref, atol=1e-5, rtol=1e-4)
    assert g.keys() == g_ref.keys()
    for name in g_ref:
        assert rel_err(g[name], g_ref[name]) < 1e-5, name


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_matches_reference_float64_exactly(backend):
    inputs = make_inputs(seqlen=100, dtype=torch.float64, h0=True)
    inputs["A"] = inputs["A"].detach().double().requires_grad_()
    for k in ("D", "delta_bias", "initial_state"):
        inputs[k] = inputs[k].detach().double().requires_grad_()
    y_ref, last_ref, g_ref = run("reference", inputs)
    y, last, g = run(backend, inputs)
    assert rel_err(y, y_ref) < 1e-12
    for name in g_ref:
        assert rel_err(g[name], g_ref[name]) < 1e-10, name


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_bf16_keeps_state_in_fp32(backend):
    inputs = make_inputs(seqlen=65, dtype=torch.bfloat16)
    y_ref, last_ref, g_ref = run("reference", inputs)
    y, last, g = run(backend, inputs)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32
    assert rel_err(y, y_ref) < 1e-2
    assert rel_err(last, last_ref) < 1e-5  # both accumulate in fp32 from the same bf16 inputs
    for name in g_ref:
        assert rel_err(g[name], g_ref[name]) < 2e-2, name
    # and against the fp32 computation on the same (bf16-rounded) values
    inputs32 = {k: (v.detach().float().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    y32, _, _ = run("reference", inputs32)
    assert rel_err(y.float(), y32) < 1e-2


def test_scan_without_softplus_and_without_last_state():
    inputs = make_inputs(seqlen=5)
    plain = {k: (v.detach() if v is not None else None) for k, v in inputs.items()}
    plain["delta"] = plain["delta"].abs()
    y_ref = ssm_ops.selective_scan(**plain, backend="reference")
    y = ssm_ops.selective_scan(**plain, backend="torch")
    assert isinstance(y, torch.Tensor) and torch.allclose(y, y_ref, atol=1e-5)


def test_reference_is_the_recurrence():
    """The reference itself against the formula written out for one channel and two steps."""
    u = torch.tensor([[[1.0, 2.0]]])
    delta = torch.tensor([[[0.5, 0.25]]])
    A = torch.tensor([[-1.0]])
    B = torch.tensor([[[2.0, 3.0]]])
    C = torch.tensor([[[1.0, -1.0]]])
    y = ssm_ops.selective_scan(u, delta, A, B, C, backend="reference")
    h1 = 0.5 * 2.0 * 1.0
    h2 = torch.exp(torch.tensor(-0.25)) * h1 + 0.25 * 3.0 * 2.0
    assert torch.allclose(y, torch.tensor([[[h1, -h2]]]))


def test_step_update_matches_scan():
    inputs = make_inputs(batch=2, dim=6, seqlen=8, dstate=3)
    x = {k: (v.detach() if v is not None else None) for k, v in inputs.items()}
    y_full, last = ssm_ops.selective_scan(**x, delta_softplus=True, return_last_state=True, backend="reference")
    state = torch.zeros(2, 6, 3)
    if x["initial_state"] is not None:
        state.copy_(x["initial_state"])
    ys = []
    for t in range(8):
        ys.append(ssm_ops.selective_state_update(
            state, x["u"][..., t], x["delta"][..., t], x["A"], x["B"][..., t], x["C"][..., t], D=x["D"],
            z=x["z"][..., t], dt_bias=x["delta_bias"], dt_softplus=True, backend="torch"))
    assert torch.allclose(torch.stack(ys, -1), y_full, atol=1e-5)
    assert torch.allclose(state, last, atol=1e-5)


def test_step_update_takes_dt_proj_weight():
    """dt_weight (dim, rank): dt is dt_proj's low-rank input and the step size F.linear(dt, dt_weight, dt_bias), the
    same step as on F.linear's output (the torch backend computes exactly that); a dt of the wrong width is refused."""
    torch.manual_seed(0)
    batch, dim, N, rank = 2, 6, 3, 4
    x, z = torch.randn(batch, dim), torch.randn(batch, dim)
    low, w, b = torch.randn(batch, rank), torch.randn(dim, rank), torch.randn(dim)
    A, B, C, D = -torch.rand(dim, N), torch.randn(batch, N), torch.randn(batch, N), torch.randn(dim)
    s1 = torch.randn(batch, dim, N)
    s2 = s1.clone()
    y1 = ssm_ops.selective_state_update(s1, x, low, A, B, C, D=D, z=z, dt_bias=b, dt_softplus=True, dt_weight=w,
                                        backend="torch")
    y2 = ssm_ops.selective_state_update(s2, x, torch.nn.functional.linear(low, w, b), A, B, C, D=D, z=z,
                                        dt_softplus=True, backend="torch")
    assert torch.equal(y1, y2) and torch.equal(s1, s2)
    with pytest.raises(ValueError, match="dt must be \\(batch, rank\\)"):
        ssm_ops.selective_state_update(s1, x, torch.randn(batch, dim), A, B, C, dt_weight=w, backend="torch")


def test_causal_conv_and_its_step():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 11)
    w = torch.randn(5, 4)
    b = torch.randn(5)
    y = ssm_ops.causal_conv1d(x, w, b)
    # independent: explicit causal sum
    xp = torch.nn.functional.pad(x, (3, 0))
    ref = torch.stack([(xp[..., t:t + 4] * w).sum(-1) + b for t in range(11)], -1)
    assert torch.allclose(y, torch.nn.functional.silu(ref), atol=1e-5)
    state = torch.zeros(2, 5, 4)
    steps = [ssm_ops.causal_conv1d_update(x[..., t], state, w, b) for t in range(11)]
    assert torch.allclose(torch.stack(steps, -1), y, atol=1e-5)


def test_backend_resolution_and_errors(monkeypatch):
    assert ssm_ops.resolve_backend("auto", "cpu") == "torch"
    assert ssm_ops.resolve_backend("reference", "cpu") == "reference"
    assert ssm_ops.resolve_backend("triton", "cpu") == "torch"  # needs CUDA: logged fallback
    monkeypatch.setenv("SSMVL_SSM_BACKEND", "reference")
    assert ssm_ops.resolve_backend(None, "cpu") == "reference"
    with pytest.raises(ValueError, match="Unknown SSM backend 'cuda_magic'"):
        ssm_ops.resolve_backend("cuda_magic", "cpu")
    monkeypatch.setenv("SSMVL_SSM_BACKEND", "nope")
    with pytest.raises(ValueError, match="SSMVL_SSM_BACKEND"):
        ssm_ops.resolve_backend(None, "cpu")
    assert set(ssm_ops.available_backends("cpu")) == {"reference", "torch"}


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(u=torch.randn(2, 12)), r"u must be \(batch, dim, seqlen\)"),
        (dict(delta=torch.randn(2, 12, 8)), "delta must have u's shape"),
        (dict(A=torch.randn(12, 4, 1)), r"A must be \(dim=12, dstate\)"),
        (dict(B=torch.randn(2, 5, 9)), r"B must be \(batch=2, dstate=4, seqlen=9\)"),
        (dict(C=torch.randn(2, 5, 4, 9)), "C has 5 groups, which does not divide dim=12"),
        (dict(D=torch.randn(13)), r"D must be \(dim=12,\)"),
        (dict(z=torch.randn(2, 12, 3)), "z must have u's shape"),
        (dict(initial_state=torch.randn(2, 12, 5)), "initial_state must be"),
    ],
)
def test_bad_shapes_are_named(change, match):
    x = {k: (v.detach() if v is not None else None) for k, v in make_inputs().items()}
    x.update(change)
    with pytest.raises(ValueError, match=match):
        ssm_ops.selective_scan(**x)


def test_bad_dtype_is_named():
    x = {k: (v.detach() if v is not None else None) for k, v in make_inputs().items()}
    x["u"] = x["u"].to(torch.int64)
    with pytest.raises(TypeError, match="u must be a floating tensor"):
        ssm_ops.selective_scan(**x)


def test_torch_backend_works_under_torch_compile():
    x = {k: (v.detach() if v is not None else None) for k, v in make_inputs(seqlen=6).items()}

    def f(u, delta):
        return ssm_ops.selective_scan(u * 2, delta, x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True,
                                      backend="torch")

    compiled = torch.compile(f, backend="eager")  # the loop is a graph break by design; this checks it traces
    # compiled: the time-major custom op; eager: the fused CPU kernel where it builds (fp32 rounding apart)
    assert torch.allclose(compiled(x["u"], x["delta"]), f(x["u"], x["delta"]), atol=1e-5, rtol=1e-4)


def test_all_flag_combinations_small():
    for z, D, bias in itertools.product([False, True], repeat=3):
        inputs = make_inputs(seqlen=4, z=z, D=D, bias=bias)
        y_ref, _, g_ref = run("reference", inputs)
        y, _, g = run("torch", inputs)
        assert torch.allclose(y, y_ref, atol=1e-5)
        for name in g_ref:
            assert rel_err(g[name], g_ref[name]) < 1e-5


def test_mamba_ssm_conv_only_for_widths_its_kernels_take(monkeypatch):
    """causal-conv1d's CUDA kernels take widths 2..4; a wider conv (STORM's video mixers) must not reach them."""
    calls = []

    def fake_conv(x, weight, bias, activation=None):  # as the real kernel: widths 2..4 only
        calls.append(weight.shape[1])
        assert 2 <= weight.shape[1] <= 4, "causal_conv1d only supports width between 2 and 4"
        return torch.zeros_like(x)

    def fake_update(x, conv_state, weight, bias, activation=None):
        calls.append(weight.shape[1])
        assert 2 <= weight.shape[1] <= 4
        return torch.zeros_like(x)

    monkeypatch.setattr(ssm_ops, "resolve_backend", lambda backend, device: "mamba_ssm")
    monkeypatch.setattr(ssm_ops, "_load_mamba_ssm",
                        lambda: {"causal_conv1d_fn": fake_conv, "causal_conv1d_update": fake_update})
    x, w17, w4 = torch.randn(2, 3, 10), torch.randn(3, 17), torch.randn(3, 4)
    expected = torch.nn.functional.conv1d(x, w17.unsqueeze(1), padding=16, groups=3)[..., :10]
    torch.testing.assert_close(ssm_ops.causal_conv1d(x, w17, None, activation=None), expected)
    state = torch.randn(2, 3, 17)
    ssm_ops.causal_conv1d_update(x[..., 0], state, w17, None)
    assert calls == []
    assert ssm_ops.causal_conv1d(x, w4, None).abs().sum() == 0 and calls == [4]


@pytest.mark.parametrize("bidirectional", [False, True], ids=["mamba", "vim"])
def test_mixer_channel_major_projections_match_module_calls(monkeypatch, bidirectional):
    """Where the scan reads channel-major inputs (mamba_ssm, the triton tiled kernels), a mixer computes its plain
    in_proj / dt_proj as weight @ x.T (x / z / delta with unit stride along L). Forced here on the torch backend: the
    output and every gradient equal the module-call path's (dt_proj's bias goes to the scan as delta_bias); with a
    hook on in_proj the module is called (the hook runs) and dt_proj keeps its call too."""
    from ssmvl.modeling import ssm_layers

    torch.manual_seed(0)
    mixer = ssm_layers.MambaMixer(hidden_size=16, intermediate_size=32, state_size=4, conv_kernel=4,
                                  bidirectional=bidirectional, ssm_backend="torch")
    h = torch.randn(2, 11, 16)

    def run():
        mixer.zero_grad()
        y = mixer(h)
        y.square().sum().backward()
        return y.detach(), {k: p.grad.clone() for k, p in mixer.named_parameters()}

    y0, g0 = run()
    calls = []
    monkeypatch.setattr(ssm_layers, "scan_reads_channel_major", lambda *a, **k: calls.append(a) or True)
    seen = set()
    monkeypatch.setattr(ssm_layers, "_channels_linear",
                        lambda x, lin, *a, f=ssm_layers._channels_linear, **kw:
                        seen.add(id(lin)) or f(x, lin, *a, **kw))
    y1, g1 = run()
    assert calls and id(mixer.in_proj) in seen and id(mixer.dt_proj) in seen
    assert torch.allclose(y1, y0, atol=1e-5)
    for k in g0:
        assert torch.allclose(g1[k], g0[k], atol=1e-4, rtol=1e-4), k
    with torch.no_grad():  # an empty batch keeps its shape on this path too
        assert mixer(h[:0]).shape == (0, 11, 16)
    hooked = []
    mixer.in_proj.register_forward_hook(lambda m, a, out: hooked.append(out.shape))
    seen.clear()
    y2, _ = run()
    assert hooked and id(mixer.in_proj) not in seen and id(mixer.dt_proj) not in seen
    assert torch.allclose(y2, y0, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_mean_into_averages_in_place(reverse):
    """selective_scan(..., mean_into=t): t becomes lerp(t, y, 0.5) in place and is returned as y (a bidirectional
    mixer's two directions); a tensor of another shape / dtype, or one autograd tracks, is refused by name."""
    inputs = {k: (v.detach() if v is not None else None) for k, v in make_inputs(2, 12, 9, 4).items()}
    y = ssm_ops.selective_scan(**inputs, delta_softplus=True, backend="torch", reverse=reverse)
    other = torch.randn(y.shape)
    target = other.clone()
    out, last = ssm_ops.selective_scan(**inputs, delta_softplus=True, backend="torch", reverse=reverse,
                                       mean_into=target, return_last_state=True)
    assert out is target and last.shape == (2, 12, 4)
    torch.testing.assert_close(out, torch.lerp(other, y, 0.5), rtol=0, atol=0)
    for bad in (other[..., :-1], other.double()):
        with pytest.raises(ValueError, match="mean_into must be a tensor of y's shape"):
            ssm_ops.selective_scan(**inputs, backend="torch", mean_into=bad)
    with pytest.raises(ValueError, match="written in place"):
        ssm_ops.selective_scan(**inputs, backend="torch", mean_into=other.clone().requires_grad_())


def test_add_rms_norm_out_dtype():
    """add_rms_norm(..., out_dtype=...): the same norm rounded once to out_dtype (what autocast's cast would give);
    the residual sum is unchanged."""
    g = torch.Generator().manual_seed(5)
    r, x, w = torch.randn(3, 7, 32, generator=g), torch.randn(3, 7, 32, generator=g), torch.rand(32, generator=g) + 0.5
    s, y = ssm_ops.add_rms_norm(r, x, w, 1e-5, cast_input=True)
    s16, y16 = ssm_ops.add_rms_norm(r, x, w, 1e-5, cast_input=True, out_dtype=torch.bfloat16)
    assert y.dtype == torch.float32 and y16.dtype == torch.bfloat16
    assert torch.equal(s16, s) and torch.equal(y16, y.to(torch.bfloat16))
