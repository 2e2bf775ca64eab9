"""Selective-scan (Mamba-1) operations with one dispatch point and several backends.

Backends
--------
``reference``  sequential PyTorch loop, fp32 state; the ground truth every other backend is tested against.
``torch``      chunked scan in plain PyTorch (the CPU default; differentiable; works under ``torch.compile``); on CPU
               float32 / float64 tensors, with the ssmvl package installed, a fused C++ kernel
               (``ssmvl/kernels/cpu_scan.py``, compiled on first use, registered by ``ssmvl.modeling``; env
               ``SSMVL_CPU_SCAN_KERNEL=0`` turns it off) computes it; the eager ops where it cannot be built and in
               a checkpoint's remote-code copy of these files, which compiles nothing.
``triton``     our Triton kernels (CUDA tensors only), in ``ssm_triton.py``.
``mamba_ssm``  the official CUDA kernels (``selective_scan_fn``, ``causal_conv1d_fn``,
               ``selective_state_update``) when they import.

Choice: ``backend`` argument > ``config.ssm_backend`` (passed in by the layers; None or "auto" = unset) > env
``SSMVL_SSM_BACKEND`` > ``"auto"``; ``auto`` picks mamba_ssm CUDA kernels if they import and the tensors are on CUDA, else our
Triton kernels on CUDA, else the torch chunked scan. The choice is logged once.

Shapes follow mamba_ssm (``ops/selective_scan_interface.py``)::

    u, delta, z: (batch, dim, seqlen)      A: (dim, dstate)      D, delta_bias: (dim,)
    B, C: (batch, dstate, seqlen) or (batch, groups, dstate, seqlen) with dim % groups == 0
    state: (batch, dim, dstate), always float32

The recurrence (discretised with zero-order hold for A and Euler for B, as in Mamba)::

    delta_t = softplus(delta_t + delta_bias)            (if delta_softplus)
    h_t     = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t     = <h_t, C_t> + D * u_t ;   y_t *= silu(z_t)  (if z is given)
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from transformers.utils import logging


logger = logging.get_logger(__name__)

BACKENDS = ("reference", "torch", "triton", "mamba_ssm")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# ---------------------------------------------------------------------------------------------------------------------
# Optional kernels, imported once under try; the reason they are unavailable is kept for the log line.
# ---------------------------------------------------------------------------------------------------------------------
_MAMBA_SSM = None
_MAMBA_SSM_ERROR: Optional[str] = None
_TRITON_OPS = None
_TRITON_ERROR: Optional[str] = None


def _load_mamba_ssm():
    global _MAMBA_SSM, _MAMBA_SSM_ERROR
    if _MAMBA_SSM is None and _MAMBA_SSM_ERROR is None:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # needs the compiled extension

            ops = {"selective_scan_fn": selective_scan_fn}
            try:
                from mamba_ssm.ops.triton.selective_state_update import selective_state_update

                ops["selective_state_update"] = selective_state_update
            except Exception:  # pragma: no cover - depends on the install
                pass
            try:
                from causal_conv1d import causal_conv1d_fn, causal_conv1d_update

                ops["causal_conv1d_fn"] = causal_conv1d_fn
                ops["causal_conv1d_update"] = causal_conv1d_update
            except Exception:  # pragma: no cover - depends on the install
                pass
            _MAMBA_SSM = ops
        except Exception as err:  # ImportError, or an extension built for another torch
            _MAMBA_SSM_ERROR = f"{type(err).__name__}: {err}"
    return _MAMBA_SSM


def _load_triton():
    global _TRITON_OPS, _TRITON_ERROR
    if _TRITON_OPS is None and _TRITON_ERROR is None:
        try:
            # written as `from .ssm_triton import ...` so that save_pretrained / trust_remote_code ship the file
            from .ssm_triton import selective_scan_triton  # noqa: F401

            _TRITON_OPS = sys.modules[selective_scan_triton.__module__]
        except Exception as err:
            _TRITON_ERROR = f"{type(err).__name__}: {err}"
    return _TRITON_OPS


def _compiling() -> bool:
    return getattr(torch, "compiler", None) is not None and torch.compiler.is_compiling()


def _warn_once(message: str):
    """``logger.warning_once``, except while torch.compile traces: dynamo cannot trace a logging call (each would be a
    graph break, one per mixer); the compiled forward makes the same choice as an eager one, without saying it."""
    if not _compiling():
        logger.warning_once(message)


def available_backends(device: Union[str, torch.device, None] = None) -> Tuple[str, ...]:
    """Backends that can run on ``device`` in this environment."""
    on_cuda = device is not None and torch.device(device).type == "cuda"
    names = ["reference", "torch"]
    if on_cuda and _load_triton() is not None:
        names.append("triton")
    if on_cuda and _load_mamba_ssm() is not None:
        names.append("mamba_ssm")
    return tuple(names)


def resolve_backend(requested: Optional[str] = None, device: Union[str, torch.device, None] = None) -> str:
    """Turns ``requested`` (None/"auto"/a backend name; env ``SSMVL_SSM_BACKEND`` when None) into a backend
    that can run on ``device``. An unknown name raises; a known but unavailable one falls back (logged once)."""
    if requested is None or requested.lower() == "auto":  # unset in the config: the environment, then auto
        requested = os.environ.get("SSMVL_SSM_BACKEND") or "auto"
    requested = requested.lower()
    if requested not in BACKENDS + ("auto",):
        raise ValueError(
            f"Unknown SSM backend {requested!r}. Choose one of {('auto',) + BACKENDS} "
            "(set it with config.ssm_backend or the SSMVL_SSM_BACKEND environment variable)."
        )
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if requested == "auto":
        if on_cuda and _load_mamba_ssm() is not None:
            choice = "mamba_ssm"
        elif on_cuda and _load_triton() is not None:
            choice = "triton"
        else:
            choice = "torch"
        reasons = []
        if on_cuda and choice != "mamba_ssm":
            reasons.append(f"mamba_ssm unavailable ({_MAMBA_SSM_ERROR})")
        if on_cuda and choice == "torch":
            reasons.append(f"triton unavailable ({_TRITON_ERROR})")
        _warn_once(
            f"ssmvl: selective-scan backend '{choice}' on {torch.device(device).type if device else 'cpu'}"
            + (f"; {'; '.join(reasons)}" if reasons else "")
        )
        return choice
    if requested in ("triton", "mamba_ssm"):
        if not on_cuda:
            _warn_once(f"ssmvl: backend '{requested}' needs CUDA tensors; using 'torch' on this device.")
            return "torch"
        if requested == "mamba_ssm" and _load_mamba_ssm() is None:
            fallback = "triton" if _load_triton() is not None else "torch"
            _warn_once(f"ssmvl: mamba_ssm unavailable ({_MAMBA_SSM_ERROR}); using '{fallback}'.")
            return fallback
        if requested == "triton" and _load_triton() is None:
            _warn_once(f"ssmvl: triton unavailable ({_TRITON_ERROR}); using 'torch'.")
            return "torch"
    return requested


# ---------------------------------------------------------------------------------------------------------------------
# Input checks: clear errors naming the tensor, its shape and what was expected.
# ---------------------------------------------------------------------------------------------------------------------
def _check(cond: bool, msg):
    """msg: the message, or a function making it (call sites pass ``lambda: f"..."``: formatting shapes costs a few
    microseconds a check, which a decoding step would pay on every layer)."""
    if not cond:
        raise ValueError(msg() if callable(msg) else msg)


def _check_activation(activation):
    _check(activation in (None, "silu", "swish"), lambda: f"activation must be None or 'silu', got {activation!r}")


def _check_float(name: str, t: torch.Tensor):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), got {t.dtype}")


def _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state):
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        _check_float(name, t)
    _check(u.dim() == 3, lambda: f"u must be (batch, dim, seqlen), got shape {tuple(u.shape)}")
    batch, dim, seqlen = u.shape
    _check(delta.shape == u.shape, lambda: f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    _check(A.dim() == 2 and A.shape[0] == dim, lambda: f"A must be (dim={dim}, dstate), got shape {tuple(A.shape)}")
    dstate = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        _check(
            t.dim() in (3, 4) and t.shape[0] == batch and t.shape[-2] == dstate and t.shape[-1] == seqlen,
            lambda: f"{name} must be (batch={batch}, dstate={dstate}, seqlen={seqlen}) or (batch, groups, dstate, "
            f"seqlen), got shape {tuple(t.shape)}",
        )
        if t.dim() == 4:
            _check(dim % t.shape[1] == 0, lambda: f"{name} has {t.shape[1]} groups, which does not divide dim={dim}")
    if z is not None:
        _check_float("z", z)
        _check(z.shape == u.shape, lambda: f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            _check_float(name, t)
            _check(t.shape == (dim,), lambda: f"{name} must be (dim={dim},), got shape {tuple(t.shape)}")
    if initial_state is not None:
        _check_float("initial_state", initial_state)
        _check(
            initial_state.shape == (batch, dim, dstate),
            lambda: f"initial_state must be (batch={batch}, dim={dim}, dstate={dstate}), "
            f"got {tuple(initial_state.shape)}",
        )
    devices = {t.device for t in (u, delta, A, B, C, D, z, delta_bias, initial_state) if t is not None}
    _check(len(devices) == 1,
           lambda: f"all selective_scan inputs must be on one device, got {sorted(map(str, devices))}")


def _expand_groups(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, N, L) -> (batch, 1, N, L); (batch, G, N, L) -> (batch, dim, N, L) as a view where possible."""
    if t.dim() == 3:
        return t.unsqueeze(1)
    groups = t.shape[1]
    return t.repeat_interleave(dim // groups, dim=1) if groups > 1 else t


def _prepare_delta(delta, delta_bias, delta_softplus, acc):
    delta = delta.to(acc)
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y, u, D, z, out_dtype):
    """y: (batch, dim, L) in the accumulation dtype -> adds the D skip, the silu(z) gate, casts to out_dtype."""
    if D is not None:
        y = y + u.to(y.dtype) * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


# ---------------------------------------------------------------------------------------------------------------------
# reference: the plain sequential recurrence.
# ---------------------------------------------------------------------------------------------------------------------
def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    initial_state=None,
):
    """Sequential selective scan, one time step at a time, state in fp32 (float64 if the inputs are float64)."""
    out_dtype = u.dtype
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    batch, dim, seqlen = u.shape
    delta = _prepare_delta(delta, delta_bias, delta_softplus, acc)
    A, uf = A.to(acc), u.to(acc)
    Bx, Cx = _expand_groups(B.to(acc), dim), _expand_groups(C.to(acc), dim)  # (batch, dim|1, N, L)
    h = (
        initial_state.to(acc).clone()
        if initial_state is not None
        else u.new_zeros((batch, dim, A.shape[1]), dtype=acc)
    )
    ys = []
    for t in range(seqlen):
        dA = torch.exp(delta[:, :, t, None] * A)  # (batch, dim, N)
        dBu = delta[:, :, t, None] * Bx[..., t] * uf[:, :, t, None]  # (batch, dim, N)
        h = dA * h + dBu
        ys.append((h * Cx[..., t]).sum(-1))  # (batch, dim)
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros((batch, dim, 0))
    out = _finish(y, u, D, z, out_dtype)
    return (out, h.float()) if return_last_state else out


# ---------------------------------------------------------------------------------------------------------------------
# torch: time-major scan with a hand-written backward. On a CPU the cost of a scan is memory traffic: materialising
# (batch, dim, seqlen, dstate) tensors costs several passes over hundreds of MB, while one time step touches
# (batch, dim, dstate) floats that stay in cache. So the forward walks time with a few in-place ops a step and keeps
# only the state at chunk boundaries; the backward (a reverse scan, written out below) recomputes each chunk's states
# from its boundary. Inner layout: dt, x: (L, b, G, dg, 1); B, C: (L, b, G, 1, N); A: (G, dg, N); h: (b, G, dg, N)
# where G = groups of B/C (1 for Mamba, 4 for VMamba's cross-scan) and dg = dim // G.
#   forward:  h_t = exp(dt_t A) * h_{t-1} + x_t B_t ;  y_t = <h_t, C_t>            (x_t = dt_t * u_t)
#   backward: g_t = gy_t C_t + exp(dt_{t+1} A) g_{t+1}  (g = dL/dh_t)
#             dL/dx_t = <g_t, B_t>, dL/dB_t = sum_d x_t g_t, dL/dC_t = sum_d gy_t h_t,
#             dL/d(dt_t A) = g_t * h_{t-1} * exp(dt_t A)  -> dL/ddt_t (sum over N, times A), dL/dA (sum over b, t, times dt)
# ---------------------------------------------------------------------------------------------------------------------
_BLOCK = 64  # time steps per block: the decays/inputs of a block are computed at once, the state kept at its start


def register_cpu_scan_kernel(kernel) -> None:
    """Makes ``kernel`` (a module like ``ssmvl.kernels.cpu_scan``: ``enabled()``, ``load()``, ``error()``,
    ``ENV_VAR``, ``scan_forward`` / ``scan_backward`` / ``selective_scan``) the fused CPU scan of the torch backend.
    The installed ``ssmvl.modeling`` package registers its C++ kernel on import; these files, run as a checkpoint's
    remote code, register nothing and compute with the eager ops: remote code compiles and starts nothing."""
    global _CPU_KERNEL
    _CPU_KERNEL = kernel


def _cpu_scan_kernel(t: torch.Tensor, dtype: Optional[torch.dtype] = None):
    """The registered fused CPU scan (see register_cpu_scan_kernel) for a scan of ``t`` computed in ``dtype`` (t's by
    default), or None for the eager path: none registered, env ``SSMVL_CPU_SCAN_KERNEL`` "0" / "off", not a CPU
    tensor, not float32 / float64, or a kernel that cannot be built (compiled on first use; the reason is logged
    once)."""
    if _CPU_KERNEL is None or t.device.type != "cpu" or (dtype or t.dtype) not in (torch.float32, torch.float64) \
            or t.numel() == 0 or not _CPU_KERNEL.enabled():
        return None
    if _CPU_KERNEL.load() is None:
        _warn_once(f"ssmvl: CPU scan kernel could not be built ({_CPU_KERNEL.error()[-600:]}); using the eager torch "
                   f"scan (set {_CPU_KERNEL.ENV_VAR}=0 to skip the attempt).")
        return None
    return _CPU_KERNEL


_CPU_KERNEL = None  # the fused CPU scan module registered by the installed package (ssmvl.kernels.cpu_scan), or None


def _block_inputs(dt, x, A, B, t0, t1, bufs):
    """dA = exp(dt A), dBx = x B for steps t0..t1, written into reused buffers (no allocation per block)."""
    T = t1 - t0
    dA, dBx = bufs[0][:T], bufs[1][:T]  # (T, b, G, dg, N)
    torch.mul(dt[t0:t1], A, out=dA).exp_()
    torch.mul(x[t0:t1], B[t0:t1], out=dBx)
    return dA, dBx


def _buffers(dt, A, n=2):
    shape = (min(_BLOCK, dt.shape[0]),) + tuple(dt.shape[1:4]) + tuple(A.shape[-1:])
    return [dt.new_empty(shape) for _ in range(n)]


def _time_major_scan_forward(dt, x, A, B, C, h0):
    """h_t = dA_t * h_{t-1} + dBx_t with dA_t = exp(dt_t A), dBx_t = x_t B_t; y_t = <h_t, C_t>.
    Per block of _BLOCK steps: dA, dBx for the whole block in two vectorised ops, then ONE in-place op per step
    (``addcmul``), then y for the whole block in one batched matmul. Returns ys (L, b, G, dg, 1), the last state
    (b, G, dg, N) and the states at the block starts (blocks, b, G, dg, N), which the backward starts from.
    On CPU float32 / float64 tensors the registered C++ kernel (see register_cpu_scan_kernel) computes the same."""
    kernel = _cpu_scan_kernel(dt)
    if kernel is not None:
        return kernel.scan_forward(dt, x, A, B, C, h0, _BLOCK)
    L = dt.shape[0]
    state = tuple(dt.shape[1:4]) + tuple(A.shape[-1:])
    n_blocks = (L + _BLOCK - 1) // _BLOCK
    checkpoints = dt.new_empty((n_blocks + 1,) + state)  # the state at each block start, then the last state
    if h0 is not None:
        checkpoints[0].copy_(h0)
    else:
        checkpoints[0].zero_()
    ys = dt.new_empty(dt.shape)
    bufs = _buffers(dt, A)
    for c, t0 in enumerate(range(0, L, _BLOCK)):
        t1 = min(L, t0 + _BLOCK)
        dA, H = _block_inputs(dt, x, A, B, t0, t1, bufs)
        Hs, dAs = H.unbind(0), dA.unbind(0)  # the steps' views, made in one call
        Hs[0].addcmul_(dAs[0], checkpoints[c])  # H[j] holds dBx_j, becomes h_j in place
        for j in range(1, t1 - t0):
            Hs[j].addcmul_(dAs[j], Hs[j - 1])
        torch.matmul(H, C[t0:t1].transpose(-1, -2), out=ys[t0:t1])  # (T, b, G, dg, 1)
        checkpoints[c + 1].copy_(Hs[-1])
    return ys, checkpoints[-1].clone(), checkpoints[:-1]


def _time_major_scan_backward(gy, g_last, dt, x, A, B, C, checkpoints):
    """The reverse scan: g_t = gy_t C_t + dA_{t+1} g_{t+1}, one op per step, every parameter gradient as a block-wide
    product; each block's states recomputed from its checkpoint. Returns the gradients of dt, x, A, B, C, h0.
    (The fused C++ kernel where the forward's conditions hold.)"""
    kernel = _cpu_scan_kernel(dt)
    if kernel is not None:
        return kernel.scan_backward(gy, g_last, dt, x, A, B, C, checkpoints, _BLOCK)
    L = dt.shape[0]
    gy = gy.contiguous()
    g = g_last.clone()
    gdt, gx = torch.empty_like(dt), torch.empty_like(x)
    gB, gC = torch.empty_like(B), torch.empty_like(C)
    gA = torch.zeros_like(A)
    n_blocks = len(checkpoints)
    bufs = _buffers(dt, A, n=4)
    for c in range(n_blocks - 1, -1, -1):
        t0, t1 = c * _BLOCK, min(L, (c + 1) * _BLOCK)
        # recompute the block's states: H[j] = h_{t0+j}
        dA, H = _block_inputs(dt, x, A, B, t0, t1, bufs)
        Hs, dAs = H.unbind(0), dA.unbind(0)
        Hs[0].addcmul_(dAs[0], checkpoints[c])
        for j in range(1, t1 - t0):
            Hs[j].addcmul_(dAs[j], Hs[j - 1])
        T = t1 - t0
        scratch = bufs[2][:T]
        # reverse recurrence: G[j] = gy_j C_j + dA_{j+1} G[j+1]  (dA of the next block folded into g)
        G = torch.mul(gy[t0:t1], C[t0:t1], out=bufs[3][:T])  # (T, b, G, dg, N)
        G[-1].add_(g)
        Gs = G.unbind(0)
        for j in range(t1 - t0 - 2, -1, -1):
            Gs[j].addcmul_(dAs[j + 1], Gs[j + 1])
        torch.matmul(gy[t0:t1].transpose(-1, -2), H, out=gC[t0:t1])  # sum_d gy h
        torch.matmul(G, B[t0:t1].transpose(-1, -2), out=gx[t0:t1])  # <g, B>
        torch.matmul(x[t0:t1].transpose(-1, -2), G, out=gB[t0:t1])  # sum_d x g
        g = G[0] * dA[0]  # dL/dh_{t0-1}, handed to the previous block
        # dL/d(dt A) = G h_{t-1} dA, in G's memory; h_{t-1} is H shifted by one step (no copy), the block's
        # checkpoint before its first step
        G[1:].mul_(H[:-1])
        G[0].mul_(checkpoints[c])
        gdA = G.mul_(dA)
        torch.sum(torch.mul(gdA, A, out=scratch), -1, keepdim=True, out=gdt[t0:t1])
        gA += torch.mul(gdA, dt[t0:t1], out=scratch).sum(dim=(0, 1))
    return gdt, gx, gA, gB, gC, g


class _TimeMajorScan(torch.autograd.Function):
    """The time-major scan with its hand-written backward, for eager use where the custom op below is unavailable."""

    @staticmethod
    def forward(ctx, dt, x, A, B, C, h0):
        ys, h, checkpoints = _time_major_scan_forward(dt, x, A, B, C, h0)
        ctx.save_for_backward(dt, x, A, B, C, checkpoints)
        ctx.has_h0 = h0 is not None
        return ys, h

    @staticmethod
    def backward(ctx, gy, g_last):
        dt, x, A, B, C, checkpoints = ctx.saved_tensors
        gy = torch.zeros_like(dt) if gy is None else gy
        g_last = dt.new_zeros(tuple(dt.shape[1:4]) + tuple(A.shape[-1:])) if g_last is None else g_last
        *grads, gh0 = _time_major_scan_backward(gy, g_last, dt, x, A, B, C, checkpoints)
        return (*grads, gh0 if ctx.has_h0 else None)


# torch.compile sees the time-major scan as one opaque operator (torch.library.custom_op, with a shape-only "fake"
# twin and the backward above as its autograd formula): a compiled forward calls it inside the graph, without a graph
# break, and fuses the element-wise work around it. Every copy of this file registers its own ops: a checkpoint loaded
# with trust_remote_code brings its own ssm_ops module (the installed ssmvl may sit beside it), so the op names carry
# the module's name. Where torch has no custom_op (< 2.4) or the registration fails, the autograd Function is used
# under torch.compiler.disable (one graph break per scan).
_SCAN_OP = None


def _register_scan_op():
    library = getattr(torch, "library", None)
    if library is None or not hasattr(library, "custom_op") or not hasattr(library, "register_fake"):
        return None
    name = "ssmvl::time_major_scan_" + "".join(c if c.isalnum() else "_" for c in __name__)
    namespace, op = name.split("::")
    existing = getattr(getattr(torch.ops, namespace), op, None) if hasattr(torch.ops, namespace) else None
    if existing is not None:  # this module was imported again (importlib.reload): the op is already there
        return existing.default
    tensors6 = "Tensor dt, Tensor x, Tensor A, Tensor B, Tensor C"

    @library.custom_op(name, mutates_args=(), schema=f"({tensors6}, Tensor? h0) -> (Tensor, Tensor, Tensor)")
    def scan_op(dt, x, A, B, C, h0):
        return _time_major_scan_forward(dt, x, A, B, C, h0)

    @scan_op.register_fake
    def _(dt, x, A, B, C, h0):
        blocks = (dt.shape[0] + _BLOCK - 1) // _BLOCK
        state = tuple(dt.shape[1:4]) + tuple(A.shape[-1:])
        return dt.new_empty(dt.shape), dt.new_empty(state), dt.new_empty((blocks,) + state)

    @library.custom_op(name + "_backward", mutates_args=(),
                       schema=f"(Tensor gy, Tensor g_last, {tensors6}, Tensor checkpoints) "
                              "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
    def scan_backward_op(gy, g_last, dt, x, A, B, C, checkpoints):
        return _time_major_scan_backward(gy, g_last, dt, x, A, B, C, checkpoints)

    @scan_backward_op.register_fake
    def _(gy, g_last, dt, x, A, B, C, checkpoints):
        return (torch.empty_like(dt), torch.empty_like(x), torch.empty_like(A), torch.empty_like(B),
                torch.empty_like(C), torch.empty_like(g_last))

    def setup_context(ctx, inputs, output):
        dt, x, A, B, C, h0 = inputs
        ctx.save_for_backward(dt, x, A, B, C, output[2])
        ctx.has_h0 = h0 is not None

    def backward(ctx, gy, g_last, _g_checkpoints):
        dt, x, A, B, C, checkpoints = ctx.saved_tensors
        gy = torch.zeros_like(dt) if gy is None else gy
        g_last = torch.zeros_like(checkpoints[0]) if g_last is None else g_last
        *grads, gh0 = scan_backward_op(gy, g_last, dt, x, A, B, C, checkpoints)
        return (*grads, gh0 if ctx.has_h0 else None)

    scan_op.register_autograd(backward, setup_context=setup_context)
    return scan_op


try:
    _SCAN_OP = _register_scan_op()
except Exception as err:  # an unexpected torch: the eager Function path still works
    logger.info(f"ssmvl: time-major scan not registered as a torch custom op ({type(err).__name__}: {err})")


@torch.compiler.disable
def _time_major_scan_eager(dt, x, A, B, C, h0):
    return _TimeMajorScan.apply(dt, x, A, B, C, h0)


def _time_major_scan(dt, x, A, B, C, h0):
    """(ys, last state) of the time-major scan: the custom op when registered, else the autograd Function."""
    if _SCAN_OP is not None:
        ys, h, _ = _SCAN_OP(dt, x, A, B, C, h0)
        return ys, h
    return _time_major_scan_eager(dt, x, A, B, C, h0)


def _groups(t: torch.Tensor) -> int:
    return 1 if t.dim() == 3 else t.shape[1]


def selective_scan_torch(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    initial_state=None,
):
    """Same function as :func:`selective_scan_ref`, computed time-major with a hand-written backward. On CPU float32
    / float64 (bf16 / fp16 inputs computed in float32) outside torch.compile, the fused C++ kernel does all of it in
    one pass each way (:func:`_cpu_scan_kernel`); torch.compile traces the time-major custom op below, which runs
    the same kernel's scan."""
    out_dtype = u.dtype
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    batch, dim, seqlen = u.shape
    N = A.shape[1]
    if B.dim() == 4 and C.dim() == 4 and B.shape[1] != C.shape[1]:
        B, C = _expand_groups(B, dim), _expand_groups(C, dim)
    G = max(_groups(B), _groups(C))
    dg = dim // G

    def bc_time_major(t):  # (b, N, L) | (b, g, N, L) -> (L, b, G, 1, N)
        t = t.to(acc).unsqueeze(1) if t.dim() == 3 else t.to(acc)
        return t.permute(3, 0, 1, 2).expand(seqlen, batch, G, N).unsqueeze(3).contiguous()

    h0 = None if initial_state is None else initial_state.to(acc).reshape(batch, G, dg, N)
    kernel = None if _compiling() else _cpu_scan_kernel(u, acc)
    if kernel is not None:  # the fused C++ scan: every step of the function in one pass, u / delta / z in place
        opt = (lambda t: None if t is None else t.to(acc))
        out, h_last = kernel.selective_scan(
            u.to(acc), delta.to(acc), A.to(acc).reshape(G, dg, N), bc_time_major(B).squeeze(3),
            bc_time_major(C).squeeze(3), opt(D), opt(z), opt(delta_bias), delta_softplus, h0, _BLOCK,
        )
        out = out.to(out_dtype)
        return (out, h_last.reshape(batch, dim, N).float()) if return_last_state else out

    def time_major(t):  # (b, d, L) -> (L, b, G, dg, 1)
        return t.to(acc).permute(2, 0, 1).reshape(seqlen, batch, G, dg, 1).contiguous()

    # delta's bias and softplus, and x = dt * u, computed time-major: every element-wise op (and its gradient) then
    # sees one memory layout (under torch.compile's aot_eager, softplus_backward of mixed layouts gets other strides
    # than its meta function says, and a later view fails)
    dt = time_major(delta)  # (L, b, G, dg, 1)
    if delta_bias is not None:
        dt = dt + delta_bias.to(acc).reshape(G, dg, 1)
    if delta_softplus:
        dt = F.softplus(dt)
    u_tm = time_major(u)
    x = dt * u_tm
    ys, h_last = _time_major_scan(
        dt, x, A.to(acc).reshape(G, dg, N), bc_time_major(B), bc_time_major(C), h0
    )
    # D skip and gate on (b, d, L) views of the time-major ys and u, where (in a mixer) z already is too: no
    # element-wise op of mixed layouts; the output keeps the time-major strides (a mixer transposes it back to
    # (b, L, d) for free)
    def channel_view(t):  # time-major (L, b, ...) -> a (b, d, L) view
        return t.reshape(seqlen, batch, dim).permute(1, 2, 0)

    out = _finish(channel_view(ys), channel_view(u_tm), D, z, out_dtype)
    return (out, h_last.reshape(batch, dim, N).float()) if return_last_state else out


# ---------------------------------------------------------------------------------------------------------------------
# Dispatch.
# ---------------------------------------------------------------------------------------------------------------------
def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
    reverse: bool = False,
    a_log: bool = False,
    mean_into: Optional[torch.Tensor] = None,
):
    """Mamba-1 selective scan. Returns ``y`` (batch, dim, seqlen) in u's dtype, and the last state
    (batch, dim, dstate) in float32 when ``return_last_state``. See the module docstring for shapes.
    ``reverse``: the scan runs from the last step to the first (h_t from h_{t+1}; Vim's backward branch), inputs and
    y in their given order: the triton backend reads the steps backwards in place when no gradient is needed; the
    others, and training, scan flipped copies (``selective_scan(flip(...)).flip(-1)``). ``a_log``: A holds A_log
    (the mixer's parameter) and the scan uses A = -exp(A_log.float()): the triton inference kernels take the
    exponential themselves, so a host-bound prefill launches nothing for it. ``mean_into`` (no gradients through
    it): a tensor of y's shape and dtype, e.g. a bidirectional mixer's other direction: the result is
    (mean_into + y) / 2, written into mean_into, which is returned as y (the triton lane kernel averages as it stores y:
    no extra pass over the two outputs)."""
    _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    name = resolve_backend(backend, u.device)
    if mean_into is not None:
        _check_mean_into(mean_into, u)
        if name == "triton" and _load_triton().reverse_in_place(u, delta, B, C, z, D, delta_bias):
            return _load_triton().selective_scan_triton(
                u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                return_last_state=return_last_state, initial_state=initial_state, reverse=reverse, a_log=a_log,
                mean_into=mean_into)
        out = selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                             return_last_state=return_last_state, initial_state=initial_state, backend=name,
                             reverse=reverse, a_log=a_log)
        mean_into.lerp_(out[0] if return_last_state else out, 0.5)  # in fp32, rounded once
        return (mean_into, out[1]) if return_last_state else mean_into
    if reverse and not (name == "triton" and _load_triton().reverse_in_place(u, delta, B, C, z, D, delta_bias)):
        flip = (lambda t: None if t is None else t.flip(-1))
        out = selective_scan(flip(u), flip(delta), A, flip(B), flip(C), D=D, z=flip(z), delta_bias=delta_bias,
                             delta_softplus=delta_softplus, return_last_state=return_last_state,
                             initial_state=initial_state, backend=name, a_log=a_log)
        return (out[0].flip(-1), out[1]) if return_last_state else out.flip(-1)
    kwargs = dict(
        D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, return_last_state=return_last_state
    )
    if a_log and name != "triton":
        A = -torch.exp(A.float())
    if name == "reference":
        return selective_scan_ref(u, delta, A, B, C, initial_state=initial_state, **kwargs)
    if name == "torch":
        return selective_scan_torch(u, delta, A, B, C, initial_state=initial_state, **kwargs)
    if name == "triton":
        return _load_triton().selective_scan_triton(u, delta, A, B, C, initial_state=initial_state, reverse=reverse,
                                                    a_log=a_log, **kwargs)
    # mamba_ssm: its kernel has no initial state and wants fp32 A and contiguous inputs
    if initial_state is not None or u.dtype == torch.float64:
        other = "triton" if u.dtype != torch.float64 and _load_triton() is not None else "torch"
        _warn_once(f"ssmvl: mamba_ssm scan has no initial_state / float64 support; using '{other}' for it.")
        return selective_scan(u, delta, A, B, C, initial_state=initial_state, backend=other, **kwargs)
    fn = _load_mamba_ssm()["selective_scan_fn"]
    out = fn(
        u.contiguous(), delta.contiguous(), A.float().contiguous(), B.contiguous(), C.contiguous(),
        None if D is None else D.float(), None if z is None else z.contiguous(),
        None if delta_bias is None else delta_bias.float(), delta_softplus, return_last_state,
    )
    if return_last_state:
        return out[0], out[1].float()
    return out


def _check_mean_into(mean_into: torch.Tensor, u: torch.Tensor) -> None:
    """selective_scan's ``mean_into`` must be a tensor like y (u's shape, dtype and device) that autograd does not
    track: it is written in place."""
    if not isinstance(mean_into, torch.Tensor) or mean_into.shape != u.shape or mean_into.dtype != u.dtype \
            or mean_into.device != u.device:
        got = (tuple(mean_into.shape), mean_into.dtype, str(mean_into.device)) if isinstance(mean_into, torch.Tensor) \
            else type(mean_into).__name__
        raise ValueError(f"selective_scan: mean_into must be a tensor of y's shape, dtype and device "
                         f"({tuple(u.shape)}, {u.dtype}, {u.device}), got {got}.")
    if torch.is_grad_enabled() and mean_into.requires_grad:
        raise ValueError("selective_scan: mean_into is written in place, so it cannot take part in autograd; under "
                         "gradients average the two outputs out of place (torch.lerp(y, y_other, 0.5)).")


def scan_reads_channel_major(batch: int, dim: int, groups: int, dstate: int, seqlen: int, device, backend=None,
                             need_grad: bool = False) -> bool:
    """Whether ``selective_scan`` of this size reads its per-channel inputs (delta, z) best channel-major (unit stride
    along the sequence), so a mixer should produce them that way: mamba_ssm's kernel (it copies anything else) and
    the triton backend where its time-tiled kernels run (they would copy time-major views). The torch and reference
    backends, and the triton lane kernels, read time-major views (a linear layer's natural output) best."""
    name = resolve_backend(backend, device)
    if name == "mamba_ssm":
        return True
    if name != "triton":
        return False
    return _load_triton().reads_channel_major(batch, dim, groups, dstate, seqlen, need_grad)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: Optional[str] = "silu",
    backend: Optional[str] = None,
    initial_states: Optional[torch.Tensor] = None,
    reverse: bool = False,
) -> torch.Tensor:
    """Causal depthwise conv1d. x: (batch, dim, seqlen); weight: (dim, width) or (dim, 1, width); bias: (dim,).
    ``initial_states`` (batch, dim, width - 1): the inputs before x, oldest first (continuing a cached sequence).
    ``reverse``: the conv of the time-reversed sequence, returned in x's order (``conv(x.flip(-1)).flip(-1)``; Vim's
    backward branch). The triton backend does both in its one kernel and returns y stored as (dim, batch, seqlen)."""
    _check_float("x", x)
    _check(x.dim() == 3, lambda: f"x must be (batch, dim, seqlen), got shape {tuple(x.shape)}")
    if weight.dim() == 3:
        weight = weight.squeeze(1)
    _check(weight.dim() == 2 and weight.shape[0] == x.shape[1],
           lambda: f"conv weight must be (dim={x.shape[1]}, width), got shape {tuple(weight.shape)}")
    _check_activation(activation)
    width = weight.shape[1]
    if initial_states is not None:
        _check(not reverse, "causal_conv1d: initial_states continue a causal sequence; reverse=True takes none")
        _check(tuple(initial_states.shape) == (x.shape[0], x.shape[1], width - 1),
               lambda: f"initial_states must be (batch, dim, width - 1)={(x.shape[0], x.shape[1], width - 1)}, "
               f"got {tuple(initial_states.shape)}")
    name = resolve_backend(backend, x.device)
    # causal-conv1d's CUDA kernels take widths 2..4 only (STORM's video mixers use wider ones): others use F.conv1d
    if (name == "mamba_ssm" and "causal_conv1d_fn" in _load_mamba_ssm() and x.dtype != torch.float64
            and 2 <= width <= 4 and initial_states is None and not reverse):
        return _load_mamba_ssm()["causal_conv1d_fn"](x, weight, bias, activation=activation)
    if name == "triton" and x.dtype != torch.float64 and hasattr(_load_triton(), "causal_conv1d_triton"):
        return _load_triton().causal_conv1d_triton(x, weight, bias, activation=activation,
                                                   initial_states=initial_states, reverse=reverse)
    seqlen = x.shape[-1]
    if reverse:
        x = x.flip(-1)
    if initial_states is not None:
        x = torch.cat([initial_states.to(x.dtype), x], dim=-1)
    y = F.conv1d(x, weight.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype),
                 padding=width - 1, groups=x.shape[1])[..., x.shape[-1] - seqlen:x.shape[-1]]
    y = F.silu(y) if activation is not None else y
    return y.flip(-1) if reverse else y


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: Optional[str] = "silu",
    backend: Optional[str] = None,
) -> torch.Tensor:
    """One decoding step of the causal conv. x: (batch, dim); conv_state: (batch, dim, width), updated in place
    (shifted left, x appended). Returns (batch, dim)."""
    _check(x.dim() == 2, lambda: f"x must be (batch, dim) for a single step, got shape {tuple(x.shape)}")
    if weight.dim() == 3:
        weight = weight.squeeze(1)
    _check(conv_state.shape == (x.shape[0], x.shape[1], weight.shape[1]),
           lambda: f"conv_state must be (batch, dim, width)={(x.shape[0], x.shape[1], weight.shape[1])}, "
           f"got {tuple(conv_state.shape)}")
    _check_activation(activation)
    name = resolve_backend(backend, x.device)
    if name == "mamba_ssm" and "causal_conv1d_update" in _load_mamba_ssm() and 2 <= weight.shape[1] <= 4:
        return _load_mamba_ssm()["causal_conv1d_update"](x, conv_state, weight, bias, activation)
    if name == "triton" and hasattr(_load_triton(), "causal_conv1d_update_triton") and x.dtype != torch.float64:
        return _load_triton().causal_conv1d_update_triton(x, conv_state, weight, bias, activation)
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x.to(conv_state.dtype)
    y = (conv_state.to(weight.dtype) * weight).sum(-1)
    if bias is not None:
        y = y + bias
    y = y.to(x.dtype)
    return F.silu(y) if activation is not None else y


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    backend: Optional[str] = None,
    a_log: bool = False,
    dt_weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One decoding step of the scan. state: (batch, dim, dstate) float32 (bf16 / fp16: computed in float32, stored
    rounded), updated in place;
    x, dt, z: (batch, dim); B, C: (batch, dstate). ``a_log``: A holds A_log and the step uses A = -exp(A_log) (the
    Triton kernel computes it in place of two extra kernels a step). ``dt_weight`` (dim, R): dt is (batch, R), the
    input of a Mamba layer's dt_proj, and the step size is ``F.linear(dt, dt_weight, dt_bias)`` (the Triton kernel
    computes it itself: one launch fewer a step). Returns y: (batch, dim) in x's dtype."""
    name = resolve_backend(backend, x.device)
    triton_step = name == "triton" and hasattr(_load_triton(), "selective_state_update_triton")
    if dt_weight is not None:
        _check(dt_weight.dim() == 2 and dt_weight.shape[0] == x.shape[-1] and dt.dim() == 2
               and dt.shape == (x.shape[0], dt_weight.shape[1]),
               lambda: f"with dt_weight (dim, rank), dt must be (batch, rank): got dt_weight {tuple(dt_weight.shape)}, "
               f"dt {tuple(dt.shape)}, x {tuple(x.shape)}")
        if not triton_step:
            dt, dt_bias, dt_weight = F.linear(dt, dt_weight, dt_bias), None, None
    _check(x.dim() == 2 and (dt_weight is not None or dt.shape == x.shape),
           lambda: f"x and dt must be (batch, dim), got {tuple(x.shape)}, {tuple(dt.shape)}")
    _check(state.shape == (x.shape[0], x.shape[1], A.shape[1]),
           lambda: f"state must be (batch, dim, dstate)={(x.shape[0], x.shape[1], A.shape[1])}, "
           f"got {tuple(state.shape)}")
    _check(B.shape == (x.shape[0], A.shape[1]) and C.shape == B.shape,
           lambda: f"B and C must be (batch, dstate)={(x.shape[0], A.shape[1])}, "
           f"got {tuple(B.shape)}, {tuple(C.shape)}")
    if triton_step:
        return _load_triton().selective_state_update_triton(
            state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, a_log=a_log,
            dt_weight=dt_weight,
        )
    if a_log:
        A = -torch.exp(A.float())
    if name == "mamba_ssm" and "selective_state_update" in _load_mamba_ssm() and state.dtype in _FLOAT_DTYPES[:3]:
        # mamba_ssm's Triton step kernel reads dt_bias unconditionally (mamba_ssm 2.3 ops/triton/selective_state_update.py)
        if dt_bias is None:
            dt_bias = torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
        return _load_mamba_ssm()["selective_state_update"](
            state, x, dt, A.float(), B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus
        )
    acc = torch.float32 if state.dtype in (torch.float16, torch.bfloat16) else state.dtype  # a rounded cache state
    dt = dt.to(acc) if dt_bias is None else dt.to(acc) + dt_bias.to(acc)
    if dt_softplus:
        dt = F.softplus(dt)
    dA = torch.exp(dt[..., None] * A.to(acc))  # (batch, dim, N)
    dBx = dt[..., None] * B.to(acc)[:, None, :] * x.to(acc)[..., None]
    h = dA * state.to(acc) + dBx
    state.copy_(h)
    y = (h * C.to(acc)[:, None, :]).sum(-1)  # (batch, dim), from the unrounded state
    if D is not None:
        y = y + x.to(acc) * D.to(acc)
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(x.dtype)


def _norm_kernel_applies(x: torch.Tensor, weight: torch.Tensor, *others: torch.Tensor) -> bool:
    tensors = (x, weight) + others
    return (x.is_cuda and all(t.dtype in _FLOAT_DTYPES[:3] for t in tensors) and x.numel() > 0
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)) and not _compiling()
            and hasattr(_load_triton(), "rms_norm_triton") and x.shape[-1] <= _load_triton().RMS_NORM_MAX_COLS
            and weight.shape == x.shape[-1:] and all(t.shape == x.shape for t in others))


def add_rms_norm(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float,
                 cast_input: bool = False, out_dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(r, rms_norm(r, weight, eps, cast_input))`` with ``r = residual + x``: a block's residual sum and the next
    norm, in one Triton kernel on a GPU outside autograd (as mamba_ssm's fused add + norm). ``out_dtype``: the norm
    rounded to it (e.g. autocast's dtype, which the next linear layer casts it to anyway: no cast kernel then)."""
    if _norm_kernel_applies(x, weight, residual):
        return _load_triton().add_rms_norm_triton(residual, x, weight, eps, cast_input=cast_input,
                                                  out_dtype=out_dtype)
    residual = residual + x
    y = rms_norm(residual, weight, eps, cast_input=cast_input)
    return residual, (y if out_dtype is None else y.to(out_dtype))


def fused_kernels(backend: Optional[str], *tensors: torch.Tensor, autograd: bool = False):
    """The Triton kernel module (ssm_triton) where a model's fused inference kernels may replace its torch ops: the
    backend resolves to a GPU tier ("triton" / "mamba_ssm"; the "torch" / "reference" tiers stay plain torch, the
    references the tests compare against), the tensors are CUDA floats that need no gradient (``autograd``: or the
    caller runs differentiable kernels), and torch.compile is not tracing. Else None."""
    if not tensors or not tensors[0].is_cuda or _compiling():
        return None
    wants_grad = torch.is_grad_enabled() and not autograd
    if any(t.dtype not in _FLOAT_DTYPES[:3] or (wants_grad and t.requires_grad) for t in tensors):
        return None
    if resolve_backend(backend, tensors[0].device) not in ("triton", "mamba_ssm"):
        return None
    return _load_triton()


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], eps: float,
               residual: Optional[torch.Tensor] = None, out_dtype: Optional[torch.dtype] = None):
    """``F.layer_norm`` of the last dimension (with ``residual``: ``(r, layer_norm(r))`` for r = residual + x, a
    block's residual sum and its next norm), rounded to ``out_dtype`` if given (e.g. autocast's dtype, which the next
    linear layer casts to anyway); one Triton kernel on a GPU outside autograd and torch.compile."""
    others = () if residual is None else (residual,)
    if _norm_kernel_applies(x, weight, *others) and (bias is None or (
            bias.dtype in _FLOAT_DTYPES[:3] and not (torch.is_grad_enabled() and bias.requires_grad))):
        return _load_triton().layer_norm_triton(x, weight, bias, eps, residual=residual, out_dtype=out_dtype)
    if residual is not None:
        x = residual = residual + x
    y = F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    y = y if out_dtype is None else y.to(out_dtype)
    return y if residual is None else (residual, y)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, cast_input: bool = False) -> torch.Tensor:
    """RMSNorm of the last dimension, computed in float32: ``weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)``
    (transformers' MambaRMSNorm / LlamaRMSNorm); ``cast_input``: of ``x.to(weight.dtype)``. On a GPU, outside autograd
    and torch.compile, one Triton kernel instead of about eight element-wise ones (a decoding step runs one a layer)."""
    if _norm_kernel_applies(x, weight):
        return _load_triton().rms_norm_triton(x, weight, eps, cast_input=cast_input)
    if cast_input:
        x = x.to(weight.dtype)
    input_dtype = x.dtype
    x = x.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps)).to(input_dtype)
