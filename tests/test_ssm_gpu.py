"""Triton backend of ssm_ops (modeling/ssm_triton.py) against the sequential `reference` scan run in float64 on the
same inputs: outputs, last state and every gradient, fp32 / bf16 / fp16, with and without z / D / delta_bias /
initial_state, groups 1 and 4, odd lengths, long sequences (forward), batch 1..64, non-contiguous inputs, time-major
views as a Mamba mixer passes them, the single-step decoding update, bad inputs, and the ssm_ops dispatch. Needs CUDA
and triton; skipped otherwise."""

import importlib
import os
import sys
import types

import pytest
import torch

pytest.importorskip("triton")
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # triton's CPU interpreter: for debugging the kernels
if not torch.cuda.is_available() and not _INTERPRET:
    pytest.skip("needs a CUDA device", allow_module_level=True)

pytestmark = pytest.mark.gpu


def _load_modeling():
    """ssm_ops / ssm_triton from the installed package, else straight from this checkout's modeling/ folder
    (without running modeling/__init__.py), so the tests also run on a machine where ssmvl is not installed."""
    try:
        from ssmvl.modeling import ssm_ops, ssm_triton

        return ssm_ops, ssm_triton
    except ImportError:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        name = "_ssmvl_modeling_gpu_tests"
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [os.path.join(root, "modeling")]
            sys.modules[name] = pkg
        return importlib.import_module(f"{name}.ssm_ops"), importlib.import_module(f"{name}.ssm_triton")


ssm_ops, ssm_triton = _load_modeling()

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make_inputs(batch=2, dim=16, seqlen=9, dstate=16, groups=0, dtype=torch.float32, z=True, D=True, bias=True,
                h0=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEV, dtype)

    bc_shape = (batch, dstate, seqlen) if groups == 0 else (batch, groups, dstate, seqlen)
    return dict(
        u=rnd(batch, dim, seqlen),
        delta=rnd(batch, dim, seqlen, scale=0.5),
        A=(-torch.rand(dim, dstate, generator=g) * 4 - 0.1).to(DEV),  # fp32, as in Mamba
        B=rnd(*bc_shape),
        C=rnd(*bc_shape),
        D=torch.randn(dim, generator=g).to(DEV) if D else None,
        z=rnd(batch, dim, seqlen) if z else None,
        delta_bias=(torch.rand(dim, generator=g) - 2).to(DEV) if bias else None,
        initial_state=torch.randn(batch, dim, dstate, generator=g).to(DEV) if h0 else None,
    )


def run(fn, inputs, f64=False, backward=True, softplus=True, **extra):
    """Returns (y, last_state, grads). The loss weighs y and the last state with fixed random tensors."""
    fresh = {}
    for k, v in inputs.items():
        if v is not None:
            v = v.detach().clone()
            v = v.double() if f64 else v
            v.requires_grad_(backward)
        fresh[k] = v
    y, last = fn(**fresh, delta_softplus=softplus, return_last_state=True, **extra)
    if not backward:
        return y, last, {}
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(y.shape, generator=g).to(DEV, inputs["u"].dtype).to(y.dtype)
    gl = torch.randn(last.shape, generator=g).to(DEV, last.dtype)
    ((y * gy).sum() + (last * gl).sum()).backward()
    return y, last, {k: v.grad for k, v in fresh.items() if v is not None}


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check_parity(inputs, dtype, backward=True, softplus=True):
    y, last, grads = run(ssm_triton.selective_scan_triton, inputs, backward=backward, softplus=softplus)
    y0, last0, grads0 = run(ssm_ops.selective_scan_ref, inputs, f64=True, backward=backward, softplus=softplus)
    assert y.dtype == dtype and y.shape == y0.shape
    assert last.dtype == torch.float32
    tol = TOL[dtype]
    errs = {"y": rel(y, y0), "last": rel(last, last0)}
    for k, g0 in grads0.items():
        assert grads[k] is not None, k
        assert grads[k].dtype == inputs[k].dtype and grads[k].shape == inputs[k].shape, k
        errs[k] = rel(grads[k], g0)
    print(f"{dtype} " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
    for k in list(errs):  # an exactly-zero reference gradient (dA at L=1 with no initial state): absolute check
        ref = {"y": y0, "last": last0, **grads0}[k]
        if ref.norm() == 0:
            errs[k] = ({"y": y, "last": last, **grads}[k]).double().norm().item() * 1e-2
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, f"relative errors above {tol}: {bad}"
    return errs


CASES = [
    # batch, dim, seqlen, dstate, groups, z, D, bias, h0
    (2, 24, 129, 16, 0, True, True, True, True),
    (1, 16, 1, 16, 0, False, False, False, False),
    (3, 32, 7, 16, 4, True, True, True, False),
    (2, 64, 1000, 16, 4, True, False, True, True),
    (64, 8, 33, 16, 0, True, True, False, False),
    (2, 20, 100, 5, 0, False, True, True, True),  # dstate not a power of 2, dim not a multiple of the block
    (2, 384, 300, 1, 4, False, True, True, False),  # VMamba's d_state 1: 16x wider channel blocks, 96 a group
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}-d{}-L{}-N{}-g{}-z{:d}D{:d}bias{:d}h0{:d}".format(*c))
def test_scan_matches_reference(dtype, case):
    batch, dim, seqlen, dstate, groups, z, D, bias, h0 = case
    inputs = make_inputs(batch, dim, seqlen, dstate, groups, dtype, z, D, bias, h0)
    check_parity(inputs, dtype)


BLOCK_CONFIGS = [
    # forward (BLOCK_D, num_warps), backward (BLOCK_D, num_warps, CHUNK, atomic)
    ((4, 1), (4, 1, 8, False)),
    ((32, 2), (8, 2, 16, True)),
    ((16, 4), (32, 1, 5, False)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cfg", BLOCK_CONFIGS, ids=str)
def test_scan_block_configs(dtype, cfg):
    """Other block sizes, chunk lengths (several chunks, a partial last one) and the atomic dB/dC reduction."""
    saved = dict(ssm_triton.FWD_CONFIG), dict(ssm_triton.BWD_CONFIG)
    (fbd, fnw), (bbd, bnw, chunk, atomic) = cfg
    try:
        ssm_triton.FWD_CONFIG.update(BLOCK_D=fbd, num_warps=fnw)
        ssm_triton.BWD_CONFIG.update(BLOCK_D=bbd, num_warps=bnw, CHUNK=chunk, atomic=atomic)
        for case in (CASES[0], CASES[2], CASES[5]):
            batch, dim, seqlen, dstate, groups, z, D, bias, h0 = case
            inputs = make_inputs(batch, dim, seqlen, dstate, groups, dtype, z, D, bias, h0)
            check_parity(inputs, dtype)
    finally:
        for c, old in zip((ssm_triton.FWD_CONFIG, ssm_triton.BWD_CONFIG), saved):
            c.clear()
            c.update(old)


PARALLEL_SETTINGS = {  # ssm_triton.PARALLEL_CONFIG: sequential in time, and time-parallel with few / many lanes
    "sequential": dict(parallel_below=1),
    "parallel": dict(parallel_below=10**9, target_programs=2048, min_chunk=64),
    "parallel-short-chunks": dict(parallel_below=10**9, target_programs=100000, min_chunk=16),
}


@pytest.fixture
def parallel_config(request):
    """A PARALLEL_CONFIG setting, with the time-tiled training pair off (it would take the long cases)."""
    saved = dict(ssm_triton.PARALLEL_CONFIG), dict(ssm_triton.TILE_BWD_CONFIG)
    ssm_triton.PARALLEL_CONFIG.update(PARALLEL_SETTINGS[request.param])
    ssm_triton.TILE_BWD_CONFIG.update(enabled=False)
    yield request.param
    for config, old in zip((ssm_triton.PARALLEL_CONFIG, ssm_triton.TILE_BWD_CONFIG), saved):
        config.clear()
        config.update(old)


@pytest.fixture(params=[(True, 64, 4, 2, False, False), (True, 256, 4, 2, False, False), (True, 32, 1, 2, False, False),
                        (True, 128, 1, 2, True, False), (True, 128, 1, 2, False, False), (True, 128, 1, 1, True, False),
                        (True, 64, 1, 0, False, False), (True, 128, 1, 2, True, True), (False, 64, 4, 2, False, False)],
                ids=["tile64", "tile256", "tile32-1warp", "tile128-lanes-pairs", "tile128-lanes", "tile128-lanes-seg8",
                     "tile64-assoc-fwd", "tile128-lane-fwd-chunks", "no-tile"])
def tile_bwd_config(request):
    """The time-tiled training pair: (enabled, the backward's tile, its warps, TILE_CONFIG["seg"]: the forward's
    kernel, lanes of 16 / 8 consecutive steps or (0) tl.associative_scan tiles, the backward's "channel_pairs": two
    channels a program, their dB / dC terms added before the atomics, "fwd_lanes": the forward by the lane kernel,
    here cut into chunks of 128 steps, saving the states at the backward's tiles). Tiles of 128 steps in one warp take
    the backward's adjoint by lanes of 4 steps (TILE_BWD_CONFIG["lanes"]); channel pairs run there where a group's
    channels are even in number."""
    saved = dict(ssm_triton.TILE_BWD_CONFIG), dict(ssm_triton.TILE_CONFIG), dict(ssm_triton.LANE_CONFIG)
    enabled, block_t, warps, seg, pairs, lane_fwd = request.param
    ssm_triton.TILE_BWD_CONFIG.update(enabled=enabled, BLOCK_T=block_t, num_warps=warps, channel_pairs=pairs,
                                      fwd_lanes=lane_fwd)
    ssm_triton.TILE_CONFIG.update(seg=seg)
    if lane_fwd:
        ssm_triton.LANE_CONFIG.update(enabled=True, max_split=4, min_warps=10**6, min_chunk=16)
    yield request.param
    for config, old in zip((ssm_triton.TILE_BWD_CONFIG, ssm_triton.TILE_CONFIG, ssm_triton.LANE_CONFIG), saved):
        config.clear()
        config.update(old)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", [(2, 24, 300, 16, 0, True, True, True, True), (1, 12, 77, 5, 3, False, True, False,
                                                                                 False), (3, 8, 1, 16, 0, True, False,
                                                                                          True, True),
                                  (2, 16, 128, 8, 2, False, False, False, True),
                                  (1, 6, 200, 4, 2, True, True, True, False)],
                         ids=lambda c: "b{}-d{}-L{}-N{}-g{}".format(*c[:5]))
def test_scan_tile_backward_matches_reference(tile_bwd_config, dtype, case):
    """Training through the time-tiled pair (forward saving the state at the backward's tile starts, inside its own
    longer tiles, backward walking the tiles from the last with reverse associative scans): output, last state and
    every gradient (u, delta, A, B, C, D, z, delta_bias, initial_state) against the float64 reference; several tiles,
    a partial last tile, L = 1, groups, odd N, an odd number of channels a group (3: no channel pairs)."""
    batch, dim, seqlen, dstate, groups, z, D, bias, h0 = case
    check_parity(make_inputs(batch, dim, seqlen, dstate, groups, dtype, z, D, bias, h0), dtype)


@pytest.mark.parametrize("tile", [(True, 512, 2, 1, 0), (True, 512, 2, 3, 0), (True, 256, 2, 1, 0),
                                  (True, 256, 0, 1, 0), (False, 256, 0, 1, 0), (True, 512, 2, 1, 1)],
                         ids=["seg16", "seg16-pipelined", "seg8", "assoc", "no-tile", "seg16-staged"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", [(2, 24, 1500, 16, 0, True, True, True, True), (1, 12, 77, 5, 3, False, True, False,
                                                                                  False), (1, 8, 1030, 16, 0, True,
                                                                                           True, True, False)],
                         ids=lambda c: "b{}-d{}-L{}-N{}-g{}".format(*c[:5]))
def test_scan_forward_tile_kernel_matches_reference(tile, dtype, case):
    """The inference forward (no gradients): the time-tiled kernels (one program per channel, state carried across
    tiles; lanes of 16 or 8 consecutive steps joined by one warp scan, or tl.associative_scan over a tile) against
    the float64 reference, output and last state; several tiles, a partial last tile, bf16 B / C read as words (even
    L) or not (odd L), the lane kernel's state loop software-pipelined (stages 3), B / C staged into padded rows
    (TILE_CONFIG["stage_bc"]: at these lengths, none a multiple of 32, every call)."""
    saved = dict(ssm_triton.TILE_CONFIG)
    enabled, block_t, seg, stages, stage = tile
    ssm_triton.TILE_CONFIG.update(enabled=enabled, BLOCK_T=block_t, seg=seg, stages=stages, stage_bc=stage)
    try:
        batch, dim, seqlen, dstate, groups, z, D, bias, h0 = case
        check_parity(make_inputs(batch, dim, seqlen, dstate, groups, dtype, z, D, bias, h0), dtype, backward=False)
    finally:
        ssm_triton.TILE_CONFIG.clear()
        ssm_triton.TILE_CONFIG.update(saved)


@pytest.mark.parametrize("parallel_config", list(PARALLEL_SETTINGS), indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", [(1, 16, 1000, 16, 0, True, True, True, True), (2, 40, 333, 16, 2, True, False, True,
                                                                                  False), (3, 8, 64, 4, 0, False, True,
                                                                                           False, True)],
                         ids=lambda c: "b{}-d{}-L{}-N{}-g{}".format(*c[:5]))
def test_scan_time_parallel_matches_reference(parallel_config, dtype, case):
    """Outputs, last state and every gradient (incl. initial_state's and that of the last state) whatever the chunking:
    the time-parallel passes (chunk maps, carry over chunks, rescans; backward in lanes) equal the sequential scan."""
    batch, dim, seqlen, dstate, groups, z, D, bias, h0 = case
    check_parity(make_inputs(batch, dim, seqlen, dstate, groups, dtype, z, D, bias, h0), dtype)
    if parallel_config != "sequential":  # and the plan really is time-parallel here
        assert ssm_triton._fwd_chunking(batch, seqlen, need_grad=False)[1] or seqlen <= 64


LANE_SETTINGS = {
    # LANE_CONFIG: one thread a channel; states split over 2 / 4 threads; split and cut into chunks of >= 16 steps
    "s1": dict(enabled=True, max_split=1, min_warps=1, min_chunk=16),
    "s2": dict(enabled=True, max_split=2, min_warps=10**6, min_chunk=10**6),
    "s4-chunks": dict(enabled=True, max_split=4, min_warps=10**6, min_chunk=16),
}


@pytest.mark.parametrize("setting", list(LANE_SETTINGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [(2, 64, 300, 16, 0, True, True, True, True), (1, 64, 77, 8, 2, False, True, False,
                                                                                 False), (3, 32, 1, 16, 0, True, False,
                                                                                          True, True),
                                  (1, 32, 45, 1, 0, True, True, True, True), (2, 64, 33, 5, 0, True, True, True, False)],
                         ids=lambda c: "b{}-d{}-L{}-N{}-g{}".format(*c[:5]))
def test_scan_lane_forward_matches_reference(monkeypatch, setting, dtype, case):
    """The inference forward by the register-lane kernel (each thread a channel's N / S states; time-parallel chunks:
    end states, carry, rescan): output and last state against the float64 reference, with odd lengths, L = 1,
    N = 1 / 5 (no state split, B / C read one value at a time), B/C groups and an initial state."""
    for k, v in LANE_SETTINGS[setting].items():
        monkeypatch.setitem(ssm_triton.LANE_CONFIG, k, v)
    batch, dim, seqlen, dstate, groups, z, D, bias, h0 = case
    plan = ssm_triton._lane_plan(batch, dim, max(groups, 1), dstate, seqlen)
    assert plan is not None
    if setting == "s4-chunks" and dstate % 4 == 0 and seqlen > 16:
        assert plan[0] == 4 and plan[3] > 1, plan  # and the plan really splits and chunks
    check_parity(make_inputs(batch, dim, seqlen, dstate, groups, dtype, z, D, bias, h0), dtype, backward=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("groups", [0, 2])
@pytest.mark.parametrize("aligned", [False, True], ids=["bc-buffer", "bc-in-place"])
def test_scan_lane_forward_takes_time_major_views(dtype, groups, aligned):
    """The lane forward (chosen by the default rule at this length) with the mixer's time-major delta / z / B / C
    views: output and last state against float64. B / C rows 16-byte aligned (x_proj's dt part 16 bytes): read in
    place with 16-byte loads; else (3 values) through the fp32 row buffer."""
    g = torch.Generator().manual_seed(3)
    batch, dim, L, N = 2, 64, 45, 16
    R = 16 // torch.empty(0, dtype=dtype).element_size() if aligned else 3
    gN = N * max(groups, 1)
    bases = dict(xz=torch.randn(batch, L, 2 * dim, generator=g), dl=torch.randn(batch, L, dim, generator=g) * 0.5,
                 xp=torch.randn(batch, L, R + 2 * gN, generator=g), u=torch.randn(batch, dim, L, generator=g))
    A = (-torch.rand(dim, N, generator=g) * 4 - 0.1).to(DEV)
    Dp, bias = torch.randn(dim, generator=g).to(DEV), (torch.rand(dim, generator=g) - 2).to(DEV)
    assert ssm_triton._lane_plan(batch, dim, max(groups, 1), N, L) is not None
    out = {}
    for name, fn, ftype in (("triton", ssm_triton.selective_scan_triton, dtype),
                            ("ref", ssm_ops.selective_scan_ref, torch.float64)):
        u, delta, z, B, C = _mixer_views({k: v.to(DEV, ftype) for k, v in bases.items()}, dim, N, R, groups, False)
        if name == "triton":
            assert bool(ssm_triton._lane_vector(ssm_triton._bc4(B), ssm_triton._bc4(C), N)) == aligned
        cast = (lambda t: t.double()) if name == "ref" else (lambda t: t)
        out[name] = fn(u, delta, cast(A), B, C, D=cast(Dp), z=z, delta_bias=cast(bias), delta_softplus=True,
                       return_last_state=True)
    (y, last), (y0, last0) = out["triton"], out["ref"]
    assert y.dtype == dtype and y.shape == (batch, dim, L)
    assert rel(y, y0) <= TOL[dtype] and rel(last, last0) <= TOL[dtype], (rel(y, y0), rel(last, last0))


@pytest.mark.parametrize("chunks", [False, True], ids=["one-pass", "chunked"])
def test_lane_forward_can_write_y_time_major(monkeypatch, chunks):
    """LAYOUT["lane_y_time_major"]: the lane forward writes y time-major whatever u's layout (channel-major inputs
    here), with the same numbers as the float64 reference; off, y follows u."""
    monkeypatch.setitem(ssm_triton.LANE_CONFIG, "enabled", True)
    if chunks:
        monkeypatch.setitem(ssm_triton.LANE_CONFIG, "min_warps", 10**6)
        monkeypatch.setitem(ssm_triton.LANE_CONFIG, "min_chunk", 16)
    inputs = make_inputs(2, 64, 45, 16, 0, torch.float32, True, True, True, True, seed=5)
    assert ssm_triton._lane_plan(2, 64, 1, 16, 45) is not None
    ref = {k: (v.double() if torch.is_tensor(v) else v) for k, v in inputs.items()}
    y0, last0 = ssm_ops.selective_scan_ref(**ref, delta_softplus=True, return_last_state=True)
    for on in (False, True):
        monkeypatch.setitem(ssm_triton.LAYOUT, "lane_y_time_major", on)
        y, last = ssm_triton.selective_scan_triton(**inputs, delta_softplus=True, return_last_state=True)
        assert (y.stride(1) == 1) == on and y.shape == (2, 64, 45), y.stride()
        assert rel(y, y0) < TOL[torch.float32] and rel(last, last0) < TOL[torch.float32]


LANE_BWD_SETTINGS = {
    # LANE_BWD_CONFIG (S threads a channel, CPT channels a thread, SUB steps recomputed in registers) with the
    # backward sequential in time, and in lanes of chunks (time-parallel)
    "s4-c1-sub4": (dict(S=4, CPT=1, SUB=4), "sequential"),
    "s4-c2-sub4": (dict(S=4, CPT=2, SUB=4), "sequential"),
    "s1-c1-sub2": (dict(S=1, CPT=1, SUB=2), "sequential"),
    "s2-c1-sub4-lanes": (dict(S=2, CPT=1, SUB=4), "parallel-short-chunks"),
    "s4-c2-sub4-lanes": (dict(S=4, CPT=2, SUB=4), "parallel"),
}


@pytest.mark.parametrize("setting", list(LANE_BWD_SETTINGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", [(2, 32, 197, 16, 0, True, True, True, True), (1, 64, 77, 8, 2, False, True, False,
                                                                                 False), (3, 32, 1, 16, 0, True, False,
                                                                                          True, True),
                                  (2, 64, 130, 16, 0, True, False, True, False)],
                         ids=lambda c: "b{}-d{}-L{}-N{}-g{}".format(*c[:5]))
def test_scan_lane_backward_matches_reference(monkeypatch, setting, dtype, case):
    """Training through the register-lane backward (chunks walked forwards once keeping block start states, each
    block recomputed in registers and walked backwards; dB / dC summed over a warp's channels, then atomics): output,
    last state and every gradient against the float64 reference, sequential and in lanes of chunks, with an odd
    length (partial last chunk and block), L = 1, groups, an initial state and the gradient of the last state."""
    cfg, parallel = LANE_BWD_SETTINGS[setting]
    for k, v in cfg.items():
        monkeypatch.setitem(ssm_triton.LANE_BWD_CONFIG, k, v)
    for k, v in PARALLEL_SETTINGS[parallel].items():
        monkeypatch.setitem(ssm_triton.PARALLEL_CONFIG, k, v)
    monkeypatch.setitem(ssm_triton.LANE_BWD_CONFIG, "enabled", True)
    monkeypatch.setitem(ssm_triton.TILE_BWD_CONFIG, "enabled", False)
    batch, dim, seqlen, dstate, groups, z, D, bias, h0 = case
    chunk = ssm_triton._grad_chunk(seqlen)
    assert ssm_triton._lane_bwd_plan(dim // max(groups, 1), dstate, chunk, 2) is not None  # the case runs the kernel
    if parallel != "sequential" and seqlen > 64:
        assert ssm_triton._bwd_lanes(batch * max(groups, 1), -(-seqlen // chunk)) > 1
    check_parity(make_inputs(batch, dim, seqlen, dstate, groups, dtype, z, D, bias, h0), dtype)


def test_grad_chunk_and_lane_bwd_plan(monkeypatch):
    """The forward with gradients saves states every _grad_chunk(L) steps: at most BWD_CONFIG["CHUNK"], a multiple of
    4 and of SUB, as even as L allows; the lane backward runs where N / S and the program's channels divide."""
    monkeypatch.setitem(ssm_triton.BWD_CONFIG, "CHUNK", 64)
    monkeypatch.setitem(ssm_triton.LANE_BWD_CONFIG, "SUB", 4)
    assert ssm_triton._grad_chunk(197) == 52  # 4 chunks of 52 (208 steps walked), not 4 of 64 (256)
    assert ssm_triton._grad_chunk(1024) == 64 and ssm_triton._grad_chunk(6085) == 64
    assert ssm_triton._grad_chunk(1) == 4 and ssm_triton._grad_chunk(64) == 64 and ssm_triton._grad_chunk(65) == 36
    monkeypatch.setitem(ssm_triton.LANE_BWD_CONFIG, "SUB", 8)
    assert ssm_triton._grad_chunk(197) == 56
    monkeypatch.setitem(ssm_triton.LANE_BWD_CONFIG, "SUB", 4)
    monkeypatch.setitem(ssm_triton.LANE_BWD_CONFIG, "S", 4)
    monkeypatch.setitem(ssm_triton.LANE_BWD_CONFIG, "CPT", 2)
    monkeypatch.setitem(ssm_triton.LANE_BWD_CONFIG, "enabled", None)
    if ssm_triton._TUPLES:
        assert ssm_triton._lane_bwd_plan(768, 16, 52) == (4, 2, 4, 16)
        assert ssm_triton._lane_bwd_plan(768, 16, 52, lanes=4) is None  # by default sequential backwards only
        monkeypatch.setitem(ssm_triton.LANE_BWD_CONFIG, "enabled", True)
        assert ssm_triton._lane_bwd_plan(768, 16, 52, lanes=4) == (4, 2, 4, 16)
        assert ssm_triton._lane_bwd_plan(768, 16, 50) is None  # chunks a multiple of SUB
    assert ssm_triton._lane_bwd_plan(24, 16, 52) is None  # 24 channels: no block of 16
    assert ssm_triton._lane_bwd_plan(768, 5, 52) is None  # N = 5 does not split over 4 threads
    monkeypatch.setitem(ssm_triton.LANE_BWD_CONFIG, "enabled", False)
    assert ssm_triton._lane_bwd_plan(768, 16, 52) is None


def test_lane_plan():
    """Where the lane forward applies and how it splits: channels a multiple of the program's, states of the split;
    by default only where the time-tiled kernel is not chosen."""
    cfg = dict(ssm_triton.LANE_CONFIG)
    try:
        ssm_triton.LANE_CONFIG.update(enabled=None, num_warps=1, max_split=2, min_warps=2048, chunk_warps=4096,
                                      min_chunk=256)
        assert ssm_triton._lane_plan(128, 768, 1, 16, 197) == (1, 32, 197, 1)  # short: 3072 warps, one chunk
        assert ssm_triton._lane_plan(128, 768, 1, 16, 400)[2:] == (400, 1)  # 3072 warps: enough, no chunks
        S, block, chunk, nchunks = ssm_triton._lane_plan(4, 768, 1, 16, 6085)  # few channels, long: 2 x 22 chunks
        assert (S, block, nchunks) == (2, 16, 22) and chunk * 22 >= 6085
        assert ssm_triton._lane_plan(4, 768, 1, 16, 6085, time_major=False)[2:] == (554, 11)  # min_warps
        ssm_triton.LANE_CONFIG["chunk_warps"] = 2048
        assert ssm_triton._lane_plan(4, 768, 1, 16, 6085)[3] == 11
        assert ssm_triton._lane_plan(128, 768, 1, 16, 197)[2:] == (197, 1)  # one chunk is the whole sequence
        assert ssm_triton._lane_plan(16, 1536, 1, 16, 4096) is None  # the time-tiled kernel's
        assert ssm_triton._lane_plan(1, 1536, 1, 16, 1024) is None
        ssm_triton.LANE_CONFIG.update(enabled=True, max_split=4, min_warps=1024, min_chunk=64)
        assert ssm_triton._lane_plan(16, 1536, 1, 16, 4096)[:2] == (2, 16)  # 768 -> 1536 warps
        S, block, chunk, nchunks = ssm_triton._lane_plan(1, 1536, 1, 16, 1024)  # 192 warps at S = 4: 6 chunks
        assert (S, block) == (4, 8) and chunk >= 64 and nchunks == -(-1024 // chunk) > 1
        assert ssm_triton._lane_plan(2, 20, 1, 16, 100) is None  # 20 channels: no block of 8 divides them
        assert ssm_triton._lane_plan(2, 24, 1, 5, 100) is None  # N = 5: only S = 1, 32 channels a program
        assert ssm_triton._lane_plan(2, 64, 1, 5, 100)[0] == 1
        ssm_triton.LANE_CONFIG["enabled"] = False
        assert ssm_triton._lane_plan(128, 768, 1, 16, 197) is None
        ssm_triton.LANE_CONFIG["enabled"] = None
        tuples, ssm_triton._TUPLES = ssm_triton._TUPLES, False  # a triton older than 3.3: the other kernels
        try:
            assert ssm_triton._lane_plan(128, 768, 1, 16, 197) is None
        finally:
            ssm_triton._TUPLES = tuples
    finally:
        ssm_triton.LANE_CONFIG.clear()
        ssm_triton.LANE_CONFIG.update(cfg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_scan_without_softplus(dtype):
    inputs = make_inputs(2, 16, 77, 16, 0, dtype, bias=False, h0=True)
    inputs["delta"] = inputs["delta"].abs()
    check_parity(inputs, dtype, softplus=False)


@pytest.mark.parametrize("seqlen", [4096, 16384])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_scan_long_forward(dtype, seqlen):
    inputs = make_inputs(1, 8, seqlen, 16, 0, dtype, h0=True)
    check_parity(inputs, dtype, backward=False)


def test_scan_long_backward_fp32():
    inputs = make_inputs(1, 8, 4096, 16, 0, torch.float32, h0=True)
    check_parity(inputs, torch.float32)


def test_mixed_groups_and_3d_bc():
    inputs = make_inputs(2, 16, 50, 8, 4, torch.float32)
    inputs["C"] = torch.randn(2, 8, 50, device=DEV)  # C shared by all channels, B in 4 groups
    check_parity(inputs, torch.float32)


def test_noncontiguous_inputs():
    g = torch.Generator().manual_seed(3)
    batch, dim, L, N = 2, 24, 65, 16
    # (batch, L, dim) / (batch, L, N) layouts transposed to (batch, dim, L): what a Mamba mixer hands over
    u = torch.randn(batch, L, dim, generator=g).to(DEV).transpose(1, 2)
    delta = (torch.randn(batch, L, dim, generator=g) * 0.5).to(DEV).transpose(1, 2)
    z = torch.randn(batch, L, dim, generator=g).to(DEV).transpose(1, 2)
    B = torch.randn(batch, L, N, generator=g).to(DEV).transpose(1, 2)
    C = torch.randn(batch, L, N, generator=g).to(DEV).transpose(1, 2)
    A = (-torch.rand(N, dim, generator=g) * 4).to(DEV).t()
    assert not u.is_contiguous() and not A.is_contiguous()
    inputs = dict(u=u, delta=delta, A=A, B=B, C=C, D=torch.randn(dim, device=DEV), z=z,
                  delta_bias=torch.rand(dim, device=DEV) - 2, initial_state=None)
    check_parity(inputs, torch.float32)


def _mixer_views(bases, dim, N, R, groups, u_time_major):
    """The scan's inputs as views of the (batch, L, ...) tensors a Mamba mixer makes (modeling/ssm_layers.py
    MambaMixer._branch): z = in_proj(x).transpose(1, 2) chunked, delta = dt_proj(dt).transpose(1, 2), B / C = slices
    of x_proj(...) transposed (unit stride along N), u = the conv output (batch, dim, L) contiguous or a time-major
    view."""
    xz, dl, xp, u = bases["xz"], bases["dl"], bases["xp"], bases["u"]
    z = xz.transpose(1, 2)[:, dim:]
    delta = dl.transpose(1, 2)
    if groups == 0:
        B, C = xp[..., R:R + N].transpose(1, 2), xp[..., R + N:R + 2 * N].transpose(1, 2)
    else:  # (batch, L, G * N) slices -> (batch, G, N, L)
        B = xp[..., R:R + groups * N].unflatten(-1, (groups, N)).permute(0, 2, 3, 1)
        C = xp[..., R + groups * N:R + 2 * groups * N].unflatten(-1, (groups, N)).permute(0, 2, 3, 1)
    u = u.transpose(1, 2) if u_time_major else u
    return u, delta, z, B, C


TM_CASES = [
    # dtype, groups, u time-major (else the conv output's channel-major layout), LAYOUT["u_to_time_major"]
    (torch.float32, 0, True, True),
    (torch.float32, 0, False, True),
    (torch.float32, 0, False, False),
    (torch.float32, 2, False, True),
    (torch.bfloat16, 0, False, True),
    (torch.bfloat16, 2, True, False),
]


@pytest.mark.parametrize("case", TM_CASES, ids=lambda c: "{}-g{}-u_{}-{}".format(
    str(c[0])[6:], c[1], "tm" if c[2] else "cm", "to_tm" if c[3] else "as_is"))
def test_time_major_views(case):
    """Time-major views exactly as the mixer passes them: no copies in the wrapper, outputs and gradients in the
    inputs' layout; outputs and every gradient (through the views, onto the base tensors) against float64."""
    dtype, groups, u_time_major, u_to_time_major = case
    g = torch.Generator().manual_seed(7)
    batch, dim, L, N, R = 2, 24, 37, 16, 3
    gN = N * max(groups, 1)
    bases = dict(
        xz=torch.randn(batch, L, 2 * dim, generator=g),
        dl=torch.randn(batch, L, dim, generator=g) * 0.5,
        xp=torch.randn(batch, L, R + 2 * gN, generator=g),
        u=torch.randn(batch, L, dim, generator=g) if u_time_major else torch.randn(batch, dim, L, generator=g),
    )
    A = (-torch.rand(dim, N, generator=g) * 4 - 0.1).to(DEV)
    Dp, bias = torch.randn(dim, generator=g).to(DEV), (torch.rand(dim, generator=g) - 2).to(DEV)
    h0 = torch.randn(batch, dim, N, generator=g).to(DEV)
    gy = torch.randn(batch, dim, L, generator=g).to(DEV)
    gl = torch.randn(batch, dim, N, generator=g).to(DEV)
    saved = dict(ssm_triton.LAYOUT)
    outs = {}
    try:
        ssm_triton.LAYOUT["u_to_time_major"] = u_to_time_major
        for name, fn, ftype in (("triton", ssm_triton.selective_scan_triton, dtype),
                                ("ref", ssm_ops.selective_scan_ref, torch.float64)):
            leaves = {k: v.detach().to(DEV, ftype).clone().requires_grad_() for k, v in bases.items()}
            u, delta, z, B, C = _mixer_views(leaves, dim, N, R, groups, u_time_major)
            assert delta.stride(1) == 1 and z.stride(1) == 1 and B.stride(-2) == 1 and C.stride(-2) == 1
            extra = {k: v.detach().to(ftype if name == "ref" else v.dtype).clone().requires_grad_() for k, v in
                     dict(A=A, D=Dp, delta_bias=bias, initial_state=h0).items()}
            y, last = fn(u, delta, extra["A"], B, C, D=extra["D"], z=z, delta_bias=extra["delta_bias"],
                         delta_softplus=True, return_last_state=True, initial_state=extra["initial_state"])
            if name == "triton":  # y in u's layout (time-major once u is or is made so)
                assert y.dtype == dtype
                assert (y.stride(1) == 1) == (u_time_major or u_to_time_major), y.stride()
            ((y * gy.to(y.dtype)).sum() + (last * gl.to(last.dtype)).sum()).backward()
            outs[name] = dict(y=y, last=last, **{k: v.grad for k, v in leaves.items()},
                              **{k: v.grad for k, v in extra.items()})
    finally:
        ssm_triton.LAYOUT.clear()
        ssm_triton.LAYOUT.update(saved)
    tol = TOL[dtype]
    errs = {k: rel(outs["triton"][k], v0) for k, v0 in outs["ref"].items()}
    print(errs)
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, f"relative errors above {tol}: {bad}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("groups", [0, 4])
@pytest.mark.parametrize("stage", [0, 1], ids=["bc-views", "bc-staged"])
def test_tile_kernels_take_time_major_views(monkeypatch, dtype, groups, stage):
    """The time-tiled forward and backward (forced, tiles of 32 steps: 2 tiles at L = 37) with the mixer's time-major
    delta / z / B / C views, which they read from channel-major copies (B / C read in place by the forward, or staged
    into padded rows by _staged_bc): outputs and every gradient against float64."""
    monkeypatch.setitem(ssm_triton.TILE_CONFIG, "stage_bc", stage)
    monkeypatch.setitem(ssm_triton.TILE_CONFIG, "enabled", True)
    monkeypatch.setitem(ssm_triton.TILE_CONFIG, "BLOCK_T", 32)
    monkeypatch.setitem(ssm_triton.TILE_BWD_CONFIG, "enabled", True)
    monkeypatch.setitem(ssm_triton.TILE_BWD_CONFIG, "BLOCK_T", 32)
    test_time_major_views((dtype, groups, False, False))


def test_layout_helpers():
    """_strided keeps channel-major and time-major (b, C, L) tensors (no copy), copies others; _empty_as follows the
    layout."""
    x = torch.randn(2, 5, 8, 6, device=DEV)
    cm = torch.randn(2, 6, 8, device=DEV)
    tm = x[:, 1].transpose(1, 2)  # (2, 6, 8) strides (240, 1, 6): a time-major slice
    assert ssm_triton._strided(cm) is cm and ssm_triton._strided(tm) is tm
    odd = x[..., 0]  # (2, 5, 8): no unit stride along C or L
    assert odd.stride(-1) != 1 and odd.stride(-2) != 1
    assert ssm_triton._strided(odd).is_contiguous()
    e = ssm_triton._empty_as(tm)
    assert e.shape == tm.shape and e.stride(1) == 1 and e.transpose(1, 2).is_contiguous()
    assert ssm_triton._empty_as(cm).is_contiguous() and ssm_triton._empty_as(odd).is_contiguous()


def test_grad_of_last_state_only():
    inputs = make_inputs(2, 16, 40, 16, 0, torch.float32, h0=True)
    fresh = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    _, last = ssm_triton.selective_scan_triton(**fresh, delta_softplus=True, return_last_state=True)
    last.sum().backward()
    ref = {k: (v.double().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    _, last0 = ssm_ops.selective_scan_ref(**ref, delta_softplus=True, return_last_state=True)
    last0.sum().backward()
    for k in ("u", "delta", "A", "B", "initial_state"):
        assert rel(fresh[k].grad, ref[k].grad) < 1e-4, k


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_state_update_matches_reference(dtype):
    g = torch.Generator().manual_seed(5)
    batch, dim, N, steps = 3, 40, 16, 6
    inputs = make_inputs(batch, dim, steps, N, 0, dtype, h0=True)
    state = inputs["initial_state"].clone()
    ys = []
    for t in range(steps):
        ys.append(ssm_triton.selective_state_update_triton(
            state, inputs["u"][:, :, t], inputs["delta"][:, :, t], inputs["A"], inputs["B"][:, :, t],
            inputs["C"][:, :, t], D=inputs["D"], z=inputs["z"][:, :, t], dt_bias=inputs["delta_bias"],
            dt_softplus=True))
    y = torch.stack(ys, -1)
    assert y.dtype == dtype
    f64 = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    y0, last0 = ssm_ops.selective_scan_ref(**f64, delta_softplus=True, return_last_state=True)
    assert rel(y, y0) < TOL[dtype] and rel(state, last0) < 1e-5
    # a non-contiguous state is updated in place too
    state2 = torch.randn(batch, N, dim, generator=g).to(DEV).transpose(1, 2)
    expect = state2.clone()
    args = dict(x=inputs["u"][:, :, 0], dt=inputs["delta"][:, :, 0], A=inputs["A"], B=inputs["B"][:, :, 0],
                C=inputs["C"][:, :, 0], D=inputs["D"], z=None, dt_bias=inputs["delta_bias"], dt_softplus=True)
    y1 = ssm_triton.selective_state_update_triton(state2, **args)
    y1_ref = ssm_ops.selective_state_update(expect, **args, backend="torch")
    assert rel(y1, y1_ref) < TOL[dtype] and rel(state2, expect) < 1e-5


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_state_update_strided_views_and_a_log(dtype):
    """The mixer's decoding step hands the kernel views of its linear outputs (x / z halves of in_proj, B / C columns of
    x_proj) and A_log (a_log=True): same state and y as the torch step on contiguous copies with A = -exp(A_log)."""
    g = torch.Generator().manual_seed(11)
    batch, dim, N, rank = 3, 40, 16, 5
    xz = torch.randn(batch, 2 * dim, generator=g).to(DEV, dtype)
    dbc = torch.randn(batch, rank + 2 * N, generator=g).to(DEV, dtype)
    x, z = xz[:, :dim], xz[:, dim:]
    B, C = dbc[:, rank:rank + N], dbc[:, rank + N:]
    dt = torch.randn(batch, dim, generator=g).to(DEV, dtype)
    A_log = torch.log(torch.rand(dim, N, generator=g) * 4 + 0.1).to(DEV, dtype)
    D = torch.randn(dim, generator=g).to(DEV, dtype)
    state = torch.randn(batch, dim, N, generator=g).to(DEV)
    expect = state.clone()
    y = ssm_triton.selective_state_update_triton(state, x, dt, A_log, B, C, D=D, z=z, dt_softplus=True, a_log=True)
    y_ref = ssm_ops.selective_state_update(expect, x.contiguous(), dt, -torch.exp(A_log.float()), B.contiguous(),
                                           C.contiguous(), D=D, z=z.contiguous(), dt_softplus=True, backend="torch")
    assert y.dtype == dtype and y.is_contiguous()
    assert rel(y, y_ref) < TOL[dtype] and rel(state, expect) < 1e-5
    # the dispatch passes a_log to every backend
    expect2 = state.clone()
    y2 = ssm_ops.selective_state_update(state, x, dt, A_log, B, C, D=D, z=z, dt_softplus=True, backend="torch",
                                        a_log=True)
    ssm_ops.selective_state_update(expect2, x, dt, -torch.exp(A_log.float()), B, C, D=D, z=z, dt_softplus=True,
                                   backend="torch")
    assert torch.equal(state, expect2) and y2.shape == y.shape


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_state_update_keeps_a_low_precision_state(state_dtype):
    """A bf16 / fp16 cache state (MambaLMConfig.ssm_state_dtype): the kernel computes in fp32 from the stored state and
    stores the new state rounded; y from the unrounded state. Against the torch step on the same stored state."""
    g = torch.Generator().manual_seed(9)
    batch, dim, N = 3, 40, 16
    inputs = make_inputs(batch, dim, 4, N, 0, torch.bfloat16, h0=True)
    state = inputs["initial_state"].to(state_dtype)
    expect = state.clone()
    for t in range(4):
        args = dict(x=inputs["u"][:, :, t], dt=inputs["delta"][:, :, t], A=inputs["A"], B=inputs["B"][:, :, t],
                    C=inputs["C"][:, :, t], D=inputs["D"], z=inputs["z"][:, :, t], dt_bias=inputs["delta_bias"],
                    dt_softplus=True)
        y = ssm_triton.selective_state_update_triton(state, **args)
        y_ref = ssm_ops.selective_state_update(expect, **args, backend="torch")
        assert state.dtype == state_dtype and rel(y, y_ref) < 2e-2 and rel(state, expect) < 2e-2
    with pytest.raises(TypeError, match="state must be"):
        ssm_triton.selective_state_update_triton(state.double(), **args)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_state_update_computes_dt_proj(dtype, bias):
    """dt_weight: the kernel computes the step size from the low-rank dt (a strided column block of x_proj's output)
    and dt_proj's weight / bias: same y and state as the step on F.linear's output (the mixer's unfused path), rank 5
    (padded to 8 in the kernel) and 48 (mamba-130m)."""
    g = torch.Generator().manual_seed(3)
    batch, dim, N = 3, 40, 16
    for rank in (5, 48):
        dbc = torch.randn(batch, rank + 2 * N, generator=g).to(DEV, dtype)
        low, B, C = dbc[:, :rank], dbc[:, rank:rank + N], dbc[:, rank + N:]
        w = (torch.randn(dim, rank, generator=g) / rank**0.5).to(DEV, dtype)
        b = (torch.rand(dim, generator=g) - 3).to(DEV, dtype) if bias else None
        x, z = (torch.randn(batch, dim, generator=g).to(DEV, dtype) for _ in range(2))
        A_log = torch.log(torch.rand(dim, N, generator=g) * 4 + 0.1).to(DEV)
        D = torch.randn(dim, generator=g).to(DEV)
        state = torch.randn(batch, dim, N, generator=g).to(DEV)
        expect = state.clone()
        kw = dict(D=D, z=z, dt_softplus=True, a_log=True)
        y = ssm_ops.selective_state_update(state, x, low, A_log, B, C, dt_bias=b, dt_weight=w, backend="triton", **kw)
        y_ref = ssm_triton.selective_state_update_triton(expect, x, torch.nn.functional.linear(low, w, b), A_log, B,
                                                         C, **kw)
        assert y.dtype == dtype
        assert rel(y, y_ref) < TOL[dtype] and rel(state, expect) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("width", [2, 3, 4, 5])
def test_conv_update_matches_torch(dtype, width):
    """causal_conv1d_update_triton against the torch step: the state window after each step and y, over 7 steps, with a
    strided x (the x half of in_proj's output), bias or none, SiLU or none, fp32 or low-precision state."""
    g = torch.Generator().manual_seed(width)
    batch, dim = 3, 70
    for bias_on, act, state_dtype in [(True, "silu", torch.float32), (False, None, dtype)]:
        w = torch.randn(dim, width, generator=g).to(DEV, dtype)
        b = torch.randn(dim, generator=g).to(DEV, dtype) if bias_on else None
        state = torch.randn(batch, dim, width, generator=g).to(DEV, state_dtype)
        expect = state.clone()
        for _ in range(7):
            xz = torch.randn(batch, 2 * dim, generator=g).to(DEV, dtype)
            x = xz[:, :dim]
            y = ssm_triton.causal_conv1d_update_triton(x, state, w, b, activation=act)
            y_ref = ssm_ops.causal_conv1d_update(x, expect, w, b, activation=act, backend="torch")
            assert y.dtype == dtype and y.shape == (batch, dim)
            assert torch.equal(state, expect)  # the window only moves values
            assert rel(y, y_ref) < TOL[dtype], (bias_on, act)


@pytest.mark.parametrize("x_dtype,w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                             (torch.bfloat16, torch.float32), (torch.float16, torch.float16)],
                         ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 768), (5, 100), (1, 1, 2560)])
def test_rms_norm_matches_torch(x_dtype, w_dtype, shape):
    """rms_norm_triton against ssm_layers.RMSNorm's torch arithmetic (rows of 100 / 768 / 2560 columns), output dtype
    the promotion of x's and the weight's."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(*shape, generator=g) * 3).to(DEV, x_dtype)
    w = (torch.rand(shape[-1], generator=g) + 0.5).to(DEV, w_dtype)
    y = ssm_triton.rms_norm_triton(x, w, 1e-5)
    xf = x.float()
    y_ref = w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x_dtype)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    assert rel(y, y_ref) < (1e-6 if x_dtype == torch.float32 else TOL[x_dtype])  # rounded to x's dtype inside


@pytest.mark.parametrize("r_dtype,x_dtype,w_dtype", [(torch.float32, torch.bfloat16, torch.bfloat16),
                                                     (torch.bfloat16, torch.bfloat16, torch.bfloat16),
                                                     (torch.float32, torch.float32, torch.float32),
                                                     (torch.float32, torch.bfloat16, torch.float32)], ids=str)
@pytest.mark.parametrize("cast_input", [True, False])
def test_add_rms_norm_matches_torch(r_dtype, x_dtype, w_dtype, cast_input):
    """add_rms_norm_triton = (residual + x, RMSNorm of it) as the blocks compute them in torch."""
    g = torch.Generator().manual_seed(4)
    r = (torch.randn(3, 5, 768, generator=g) * 3).to(DEV, r_dtype)
    x = torch.randn(3, 5, 768, generator=g).to(DEV, x_dtype)
    w = (torch.rand(768, generator=g) + 0.5).to(DEV, w_dtype)
    s, y = ssm_triton.add_rms_norm_triton(r, x, w, 1e-5, cast_input=cast_input)
    s_ref = r + x
    v = (s_ref.to(w_dtype) if cast_input else s_ref)
    y_ref = w * (v.float() * torch.rsqrt(v.float().pow(2).mean(-1, keepdim=True) + 1e-5)).to(v.dtype)
    assert s.dtype == s_ref.dtype and rel(s, s_ref) < (1e-7 if s.dtype == torch.float32 else TOL[s.dtype])
    assert y.dtype == y_ref.dtype
    assert rel(y, y_ref) < (1e-6 if v.dtype == torch.float32 else TOL[v.dtype])
    if cast_input and w_dtype == torch.float32:  # out_dtype: the same norm rounded once to it (autocast's cast)
        s16, y16 = ssm_triton.add_rms_norm_triton(r, x, w, 1e-5, cast_input=True, out_dtype=torch.bfloat16)
        assert y16.dtype == torch.bfloat16 and torch.equal(s16, s) and torch.equal(y16, y.to(torch.bfloat16))


@pytest.mark.skipif(not getattr(ssm_triton, "_FAST_LAUNCH", False), reason="launches go through triton's run()")
def test_launcher_reuses_variants_by_what_triton_specializes_on(monkeypatch):
    """ssm_triton._Launcher calls a compiled variant's launcher directly once triton has launched its key: views whose
    address (mod 16 bytes) or row stride (mod 16, or 1) differ get their own variant, each right against torch
    (an aligned variant reused on an unaligned view would read wrong rows or fault), and a repeated launch does not
    go through triton's run()."""
    kernel = ssm_triton._rms_norm_kernel
    runs = []
    real_run = kernel.kernel.run
    monkeypatch.setattr(kernel.kernel, "run", lambda *a, **k: runs.append(1) or real_run(*a, **k))
    kernel.variants.clear()
    g = torch.Generator().manual_seed(5)
    w = (torch.rand(100, generator=g) + 0.5).to(DEV)
    for width, offset, rows in [(112, 0, 4), (112, 1, 4), (113, 0, 4), (113, 3, 4), (112, 0, 1), (112, 0, 4)]:
        base = torch.randn(rows, width, generator=g).to(DEV)
        x = base[:, offset:offset + 100]
        for _ in range(2):
            y = ssm_triton.rms_norm_triton(x, w, 1e-5)
            y_ref = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
            assert rel(y, y_ref) < 1e-6, (width, offset, rows)
    # one run() a distinct key (four, or five if torch gives the one-row view another stride), each repeat direct
    assert len(runs) == len(kernel.variants) in (4, 5), (len(runs), len(kernel.variants))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the dispatch sends only CUDA tensors to triton")
def test_rms_norm_dispatch():
    """ssm_ops.rms_norm takes the kernel outside autograd only: with gradients it is the torch formula and
    differentiable, and both give the same numbers."""
    x = torch.randn(4, 7, 96, device=DEV, dtype=torch.bfloat16)
    w = torch.rand(96, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    with torch.no_grad():
        fused = ssm_ops.rms_norm(x, w, 1e-5)
    y = ssm_ops.rms_norm(x, w, 1e-5)
    assert y.requires_grad and rel(fused, y.detach()) < TOL[torch.bfloat16]
    y.float().sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("x_dtype,w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                             (torch.bfloat16, torch.bfloat16)], ids=str)
@pytest.mark.parametrize("cols", [96, 768, 50])
def test_layer_norm_matches_torch(x_dtype, w_dtype, cols):
    """layer_norm_triton against F.layer_norm in fp32 (rows of 96 / 768 / 50 values, several rows a program, rows read
    at a stride), with a bias or none, rounded to the dtype asked; with a residual: (residual + x, its norm)."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(7, 13, cols + 3, generator=g) * 3 + 1).to(DEV, x_dtype)[..., :cols]  # rows at a stride
    w = (torch.rand(cols, generator=g) + 0.5).to(DEV, w_dtype)
    b = torch.randn(cols, generator=g).to(DEV, w_dtype)
    ref = torch.nn.functional.layer_norm(x.float(), (cols,), w.float(), b.float(), 1e-5)
    y = ssm_triton.layer_norm_triton(x, w, b, 1e-5, out_dtype=torch.float32)
    assert y.shape == x.shape and rel(y, ref) < 1e-6
    y = ssm_triton.layer_norm_triton(x, w, None, 1e-5)  # no bias; dtype: x's and the weight's promoted
    ref_nb = torch.nn.functional.layer_norm(x.float(), (cols,), w.float(), None, 1e-5)
    assert y.dtype == torch.promote_types(x_dtype, w_dtype) and rel(y, ref_nb) < TOL[y.dtype]
    r = torch.randn(7, 13, cols, generator=g).to(DEV)
    s, y = ssm_triton.layer_norm_triton(x, w, b, 1e-5, residual=r, out_dtype=torch.bfloat16)
    s_ref = r + x
    assert s.dtype == torch.float32 and torch.equal(s, s_ref)
    y_ref = torch.nn.functional.layer_norm(s_ref, (cols,), w.float(), b.float(), 1e-5)
    assert y.dtype == torch.bfloat16 and rel(y, y_ref) < TOL[torch.bfloat16]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the dispatch sends only CUDA tensors to triton")
def test_layer_norm_dispatch():
    """ssm_ops.layer_norm takes the kernel outside autograd only; with gradients it is F.layer_norm (differentiable);
    the residual form returns (sum, norm) either way, the same numbers."""
    x = torch.randn(4, 7, 96, device=DEV)
    r = torch.randn(4, 7, 96, device=DEV)
    w = torch.rand(96, device=DEV, requires_grad=True)
    b = torch.randn(96, device=DEV, requires_grad=True)
    with torch.no_grad():
        s0, y0 = ssm_ops.layer_norm(x, w, b, 1e-5, residual=r, out_dtype=torch.bfloat16)
    s1, y1 = ssm_ops.layer_norm(x, w, b, 1e-5, residual=r, out_dtype=torch.bfloat16)
    assert y1.requires_grad and torch.equal(s0, s1) and y0.dtype == y1.dtype == torch.bfloat16
    assert rel(y0, y1.detach()) < TOL[torch.bfloat16]
    y1.float().sum().backward()
    assert w.grad is not None and b.grad is not None


def _cross_scan_torch(x):
    """VMamba's torch cross-scan (modeling_vmamba.cross_scan), written here as the reference: (b, 4, d, L)."""
    row = x.flatten(2)
    col = x.transpose(2, 3).flatten(2)
    return torch.stack([row, col, row.flip(-1), col.flip(-1)], dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("hwd", [(5, 7, 24), (8, 8, 33), (1, 9, 96)], ids=str)
@pytest.mark.parametrize("channel_last", [True, False])
def test_cross_scan_matches_torch(dtype, hwd, channel_last):
    """cross_scan_triton's (b, L, 4, d) time-major directions = the torch cross-scan's (b, 4, d, L), non-square and
    one-row maps, channel-last or channel-first input, with the SiLU fused (as F.silu rounds it)."""
    H, W, d = hwd
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, H, W, d, generator=g).to(DEV, dtype).permute(0, 3, 1, 2)
    if not channel_last:
        x = x.contiguous()
    u = ssm_triton.cross_scan_triton(x)
    assert u.shape == (2, H * W, 4, d) and torch.equal(u.permute(0, 2, 3, 1), _cross_scan_torch(x))
    u = ssm_triton.cross_scan_triton(x, silu=True)
    ref = _cross_scan_torch(torch.nn.functional.silu(x))
    assert rel(u.permute(0, 2, 3, 1), ref) < (1e-6 if dtype == torch.float32 else TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("hwd", [(5, 7, 24), (8, 8, 33), (3, 1, 96)], ids=str)
@pytest.mark.parametrize("layout", ["channel_major", "time_major"])
def test_cross_merge_norm_matches_torch(dtype, hwd, layout):
    """cross_merge_norm_triton = out_norm(cross_merge(ys)) [-> GELU] [* z] as VMamba's torch path computes it (the
    merge's sums rounded in ys' dtype: bit for bit on a GPU; the norm in fp32), ys channel- or time-major."""
    H, W, d = hwd
    L = H * W
    g = torch.Generator().manual_seed(7)
    ys = torch.randn(2, 4 * d, L, generator=g).to(DEV, dtype)
    if layout == "time_major":
        ys = ys.transpose(1, 2).contiguous().transpose(1, 2)
    w = (torch.rand(d, generator=g) + 0.5).to(DEV)
    b = torch.randn(d, generator=g).to(DEV)
    z = torch.randn(2, H, W, d, generator=g).to(DEV, dtype)
    y4 = ys.reshape(2, 4, d, L)
    merged = y4[:, 0:2] + y4[:, 2:4].flip(-1)
    merged = merged[:, 0].reshape(2, d, H, W) + merged[:, 1].reshape(2, d, W, H).transpose(2, 3)
    normed = torch.nn.functional.layer_norm(merged.permute(0, 2, 3, 1).float(), (d,), w, b, 1e-5)
    exact = 1e-6 if DEV == "cuda" or dtype == torch.float32 else TOL[dtype]  # the interpreter truncates bf16 casts
    y = ssm_triton.cross_merge_norm_triton(ys, H, W, w, b, 1e-5, out_dtype=torch.float32)
    assert y.shape == (2, H, W, d) and rel(y, normed) < exact
    y = ssm_triton.cross_merge_norm_triton(ys, H, W, w, b, 1e-5, z=z, gelu=True, out_dtype=torch.float32)
    assert rel(y, torch.nn.functional.gelu(normed) * z.float()) < exact
    y = ssm_triton.cross_merge_norm_triton(ys, H, W, w, None, 1e-5)  # dtype: ys' and the weight's promoted
    ref = torch.nn.functional.layer_norm(merged.permute(0, 2, 3, 1).float(), (d,), w, None, 1e-5)
    assert y.dtype == torch.float32 and rel(y, ref) < exact
    with pytest.raises(ValueError, match="4 \\* dim"):
        ssm_triton.cross_merge_norm_triton(ys[:, 1:], H, W, w, b, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cross_scan_and_merge_gradients(dtype):
    """The differentiable cross-scan / merge (training) against torch's stack / flip / sum with autograd: outputs and
    input gradients (the backward of each is the other kernel), a non-square map."""
    H, W, d = 5, 7, 24
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, H, W, d, generator=g).to(DEV, dtype).permute(0, 3, 1, 2).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    u = ssm_triton.cross_scan_autograd(x)  # (b, L, 4, d)
    u_ref = _cross_scan_torch(x_ref)  # (b, 4, d, L)
    assert torch.equal(u.detach().permute(0, 2, 3, 1), u_ref.detach())
    w_u = torch.randn(u_ref.shape, generator=g).to(DEV, dtype)
    (u.permute(0, 2, 3, 1) * w_u).float().sum().backward()
    (u_ref * w_u).float().sum().backward()
    assert rel(x.grad, x_ref.grad) < (1e-6 if dtype == torch.float32 else TOL[dtype])
    ys = torch.randn(2, 4 * d, H * W, generator=g).to(DEV, dtype).requires_grad_(True)
    ys_ref = ys.detach().clone().requires_grad_(True)
    m = ssm_triton.cross_merge_autograd(ys, H, W)  # (b, H, W, d)
    y4 = ys_ref.reshape(2, 4, d, H * W)
    pair = y4[:, 0:2] + y4[:, 2:4].flip(-1)
    m_ref = pair[:, 0].reshape(2, d, H, W) + pair[:, 1].reshape(2, d, W, H).transpose(2, 3)
    exact = 1e-6 if DEV == "cuda" or dtype == torch.float32 else TOL[dtype]
    assert m.dtype == dtype and rel(m.detach().permute(0, 3, 1, 2), m_ref.detach()) < exact
    w_m = torch.randn(m_ref.shape, generator=g).to(DEV, dtype)
    (m.permute(0, 3, 1, 2) * w_m).float().sum().backward()
    (m_ref * w_m).float().sum().backward()
    assert torch.equal(ys.grad, ys_ref.grad)


def test_bad_inputs():
    inputs = make_inputs(1, 8, 5, 4, 0, torch.float32)
    cpu = {k: (v.cpu() if v is not None else None) for k, v in inputs.items()}
    if not _INTERPRET:
        with pytest.raises(ValueError, match="cpu.*backend='torch'"):
            ssm_triton.selective_scan_triton(**cpu)
        with pytest.raises(ValueError, match="cpu"):
            ssm_triton.selective_state_update_triton(
                torch.zeros(1, 8, 4), cpu["u"][:, :, 0], cpu["delta"][:, :, 0], cpu["A"], cpu["B"][:, :, 0],
                cpu["C"][:, :, 0])
    f64 = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    with pytest.raises(TypeError, match="float64"):
        ssm_triton.selective_scan_triton(**f64)
    with pytest.raises(TypeError, match="float64"):
        ssm_triton.selective_state_update_triton(
            torch.zeros(1, 8, 4, device=DEV), f64["u"][:, :, 0], f64["delta"][:, :, 0], f64["A"],
            f64["B"][:, :, 0], f64["C"][:, :, 0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the dispatch sends only CUDA tensors to triton")
def test_dispatch_triton_and_auto():
    assert "triton" in ssm_ops.available_backends(DEV)
    assert ssm_ops.resolve_backend("triton", DEV) == "triton"
    auto = ssm_ops.resolve_backend("auto", DEV)
    assert auto in ("triton", "mamba_ssm")
    inputs = make_inputs(2, 32, 100, 16, 0, torch.bfloat16, h0=True)
    direct = run(ssm_triton.selective_scan_triton, inputs)
    for backend in ("triton", "auto"):
        y, last, grads = run(ssm_ops.selective_scan, inputs, backend=backend)
        if backend == "triton" or auto == "triton":
            assert torch.equal(y, direct[0]) and torch.equal(last, direct[1])
        y0, last0, grads0 = run(ssm_ops.selective_scan_ref, inputs, f64=True)
        assert rel(y, y0) < TOL[torch.bfloat16]
        for k in grads0:
            assert rel(grads[k], grads0[k]) < TOL[torch.bfloat16], (backend, k)
    # the decoding step goes through the triton kernel too
    state = inputs["initial_state"].clone()
    state_ref = state.clone()
    args = dict(x=inputs["u"][:, :, 0], dt=inputs["delta"][:, :, 0], A=inputs["A"], B=inputs["B"][:, :, 0],
                C=inputs["C"][:, :, 0], D=inputs["D"], z=inputs["z"][:, :, 0], dt_bias=inputs["delta_bias"],
                dt_softplus=True)
    y = ssm_ops.selective_state_update(state, **args, backend="triton")
    y_ref = ssm_ops.selective_state_update(state_ref, **args, backend="reference")
    assert rel(y, y_ref) < TOL[torch.bfloat16] and rel(state, state_ref) < 1e-5


def _conv_ref(x, w, b, act, prefix=None, reverse=False):
    """The causal conv in float64 by its definition, step by step: y_t = sum_k w_k x_{t-(W-1-k)} (earlier steps from
    the prefix, else zero), or on the time-reversed sequence; + bias; SiLU."""
    x, w = x.double(), w.double()
    if reverse:
        x = x.flip(-1)
    W = w.shape[1]
    xp = torch.cat([prefix.double() if prefix is not None else x.new_zeros(*x.shape[:2], W - 1), x], -1)
    y = sum(w[None, :, k, None] * xp[..., k:k + x.shape[-1]] for k in range(W))
    y = y + (b.double()[None, :, None] if b is not None else 0)
    y = torch.nn.functional.silu(y) if act else y
    return y.flip(-1) if reverse else y


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["channel", "time"])
def test_causal_conv_matches_reference(dtype, layout):
    """causal_conv1d_triton (forward) against the float64 definition: widths 2 / 4 / 5, odd lengths (1, 7, 300: the
    tile edges), 70 channels, channel-major x or the time-major x half of a linear output, bias or none, SiLU or none,
    a prefix of earlier inputs (a cache continuing), the reversed direction; the output is stored (dim, batch, L), or
    time-major as a time-major x."""
    g = torch.Generator().manual_seed(3)
    batch, dim = 3, 70
    for width, L, bias_on, act, pre, rev in [(4, 300, True, "silu", False, False), (4, 7, False, None, True, False),
                                            (2, 1, True, "silu", True, False), (5, 300, True, "silu", False, True),
                                            (4, 129, False, "silu", False, True), (4, 130, True, "silu", True, False)]:
        if layout == "time":
            x = torch.randn(batch, L, 2 * dim, generator=g).to(DEV, dtype)[..., :dim].transpose(1, 2)
        else:
            x = torch.randn(batch, dim, L, generator=g).to(DEV, dtype)
        w = torch.randn(dim, width, generator=g).to(DEV, dtype)
        b = torch.randn(dim, generator=g).to(DEV, dtype) if bias_on else None
        prefix = torch.randn(batch, dim, width - 1, generator=g).to(DEV, torch.float32) if pre else None
        y = ssm_triton.causal_conv1d_triton(x, w, b, activation=act, initial_states=prefix, reverse=rev)
        ref = _conv_ref(x, w, b, act, prefix, rev)
        # stored (dim, batch, L); time-major as x (stored (batch, L, dim)) for the lane scan, which reads it best
        assert y.dtype == dtype and y.shape == x.shape
        assert y.stride() == ((L * dim, 1, dim) if layout == "time" and L > 1 else (L, batch * L, 1)), y.stride()
        assert rel(y, ref) < TOL[dtype], (width, L, bias_on, act, pre, rev)
        # ssm_ops' torch path (F.conv1d) agrees: the same prefix / reverse semantics there
        y_t = ssm_ops.causal_conv1d(x, w, b, act, backend="torch", initial_states=prefix, reverse=rev)
        assert rel(y_t, ref) < TOL[dtype]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two-pass"])
@pytest.mark.parametrize("reverse", [False, True], ids=["causal", "reverse"])
@pytest.mark.parametrize("layout", ["time", "channel"])
def test_causal_conv_gradients(monkeypatch, reverse, layout, fused):
    """Gradients of causal_conv1d_triton (x, weight, bias; through SiLU or not; one fused backward kernel) against
    float64 autograd of the definition: fp32 tight, bf16 within its tolerance; widths 2 / 4 / 5, lengths that end
    inside a tile (150, 7, 1), a time-major x (a linear output's half) or a channel-major one, with a prefix of earlier
    inputs (causal; its gradient is not asked for), without a bias, and with the weight frozen (a LoRA fine-tune: only
    x's gradient) or x not needing one; the input's gradient in the backward kernel or by a second conv pass over g
    (CONV_BWD_CONFIG["fused"], CONV_BWD_TIME_MAJOR_CONFIG["fused"])."""
    monkeypatch.setitem(ssm_triton.CONV_BWD_CONFIG, "fused", fused)
    monkeypatch.setitem(ssm_triton.CONV_BWD_TIME_MAJOR_CONFIG, "fused", fused)
    g = torch.Generator().manual_seed(5)
    batch, dim = 2, 40
    cases = [(4, 150, True, "silu", False, "all"), (5, 7, False, "silu", True, "all"),
             (2, 150, True, None, True, "all"), (4, 1, True, "silu", False, "all"), (4, 150, True, "silu", True, "x"),
             (4, 150, False, "silu", False, "w")]
    for (width, L, bias_on, act, pre, wants), dtype in ((c, d) for c in cases for d in (torch.float32, torch.bfloat16)):
        pre = pre and not reverse
        if layout == "time":
            x0 = torch.randn(batch, L, 2 * dim, generator=g).to(DEV, dtype)
        else:
            x0 = torch.randn(batch, 2 * dim, L, generator=g).to(DEV, dtype)
        w0 = torch.randn(dim, width, generator=g).to(DEV, dtype)
        b0 = torch.randn(dim, generator=g).to(DEV, dtype) if bias_on else None
        prefix = torch.randn(batch, dim, width - 1, generator=g).to(DEV, dtype) if pre else None
        gy = torch.randn(batch, dim, L, generator=g).to(DEV, dtype)

        def half(t):  # the conv's input: x's first dim channels, (batch, dim, L)
            return t[..., :dim].transpose(1, 2) if layout == "time" else t[:, :dim]

        grads = {"all": (True, True), "x": (True, False), "w": (False, True)}[wants]
        x, w = x0.clone().requires_grad_(grads[0]), w0.clone().requires_grad_(grads[1])
        b = b0.clone().requires_grad_(grads[1]) if bias_on else None
        y = ssm_triton.causal_conv1d_triton(half(x), w, b, activation=act, initial_states=prefix, reverse=reverse)
        y.backward(gy)
        xr, wr = x0.double().requires_grad_(), w0.double().requires_grad_()
        br = b0.double().requires_grad_() if bias_on else None
        _conv_ref(half(xr), wr, br, act, prefix, reverse=reverse).backward(gy.double())
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        pairs = ([(x.grad, xr.grad)] if grads[0] else []) + ([(w.grad, wr.grad)] if grads[1] else []) \
            + ([(b.grad, br.grad)] if grads[1] and bias_on else [])
        for got, want in pairs:
            assert got.dtype == dtype and rel(got, want) < tol, (width, L, bias_on, act, pre, wants, dtype)
        assert (x.grad is None) == (not grads[0]) and (w.grad is None) == (not grads[1])
        assert w.grad is None or w.grad.is_contiguous()  # as the weight: DDP's buckets expect its strides


@pytest.mark.parametrize("reverse", [False, True], ids=["causal", "reverse"])
def test_causal_conv_reads_nothing_past_the_sequence(reverse):
    """The steps past L of a view (here 3e38 in the buffer behind it) are never read: the last tile's padding masks
    every tap (a read past x's end had made a flaky illegal-address fault on the GPU). In Triton's interpreter a read
    of them overflows, and the warning is an error here; on a GPU the result must still match the float64 definition."""
    import warnings

    g = torch.Generator().manual_seed(2)
    batch, dim, L, W = 2, 40, 9, 4
    base = torch.full((batch, L + 130, dim), 3e38)
    base[:, :L] = torch.randn(batch, L, dim, generator=g)
    x = base.to(DEV)[:, :L].transpose(1, 2)  # time-major (batch, dim, L), the huge steps right behind it
    w, b = torch.randn(dim, W, generator=g).to(DEV), torch.randn(dim, generator=g).to(DEV)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        y = ssm_triton.causal_conv1d_triton(x, w, b, reverse=reverse)
    want = _conv_ref(x.double(), w.double(), b.double(), "silu", reverse=reverse)
    assert torch.isfinite(y).all() and rel(y, want) < 1e-4


def test_causal_conv_bad_inputs():
    """A prefix of the wrong shape, a prefix with reverse, a prefix needing a gradient: errors that say what to pass."""
    x = torch.randn(2, 8, 5, device=DEV)
    w = torch.randn(8, 4, device=DEV)
    with pytest.raises(ValueError, match="width - 1"):
        ssm_triton.causal_conv1d_triton(x, w, initial_states=torch.zeros(2, 8, 4, device=DEV))
    with pytest.raises(ValueError, match="reverse"):
        ssm_triton.causal_conv1d_triton(x, w, initial_states=torch.zeros(2, 8, 3, device=DEV), reverse=True)
    with pytest.raises(NotImplementedError, match="detach"):
        ssm_triton.causal_conv1d_triton(x, w, initial_states=torch.zeros(2, 8, 3, device=DEV, requires_grad=True))


@pytest.mark.parametrize("shape,perm", [((3, 70, 300), (0, 2, 1)), ((1, 5, 4097), (0, 2, 1)), ((2, 64, 64), (1, 0, 2))])
def test_transpose_copy(shape, perm):
    """transpose_copy_triton: a contiguous copy equal to torch's, of transposed views with edges off the 64-tiles."""
    t = torch.randn(*[shape[p] for p in perm], device=DEV, dtype=torch.bfloat16).permute(*perm)
    y = ssm_triton.transpose_copy_triton(t)
    assert y.is_contiguous() and torch.equal(y, t.contiguous())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_staged_bc_rows(dtype):
    """_staged_bc: B and C, from a time-major view (x_proj's slices, groups 2) and a reversed one (step-0 pointer at
    the last step, negative step stride), land in rows of L rounded up to 32 steps, equal to the source in step order
    and exactly zero past L; strides a multiple of 16 elements (what the seg kernel's vector loads need)."""
    g = torch.Generator().manual_seed(4)
    batch, G, N, L = 2, 2, 5, 45
    xp = torch.randn(batch, L, 3 + 2 * G * N, generator=g).to(DEV, dtype)
    B = xp[..., 3:3 + G * N].view(batch, L, G, N).permute(0, 2, 3, 1)  # (batch, G, N, L) time-major view
    C = xp[..., 3 + G * N:].view(batch, L, G, N).permute(0, 2, 3, 1)
    for reverse in (False, True):
        (Bp, sB), (Cp, sC) = (ssm_triton._steps(t, reverse) for t in (B, C))
        (Bs, sBs), (Cs, sCs), Lp = ssm_triton._staged_bc(Bp, sB, Cp, sC, batch, G, N, L)
        assert Lp == 64 and Bs.shape == (batch, G, N, Lp) and sBs[3] == 1 and all(s % 16 == 0 for s in sBs[:3])
        for got, src in ((Bs, B), (Cs, C)):
            want = src.flip(-1) if reverse else src
            assert torch.equal(got[..., :L], want) and torch.all(got[..., L:] == 0)
        assert ssm_triton._vector_bc(Bs, Cs, sBs, sCs, Lp) and not ssm_triton._vector_bc(Bp, Cp, sB, sC, L)


def _force_forward_path(monkeypatch, path):
    """Makes the inference forward take `path`: "lane" (unchunked), "lane-chunks" (time-parallel chunks of 16), "tile"
    (the time-tiled kernel, tiles of 32), anything else the sequential / chunked kernels."""
    settings = {"lane": dict(enabled=True, max_split=2, min_warps=1, min_chunk=10**6),
                "lane-chunks": dict(enabled=True, max_split=1, min_warps=10**6, min_chunk=16)}.get(path, {"enabled": False})
    for k, v in settings.items():
        monkeypatch.setitem(ssm_triton.LANE_CONFIG, k, v)
    monkeypatch.setitem(ssm_triton.TILE_CONFIG, "enabled", path.startswith("tile"))
    monkeypatch.setitem(ssm_triton.TILE_CONFIG, "BLOCK_T", 32)
    monkeypatch.setitem(ssm_triton.TILE_CONFIG, "stage_bc", 1 if path == "tile-staged" else 0)


@pytest.mark.parametrize("path", ["lane", "lane-chunks", "tile", "tile-staged", "flipped"])
@pytest.mark.parametrize("layout", ["channel", "time", "time-aligned"])
def test_scan_reverse_reads_backwards(monkeypatch, path, layout):
    """selective_scan_triton(reverse=True) (inference) against the float64 reference on flipped inputs, flipped back:
    the lane kernel (unchunked and time-parallel chunks) and the time-tiled kernel read the steps backwards in place
    (negative step strides; or B / C staged in reversed order into padded rows), other cases scan flipped
    copies; channel-major inputs and the mixer's time-major views, an initial state, odd length, B / C rows read in
    place or through the lane kernel's row buffer. With gradients, reverse=True is refused and ssm_ops flips instead
    (same result)."""
    _force_forward_path(monkeypatch, path)
    g = torch.Generator().manual_seed(11)
    batch, dim, L, N = 2, 64, 77, 16
    R = 4 if layout == "time-aligned" else 3  # fp32 B / C rows 16-byte aligned: the lane kernel reads them in place
    if layout.startswith("time"):
        bases = dict(xz=torch.randn(batch, L, 2 * dim, generator=g), dl=torch.randn(batch, L, dim, generator=g) * 0.5,
                     xp=torch.randn(batch, L, R + 2 * N, generator=g), u=torch.randn(batch, dim, L, generator=g))
        u, delta, z, B, C = _mixer_views({k: v.to(DEV, torch.float32) for k, v in bases.items()}, dim, N, R, 0, False)
    else:
        u, delta, z = (torch.randn(batch, dim, L, generator=g).to(DEV) for _ in range(3))
        B, C = (torch.randn(batch, N, L, generator=g).to(DEV) for _ in range(2))
    A = (-torch.rand(dim, N, generator=g) * 4 - 0.1).to(DEV)
    Dp, bias = torch.randn(dim, generator=g).to(DEV), (torch.rand(dim, generator=g) - 2).to(DEV)
    h0 = torch.randn(batch, dim, N, generator=g).to(DEV)
    kw = dict(D=Dp, delta_bias=bias, delta_softplus=True, return_last_state=True, initial_state=h0)
    y, last = ssm_triton.selective_scan_triton(u, delta, A, B, C, z=z, reverse=True, **kw)
    f = (lambda t: t.double().flip(-1))
    y0, last0 = ssm_ops.selective_scan_ref(f(u), f(delta), A.double(), f(B), f(C), z=f(z),
                                           **{k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()})
    assert rel(y, y0.flip(-1)) < 1e-4 and rel(last, last0) < 1e-4
    if path == "lane":
        uu = u.clone().requires_grad_()
        with pytest.raises(ValueError, match="without gradients"):
            ssm_triton.selective_scan_triton(uu, delta, A, B, C, z=z, reverse=True, **kw)
        y2, _ = ssm_ops.selective_scan(uu, delta, A, B, C, z=z, reverse=True, backend="triton", **kw)
        assert rel(y2, y0.flip(-1)) < 1e-4


@pytest.mark.parametrize("path", ["lane", "lane-chunks", "tile", "flipped"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_scan_mean_into(monkeypatch, path, dtype):
    """selective_scan(..., reverse=True, mean_into=y) as Vim's backward branch calls it: y becomes the mean of itself
    and the reversed scan (the lane kernel averages as it stores, one-pass and chunked; the other paths lerp after),
    against lerp(y, float64 reference); the tensor is written in place and returned; bad ones are refused."""
    _force_forward_path(monkeypatch, path)
    g = torch.Generator().manual_seed(12)
    batch, dim, L, N, R = 2, 64, 77, 16, 8
    bases = dict(xz=torch.randn(batch, L, 2 * dim, generator=g), dl=torch.randn(batch, L, dim, generator=g) * 0.5,
                 xp=torch.randn(batch, L, R + 2 * N, generator=g), u=torch.randn(batch, dim, L, generator=g))
    u, delta, z, B, C = _mixer_views({k: v.to(DEV, dtype) for k, v in bases.items()}, dim, N, R, 0, False)
    A_log = torch.log(torch.rand(dim, N, generator=g) * 4 + 0.1).to(DEV)
    Dp, bias = torch.randn(dim, generator=g).to(DEV), (torch.rand(dim, generator=g) - 2).to(DEV)
    kw = dict(D=Dp, delta_bias=bias, delta_softplus=True, a_log=True, backend="triton")
    other = torch.randn(batch, L, dim, generator=g).to(DEV, dtype).transpose(1, 2)  # time-major, as the lane y
    target = other.clone()
    with torch.no_grad():
        out = ssm_ops.selective_scan(u, delta, A_log, B, C, z=z, reverse=True, mean_into=target, **kw)
    assert out is target
    f = (lambda t: t.double().flip(-1))
    y0 = ssm_ops.selective_scan_ref(f(u), f(delta), -torch.exp(A_log.double()), f(B), f(C), z=f(z), D=Dp.double(),
                                    delta_bias=bias.double(), delta_softplus=True).flip(-1)
    assert rel(out, torch.lerp(other.double(), y0, 0.5)) < (1e-5 if dtype == torch.float32 else TOL[dtype])
    for bad in (other[:, :, :-1], other.float() if dtype != torch.float32 else other.double()):
        with pytest.raises(ValueError, match="mean_into must be a tensor of y's shape"):
            ssm_ops.selective_scan(u, delta, A_log, B, C, z=z, reverse=True, mean_into=bad, **kw)
    with pytest.raises(ValueError, match="written in place"):
        ssm_ops.selective_scan(u, delta, A_log, B, C, z=z, mean_into=other.clone().requires_grad_(), **kw)


@pytest.mark.parametrize("chunks", [False, True], ids=["one-pass", "chunked"])
def test_lane_bf16_words_equal_per_value_conversion(monkeypatch, chunks):
    """LANE_CONFIG["bf16_words"]: bf16 B / C rows read in place and converted by bit operations on 32-bit words give
    the same y and last state, bit for bit, as the per-value conversion (a bf16 is the upper half of its fp32)."""
    monkeypatch.setitem(ssm_triton.LANE_CONFIG, "enabled", True)
    if chunks:
        monkeypatch.setitem(ssm_triton.LANE_CONFIG, "min_warps", 10**6)
        monkeypatch.setitem(ssm_triton.LANE_CONFIG, "min_chunk", 16)
    g = torch.Generator().manual_seed(13)
    batch, dim, L, N, R = 2, 64, 61, 16, 8
    bases = dict(xz=torch.randn(batch, L, 2 * dim, generator=g), dl=torch.randn(batch, L, dim, generator=g) * 0.5,
                 xp=torch.randn(batch, L, R + 2 * N, generator=g), u=torch.randn(batch, dim, L, generator=g))
    u, delta, z, B, C = _mixer_views({k: v.to(DEV, torch.bfloat16) for k, v in bases.items()}, dim, N, R, 0, False)
    assert ssm_triton._lane_vector(ssm_triton._bc4(B), ssm_triton._bc4(C), N) == 8  # read in place
    A = (-torch.rand(dim, N, generator=g) * 4 - 0.1).to(DEV)
    out = {}
    for words in (True, False):
        monkeypatch.setitem(ssm_triton.LANE_CONFIG, "bf16_words", words)
        out[words] = ssm_triton.selective_scan_triton(u, delta, A, B, C, z=z, delta_softplus=True,
                                                      return_last_state=True)
    assert torch.equal(out[True][0], out[False][0]) and torch.equal(out[True][1], out[False][1])


@pytest.mark.parametrize("path", ["lane", "lane-chunks", "tile", "sequential", "training"])
def test_scan_takes_a_log(monkeypatch, path):
    """selective_scan_triton(a_log=True) (A given as A_log, the scan uses -exp(A_log)) against the float64 reference
    with A = -exp(A_log): the lane kernel (unchunked, and chunked, whose carry kernel takes it too) and the tiled
    kernel take the exponential inside; the sequential kernel and training get A from the wrapper, and in training
    the gradient reaches A_log (and a bf16 D)."""
    _force_forward_path(monkeypatch, path)
    inputs = make_inputs(2, 64, 45, 16, 0, torch.float32, True, True, True, True, seed=4)
    A_log = torch.log(-inputs.pop("A")).requires_grad_(path == "training")
    D16 = inputs.pop("D").to(torch.bfloat16).requires_grad_(path == "training")
    y, last = ssm_triton.selective_scan_triton(**inputs, A=A_log, D=D16, delta_softplus=True, return_last_state=True,
                                               a_log=True)
    ref = {k: (v.double() if torch.is_tensor(v) else v) for k, v in inputs.items()}
    A_ref = torch.log(-make_inputs(2, 64, 45, 16, 0, torch.float32, seed=4)["A"]).double().requires_grad_()
    y0, last0 = ssm_ops.selective_scan_ref(**ref, A=-torch.exp(A_ref), D=D16.double(), delta_softplus=True,
                                           return_last_state=True)
    assert rel(y, y0) < 1e-4 and rel(last, last0) < 1e-4
    if path == "training":
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(DEV)
        (y * g).sum().backward()
        (y0 * g.double()).sum().backward()
        assert A_log.grad is not None and rel(A_log.grad, A_ref.grad) < 1e-3
        assert D16.grad is not None and D16.grad.dtype == torch.bfloat16


def test_transpose_copy_two_in_one_launch():
    """transpose_copy_triton(a, b): both contiguous copies equal to torch's, from one launch; bad calls are refused."""
    a = torch.randn(3, 200, 70, device=DEV).transpose(1, 2)  # (3, 70, 200), time-major
    b = torch.randn(3, 200, 140, device=DEV)[..., 70:].transpose(1, 2)  # the z half of an in_proj output
    ya, yb = ssm_triton.transpose_copy_triton(a, b)
    assert torch.equal(ya, a.contiguous()) and torch.equal(yb, b.contiguous()) and ya.is_contiguous()
    with pytest.raises(ValueError, match="one shape"):
        ssm_triton.transpose_copy_triton(a, a[:1])
