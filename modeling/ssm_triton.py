"""Triton kernels for the Mamba-1 selective scan (forward and backward) and the single-step decoding update.

Same functions as ``selective_scan_ref`` / ``selective_state_update`` in ``ssm_ops.py`` (shapes and semantics are
described there); this module imports only torch and triton, so importing it raises ImportError when triton is
missing and the dispatch in ``ssm_ops`` falls back to the torch backend.

Kernel design: sequential in time, many small programs. One program per (batch, group of B/C, block of BLOCK_D
channels) keeps the state h (BLOCK_D, N) in fp32 registers and walks the sequence one step per loop iteration:
  h = exp2(dt A log2e) * h + (dt u) B_t ;  y_t = sum_n h C_t (+ D u, * silu(z)),
with softplus(delta + delta_bias) fused. Per step it loads BLOCK_D values of u / delta / z and the N values of B_t, C_t
(broadcast to the block). The kernels take explicit strides: u / delta / z / y and their gradients may be channel-major
((batch, dim, L) contiguous: a step touches BLOCK_D cache lines per tensor, shared with the next steps) or time-major
(unit stride along dim, e.g. the transposed (batch, L, dim) outputs of a mixer's linear layers: a step is ONE run of
BLOCK_D consecutive values), likewise B / C with unit stride along L or along N; outputs and gradients are allocated
in their input's layout, and the wrapper copies nothing that is in either layout. BLOCK_D is small (8-32) and
num_warps 1-2, so a (batch 8, dim 1536) problem runs thousands of programs and the per-step latency of one program
is hidden by the others. (The previous design, a ``tl.associative_scan`` over (BLOCK_D, N, BLOCK_L) register
tiles, was compute-bound on shuffles and layout conversions: 24x / 30x the memory bound, see benchmarks/README.md.)
When gradients are needed the forward also writes the state at each chunk start (every CHUNK steps),
(batch, dim, nchunks, N) fp32.
Backward (same grid, chunks walked in reverse): a chunk's states are recomputed sequentially from its saved start
state into a per-program fp32 scratch buffer (CHUNK x BLOCK_D x N, small enough to stay in L1/L2), then the adjoint
g_t = dL/dh_t runs backwards one step per iteration, g_t = gy_t C_t + exp(dt_{t+1} A) g_{t+1}, and
  dL/dx_t = <g_t, B_t> (x = dt u),  dL/dB_t = sum_d x_t g_t,  dL/dC_t = sum_d gy_t h_t,
  dL/d(dt_t A) = g_t * (h_t - x_t B_t)   (= g_t * exp(dt_t A) h_{t-1}) -> dL/ddt_t (sum over N, times A), dL/dA.
dB/dC are summed over the program's channels, then across channel blocks either with fp32 atomics or through a
per-block buffer (nblocks, batch * G, L, N) summed by torch (BWD_CONFIG["atomic"]); dA, dD and d(delta_bias) are
written per (batch, channel) and summed over the batch with torch.
Two more forward designs are chosen by measurement (see the *_CONFIG comments): the time-tiled kernels (one warp per
channel over tiles of steps: each lane 16 consecutive steps joined by one warp scan a state, _scan_fwd_seg_kernel, or
tl.associative_scan over a tile, _scan_fwd_tile_kernel; the backward's 128-step tiles: the states by
tl.associative_scan, the adjoint by lanes of 4 steps and shuffles down, two channels a program whose dB / dC terms
are added before one atomic; dA, dD, d(delta_bias) summed over the batch by atomics) for inference at
L >= 512 with many channels and for training there and at long sequences with few channels (whose forward is then the
lane kernel in chunks, saving the backward's states), and the register-lane kernel (one thread per channel, its
states a tuple of registers) for inference elsewhere. Launches skip triton's per-call argument binding once a
kernel's variant is known (_Launcher). The inference forwards also read a sequence backwards in place
(``reverse``: per-step tensors passed as a view at their last step with negated step strides) and take A_log
(``a_log``).
Also here: the causal depthwise conv1d + SiLU of the mixer (forward, backward, a cached prefix, reversed reads), a
tiled transposing copy, the decoding step's conv update and scan step, RMSNorm and residual add + RMSNorm.
"""

from __future__ import annotations

import os
import re

import torch

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError as err:  # triton is optional: ssm_ops falls back to the torch backend
    raise ImportError("ssmvl's Triton selective-scan kernels need the `triton` package, 3.0 or newer "
                      "(pip install 'triton>=3.0')") from err


__all__ = ["selective_scan_triton", "reverse_in_place", "selective_state_update_triton", "causal_conv1d_triton",
           "causal_conv1d_update_triton", "rms_norm_triton", "add_rms_norm_triton", "transpose_copy_triton"]

_LOG2E = 1.4426950408889634
_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)

# Block sizes. FWD: BLOCK_D channels per program, num_warps. BWD: the same, plus CHUNK (time steps between saved
# states = steps recomputed into the scratch buffer at once) and atomic (dB/dC across channel blocks by fp32 atomics
# instead of a per-block buffer + torch sum).
# Defaults from a sweep on an H100 (benchmarks/bench_scan_gpu.py --sweep; B=8, D=1536, N=16, L=4096, bf16).
FWD_CONFIG = {"BLOCK_D": 16, "num_warps": 1}
BWD_CONFIG = {"BLOCK_D": 8, "num_warps": 1, "CHUNK": 64, "atomic": True}
# Time-parallel mode: when (batch x channel blocks) gives fewer than `parallel_below` programs, the sequence is cut
# into chunks scanned in parallel (pass 1: each chunk's map h -> exp(A S) h + hend; pass 2: the chunks' start states,
# sequential over chunks only; pass 3: each chunk rescanned from its start state), aiming at `target_programs`
# programs. Forward chunks without gradients are at least `min_chunk` steps; with gradients they are
# BWD_CONFIG["CHUNK"] (the backward needs a state there). The backward splits the chunks among at most
# target_programs / (batch x channel blocks) lanes. From a sweep on an H200 (benchmarks/scan_vs_mamba_ssm.py --sweep):
# the sequential kernel is throughput-bound from ~768 programs up (B8 D1536: time-parallel is 1.4x slower there), and
# latency-bound below (B4 D768 L6085, 192 programs: 1.60 ms sequential, 0.81 ms time-parallel).
PARALLEL_CONFIG = {"parallel_below": 512, "target_programs": 16384, "min_chunk": 256, "carry_rows": 32}
# Inference forward (no gradients needed): the time-tiled kernel (_scan_fwd_tile_kernel) for sequences of at least
# `min_len` steps, unless the chunked time-parallel path applies and the sequence is `long` (there it is faster).
# "enabled": None = that rule, True / False = always / never. H200 sweep (benchmarks/README.md): B8 D1536 L1024
# 0.438 -> 0.222 ms, B16 D1536 L4096 2.92 -> 1.76 ms, B1 D1536 L1024 kernel 93 -> 30 us; B4 D768 L6085 0.90-0.97 ms
# (chunked 0.80); B128 D768 L197 1.0-1.2 ms (sequential 0.43). One warp a program (tenth session,
# results/tile_sweep_2026-11-29.json; kernel us at 4 warps / 1024 steps -> 1 warp / 512): B8 L1024 222 -> 192, B16 L4096
# 1,755 -> 1,701, B1 L1024 30 -> 26: the tile's steps are joined by warp shuffles alone (no block-wide barrier and
# shared-memory pass a state), 16 instead of 22 instructions a state and step (SASS); ncu had the 4-warp kernel at
# 75% of its issue slots.
# "seg" (eleventh session): 0 = that kernel; 1 / 2 = _scan_fwd_seg_kernel, each lane 8 / 16 consecutive steps (16 where
# the tile is 512 steps), in training too (the states saved inside its tiles): 12.6 instead of 16.5 instructions a
# state and step (SASS, one warp scan a state instead of two, bf16 B / C read as words). "stages": software pipelining
# of its state loop (B / C through shared memory), "maxnreg": its register cap (0: none; uncapped it takes 159 and runs
# 12 warps an SM). H200, bf16, kernel us, tl.associative_scan tiles -> seg 2 at maxnreg 0 / 128 / 96, stages 2 / 3
# (results/seg_sweep_2026-11-29*.json): B8 D1536 L1024 190 -> 177 / 167-172 / 189 / 244 / 201, B16 L4096
# 1,662 -> 1,934 / 1,480-1,527 / 1,517 / 1,746 / 1,413, B1 L1024 26.5 -> 22.3 / 22.6-23.2 / 26.6 / 36.7 / 33.3; the
# training forward B8 L1024 229 -> 175-180, B16 L4096 2,053 -> 1,541-1,607. seg 1 (8 steps a lane): 221 at B8 L1024.
# "prefetch" (twelfth session, results/seg_sweep_2026-11-29d*.json): B / C read one state ahead too. Kernel us on
# scan_vs_mamba_ssm's inputs, off -> on (uncapped: 128 registers): B8 L1024 171-174 -> 174-178, B16 L4096 1,485-1,528
# -> 1,370-1,394; but the Mamba LM prefill of 16 x 4096 ran 61.5-61.6 -> 64.4-65.3 ms (its scans 33.4 -> 36.7 ms,
# same machine): off in inference. The training forward takes it (TILE_BWD_CONFIG "fwd_prefetch", "fwd_maxnreg"):
# 178-181 -> 157 at B8 L1024, 1,548-1,589 -> 1,165-1,174 at B16 L4096 capped at 128 (uncapped 163 / 1,462-1,495; 76
# bytes of spills at 128, outside the state loop).
# "stage_bc" (fifteenth session): from this many (batch x dim x L) elements up, the seg kernel reads B / C from a copy
# in rows padded to 32 steps (_staged_bc, one launch) unless they are already 16-byte-vector rows (_vector_bc): at odd
# L (and for x_proj's time-major views) its B / C loads went scalar, 16 a lane, state and tile instead of 2 (SASS);
# H200, bf16, kernel us (results/odd_length_sweep_2026-11-29.log): B16 D1536 L4095 4,289 against 1,436 at L4096, B8
# L1023 549 against 185, B4 D768 L6085 617 against 378 at L6080. 0: never.
TILE_CONFIG = {"enabled": None, "BLOCK_T": 512, "num_warps": 1, "min_len": 512, "long": 4096, "seg": 2,
               "stages": 1, "maxnreg": 128, "prefetch": 0, "stage_bc": 1 << 22}
# Training (gradients needed): the time-tiled forward (tiles of fwd_BLOCK_T steps, fwd_warps) saving the state before
# every BLOCK_T steps, then the time-tiled backward (_scan_bwd_tile_kernel, tiles of BLOCK_T, num_warps), for
# sequences of at least `min_len` steps, unless the chunked time-parallel path applies and the sequence is
# TILE_CONFIG["long"]. "enabled": None = that rule, True / False = always / never.
# H200 sweep (benchmarks/results/scan_vs_mamba_ssm.json, fwd+bwd ms, sequential or chunked -> tiled 512 / 4 warps):
# B8 D1536 L1024 1.84 -> 1.46, B16 D1536 L4096 13.9 -> 11.9, B1 D1536 L1024 1.41 -> 1.06; B4 D768 L6085 chunked 2.72
# (tiled 4.16); B128 D768 L197 sequential 2.48 (tiled 4.75). Tiles of 256 / 1024 steps or 8 warps were slower.
# Tenth session (results/tile_bwd_sweep_2026-11-29.json, fwd+bwd ms, backward tile / warps): 512 / 4 -> 128 / 1:
# B8 L1024 1.461 -> 1.358, B16 L4096 11.94 -> 10.00 (256 / 1: 1.410, 11.85; 256 / 2: 1.595, 13.54; 512 / 2: 1.501,
# 12.72); with 8 steps a thread (256 / 1, 512 / 2) the backward needs 251 registers. The forward keeps its own tile.
# Twelfth session (results/tile_bwd_sweep_2026-11-29d*.json, backward kernel us at B8 L1024 / B16 L4096 / B1 L1024,
# H200): tl.associative_scan(reverse=True) reversed the lanes by butterflies around its scan, 85 shuffles a state
# and tile; "lanes" (the adjoint by lanes of 4 steps, shuffles down: 26 shuffles, 215 instead of 281 instructions,
# half the exps) 1,093 / 7,829 / 205 -> 910 / 6,064 / 174; a state's B / C read one state ahead too -> 849-864 /
# 5,541-5,702 / 154-175; "pair" (two states an iteration, 128 registers) -> 784 / 5,255 / 147. Register caps of
# 80 / 72 / 64 ran slower (878 / 883 / 884 at B8 L1024). Thirteenth session: without its dB / dC atomics that kernel
# took 553 / 3,870 / 60 us (825 / 5,125 / 149 with them); "channel_pairs" (two channels a program, their dB / dC
# terms added before one atomic; replaces "pair") -> 558 / 4,143 / 111 (about 250 registers; capped at 168: 554 /
# 4,187 / 107). "fwd_maxnreg": the training forward's cap (see TILE_CONFIG).
# Fourteenth session (results/train_few_channels_2026-11-29.log, H200, kernel us / fwd+bwd ms): few channels and a
# long sequence (B4 D768 L6085, Vim-S at 1248 px) had run the chunked kernels (2.71 ms); the pair there: 1,462 us
# for the backward uncapped (8 warps an SM: 1.5 waves of its 1,536 programs), 971 capped at 168 registers (12 an SM,
# one wave; "maxnreg"), 1.85 ms; and the seg forward, a warp a channel, took 851 us: "fwd_lanes" (see
# _lane_train_plan) runs the lane forward there, cut into chunks, saving the states at the backward's tiles
# (449 us): 1.51 ms. "long_min_programs": from this many programs (batch x channels / 16) the pair also takes long
# sequences: at 96 (B2 D768 L6085, B1 D1536 L4096) its kernels took 999 / 640 us against the chunked kernels'
# 1,312 / 1,136.
# Fifteenth session: dB / dC rows padded to 32 steps (so that a tile's atomics cover whole lines at odd L) ran the
# backward 2.2x slower at odd L (B16 L4095 10,940 against 4,970 us): with the rows' alignment known, triton gave the
# atomics 4 steps a thread (TTGIR), so each warp-wide atomic spanned 4 cache lines instead of 1
# (results/bwd_padded_rows_2026-11-29.log). The rows stay L long.
TILE_BWD_CONFIG = {"enabled": None, "BLOCK_T": 128, "num_warps": 1, "min_len": 512, "fwd_BLOCK_T": 512, "fwd_warps": 1,
                   "lanes": True, "channel_pairs": True, "maxnreg": 168, "fwd_maxnreg": 128, "fwd_prefetch": 1,
                   "long_min_programs": 96, "fwd_lanes": None}
# Inference forward where the time-tiled kernel is not chosen (short sequences, or few channels and long sequences):
# the register-lane kernel (_scan_fwd_lane_kernel), each thread N / S states of one channel. S (threads a channel: 1,
# 2 or 4, at most max_split) is the smallest that gives at least `min_warps` warps; below that the sequence is cut
# into chunks of at least `min_chunk` steps (time-parallel: chunk end states, carry, rescan). "enabled": None = that
# rule, True = wherever it can run (N a multiple of S, dim // G a multiple of the program's channels), False = never.
# H200 sweep (bf16, N = 16, benchmarks/scan_vs_mamba_ssm.py --lane-sweep): B4 D768 L6085 0.80 ms (chunked) ->
# 0.52-0.55 ms (S = 2, 11 chunks; mamba_ssm 0.574), B128 D768 L197 0.43 (sequential) -> 0.40 ms (S = 1); against
# the tiled kernel it lost (B8 D1536 L1024 0.22 -> 0.25-0.5 ms, B16 D1536 L4096 1.75 -> 2.3 ms; 3-4x its instruction
# count, for a reason not yet identified: benchmarks/README.md).
# min_warps picks S; below min_warps, with a time-major u (a mixer's), a sequence is cut into chunks until the kernel
# runs at least chunk_warps warps (about 32 an SM at S = 2); with a channel-major u, until min_warps (each step reads a
# cache line a channel and tensor: twice the resident warps thrashed L1). H200, bf16 (benchmarks/lane_variants.py,
# results/lane_variants_2026-11-29*.json): a Vim-S layer's views at B4 D768 L6085 0.430 ms with 11 chunks (2,048
# warps), 0.404 with 22 (4,096), 0.422 with 24; channel-major inputs (scan_vs_mamba_ssm.py) 0.41 -> 0.58 ms with 22.
# bf16_words: bf16 B / C read in place are converted by bit operations on 32-bit words (_lane_row, VEC 16): 180
# instead of 205 instructions a step and 96 instead of 143 registers at S = 1. In the Vim-S forward
# (profile_models_gpu.py --lane=bf16_words=0/1, twice each, results/profile_lane_words_2026-11-29*.json) the lane
# kernels took 9.09 against 10.61 ms at 224 px (batch 128) and 19.0 against 19.6 ms at 1248 px: on. (lane_variants.py's
# synthetic inputs, with a delta_bias the model does not pass at 224 px, measured the opposite at B128 L197: 0.223
# against 0.199 ms.)
LANE_CONFIG = {"enabled": None, "num_warps": 1, "max_split": 2, "min_warps": 2048, "chunk_warps": 4096,
               "min_chunk": 256, "bf16_words": True}
# Backward where the time-tiled pair is not chosen: the register-lane kernel (_scan_bwd_lane_kernel), a thread CPT
# channels x N / S states, S threads a channel, one warp a program (32 / S x CPT channels); blocks of SUB steps
# recomputed in registers. "enabled": None = where it runs sequentially in time (one lane of chunks), True = wherever
# it can run (N a multiple of S, dim // G a multiple of the program's channels; else _scan_bwd_kernel), False = never.
# H200, bf16, channel-major inputs (benchmarks/scan_vs_mamba_ssm.py --lane-bwd-sweep, results/lane_bwd_sweep_*.json),
# backward kernel us, _scan_bwd_kernel -> lane (S, CPT, SUB): B128 D768 L197 1,667 -> 1,623 (4, 1, 4), 1,667
# (4, 2, 4), 1,788 (4, 2, 2), 1,833 (4, 1, 8), 2,028-2,111 (S = 2), 3,118 (1, 1, 2); B4 D768 L6085 in lanes of chunks
# 1,567 -> 1,612 (4, 2, 4), 1,735 (4, 1, 4). Half the instructions of _scan_bwd_kernel a channel and step (SASS, sm_90:
# 33 against 60) but no faster: ncu at B128 L197 puts the lane kernel at 85% of the L2's throughput (the dB / dC
# atomics, 2-byte strided stores of du / ddelta / dz, L1 misses) and 49% of the issue slots (benchmarks/README.md).
LANE_BWD_CONFIG = {"enabled": None, "S": 4, "CPT": 1, "SUB": 4}
# The lane kernel keeps its states in tuples of tensors, which triton compiles from 3.3 on (3.2 rejects the kernel;
# compiled for sm_90 with both): with an older triton the other kernels take its cases.
_TUPLES = tuple(int(p) for p in re.findall(r"\d+", triton.__version__)[:2]) >= (3, 3)


# ---------------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------------
@triton.jit
def _softplus(x):
    # log(1 + exp(x)) through exp2 / log2
    return tl.where(x <= 20.0, 0.6931471805599453 * tl.log2(1.0 + tl.exp2(x * 1.4426950408889634)), x)


@triton.jit
def _step_size(dt, bias, v, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
    """The step size from delta: + delta_bias, softplus (FAST: log2 on the special-function unit, lg2.approx,
    instead of libdevice's polynomial), 0 where v is False (the step is then a no-op)."""
    if HAS_BIAS:
        dt = dt + bias
    if SOFTPLUS:
        if FAST:
            dt = tl.where(dt <= 20.0,
                          0.6931471805599453 * libdevice.fast_log2f(1.0 + tl.exp2(dt * 1.4426950408889634)), dt)
        else:
            dt = _softplus(dt)
    return tl.where(v, dt, 0.0)


@triton.jit
def _skip_and_gate(y, u, zz, Dv, HAS_D: tl.constexpr, HAS_Z: tl.constexpr):
    """y + D u, times silu(z)."""
    if HAS_D:
        y = y + Dv * u
    if HAS_Z:
        y = y * zz * tl.sigmoid(zz)
    return y


@triton.jit
def _row_ptrs(b64, d64, u_ptr, su_b, su_d, dl_ptr, sdl_b, sdl_d, z_ptr, sz_b, sz_d, y_ptr, sy_b, sy_d):
    """Pointers to step 0 of batch row b64, channels d64 of u, delta, z and y (each with its batch / channel
    strides)."""
    return (u_ptr + b64 * su_b + d64 * su_d, dl_ptr + b64 * sdl_b + d64 * sdl_d, z_ptr + b64 * sz_b + d64 * sz_d,
            y_ptr + b64 * sy_b + d64 * sy_d)


@triton.jit
def _bwd_row_ptrs(b64, d64, u_ptr, su_b, su_d, dl_ptr, sdl_b, sdl_d, z_ptr, sz_b, sz_d, gy_ptr, sgy_b, sgy_d,
                  gu_ptr, sgu_b, sgu_d, gdl_ptr, sgdl_b, sgdl_d, gz_ptr, sgz_b, sgz_d):
    """_row_ptrs for the backward kernels: u, delta, z, the output's gradient gy, and the gradients written, gu, gdl
    and gz."""
    u_p, dl_p, z_p, gy_p = _row_ptrs(b64, d64, u_ptr, su_b, su_d, dl_ptr, sdl_b, sdl_d, z_ptr, sz_b, sz_d, gy_ptr,
                                     sgy_b, sgy_d)
    return (u_p, dl_p, z_p, gy_p, gu_ptr + b64 * sgu_b + d64 * sgu_d, gdl_ptr + b64 * sgdl_b + d64 * sgdl_d,
            gz_ptr + b64 * sgz_b + d64 * sgz_d)


@triton.jit
def _ld_fwd(u_p, su, dl_p, sdl, z_p, sz, B_p, sB, C_p, sC, t, t1, mask_d, mask_n, HAS_Z: tl.constexpr):
    """Inputs of step t (all masked off, and v False, past t1). *_p: per-channel / per-state pointers at t = 0,
    s*: their strides along time."""
    v = t < t1
    md = mask_d & v
    mn = mask_n & v
    u = tl.load(u_p + t * su, mask=md, other=0.0).to(tl.float32)
    dt = tl.load(dl_p + t * sdl, mask=md, other=0.0).to(tl.float32)
    Bt = tl.load(B_p + t * sB, mask=mn, other=0.0).to(tl.float32)
    Ct = tl.load(C_p + t * sC, mask=mn, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_p + t * sz, mask=md, other=0.0).to(tl.float32)
    else:
        zz = u
    return u, dt, zz, Bt, Ct


@triton.jit
def _step_fwd(h, u, dt, zz, Bt, Ct, t, t1, A2, Dv, bias, y_p, sy, mask_d,
              HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
              STORE_Y: tl.constexpr):
    """One step of the recurrence (a no-op for t >= t1); stores y_t when STORE_Y."""
    v = t < t1
    dt = _step_size(dt, bias, v, HAS_BIAS, SOFTPLUS, False)
    h = tl.exp2(dt[:, None] * A2) * h + (dt * u)[:, None] * Bt[None, :]
    if STORE_Y:
        y = _skip_and_gate(tl.sum(h * Ct[None, :], axis=1), u, zz, Dv, HAS_D, HAS_Z)
        tl.store(y_p + t * sy, y.to(y_p.dtype.element_ty), mask=mask_d & v)
    return h, dt


@triton.jit
def _channel_block(pid_bg, pid_d, dim, G, dg, N, A_ptr, bias_ptr, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr,
                   N_P2: tl.constexpr):
    """A program's (batch, B/C group, block of BLOCK_D channels): b, g, the channels d and their masks, the state
    indices n, A (BLOCK_D, N_P2) in fp32, delta_bias of the block (zeros without it) and the (batch, channel) rows."""
    b = pid_bg // G
    g = pid_bg % G
    offs = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs < dg
    d = g * dg + offs
    n = tl.arange(0, N_P2)
    mask_n = n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    row = b.to(tl.int64) * dim + d  # (BLOCK_D,)
    return b, g, d, mask_d, n, mask_n, mask_dn, A, bias, row


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    y_ptr, hlast_ptr, states_ptr,
    dim, L, dg, G, N, nchunks, CHUNK,
    su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sy_b, sy_d, sy_l,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, SAVE_STATES: tl.constexpr, PARALLEL: tl.constexpr,
    BLOCK_D: tl.constexpr, N_P2: tl.constexpr,
):
    pid_bg = tl.program_id(0)
    pid_d = tl.program_id(1)
    c_begin = tl.program_id(2)  # PARALLEL: one chunk per program, its start state computed by _chunk_carry_kernel
    b, g, d, mask_d, n, mask_n, mask_dn, A, bias, row = _channel_block(pid_bg, pid_d, dim, G, dg, N, A_ptr, bias_ptr,
                                                                       HAS_BIAS, BLOCK_D, N_P2)
    A2 = A * 1.4426950408889634
    Dv = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    b64 = b.to(tl.int64)
    d64 = d.to(tl.int64)
    n64 = n.to(tl.int64)
    g64 = g.to(tl.int64)
    u_p, dl_p, z_p, y_p = _row_ptrs(b64, d64, u_ptr, su_b, su_d, dl_ptr, sdl_b, sdl_d, z_ptr, sz_b, sz_d, y_ptr, sy_b,
                                    sy_d)
    B_p = B_ptr + b64 * sB_b + g64 * sB_g + n64 * sB_n  # (N_P2,)
    C_p = C_ptr + b64 * sC_b + g64 * sC_g + n64 * sC_n
    state_off = row[:, None] * N + n[None, :]  # (BLOCK_D, N_P2)
    if PARALLEL:
        h = tl.load(states_ptr + (row[:, None] * nchunks + c_begin) * N + n[None, :], mask=mask_dn, other=0.0)
        n_iter = 1
    else:
        n_iter = nchunks
        if HAS_H0:
            h = tl.load(h0_ptr + state_off, mask=mask_dn, other=0.0).to(tl.float32)
        else:
            h = tl.zeros((BLOCK_D, N_P2), dtype=tl.float32)
    # loops run a fixed trip count (CHUNK; steps past t1 are masked no-ops): bounds derived from program ids would
    # not work in triton's CPU interpreter
    for ci in range(0, n_iter):
        c = c_begin + ci
        if SAVE_STATES:
            tl.store(states_ptr + (row[:, None] * nchunks + c) * N + n[None, :], h, mask=mask_dn)
        t0 = c * CHUNK
        t1 = tl.minimum(t0 + CHUNK, L)
        # 4 steps per iteration; the next 4 steps' loads are issued before this group's arithmetic
        u0, d0, z0, B0, C0 = _ld_fwd(u_p, su_l, dl_p, sdl_l, z_p, sz_l, B_p, sB_l, C_p, sC_l, t0, t1, mask_d, mask_n,
                                     HAS_Z)
        u1, d1, z1, B1, C1 = _ld_fwd(u_p, su_l, dl_p, sdl_l, z_p, sz_l, B_p, sB_l, C_p, sC_l, t0 + 1, t1, mask_d,
                                     mask_n, HAS_Z)
        u2, d2, z2, B2, C2 = _ld_fwd(u_p, su_l, dl_p, sdl_l, z_p, sz_l, B_p, sB_l, C_p, sC_l, t0 + 2, t1, mask_d,
                                     mask_n, HAS_Z)
        u3, d3, z3, B3, C3 = _ld_fwd(u_p, su_l, dl_p, sdl_l, z_p, sz_l, B_p, sB_l, C_p, sC_l, t0 + 3, t1, mask_d,
                                     mask_n, HAS_Z)
        for k in range(0, CHUNK, 4):
            t = t0 + k
            u4, d4, z4, B4, C4 = _ld_fwd(u_p, su_l, dl_p, sdl_l, z_p, sz_l, B_p, sB_l, C_p, sC_l, t + 4, t1, mask_d,
                                         mask_n, HAS_Z)
            u5, d5, z5, B5, C5 = _ld_fwd(u_p, su_l, dl_p, sdl_l, z_p, sz_l, B_p, sB_l, C_p, sC_l, t + 5, t1, mask_d,
                                         mask_n, HAS_Z)
            u6, d6, z6, B6, C6 = _ld_fwd(u_p, su_l, dl_p, sdl_l, z_p, sz_l, B_p, sB_l, C_p, sC_l, t + 6, t1, mask_d,
                                         mask_n, HAS_Z)
            u7, d7, z7, B7, C7 = _ld_fwd(u_p, su_l, dl_p, sdl_l, z_p, sz_l, B_p, sB_l, C_p, sC_l, t + 7, t1, mask_d,
                                         mask_n, HAS_Z)
            h, _ = _step_fwd(h, u0, d0, z0, B0, C0, t, t1, A2, Dv, bias, y_p, sy_l, mask_d, HAS_D, HAS_Z, HAS_BIAS,
                          SOFTPLUS, True)
            h, _ = _step_fwd(h, u1, d1, z1, B1, C1, t + 1, t1, A2, Dv, bias, y_p, sy_l, mask_d, HAS_D, HAS_Z, HAS_BIAS,
                          SOFTPLUS, True)
            h, _ = _step_fwd(h, u2, d2, z2, B2, C2, t + 2, t1, A2, Dv, bias, y_p, sy_l, mask_d, HAS_D, HAS_Z, HAS_BIAS,
                          SOFTPLUS, True)
            h, _ = _step_fwd(h, u3, d3, z3, B3, C3, t + 3, t1, A2, Dv, bias, y_p, sy_l, mask_d, HAS_D, HAS_Z, HAS_BIAS,
                          SOFTPLUS, True)
            u0, d0, z0, B0, C0 = u4, d4, z4, B4, C4
            u1, d1, z1, B1, C1 = u5, d5, z5, B5, C5
            u2, d2, z2, B2, C2 = u6, d6, z6, B6, C6
            u3, d3, z3, B3, C3 = u7, d7, z7, B7, C7
    if not PARALLEL:  # else _chunk_carry_kernel wrote it
        tl.store(hlast_ptr + state_off, h, mask=mask_dn)


@triton.jit
def _bf16_lo(w):
    """The first of the two bf16 values in the 32-bit words w (the low half, little-endian) as fp32: a bf16 is the
    upper half of the fp32 it rounds, so w << 16, one instruction a value (a bf16 -> fp32 conversion of a 16-byte load
    takes 1.5: byte permutes first)."""
    return (w << 16).to(tl.float32, bitcast=True)


@triton.jit
def _bf16_hi(w):
    """The second of the two bf16 values in the 32-bit words w as fp32: w & 0xffff0000 (see _bf16_lo)."""
    return (w & -65536).to(tl.float32, bitcast=True)


@triton.jit
def _lane_row(p, NS: tl.constexpr, S: tl.constexpr, BLOCK_D: tl.constexpr, VEC: tl.constexpr):
    """The NS values at p[..., i] (i < NS, unit stride; p a (S, BLOCK_D) pointer tensor, one address per split) in
    fp32, as a tuple of (S, BLOCK_D) tensors. VEC 4 (fp32) or 8 (16-bit; p 16-byte aligned, NS a multiple of VEC):
    16-byte loads of VEC values each, split apart in registers; VEC 16: bf16 as VEC 8, converted by bit operations
    on whole words; VEC 1: a load a value."""
    vals = ()
    if VEC == 4:
        for j in tl.static_range(NS // 4):
            x = tl.load(p[:, :, None] + (4 * j + tl.arange(0, 4))[None, None, :]).to(tl.float32)  # (S, BLOCK_D, 4)
            lo, hi = tl.split(tl.reshape(x, (S, BLOCK_D, 2, 2)))  # (x0, x2), (x1, x3)
            x0, x2 = tl.split(lo)
            x1, x3 = tl.split(hi)
            vals = vals + (x0, x1, x2, x3)
    elif VEC == 8:
        for j in tl.static_range(NS // 8):
            x = tl.load(p[:, :, None] + (8 * j + tl.arange(0, 8))[None, None, :]).to(tl.float32)  # (S, BLOCK_D, 8)
            even, odd = tl.split(tl.reshape(x, (S, BLOCK_D, 4, 2)))  # (x0, x2, x4, x6), (x1, x3, x5, x7)
            e0, e1 = tl.split(tl.reshape(even, (S, BLOCK_D, 2, 2)))  # (x0, x4), (x2, x6)
            o0, o1 = tl.split(tl.reshape(odd, (S, BLOCK_D, 2, 2)))  # (x1, x5), (x3, x7)
            x0, x4 = tl.split(e0)
            x2, x6 = tl.split(e1)
            x1, x5 = tl.split(o0)
            x3, x7 = tl.split(o1)
            vals = vals + (x0, x1, x2, x3, x4, x5, x6, x7)
    elif VEC == 16:
        # bf16 read as 32-bit words (p 16-byte aligned, NS a multiple of 8), widened by _bf16_lo / _bf16_hi, one
        # instruction a value (VEC 8 splits the halves apart with byte permutes first: about 32 more instructions a
        # step for B_t and C_t at N = 16, S = 1)
        pw = p.to(tl.pointer_type(tl.int32), bitcast=True)
        for j in tl.static_range(NS // 8):
            w = tl.load(pw[:, :, None] + (4 * j + tl.arange(0, 4))[None, None, :])  # (S, BLOCK_D, 4) words
            lo, hi = tl.split(tl.reshape(w, (S, BLOCK_D, 2, 2)))  # (w0, w2), (w1, w3)
            w0, w2 = tl.split(lo)
            w1, w3 = tl.split(hi)
            vals = vals + (_bf16_lo(w0), _bf16_hi(w0), _bf16_lo(w1), _bf16_hi(w1), _bf16_lo(w2), _bf16_hi(w2),
                           _bf16_lo(w3), _bf16_hi(w3))
    else:
        for i in tl.static_range(NS):
            vals = vals + (tl.load(p + i).to(tl.float32),)
    return vals


@triton.jit
def _lane_ld(u_p, su, dl_p, sdl, z_p, sz, y_p, sy, B_p, sB, C_p, sC, t, L,
             NS: tl.constexpr, S: tl.constexpr, BLOCK_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_C: tl.constexpr,
             VEC: tl.constexpr, MEAN: tl.constexpr):
    """Inputs of step t for a lane program ((S, BLOCK_D) pointer tensors): u, delta (and z) of its channels, and the
    NS = N / S values of B_t (and C_t) that each split of the states needs, as tuples (B / C with unit stride along
    N: B_p + t * sB is step t's row; a reversed scan passes views at the last step and negative step strides), and
    with MEAN the y already stored at step t (loaded with the others, ahead of its use).
    Unmasked: t is clamped to L - 1 (the caller makes steps past its range no-ops)."""
    t = tl.minimum(t, L - 1)
    u = tl.load(u_p + t * su).to(tl.float32)
    dt = tl.load(dl_p + t * sdl).to(tl.float32)
    zz = u
    if HAS_Z:
        zz = tl.load(z_p + t * sz).to(tl.float32)
    Bt = _lane_row(B_p + t * sB, NS, S, BLOCK_D, VEC)
    Ct = ()
    if HAS_C:
        Ct = _lane_row(C_p + t * sC, NS, S, BLOCK_D, VEC)
    yo = u
    if MEAN:
        yo = tl.load(y_p + t * sy).to(tl.float32)
    return u, dt, zz, yo, Bt, Ct


@triton.jit
def _lane_step(h, u, dt, zz, yo, Bt, Ct, v, A2, Dv, bias, y_p, sy, t, first,
               NS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
               SOFTPLUS: tl.constexpr, STORE_Y: tl.constexpr, FAST: tl.constexpr):
    """One step of a lane program (a no-op when v is False). Tensors are (S, BLOCK_D): channel d's N states are split
    over S threads, NS = N / S each (h: a tuple of NS tensors), so a step is, per state, one exp2 and three
    multiply-adds, and y needs a sum over the S threads only (none for S = 1). The split s = 0 stores y (first);
    STORE_Y 2: the mean of y and yo, the value already there (a bidirectional mixer's two directions, one pass).
    Returns the new states and the step size."""
    dt = _step_size(dt, bias, v, HAS_BIAS, SOFTPLUS, FAST)
    du = dt * u
    y = tl.zeros_like(u)
    hn = ()
    for i in tl.static_range(NS):
        hi = tl.exp2(dt * A2[i]) * h[i] + du * Bt[i]
        hn = hn + (hi,)
        if STORE_Y:
            y += hi * Ct[i]
    if STORE_Y:
        y = _skip_and_gate(tl.sum(y, axis=0, keep_dims=True), u, zz, Dv, HAS_D, HAS_Z)
        if STORE_Y == 2:
            y = 0.5 * (y + yo)
        tl.store(y_p + t * sy, y.to(y_p.dtype.element_ty), mask=first & v)
    return hn, dt


@triton.jit
def _lane_block(pid_b, pid_d, dim, dg, A_ptr, bias_ptr, D_ptr, N: tl.constexpr, S: tl.constexpr,
                HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, BLOCK_D: tl.constexpr, A_IS_LOG: tl.constexpr):
    """A lane program's channels d (1, BLOCK_D), the first state of each split k0 (S, 1), the group g of B/C (BLOCK_D
    divides dim // G), A * log2(e) as a tuple of N / S (S, BLOCK_D) fp32 tensors (A = -exp(A_log) from A_log when
    A_IS_LOG), delta_bias and D (zeros without them) and the (batch, channel) rows (int64)."""
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    k0 = (tl.arange(0, S) * (N // S))[:, None]
    g = (pid_d * BLOCK_D) // dg
    A2 = ()
    for i in tl.static_range(N // S):
        a = tl.load(A_ptr + d * N + k0 + i).to(tl.float32)
        if A_IS_LOG:
            a = -tl.exp(a)
        A2 = A2 + (a * 1.4426950408889634,)
    zero = tl.zeros((S, BLOCK_D), dtype=tl.float32)
    bias = zero
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d + k0 * 0).to(tl.float32)
    Dv = zero
    if HAS_D:
        Dv = tl.load(D_ptr + d + k0 * 0).to(tl.float32)
    row = pid_b.to(tl.int64) * dim + d + k0 * 0
    return d + k0 * 0, k0, g, A2, bias, Dv, row


@triton.jit
def _scan_fwd_lane_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    y_ptr, hlast_ptr, states_ptr, hend_ptr, S_ptr, save_ptr,
    dim, L, dg, nchunks, CHUNK, nsave,
    su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sy_b, sy_d, sy_l, sB_b, sB_g, sB_l, sC_b, sC_g, sC_l,
    N: tl.constexpr, S: tl.constexpr, VEC: tl.constexpr, FAST: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, MODE: tl.constexpr, BLOCK_D: tl.constexpr, A_IS_LOG: tl.constexpr, MEAN: tl.constexpr,
    SAVE_EVERY: tl.constexpr = 0,
):
    """Inference forward with the states in registers, N / S per thread ("lanes"): a program takes BLOCK_D channels of
    one batch row and one B/C group, S threads a channel, and keeps each thread's N / S states as a tuple of
    (S, BLOCK_D) tensors, so a step is, per state, one exp2 and three multiply-adds with no cross-thread traffic but
    the sum of y over the S threads. B_t and C_t (batch, G, N, L), unit stride along N: a row of N values a step,
    loads shared by the program. MODE 0: walk the sequence from h0, write y and the last state. MODE 1 (time-parallel
    pass 1, one program per chunk = program_id(2)): the chunk's end state from zero and its summed step sizes
    (hend (batch, dim, nchunks, N), S (batch, dim, nchunks)): it maps a start state h to exp(A S) h + hend. MODE 2
    (pass 3): rescan chunk program_id(2) from states[chunk] (pass 2, _chunk_carry_kernel, wrote them), write y.
    MEAN: y_ptr holds a y already (the other direction's) and each step stores the mean of the two.
    SAVE_EVERY (MODE 0 / 2, CHUNK a multiple of it where there are chunks): the state before every SAVE_EVERY steps
    into save_ptr (batch, dim, nsave, N), the starts of _scan_bwd_tile_kernel's tiles (training at few channels)."""
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    c_begin = tl.program_id(2)
    NS: tl.constexpr = N // S
    d, k0, g, A2, bias, Dv, row = _lane_block(pid_b, pid_d, dim, dg, A_ptr, bias_ptr, D_ptr, N, S, HAS_BIAS, HAS_D,
                                              BLOCK_D, A_IS_LOG)
    first = k0 == 0
    b64 = pid_b.to(tl.int64)
    d64 = d.to(tl.int64)
    u_p, dl_p, z_p, y_p = _row_ptrs(b64, d64, u_ptr, su_b, su_d, dl_ptr, sdl_b, sdl_d, z_ptr, sz_b, sz_d, y_ptr, sy_b,
                                    sy_d)
    G = dim // dg
    VW: tl.constexpr = 8 if VEC == 16 else VEC  # values a 16-byte load
    if VEC > 1:  # the wrapper checked that B / C's strides are whole 16-byte runs; written as multiples of VEC for
        # the compiler, which otherwise proves its vector loads aligned only from strides that are multiples of 16
        # elements (a Vim-S x_proj row is 56: scalar loads, and a kernel 2x slower on an H200; tl.multiple_of on
        # these scalars did not change the PTX)
        sB_b, sB_g, sB_l = sB_b // VW * VW, sB_g // VW * VW, sB_l // VW * VW
        sC_b, sC_g, sC_l = sC_b // VW * VW, sC_g // VW * VW, sC_l // VW * VW
    B_p = B_ptr + b64 * sB_b + g * sB_g + (k0 + d * 0)  # the split's first state of step 0's row
    C_p = C_ptr + b64 * sC_b + g * sC_g + (k0 + d * 0)
    st_p = row * N + k0  # (batch, channel, state) of a (batch, dim, N) tensor
    if MODE != 0:
        st_p = (row * nchunks + c_begin) * N + k0  # of a (batch, dim, nchunks, N) tensor
    h = ()
    for i in tl.static_range(NS):
        if MODE == 2:
            h = h + (tl.load(states_ptr + st_p + i),)
        elif MODE == 0 and HAS_H0:
            h = h + (tl.load(h0_ptr + st_p + i).to(tl.float32),)
        else:
            h = h + (tl.zeros((S, BLOCK_D), dtype=tl.float32),)
    s = tl.zeros((S, BLOCK_D), dtype=tl.float32)
    STORE_Y: tl.constexpr = 0 if MODE == 1 else (2 if MEAN else 1)
    LD_Z: tl.constexpr = HAS_Z and MODE != 1
    t0 = c_begin * CHUNK  # (MODE 0: one chunk, CHUNK = L)
    t1 = tl.minimum(t0 + CHUNK, L)
    # a fixed trip count (CHUNK; steps past t1 are no-ops): bounds derived from program ids would not work in triton's
    # CPU interpreter. Two steps per iteration, the loads of the next two issued before their arithmetic.
    MEAN_LD: tl.constexpr = STORE_Y == 2
    u0, d0, z0, y0, B0, C0 = _lane_ld(u_p, su_l, dl_p, sdl_l, z_p, sz_l, y_p, sy_l, B_p, sB_l, C_p, sC_l, t0, L, NS, S,
                                      BLOCK_D, LD_Z, STORE_Y, VEC, MEAN_LD)
    u1, d1, z1, y1, B1, C1 = _lane_ld(u_p, su_l, dl_p, sdl_l, z_p, sz_l, y_p, sy_l, B_p, sB_l, C_p, sC_l, t0 + 1, L, NS,
                                      S, BLOCK_D, LD_Z, STORE_Y, VEC, MEAN_LD)
    if SAVE_EVERY > 0:
        sv_p = row * nsave * N + k0  # (batch, channel, state) of a (batch, dim, nsave, N) tensor
    for k in range(0, CHUNK, 2):
        t = t0 + k
        if SAVE_EVERY > 0:  # the state before step t, t0 being a multiple of SAVE_EVERY
            if k % SAVE_EVERY == 0:
                for i in tl.static_range(NS):
                    tl.store(save_ptr + sv_p + (t // SAVE_EVERY) * N + i, h[i], mask=(k0 * 0 + t) < t1)
        u2, d2, z2, y2, B2, C2 = _lane_ld(u_p, su_l, dl_p, sdl_l, z_p, sz_l, y_p, sy_l, B_p, sB_l, C_p, sC_l, t + 2, L,
                                          NS, S, BLOCK_D, LD_Z, STORE_Y, VEC, MEAN_LD)
        u3, d3, z3, y3, B3, C3 = _lane_ld(u_p, su_l, dl_p, sdl_l, z_p, sz_l, y_p, sy_l, B_p, sB_l, C_p, sC_l, t + 3, L,
                                          NS, S, BLOCK_D, LD_Z, STORE_Y, VEC, MEAN_LD)
        h, e0 = _lane_step(h, u0, d0, z0, y0, B0, C0, t < t1, A2, Dv, bias, y_p, sy_l, t, first, NS, HAS_D, HAS_Z,
                           HAS_BIAS, SOFTPLUS, STORE_Y, FAST)
        h, e1 = _lane_step(h, u1, d1, z1, y1, B1, C1, t + 1 < t1, A2, Dv, bias, y_p, sy_l, t + 1, first, NS, HAS_D,
                           HAS_Z, HAS_BIAS, SOFTPLUS, STORE_Y, FAST)
        if MODE == 1:
            s += e0 + e1
        u0, d0, z0, y0, B0, C0 = u2, d2, z2, y2, B2, C2
        u1, d1, z1, y1, B1, C1 = u3, d3, z3, y3, B3, C3
    if MODE == 1:
        for i in tl.static_range(NS):
            tl.store(hend_ptr + st_p + i, h[i])
        tl.store(S_ptr + row * nchunks + c_begin, s, mask=first)
    elif MODE == 0:
        for i in tl.static_range(NS):
            tl.store(hlast_ptr + st_p + i, h[i])


@triton.jit
def _chunk_end_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, bias_ptr, hend_ptr, S_ptr,
    dim, L, dg, G, N, nchunks, CHUNK,
    su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sB_b, sB_g, sB_n, sB_l,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, N_P2: tl.constexpr,
):
    """Time-parallel forward, pass 1, one program per (batch x group, channel block, chunk): the chunk's end state
    from a zero start state, hend (batch, dim, nchunks, N), and its summed step sizes S (batch, dim, nchunks): the
    chunk maps a start state h to exp(A S) h + hend."""
    pid_bg = tl.program_id(0)
    pid_d = tl.program_id(1)
    c = tl.program_id(2)
    b, g, d, mask_d, n, mask_n, mask_dn, A, bias, row = _channel_block(pid_bg, pid_d, dim, G, dg, N, A_ptr, bias_ptr,
                                                                       HAS_BIAS, BLOCK_D, N_P2)
    A2 = A * 1.4426950408889634
    b64 = b.to(tl.int64)
    d64 = d.to(tl.int64)
    u_p = u_ptr + b64 * su_b + d64 * su_d
    dl_p = dl_ptr + b64 * sdl_b + d64 * sdl_d
    B_p = B_ptr + b64 * sB_b + g.to(tl.int64) * sB_g + n.to(tl.int64) * sB_n
    t0 = c * CHUNK
    t1 = tl.minimum(t0 + CHUNK, L)
    h = tl.zeros((BLOCK_D, N_P2), dtype=tl.float32)
    s = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for k in range(0, CHUNK, 4):  # 4 steps per iteration, their loads first; steps past t1 are masked no-ops
        t = t0 + k
        u0, d0, z0, B0, C0 = _ld_fwd(u_p, su_l, dl_p, sdl_l, u_p, su_l, B_p, sB_l, B_p, sB_l, t, t1, mask_d, mask_n,
                                     False)
        u1, d1, z1, B1, C1 = _ld_fwd(u_p, su_l, dl_p, sdl_l, u_p, su_l, B_p, sB_l, B_p, sB_l, t + 1, t1, mask_d,
                                     mask_n, False)
        u2, d2, z2, B2, C2 = _ld_fwd(u_p, su_l, dl_p, sdl_l, u_p, su_l, B_p, sB_l, B_p, sB_l, t + 2, t1, mask_d,
                                     mask_n, False)
        u3, d3, z3, B3, C3 = _ld_fwd(u_p, su_l, dl_p, sdl_l, u_p, su_l, B_p, sB_l, B_p, sB_l, t + 3, t1, mask_d,
                                     mask_n, False)
        h, e0 = _step_fwd(h, u0, d0, z0, B0, C0, t, t1, A2, bias, bias, u_p, su_l, mask_d, False, False, HAS_BIAS,
                          SOFTPLUS, False)
        h, e1 = _step_fwd(h, u1, d1, z1, B1, C1, t + 1, t1, A2, bias, bias, u_p, su_l, mask_d, False, False,
                          HAS_BIAS, SOFTPLUS, False)
        h, e2 = _step_fwd(h, u2, d2, z2, B2, C2, t + 2, t1, A2, bias, bias, u_p, su_l, mask_d, False, False,
                          HAS_BIAS, SOFTPLUS, False)
        h, e3 = _step_fwd(h, u3, d3, z3, B3, C3, t + 3, t1, A2, bias, bias, u_p, su_l, mask_d, False, False,
                          HAS_BIAS, SOFTPLUS, False)
        s += (e0 + e1) + (e2 + e3)
    tl.store(hend_ptr + (row[:, None] * nchunks + c) * N + n[None, :], h, mask=mask_dn)
    tl.store(S_ptr + row * nchunks + c, s, mask=mask_d)


@triton.jit
def _chunk_carry_kernel(
    A_ptr, S_ptr, local_ptr, init_ptr, starts_ptr, final_ptr,
    dim, N, nchunks, rows,
    HAS_INIT: tl.constexpr, REVERSE: tl.constexpr, BLOCK_R: tl.constexpr, N_P2: tl.constexpr, A_IS_LOG: tl.constexpr,
):
    """Time-parallel pass 2, sequential over chunks, one program per BLOCK_R (batch, channel) rows (A_IS_LOG: A holds
    A_log, A = -exp(A_log)): the value
    entering each chunk, starts (batch, dim, nchunks, N), from h_in(next) = exp(A S_c) h_in(c) + local_c, beginning
    at init (or 0); final = the value leaving the last chunk. Forward: the chunks' start states and the last state.
    Backward (REVERSE, chunks from the end): the adjoint carried into each chunk from the right, and dL/d(h0)."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = r < rows
    d = r % dim
    n = tl.arange(0, N_P2)
    mask = mask_r[:, None] & (n < N)[None, :]
    A2 = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=mask, other=0.0).to(tl.float32)
    if A_IS_LOG:
        A2 = -tl.exp(A2)
    A2 = A2 * 1.4426950408889634
    r64 = r.to(tl.int64)
    if HAS_INIT:
        h = tl.load(init_ptr + r64[:, None] * N + n[None, :], mask=mask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK_R, N_P2), dtype=tl.float32)
    for i in range(nchunks):
        if REVERSE:
            c = nchunks - 1 - i
        else:
            c = i
        off = (r64[:, None] * nchunks + c) * N + n[None, :]
        tl.store(starts_ptr + off, h, mask=mask)
        sc = tl.load(S_ptr + r64 * nchunks + c, mask=mask_r, other=0.0)
        h = tl.exp2(A2 * sc[:, None]) * h + tl.load(local_ptr + off, mask=mask, other=0.0)
    tl.store(final_ptr + r64[:, None] * N + n[None, :], h, mask=mask)


@triton.jit
def _linear_combine(a1, b1, a2, b2):
    """Composition of two steps h -> a h + b (first (a1, b1), then (a2, b2)): the operator of tl.associative_scan."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _tile_rows(b64, d64, g, d, D_ptr, bias_ptr, u_ptr, su_b, su_d, dl_ptr, sdl_b, sdl_d, z_ptr, sz_b, sz_d, y_ptr,
               sy_b, sy_d, B_ptr, sB_b, sB_g, C_ptr, sC_b, sC_g, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    """A time-tiled forward program's (batch b64, channel d64 of group g): D and delta_bias (0 without them) and the
    pointers at step 0 of its u, delta, z, y and of its group's B / C."""
    Dv = 0.0
    if HAS_D:
        Dv = tl.load(D_ptr + d).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d).to(tl.float32)
    u_p, dl_p, z_p, y_p = _row_ptrs(b64, d64, u_ptr, su_b, su_d, dl_ptr, sdl_b, sdl_d, z_ptr, sz_b, sz_d, y_ptr, sy_b,
                                    sy_d)
    return (Dv, bias, u_p, dl_p, z_p, y_p, B_ptr + b64 * sB_b + g.to(tl.int64) * sB_g,
            C_ptr + b64 * sC_b + g.to(tl.int64) * sC_g)


@triton.jit
def _tile_steps(u_p, su_l, dl_p, sdl_l, t, mt, bias, SOFTPLUS: tl.constexpr):
    """u, the step sizes dt and dt u of a tile's steps t (fp32; steps past L, mt False: dt = 0, so a = 1 and b = 0 and
    the state passes through unchanged)."""
    u = tl.load(u_p + t * su_l, mask=mt, other=0.0).to(tl.float32)
    dt = tl.load(dl_p + t * sdl_l, mask=mt, other=0.0).to(tl.float32) + bias
    if SOFTPLUS:
        dt = _softplus(dt)
    dt = tl.where(mt, dt, 0.0)
    return u, dt, dt * u


@triton.jit
def _tile_store_y(y, u, Dv, z_p, sz_l, y_p, sy_l, t, mt, HAS_D: tl.constexpr, HAS_Z: tl.constexpr):
    """y + D u, times silu(z), stored at a tile's steps t."""
    zz = u
    if HAS_Z:
        zz = tl.load(z_p + t * sz_l, mask=mt, other=0.0).to(tl.float32)
    y = _skip_and_gate(y, u, zz, Dv, HAS_D, HAS_Z)
    tl.store(y_p + t * sy_l, y.to(y_p.dtype.element_ty), mask=mt)


@triton.jit
def _scan_fwd_tile_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, y_ptr, hlast_ptr, states_ptr,
    dim, L, dg, G, N, nchunks,
    su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sy_b, sy_d, sy_l,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, SAVE_STATES: tl.constexpr, BLOCK_T: tl.constexpr, N_P2: tl.constexpr,
    A_IS_LOG: tl.constexpr, SAVE_EVERY: tl.constexpr,
):
    """Forward parallel in time inside a program (mamba_ssm's scheme): one program per
    (batch, channel) walks the sequence in tiles of BLOCK_T consecutive steps (coalesced loads of u / delta / z and of
    B / C rows); per state n, the tile's recurrence h_t = a_t h_{t-1} + b_t is one tl.associative_scan (each thread
    scans its consecutive steps, warps and then the block join them), with the previous tile's state folded into the
    first step. SAVE_STATES (training): the state before every SAVE_EVERY steps (a power of two dividing BLOCK_T: the
    backward's tile) goes to states (batch, dim, nchunks, N), for _scan_bwd_tile_kernel."""
    pid = tl.program_id(0)
    b = pid // dim
    d = pid % dim
    g = d // dg
    b64 = b.to(tl.int64)
    d64 = d.to(tl.int64)
    n = tl.arange(0, N_P2)
    mask_n = n < N
    offs = tl.arange(0, BLOCK_T)
    first = offs == 0
    last = offs == BLOCK_T - 1
    row = b64 * dim + d64
    # the state lives in hlast (N fp32 per program, L1-resident): per state, a scalar load before the tile's scan
    # and a one-thread store of the scan's last element after it; a barrier per tile makes the stores visible
    h_p = hlast_ptr + row * N
    if HAS_H0:
        tl.store(h_p + n, tl.load(h0_ptr + row * N + n, mask=mask_n, other=0.0).to(tl.float32), mask=mask_n)
    else:
        tl.store(h_p + n, tl.zeros((N_P2,), dtype=tl.float32), mask=mask_n)
    tl.debug_barrier()
    Dv, bias, u_p, dl_p, z_p, y_p, B_p, C_p = _tile_rows(
        b64, d64, g, d, D_ptr, bias_ptr, u_ptr, su_b, su_d, dl_ptr, sdl_b, sdl_d, z_ptr, sz_b, sz_d, y_ptr, sy_b, sy_d,
        B_ptr, sB_b, sB_g, C_ptr, sC_b, sC_g, HAS_D, HAS_BIAS)
    for t0 in range(0, L, BLOCK_T):
        t = t0 + offs
        mt = t < L
        u, dt, du = _tile_steps(u_p, su_l, dl_p, sdl_l, t, mt, bias, SOFTPLUS)
        y = tl.zeros((BLOCK_T,), dtype=tl.float32)
        for i in range(N):
            a_i = tl.load(A_ptr + d64 * N + i).to(tl.float32)
            if A_IS_LOG:
                a_i = -tl.exp(a_i)
            a_i = a_i * 1.4426950408889634
            h_i = tl.load(h_p + i)
            if SAVE_STATES:
                tl.store(states_ptr + (row * nchunks + t0 // SAVE_EVERY) * N + i, h_i)
            Bn = tl.load(B_p + i * sB_n + t * sB_l, mask=mt, other=0.0).to(tl.float32)
            Cn = tl.load(C_p + i * sC_n + t * sC_l, mask=mt, other=0.0).to(tl.float32)
            a = tl.exp2(dt * a_i)
            bb = du * Bn
            bb = tl.where(first, bb + a * h_i, bb)
            _, hs = tl.associative_scan((a, bb), 0, _linear_combine)
            y += hs * Cn
            tl.store(h_p + i + offs * 0, hs, mask=last)
            if SAVE_STATES and SAVE_EVERY < BLOCK_T:  # the states inside the tile: after steps SAVE_EVERY - 1, ...
                after = (offs + 1) % SAVE_EVERY == 0
                tl.store(states_ptr + (row * nchunks + (t + 1) // SAVE_EVERY) * N + i, hs,
                         mask=after & (offs < BLOCK_T - 1) & (t + 1 < L))
        _tile_store_y(y, u, Dv, z_p, sz_l, y_p, sy_l, t, mt, HAS_D, HAS_Z)
        tl.debug_barrier()


@triton.jit
def _cols4(x):
    """The 4 columns of x (R0, 4) (its last dimension in one thread's registers) as a tuple of (R0,) tensors, split
    apart in registers."""
    R0: tl.constexpr = x.shape[0]
    even, odd = tl.split(tl.reshape(x, (R0, 2, 2)))  # (x0, x2), (x1, x3)
    x0, x2 = tl.split(even)
    x1, x3 = tl.split(odd)
    return x0, x1, x2, x3


@triton.jit
def _join4(x0, x1, x2, x3):
    """The inverse of _cols4: four (R0,) tensors as the columns of one (R0, 4)."""
    R0: tl.constexpr = x0.shape[0]
    return tl.reshape(tl.join(tl.join(x0, x2), tl.join(x1, x3)), (R0, 4))


@triton.jit
def _cols8(x):
    """The 8 columns of x (R0, 8) as a tuple of (R0,) tensors (see _cols4)."""
    R0: tl.constexpr = x.shape[0]
    even, odd = tl.split(tl.reshape(x, (R0, 4, 2)))  # (x0, x2, x4, x6), (x1, x3, x5, x7)
    x0, x2, x4, x6 = _cols4(even)
    x1, x3, x5, x7 = _cols4(odd)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _join8(x0, x1, x2, x3, x4, x5, x6, x7):
    """The inverse of _cols8."""
    R0: tl.constexpr = x0.shape[0]
    return tl.reshape(tl.join(_join4(x0, x2, x4, x6), _join4(x1, x3, x5, x7)), (R0, 8))


@triton.jit
def _seg_cols(x, R: tl.constexpr):
    """x (32, R, 8), lane l's steps [8 R l, 8 R (l + 1)) (its R x 8 values in its registers), as the tuple of its
    8 R columns in step order, (32,) tensors (a value a lane)."""
    if R == 1:
        c = _cols8(tl.reshape(x, (32, 8)))
    else:
        x0, x1 = tl.split(tl.permute(x, (0, 2, 1)))
        c = _cols8(x0) + _cols8(x1)
    return c


@triton.jit
def _seg_join(c, R: tl.constexpr):
    """The inverse of _seg_cols."""
    y0 = _join8(c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7])
    if R == 1:
        y = tl.reshape(y0, (32, 1, 8))
    else:
        y1 = _join8(c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15])
        y = tl.permute(tl.join(y0, y1), (0, 2, 1))
    return y


@triton.jit
def _bf16_words(w):
    """bf16 pairs read as 32-bit words w (..., K) as fp32 (..., 2 K), in step order (see _bf16_lo / _bf16_hi)."""
    return tl.reshape(tl.join(_bf16_lo(w), _bf16_hi(w)), w.shape[:-1] + (2 * w.shape[-1],))


@triton.jit
def _seg_bc_raw(p, n_stride, i, t, s_l, mt, tw, L, WORDS: tl.constexpr):
    """B_t or C_t of state i at a lane tile's steps t (32, R, 8) as stored (p: the row's pointer at step 0 of state 0;
    mt: the steps to read, t < L; WORDS: bf16 with unit step stride and L even, read as 32-bit words at tw (32, R, 4)):
    L is the rows' length, which a staged copy pads (see _staged_bc); _seg_bc_f32 widens them."""
    if WORDS:
        x = tl.load((p + i * n_stride).to(tl.pointer_type(tl.int32), bitcast=True) + tw, mask=tw < L // 2, other=0)
    else:
        x = tl.load(p + i * n_stride + t * s_l, mask=mt, other=0.0)
    return x


@triton.jit
def _seg_bc_f32(x, WORDS: tl.constexpr):
    """_seg_bc_raw's values in fp32, (32, R, 8) (see _bf16_words)."""
    if WORDS:
        y = _bf16_words(x)
    else:
        y = x.to(tl.float32)
    return y


@triton.jit
def _lane_shift_ref(x, K: tl.constexpr):
    """x (32,) with lane l taking lane l + K's value, lanes whose source falls outside 0 .. 31 their own: the warp
    shuffles' stand-in in triton's CPU interpreter (a one-hot sum: triton before 3.3 has no tl.gather, and resolves
    every name a kernel's functions use even in branches its constexprs prune)."""
    lane = tl.arange(0, 32)
    src = lane + K
    src = tl.where((src >= 0) & (src < 32), src, lane)
    return tl.sum(tl.where(lane[:, None] == src[None, :], x[:, None], 0.0), axis=0)


@triton.jit
def _lane_up(x, FAST: tl.constexpr):
    """x (32,) (a value a lane) moved up one lane: lane l gets lane l - 1's value, lane 0 its own (a warp shuffle;
    without FAST, for triton's CPU interpreter, _lane_shift_ref)."""
    if FAST:
        y = tl.inline_asm_elementwise("shfl.sync.up.b32 $0, $1, 1, 0, -1;", "=r,r", [x], dtype=tl.float32,
                                      is_pure=True, pack=1)
    else:
        y = _lane_shift_ref(x, -1)
    return y


@triton.jit
def _lane_down(x, K: tl.constexpr, FAST: tl.constexpr):
    """x (32,) moved down K lanes (K = 1, 2, 4, 8 or 16): lane l gets lane l + K's value, lanes past 31 their own (a
    warp shuffle; without FAST, for triton's CPU interpreter, _lane_shift_ref)."""
    if FAST:  # (the offset a register operand: ptxas folds the constant)
        y = tl.inline_asm_elementwise("shfl.sync.down.b32 $0, $1, $2, 31, -1;", "=r,r,r",
                                      [x, tl.full(x.shape, K, tl.int32)], dtype=tl.float32, is_pure=True, pack=1)
    else:
        y = _lane_shift_ref(x, K)
    return y


@triton.jit
def _warp_scan_rev(a, b, FAST: tl.constexpr):
    """Inclusive scan from the right of the maps g -> a g + b held a lane ((32,) each): lane l ends with the map of
    lanes l .. 31 composed (lane l's applied last), by five levels of shuffles down. tl.associative_scan(reverse=True)
    reverses the lanes by butterflies around a forward scan: 25 instead of 10 shuffles for one value a lane."""
    lane = tl.arange(0, 32)
    for k in tl.static_range(5):
        a_o = _lane_down(a, 1 << k, FAST)
        b_o = _lane_down(b, 1 << k, FAST)
        ok = lane + (1 << k) < 32
        b = tl.where(ok, b + a * b_o, b)
        a = tl.where(ok, a * a_o, a)
    return a, b


@triton.jit
def _scan_fwd_seg_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, y_ptr, hlast_ptr, states_ptr,
    dim, L, dg, G, N, nchunks,
    su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sy_b, sy_d, sy_l,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, LBC,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, SAVE_STATES: tl.constexpr, R: tl.constexpr, A_IS_LOG: tl.constexpr,
    SAVE_EVERY: tl.constexpr, FAST: tl.constexpr, WORDS: tl.constexpr, STAGES: tl.constexpr, PREFETCH: tl.constexpr,
):
    """Forward in one-warp programs, one per (batch, channel), over tiles of 256 R steps, each lane R x 8 consecutive
    steps in its registers (mamba_ssm's scheme, as a warp): per state n, (1) each lane's map h -> A_l h + H_l over its
    steps from zero, a sequential chain of multiply-adds (A_l = exp2(A_n sum dt) from the summed step sizes, one exp a
    lane); (2) one warp scan of those maps (five shuffle levels, the previous tile's state folded into lane 0's), moved
    up one lane: each lane's start state; (3) the lane's steps again from it, y += C h. 12.6 instructions a state and
    step (SASS, sm_90, R = 2, bf16 B / C read as words) against the 16.5 of _scan_fwd_tile_kernel, whose
    tl.associative_scan over 512 steps joins a lane's two 8-step runs by two warp scans and hands the tile's last state
    on through shared memory. SAVE_STATES (training): the state before every SAVE_EVERY steps (a multiple of 8 R
    dividing the tile) to states (batch, dim, nchunks, N). A state's scalars (A, the carried state) and its B / C are
    read one state ahead; STAGES > 1 pipelines the B / C loads through shared memory. LBC: the B / C rows' length, L
    or, for a staged copy (_staged_bc), L padded with zeros to a multiple of 32, so that their loads are 16-byte
    vectors at any L."""
    pid = tl.program_id(0)
    b = pid // dim
    d = pid % dim
    g = d // dg
    b64 = b.to(tl.int64)
    d64 = d.to(tl.int64)
    SEG: tl.constexpr = 8 * R
    BLOCK_T: tl.constexpr = 32 * SEG
    offs = (tl.arange(0, 32)[:, None, None] * SEG + tl.arange(0, R)[None, :, None] * 8
            + tl.arange(0, 8)[None, None, :])  # (32, R, 8): lane l holds steps [SEG l, SEG (l + 1)) of a tile
    offs_w = (tl.arange(0, 32)[:, None, None] * (SEG // 2) + tl.arange(0, R)[None, :, None] * 4
              + tl.arange(0, 4)[None, None, :])  # (32, R, 4): the same steps as words of two (WORDS)
    lane = tl.arange(0, 32)
    row = b64 * dim + d64
    h_p = hlast_ptr + row * N  # the state between tiles: N fp32 a program, L1-resident
    for i in range(N):
        if HAS_H0:
            tl.store(h_p + i, tl.load(h0_ptr + row * N + i).to(tl.float32))
        else:
            tl.store(h_p + i, 0.0)
    tl.debug_barrier()
    Dv, bias, u_p, dl_p, z_p, y_p, B_p, C_p = _tile_rows(
        b64, d64, g, d, D_ptr, bias_ptr, u_ptr, su_b, su_d, dl_ptr, sdl_b, sdl_d, z_ptr, sz_b, sz_d, y_ptr, sy_b, sy_d,
        B_ptr, sB_b, sB_g, C_ptr, sC_b, sC_g, HAS_D, HAS_BIAS)
    for t0 in range(0, L, BLOCK_T):
        t = t0 + offs
        tw = t0 // 2 + offs_w
        mt = t < L
        mbc = t < LBC
        u, dt, du = _tile_steps(u_p, su_l, dl_p, sdl_l, t, mt, bias, SOFTPLUS)
        dtc = _seg_cols(dt, R)
        sdt = dtc[0]
        for j in tl.static_range(1, SEG):
            sdt += dtc[j]
        y = tl.zeros((32, R, 8), dtype=tl.float32)
        a_nx = tl.load(A_ptr + d64 * N)  # a state's scalars (and with PREFETCH its B / C) are read one state ahead
        c_nx = tl.load(h_p)
        if PREFETCH:
            B_nx = _seg_bc_raw(B_p, sB_n, 0, t, sB_l, mbc, tw, LBC, WORDS)
            C_nx = _seg_bc_raw(C_p, sC_n, 0, t, sC_l, mbc, tw, LBC, WORDS)
        for i in tl.range(0, N, num_stages=STAGES):
            a_i = a_nx.to(tl.float32)
            carry = c_nx
            nxt = tl.minimum(i + 1, N - 1)
            a_nx = tl.load(A_ptr + d64 * N + nxt)
            c_nx = tl.load(h_p + nxt)  # (the last state's reads its own, unused)
            if A_IS_LOG:
                a_i = -tl.exp(a_i)
            a_i = a_i * 1.4426950408889634
            if PREFETCH:
                Bn = _seg_bc_f32(B_nx, WORDS)
                Cn = _seg_bc_f32(C_nx, WORDS)
                B_nx = _seg_bc_raw(B_p, sB_n, nxt, t, sB_l, mbc, tw, LBC, WORDS)
                C_nx = _seg_bc_raw(C_p, sC_n, nxt, t, sC_l, mbc, tw, LBC, WORDS)
            else:
                Bn = _seg_bc_f32(_seg_bc_raw(B_p, sB_n, i, t, sB_l, mbc, tw, LBC, WORDS), WORDS)
                Cn = _seg_bc_f32(_seg_bc_raw(C_p, sC_n, i, t, sC_l, mbc, tw, LBC, WORDS), WORDS)
            ac = _seg_cols(tl.exp2(dt * a_i), R)
            bc = _seg_cols(du * Bn, R)
            hl = bc[0]  # (1) the lane's steps from zero
            for j in tl.static_range(1, SEG):
                hl = ac[j] * hl + bc[j]
            al = tl.exp2(sdt * a_i)
            hl = tl.where(lane == 0, hl + al * carry, hl)  # lane 0 starts from the previous tile's state
            _, hend = tl.associative_scan((al, hl), 0, _linear_combine)  # (2) each lane's end state
            h = tl.where(lane == 0, carry, _lane_up(hend, FAST))  # its start state
            if SAVE_STATES:
                ts = t0 + lane * SEG
                tl.store(states_ptr + (row * nchunks + ts // SAVE_EVERY) * N + i, h,
                         mask=(ts % SAVE_EVERY == 0) & (ts < L))
            hc = ()
            for j in tl.static_range(SEG):  # (3) the lane's steps from its start state
                h = ac[j] * h + bc[j]
                hc = hc + (h,)
            y += _seg_join(hc, R) * Cn
            tl.store(h_p + i + lane * 0, hend, mask=lane == 31)
        _tile_store_y(y, u, Dv, z_p, sz_l, y_p, sy_l, t, mt, HAS_D, HAS_Z)
        tl.debug_barrier()


@triton.jit
def _bwd_lanes_state(a_n, h_i, carry_i, gA_old, Bn, Cn, dt, x, gy, ypre, gx, gdt, first, lane, FAST: tl.constexpr):
    """One state of _scan_bwd_tile_kernel's LANES tile for one channel (128 steps, lane l steps 4 l .. 4 l + 3): the
    states again (tl.associative_scan), the adjoint by lanes and shuffles down. Returns the tile's sums over states of
    y, dL/dx and dL/d(dt) with this state's terms added, its dA sum so far, a_{t0} g_{t0} (lane 0's) for the tile on
    the left, and the state's dB and dC terms (the caller adds them up over its channels, then into dB / dC)."""
    a = tl.exp2(dt * (a_n * 1.4426950408889634))
    xb = x * Bn
    _, hs = tl.associative_scan((a, tl.where(first, xb + a * h_i, xb)), 0, _linear_combine)
    ypre += hs * Cn
    c0, c1, c2, c3 = _cols4(tl.reshape(gy * Cn, (32, 4)))  # lane l's steps 4 l .. 4 l + 3 as 4 columns
    a0, a1c, a2, a3 = _cols4(tl.reshape(a, (32, 4)))
    a_next = _lane_down(a0, 1, FAST)  # a_{t+1} is a_t a column (or a lane) on; lane 31's is unused: the carry holds
    c3 = tl.where(lane == 31, c3 + carry_i, c3)  # a_{t1} g_{t1}
    gl = c0 + a1c * (c1 + a2 * (c2 + a3 * c3))  # the lane's map from zero, then the warp's from the right
    _, gfirst = _warp_scan_rev(a1c * a2 * a3 * a_next, gl, FAST)
    g3 = c3 + tl.where(lane == 31, 0.0, a_next * _lane_down(gfirst, 1, FAST))
    g2 = c2 + a3 * g3
    g1 = c1 + a2 * g2
    gs = tl.reshape(_join4(c0 + a1c * g1, g1, g2, g3), (128,))
    gdA = gs * (hs - xb)
    gx += gs * Bn
    gdt += gdA * a_n
    return ypre, gx, gdt, gA_old + tl.sum(gdA * dt, axis=0), a0 * gfirst, gs * x, gy * hs


@triton.jit
def _bwd_tile_in(u_p, su_l, dl_p, sdl_l, z_p, sz_l, gy_p, sgy_l, t, mt, bias, SOFTPLUS: tl.constexpr,
                 HAS_Z: tl.constexpr):
    """What the state loop of _scan_bwd_tile_kernel reads of a tile for one channel (fp32; steps past L: dt = 0, so
    a = 1 and x = 0): dt, the gradient at the gate's input gy and x = dt u (_bwd_tile_out reads the rest again)."""
    _, dt, x = _tile_steps(u_p, su_l, dl_p, sdl_l, t, mt, bias, SOFTPLUS)
    gy = tl.load(gy_p + t * sgy_l, mask=mt, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_p + t * sz_l, mask=mt, other=0.0).to(tl.float32)
        gy = gy * zz * tl.sigmoid(zz)
    return dt, gy, x


@triton.jit
def _bwd_tile_out(ypre, gx, gdt, dt, gy, Dv, bias, u_p, su_l, dl_p, sdl_l, z_p, sz_l, gy_p, sgy_l, gu_p, sgu_l, gdl_p,
                  sgdl_l, gz_p, sgz_l, t, mt, gD_acc, gbias_acc, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                  HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """A tile's gradients for one channel of _scan_bwd_tile_kernel from its sums over states (u, delta, z and the
    output's gradient read again: fewer registers held through the state loop): dL/du, dL/dz, dL/d(delta) stored;
    dL/dD and dL/d(delta_bias) added to the running sums, which it returns."""
    u = tl.load(u_p + t * su_l, mask=mt, other=0.0).to(tl.float32)
    gu = gx * dt
    if HAS_D:
        gu += gy * Dv
        gD_acc += tl.sum(gy * u, axis=0)
        ypre += Dv * u
    if HAS_Z:
        gout = tl.load(gy_p + t * sgy_l, mask=mt, other=0.0).to(tl.float32)
        zz = tl.load(z_p + t * sz_l, mask=mt, other=0.0).to(tl.float32)
        sig = tl.sigmoid(zz)
        gz = gout * ypre * sig * (1.0 + zz * (1.0 - sig))
        tl.store(gz_p + t * sgz_l, gz.to(gz_p.dtype.element_ty), mask=mt)
    tl.store(gu_p + t * sgu_l, gu.to(gu_p.dtype.element_ty), mask=mt)
    gdt = gdt + gx * u
    if SOFTPLUS:
        dl = tl.load(dl_p + t * sdl_l, mask=mt, other=0.0).to(tl.float32) + bias
        gdt = gdt * tl.sigmoid(dl)
    gdt = tl.where(mt, gdt, 0.0)
    tl.store(gdl_p + t * sgdl_l, gdt.to(gdl_p.dtype.element_ty), mask=mt)
    if HAS_BIAS:
        gbias_acc += tl.sum(gdt, axis=0)
    return gD_acc, gbias_acc


@triton.jit
def _bwd_state_reads(n, A_p, s_p, s_p1, c_p, gA_p, N, B_p, sB_n, C_p, sC_n, t, sB_l, sC_l, mt, CH2: tl.constexpr):
    """What _scan_bwd_tile_kernel reads for state n of a tile: A, the saved state, the carry and the dA sum of its
    channel (with CH2 the second channel's too: A's row N on, its carry and dA sum 2 N on; else the first's again,
    unused) and the tile's B / C rows."""
    a = tl.load(A_p + n)
    h = tl.load(s_p + n)
    c = tl.load(c_p + n)
    g = tl.load(gA_p + n)
    a1, h1, c1, g1 = a, h, c, g
    if CH2:
        a1 = tl.load(A_p + N + n)
        h1 = tl.load(s_p1 + n)
        c1 = tl.load(c_p + 2 * N + n)
        g1 = tl.load(gA_p + 2 * N + n)
    Bn = tl.load(B_p + n * sB_n + t * sB_l, mask=mt, other=0.0)
    Cn = tl.load(C_p + n * sC_n + t * sC_l, mask=mt, other=0.0)
    return a, h, c, g, a1, h1, c1, g1, Bn, Cn


@triton.jit
def _scan_bwd_tile_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, gy_ptr, ghl_ptr,
    gu_ptr, gdl_ptr, gz_ptr, gA_ptr, gB_ptr, gC_ptr, gD_ptr, gbias_ptr, carry_ptr,
    dim, L, dg, G, N, nchunks,
    su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sgy_b, sgy_d, sgy_l,
    sgu_b, sgu_d, sgu_l, sgdl_b, sgdl_d, sgdl_l, sgz_b, sgz_d, sgz_l,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_GHL: tl.constexpr, BLOCK_T: tl.constexpr, LANES: tl.constexpr, CH2: tl.constexpr, FAST: tl.constexpr,
):
    """Backward parallel in time inside a program, the mirror of _scan_fwd_tile_kernel: one program per
    (batch, channel; with CH2 two channels of one group) walks the tiles from the last, from the states its forward
    saved at tile starts. Per state n and tile: the states h_t again by one associative scan, then the adjoint
    g_t = C_t gy_t + a_{t+1} g_{t+1} from the right (the tile to the right hands on a_{t1} g_{t1} in carry_ptr,
    (batch, dim, 2, N) fp32: the carries, which end as dL/dh0, then the dA sums so far). Then, as in _step_bwd:
    dL/d(dt A)_t = g_t (h_t - x_t B_t) (= g_t a_t h_{t-1}), dB_t += g_t x_t and dC_t += gy_t h_t summed over channels
    with atomics into (batch, G, N, L) fp32 (coalesced along t), dA from per-state tile sums; dA, dD and d(delta_bias)
    are summed over the batch by atomics at the end into gA (dim, N), gD and gbias (dim,), zeroed by the caller. A
    state's scalars and B / C are read one state ahead.
    The atomics set the pace (H200, bf16: without them the one-channel kernel took 553 instead of 825 us at B8 D1536
    L1024): CH2 (with LANES) adds its two channels' dB / dC terms before one atomic a state and step: half the
    atomics, B / C read once for two channels (825 -> 558 us there; results/tile_bwd_channel_pairs_2026-11-29.log).
    Walking each program's states from its index mod N (so that the programs running together add into different
    rows) did not help: 558 -> 592 us.
    LANES (tiles of 128 steps in one warp): the adjoint by lanes of 4 steps, a_{t+1} a column or a lane on and five
    shuffles down (_bwd_lanes_state); else by tl.associative_scan(reverse=True), which reverses the lanes by
    butterflies around a forward scan (85 instead of 26 shuffles a state, SASS sm_90), with a_{t+1} from delta read
    one step ahead."""
    pid = tl.program_id(0)
    CPP: tl.constexpr = 2 if CH2 else 1  # channels a program: d, (with CH2) d + 1, of the same group
    b = pid // (dim // CPP)
    d = (pid % (dim // CPP)) * CPP
    g = d // dg
    b64 = b.to(tl.int64)
    d64 = d.to(tl.int64)
    g64 = g.to(tl.int64)
    offs = tl.arange(0, BLOCK_T)
    first = offs == 0
    last = offs == BLOCK_T - 1
    lane = tl.arange(0, 32)
    row = b64 * dim + d64
    c_p = carry_ptr + row * 2 * N  # a channel's carries, then its dA sums (with CH2 the second channel's, 2 N on)
    gA_p = c_p + N
    for i in range(N):
        for k in tl.static_range(2 if CH2 else 1):
            cv = 0.0
            if HAS_GHL:
                cv = tl.load(ghl_ptr + (row + k) * N + i).to(tl.float32)
            tl.store(c_p + k * 2 * N + i, cv)
            tl.store(gA_p + k * 2 * N + i, 0.0)
    tl.debug_barrier()
    Dv = 0.0
    Dv1 = 0.0
    if HAS_D:
        Dv = tl.load(D_ptr + d).to(tl.float32)
        if CH2:
            Dv1 = tl.load(D_ptr + d + 1).to(tl.float32)
    bias = 0.0
    bias1 = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d).to(tl.float32)
        if CH2:
            bias1 = tl.load(bias_ptr + d + 1).to(tl.float32)
    u_p, dl_p, z_p, gy_p, gu_p, gdl_p, gz_p = _bwd_row_ptrs(
        b64, d64, u_ptr, su_b, su_d, dl_ptr, sdl_b, sdl_d, z_ptr, sz_b, sz_d, gy_ptr, sgy_b, sgy_d,
        gu_ptr, sgu_b, sgu_d, gdl_ptr, sgdl_b, sgdl_d, gz_ptr, sgz_b, sgz_d)
    B_p = B_ptr + b64 * sB_b + g64 * sB_g
    C_p = C_ptr + b64 * sC_b + g64 * sC_g
    gBC = (b64 * G + g64) * N * L  # gB / gC: (batch, G, N, L) fp32
    gD_acc = 0.0
    gbias_acc = 0.0
    gD_acc1 = 0.0
    gbias_acc1 = 0.0
    for k in range(nchunks):
        c = nchunks - 1 - k
        t0 = c * BLOCK_T
        t = t0 + offs
        mt = t < L
        dt, gy, x = _bwd_tile_in(u_p, su_l, dl_p, sdl_l, z_p, sz_l, gy_p, sgy_l, t, mt, bias, SOFTPLUS, HAS_Z)
        ypre = tl.zeros((BLOCK_T,), dtype=tl.float32)
        gx = tl.zeros((BLOCK_T,), dtype=tl.float32)
        gdt = tl.zeros((BLOCK_T,), dtype=tl.float32)
        if CH2:
            dt1, gy1, x1 = _bwd_tile_in(u_p + su_d, su_l, dl_p + sdl_d, sdl_l, z_p + sz_d, sz_l, gy_p + sgy_d, sgy_l, t,
                                        mt, bias1, SOFTPLUS, HAS_Z)
            ypre1 = tl.zeros((BLOCK_T,), dtype=tl.float32)
            gx1 = tl.zeros((BLOCK_T,), dtype=tl.float32)
            gdt1 = tl.zeros((BLOCK_T,), dtype=tl.float32)
        dtn = dt  # (without LANES: dt a step on, for a_{t+1})
        if not LANES:
            _, dtn, _ = _tile_steps(u_p, su_l, dl_p, sdl_l, t + 1, (t + 1) < L, bias, SOFTPLUS)
        s_p = states_ptr + (row * nchunks + c) * N
        s_p1 = s_p + nchunks * N  # (CH2: the second channel's saved states)
        # a state's scalars and B / C are read in the iteration before its own
        a_nx, h_nx, c_nx, g_nx, a_nx1, h_nx1, c_nx1, g_nx1, B_nx, C_nx = _bwd_state_reads(
            0, A_ptr + d64 * N, s_p, s_p1, c_p, gA_p, N, B_p, sB_n, C_p, sC_n, t, sB_l, sC_l, mt, CH2)
        for i in range(N):
            a_n, h_i, carry_i, gA_old = a_nx.to(tl.float32), h_nx, c_nx, g_nx
            if CH2:
                a_n1, h_i1, carry_i1, gA_old1 = a_nx1.to(tl.float32), h_nx1, c_nx1, g_nx1
            Bn, Cn = B_nx.to(tl.float32), C_nx.to(tl.float32)
            a_nx, h_nx, c_nx, g_nx, a_nx1, h_nx1, c_nx1, g_nx1, B_nx, C_nx = _bwd_state_reads(
                tl.minimum(i + 1, N - 1), A_ptr + d64 * N, s_p, s_p1, c_p, gA_p, N, B_p, sB_n, C_p, sC_n, t, sB_l,
                sC_l, mt, CH2)  # (the last state's reads its own, unused)
            if LANES:
                ypre, gx, gdt, gA_i, hand, gBt, gCt = _bwd_lanes_state(a_n, h_i, carry_i, gA_old, Bn, Cn, dt, x, gy,
                                                                       ypre, gx, gdt, first, lane, FAST)
                if CH2:
                    ypre1, gx1, gdt1, gA_i1, hand1, gBt1, gCt1 = _bwd_lanes_state(
                        a_n1, h_i1, carry_i1, gA_old1, Bn, Cn, dt1, x1, gy1, ypre1, gx1, gdt1, first, lane, FAST)
                    gBt += gBt1
                    gCt += gCt1
            else:  # the adjoint by tl.associative_scan(reverse=True), a_{t+1} from delta read one step ahead
                a_i = a_n * 1.4426950408889634
                a = tl.exp2(dt * a_i)
                xb = x * Bn
                _, hs = tl.associative_scan((a, tl.where(first, xb + a * h_i, xb)), 0, _linear_combine)
                cg = gy * Cn
                _, gs = tl.associative_scan((tl.exp2(dtn * a_i), tl.where(last, cg + carry_i, cg)), 0,
                                            _linear_combine, reverse=True)
                gdA = gs * (hs - xb)
                ypre += hs * Cn
                gx += gs * Bn
                gdt += gdA * a_n
                gA_i = gA_old + tl.sum(gdA * dt, axis=0)
                hand = a * gs
                gBt = gs * x
                gCt = gy * hs
            tl.atomic_add(gB_ptr + gBC + i * L + t, gBt, mask=mt, sem="relaxed")
            tl.atomic_add(gC_ptr + gBC + i * L + t, gCt, mask=mt, sem="relaxed")
            tl.debug_barrier()  # every thread has read carry_i / gA_i before one thread overwrites them
            tl.store(gA_p + i + offs * 0, gA_i + offs * 0.0, mask=first)
            if LANES:
                tl.store(c_p + i + lane * 0, hand, mask=lane == 0)  # a_{t0} g_{t0}: handed to the tile on the left
                if CH2:
                    tl.store(gA_p + 2 * N + i + offs * 0, gA_i1 + offs * 0.0, mask=first)
                    tl.store(c_p + 2 * N + i + lane * 0, hand1, mask=lane == 0)
            else:
                tl.store(c_p + i + offs * 0, hand, mask=first)
        gD_acc, gbias_acc = _bwd_tile_out(ypre, gx, gdt, dt, gy, Dv, bias, u_p, su_l, dl_p, sdl_l, z_p, sz_l, gy_p,
                                          sgy_l, gu_p, sgu_l, gdl_p, sgdl_l, gz_p, sgz_l, t, mt, gD_acc, gbias_acc,
                                          HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS)
        if CH2:
            gD_acc1, gbias_acc1 = _bwd_tile_out(
                ypre1, gx1, gdt1, dt1, gy1, Dv1, bias1, u_p + su_d, su_l, dl_p + sdl_d, sdl_l, z_p + sz_d, sz_l,
                gy_p + sgy_d, sgy_l, gu_p + sgu_d, sgu_l, gdl_p + sgdl_d, sgdl_l, gz_p + sgz_d, sgz_l, t, mt, gD_acc1,
                gbias_acc1, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS)
        tl.debug_barrier()  # the carries / gA sums of this tile are visible to the next
    for i in range(N):  # the sums over the batch (the caller's buffers start at zero)
        tl.atomic_add(gA_ptr + d64 * N + i, tl.load(gA_p + i), sem="relaxed")
        if CH2:
            tl.atomic_add(gA_ptr + d64 * N + N + i, tl.load(gA_p + 2 * N + i), sem="relaxed")
    if HAS_D:
        tl.atomic_add(gD_ptr + d, gD_acc, sem="relaxed")
        if CH2:
            tl.atomic_add(gD_ptr + d + 1, gD_acc1, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(gbias_ptr + d, gbias_acc, sem="relaxed")
        if CH2:
            tl.atomic_add(gbias_ptr + d + 1, gbias_acc1, sem="relaxed")


@triton.jit
def _chunk_adjoint_kernel(
    dl_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, gy_ptr, local_ptr, S_ptr,
    dim, L, dg, G, N, nchunks, CHUNK,
    sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sgy_b, sgy_d, sgy_l, sC_b, sC_g, sC_n, sC_l,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr,
    N_P2: tl.constexpr,
):
    """Time-parallel backward, pass 1, one program per (batch x group, channel block, chunk): the adjoint carry that
    leaves the chunk to the left (exp(dt_t0 A) g_t0) when none enters it from the right, with
    g_t = gy_t C_t + exp(dt_{t+1} A) g_{t+1} (gy after the z gate), and the summed step sizes S."""
    pid_bg = tl.program_id(0)
    pid_d = tl.program_id(1)
    c = tl.program_id(2)
    b, g, d, mask_d, n, mask_n, mask_dn, A, bias, row = _channel_block(pid_bg, pid_d, dim, G, dg, N, A_ptr, bias_ptr,
                                                                       HAS_BIAS, BLOCK_D, N_P2)
    A2 = A * 1.4426950408889634
    b64 = b.to(tl.int64)
    d64 = d.to(tl.int64)
    dl_p = dl_ptr + b64 * sdl_b + d64 * sdl_d
    z_p = z_ptr + b64 * sz_b + d64 * sz_d
    gy_p = gy_ptr + b64 * sgy_b + d64 * sgy_d
    C_p = C_ptr + b64 * sC_b + g.to(tl.int64) * sC_g + n.to(tl.int64) * sC_n
    t0 = c * CHUNK
    t1 = tl.minimum(t0 + CHUNK, L)
    carry = tl.zeros((BLOCK_D, N_P2), dtype=tl.float32)
    s = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for k in range(0, CHUNK):  # steps before t0 (the last chunk is shorter) are masked no-ops
        t = t1 - 1 - k
        md = mask_d & (t >= t0)
        dl = tl.load(dl_p + t * sdl_l, mask=md, other=0.0).to(tl.float32)
        gy = tl.load(gy_p + t * sgy_l, mask=md, other=0.0).to(tl.float32)
        Ct = tl.load(C_p + t * sC_l, mask=mask_n & (t >= t0), other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_p + t * sz_l, mask=md, other=0.0).to(tl.float32)
            gy = gy * zz * tl.sigmoid(zz)
        if HAS_BIAS:
            dl = dl + bias
        if SOFTPLUS:
            dt = _softplus(dl)
        else:
            dt = dl
        dt = tl.where(md, dt, 0.0)
        carry = tl.exp2(dt[:, None] * A2) * (gy[:, None] * Ct[None, :] + carry)
        s += dt
    tl.store(local_ptr + (row[:, None] * nchunks + c) * N + n[None, :], carry, mask=mask_dn)
    tl.store(S_ptr + row * nchunks + c, s, mask=mask_d)


@triton.jit
def _ld_bwd(u_p, su, dl_p, sdl, gy_p, sgy, z_p, sz, B_p, sB, C_p, sC, sc_p, t, t0, mask_d, mask_n, mask_all,
            SC_STEP: tl.constexpr, HAS_Z: tl.constexpr):
    """Inputs of backward step t and its recomputed state (all masked off, zeros, for t < t0)."""
    v = t >= t0
    md = mask_d & v
    mn = mask_n & v
    u = tl.load(u_p + t * su, mask=md, other=0.0).to(tl.float32)
    dl = tl.load(dl_p + t * sdl, mask=md, other=0.0).to(tl.float32)
    gout = tl.load(gy_p + t * sgy, mask=md, other=0.0).to(tl.float32)
    Bt = tl.load(B_p + t * sB, mask=mn, other=0.0).to(tl.float32)
    Ct = tl.load(C_p + t * sC, mask=mn, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_p + t * sz, mask=md, other=0.0).to(tl.float32)
    else:
        zz = u
    h = tl.load(sc_p + (t - t0) * SC_STEP, mask=mask_all & v, other=0.0)
    return u, dl, gout, zz, Bt, Ct, h


@triton.jit
def _step_bwd(carry, gA_acc, gD_acc, gbias_acc, u, dl, gout, zz, Bt, Ct, h, t, t0, A, A2, Dv, bias, mask_d, mask_n,
              gu_p, sgu, gdl_p, sgdl, gz_p, sgz, gB_ptr, gC_ptr, part, N,
              HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
              ATOMIC: tl.constexpr):
    """One step of the adjoint recurrence, backwards (a no-op for t < t0: all its inputs are zero, dt is 0)."""
    v = t >= t0
    md = mask_d & v
    if HAS_BIAS:
        dl = dl + bias
    if SOFTPLUS:
        dt = _softplus(dl)
    else:
        dt = dl
    dt = tl.where(v, dt, 0.0)
    x = dt * u
    if HAS_Z:
        sig = tl.sigmoid(zz)
        y = tl.sum(h * Ct[None, :], axis=1)
        if HAS_D:
            y = y + Dv * u
        gz = gout * y * sig * (1.0 + zz * (1.0 - sig))
        tl.store(gz_p + t * sgz, gz.to(gz_p.dtype.element_ty), mask=md)
        gy = gout * zz * sig
    else:
        gy = gout
    gs = gy[:, None] * Ct[None, :] + carry  # g_t
    gx = tl.sum(gs * Bt[None, :], axis=1)
    gdA = gs * (h - x[:, None] * Bt[None, :])  # dL/d(dt A)
    gdt = tl.sum(gdA * A, axis=1) + gx * u
    gA_acc += gdA * dt[:, None]
    gu = gx * dt
    if HAS_D:
        gu += gy * Dv
        gD_acc += gy * u
    tl.store(gu_p + t * sgu, gu.to(gu_p.dtype.element_ty), mask=md)
    if SOFTPLUS:
        gdt = gdt * tl.sigmoid(dl)
    gdt = tl.where(md, gdt, 0.0)
    tl.store(gdl_p + t * sgdl, gdt.to(gdl_p.dtype.element_ty), mask=md)
    if HAS_BIAS:
        gbias_acc += gdt
    gBt = tl.sum(gs * x[:, None], axis=0)  # (N_P2,)
    gCt = tl.sum(h * gy[:, None], axis=0)
    mn = mask_n & v
    if ATOMIC:
        tl.atomic_add(gB_ptr + part + t * N, gBt, mask=mn, sem="relaxed")
        tl.atomic_add(gC_ptr + part + t * N, gCt, mask=mn, sem="relaxed")
    else:
        tl.store(gB_ptr + part + t * N, gBt, mask=mn)
        tl.store(gC_ptr + part + t * N, gCt, mask=mn)
    carry = tl.exp2(dt[:, None] * A2) * gs
    return carry, gA_acc, gD_acc, gbias_acc


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, gy_ptr, ghl_ptr,
    gu_ptr, gdl_ptr, gz_ptr, gA_ptr, gB_ptr, gC_ptr, gD_ptr, gbias_ptr, gh0_ptr, scratch_ptr,
    dim, L, dg, G, N, nchunks, CHUNK, BG, per_lane,
    su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sgy_b, sgy_d, sgy_l,
    sgu_b, sgu_d, sgu_l, sgdl_b, sgdl_d, sgdl_l, sgz_b, sgz_d, sgz_l,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_GHL: tl.constexpr, NEED_GH0: tl.constexpr, ATOMIC: tl.constexpr, PARALLEL: tl.constexpr,
    BLOCK_D: tl.constexpr, N_P2: tl.constexpr,
):
    pid_bg = tl.program_id(0)
    pid_d = tl.program_id(1)
    nblk = tl.num_programs(1)
    # PARALLEL: lane pid_l walks chunks [c_lo, c_hi) (from the end), starting from the adjoint carry that
    # _chunk_carry_kernel computed (ghl_ptr: (batch, dim, nchunks, N)); gA / gD / gbias per lane
    pid_l = tl.program_id(2)
    nlanes = tl.num_programs(2)
    c_lo = pid_l * per_lane
    c_hi = tl.minimum(c_lo + per_lane, nchunks)
    b, g, d, mask_d, n, mask_n, mask_dn, A, bias, row = _channel_block(pid_bg, pid_d, dim, G, dg, N, A_ptr, bias_ptr,
                                                                       HAS_BIAS, BLOCK_D, N_P2)
    A2 = A * 1.4426950408889634
    Dv = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    state_off = row[:, None] * N + n[None, :]
    b64 = b.to(tl.int64)
    d64 = d.to(tl.int64)
    n64 = n.to(tl.int64)
    g64 = g.to(tl.int64)
    u_p, dl_p, z_p, gy_p, gu_p, gdl_p, gz_p = _bwd_row_ptrs(
        b64, d64, u_ptr, su_b, su_d, dl_ptr, sdl_b, sdl_d, z_ptr, sz_b, sz_d, gy_ptr, sgy_b, sgy_d,
        gu_ptr, sgu_b, sgu_d, gdl_ptr, sgdl_b, sgdl_d, gz_ptr, sgz_b, sgz_d)
    B_p = B_ptr + b64 * sB_b + g64 * sB_g + n64 * sB_n
    C_p = C_ptr + b64 * sC_b + g64 * sC_g + n64 * sC_n
    # per-program scratch for the recomputed states of one chunk: (CHUNK, BLOCK_D, N_P2) fp32
    SC_STEP = BLOCK_D * N_P2
    mask_all = (tl.arange(0, BLOCK_D)[:, None] >= 0) & (n[None, :] >= 0)
    sc_p = (scratch_ptr + ((pid_bg.to(tl.int64) * nblk + pid_d) * nlanes + pid_l) * CHUNK * (BLOCK_D * N_P2)
            + tl.arange(0, BLOCK_D)[:, None] * N_P2 + n[None, :])
    # dB / dC: (BG, L, N) with atomics, else this block's slice of (nblk, BG, L, N)
    if ATOMIC:
        part = pid_bg.to(tl.int64) * L * N + n
    else:
        part = (pid_d.to(tl.int64) * BG + pid_bg) * L * N + n
    if PARALLEL:
        carry = tl.load(ghl_ptr + (row[:, None] * nchunks + c_hi - 1) * N + n[None, :], mask=mask_dn, other=0.0)
    elif HAS_GHL:
        carry = tl.load(ghl_ptr + state_off, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros((BLOCK_D, N_P2), dtype=tl.float32)
    gA_acc = tl.zeros((BLOCK_D, N_P2), dtype=tl.float32)
    gD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    gbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(0, per_lane):
        c = c_hi - 1 - i
        if c >= c_lo:  # the last lane may hold fewer chunks
            t0 = c * CHUNK
            t1 = tl.minimum(t0 + CHUNK, L)
            # recompute the chunk's states from its saved start state
            h = tl.load(states_ptr + (row[:, None] * nchunks + c) * N + n[None, :], mask=mask_dn, other=0.0)
            for kk in range(0, CHUNK, 4):  # steps past t1 are masked no-ops
                t = t0 + kk
                u0, d0, z0, B0, C0 = _ld_fwd(u_p, su_l, dl_p, sdl_l, u_p, su_l, B_p, sB_l, B_p, sB_l, t, t1, mask_d,
                                             mask_n, False)
                u1, d1, z1, B1, C1 = _ld_fwd(u_p, su_l, dl_p, sdl_l, u_p, su_l, B_p, sB_l, B_p, sB_l, t + 1, t1, mask_d,
                                             mask_n, False)
                u2, d2, z2, B2, C2 = _ld_fwd(u_p, su_l, dl_p, sdl_l, u_p, su_l, B_p, sB_l, B_p, sB_l, t + 2, t1, mask_d,
                                             mask_n, False)
                u3, d3, z3, B3, C3 = _ld_fwd(u_p, su_l, dl_p, sdl_l, u_p, su_l, B_p, sB_l, B_p, sB_l, t + 3, t1, mask_d,
                                             mask_n, False)
                h, _ = _step_fwd(h, u0, d0, z0, B0, C0, t, t1, A2, Dv, bias, u_p, su_l, mask_d, False, False, HAS_BIAS,
                                 SOFTPLUS, False)
                tl.store(sc_p + (t - t0) * SC_STEP, h, mask=mask_all & (t < t1))
                h, _ = _step_fwd(h, u1, d1, z1, B1, C1, t + 1, t1, A2, Dv, bias, u_p, su_l, mask_d, False, False,
                                 HAS_BIAS, SOFTPLUS, False)
                tl.store(sc_p + (t + 1 - t0) * SC_STEP, h, mask=mask_all & (t + 1 < t1))
                h, _ = _step_fwd(h, u2, d2, z2, B2, C2, t + 2, t1, A2, Dv, bias, u_p, su_l, mask_d, False, False,
                                 HAS_BIAS, SOFTPLUS, False)
                tl.store(sc_p + (t + 2 - t0) * SC_STEP, h, mask=mask_all & (t + 2 < t1))
                h, _ = _step_fwd(h, u3, d3, z3, B3, C3, t + 3, t1, A2, Dv, bias, u_p, su_l, mask_d, False, False,
                                 HAS_BIAS, SOFTPLUS, False)
                tl.store(sc_p + (t + 3 - t0) * SC_STEP, h, mask=mask_all & (t + 3 < t1))
            tl.debug_barrier()
            # adjoint, backwards through the chunk, 2 steps per iteration (the next 2 steps' loads issued first);
            # carry = exp(dt_{t+1} A) g_{t+1}
            ta = t1 - 1
            u0, l0, o0, z0, B0, C0, h0 = _ld_bwd(u_p, su_l, dl_p, sdl_l, gy_p, sgy_l, z_p, sz_l, B_p, sB_l, C_p, sC_l,
                                                 sc_p, ta, t0, mask_d, mask_n, mask_all, SC_STEP, HAS_Z)
            u1, l1, o1, z1, B1, C1, h1 = _ld_bwd(u_p, su_l, dl_p, sdl_l, gy_p, sgy_l, z_p, sz_l, B_p, sB_l, C_p, sC_l,
                                                 sc_p, ta - 1, t0, mask_d, mask_n, mask_all, SC_STEP, HAS_Z)
            for k in range(0, CHUNK, 2):  # steps before t0 are masked no-ops
                t = ta - k
                u2, l2, o2, z2, B2, C2, h2 = _ld_bwd(u_p, su_l, dl_p, sdl_l, gy_p, sgy_l, z_p, sz_l, B_p, sB_l, C_p,
                                                     sC_l, sc_p, t - 2, t0, mask_d, mask_n, mask_all, SC_STEP, HAS_Z)
                u3, l3, o3, z3, B3, C3, h3 = _ld_bwd(u_p, su_l, dl_p, sdl_l, gy_p, sgy_l, z_p, sz_l, B_p, sB_l, C_p,
                                                     sC_l, sc_p, t - 3, t0, mask_d, mask_n, mask_all, SC_STEP, HAS_Z)
                carry, gA_acc, gD_acc, gbias_acc = _step_bwd(
                    carry, gA_acc, gD_acc, gbias_acc, u0, l0, o0, z0, B0, C0, h0, t, t0, A, A2, Dv, bias, mask_d,
                    mask_n, gu_p, sgu_l, gdl_p, sgdl_l, gz_p, sgz_l, gB_ptr, gC_ptr, part, N, HAS_D, HAS_Z, HAS_BIAS,
                    SOFTPLUS, ATOMIC)
                carry, gA_acc, gD_acc, gbias_acc = _step_bwd(
                    carry, gA_acc, gD_acc, gbias_acc, u1, l1, o1, z1, B1, C1, h1, t - 1, t0, A, A2, Dv, bias, mask_d,
                    mask_n, gu_p, sgu_l, gdl_p, sgdl_l, gz_p, sgz_l, gB_ptr, gC_ptr, part, N, HAS_D, HAS_Z, HAS_BIAS,
                    SOFTPLUS, ATOMIC)
                u0, l0, o0, z0, B0, C0, h0 = u2, l2, o2, z2, B2, C2, h2
                u1, l1, o1, z1, B1, C1, h1 = u3, l3, o3, z3, B3, C3, h3
            tl.debug_barrier()  # the next chunk's recompute overwrites the scratch
    lane = pid_l.to(tl.int64) * (BG // G) * dim  # gA / gD / gbias: (nlanes, batch, dim[, N])
    tl.store(gA_ptr + lane * N + state_off, gA_acc, mask=mask_dn)
    if HAS_D:
        tl.store(gD_ptr + lane + row, gD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(gbias_ptr + lane + row, gbias_acc, mask=mask_d)
    if NEED_GH0:
        tl.store(gh0_ptr + state_off, carry, mask=mask_dn)  # dL/dh_{-1} = exp(dt_0 A) g_0


@triton.jit
def _sum_states(x, S: tl.constexpr):
    """A per-channel sum over the S threads that share a channel ((S, CG) in and out; the identity for S = 1)."""
    if S == 1:
        return x
    return tl.broadcast_to(tl.sum(x, axis=0, keep_dims=True), x.shape)


@triton.jit
def _bwd_lane_ld(p, sd, sl, t, CPT: tl.constexpr):
    """The values of a per-channel input at step t for a thread's CPT channels (p: (S, CG) pointers at its first
    channel, step 0; sd / sl: channel / step strides), as a tuple of fp32 tensors."""
    vals = ()
    for c in tl.static_range(CPT):
        vals = vals + (tl.load(p + c * sd + t * sl).to(tl.float32),)
    return vals


@triton.jit
def _bwd_lane_row(p, sl, sn, t, NS: tl.constexpr):
    """The NS values of B_t (or C_t) a thread needs (p: (S, CG) pointers at its first state, step 0; sl / sn: step /
    state strides), as a tuple of fp32 tensors."""
    vals = ()
    for i in tl.static_range(NS):
        vals = vals + (tl.load(p + t * sl + i * sn).to(tl.float32),)
    return vals


@triton.jit
def _bwd_lane_fwd(h, u, dl, Bp, sB, sBn, t, v, A2, bias, CPT: tl.constexpr, NS: tl.constexpr, HAS_BIAS: tl.constexpr,
                  SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
    """One forward step of a thread's CPT x NS states (h: a tuple, channel-major; B_t read by _bwd_lane_row from Bp):
    the new states, each decay exp(dt A) and each channel's step size (a no-op when v is False: dt = 0)."""
    Bt = _bwd_lane_row(Bp, sB, sBn, t, NS)
    hn = ()
    an = ()
    dts = ()
    for c in tl.static_range(CPT):
        dt = _step_size(dl[c], bias[c], v, HAS_BIAS, SOFTPLUS, FAST)
        dts = dts + (dt,)
        x = dt * u[c]
        for i in tl.static_range(NS):
            a = tl.exp2(dt * A2[c * NS + i])
            hn = hn + (a * h[c * NS + i] + x * Bt[i],)
            an = an + (a,)
    return hn, an, dts


@triton.jit
def _scan_bwd_lane_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, gy_ptr, ghl_ptr,
    gu_ptr, gdl_ptr, gz_ptr, gA_ptr, gB_ptr, gC_ptr, gD_ptr, gbias_ptr, gh0_ptr, scratch_ptr,
    dim, L, dg, nchunks, CHUNK, per_lane,
    su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sgy_b, sgy_d, sgy_l,
    sgu_b, sgu_d, sgu_l, sgdl_b, sgdl_d, sgdl_l, sgz_b, sgz_d, sgz_l,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    N: tl.constexpr, S: tl.constexpr, CPT: tl.constexpr, SUB: tl.constexpr, FAST: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_GHL: tl.constexpr, NEED_GH0: tl.constexpr, PARALLEL: tl.constexpr, A_IS_LOG: tl.constexpr,
):
    """Backward with the states in registers ("lanes", the forward's _scan_fwd_lane_kernel turned around): a program
    (one warp) takes BLOCK_D = CPT x 32 / S channels of one batch row and B/C group; a thread holds CPT channels x
    NS = N / S states, so the sums over a channel's states cross S threads only and the sums of dB_t / dC_t over
    channels cross 32 / S threads, after CPT channels summed in the thread. Each chunk of CHUNK steps (its start
    state saved by the forward) is walked forwards once, keeping the state at every SUB-step block start in a small
    scratch; then each block, from the last, is recomputed in registers (states and decays of its SUB steps) and
    walked backwards: g_t = gy_t C_t + exp(dt_{t+1} A) g_{t+1}, with the recompute's decays and step sizes (no exp a
    state in this walk). B / C (batch, G, N, L), any strides; dB / dC summed into (batch, G, L, N) fp32 by atomics.
    PARALLEL: lane program_id(2) walks chunks [c_lo, c_hi) from the adjoint carried into its last chunk
    (ghl_ptr (batch, dim, nchunks, N), from _chunk_adjoint_kernel + _chunk_carry_kernel); gA / gD / gbias per lane."""
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_l = tl.program_id(2)
    NS: tl.constexpr = N // S
    CG: tl.constexpr = 32 // S
    BLOCK_D: tl.constexpr = CG * CPT
    c_lo = pid_l * per_lane
    c_hi = tl.minimum(c_lo + per_lane, nchunks)
    k0 = (tl.arange(0, S) * NS)[:, None]  # (S, 1): a thread's first state
    first = k0 == 0
    cg = tl.arange(0, CG)[None, :]
    d = pid_d * BLOCK_D + cg * CPT + k0 * 0  # (S, CG): a thread's first channel
    g = (pid_d * BLOCK_D) // dg
    b64 = pid_b.to(tl.int64)
    d64 = d.to(tl.int64)
    row = b64 * dim + d64  # (batch, channel) row of the first channel; channel c is row + c
    A2 = ()
    bias = ()
    Dv = ()
    for c in tl.static_range(CPT):
        for i in tl.static_range(NS):
            a = tl.load(A_ptr + (d + c) * N + k0 + i).to(tl.float32)
            if A_IS_LOG:
                a = -tl.exp(a)
            A2 = A2 + (a * 1.4426950408889634,)
        bias = bias + ((tl.load(bias_ptr + d + c).to(tl.float32) if HAS_BIAS else tl.zeros((S, CG), tl.float32)),)
        Dv = Dv + ((tl.load(D_ptr + d + c).to(tl.float32) if HAS_D else tl.zeros((S, CG), tl.float32)),)
    u_p, dl_p, z_p, gy_p, gu_p, gdl_p, gz_p = _bwd_row_ptrs(
        b64, d64, u_ptr, su_b, su_d, dl_ptr, sdl_b, sdl_d, z_ptr, sz_b, sz_d, gy_ptr, sgy_b, sgy_d,
        gu_ptr, sgu_b, sgu_d, gdl_ptr, sgdl_b, sgdl_d, gz_ptr, sgz_b, sgz_d)
    B_p = B_ptr + b64 * sB_b + g * sB_g + (k0 + d * 0) * sB_n  # (S, CG): the thread's first state, step 0
    C_p = C_ptr + b64 * sC_b + g * sC_g + (k0 + d * 0) * sC_n
    G = dim // dg
    gBC = (b64 * G + g) * L * N + k0  # (S, 1): dB / dC of (batch, G, L, N) at step 0, the thread's first state
    # scratch: (programs, CHUNK // SUB, 32 threads, CPT x NS) fp32, a thread's values contiguous
    NB = CHUNK // SUB
    prog = (pid_b.to(tl.int64) * tl.num_programs(1) + pid_d) * tl.num_programs(2) + pid_l
    tid = tl.arange(0, S)[:, None] * CG + cg
    sc_p = scratch_ptr + (prog * NB * 32 + tid) * (CPT * NS)
    carry = ()
    for c in tl.static_range(CPT):
        for i in tl.static_range(NS):
            if PARALLEL:
                carry = carry + (tl.load(ghl_ptr + ((row + c) * nchunks + c_hi - 1) * N + k0 + i),)
            elif HAS_GHL:
                carry = carry + (tl.load(ghl_ptr + (row + c) * N + k0 + i).to(tl.float32),)
            else:
                carry = carry + (tl.zeros((S, CG), tl.float32),)
    gA = ()
    for j in tl.static_range(CPT * NS):
        gA = gA + (tl.zeros((S, CG), tl.float32),)
    gD = ()
    gbias = ()
    for c in tl.static_range(CPT):
        gD = gD + (tl.zeros((S, CG), tl.float32),)
        gbias = gbias + (tl.zeros((S, CG), tl.float32),)
    for ci in range(0, per_lane):
        ch = c_hi - 1 - ci
        if ch >= c_lo:  # the last lane may hold fewer chunks
            t0 = ch * CHUNK
            t1 = tl.minimum(t0 + CHUNK, L)
            # forwards through the chunk from its saved start state, keeping each block's start state
            h = ()
            for c in tl.static_range(CPT):
                for i in tl.static_range(NS):
                    h = h + (tl.load(states_ptr + ((row + c) * nchunks + ch) * N + k0 + i),)
            for jb in range(0, NB):
                for j in tl.static_range(CPT * NS):
                    tl.store(sc_p + jb * 32 * (CPT * NS) + j, h[j])
                for k in tl.static_range(SUB):
                    t = t0 + jb * SUB + k
                    tc = tl.minimum(t, L - 1)
                    u = _bwd_lane_ld(u_p, su_d, su_l, tc, CPT)
                    dl = _bwd_lane_ld(dl_p, sdl_d, sdl_l, tc, CPT)
                    h, _, _ = _bwd_lane_fwd(h, u, dl, B_p, sB_l, sB_n, tc, t < t1, A2, bias, CPT, NS, HAS_BIAS,
                                            SOFTPLUS, FAST)
            for jj in range(0, NB):
                jb = NB - 1 - jj
                tb = t0 + jb * SUB
                if tb < t1:  # (blocks past the end would pass the carry on unchanged)
                    # the block's SUB states and decays, recomputed from its start state
                    h = ()
                    for j in tl.static_range(CPT * NS):
                        h = h + (tl.load(sc_p + jb * 32 * (CPT * NS) + j),)
                    hs = ()  # per step k of the block: the states after it, its decays, its step sizes
                    As = ()
                    Ds = ()
                    for k in tl.static_range(SUB):
                        t = tb + k
                        tc = tl.minimum(t, L - 1)
                        u = _bwd_lane_ld(u_p, su_d, su_l, tc, CPT)
                        dl = _bwd_lane_ld(dl_p, sdl_d, sdl_l, tc, CPT)
                        h, decay, dts = _bwd_lane_fwd(h, u, dl, B_p, sB_l, sB_n, tc, t < t1, A2, bias, CPT, NS,
                                                      HAS_BIAS, SOFTPLUS, FAST)
                        hs = hs + (h,)
                        As = As + (decay,)
                        Ds = Ds + (dts,)
                    for k in tl.static_range(SUB - 1, -1, -1):
                        t = tb + k
                        v = t < t1
                        tc = tl.minimum(t, L - 1)
                        u = _bwd_lane_ld(u_p, su_d, su_l, tc, CPT)
                        go = _bwd_lane_ld(gy_p, sgy_d, sgy_l, tc, CPT)
                        zz = u
                        if HAS_Z:
                            zz = _bwd_lane_ld(z_p, sz_d, sz_l, tc, CPT)
                        Bt = _bwd_lane_row(B_p, sB_l, sB_n, tc, NS)
                        Ct = _bwd_lane_row(C_p, sC_l, sC_n, tc, NS)
                        hk = hs[k]
                        ak = As[k]
                        gsx = ()  # (channel, state): the terms of dB_t and dC_t
                        hgy = ()
                        carry_n = ()
                        gA_n = ()
                        gD_n = ()
                        gbias_n = ()
                        for c in tl.static_range(CPT):
                            dt = Ds[k][c]
                            x = dt * u[c]
                            gout = tl.where(v, go[c], 0.0)
                            if HAS_Z:
                                yc = tl.zeros((S, CG), tl.float32)
                                for i in tl.static_range(NS):
                                    yc += hk[c * NS + i] * Ct[i]
                                yc = _sum_states(yc, S)
                                if HAS_D:
                                    yc += Dv[c] * u[c]
                                sig = tl.sigmoid(zz[c])
                                gz = gout * yc * sig * (1.0 + zz[c] * (1.0 - sig))
                                tl.store(gz_p + c * sgz_d + tc * sgz_l, gz.to(gz_p.dtype.element_ty), mask=first & v)
                                gy = gout * zz[c] * sig
                            else:
                                gy = gout
                            gx = tl.zeros((S, CG), tl.float32)
                            gdA2 = tl.zeros((S, CG), tl.float32)  # sum of dL/d(dt A) A log2(e) over the states
                            for i in tl.static_range(NS):
                                gs = gy * Ct[i] + carry[c * NS + i]  # g_t
                                gx += gs * Bt[i]
                                gdA = gs * (hk[c * NS + i] - x * Bt[i])  # dL/d(dt A)
                                gdA2 += gdA * A2[c * NS + i]
                                gA_n = gA_n + (gA[c * NS + i] + gdA * dt,)
                                carry_n = carry_n + (ak[c * NS + i] * gs,)
                                gsx = gsx + (gs * x,)
                                hgy = hgy + (hk[c * NS + i] * gy,)
                            gx = _sum_states(gx, S)
                            gdt = _sum_states(gdA2, S) * 0.6931471805599453 + gx * u[c]
                            gu = gx * dt
                            if HAS_D:
                                gu += gy * Dv[c]
                                gD_n = gD_n + (gD[c] + gy * u[c],)
                            tl.store(gu_p + c * sgu_d + tc * sgu_l, gu.to(gu_p.dtype.element_ty), mask=first & v)
                            if SOFTPLUS:  # softplus'(x) = sigmoid(x) = 1 - exp(-softplus(x))
                                gdt = gdt * (1.0 - tl.exp2(-1.4426950408889634 * dt))
                            gdt = tl.where(v, gdt, 0.0)
                            tl.store(gdl_p + c * sgdl_d + tc * sgdl_l, gdt.to(gdl_p.dtype.element_ty),
                                     mask=first & v)
                            if HAS_BIAS:
                                gbias_n = gbias_n + (gbias[c] + gdt,)
                        carry = carry_n
                        gA = gA_n
                        if HAS_D:
                            gD = gD_n
                        if HAS_BIAS:
                            gbias = gbias_n
                        for i in tl.static_range(NS):
                            sB_t = gsx[i]
                            sC_t = hgy[i]
                            for c in tl.static_range(1, CPT):
                                sB_t += gsx[c * NS + i]
                                sC_t += hgy[c * NS + i]
                            sB_t = tl.sum(sB_t, axis=1, keep_dims=True)  # (S, 1): over the warp's channels
                            sC_t = tl.sum(sC_t, axis=1, keep_dims=True)
                            tl.atomic_add(gB_ptr + gBC + tc * N + i, sB_t, mask=v, sem="relaxed")
                            tl.atomic_add(gC_ptr + gBC + tc * N + i, sC_t, mask=v, sem="relaxed")
    lane = pid_l.to(tl.int64) * (tl.num_programs(0) * dim)  # gA / gD / gbias: (nlanes, batch, dim[, N])
    for c in tl.static_range(CPT):
        for i in tl.static_range(NS):
            tl.store(gA_ptr + (lane + row + c) * N + k0 + i, gA[c * NS + i])
        if HAS_D:  # (the same in the S threads of a channel)
            tl.store(gD_ptr + lane + row + c, gD[c], mask=first)
        if HAS_BIAS:
            tl.store(gbias_ptr + lane + row + c, gbias[c], mask=first)
        if NEED_GH0:
            for i in tl.static_range(NS):
                tl.store(gh0_ptr + (row + c) * N + k0 + i, carry[c * NS + i])  # dL/dh_{-1} = exp(dt_0 A) g_0


@triton.jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, w_ptr, y_ptr,
    dim, N, s_b, s_d, s_n, sx_b, sx_d, sdt_b, sdt_d, sz_b, sz_d, sB_b, sB_n, sC_b, sC_n, sw_d, sw_r,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, A_IS_LOG: tl.constexpr,
    BLOCK_D: tl.constexpr, N_P2: tl.constexpr, DT_RANK: tl.constexpr, R_P2: tl.constexpr,
):
    """One decoding step for (batch b, BLOCK_D channels): the strided x / dt / z rows and B / C rows are read where
    they lie (views of the mixer's linear outputs), A is -exp(A_log) when A_IS_LOG, D / A / bias in any float dtype.
    DT_RANK > 0: dt is the low-rank row (batch, DT_RANK) and the step size is dt_proj's output computed here,
    w (dim, DT_RANK) @ dt + bias in fp32, rounded to dt's dtype as the linear layer's output would be."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = d < dim
    n = tl.arange(0, N_P2)
    mask_n = n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    x = tl.load(x_ptr + b * sx_b + d * sx_d, mask=mask_d, other=0.0).to(tl.float32)
    if DT_RANK > 0:
        r = tl.arange(0, R_P2)
        mask_r = r < DT_RANK
        low = tl.load(dt_ptr + b * sdt_b + r * sdt_d, mask=mask_r, other=0.0)
        w = tl.load(w_ptr + d[:, None] * sw_d + r[None, :] * sw_r, mask=mask_d[:, None] & mask_r[None, :], other=0.0)
        dt = tl.sum(w.to(tl.float32) * low.to(tl.float32)[None, :], axis=1)
    else:
        dt = tl.load(dt_ptr + b * sdt_b + d * sdt_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    if DT_RANK > 0:  # dt_proj's output, rounded as the layer's would be
        dt = dt.to(dt_ptr.dtype.element_ty).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if A_IS_LOG:
        A = -tl.exp(A)
    Bv = tl.load(B_ptr + b * sB_b + n * sB_n, mask=mask_n, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * sC_b + n * sC_n, mask=mask_n, other=0.0).to(tl.float32)
    s_ptrs = state_ptr + b * s_b + d[:, None].to(tl.int64) * s_d + n[None, :] * s_n
    h = tl.load(s_ptrs, mask=mask_dn, other=0.0).to(tl.float32)
    h = tl.exp2(dt[:, None] * A * 1.4426950408889634) * h + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, h.to(state_ptr.dtype.element_ty), mask=mask_dn)  # y below uses the unrounded state
    y = tl.sum(h * Cv[None, :], axis=1)
    if HAS_D:
        y += x * tl.load(D_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + b * sz_b + d * sz_d, mask=mask_d, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    tl.store(y_ptr + b * dim + d, y.to(y_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def _conv_update_kernel(
    x_ptr, s_ptr, w_ptr, bias_ptr, y_ptr, dim, W, sx_b, sx_d, ss_b, ss_d, ss_w, sw_d, sw_w,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr, W_P2: tl.constexpr,
):
    """One decoding step of the causal depthwise conv for (batch b, BLOCK_D channels): the state window shifted left
    by one with x appended (in place), then y = sum_j window_j w_j + bias, cast to x's dtype, then SiLU."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = d < dim
    j = tl.arange(0, W_P2)
    rows = s_ptr + b * ss_b + d[:, None].to(tl.int64) * ss_d
    older = tl.load(rows + (j[None, :] + 1) * ss_w, mask=mask_d[:, None] & (j[None, :] < W - 1), other=0.0)
    x = tl.load(x_ptr + b * sx_b + d * sx_d, mask=mask_d, other=0.0)
    window = tl.where(j[None, :] == W - 1, x[:, None].to(older.dtype), older)  # the state's dtype, as stored
    tl.store(rows + j[None, :] * ss_w, window, mask=mask_d[:, None] & (j[None, :] < W))
    w = tl.load(w_ptr + d[:, None] * sw_d + j[None, :] * sw_w, mask=mask_d[:, None] & (j[None, :] < W), other=0.0)
    y = tl.sum(window.to(tl.float32) * w.to(tl.float32), axis=1)
    if HAS_BIAS:
        y += tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    y = y.to(y_ptr.dtype.element_ty).to(tl.float32)  # the torch path rounds to x's dtype before the SiLU
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(y_ptr + b * dim + d, y.to(y_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def _conv_taps(x_row, pre_row, s, L, sx_l, sp_w, mask_d, W: tl.constexpr, HAS_PREFIX: tl.constexpr):
    """x (one batch row's BLOCK_D channels, x_row (BLOCK_D, 1) pointers) at steps s (1, BLOCK_L), in x's dtype:
    steps before 0 from the prefix (pre_row: (batch, dim, W - 1) of earlier inputs, oldest first; causal only), else
    zero; steps past L zero (never read: a read past x's end had faulted)."""
    xv = tl.load(x_row + s * sx_l, mask=mask_d & (s >= 0) & (s < L), other=0.0)
    if HAS_PREFIX:  # steps -W+1 .. -1: prefix column W - 1 + s
        pv = tl.load(pre_row + (s + W - 1) * sp_w, mask=mask_d & (s < 0) & (s + W - 1 >= 0), other=0.0)
        xv = tl.where(s < 0, pv.to(xv.dtype), xv)
    return xv


@triton.jit
def _causal_conv_kernel(
    x_ptr, w_ptr, bias_ptr, pre_ptr, y_ptr, dim, L,
    sx_b, sx_d, sx_l, sp_b, sp_d, sp_w, sy_b, sy_d, sy_l, sw_d, sw_w,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr, SILU: tl.constexpr, REVERSE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Depthwise conv of width W over a (BLOCK_D channels, BLOCK_L steps) tile of batch row b, in fp32:
    causal y_t = sum_k w_k x_{t-(W-1-k)} (steps before 0 from the prefix (batch, dim, W-1) of earlier inputs, oldest
    first, else zero), or with REVERSE the anti-causal y_t = sum_k w_k x_{t+(W-1-k)} (steps past L are zero: the causal
    conv of the time-reversed sequence, read in place; also the input gradient of the causal conv). + bias; with
    SILU the sum is rounded to y's dtype first (as the torch path, whose conv runs in that dtype). Any strides: the
    loads and stores are coalesced along whichever of d / l has unit stride."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t = (tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)).to(tl.int64)
    mask_d = d < dim
    d64 = d.to(tl.int64)
    x_row = x_ptr + b * sx_b + d64[:, None] * sx_d
    pre_row = pre_ptr + b * sp_b + d64[:, None] * sp_d
    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    for k in tl.static_range(W):
        e = (W - 1 - k) if REVERSE else -(W - 1 - k)  # y_t = sum_k w_k x_{t + e_k}
        xv = _conv_taps(x_row, pre_row, t[None, :] + e, L, sx_l, sp_w, mask_d[:, None], W, HAS_PREFIX)
        wk = tl.load(w_ptr + d * sw_d + k * sw_w, mask=mask_d, other=0.0)
        acc += xv.to(tl.float32) * wk.to(y_ptr.dtype.element_ty).to(tl.float32)[:, None]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(y_ptr.dtype.element_ty).to(tl.float32)[:, None]
    if SILU:
        acc = acc.to(y_ptr.dtype.element_ty).to(tl.float32)
        acc = acc * tl.sigmoid(acc)
    tl.store(y_ptr + b * sy_b + d64[:, None] * sy_d + t[None, :] * sy_l, acc.to(y_ptr.dtype.element_ty),
             mask=mask_d[:, None] & (t[None, :] < L))


@triton.jit
def _conv_pre_grad(x_row, pre_row, gy_row, w_ptr, bias_ptr, d, mask_d, s, L, sx_l, sp_w, sg_l, sw_d, sw_w,
                   W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr, SILU: tl.constexpr,
                   REVERSE: tl.constexpr):
    """The gradient at the conv's pre-activation p at steps s (1, BLOCK_L) (fp32; zero outside 0 .. L-1): gy, through
    SiLU gy silu'(p) with p recomputed as the forward rounds it (weights, bias and the sum in x's dtype)."""
    ms = mask_d[:, None] & (s >= 0) & (s < L)
    g = tl.load(gy_row + s * sg_l, mask=ms, other=0.0).to(tl.float32)
    if SILU:
        p = tl.zeros(g.shape, dtype=tl.float32)
        for j in tl.static_range(W):
            e = (W - 1 - j) if REVERSE else -(W - 1 - j)
            xv = _conv_taps(x_row, pre_row, s + e, L, sx_l, sp_w, mask_d[:, None], W, HAS_PREFIX)
            wj = tl.load(w_ptr + d * sw_d + j * sw_w, mask=mask_d, other=0.0)
            p += xv.to(tl.float32) * wj.to(x_row.dtype.element_ty).to(tl.float32)[:, None]
        if HAS_BIAS:
            p += tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(x_row.dtype.element_ty).to(tl.float32)[:, None]
        p = p.to(x_row.dtype.element_ty).to(tl.float32)
        sig = tl.sigmoid(p)
        g = g * sig * (1.0 + p * (1.0 - sig))
    return tl.where(ms, g, 0.0)


@triton.jit
def _causal_conv_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, pre_ptr, gy_ptr, gx_ptr, part_ptr, dim, L,
    sx_b, sx_d, sx_l, sp_b, sp_d, sp_w, sg_b, sg_d, sg_l, sgx_b, sgx_d, sgx_l, sw_d, sw_w,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr, SILU: tl.constexpr, REVERSE: tl.constexpr,
    NEED_GX: tl.constexpr, NEED_GW: tl.constexpr, FUSED: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """_causal_conv_kernel's backward over a (BLOCK_D channels, BLOCK_L steps) tile of batch row b. With
    y_t = sum_k w_k x_{t + e_k} (e_k = -(W-1-k) causal, W-1-k with REVERSE) and g the gradient at the pre-activation
    (_conv_pre_grad): the tile's sums of g_t x_{t + e_k} (the weight's gradient) and of g_t (the bias's) into part
    (batch x step tiles, W + 1, dim) in fp32, which the caller sums; and with FUSED the input's gradient
    gx_s = sum_k w_k g_{s - e_k} (g recomputed at the W shifted steps), else g itself (fp32) into gx, for the conv in
    the other direction to finish."""
    b = tl.program_id(0).to(tl.int64)
    lt = tl.program_id(2)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t = (lt * BLOCK_L + tl.arange(0, BLOCK_L)).to(tl.int64)
    mask_d = d < dim
    d64 = d.to(tl.int64)
    x_row = x_ptr + b * sx_b + d64[:, None] * sx_d
    pre_row = pre_ptr + b * sp_b + d64[:, None] * sp_d
    gy_row = gy_ptr + b * sg_b + d64[:, None] * sg_d
    mask_out = mask_d[:, None] & (t[None, :] < L)
    gx_p = gx_ptr + b * sgx_b + d64[:, None] * sgx_d + t[None, :] * sgx_l
    if FUSED:
        gx = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
        g_t = gx
        for k in tl.static_range(W):
            e = (W - 1 - k) if REVERSE else -(W - 1 - k)
            g_s = _conv_pre_grad(x_row, pre_row, gy_row, w_ptr, bias_ptr, d, mask_d, t[None, :] - e, L, sx_l, sp_w,
                                 sg_l, sw_d, sw_w, W, HAS_BIAS, HAS_PREFIX, SILU, REVERSE)
            if NEED_GX:
                wk = tl.load(w_ptr + d * sw_d + k * sw_w, mask=mask_d, other=0.0)
                gx += g_s * wk.to(x_row.dtype.element_ty).to(tl.float32)[:, None]
            if k == W - 1:  # e = 0: g at the tile's own steps
                g_t = g_s
        if NEED_GX:
            tl.store(gx_p, gx.to(gx_ptr.dtype.element_ty), mask=mask_out)
    else:
        g_t = _conv_pre_grad(x_row, pre_row, gy_row, w_ptr, bias_ptr, d, mask_d, t[None, :], L, sx_l, sp_w, sg_l,
                             sw_d, sw_w, W, HAS_BIAS, HAS_PREFIX, SILU, REVERSE)
        if NEED_GX:
            tl.store(gx_p, g_t, mask=mask_out)
    if NEED_GW:
        row = part_ptr + (b * tl.num_programs(2) + lt) * (W + 1) * dim + d
        for k in tl.static_range(W):
            e = (W - 1 - k) if REVERSE else -(W - 1 - k)
            xv = _conv_taps(x_row, pre_row, t[None, :] + e, L, sx_l, sp_w, mask_d[:, None], W, HAS_PREFIX)
            tl.store(row + k * dim, tl.sum(g_t * xv.to(tl.float32), axis=1), mask=mask_d)
        tl.store(row + W * dim, tl.sum(g_t, axis=1), mask=mask_d)


@triton.jit
def _copy_tile(x_ptr, y_ptr, b, R, Cn, sx_b, sx_r, sx_c, sy_b, sy_r, sy_c,
               BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = (tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    c = (tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    mask = (r[:, None] < R) & (c[None, :] < Cn)
    v = tl.load(x_ptr + b * sx_b + r[:, None] * sx_r + c[None, :] * sx_c, mask=mask)
    tl.store(y_ptr + b * sy_b + r[:, None] * sy_r + c[None, :] * sy_c, v, mask=mask)


@triton.jit
def _transpose_copy_kernel(x0_ptr, y0_ptr, x1_ptr, y1_ptr, batch, R, Cn,
                           s0x_b, s0x_r, s0x_c, s0y_b, s0y_r, s0y_c, s1x_b, s1x_r, s1x_c, s1y_b, s1y_r, s1y_c,
                           BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """y[b, r, c] = x[b, r, c] for a (BLOCK_R, BLOCK_C) tile, of the first tensor pair for program_id(0) < batch, else
    of the second (two copies, one launch): a layout change (e.g. time-major to channel-major), each side read /
    written along its unit stride (triton stages the tile through shared memory)."""
    pid = tl.program_id(0)
    if pid < batch:
        _copy_tile(x0_ptr, y0_ptr, pid.to(tl.int64), R, Cn, s0x_b, s0x_r, s0x_c, s0y_b, s0y_r, s0y_c, BLOCK_R, BLOCK_C)
    else:
        _copy_tile(x1_ptr, y1_ptr, (pid - batch).to(tl.int64), R, Cn, s1x_b, s1x_r, s1x_c, s1y_b, s1y_r, s1y_c,
                   BLOCK_R, BLOCK_C)


@triton.jit
def _stage_bc_kernel(B_ptr, C_ptr, out_ptr, batch, G, N, L, Lp, sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
                     BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    """out (2, batch, G, N, Lp) = B and C (batch, G, N, L), any strides (a time-major view of x_proj's output, a
    reversed view's negative step stride), with steps L .. Lp - 1 zero: rows the time-tiled forward reads as aligned
    16-byte vectors at any L (see _staged_bc)."""
    pid = tl.program_id(0)  # over (B or C) x batch x G
    which = pid // (batch * G)
    bg = pid % (batch * G)
    b = (bg // G).to(tl.int64)
    g = (bg % G).to(tl.int64)
    n = tl.arange(0, BLOCK_N)
    t = (tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    m = (n[:, None] < N) & (t[None, :] < L)
    if which == 0:
        v = tl.load(B_ptr + b * sB_b + g * sB_g + n[:, None] * sB_n + t[None, :] * sB_l, mask=m, other=0.0)
    else:
        v = tl.load(C_ptr + b * sC_b + g * sC_g + n[:, None] * sC_n + t[None, :] * sC_l, mask=m, other=0.0)
    row = out_ptr + ((which * batch + b) * G + g) * N * Lp
    tl.store(row + n[:, None] * Lp + t[None, :], v, mask=(n[:, None] < N) & (t[None, :] < Lp))


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, y_ptr, n_cols, sx_row, eps, CAST_INPUT: tl.constexpr, BLOCK: tl.constexpr):
    """One row: y = w * (x * rsqrt(mean(x^2) + eps)) in fp32, the normalised row rounded to x's dtype before the
    product (as RMSNorm does it in torch), y in the promoted dtype of x and w. CAST_INPUT: x is first rounded to y's
    dtype (= w's), as ``norm(x.to(w.dtype))``."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x_raw = tl.load(x_ptr + row * sx_row + cols, mask=mask, other=0.0)
    _normalise_row(x_raw, w_ptr, y_ptr, row, cols, mask, n_cols, eps, CAST_INPUT)


@triton.jit
def _normalise_row(x_raw, w_ptr, y_ptr, row, cols, mask, n_cols, eps, CAST_INPUT: tl.constexpr):
    """Stores row ``row`` of y = RMSNorm(x_raw) (see _rms_norm_kernel), rounded to y's dtype."""
    if CAST_INPUT:
        x_raw = x_raw.to(w_ptr.dtype.element_ty)
    x = x_raw.to(tl.float32)
    rstd = 1.0 / tl.sqrt_rn(tl.sum(x * x, axis=0) / n_cols + eps)
    h = (x * rstd).to(x_raw.dtype).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * n_cols + cols, (w * h).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _add_rms_norm_kernel(r_ptr, x_ptr, w_ptr, r_out_ptr, y_ptr, n_cols, eps, CAST_INPUT: tl.constexpr,
                         BLOCK: tl.constexpr):
    """One row: r = residual + x (in r_out's dtype), then y = RMSNorm(r) as _rms_norm_kernel computes it."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    r = tl.load(r_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    r += tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    r_raw = r.to(r_out_ptr.dtype.element_ty)
    tl.store(r_out_ptr + row * n_cols + cols, r_raw, mask=mask)
    _normalise_row(r_raw, w_ptr, y_ptr, row, cols, mask, n_cols, eps, CAST_INPUT)


@triton.jit
def _layer_norm_tile(x, mask, n_cols, w_ptr, b_ptr, cols, eps, HAS_BIAS: tl.constexpr):
    """LayerNorm of each row of an fp32 (rows, BLOCK_C) tile (masked columns hold 0), in fp32: (x - mean) * rstd * w
    (+ b), the biased variance as torch.nn.functional.layer_norm."""
    mean = tl.sum(x, axis=1) / n_cols
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt_rn(tl.sum(xc * xc, axis=1) / n_cols + eps)
    cmask = cols < n_cols
    y = xc * rstd[:, None] * tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    return y


@triton.jit
def _layer_norm_kernel(x_ptr, r_ptr, w_ptr, b_ptr, r_out_ptr, y_ptr, rows, n_cols, sx_row, eps,
                       HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """BLOCK_R rows of y = LayerNorm(x) (HAS_RES: of r = residual + x, rounded to r_out's dtype and stored), computed
    in fp32 and rounded to y's dtype. x rows at a stride of sx_row, residual / r_out / y contiguous (rows, n_cols)."""
    row = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    cols = tl.arange(0, BLOCK_C)
    mask = (row < rows) & (cols[None, :] < n_cols)
    x = tl.load(x_ptr + row * sx_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        x += tl.load(r_ptr + row * n_cols + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        r = x.to(r_out_ptr.dtype.element_ty)
        tl.store(r_out_ptr + row * n_cols + cols[None, :], r, mask=mask)
        x = r.to(tl.float32)
    y = _layer_norm_tile(x, mask, n_cols, w_ptr, b_ptr, cols, eps, HAS_BIAS)
    tl.store(y_ptr + row * n_cols + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _cross_positions(t, H, W):
    """The map positions (row-major index h * W + w) that step t of VMamba's column-major direction reads: h = t % H,
    w = t // H."""
    return (t % H) * W + t // H


@triton.jit
def _map_tile(H, W, dim, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """The (BLOCK_T steps or positions, BLOCK_C channels) tile of the cross-scan / merge kernels: (image, steps
    (BLOCK_T, 1), channels (1, BLOCK_C), L = H * W, mask)."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]
    c = tl.arange(0, BLOCK_C)[None, :]
    return tl.program_id(1).to(tl.int64), t, c, H * W, (t < H * W) & (c < dim)


@triton.jit
def _cross_scan_kernel(x_ptr, sx_b, sx_c, sx_h, sx_w, u_ptr, H, W, dim,
                       SILU: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """VMamba's cross-scan (csm_triton.py cross_scan_fwd, channel-first) written time-major: u[b, t, k, c] (contiguous
    (batch, L, 4, dim)) = x[b, c] at step t of direction k: row-major, column-major, both reversed (L = H * W). x is a
    (batch, dim, H, W) map of any strides (a channel-last one reads each position's channels as one run); SILU: u =
    silu(x) (the SS2D activation, fused)."""
    pid_b, t, c, L, mask = _map_tile(H, W, dim, BLOCK_T, BLOCK_C)
    x_b = x_ptr + pid_b * sx_b + c.to(tl.int64) * sx_c
    u_b = u_ptr + pid_b * L * 4 * dim + t.to(tl.int64) * (4 * dim) + c
    for k in tl.static_range(4):
        step = t if k < 2 else L - 1 - t
        pos = step if k % 2 == 0 else _cross_positions(step, H, W)
        v = tl.load(x_b + (pos // W).to(tl.int64) * sx_h + (pos % W).to(tl.int64) * sx_w, mask=mask, other=0.0)
        if SILU:
            v32 = v.to(tl.float32)
            v = (v32 / (1.0 + tl.exp(-v32))).to(v.dtype)
        tl.store(u_b + k * dim, v.to(u_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _cross_merge_norm_kernel(y4_ptr, sy_b, sy_c, sy_t, w_ptr, b_ptr, z_ptr, sz_b, sz_t, out_ptr, H, W, dim, eps,
                             NORM: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_Z: tl.constexpr, GELU: tl.constexpr,
                             BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """VMamba's cross-merge (csm_triton.py cross_merge_fwd) then out_norm, [GELU], [* z], for BLOCK_T positions of one
    image: out[b, p, c] (contiguous (batch, H * W, dim), p = h * W + w) = LayerNorm over c of the sum of the four
    directions' scan outputs at p, y4[b, k * dim + c, step] (any strides: sy_c along channels, sy_t along steps). The
    sum is rounded as the torch path (``cross_merge``) rounds it in y4's dtype: (y_0 + y_2) and (y_1 + y_3) first, then
    their sum; the norm in fp32. z (batch, H * W, dim) with unit channel stride. NORM False: the merged sum only."""
    pid_b, p, c, L, mask = _map_tile(H, W, dim, BLOCK_T, BLOCK_C)
    y_b = y4_ptr + pid_b * sy_b + c.to(tl.int64) * sy_c
    col = (p % W) * H + p // W  # the column-major step that reads position p
    d = dim.to(tl.int64) * sy_c
    y0 = tl.load(y_b + p.to(tl.int64) * sy_t, mask=mask, other=0.0)
    y1 = tl.load(y_b + d + col.to(tl.int64) * sy_t, mask=mask, other=0.0)
    y2 = tl.load(y_b + 2 * d + (L - 1 - p).to(tl.int64) * sy_t, mask=mask, other=0.0)
    y3 = tl.load(y_b + 3 * d + (L - 1 - col).to(tl.int64) * sy_t, mask=mask, other=0.0)
    row = (y0.to(tl.float32) + y2.to(tl.float32)).to(y0.dtype)
    column = (y1.to(tl.float32) + y3.to(tl.float32)).to(y0.dtype)
    y = (row.to(tl.float32) + column.to(tl.float32)).to(y0.dtype).to(tl.float32)
    if NORM:
        y = _layer_norm_tile(y, mask, dim, w_ptr, b_ptr, tl.arange(0, BLOCK_C), eps, HAS_BIAS)
    if GELU:
        y = 0.5 * y * (1.0 + tl.erf(y * 0.7071067811865476))
    if HAS_Z:
        y = y * tl.load(z_ptr + pid_b * sz_b + p.to(tl.int64) * sz_t + c, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + pid_b * L * dim + p.to(tl.int64) * dim + c, y.to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------------------
# Triton's CPU interpreter: decided when the kernels were decorated (this module's import), as triton.jit decides it
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---------------------------------------------------------------------------------------------------------------------
# Launches
# ---------------------------------------------------------------------------------------------------------------------
# The host cost of a launch (issue 10; small shapes and the forward + backward are host-bound): triton's
# JITFunction.run binds and specializes every argument and builds a cache key on each call. H200 machine, fourteenth
# session (benchmarks/results/host_scan_2026-11-29b.log), the training forward's kernel (53 arguments): 36-53 us a
# launch through triton, 8-12 us for the compiled kernel's launcher alone, 18-20 us for triton's binder alone.
# _Launcher keeps each kernel's compiled variants under a key of what triton specializes on (a tensor's dtype and
# address mod 16, an int's value mod 16 or its being 1, its width, the constexprs and launch options) and calls the
# launcher directly, with the same hooks and metadata that triton passes; a key's first launch goes through triton,
# which compiles or finds the variant. Only with the triton versions whose run() this follows (3.4 to 3.6); not under
# the interpreter.
_VERSION = tuple(int(p) for p in re.findall(r"\d+", triton.__version__)[:2])
_FAST_LAUNCH = not _INTERPRET and (3, 4) <= _VERSION <= (3, 6) and hasattr(triton, "knobs")


_PLAIN = (bool, float, type(None))  # not specialized on value by triton


def _launch_key(args):
    """What triton's specialization of ``args`` depends on (see _Launcher), at least as finely: for a tensor its dtype
    and address mod 16; for an int whether it is 1 (a constant to triton), its value mod 16 and whether it fits 32
    bits; bools, floats and None by type. None (launch through triton) if an argument is of another type (a numpy
    int, a 0-d tensor...), whose specialization this does not follow."""
    T = torch.Tensor
    key = tuple([(a.dtype, a.data_ptr() & 15) if isinstance(a, T)
                 else (-1 if a == 1 else a & 15, -2147483648 <= a < 2147483648) if type(a) is int
                 else type(a) if type(a) in _PLAIN else _PLAIN for a in args])
    return None if _PLAIN in key else key


class _Launcher:
    """A triton kernel (``kernel[grid](*args, **constexprs_and_options)``) launched through its compiled variants'
    launchers (see the comment above); every other attribute is the kernel's."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.variants = {}

    def __getattr__(self, name):
        return getattr(self.kernel, name)

    def __getitem__(self, grid):
        return lambda *args, **meta: self.launch(grid, args, meta)

    def launch(self, grid, args, meta):
        driver = triton.runtime.driver.active
        device = driver.get_current_device()
        arg_key = _launch_key(args)
        key = (device, tuple(meta.items()), arg_key)
        hit = self.variants.get(key)
        if hit is None:
            compiled = self.kernel[grid](*args, **meta)
            params = self.kernel.params[len(args):]
            if arg_key is not None and all(p.is_constexpr for p in params):  # the rest: constexprs, passed on too
                if len(self.variants) > 256:
                    self.variants.clear()
                self.variants[key] = compiled, [meta.get(p.name, p.default) for p in params]
            return compiled
        compiled, tail = hit
        stream = driver.get_current_stream(device)
        runtime = triton.knobs.runtime
        g0, g1, g2 = (tuple(grid) + (1, 1))[:3]
        compiled.run(g0, g1, g2, stream, compiled.function, compiled.packed_metadata,
                     compiled.launch_metadata(grid, stream, *args, *tail), runtime.launch_enter_hook,
                     runtime.launch_exit_hook, *args, *tail)
        return compiled


if _FAST_LAUNCH:
    for _name in [n for n, k in globals().items() if n.endswith("_kernel") and isinstance(k, triton.JITFunction)]:
        globals()[_name] = _Launcher(globals()[_name])


def _cdiv(a: int, b: int) -> int:
    """ceil(a / b) for the host code (triton.cdiv is a constexpr function whose host call costs microseconds)."""
    return -(-a // b)


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
        if not t.is_cuda and not _INTERPRET:
            raise ValueError(
                f"{op}: {name} is on device '{t.device}', but the Triton kernels need CUDA tensors. Move the inputs "
                "to a GPU with .cuda(), or use backend='torch' (ssm_ops.selective_scan(..., backend='torch'))."
            )


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _bc4(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(1) if t.dim() == 3 else t


def _time_major(t: torch.Tensor) -> bool:
    """(..., C, L) with unit stride along C (channel / state index) and not along L: each time step is one run of
    consecutive elements (e.g. ``x.transpose(1, 2)`` of a (batch, L, C) tensor, as a Mamba mixer produces them)."""
    return t.shape[-1] > 1 and t.stride(-2) == 1 and t.stride(-1) != 1


def _strided(t: torch.Tensor) -> torch.Tensor:
    """t (..., C, L) as the kernels take it: kept as is when it is channel-major (unit stride along L) or time-major
    (unit stride along C) and the per-step offsets (t * stride_L) fit in int32; else a contiguous copy."""
    if (t.stride(-1) == 1 or t.stride(-2) == 1) and (t.shape[-1] - 1) * t.stride(-1) < 2**31:
        return t
    return t.contiguous()


def _is_channel_major(t: torch.Tensor) -> bool:
    """Whether t (..., C, L) has unit stride along L (or one step)."""
    return t.stride(-1) == 1 or t.shape[-1] == 1


def _channel_major(t: torch.Tensor) -> torch.Tensor:
    """t (..., C, L) with unit stride along L (a contiguous copy unless it has one: one tiled kernel for 3-D)."""
    if _is_channel_major(t):
        return t
    return transpose_copy_triton(t) if t.dim() == 3 else t.contiguous()


def _as_dtype(t: torch.Tensor, dtype) -> torch.Tensor:
    """t in dtype (t itself when it has it: no call into torch)."""
    return t if t.dtype == dtype else t.to(dtype)


def _tile_inputs(u, delta, B, C, z):
    """The time-tiled kernels' inputs, channel-major: they load BLOCK_T consecutive steps of a channel, and time-major
    views (a mixer's delta / z / B / C are views of linear outputs) would make each of those loads touch one cache line
    a step (H200, B16 D1536 L1024 in the mixer's layout: 3.7 ms a call against 0.22 ms). delta and z are copied in one
    launch, B and C in one cat (a host-bound prefill pays per launch)."""
    u = _channel_major(u)
    if z is not None and delta.shape == z.shape and not (_is_channel_major(delta) or _is_channel_major(z)):
        delta, z = transpose_copy_triton(delta, z)
    else:
        delta, z = _channel_major(delta), None if z is None else _channel_major(z)
    if B.shape == C.shape and not (_is_channel_major(B) and _is_channel_major(C)):
        N = B.shape[2]
        bc = _channel_major(torch.cat([B, C], dim=2))
        B, C = bc[:, :, :N], bc[:, :, N:]
    else:
        B, C = _channel_major(B), _channel_major(C)
    return u, delta, B, C, z


def _time_major_empty(batch: int, C: int, L: int, **kw) -> torch.Tensor:
    """An empty (batch, C, L) tensor stored (batch, L, C): a step is one run of C consecutive values, and its
    (batch * L, C) matrix is a view."""
    return torch.empty((batch, L, C), **kw).transpose(1, 2)


def _empty_as(t: torch.Tensor, dtype=None) -> torch.Tensor:
    """An empty (batch, C, L) tensor in t's layout: time-major if t is, else with t's strides when t is dense (e.g.
    stored (C, batch, L), as _token_rows), else contiguous (coalesced writes)."""
    dtype = t.dtype if dtype is None else dtype
    if _time_major(t):
        return _time_major_empty(*t.shape, device=t.device, dtype=dtype)
    if t.stride(-1) == 1:
        return torch.empty_like(t, dtype=dtype)  # t's strides when it is non-overlapping and dense, else contiguous
    return torch.empty(t.shape, device=t.device, dtype=dtype)


# Layout policy of the wrapper: u_to_time_major makes u time-major (one transposing copy) when it is channel-major but
# delta is time-major, as in a Mamba mixer (u = the conv output, delta / z / B / C = views of linear outputs). Off: on
# an H100 the copy costs more than it saves (mixer layout, L=4096: fwd 1.62 ms with it, 1.24 ms without; see
# benchmarks/README.md, "Selective scan on GPU").
# lane_y_time_major: the lane forward writes y time-major whatever u's layout (the wrapper's choice: with a
# channel-major y each step stores one value a channel into its own sector, which kept L2 80% busy at B128 D768
# L197; with u and y time-major the kernel ran 0.335 -> 0.188 ms, H200). On: with a channel-major u, 0.333 -> 0.194 ms
# at B128 D768 L197 and 0.500 -> 0.417 ms at B4 D768 L6085 (H200, sixth session, results/anatomy_2026-11-28e.json).
LAYOUT = {"u_to_time_major": False, "lane_y_time_major": True}


def _fwd_chunking(programs: int, L: int, need_grad: bool):
    """(CHUNK, parallel) of the forward: time-parallel when batch x channel blocks gives too few programs."""
    cfg = PARALLEL_CONFIG
    if need_grad:
        chunk = _grad_chunk(L)
    else:
        want = _cdiv(cfg["target_programs"], programs)  # chunks per (batch, channel block)
        chunk = max(int(cfg["min_chunk"]), 16 * _cdiv(_cdiv(L, want), 16))
    parallel = programs < cfg["parallel_below"] and L > chunk
    return (chunk if parallel or need_grad else L), parallel


def _state_blocks(N: int) -> int:
    """How many times more channels the one-warp sequential kernels take a program for N states than for 16: their
    (BLOCK_D, N_P2) tiles keep the element count the block sizes were tuned with (VMamba's N = 1 left 15 of 16 lanes of
    the backward's (8, 1) tile idle: 51 of its 180 ms training step at 1248 px, H200)."""
    return max(1, 16 // _next_pow2(N))


def _fwd_blocks(dg: int, N: int = 16):
    """(BLOCK_D, channel blocks) of the one-warp forward kernels for dg channels a B/C group and N states: their
    program count (batch x G x blocks; at N = 16 for the kernel choices below) is what those choices weigh."""
    block = min(FWD_CONFIG["BLOCK_D"] * _state_blocks(N), _next_pow2(dg))
    return block, _cdiv(dg, block)


def _block_t(block: int, L: int) -> int:
    """Steps a tile of the time-tiled kernels (``block``: a BLOCK_T of TILE_CONFIG or TILE_BWD_CONFIG), for a sequence
    of L steps."""
    return min(int(block), max(32, _next_pow2(L)))


def _few_and_long(programs: int, L: int, below: int) -> bool:
    """Fewer than ``below`` programs (batch x channel blocks) and a sequence of at least TILE_CONFIG["long"] steps:
    where a warp a channel walking all of L leaves the GPU part idle (the time-tiled kernels' rules)."""
    return programs < below and L >= TILE_CONFIG["long"]


def _use_tile_kernel(programs: int, L: int) -> bool:
    """Whether a forward without gradients runs _scan_fwd_tile_kernel (see TILE_CONFIG)."""
    cfg = TILE_CONFIG
    if cfg["enabled"] is not None:
        return bool(cfg["enabled"])
    return L >= cfg["min_len"] and not _few_and_long(programs, L, PARALLEL_CONFIG["parallel_below"])


def _programs(batch: int, dim: int, G: int) -> int:
    """batch x channel blocks of the one-warp kernels: the program count the kernel choices weigh."""
    return batch * G * _fwd_blocks(dim // G)[1]


def _inference_kernel(batch: int, dim: int, G: int, N: int, L: int, time_major: bool = True):
    """The inference forward selective_scan_triton runs: the lane kernel's plan (see _lane_plan; ``time_major``: u's
    layout), "tile" for the time-tiled kernel, or None for the sequential / chunked kernels (through the autograd
    Function)."""
    plan = _lane_plan(batch, dim, G, N, L, time_major)
    if plan is not None:
        return plan
    return "tile" if _use_tile_kernel(_programs(batch, dim, G), L) else None


def reads_channel_major(batch: int, dim: int, G: int, N: int, L: int, need_grad: bool) -> bool:
    """Whether selective_scan_triton runs a time-tiled kernel at this size (they read channel-major inputs; the lane
    kernel reads time-major ones): a mixer then produces delta / z channel-major (see ssm_ops)."""
    if need_grad:
        return _use_tile_bwd(_programs(batch, dim, G), L)
    return _inference_kernel(batch, dim, G, N, L) == "tile"


def _use_tile_bwd(programs: int, L: int) -> bool:
    """Whether a forward with gradients runs the time-tiled pair (see TILE_BWD_CONFIG)."""
    cfg = TILE_BWD_CONFIG
    if cfg["enabled"] is not None:
        return bool(cfg["enabled"])
    below = min(PARALLEL_CONFIG["parallel_below"], cfg.get("long_min_programs", 10**9))
    return L >= cfg["min_len"] and not _few_and_long(programs, L, below)


def _bwd_lanes(programs: int, nchunks: int) -> int:
    """Lanes of the time-parallel backward (1: sequential over all chunks)."""
    if programs >= PARALLEL_CONFIG["parallel_below"] or nchunks == 1:
        return 1
    lanes = min(nchunks, _cdiv(PARALLEL_CONFIG["target_programs"], programs))
    return _cdiv(nchunks, _cdiv(nchunks, lanes))  # no empty lane


def _carry_chunks(A, S, local, init, starts, final, reverse: bool, a_log: bool = False):
    """Pass 2 of the time-parallel scans (_chunk_carry_kernel) over all (batch, channel) rows (``a_log``: A holds
    A_log)."""
    batch, dim, nchunks, N = local.shape
    rows = batch * dim
    block = PARALLEL_CONFIG["carry_rows"]
    _chunk_carry_kernel[(_cdiv(rows, block),)](
        A, S, local, init if init is not None else local, starts, final, dim, N, nchunks, rows,
        HAS_INIT=init is not None, REVERSE=reverse, BLOCK_R=block, N_P2=_next_pow2(N), A_IS_LOG=a_log, num_warps=4,
    )


def _lane_plan(batch: int, dim: int, G: int, N: int, L: int, time_major: bool = True, training: bool = False):
    """(S, BLOCK_D, CHUNK, nchunks) of the lane forward, or None where it does not apply (see LANE_CONFIG;
    ``time_major``: u's layout, which sets how many warps the chunks aim at; ``training``: whatever the inference
    forward would choose, see _lane_train_plan)."""
    cfg = LANE_CONFIG
    if cfg["enabled"] is False or not _TUPLES:
        return None
    dg = dim // G
    if cfg["enabled"] is None and not training and _use_tile_kernel(_programs(batch, dim, G), L):
        return None  # where the time-tiled kernel is chosen, it stays
    lanes = 32 * int(cfg["num_warps"])
    splits = [S for S in (1, 2, 4) if S <= cfg["max_split"] and N % S == 0 and dg % (lanes // S) == 0]
    if not splits:
        return None
    S = next((S for S in splits if batch * dim * S // 32 >= cfg["min_warps"]), splits[-1])
    warps = max(1, batch * dim * S // 32)
    target = cfg.get("chunk_warps", cfg["min_warps"]) if time_major else cfg["min_warps"]
    want = 1 if warps >= cfg["min_warps"] else _cdiv(int(target), warps)  # chunks wanted per channel block
    chunk = L
    if want > 1:
        chunk = min(L, max(int(cfg["min_chunk"]), 2 * _cdiv(L, 2 * want)))  # one chunk: its trip count is L
    return S, lanes // S, chunk, _cdiv(L, chunk)


def _lane_train_plan(batch: int, dim: int, G: int, N: int, L: int, save_every: int):
    """The lane forward's plan (see _lane_plan) where it takes the time-tiled backward's forward (saving the state
    before every ``save_every`` steps; its chunks a multiple of that): TILE_BWD_CONFIG["fwd_lanes"] None = with few
    programs (below PARALLEL_CONFIG["parallel_below"]) and long sequences (TILE_CONFIG["long"]), where the lane kernel
    cuts the sequence into chunks and the time-tiled forward, a warp a channel, leaves the GPU part idle (B4 D768
    L6085); True / False = wherever it runs / never."""
    rule = TILE_BWD_CONFIG.get("fwd_lanes")
    few = _few_and_long(_programs(batch, dim, G), L, PARALLEL_CONFIG["parallel_below"])
    if rule is False or (rule is None and not few):
        return None
    plan = _lane_plan(batch, dim, G, N, L, time_major=False, training=True)
    if plan is None:
        return None
    S, BLOCK_D, chunk, nchunks = plan
    if nchunks > 1:
        chunk = save_every * _cdiv(chunk, save_every)
        nchunks = _cdiv(L, chunk)
    return S, BLOCK_D, (chunk if nchunks > 1 else L), nchunks


def _grad_chunk(L: int) -> int:
    """Steps between the states a forward with gradients saves for the backward: at most BWD_CONFIG["CHUNK"], a
    multiple of 4 (and of LANE_BWD_CONFIG["SUB"]), and as even as L allows (L = 197: 4 chunks of 52, not 3 of 64 and
    one of 5, which the kernels would still walk 64 steps long)."""
    most = int(BWD_CONFIG["CHUNK"])
    step = max(4, int(LANE_BWD_CONFIG["SUB"]))
    return min(step * _cdiv(most, step), step * _cdiv(_cdiv(L, _cdiv(L, most)), step))


def _lane_bwd_plan(dg: int, N: int, chunk: int, lanes: int = 1):
    """(S, CPT, SUB, channels a program) of the lane backward, or None where it does not apply (see LANE_BWD_CONFIG;
    ``lanes``: lanes of chunks the backward runs in)."""
    cfg = LANE_BWD_CONFIG
    if cfg["enabled"] is False or not _TUPLES or (cfg["enabled"] is None and lanes > 1):
        return None
    S, CPT, SUB = int(cfg["S"]), int(cfg["CPT"]), int(cfg["SUB"])
    block = 32 // S * CPT
    if N % S or dg % block or chunk % SUB:
        return None
    return S, CPT, SUB, block


def _steps(t: torch.Tensor, reverse: bool):
    """(pointer, strides) of a (..., L) tensor as the forward kernels index it (base + t * stride_L, t = 0 .. L-1):
    as it is, or with ``reverse`` from its last step back (a view at step L - 1 and the step stride negated), so a
    kernel scans the sequence backwards in place."""
    if not reverse:
        return t, t.stride()
    return t.narrow(-1, t.shape[-1] - 1, 1), (*t.stride()[:-1], -t.stride(-1))


def _bf16_words_apply(B, C, sB, sC, L: int) -> bool:
    """Whether the lane-tile kernels read B / C (batch, G, N, L) with strides sB / sC as bf16 pairs in 32-bit words (see
    _bf16_words): bf16, unit step stride, every row 4-byte aligned, L even (no word past the end)."""
    return (B.dtype == torch.bfloat16 and C.dtype == torch.bfloat16 and L % 2 == 0 and sB[3] == 1 and sC[3] == 1
            and all(s % 2 == 0 for s in tuple(sB[:3]) + tuple(sC[:3])) and B.data_ptr() % 4 == 0
            and C.data_ptr() % 4 == 0)


def _vector_bc(B, C, sB, sC, L: int) -> bool:
    """Whether _scan_fwd_seg_kernel reads B / C rows as they are in 16-byte vectors: unit step stride, the other
    strides, the base addresses and L multiples of what triton specializes on (16 elements / 16 bytes; L of 32, so the
    bf16 words' bound L // 2 is one too)."""
    return (sB[3] == 1 and sC[3] == 1 and L % 32 == 0 and all(s % 16 == 0 for s in tuple(sB[:3]) + tuple(sC[:3]))
            and B.data_ptr() % 16 == 0 and C.data_ptr() % 16 == 0)


def _staged_bc(B_p, sB, C_p, sC, batch: int, G: int, N: int, L: int):
    """B and C (their step-0 pointers and strides as the forward kernels take them) copied by one kernel into rows of
    Lp = L rounded up to 32 steps, zero past L: ((B, strides), (C, strides), Lp)."""
    Lp = 32 * _cdiv(L, 32)
    out = torch.empty((2, batch, G, N, Lp), device=B_p.device, dtype=B_p.dtype)
    block_n, block_t = _next_pow2(N), 64
    _stage_bc_kernel[(2 * batch * G, _cdiv(Lp, block_t))](B_p, C_p, out, batch, G, N, L, Lp, *sB, *sC,
                                                          BLOCK_N=block_n, BLOCK_T=block_t, num_warps=4)
    return (out[0], out[0].stride()), (out[1], out[1].stride()), Lp


def _tile_forward(u, delta, A, B, C, D, z, delta_bias, h0, softplus: bool, block_t: int, save_states: bool,
                  reverse: bool = False, a_log: bool = False, save_every: int = 0):
    """Forward by _scan_fwd_tile_kernel (channel-major inputs): y, the last state and (save_states: the state before
    every ``save_every`` steps (default: every tile), for _scan_bwd_tile_kernel) the saved states."""
    batch, dim, L = u.shape
    G, N = B.shape[1], A.shape[1]
    save_every = save_every or block_t
    nchunks = _cdiv(L, save_every)
    y = _empty_as(u)
    h_last = torch.empty((batch, dim, N), device=u.device, dtype=torch.float32)
    states = torch.empty((batch, dim, nchunks, N), device=u.device, dtype=torch.float32) if save_states else h_last
    (u_p, su), (dl_p, sdl), (z_p, sz), (y_p, sy), (B_p, sB), (C_p, sC) = (
        _steps(t, reverse) for t in (u, delta, z if z is not None else u, y, B, C))
    R = 2 if TILE_CONFIG["seg"] >= 2 and block_t >= 512 else 1  # lanes of 8 R steps, tiles of 256 R
    seg = TILE_CONFIG["seg"] and _TUPLES and save_every % (8 * R) == 0  # see _scan_fwd_seg_kernel
    lbc = L  # the B / C rows' length the seg kernel reads
    if seg and B_p.dtype == C_p.dtype and not _vector_bc(B_p, C_p, sB, sC, L) and \
            0 < TILE_CONFIG.get("stage_bc", 0) <= batch * dim * L:  # B / C copied into aligned rows (see TILE_CONFIG)
        (B_p, sB), (C_p, sC), lbc = _staged_bc(B_p, sB, C_p, sC, batch, G, N, L)
    args = (u_p, dl_p, A, B_p, C_p, D if D is not None else u, z_p, delta_bias if delta_bias is not None else u,
            h0 if h0 is not None else h_last, y_p, h_last, states,
            dim, L, dim // G, G, N, nchunks, *su, *sdl, *sz, *sy, *sB, *sC)
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus),
                 HAS_H0=h0 is not None, SAVE_STATES=save_states, A_IS_LOG=a_log, SAVE_EVERY=save_every)
    if seg:
        words = _bf16_words_apply(B_p, C_p, sB, sC, lbc)
        cfg = {"maxnreg": TILE_BWD_CONFIG.get("fwd_maxnreg", 0), "prefetch": TILE_BWD_CONFIG.get("fwd_prefetch", 1)}
        cfg = cfg if save_states else TILE_CONFIG
        opts = {"maxnreg": cfg["maxnreg"]} if cfg.get("maxnreg") else {}
        _scan_fwd_seg_kernel[(batch * dim,)](*args, lbc, **flags, R=R, FAST=not _INTERPRET, WORDS=words,
                                             STAGES=TILE_CONFIG.get("stages", 1),
                                             PREFETCH=bool(cfg.get("prefetch", 0)), num_warps=1, **opts)
    else:
        _scan_fwd_tile_kernel[(batch * dim,)](
            *args, **flags, BLOCK_T=block_t, N_P2=_next_pow2(N),
            num_warps=TILE_BWD_CONFIG["fwd_warps"] if save_states else TILE_CONFIG["num_warps"])
    return y, h_last, (states if save_states else None)


def _lane_vector(B: torch.Tensor, C: torch.Tensor, per_thread: int) -> int:
    """Values a 16-byte load of B / C (batch, G, N, L) holds where the lane kernel can read them in place (e.g. the
    slices of a mixer's x_proj output: one dtype, unit stride along N, every row 16-byte aligned, the values a thread
    takes a multiple of it), else 0 (they go through an fp32 row buffer)."""
    if B.dtype != C.dtype or B.dtype not in _SUPPORTED:
        return 0
    size = B.element_size()
    vec = 16 // size
    if per_thread % vec:
        return 0
    for t in (B, C):
        if t.stride(2) != 1 or t.data_ptr() % 16:
            return 0
        if any(t.shape[i] > 1 and (t.stride(i) * size) % 16 for i in (0, 1, 3)):
            return 0
    return vec


def _lane_forward(u, delta, A, B, C, D, z, delta_bias, h0, softplus: bool, plan, reverse: bool = False,
                  a_log: bool = False, mean_into=None, save_every: int = 0):
    """Forward by _scan_fwd_lane_kernel (see _lane_plan): y and the last state (``reverse``: scanned from the last
    step back, see _steps; ``a_log``: A holds A_log, the kernel takes -exp of it; ``mean_into``: y is the mean of this
    tensor and the scan's output, written into it); with ``save_every`` (training, see _lane_train_plan) also the
    state before every save_every steps, (batch, dim, nsave, N), as _tile_forward saves them."""
    batch, dim, L = u.shape
    G, N = B.shape[1], A.shape[1]
    S, BLOCK_D, chunk, nchunks = plan
    f32 = dict(device=u.device, dtype=torch.float32)
    VEC = _lane_vector(B, C, N // S)
    if not VEC:
        # B_t and C_t of a step side by side in one fp32 row (padded to ROW, a multiple of 4: 16-byte loads), a
        # copy of 2 N values a step (B / C are N / dim of the scan's inputs)
        ROW = 4 * _cdiv(N, 4)
        bc = torch.empty((batch, G, L, 2 * ROW), **f32)
        bc[..., :N].copy_(B.transpose(2, 3))
        bc[..., ROW:ROW + N].copy_(C.transpose(2, 3))
        B, C = bc[..., :N].transpose(2, 3), bc[..., ROW:ROW + N].transpose(2, 3)
        VEC = 4 if (N // S) % 4 == 0 else 1
    elif VEC == 8 and B.dtype == torch.bfloat16 and LANE_CONFIG.get("bf16_words", True):
        VEC = 16  # bf16 rows converted by bit operations on whole words (see _lane_row)
    if mean_into is not None:
        y = mean_into
    elif LAYOUT.get("lane_y_time_major", False) and not _time_major(u) and L > 1:
        y = _time_major_empty(batch, dim, L, device=u.device, dtype=u.dtype)
    else:
        y = _empty_as(u)
    h_last = torch.empty((batch, dim, N), **f32)
    parallel = nchunks > 1
    states = torch.empty((batch, dim, nchunks, N), **f32) if parallel else h_last
    hend = torch.empty_like(states) if parallel else states
    S_sum = torch.empty((batch, dim, nchunks), **f32) if parallel else states
    nsave = _cdiv(L, save_every) if save_every else 0
    saved = torch.empty((batch, dim, nsave, N), **f32) if save_every else None
    (u_p, su), (dl_p, sdl), (z_p, sz), (y_p, sy), (B_p, sB), (C_p, sC) = (
        _steps(t, reverse) for t in (u, delta, z if z is not None else u, y, B, C))
    bc_strides = [st[i] if t.shape[i] > 1 else 0 for t, st in ((B, sB), (C, sC)) for i in (0, 1, 3)]  # 0: unused
    common = (dim, L, dim // G, nchunks, chunk, nsave, *su, *sdl, *sz, *sy, *bc_strides)
    flags = dict(N=N, S=S, VEC=VEC, FAST=not _INTERPRET,
                 HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus),
                 HAS_H0=h0 is not None, BLOCK_D=BLOCK_D, A_IS_LOG=a_log, MEAN=mean_into is not None,
                 num_warps=int(LANE_CONFIG["num_warps"]))
    args = (u_p, dl_p, A, B_p, C_p, D if D is not None else u, z_p, delta_bias if delta_bias is not None else u,
            h0 if h0 is not None else h_last, y_p, h_last, states, hend, S_sum, saved if save_every else h_last)
    if parallel:  # pass 1: chunk end states from zero; pass 2: every chunk's start state (and the last state)
        _scan_fwd_lane_kernel[(batch, dim // BLOCK_D, nchunks)](*args, *common, MODE=1, **flags)
        _carry_chunks(A, S_sum, hend, h0, states, h_last, reverse=False, a_log=a_log)
    _scan_fwd_lane_kernel[(batch, dim // BLOCK_D, nchunks)](*args, *common, MODE=2 if parallel else 0,
                                                            SAVE_EVERY=save_every, **flags)
    return (y, h_last, saved) if save_every else (y, h_last)


# ---------------------------------------------------------------------------------------------------------------------
# autograd.Function: inputs are channel-major or time-major (see _strided), B/C are (batch, G, N, L) with one G.
# ---------------------------------------------------------------------------------------------------------------------
class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, softplus, return_last):
        batch, dim, L = u.shape
        G, N = B.shape[1], A.shape[1]
        dg = dim // G
        need_grad = any(ctx.needs_input_grad[:9])
        BLOCK_D, nblk = _fwd_blocks(dg, N)
        # inference with the time-tiled (or the lane) kernel never comes here: selective_scan_triton runs it directly
        if need_grad and _use_tile_bwd(_programs(batch, dim, G), L):  # the time-tiled pair, a program a channel
            u, delta, B, C, z = _tile_inputs(u, delta, B, C, z)
            block_t = _block_t(TILE_BWD_CONFIG["BLOCK_T"], L)  # the backward's tile: a state saved before each
            fwd_block = max(block_t, _block_t(TILE_BWD_CONFIG["fwd_BLOCK_T"], L))
            plan = _lane_train_plan(batch, dim, G, N, L, block_t)
            if plan is not None:
                y, h_last, states = _lane_forward(u, delta, A, B, C, D, z, delta_bias, h0, softplus, plan,
                                                  save_every=block_t)
            else:
                y, h_last, states = _tile_forward(u, delta, A, B, C, D, z, delta_bias, h0, softplus, fwd_block, True,
                                                  save_every=block_t)
            ctx.softplus = bool(softplus)
            ctx.has = (D is not None, z is not None, delta_bias is not None, h0 is not None)
            ctx.dtypes = tuple(None if t is None else t.dtype for t in (A, D, delta_bias, h0))
            ctx.chunk = (block_t, states.shape[2])  # (the backward walks the saved states: a tile each)
            ctx.tile = True
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
            ctx.set_materialize_grads(False)
            return y, h_last
        CHUNK, parallel = _fwd_chunking(batch * G * nblk, L, need_grad)
        nchunks = _cdiv(L, CHUNK)
        y = _empty_as(u)
        h_last = torch.empty((batch, dim, N), device=u.device, dtype=torch.float32)
        states = (torch.empty((batch, dim, nchunks, N), device=u.device, dtype=torch.float32)
                  if need_grad or parallel else h_last)
        if parallel:  # passes 1 and 2: every chunk's start state (and the last state)
            hend = torch.empty_like(states)
            S = torch.empty((batch, dim, nchunks), device=u.device, dtype=torch.float32)
            _chunk_end_kernel[(batch * G, nblk, nchunks)](
                u, delta, A, B, delta_bias if delta_bias is not None else u, hend, S,
                dim, L, dg, G, N, nchunks, CHUNK, *u.stride(), *delta.stride(), *B.stride(),
                HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus), BLOCK_D=BLOCK_D, N_P2=_next_pow2(N),
                num_warps=FWD_CONFIG["num_warps"],
            )
            _carry_chunks(A, S, hend, h0, states, h_last, reverse=False)
        _scan_fwd_kernel[(batch * G, nblk, nchunks if parallel else 1)](
            u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
            delta_bias if delta_bias is not None else u, h0 if h0 is not None else h_last,
            y, h_last, states,
            dim, L, dg, G, N, nchunks, CHUNK,
            *u.stride(), *delta.stride(), *(z if z is not None else u).stride(), *y.stride(), *B.stride(), *C.stride(),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus),
            HAS_H0=h0 is not None, SAVE_STATES=need_grad and not parallel, PARALLEL=parallel,
            BLOCK_D=BLOCK_D, N_P2=_next_pow2(N), num_warps=FWD_CONFIG["num_warps"],
        )
        ctx.softplus = bool(softplus)
        ctx.has = (D is not None, z is not None, delta_bias is not None, h0 is not None)
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (A, D, delta_bias, h0))
        ctx.chunk = (CHUNK, nchunks)
        ctx.tile = False
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        ctx.set_materialize_grads(False)
        return y, h_last

    @staticmethod
    def backward(ctx, gy, g_last):
        if ctx.tile:
            return _SelectiveScanFn._tile_backward(ctx, gy, g_last)
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        batch, dim, L = u.shape
        G, N = B.shape[1], A.shape[1]
        dg = dim // G
        BG = batch * G
        CHUNK, nchunks = ctx.chunk
        BLOCK_D = min(BWD_CONFIG["BLOCK_D"] * _state_blocks(N), _next_pow2(dg))
        N_P2 = _next_pow2(N)
        nblk = _cdiv(dg, BLOCK_D)
        lanes = _bwd_lanes(BG * nblk, nchunks)
        lane_plan = _lane_bwd_plan(dg, N, CHUNK, lanes)
        atomic = (bool(BWD_CONFIG.get("atomic", False)) and nblk > 1) or lane_plan is not None
        has_D, has_z, has_bias, has_h0 = ctx.has
        dev = u.device
        gy = _empty_as(u).zero_() if gy is None else _strided(gy)
        gu, gdl = _empty_as(u), _empty_as(delta)
        gz = _empty_as(z) if has_z else None
        if atomic:
            gBp = torch.zeros((1, BG, L, N), device=dev, dtype=torch.float32)
            gCp = torch.zeros((1, BG, L, N), device=dev, dtype=torch.float32)
        else:
            gBp = torch.empty((nblk, BG, L, N), device=dev, dtype=torch.float32)
            gCp = torch.empty((nblk, BG, L, N), device=dev, dtype=torch.float32)
        gA = torch.empty((batch, dim, N), device=dev, dtype=torch.float32)
        gD = torch.empty((batch, dim), device=dev, dtype=torch.float32) if has_D else None
        gbias = torch.empty((batch, dim), device=dev, dtype=torch.float32) if has_bias else None
        need_gh0 = has_h0 and ctx.needs_input_grad[8]
        gh0 = torch.empty((batch, dim, N), device=dev, dtype=torch.float32) if need_gh0 else None
        if g_last is not None:
            g_last = g_last.contiguous().float()
        carry_in = g_last
        if lanes > 1:  # passes 1 and 2: the adjoint carried into every chunk from the right (and dL/dh0)
            local = torch.empty_like(states)
            S = torch.empty((batch, dim, nchunks), device=dev, dtype=torch.float32)
            bd, nbd = _fwd_blocks(dg, N)
            _chunk_adjoint_kernel[(BG, nbd, nchunks)](
                delta, A, C, z if has_z else u, delta_bias if has_bias else u, gy, local, S,
                dim, L, dg, G, N, nchunks, CHUNK, *delta.stride(), *(z if has_z else u).stride(), *gy.stride(),
                *C.stride(), HAS_Z=has_z, HAS_BIAS=has_bias, SOFTPLUS=ctx.softplus, BLOCK_D=bd, N_P2=N_P2,
                num_warps=FWD_CONFIG["num_warps"],
            )
            carry_in = torch.empty_like(states)
            _carry_chunks(A, S, local, g_last, carry_in, gh0 if need_gh0 else torch.empty_like(gA), reverse=True)
            gA = torch.empty((lanes, batch, dim, N), device=dev, dtype=torch.float32)
            gD = torch.empty((lanes, batch, dim), device=dev, dtype=torch.float32) if has_D else None
            gbias = torch.empty((lanes, batch, dim), device=dev, dtype=torch.float32) if has_bias else None
        if lane_plan is not None:  # the register-lane kernel (see LANE_BWD_CONFIG)
            S, CPT, SUB, block = lane_plan
            programs = batch * (dim // block) * lanes
            scratch = torch.empty((programs * (CHUNK // SUB) * 32 * CPT * (N // S),), device=dev, dtype=torch.float32)
            _scan_bwd_lane_kernel[(batch, dim // block, lanes)](
                u, delta, A, B, C, D if has_D else u, z if has_z else u, delta_bias if has_bias else u, states, gy,
                carry_in if carry_in is not None else gA,
                gu, gdl, gz if has_z else gu, gA, gBp, gCp, gD if has_D else gA, gbias if has_bias else gA,
                gh0 if need_gh0 else gA, scratch,
                dim, L, dg, nchunks, CHUNK, _cdiv(nchunks, lanes),
                *u.stride(), *delta.stride(), *(z if has_z else u).stride(), *gy.stride(),
                *gu.stride(), *gdl.stride(), *(gz if has_z else gu).stride(), *B.stride(), *C.stride(),
                N=N, S=S, CPT=CPT, SUB=SUB, FAST=not _INTERPRET, HAS_D=has_D, HAS_Z=has_z, HAS_BIAS=has_bias,
                SOFTPLUS=ctx.softplus, HAS_GHL=g_last is not None, NEED_GH0=need_gh0 and lanes == 1,
                PARALLEL=lanes > 1, A_IS_LOG=False, num_warps=1,
            )
        else:
            scratch = torch.empty((BG * nblk * lanes * CHUNK * BLOCK_D * N_P2,), device=dev, dtype=torch.float32)
            _scan_bwd_kernel[(BG, nblk, lanes)](
                u, delta, A, B, C, D if has_D else u, z if has_z else u, delta_bias if has_bias else u, states, gy,
                carry_in if carry_in is not None else gA,
                gu, gdl, gz if has_z else gu, gA, gBp, gCp, gD if has_D else gA, gbias if has_bias else gA,
                gh0 if need_gh0 else gA, scratch,
                dim, L, dg, G, N, nchunks, CHUNK, BG, _cdiv(nchunks, lanes),
                *u.stride(), *delta.stride(), *(z if has_z else u).stride(), *gy.stride(),
                *gu.stride(), *gdl.stride(), *(gz if has_z else gu).stride(), *B.stride(), *C.stride(),
                HAS_D=has_D, HAS_Z=has_z, HAS_BIAS=has_bias, SOFTPLUS=ctx.softplus,
                HAS_GHL=g_last is not None, NEED_GH0=need_gh0 and lanes == 1, ATOMIC=atomic, PARALLEL=lanes > 1,
                BLOCK_D=BLOCK_D, N_P2=N_P2, num_warps=BWD_CONFIG["num_warps"],
            )
        # per (lane,) batch: summed over both below
        gA = gA.reshape(-1, dim, N)
        gD = gD.reshape(-1, dim) if has_D else None
        gbias = gbias.reshape(-1, dim) if has_bias else None
        # (nblk, BG, L, N) -> (batch, G, N, L): time-major, kept so for time-major B / C, else made contiguous
        gB = (gBp[0] if gBp.shape[0] == 1 else gBp.sum(0)).view(batch, G, L, N).transpose(2, 3).to(B.dtype)
        gC = (gCp[0] if gCp.shape[0] == 1 else gCp.sum(0)).view(batch, G, L, N).transpose(2, 3).to(C.dtype)
        gB = gB if _time_major(B) else gB.contiguous()
        gC = gC if _time_major(C) else gC.contiguous()
        A_dt, D_dt, bias_dt, h0_dt = ctx.dtypes
        return (
            gu, gdl, gA.sum(0).to(A_dt), gB, gC,
            gD.sum(0).to(D_dt) if has_D else None, gz,
            gbias.sum(0).to(bias_dt) if has_bias else None,
            gh0.to(h0_dt) if need_gh0 else None, None, None,
        )


    @staticmethod
    def _tile_backward(ctx, gy, g_last):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        batch, dim, L = u.shape
        G, N = B.shape[1], A.shape[1]
        block_t, nchunks = ctx.chunk
        has_D, has_z, has_bias, has_h0 = ctx.has
        dev = u.device
        f32 = dict(device=dev, dtype=torch.float32)
        gy = _empty_as(u).zero_() if gy is None else _channel_major(gy)  # (the mixer's gy is time-major)
        gu, gdl = _empty_as(u), _empty_as(delta)
        gz = _empty_as(z) if has_z else None
        # dB, dC (summed over channels by atomics), dA, dD, d(delta_bias) (over the batch): one zeroed buffer, each
        # at a 16-byte boundary
        nbc = 2 * batch * G * N * L
        o_a = _cdiv(nbc, 4) * 4
        o_d = o_a + _cdiv(dim * N, 4) * 4
        o_b = o_d + _cdiv(dim, 4) * 4
        sums = torch.zeros((o_b + dim,), **f32)
        gBC = sums[:nbc].view(2, batch, G, N, L)
        gA, gD, gbias = sums[o_a:o_a + dim * N].view(dim, N), sums[o_d:o_d + dim], sums[o_b:o_b + dim]
        carry = torch.empty((batch, dim, 2, N), **f32)  # the carries (end as dL/dh0), the dA sums so far
        ghl = g_last.contiguous().float() if g_last is not None else None
        warps = TILE_BWD_CONFIG["num_warps"]
        lanes = bool(TILE_BWD_CONFIG.get("lanes", True)) and _TUPLES and block_t == 128 and warps == 1
        ch2 = lanes and bool(TILE_BWD_CONFIG.get("channel_pairs", True)) and (dim // G) % 2 == 0
        _scan_bwd_tile_kernel[(batch * dim // (2 if ch2 else 1),)](
            u, delta, A, B, C, D if has_D else u, z if has_z else u, delta_bias if has_bias else u, states, gy,
            ghl if ghl is not None else carry,
            gu, gdl, gz if has_z else gu, gA, gBC[0], gBC[1], gD, gbias, carry,
            dim, L, dim // G, G, N, nchunks,
            *u.stride(), *delta.stride(), *(z if has_z else u).stride(), *gy.stride(),
            *gu.stride(), *gdl.stride(), *(gz if has_z else gu).stride(), *B.stride(), *C.stride(),
            HAS_D=has_D, HAS_Z=has_z, HAS_BIAS=has_bias, SOFTPLUS=ctx.softplus, HAS_GHL=ghl is not None,
            BLOCK_T=block_t, LANES=lanes, CH2=ch2, FAST=not _INTERPRET,
            num_warps=warps, **({"maxnreg": TILE_BWD_CONFIG["maxnreg"]} if TILE_BWD_CONFIG.get("maxnreg") else {}),
        )
        A_dt, D_dt, bias_dt, h0_dt = ctx.dtypes
        need_gh0 = has_h0 and ctx.needs_input_grad[8]
        gB, gC = gBC.to(B.dtype).unbind(0) if B.dtype == C.dtype else (gBC[0].to(B.dtype), gBC[1].to(C.dtype))
        return (
            gu, gdl, _as_dtype(gA, A_dt), gB, gC, _as_dtype(gD, D_dt) if has_D else None, gz,
            _as_dtype(gbias, bias_dt) if has_bias else None,
            carry[:, :, 0].to(h0_dt) if need_gh0 else None, None, None,
        )

def reverse_in_place(*tensors) -> bool:
    """Whether selective_scan_triton(..., reverse=True) reads the steps backwards in place for these inputs: when no
    gradient is needed (the inference forwards take negative step strides; the training kernels do not)."""
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    initial_state=None, reverse=False, a_log=False, mean_into=None,
):
    """Selective scan with Triton kernels (CUDA tensors; float16 / bfloat16 / float32; state in fp32).
    Same arguments and results as ``ssm_ops.selective_scan_ref``; ``reverse`` (inference only, see
    reverse_in_place): scanned from the last step to the first, inputs and y in their given order; ``a_log``: A holds
    A_log and the scan uses A = -exp(A_log) (the inference kernels take -exp themselves: no launches for it);
    ``mean_into`` (see ssm_ops.selective_scan): y is (mean_into + y) / 2, written into mean_into (the lane kernel
    averages as it stores)."""
    _check_tensors("selective_scan_triton", u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                   initial_state=initial_state)
    if mean_into is not None:
        _check_tensors("selective_scan_triton", mean_into=mean_into)
    batch, dim, L = u.shape
    if L == 0:
        y = u.new_zeros(u.shape) if mean_into is None else mean_into
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
    # u / delta / z / B / C: channel-major or time-major as given (no copies; see _strided); u is made time-major
    # when delta is only if LAYOUT["u_to_time_major"] (off by default). A stays fp32 inside; D / delta_bias /
    # initial_state are read as fp32.
    if LAYOUT.get("u_to_time_major", False) and _time_major(delta) and not _time_major(u):
        u = u.transpose(1, 2).contiguous().transpose(1, 2)
    args = (_strided(u), _strided(delta), A.contiguous(), _strided(B4), _strided(C4),
            None if D is None else D.contiguous(), None if z is None else _strided(z),
            None if delta_bias is None else delta_bias.contiguous(),
            None if initial_state is None else initial_state.contiguous())
    inference = reverse_in_place(*args)
    if reverse and not inference:
        raise ValueError("selective_scan_triton: reverse=True runs without gradients only; for training pass flipped "
                         "inputs (ssm_ops.selective_scan(..., reverse=True) does that).")
    softplus, G = bool(delta_softplus), B4.shape[1]
    kernel = _inference_kernel(batch, dim, G, A.shape[1], L, _time_major(args[0])) if inference else None
    if kernel is not None and kernel != "tile":  # no autograd node; with mean_into, averaged as it stores y
        y, h_last = _lane_forward(*args, softplus, kernel, reverse=bool(reverse), a_log=bool(a_log),
                                  mean_into=mean_into)
        mean_into = None
    elif kernel == "tile":  # no autograd node
        u_, delta_, B_, C_, z_ = _tile_inputs(args[0], args[1], args[3], args[4], args[6])
        y, h_last, _ = _tile_forward(u_, delta_, args[2], B_, C_, args[5], z_, *args[7:], softplus,
                                     _block_t(TILE_CONFIG["BLOCK_T"], L), False, reverse=bool(reverse),
                                     a_log=bool(a_log))
    else:
        if a_log:  # the other kernels (and training, through autograd) take A itself
            args = (args[0], args[1], -torch.exp(args[2].float())) + args[3:]
        if inference:  # the Function reads needs_input_grad, which a parameter (D) sets even under no_grad
            args = tuple(None if t is None else t.detach() for t in args)
        if reverse:  # the sequential / chunked forwards on flipped copies
            flip = (lambda t: None if t is None else t.flip(-1))
            u_, delta_, A_, B_, C_, D_, z_ = args[:7]
            y, h_last = _SelectiveScanFn.apply(flip(u_), flip(delta_), A_, flip(B_), flip(C_), D_, flip(z_),
                                               *args[7:], softplus, True)
            y = y.flip(-1)
        else:
            y, h_last = _SelectiveScanFn.apply(*args, softplus, bool(return_last_state))
    if mean_into is not None:  # the other kernels: the mean as one more pass (lerp: in fp32, rounded once)
        y = mean_into.lerp_(y, 0.5)
    return (y, h_last) if return_last_state else y


def selective_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                                  a_log=False, dt_weight=None):
    """One decoding step. state (batch, dim, N) float32 (or bf16 / fp16: computed in fp32, stored rounded), updated
    in place; x, dt, z (batch, dim); B, C (batch, N), any strides (e.g. views of a linear layer's output: nothing is
    copied); ``a_log``: A holds A_log, the step uses A = -exp(A_log); ``dt_weight`` (dim, R): dt is the low-rank
    (batch, R) input of dt_proj, whose product with dt_weight (plus dt_bias) the kernel computes (one launch fewer a
    step). Returns y (batch, dim) in x's dtype."""
    _check_tensors("selective_state_update_triton", x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                   dt_weight=dt_weight)
    if state.dtype not in _SUPPORTED:
        raise TypeError(f"selective_state_update_triton: state must be float32, bfloat16 or float16, got "
                        f"{state.dtype}")
    _check_tensors("selective_state_update_triton", state=state)
    batch, dim = x.shape
    N = A.shape[1]
    y = torch.empty((batch, dim), device=x.device, dtype=x.dtype)
    BLOCK_D = min(64, _next_pow2(dim))
    A = A.contiguous()
    zz = z if z is not None else x
    grid = (batch, _cdiv(dim, BLOCK_D))
    w = dt_weight if dt_weight is not None else x
    rank = dt_weight.shape[1] if dt_weight is not None else 0
    _state_update_kernel[grid](
        state, x, dt, A, B, C, D if D is not None else x, zz, dt_bias if dt_bias is not None else x, w, y,
        dim, N, state.stride(0), state.stride(1), state.stride(2), x.stride(0), x.stride(1), dt.stride(0),
        dt.stride(1), zz.stride(0), zz.stride(1), B.stride(0), B.stride(1), C.stride(0), C.stride(1),
        w.stride(0), w.stride(1),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        A_IS_LOG=bool(a_log), BLOCK_D=BLOCK_D, N_P2=_next_pow2(N), DT_RANK=rank, R_P2=_next_pow2(max(rank, 1)),
        num_warps=4,
    )
    return y


def causal_conv1d_update_triton(x, conv_state, weight, bias=None, activation="silu"):
    """One decoding step of the causal depthwise conv in one kernel. x (batch, dim), any strides; conv_state
    (batch, dim, width), shifted left and x appended in place; weight (dim, width); bias (dim,). Returns (batch, dim)
    in x's dtype, SiLU applied unless ``activation`` is None."""
    _check_tensors("causal_conv1d_update_triton", x=x, conv_state=conv_state, weight=weight, bias=bias)
    batch, dim = x.shape
    width = weight.shape[-1]
    y = torch.empty((batch, dim), device=x.device, dtype=x.dtype)
    BLOCK_D = min(128, _next_pow2(dim))
    grid = (batch, _cdiv(dim, BLOCK_D))
    _conv_update_kernel[grid](
        x, conv_state, weight, bias if bias is not None else weight, y, dim, width, x.stride(0), x.stride(1),
        conv_state.stride(0), conv_state.stride(1), conv_state.stride(2), weight.stride(0), weight.stride(1),
        HAS_BIAS=bias is not None, SILU=activation is not None, BLOCK_D=BLOCK_D, W_P2=_next_pow2(width),
        num_warps=4,
    )
    return y


# Causal depthwise conv (the mixer's conv1d + SiLU): tiles of BLOCK_D channels x BLOCK_L steps. CONV_CONFIG where L
# has unit stride; CONV_TIME_MAJOR_CONFIG where the channels have (a Vim / short-prompt mixer's in_proj output): wide
# rows of channels, few steps (B128 L197 wasted 35% of its 128-step tiles on the second tile's padding). H200, bf16,
# D768 (results/anatomy_2026-11-28f.json): B128 L197 0.052 ms at 32 x 128, 0.040 at 128 x 32, 0.036 at 128 x 16;
# B4 L6085 0.043 / 0.032 / 0.032 (the bytes bound: 0.016).
CONV_CONFIG = {"BLOCK_D": 32, "BLOCK_L": 128, "num_warps": 4}
CONV_TIME_MAJOR_CONFIG = {"BLOCK_D": 128, "BLOCK_L": 16, "num_warps": 4}
# Its backward (_causal_conv_bwd_kernel), for x's two layouts; "fused": the input's gradient in the same kernel (g
# recomputed at W shifted steps), else g written out in fp32 and the forward kernel run over it. H200, bf16, D768,
# W = 4, through SiLU, the backward's ms (results/conv_bwd_2026-11-29.json; torch's ops before it: 1.13-1.29):
# channel-major x at B4 L6085 two-pass 8 x 128 0.249-0.256 (16 x 128: 0.267, fused: 0.36-0.59), at B128 L197
# 0.336-0.346; time-major x fused 64 x 8 (2 warps) 0.313-0.320 / 0.343-0.363 (two-pass 128 x 16: 0.42-0.48).
CONV_BWD_CONFIG = {"BLOCK_D": 8, "BLOCK_L": 128, "num_warps": 4, "fused": False}
CONV_BWD_TIME_MAJOR_CONFIG = {"BLOCK_D": 64, "BLOCK_L": 8, "num_warps": 2, "fused": True}


def _token_rows(batch: int, dim: int, L: int, **kw) -> torch.Tensor:
    """An empty (batch, dim, L) tensor stored as (dim, batch, L): unit stride along L, and its (batch * L, dim) matrix
    ``t.transpose(0, 1).reshape(dim, -1).t()`` is a view (what a mixer's next linear layer takes, without a copy)."""
    return torch.empty((dim, batch, L), **kw).transpose(0, 1)


def _conv_launch(x, weight, bias, prefix, y, silu: bool, reverse: bool):
    batch, dim, L = x.shape
    cfg = CONV_TIME_MAJOR_CONFIG if x.stride(1) == 1 and L > 1 else CONV_CONFIG
    grid = (batch, _cdiv(dim, cfg["BLOCK_D"]), _cdiv(L, cfg["BLOCK_L"]))
    _causal_conv_kernel[grid](
        x, weight, bias if bias is not None else weight, prefix if prefix is not None else x, y, dim, L,
        *x.stride(), *(prefix.stride() if prefix is not None else (0, 0, 0)), *y.stride(), *weight.stride(),
        W=weight.shape[-1], HAS_BIAS=bias is not None, HAS_PREFIX=prefix is not None, SILU=silu, REVERSE=reverse,
        BLOCK_D=cfg["BLOCK_D"], BLOCK_L=cfg["BLOCK_L"], num_warps=cfg["num_warps"],
    )
    return y


class _CausalConvFn(torch.autograd.Function):
    """The conv's gradients in one kernel (_causal_conv_bwd_kernel): the input's (the conv with the same weights in the
    other direction, of the gradient at the pre-activation, which is recomputed through SiLU) and the weight's and
    bias's sums over batch and time in fp32 (a partial sum a tile, summed by torch). Before it, torch's ops took
    about 20 launches a conv (H200, Vim-S 1248 px training, benchmarks/README.md)."""

    @staticmethod
    def forward(ctx, x, weight, bias, prefix, silu, reverse):
        batch, dim, L = x.shape
        y = _conv_launch(x, weight, bias, prefix, _token_rows(batch, dim, L, device=x.device, dtype=x.dtype),
                         silu, reverse)
        ctx.save_for_backward(x, weight, bias, prefix)
        ctx.silu, ctx.reverse = silu, reverse
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, bias, prefix = ctx.saved_tensors
        batch, dim, L = x.shape
        W = weight.shape[-1]
        need_gx, need_gw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_gb = bias is not None and ctx.needs_input_grad[2]
        cfg = CONV_BWD_TIME_MAJOR_CONFIG if x.stride(1) == 1 and L > 1 else CONV_BWD_CONFIG
        fused = bool(cfg["fused"])
        grid = (batch, _cdiv(dim, cfg["BLOCK_D"]), _cdiv(L, cfg["BLOCK_L"]))
        gx = torch.empty_like(x) if need_gx else None
        g = gx if fused or not need_gx else torch.empty((batch, dim, L), device=x.device, dtype=torch.float32)
        # the weight's and bias's sums a (batch row, step tile), summed here: deterministic, no atomics
        part = torch.empty((batch * grid[2], W + 1, dim), device=x.device, dtype=torch.float32) \
            if need_gw or need_gb else None
        _causal_conv_bwd_kernel[grid](
            x, weight, bias if bias is not None else weight, prefix if prefix is not None else x, gy,
            g if need_gx else x, part if part is not None else weight, dim, L,
            *x.stride(), *(prefix.stride() if prefix is not None else (0, 0, 0)), *gy.stride(),
            *(g if need_gx else x).stride(), *weight.stride(),
            W=W, HAS_BIAS=bias is not None, HAS_PREFIX=prefix is not None, SILU=ctx.silu, REVERSE=ctx.reverse,
            NEED_GX=need_gx, NEED_GW=part is not None, FUSED=fused, BLOCK_D=cfg["BLOCK_D"], BLOCK_L=cfg["BLOCK_L"],
            num_warps=cfg["num_warps"],
        )
        if need_gx and not fused:  # gx: the conv of g in the other direction
            _conv_launch(g, weight, None, None, gx, False, not ctx.reverse)
        gw = gb = None
        if part is not None:
            sums = part.sum(0)  # (W + 1, dim)
            gw = sums[:W].t().contiguous().to(weight.dtype) if need_gw else None  # (dim, W), as the weight
            gb = sums[W].to(bias.dtype) if need_gb else None
        return gx, gw, gb, None, None, None


def causal_conv1d_triton(x, weight, bias=None, activation="silu", initial_states=None, reverse=False):
    """Causal depthwise conv1d (+ SiLU) in one kernel, differentiable. x (batch, dim, L), any strides (e.g. the
    time-major view of a linear layer's output); weight (dim, W); bias (dim,). ``initial_states`` (batch, dim, W - 1):
    the inputs before x, oldest first (a cache's conv state continuing a sequence; not differentiated). ``reverse``:
    the conv of the time-reversed sequence, in x's order (y = conv(x.flip(-1)).flip(-1), with no flips). Returns
    (batch, dim, L) in x's dtype, stored as (dim, batch, L) (see _token_rows), or, in inference on a time-major x,
    time-major: stored (batch, L, dim), a step one run of channels, which the lane scan reads and writes (its y
    follows u) with a coalesced access a step instead of one sector a channel (H200, B128 D768 L197: the lane kernel
    0.335 -> 0.188 ms, benchmarks/README.md)."""
    _check_tensors("causal_conv1d_triton", x=x, weight=weight, bias=bias, initial_states=initial_states)
    if weight.dim() == 3:
        weight = weight.squeeze(1)
    batch, dim, L = x.shape
    W = weight.shape[-1]
    if initial_states is not None:
        if reverse:
            raise ValueError("causal_conv1d_triton: initial_states continue a causal sequence; with reverse=True "
                             "there is nothing before it to continue (pass initial_states=None).")
        if tuple(initial_states.shape) != (batch, dim, W - 1):
            raise ValueError(f"causal_conv1d_triton: initial_states must be (batch, dim, width - 1) = "
                             f"{(batch, dim, W - 1)}, got {tuple(initial_states.shape)}")
        if initial_states.requires_grad and torch.is_grad_enabled():
            raise NotImplementedError("causal_conv1d_triton: no gradient flows to initial_states; pass "
                                      "initial_states.detach() (a cache's state needs none).")
    silu = activation is not None
    if L == 0:
        return _token_rows(batch, dim, 0, device=x.device, dtype=x.dtype)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return _CausalConvFn.apply(x, weight, bias, initial_states, silu, bool(reverse))
    if _time_major(x):  # inference on a time-major x (a linear layer's output): y time-major too (see _token_rows)
        y = _time_major_empty(batch, dim, L, device=x.device, dtype=x.dtype)
    else:
        y = _token_rows(batch, dim, L, device=x.device, dtype=x.dtype)
    return _conv_launch(x, weight, bias, initial_states, y, silu, bool(reverse))


def transpose_copy_triton(*tensors: torch.Tensor):
    """Contiguous copies of one or two 3-D CUDA tensors of one shape in one Triton kernel: tiles read along the input's
    unit stride and written along the output's (torch's copy of a transposed view reads or writes one element per
    cache line; on an H200 it moved about 0.6 TB/s in the 16 x 4096 mixer profile). Returns a tensor, or a tuple for
    two."""
    if len(tensors) not in (1, 2) or any(t.shape != tensors[0].shape or t.dim() != 3 for t in tensors):
        raise ValueError("transpose_copy_triton takes one or two 3-D tensors of one shape")
    batch, R, Cn = tensors[0].shape
    outs = tuple(torch.empty(t.shape, device=t.device, dtype=t.dtype) for t in tensors)
    if outs[0].numel():
        pair = (tensors[0], outs[0]) + ((tensors[1], outs[1]) if len(tensors) == 2 else (tensors[0], outs[0]))
        grid = (batch * len(tensors), _cdiv(R, 64), _cdiv(Cn, 64))
        _transpose_copy_kernel[grid](*pair, batch, R, Cn, *pair[0].stride(), *pair[1].stride(), *pair[2].stride(),
                                     *pair[3].stride(), BLOCK_R=64, BLOCK_C=64, num_warps=4)
    return outs[0] if len(outs) == 1 else outs


def add_rms_norm_triton(residual, x, weight, eps, cast_input=False, out_dtype=None):
    """(residual + x, RMSNorm of it) in one kernel (inference), the sum in the promoted dtype of the two, the norm as
    ``rms_norm_triton(residual + x, weight, eps, cast_input)`` (rounded to ``out_dtype`` when given). residual, x
    (..., H) of one shape; weight (H,)."""
    _check_tensors("add_rms_norm_triton", residual=residual, x=x, weight=weight)
    cols = x.shape[-1]
    r2, x2 = residual.reshape(-1, cols).contiguous(), x.reshape(-1, cols).contiguous()
    r_out = torch.empty(r2.shape, device=x.device, dtype=torch.promote_types(residual.dtype, x.dtype))
    if out_dtype is None:
        out_dtype = weight.dtype if cast_input else torch.promote_types(r_out.dtype, weight.dtype)
    y = torch.empty(r2.shape, device=x.device, dtype=out_dtype)
    block = _next_pow2(cols)
    if r2.shape[0]:
        _add_rms_norm_kernel[(r2.shape[0],)](r2, x2, weight, r_out, y, cols, float(eps), CAST_INPUT=bool(cast_input),
                                              BLOCK=block, num_warps=4 if block <= 2048 else 8)
    return r_out.view(x.shape), y.view(x.shape)


RMS_NORM_MAX_COLS = 32768  # one program holds a row; wider rows take the torch path


def _row_tile(cols: int, elements: int = 2048):
    """(BLOCK_R, BLOCK_C) of the row kernels: a row a tile row, about ``elements`` values a program (4 warps)."""
    block_c = _next_pow2(cols)
    return max(1, elements // block_c), block_c


def layer_norm_triton(x, weight, bias, eps, residual=None, out_dtype=None):
    """LayerNorm of the last dimension in one kernel (inference: no autograd), in fp32 as
    ``F.layer_norm(x.float(), ...)``, rounded to ``out_dtype`` (default: the promoted dtype of x and weight). With
    ``residual``: ``(r, LayerNorm(r))`` for r = residual + x in the promoted dtype of the two (a block's residual sum
    and its next norm). x, residual (..., H) of one shape; weight, bias (H,). Several rows a program: VMamba's first
    stage normalises rows of 96 values (torch's kernel took 9.2 ms of a 41 ms VMamba-T call at 1248 px, H200)."""
    _check_tensors("layer_norm_triton", x=x, weight=weight, bias=bias, residual=residual)
    cols = x.shape[-1]
    x2 = x.reshape(-1, cols)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    r2 = r_out = None
    src = x.dtype
    if residual is not None:
        r2 = residual.reshape(-1, cols).contiguous()
        r_out = torch.empty(x2.shape, device=x.device, dtype=torch.promote_types(residual.dtype, x.dtype))
        src = r_out.dtype
    y = torch.empty(x2.shape, device=x.device, dtype=out_dtype or torch.promote_types(src, weight.dtype))
    block_r, block_c = _row_tile(cols)
    if rows:
        _layer_norm_kernel[(_cdiv(rows, block_r),)](
            x2, r2 if r2 is not None else x2, weight, bias if bias is not None else weight, r_out if r_out is not None
            else y, y, rows, cols, x2.stride(0), float(eps), HAS_RES=r2 is not None, HAS_BIAS=bias is not None,
            BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4)
    y = y.view(x.shape)
    return y if residual is None else (r_out.view(x.shape), y)


def cross_scan_triton(x, silu=False):
    """VMamba's cross-scan of a (batch, dim, H, W) map (any strides; channel-last reads best) into one time-major
    tensor u (batch, H * W, 4, dim): u[:, t, k] is step t of direction k (row-major, column-major, both reversed), as
    ``modeling_vmamba.cross_scan(x)`` (batch, 4, dim, L) holds it at [:, k, :, t]. ``silu``: of silu(x), fused."""
    _check_tensors("cross_scan_triton", x=x)
    batch, dim, height, width = x.shape
    L = height * width
    u = torch.empty((batch, L, 4, dim), device=x.device, dtype=x.dtype)
    block_t, block_c = _row_tile(dim)
    if u.numel():
        _cross_scan_kernel[(_cdiv(L, block_t), batch)](x, *x.stride(), u, height, width, dim, SILU=bool(silu),
                                                       BLOCK_T=block_t, BLOCK_C=block_c, num_warps=4)
    return u


def cross_merge_norm_triton(ys, height, width, weight=None, bias=None, eps=1e-5, z=None, gelu=False, out_dtype=None):
    """VMamba's cross-merge and out_norm in one kernel (inference): ys (batch, 4 * dim, H * W), the four directions'
    scan outputs in their own step order (any strides) -> (batch, H, W, dim) = LayerNorm(merge(ys)) [-> GELU] [* z],
    as ``out_norm(cross_merge(ys).permute(0, 2, 3, 1).float())`` computes it (the merge's sums rounded to ys' dtype,
    the norm, GELU and gate in fp32), rounded to ``out_dtype`` (default: the promoted dtype of ys and weight).
    z: (batch, H, W, dim). Without ``weight``: the merge alone, ``cross_merge(ys)`` channel-last (no norm)."""
    _check_tensors("cross_merge_norm_triton", ys=ys, weight=weight, bias=bias, z=z)
    batch, channels, L = ys.shape
    dim = channels // 4
    if channels != 4 * dim or L != height * width:
        raise ValueError(f"cross_merge_norm_triton: ys must be (batch, 4 * dim, {height} * {width}), got "
                         f"{tuple(ys.shape)}")
    out = torch.empty((batch, height, width, dim), device=ys.device,
                      dtype=out_dtype or torch.promote_types(ys.dtype, ys.dtype if weight is None else weight.dtype))
    zs = (0, 0)
    if z is not None:
        if z.shape != out.shape or z.stride(-1) != 1 or z.stride(1) != width * z.stride(2):
            z = z.contiguous()
        zs = (z.stride(0), z.stride(2))
    block_t, block_c = _row_tile(dim)
    if out.numel():
        _cross_merge_norm_kernel[(_cdiv(L, block_t), batch)](
            ys, *ys.stride(), *([weight] * 2 if weight is None else (weight, bias if bias is not None else weight)),
            z if z is not None else out, *zs, out, height, width, dim, float(eps), NORM=weight is not None,
            HAS_BIAS=bias is not None, HAS_Z=z is not None, GELU=bool(gelu), BLOCK_T=block_t, BLOCK_C=block_c,
            num_warps=4)
    return out


class _CrossScanFn(torch.autograd.Function):
    """cross_scan_triton with its gradient: each position's gradient is the sum over the four directions of the steps
    that read it, the merge (cross_merge_norm_triton without a norm)."""

    @staticmethod
    def forward(ctx, x):
        ctx.hw = x.shape[2:]
        return cross_scan_triton(x)

    @staticmethod
    def backward(ctx, g):
        batch, L, K, dim = g.shape
        g = g.reshape(batch, L, K * dim).transpose(1, 2)
        return cross_merge_norm_triton(g, *ctx.hw).permute(0, 3, 1, 2)


class _CrossMergeFn(torch.autograd.Function):
    """cross_merge_norm_triton without a norm (the four directions summed, channel-last), with its gradient: the
    output's gradient cross-scanned back into each direction's step order."""

    @staticmethod
    def forward(ctx, ys, height, width):
        return cross_merge_norm_triton(ys, height, width)

    @staticmethod
    def backward(ctx, g):
        u = cross_scan_triton(g.permute(0, 3, 1, 2))
        batch, L, K, dim = u.shape
        return u.view(batch, L, K * dim).transpose(1, 2), None, None


def cross_scan_autograd(x):
    """cross_scan_triton(x) ((batch, dim, H, W) -> (batch, H * W, 4, dim)), differentiable (training)."""
    _check_tensors("cross_scan_autograd", x=x)
    return _CrossScanFn.apply(x)


def cross_merge_autograd(ys, height, width):
    """The four directions' scan outputs ys (batch, 4 * dim, H * W) merged into (batch, H, W, dim) as
    ``modeling_vmamba.cross_merge`` sums them (channel-last), differentiable (training)."""
    _check_tensors("cross_merge_autograd", ys=ys)
    return _CrossMergeFn.apply(ys, height, width)


def rms_norm_triton(x, weight, eps, cast_input=False):
    """RMSNorm of the last dimension in one kernel (inference: no autograd), same arithmetic as ssm_layers.RMSNorm:
    w * (x_fp32 * rsqrt(mean(x^2) + eps)).to(x.dtype). x (..., H) with unit stride along H; weight (H,).
    ``cast_input``: the result of ``rms_norm_triton(x.to(weight.dtype), weight, eps)`` without the cast's kernel."""
    _check_tensors("rms_norm_triton", x=x, weight=weight)
    cols = x.shape[-1]
    x2 = x.reshape(-1, cols)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out_dtype = weight.dtype if cast_input else torch.promote_types(x.dtype, weight.dtype)
    y = torch.empty(x2.shape, device=x.device, dtype=out_dtype)
    block = _next_pow2(cols)
    if x2.shape[0]:
        _rms_norm_kernel[(x2.shape[0],)](x2, weight, y, cols, x2.stride(0), float(eps), CAST_INPUT=bool(cast_input),
                                          BLOCK=block, num_warps=4 if block <= 2048 else 8)
    return y.view(x.shape)
