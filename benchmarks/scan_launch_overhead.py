"""Host cost of one selective-scan call on the GPU (issue 10, "small problems are launch-bound").

For a tiny shape (B1 D16 L16: no GPU work to speak of) and the LM prefill shape (B1 D1536 L1024), prints the wall
time per call with the GPU never waited on (calls queued back to back, one synchronize at the end): inference forward,
forward with gradients, forward + backward; the same for an empty Triton kernel with 1 and with 40 arguments (what
Triton's launcher costs by itself); and a cProfile of forward + backward (where the host time goes).

    python benchmarks/scan_launch_overhead.py --out benchmarks/results/scan_launch_overhead.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

from common import ensure_ssmvl

ensure_ssmvl()


@triton.jit
def _empty1(a):
    pass


@triton.jit
def _empty40(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9,
             c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, d0, d1, d2, d3, d4, d5, d6, d7, d8, d9):
    pass


def per_call_us(fn, n: int = 300) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e6


def scan_calls(shape):
    from ssmvl.modeling import ssm_triton

    b, d, L = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    rnd = lambda *s, scale=1.0: (torch.randn(*s, device="cuda", generator=g) * scale).to(torch.bfloat16)  # noqa
    u, dl, z = rnd(b, d, L), rnd(b, d, L, scale=0.5), rnd(b, d, L)
    Bm, Cm = rnd(b, 1, 16, L), rnd(b, 1, 16, L)
    A = -torch.rand(d, 16, device="cuda", generator=g) - 0.5
    Dv, bias = torch.randn(d, device="cuda", generator=g), torch.randn(d, device="cuda", generator=g) * 0.1 - 2
    leaves = [t.detach().clone().requires_grad_() for t in (u, dl, Bm, Cm, z)]
    dy = torch.ones_like(u)

    def fwd():
        with torch.no_grad():
            ssm_triton.selective_scan_triton(u, dl, A, Bm, Cm, Dv, z, bias, True)

    def fwd_grad():
        return ssm_triton.selective_scan_triton(leaves[0], leaves[1], A, leaves[2], leaves[3], Dv, leaves[4], bias,
                                                True)

    def fb():
        fwd_grad().backward(dy)

    return {"fwd": fwd, "fwd_grad": fwd_grad, "fwd_bwd": fb}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/scan_launch_overhead.json")
    args = ap.parse_args()
    x = torch.zeros(16, device="cuda")
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "date": time.strftime("%Y-%m-%d"),
              "empty_triton_1_arg_us": per_call_us(lambda: _empty1[(1,)](x)),
              "empty_triton_40_args_us": per_call_us(lambda: _empty40[(1,)](*([x] * 20 + list(range(1, 21))))),
              "torch_add_us": per_call_us(lambda: x.add(1.0)), "rows": []}
    print({k: v for k, v in result.items() if k != "rows"}, flush=True)
    for shape in ((1, 16, 16), (1, 1536, 1024)):
        calls = scan_calls(shape)
        row = {"B": shape[0], "D": shape[1], "L": shape[2]}
        row.update({f"{name}_us": per_call_us(fn) for name, fn in calls.items()})
        print(row, flush=True)
        result["rows"].append(row)
    prof = cProfile.Profile()
    calls = scan_calls((1, 16, 16))
    prof.enable()
    for _ in range(200):
        calls["fwd_bwd"]()
    torch.cuda.synchronize()
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
    result["cprofile_fwd_bwd_200_calls"] = s.getvalue()
    print(s.getvalue(), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
