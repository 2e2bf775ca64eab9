"""Selective scan, side by side on one GPU: mamba_ssm's CUDA kernel vs ssmvl's Triton kernels vs the HBM copy bound.

    python benchmarks/scan_vs_mamba_ssm.py --mamba-build /tmp/ms 4,768,6085 128,768,197 1,1536,1024 ...
    python benchmarks/scan_vs_mamba_ssm.py --mamba-build /tmp/ms --sweep 4,768,6085   # ssmvl's chunking settings

The mamba_ssm extension is built from its sources with ../shared/anchors/build_mamba_scan.py (see benchmarks/README.md).
Inputs as a Mamba layer feeds them: bf16 u / delta / z / B / C (channel-major), fp32 A / D / delta_bias, N = 16, one
B/C group, softplus, z gate. Times are medians of ``triton.testing.do_bench`` in ms; ``*_fb`` is forward + backward.
Also checks that the two agree (output and the gradients of u, delta, B, C, z). Writes
``benchmarks/results/scan_vs_mamba_ssm.json`` (``--out``): one row per shape with keys B, D, L, mamba_fwd, ssmvl_fwd,
mamba_fb, ssmvl_fb, bound_fwd, bound_fb and the errors; with ``--sweep``, one row per setting of
``ssm_triton.PARALLEL_CONFIG`` as well.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

N = 16


def copy_bandwidth() -> float:
    from triton.testing import do_bench

    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x))
    return 2 * 2**30 / (ms * 1e-3)


def inputs(batch: int, dim: int, L: int):
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=g) * scale).to(torch.bfloat16)

    return dict(u=rnd(batch, dim, L), delta=rnd(batch, dim, L, scale=0.5), z=rnd(batch, dim, L),
                B=rnd(batch, 1, N, L), C=rnd(batch, 1, N, L),
                A=-torch.rand(dim, N, device="cuda", generator=g) - 0.5,
                D=torch.randn(dim, device="cuda", generator=g),
                bias=torch.randn(dim, device="cuda", generator=g) * 0.1 - 2, dy=rnd(batch, dim, L))


def mixer_inputs(batch: int, dim: int, L: int, R: int = 48):
    """The same inputs laid out as a Mamba mixer passes them (modeling/ssm_layers.py): u the conv output
    (batch, dim, L) contiguous; delta, z and B / C transposed views of (batch, L, ...) linear outputs (time-major;
    B / C slices of one (batch, L, R + 2N) x_proj output, unit stride along N)."""
    x = inputs(batch, dim, L)
    xz = torch.cat([x["u"], x["z"]], 1).transpose(1, 2).contiguous()  # (b, L, 2 dim)
    xp = torch.cat([x["B"][:, 0].new_zeros(batch, R, L), x["B"][:, 0], x["C"][:, 0]], 1).transpose(1, 2).contiguous()
    x.update(z=xz.transpose(1, 2)[:, dim:], delta=x["delta"].transpose(1, 2).contiguous().transpose(1, 2),
             B=xp[..., R:R + N].transpose(1, 2).unsqueeze(1), C=xp[..., R + N:].transpose(1, 2).unsqueeze(1))
    return x


def inference_forward(ssm_triton, x):
    """ssmvl's forward without gradients on inputs x (from ``inputs`` or ``mixer_inputs``), as a callable."""
    return lambda: ssm_triton.selective_scan_triton(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                                                    x["bias"], True)


def rel_err_vs_untiled(ssm_triton, fwd) -> float:
    """Relative distance (norm) of fwd()'s output to the same call with the time-tiled kernels off
    (TILE_CONFIG["enabled"] = False: the sequential, chunked or lane kernels)."""
    y = fwd().float()
    enabled = ssm_triton.TILE_CONFIG["enabled"]
    ssm_triton.TILE_CONFIG["enabled"] = False
    try:
        y_ref = fwd().float()
    finally:
        ssm_triton.TILE_CONFIG["enabled"] = enabled
    return ((y - y_ref).norm() / y_ref.norm()).item()


def training_call(ssm_triton, x):
    """(fb, leaves): fb runs ssmvl's forward + backward on inputs x (from ``inputs``) with dy, leaves the tensors
    (u, delta, B, C, z) whose .grad it fills (cleared first)."""
    leaves = [x[k].detach().clone().requires_grad_() for k in ("u", "delta", "B", "C", "z")]

    def fb():
        for t in leaves:
            t.grad = None
        y = ssm_triton.selective_scan_triton(leaves[0], leaves[1], x["A"], leaves[2], leaves[3], x["D"], leaves[4],
                                             x["bias"], True)
        y.backward(x["dy"])

    return fb, leaves


def measure(shape, bw, cuda_ext, ssm_triton):
    from triton.testing import do_bench

    batch, dim, L = shape
    x = inputs(batch, dim, L)
    u, dl, z, Bm, Cm, A, Dv, bias, dy = (x[k] for k in ("u", "delta", "z", "B", "C", "A", "D", "bias", "dy"))
    row = dict(B=batch, D=dim, L=L)
    bytes_fwd = (4 * batch * dim * L + 2 * batch * N * L) * 2  # read u, delta, z, B, C; write y (bf16)
    row.update(bound_fwd=bytes_fwd / bw * 1e3, bound_fb=2 * bytes_fwd / bw * 1e3)

    ssmvl_fwd = inference_forward(ssm_triton, x)
    ssmvl_fb, leaves = training_call(ssm_triton, x)

    y = ssmvl_fwd()
    ssmvl_fb()
    grads = [t.grad.float() for t in leaves]
    row.update(ssmvl_fwd=do_bench(ssmvl_fwd), ssmvl_fb=do_bench(ssmvl_fb))
    if cuda_ext is not None:
        def mamba_fwd():
            return cuda_ext.fwd(u, dl, A, Bm, Cm, Dv, z, bias, True)

        def mamba_fb():
            out, xs, out_z = cuda_ext.fwd(u, dl, A, Bm, Cm, Dv, z, bias, True)
            return cuda_ext.bwd(u, dl, A, Bm, Cm, Dv, z, bias, dy, xs, out, None, True, False)

        y_ref = mamba_fwd()[2].float()
        g_ref = mamba_fb()  # du, ddelta, dA, dB, dC, dD, ddelta_bias, dz
        g_ref = [g_ref[i].float() for i in (0, 1, 3, 4, 7)]
        row.update(mamba_fwd=do_bench(mamba_fwd), mamba_fb=do_bench(mamba_fb),
                   rel_err_y=((y.float() - y_ref).norm() / y_ref.norm()).item(),
                   rel_err_grads=max(((a - b).norm() / b.norm()).item() for a, b in zip(grads, g_ref)))
        row.update(fwd_ratio=row["ssmvl_fwd"] / row["mamba_fwd"], fb_ratio=row["ssmvl_fb"] / row["mamba_fb"])
    return row


def kernel_times(shape, ssm_triton, reps: int = 20, backward: bool = False):
    """GPU time per call of each kernel (us), from torch.profiler: separates kernel time from launch cost. With
    ``backward``: a forward + backward call (inputs that need gradients), else an inference forward."""
    from common import kernel_device_ms

    x = inputs(*shape)
    leaves = {k: x[k].detach().clone().requires_grad_(backward) for k in ("u", "delta", "B", "C", "z")}

    def run():
        y = ssm_triton.selective_scan_triton(leaves["u"], leaves["delta"], x["A"], leaves["B"], leaves["C"], x["D"],
                                             leaves["z"], x["bias"], True)
        if backward:
            y.backward(torch.ones_like(y))

    return {k: round(ms * 1000, 1) for k, ms in kernel_device_ms(run, reps).items()}


def fb_grads(shape, ssm_triton):
    """The gradients of u, delta, B, C, z from one forward + backward on ``inputs(*shape)`` (fp32 copies)."""
    fb, leaves = training_call(ssm_triton, inputs(*shape))
    fb()
    return [t.grad.float() for t in leaves]


def fb_ms(shape, ssm_triton) -> float:
    """Forward + backward ms (do_bench) on ``inputs(*shape)``."""
    from triton.testing import do_bench

    return do_bench(training_call(ssm_triton, inputs(*shape))[0], warmup=10, rep=40)


LANE_BWD_SWEEP = [None, (4, 1, 4), (4, 1, 2), (4, 2, 4), (4, 2, 2), (4, 1, 8), (2, 1, 4), (1, 1, 2)]


def lane_bwd_sweep(shapes, bw, ssm_triton):
    """Forward + backward (ms, do_bench) and kernel times with the lane backward off (None) and on wherever it runs at
    each (S, CPT, SUB) of LANE_BWD_SWEEP; where the time-tiled training pair is chosen, also with it off. rel_err:
    the largest relative distance of the five gradients to those with the lane backward off."""
    rows = []
    defaults = dict(ssm_triton.LANE_BWD_CONFIG), dict(ssm_triton.TILE_BWD_CONFIG)
    for shape in shapes:
        ssm_triton.LANE_BWD_CONFIG["enabled"] = False
        ref = fb_grads(shape, ssm_triton)
        tiled = ssm_triton._use_tile_bwd(ssm_triton._programs(shape[0], shape[1], 1), shape[2])
        for tile in ((None, False) if tiled else (None,)):
            for cfg in LANE_BWD_SWEEP:
                if tile is None and tiled and cfg is not None:
                    continue  # the tiled pair runs whatever the lane backward's settings
                ssm_triton.TILE_BWD_CONFIG["enabled"] = tile
                if cfg is None:
                    ssm_triton.LANE_BWD_CONFIG["enabled"] = False
                else:
                    ssm_triton.LANE_BWD_CONFIG.update(enabled=True, S=cfg[0], CPT=cfg[1], SUB=cfg[2])
                try:
                    grads = fb_grads(shape, ssm_triton)
                    row = dict(B=shape[0], D=shape[1], L=shape[2], tile=tile, lane_bwd=cfg,
                               rel_err=max(((a - b).norm() / b.norm()).item() for a, b in zip(grads, ref)),
                               ssmvl_fb=fb_ms(shape, ssm_triton),
                               kernels_us={k: v for k, v in kernel_times(shape, ssm_triton, backward=True).items()
                                           if k.startswith("_")})
                except Exception as err:  # noqa: BLE001 -- a setting that fails is a row, not the end of the sweep
                    row = dict(B=shape[0], D=shape[1], L=shape[2], tile=tile, lane_bwd=cfg, error=repr(err)[:300])
                rows.append(row)
                print("lane_bwd", json.dumps(row), flush=True)
        for config, saved in zip((ssm_triton.LANE_BWD_CONFIG, ssm_triton.TILE_BWD_CONFIG), defaults):
            config.clear()
            config.update(saved)
    return rows


# (BLOCK_T, num_warps) of the time-tiled inference forward (TILE_CONFIG); one- and two-warp programs join a tile's
# steps without a block-wide barrier
TILE_SWEEP = [(1024, 4), (2048, 4), (256, 1), (512, 1), (1024, 1), (512, 2), (1024, 2), (2048, 2)]
# TILE_BWD_CONFIG updates of --tile-bwd-sweep (the time-tiled training pair): "enabled" (None: the default rule),
# BLOCK_T / num_warps of the backward's tiles, "lanes": its adjoint by lanes of 4 steps and shuffles down (128-step
# tiles, one warp) instead of tl.associative_scan(reverse=True), "channel_pairs": two channels a program, their dB /
# dC terms added before the atomics (with lanes), "maxnreg" / "fwd_maxnreg": the backward's / the training forward's
# register cap (0: none)
TILE_BWD_SWEEP = [dict(lanes=False, channel_pairs=False), dict(lanes=True, channel_pairs=False),
                  dict(lanes=True, channel_pairs=True), dict(channel_pairs=True, maxnreg=168),
                  dict(channel_pairs=True, fwd_maxnreg=0)]
# TILE_CONFIG updates of --seg-sweep (each applied to the defaults): "seg" 0 the tl.associative_scan tiles
# (_scan_fwd_tile_kernel), 1 / 2 lanes of 8 / 16 consecutive steps (_scan_fwd_seg_kernel); "stages": software
# pipelining of its state loop's B / C loads;
# "maxnreg" / "prefetch": its register cap (0: none) / B / C read one state ahead, in inference
# (TILE_BWD_CONFIG["fwd_maxnreg"] / ["fwd_prefetch"] in training)
SEG_SWEEP = [dict(seg=0), dict(seg=1, stages=1, maxnreg=128), dict(seg=2, stages=1, maxnreg=0),
             dict(seg=2, stages=1, maxnreg=128), dict(seg=2, stages=1, maxnreg=96), dict(seg=2, stages=2, maxnreg=0),
             dict(seg=2, stages=3, maxnreg=0), dict(seg=2, maxnreg=128, prefetch=1), dict(seg=2, maxnreg=0, prefetch=1)]


def config_sweep(config: dict, updates, shapes, label: str, row):
    """Rows of ``row(shape)`` for every shape under each update of ``config`` (a *_CONFIG dict of ssm_triton), each
    applied to its defaults (no update carries into the next), printed as they come; the defaults restored after."""
    default = dict(config)
    rows = []
    try:
        for update in updates:
            config.clear()
            config.update(default, **update)
            for shape in shapes:
                r = dict(**update, **row(shape))
                rows.append(r)
                print(label, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}),
                      flush=True)
    finally:
        config.clear()
        config.update(default)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="+", help="B,D,L")
    ap.add_argument("--mamba-build", help="folder holding mamba_ssm's built selective_scan_cuda extension")
    ap.add_argument("--sweep", action="store_true", help="also time ssmvl's PARALLEL_CONFIG settings")
    ap.add_argument("--tile-sweep", action="store_true", help="time the time-tiled forward's settings (TILE_CONFIG)")
    ap.add_argument("--seg-sweep", action="store_true",
                    help="time the time-tiled forward's kernels (TILE_CONFIG['seg']), inference and training")
    ap.add_argument("--tile-bwd-sweep", action="store_true",
                    help="time forward + backward over the time-tiled training pair's settings (TILE_BWD_CONFIG)")
    ap.add_argument("--lane-sweep", action="store_true",
                    help="time the register-lane forward's settings (LANE_CONFIG) against the forward without it")
    ap.add_argument("--lane-bwd-sweep", action="store_true",
                    help="time forward + backward over the lane backward's settings (LANE_BWD_CONFIG), the time-tiled "
                         "pair on and off, with kernel times and the gradients' distance to those with it off")
    ap.add_argument("--mixer-layout", action="store_true",
                    help="time the inference forward with the mixer's time-major views, lane forward on and off")
    ap.add_argument("--profile", action="store_true", help="GPU kernel time per forward and per forward + backward (torch.profiler)")
    ap.add_argument("--out", default="benchmarks/results/scan_vs_mamba_ssm.json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import ensure_ssmvl

    ensure_ssmvl()  # a plain checkout (the device machine) has no installed ssmvl
    from ssmvl.modeling import ssm_triton

    cuda_ext = None
    if args.mamba_build:
        sys.path.insert(0, args.mamba_build)
        import selective_scan_cuda as cuda_ext
    bw = copy_bandwidth()
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    result = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, date=time.strftime("%Y-%m-%d"),
                  copy_GBps=bw / 1e9, dtype="bf16", N=N, parallel_config=dict(ssm_triton.PARALLEL_CONFIG), rows=[])
    for shape in shapes:
        row = measure(shape, bw, cuda_ext, ssm_triton)
        if args.profile:
            row["ssmvl_fwd_kernels_us"] = kernel_times(shape, ssm_triton)
            row["ssmvl_fb_kernels_us"] = kernel_times(shape, ssm_triton, backward=True)
        result["rows"].append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.sweep:
        default = dict(ssm_triton.PARALLEL_CONFIG)
        result["sweep"] = []
        for target, min_chunk in itertools.product((1, 1024, 4096, 16384), (64, 256)):
            ssm_triton.PARALLEL_CONFIG.update(parallel_below=10**9 if target > 1 else 1, target_programs=target,
                                              min_chunk=min_chunk)
            for shape in shapes:
                row = dict(target_programs=target, min_chunk=min_chunk, **measure(shape, bw, None, ssm_triton))
                result["sweep"].append(row)
                print("sweep", json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                      flush=True)
        ssm_triton.PARALLEL_CONFIG.update(default)
    if args.tile_sweep:
        from triton.testing import do_bench

        default = dict(ssm_triton.TILE_CONFIG)
        result["tile_sweep"] = []
        for block_t, warps in TILE_SWEEP:
            ssm_triton.TILE_CONFIG.update(enabled=True, BLOCK_T=block_t, num_warps=warps)
            for shape in shapes:
                fwd = inference_forward(ssm_triton, inputs(*shape))
                row = dict(BLOCK_T=block_t, num_warps=warps, B=shape[0], D=shape[1], L=shape[2],
                           rel_err_vs_sequential=rel_err_vs_untiled(ssm_triton, fwd),
                           ssmvl_fwd=do_bench(fwd), kernels_us=kernel_times(shape, ssm_triton))
                result["tile_sweep"].append(row)
                print("tile", json.dumps(row), flush=True)
        ssm_triton.TILE_CONFIG.clear()
        ssm_triton.TILE_CONFIG.update(default)
    if args.seg_sweep:  # the time-tiled forward's kernels: tl.associative_scan tiles (seg 0) or lanes of steps
        def seg_row(shape):
            fwd = inference_forward(ssm_triton, inputs(*shape))
            return dict(tile=ssm_triton._inference_kernel(*shape[:2], 1, N, shape[2], False) == "tile",
                        rel_err_vs_untiled=rel_err_vs_untiled(ssm_triton, fwd),
                        fwd_kernels_us=kernel_times(shape, ssm_triton),
                        fb_kernels_us=kernel_times(shape, ssm_triton, backward=True),
                        **measure(shape, bw, None, ssm_triton))

        result["seg_sweep"] = config_sweep(ssm_triton.TILE_CONFIG, [dict(enabled=None, **u) for u in SEG_SWEEP],
                                           shapes, "seg", seg_row)
    if args.tile_bwd_sweep:
        def tile_bwd_row(shape):
            return dict(tiled=ssm_triton._use_tile_bwd(ssm_triton._programs(*shape[:2], 1), shape[2]),
                        fb_kernels_us=kernel_times(shape, ssm_triton, backward=True),
                        **measure(shape, bw, None, ssm_triton))

        result["tile_bwd_sweep"] = config_sweep(ssm_triton.TILE_BWD_CONFIG, TILE_BWD_SWEEP, shapes, "tile_bwd",
                                                tile_bwd_row)
    if args.lane_bwd_sweep:
        result["lane_bwd_sweep"] = lane_bwd_sweep(shapes, bw, ssm_triton)
    if args.lane_sweep or args.mixer_layout:
        from triton.testing import do_bench

        default = dict(ssm_triton.LANE_CONFIG)
        result.update(lane_sweep=[], mixer_layout=[])
        for shape in shapes:
            if args.mixer_layout:  # the mixer's time-major views, lane forward off / where it can run
                fwd = inference_forward(ssm_triton, mixer_inputs(*shape))
                row = dict(B=shape[0], D=shape[1], L=shape[2])
                for enabled in (False, True):
                    ssm_triton.LANE_CONFIG["enabled"] = enabled
                    row[f"lane_{enabled}"] = do_bench(fwd)
                    row[f"plan_{enabled}"] = ssm_triton._lane_plan(*shape[:2], 1, N, shape[2])
                ssm_triton.LANE_CONFIG.update(default)
                result["mixer_layout"].append(row)
                print("mixer", json.dumps(row), flush=True)
            if not args.lane_sweep:
                continue
            fwd = inference_forward(ssm_triton, inputs(*shape))
            ssm_triton.LANE_CONFIG["enabled"] = False
            y_ref = fwd().float()
            row = dict(enabled=False, B=shape[0], D=shape[1], L=shape[2], ssmvl_fwd=do_bench(fwd))
            result["lane_sweep"].append(row)
            print("lane", json.dumps(row), flush=True)
            seen = set()
            for split, warps, chunk in itertools.product((1, 2, 4), (512, 1024, 2048), (64, 256)):
                ssm_triton.LANE_CONFIG.update(enabled=True, max_split=split, min_warps=warps, min_chunk=chunk)
                plan = ssm_triton._lane_plan(*shape[:2], 1, N, shape[2])
                if plan in seen:  # settings that give the same plan run the same kernels
                    continue
                seen.add(plan)
                y = fwd().float()
                row = dict(max_split=split, min_warps=warps, min_chunk=chunk, plan=plan, B=shape[0],
                           D=shape[1], L=shape[2], ssmvl_fwd=do_bench(fwd),
                           rel_err_vs_lane_off=((y - y_ref).norm() / y_ref.norm()).item())
                result["lane_sweep"].append(row)
                print("lane", json.dumps(row), flush=True)
            ssm_triton.LANE_CONFIG.update(default)
        ssm_triton.LANE_CONFIG.update(default)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
