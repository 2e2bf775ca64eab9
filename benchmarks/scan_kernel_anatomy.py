"""Why a scan kernel takes its time (device machine): registers, spills and warps of each Triton kernel an inference
forward launches, its kernel time, and the host cost of a launch by stage.

    python benchmarks/scan_kernel_anatomy.py OUT.json [B,D,L ...]       # default: the five shapes of issue 10
    ncu --clock-control none --kernel-name regex:_scan_fwd --launch-skip 3 --launch-count 1 --section ... \\
        python benchmarks/scan_kernel_anatomy.py --ncu B,D,L            # one shape, for Nsight Compute

Inputs as ``scan_vs_mamba_ssm.mixer_inputs`` gives them (a Mamba mixer's layout), bf16, N = 16, softplus, z gate;
also with u time-major (as the triton conv now writes it for the lane path) and with y in u's layout
(``ssm_triton.LAYOUT["lane_y_time_major"]`` off; on by default since the sixth session). Conv: the inference conv's
kernel time on a time-major x by tile shape (``conv_tiles``).
Host: microseconds a call of ``selective_scan_triton`` at B1 D16 L16 (no GPU work to wait for), and of one launch of
its scan kernel split into Triton's stages (binding / specialising the arguments, the cache key, the launcher call).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from common import ROOT, ensure_ssmvl, kernel_device_ms

ensure_ssmvl()
sys.path.insert(0, str(ROOT / "benchmarks"))

from scan_vs_mamba_ssm import inference_forward, mixer_inputs  # noqa: E402

from ssmvl.modeling import ssm_triton  # noqa: E402

SHAPES = ["4,768,6085", "128,768,197", "1,1536,1024", "8,1536,1024", "16,1536,4096"]


def compiled_kernels():
    """{kernel name: [(n_regs, n_spills, num_warps, shared bytes), ...]} of every compiled Triton kernel so far."""
    from triton.runtime.jit import JITFunction

    out = {}
    for name in dir(ssm_triton):
        fn = getattr(ssm_triton, name)
        if not isinstance(fn, JITFunction):
            continue
        for caches in getattr(fn, "device_caches", {}).values():
            for k in caches[0].values():
                k = k.result() if hasattr(k, "result") else k
                out.setdefault(name, []).append(dict(regs=getattr(k, "n_regs", None), spills=getattr(k, "n_spills", None),
                                                     warps=k.metadata.num_warps, shared=k.metadata.shared))
    return out


def kernel_ms(fn, reps=20):
    return {k[:60]: round(ms, 4) for k, ms in kernel_device_ms(fn, reps).items()}


def host_costs(repeats=400):
    """Host microseconds: a whole inference forward at a size with no GPU work, and one launch of its scan kernel by
    stage, replaying what triton's JITFunction.run does for it."""
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction, compute_cache_key

    x = mixer_inputs(1, 16, 16)
    fwd = inference_forward(ssm_triton, x)
    for _ in range(20):
        fwd()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fwd()
    per_call = (time.perf_counter() - t0) / repeats * 1e6
    torch.cuda.synchronize()

    captured = {}
    original = JITFunction.run

    def capture(self, *args, grid, warmup, **kwargs):
        captured.setdefault(self._fn_name, (self, args, grid, kwargs))
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    JITFunction.run = capture
    try:
        fwd()
    finally:
        JITFunction.run = original
    torch.cuda.synchronize()
    stages = {}
    for name, (fn, args, grid, kwargs) in captured.items():
        from triton import knobs

        kw = dict(kwargs, debug=kwargs.get("debug", fn.debug) or knobs.runtime.debug,
                  instrumentation_mode=knobs.compilation.instrumentation_mode)
        device = driver.active.get_current_device()
        stream = driver.active.get_current_stream(device)
        kernel_cache, key_cache, _, _, binder = fn.device_caches[device]
        timings = {"stream": [], "bind": [], "key": [], "launch": [], "jit_run": [], "direct": []}
        g = grid if not callable(grid) else None
        for _ in range(repeats):
            a = time.perf_counter()
            device = driver.active.get_current_device()
            stream = driver.active.get_current_stream(device)
            b = time.perf_counter()
            bound, spec, options = binder(*args, **kw)
            c = time.perf_counter()
            key = compute_cache_key(key_cache, spec, options)
            kernel = kernel_cache[key]
            d = time.perf_counter()
            gg = g if g is not None else grid(bound)
            gg = tuple(gg) + (1,) * (3 - len(gg))
            meta = kernel.launch_metadata(gg, stream, *bound.values())
            kernel.run(gg[0], gg[1], gg[2], stream, kernel.function, kernel.packed_metadata, meta, None, None,
                       *bound.values())
            e = time.perf_counter()
            fn.run(*args, grid=grid, warmup=False, **kwargs)
            f = time.perf_counter()
            kernel.run(gg[0], gg[1], gg[2], stream, kernel.function, kernel.packed_metadata, None, None, None,
                       *bound.values())
            h = time.perf_counter()
            for k, dt in zip(timings, (b - a, c - b, d - c, e - d, f - e, h - f)):
                timings[k].append(dt * 1e6)
        torch.cuda.synchronize()
        stages[name] = {"args": len(args) + len(kwargs),
                        **{k: round(statistics.median(v), 2) for k, v in timings.items()}}
    return {"selective_scan_triton_us": round(per_call, 1), "launch_stages_us": stages}


CONV_TILES = [(32, 128, 4), (64, 64, 4), (128, 32, 4), (128, 16, 4), (256, 16, 8)]


def conv_tiles(shapes=((128, 768, 197), (4, 768, 6085)), reps=20):
    """Kernel ms of the inference conv (width 4, bias, SiLU, bf16) on a time-major x, as a Vim mixer gives it, for
    each (BLOCK_D, BLOCK_L, num_warps) of CONV_TILES, beside the default (CONV_TIME_MAJOR_CONFIG) and
    the bytes bound (x read once, y written once, at 4.8 TB/s)."""
    out = {}
    saved = dict(ssm_triton.CONV_TIME_MAJOR_CONFIG)
    for batch, dim, L in shapes:
        x = torch.randn(batch, L, dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)  # (b, d, L) time-major
        w = torch.randn(dim, 4, device="cuda", dtype=torch.bfloat16)
        bias = torch.randn(dim, device="cuda", dtype=torch.bfloat16)

        def conv():
            ssm_triton.causal_conv1d_triton(x, w, bias)

        row = {"default": kernel_ms(conv, reps), "bound_ms": round(2 * x.numel() * 2 / 4.8e12 * 1e3, 4)}
        for block_d, block_l, warps in CONV_TILES:
            ssm_triton.CONV_TIME_MAJOR_CONFIG.update(BLOCK_D=block_d, BLOCK_L=block_l, num_warps=warps)
            try:
                row[f"{block_d}x{block_l}w{warps}"] = kernel_ms(conv, reps)
            finally:
                ssm_triton.CONV_TIME_MAJOR_CONFIG.update(saved)
        out[f"{batch},{dim},{L}"] = row
    return out


def main():
    args = sys.argv[1:]
    if args and args[0] == "--ncu":  # a few calls of one shape, for Nsight Compute to pick one launch of
        batch, dim, L = (int(v) for v in args[1].split(","))
        fwd = inference_forward(ssm_triton, mixer_inputs(batch, dim, L))
        for _ in range(5):
            fwd()
        torch.cuda.synchronize()
        return
    out = Path(args[0])
    result = {"gpu": torch.cuda.get_device_name(), "shapes": {}}
    for shape in args[1:] or SHAPES:
        batch, dim, L = (int(v) for v in shape.split(","))
        fwd = inference_forward(ssm_triton, mixer_inputs(batch, dim, L))
        x = mixer_inputs(batch, dim, L)
        x_time = dict(x, u=x["u"].transpose(1, 2).contiguous().transpose(1, 2))  # u (and so y) time-major
        row = {"kernels_ms": kernel_ms(fwd),
               "kernels_ms_u_time_major": kernel_ms(inference_forward(ssm_triton, x_time))}
        ssm_triton.LAYOUT["lane_y_time_major"] = False  # y in u's layout, as before the sixth session
        try:
            row["kernels_ms_y_follows_u"] = kernel_ms(fwd)
        finally:
            ssm_triton.LAYOUT["lane_y_time_major"] = True
        result["shapes"][shape] = row
        print(shape, result["shapes"][shape], flush=True)
    result["conv"] = conv_tiles()
    print(json.dumps(result["conv"]), flush=True)
    result["compiled"] = compiled_kernels()
    print(json.dumps(result["compiled"]), flush=True)
    result["host"] = host_costs()
    print(json.dumps(result["host"], indent=1), flush=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
