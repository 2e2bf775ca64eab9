"""Triton kernels for the Mamba-1 selective scan (forward and backward) and the single-step decoding update.

Same functions as ``selective_scan_ref`` / ``selective_state_update`` in ``ssm_ops.py`` (shapes and semantics are
described there); this module imports only torch and triton, so importing it raises ImportError when triton is
missing and the dispatch in ``ssm_ops`` falls back to the torch backend.

Kernel design (one program per (batch, group of B/C, block of BLOCK_D channels)):
  * the state h (BLOCK_D, N) lives in registers in fp32; the program walks the sequence in chunks of BLOCK_L
    steps, reading each element of u, delta, z and each (N, BLOCK_L) tile of B and C once (coalesced along L),
    and writing y once, with softplus(delta + delta_bias), the D skip and the silu(z) gate fused;
  * inside a chunk the linear recurrence h_t = a_t h_{t-1} + b_t (a_t = exp(dt_t A), b_t = dt_t u_t B_t) is a
    ``tl.associative_scan`` over the (BLOCK_D, N, BLOCK_L) tile, and the chunk's carry-in h is added as
    h_t = b_scan_t + a_scan_t * h_in;
  * when gradients are needed the forward also writes the state at each chunk start, (batch, dim, nchunks, N) fp32.
Backward (same grid, chunks walked in reverse): each chunk's states are recomputed from the saved chunk-start
state, then the adjoint g_t = dL/dh_t runs the reverse recurrence g_t = gy_t C_t + exp(dt_{t+1} A) g_{t+1}
(a reverse associative scan, with the next chunk's g carried in), and
  dL/dx_t = <g_t, B_t> (x = dt u),  dL/dB_t = sum_d x_t g_t,  dL/dC_t = sum_d gy_t h_t,
  dL/d(dt_t A) = g_t * (h_t - b_t)   (= g_t * exp(dt_t A) h_{t-1}) -> dL/ddt_t (sum over N, times A), dL/dA.
dB/dC are summed over the program's channels and then added across channel blocks with fp32 atomics; dA, dD and
d(delta_bias) are written per (batch, channel) and summed over the batch with torch.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


__all__ = ["selective_scan_triton", "selective_state_update_triton"]

_LOG2E = 1.4426950408889634
_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)

# Block sizes: (BLOCK_D, BLOCK_L, num_warps). The backward keeps ~6 (BLOCK_D, N, BLOCK_L) fp32 tiles live.
# Defaults from a sweep on an H100 (benchmarks/bench_scan_gpu.py --sweep; B=8, D=1536, N=16, L=4096, bf16).
# time_major: forward tiles laid out (BLOCK_D, BLOCK_L, N) instead of (BLOCK_D, N, BLOCK_L).
FWD_CONFIG = {"BLOCK_D": 2, "BLOCK_L": 128, "num_warps": 4, "time_major": True}
BWD_CONFIG = {"BLOCK_D": 4, "BLOCK_L": 32, "num_warps": 2}


# ---------------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------------
@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) applied first, then (a2, b2):  h -> a2 * (a1 * h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    y_ptr, hlast_ptr, states_ptr,
    dim, L, dg, G, N, nchunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, SAVE_STATES: tl.constexpr, STORE_LAST: tl.constexpr,
    BLOCK_D: tl.constexpr, N_P2: tl.constexpr, BLOCK_L: tl.constexpr, TIME_MAJOR: tl.constexpr,
):
    pid_bg = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = pid_bg // G
    g = pid_bg % G
    offs = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs < dg
    d = g * dg + offs
    n = tl.arange(0, N_P2)
    mask_n = n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    base_x = (b.to(tl.int64) * dim + d) * L  # (BLOCK_D,)
    base_bc = (pid_bg.to(tl.int64) * N + n) * L  # (N_P2,)
    state_off = (b.to(tl.int64) * dim + d[:, None]) * N + n[None, :]  # (BLOCK_D, N_P2)
    if HAS_H0:
        h = tl.load(h0_ptr + state_off, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK_D, N_P2), dtype=tl.float32)
    tl_idx = tl.arange(0, BLOCK_L)
    for c in range(nchunks):
        t = c * BLOCK_L + tl_idx
        mask_t = t < L
        m2 = mask_d[:, None] & mask_t[None, :]
        x_off = base_x[:, None] + t[None, :]
        u = tl.load(u_ptr + x_off, mask=m2, other=0.0).to(tl.float32)
        dt = tl.load(dl_ptr + x_off, mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(m2, dt, 0.0)
        bc_off = base_bc[:, None] + t[None, :]
        mnt = mask_n[:, None] & mask_t[None, :]
        Bt = tl.load(B_ptr + bc_off, mask=mnt, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + bc_off, mask=mnt, other=0.0).to(tl.float32)
        if TIME_MAJOR:  # tiles (BLOCK_D, BLOCK_L, N): N is the fastest axis, the scan runs mostly inside threads
            BtT = tl.trans(Bt)
            CtT = tl.trans(Ct)
            a = tl.exp2(dt[:, :, None] * A2[:, None, :])
            bb = (dt * u)[:, :, None] * BtT[None, :, :]
            a_s, b_s = tl.associative_scan((a, bb), axis=1, combine_fn=_combine)
            hs = b_s + a_s * h[:, None, :]
            y = tl.sum(hs * CtT[None, :, :], axis=2)
            h_next = tl.sum(tl.where((tl_idx == BLOCK_L - 1)[None, :, None], hs, 0.0), axis=1)
        else:  # tiles (BLOCK_D, N, BLOCK_L)
            a = tl.exp2(dt[:, None, :] * A2[:, :, None])
            bb = (dt * u)[:, None, :] * Bt[None, :, :]
            a_s, b_s = tl.associative_scan((a, bb), axis=2, combine_fn=_combine)
            hs = b_s + a_s * h[:, :, None]
            y = tl.sum(hs * Ct[None, :, :], axis=1)  # (BLOCK_D, BLOCK_L)
            # padded steps have a = 1, b = 0, so the last column is the state after step min(L, (c+1) BLOCK_L) - 1
            h_next = tl.sum(tl.where((tl_idx == BLOCK_L - 1)[None, None, :], hs, 0.0), axis=2)
        if HAS_D:
            y = y + Dv[:, None] * u
        if HAS_Z:
            zz = tl.load(z_ptr + x_off, mask=m2, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(y_ptr + x_off, y.to(y_ptr.dtype.element_ty), mask=m2)
        if SAVE_STATES:
            s_off = ((b.to(tl.int64) * dim + d[:, None]) * nchunks + c) * N + n[None, :]
            tl.store(states_ptr + s_off, h, mask=mask_dn)
        h = h_next
    if STORE_LAST:
        tl.store(hlast_ptr + state_off, h, mask=mask_dn)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, gy_ptr, ghl_ptr,
    gu_ptr, gdl_ptr, gz_ptr, gA_ptr, gB_ptr, gC_ptr, gD_ptr, gbias_ptr, gh0_ptr,
    dim, L, dg, G, N, nchunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_GHL: tl.constexpr, NEED_GH0: tl.constexpr,
    BLOCK_D: tl.constexpr, N_P2: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_bg = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = pid_bg // G
    g = pid_bg % G
    offs = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs < dg
    d = g * dg + offs
    n = tl.arange(0, N_P2)
    mask_n = n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    base_x = (b.to(tl.int64) * dim + d) * L
    base_bc = (pid_bg.to(tl.int64) * N + n) * L
    state_off = (b.to(tl.int64) * dim + d[:, None]) * N + n[None, :]
    if HAS_GHL:
        gcarry = tl.load(ghl_ptr + state_off, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        gcarry = tl.zeros((BLOCK_D, N_P2), dtype=tl.float32)
    gA_acc = tl.zeros((BLOCK_D, N_P2), dtype=tl.float32)
    gD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    gbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    tl_idx = tl.arange(0, BLOCK_L)
    is_first = (tl_idx == 0)[None, None, :]
    is_last = (tl_idx == BLOCK_L - 1)[None, None, :]
    for i in range(nchunks):
        c = nchunks - 1 - i
        t = c * BLOCK_L + tl_idx
        mask_t = t < L
        m2 = mask_d[:, None] & mask_t[None, :]
        x_off = base_x[:, None] + t[None, :]
        u = tl.load(u_ptr + x_off, mask=m2, other=0.0).to(tl.float32)
        dl = tl.load(dl_ptr + x_off, mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dl = dl + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dl)
        else:
            dt = dl
        dt = tl.where(m2, dt, 0.0)
        # dt at t + 1 (the decay that carries g_{t+1} back to g_t); 0 past the end -> exp(0) = 1 below
        m2n = mask_d[:, None] & ((t + 1) < L)[None, :]
        dln = tl.load(dl_ptr + x_off + 1, mask=m2n, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dln = dln + bias[:, None]
        if SOFTPLUS:
            dln = _softplus(dln)
        dtn = tl.where(m2n, dln, 0.0)
        bc_off = base_bc[:, None] + t[None, :]
        mnt = mask_n[:, None] & mask_t[None, :]
        Bt = tl.load(B_ptr + bc_off, mask=mnt, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + bc_off, mask=mnt, other=0.0).to(tl.float32)
        gout = tl.load(gy_ptr + x_off, mask=m2, other=0.0).to(tl.float32)
        # recompute the chunk's states from its saved start state
        h_in = tl.load(states_ptr + ((b.to(tl.int64) * dim + d[:, None]) * nchunks + c) * N + n[None, :],
                       mask=mask_dn, other=0.0)
        x = dt * u
        a = tl.exp2(dt[:, None, :] * A2[:, :, None])
        bb = x[:, None, :] * Bt[None, :, :]
        a_s, b_s = tl.associative_scan((a, bb), axis=2, combine_fn=_combine)
        hs = b_s + a_s * h_in[:, :, None]
        # output gate
        if HAS_Z:
            zz = tl.load(z_ptr + x_off, mask=m2, other=0.0).to(tl.float32)
            sig = tl.sigmoid(zz)
            y = tl.sum(hs * Ct[None, :, :], axis=1)
            if HAS_D:
                y = y + Dv[:, None] * u
            gz = gout * y * sig * (1.0 + zz * (1.0 - sig))
            tl.store(gz_ptr + x_off, gz.to(gz_ptr.dtype.element_ty), mask=m2)
            gy = gout * zz * sig
        else:
            gy = gout
        # reverse recurrence g_t = gy_t C_t + exp(dt_{t+1} A) g_{t+1}, with the next chunk's g carried in
        alpha = tl.exp2(dtn[:, None, :] * A2[:, :, None])
        beta = gy[:, None, :] * Ct[None, :, :]
        beta = tl.where(is_last, beta + alpha * gcarry[:, :, None], beta)
        _, gs = tl.associative_scan((alpha, beta), axis=2, combine_fn=_combine, reverse=True)
        gcarry = tl.sum(tl.where(is_first, gs, 0.0), axis=2)
        # gradients
        gx = tl.sum(gs * Bt[None, :, :], axis=1)  # (BLOCK_D, BLOCK_L)
        gdA = gs * (hs - bb)  # dL/d(dt A)
        gdt = tl.sum(gdA * A[:, :, None], axis=1) + gx * u
        gA_acc += tl.sum(gdA * dt[:, None, :], axis=2)
        gu = gx * dt
        if HAS_D:
            gu += gy * Dv[:, None]
            gD_acc += tl.sum(gy * u, axis=1)
        tl.store(gu_ptr + x_off, gu.to(gu_ptr.dtype.element_ty), mask=m2)
        if SOFTPLUS:
            gdt = gdt * tl.sigmoid(dl)
        gdt = tl.where(m2, gdt, 0.0)
        tl.store(gdl_ptr + x_off, gdt.to(gdl_ptr.dtype.element_ty), mask=m2)
        if HAS_BIAS:
            gbias_acc += tl.sum(gdt, axis=1)
        gBt = tl.sum(gs * x[:, None, :], axis=0)  # (N, BLOCK_L)
        gCt = tl.sum(hs * gy[:, None, :], axis=0)
        tl.atomic_add(gB_ptr + bc_off, gBt, mask=mnt, sem="relaxed")
        tl.atomic_add(gC_ptr + bc_off, gCt, mask=mnt, sem="relaxed")
    p_off = (b.to(tl.int64) * dim + d[:, None]) * N + n[None, :]
    tl.store(gA_ptr + p_off, gA_acc, mask=mask_dn)
    if HAS_D:
        tl.store(gD_ptr + b.to(tl.int64) * dim + d, gD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(gbias_ptr + b.to(tl.int64) * dim + d, gbias_acc, mask=mask_d)
    if NEED_GH0:
        # dL/dh_{-1} = exp(dt_0 A) g_0
        dl0 = tl.load(dl_ptr + base_x, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dl0 = dl0 + bias
        if SOFTPLUS:
            dl0 = _softplus(dl0)
        dl0 = tl.where(mask_d, dl0, 0.0)
        gh0 = tl.exp2(dl0[:, None] * A2) * gcarry
        tl.store(gh0_ptr + state_off, gh0, mask=mask_dn)


@triton.jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
    dim, N, s_b, s_d, s_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, N_P2: tl.constexpr,
):
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = d < dim
    n = tl.arange(0, N_P2)
    mask_n = n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    row = b.to(tl.int64) * dim + d
    x = tl.load(x_ptr + row, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + row, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b.to(tl.int64) * N + n, mask=mask_n, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b.to(tl.int64) * N + n, mask=mask_n, other=0.0).to(tl.float32)
    s_ptrs = state_ptr + b.to(tl.int64) * s_b + d[:, None].to(tl.int64) * s_d + n[None, :] * s_n
    h = tl.load(s_ptrs, mask=mask_dn, other=0.0)
    h = tl.exp2(dt[:, None] * A * 1.4426950408889634) * h + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, h, mask=mask_dn)
    y = tl.sum(h * Cv[None, :], axis=1)
    if HAS_D:
        y += x * tl.load(D_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + row, mask=mask_d, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    tl.store(y_ptr + row, y.to(y_ptr.dtype.element_ty), mask=mask_d)


# ---------------------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------------------
def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check_tensors(op: str, **tensors):
    for name, t in tensors.items():
        if t is None:
            continue
        if t.dtype == torch.float64:
            raise TypeError(
                f"{op}: {name} is float64; the Triton kernels take float16, bfloat16 or float32 "
                "(use backend='torch' or 'reference' for float64)."
            )
        if t.dtype not in _SUPPORTED:
            raise TypeError(f"{op}: {name} must be float16, bfloat16 or float32, got {t.dtype}")
        if t.device.type != "cuda" and not _interpreting():
            raise ValueError(
                f"{op}: {name} is on device '{t.device}', but the Triton kernels need CUDA tensors. Move the inputs "
                "to a GPU with .cuda(), or use backend='torch' (ssm_ops.selective_scan(..., backend='torch'))."
            )


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _bc4(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(1) if t.dim() == 3 else t


# ---------------------------------------------------------------------------------------------------------------------
# autograd.Function: inputs are contiguous, B/C are (batch, G, N, L) with the same G.
# ---------------------------------------------------------------------------------------------------------------------
class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, softplus, return_last):
        batch, dim, L = u.shape
        G, N = B.shape[1], A.shape[1]
        dg = dim // G
        need_grad = any(ctx.needs_input_grad[:9])
        cfg = dict(FWD_CONFIG)
        if need_grad:  # the saved chunk-start states must use the backward's chunk length
            cfg["BLOCK_L"] = BWD_CONFIG["BLOCK_L"]
        BLOCK_D = min(cfg["BLOCK_D"], _next_pow2(dg))
        BLOCK_L = cfg["BLOCK_L"]
        nchunks = triton.cdiv(L, BLOCK_L)
        y = torch.empty_like(u)
        h_last = torch.empty((batch, dim, N), device=u.device, dtype=torch.float32)
        states = (torch.empty((batch, dim, nchunks, N), device=u.device, dtype=torch.float32)
                  if need_grad else h_last)
        grid = (batch * G, triton.cdiv(dg, BLOCK_D))
        _scan_fwd_kernel[grid](
            u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
            delta_bias if delta_bias is not None else u, h0 if h0 is not None else h_last,
            y, h_last, states,
            dim, L, dg, G, N, nchunks,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus),
            HAS_H0=h0 is not None, SAVE_STATES=need_grad, STORE_LAST=True,
            BLOCK_D=BLOCK_D, N_P2=_next_pow2(N), BLOCK_L=BLOCK_L, TIME_MAJOR=bool(cfg["time_major"]),
            num_warps=cfg["num_warps"],
        )
        ctx.softplus = bool(softplus)
        ctx.has = (D is not None, z is not None, delta_bias is not None, h0 is not None)
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (A, D, delta_bias, h0))
        ctx.chunk = (BLOCK_D, BLOCK_L, nchunks)
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        ctx.set_materialize_grads(False)
        return y, h_last

    @staticmethod
    def backward(ctx, gy, g_last):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        batch, dim, L = u.shape
        G, N = B.shape[1], A.shape[1]
        dg = dim // G
        _, BLOCK_L, nchunks = ctx.chunk
        BLOCK_D = min(BWD_CONFIG["BLOCK_D"], _next_pow2(dg))
        has_D, has_z, has_bias, has_h0 = ctx.has
        gy = torch.zeros_like(u) if gy is None else gy.contiguous()
        gu, gdl = torch.empty_like(u), torch.empty_like(delta)
        gz = torch.empty_like(z) if has_z else None
        gB = torch.zeros(B.shape, device=u.device, dtype=torch.float32)
        gC = torch.zeros(C.shape, device=u.device, dtype=torch.float32)
        gA = torch.empty((batch, dim, N), device=u.device, dtype=torch.float32)
        gD = torch.empty((batch, dim), device=u.device, dtype=torch.float32) if has_D else None
        gbias = torch.empty((batch, dim), device=u.device, dtype=torch.float32) if has_bias else None
        need_gh0 = has_h0 and ctx.needs_input_grad[8]
        gh0 = torch.empty((batch, dim, N), device=u.device, dtype=torch.float32) if need_gh0 else None
        if g_last is not None:
            g_last = g_last.contiguous().float()
        grid = (batch * G, triton.cdiv(dg, BLOCK_D))
        _scan_bwd_kernel[grid](
            u, delta, A, B, C, D if has_D else u, z if has_z else u, delta_bias if has_bias else u, states, gy,
            g_last if g_last is not None else gA,
            gu, gdl, gz if has_z else gu, gA, gB, gC, gD if has_D else gA, gbias if has_bias else gA,
            gh0 if need_gh0 else gA,
            dim, L, dg, G, N, nchunks,
            HAS_D=has_D, HAS_Z=has_z, HAS_BIAS=has_bias, SOFTPLUS=ctx.softplus,
            HAS_GHL=g_last is not None, NEED_GH0=need_gh0,
            BLOCK_D=BLOCK_D, N_P2=_next_pow2(N), BLOCK_L=BLOCK_L, num_warps=BWD_CONFIG["num_warps"],
        )
        A_dt, D_dt, bias_dt, h0_dt = ctx.dtypes
        return (
            gu, gdl, gA.sum(0).to(A_dt), gB.to(B.dtype), gC.to(C.dtype),
            gD.sum(0).to(D_dt) if has_D else None, gz,
            gbias.sum(0).to(bias_dt) if has_bias else None,
            gh0.to(h0_dt) if need_gh0 else None, None, None,
        )


def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    initial_state=None,
):
    """Selective scan with Triton kernels (CUDA tensors; float16 / bfloat16 / float32; state in fp32).
    Same arguments and results as ``ssm_ops.selective_scan_ref``."""
    _check_tensors("selective_scan_triton", u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                   initial_state=initial_state)
    batch, dim, L = u.shape
    if L == 0:
        y = u.new_zeros(u.shape)
        if not return_last_state:
            return y
        h = (initial_state.float().clone() if initial_state is not None
             else u.new_zeros((batch, dim, A.shape[1]), dtype=torch.float32))
        return y, h
    B4, C4 = _bc4(B), _bc4(C)
    gb, gc = B4.shape[1], C4.shape[1]
    if gb != gc:  # bring B and C to one group count (the larger one when it is a multiple, else per channel)
        G = max(gb, gc) if max(gb, gc) % min(gb, gc) == 0 else dim
        B4 = B4.repeat_interleave(G // gb, dim=1) if gb != G else B4
        C4 = C4.repeat_interleave(G // gc, dim=1) if gc != G else C4
    # A stays fp32 inside; D / delta_bias / initial_state are read as fp32
    y, h_last = _SelectiveScanFn.apply(
        u.contiguous(), delta.contiguous(), A.contiguous(), B4.contiguous(), C4.contiguous(),
        None if D is None else D.contiguous(), None if z is None else z.contiguous(),
        None if delta_bias is None else delta_bias.contiguous(),
        None if initial_state is None else initial_state.contiguous(),
        bool(delta_softplus), bool(return_last_state),
    )
    return (y, h_last) if return_last_state else y


def selective_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decoding step. state (batch, dim, N) float32, updated in place; x, dt, z (batch, dim); B, C (batch, N).
    Returns y (batch, dim) in x's dtype."""
    _check_tensors("selective_state_update_triton", x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    if state.dtype != torch.float32:
        raise TypeError(f"selective_state_update_triton: state must be float32, got {state.dtype}")
    _check_tensors("selective_state_update_triton", state=state)
    batch, dim = x.shape
    N = A.shape[1]
    y = torch.empty_like(x)
    BLOCK_D = min(64, _next_pow2(dim))
    x, dt, A, B, C = (t.contiguous() for t in (x, dt, A, B, C))
    z = None if z is None else z.contiguous()
    grid = (batch, triton.cdiv(dim, BLOCK_D))
    _state_update_kernel[grid](
        state, x, dt, A, B, C, D if D is not None else x, z if z is not None else x,
        dt_bias if dt_bias is not None else x, y,
        dim, N, state.stride(0), state.stride(1), state.stride(2),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        BLOCK_D=BLOCK_D, N_P2=_next_pow2(N), num_warps=4,
    )
    return y
