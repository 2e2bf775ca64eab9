"""Compile every Triton kernel of ``modeling/ssm_triton.py`` for a CUDA architecture without a GPU (``triton.compile``
needs only the ptxas that ships with triton): a check of the triton versions the ``[cuda]`` extra allows.

    pip install --no-deps --target /tmp/triton-3.2 triton==3.2.0
    PYTHONPATH=/tmp/triton-3.2 python benchmarks/compile_triton_kernels.py [--arch 90]

Pointers are compiled as fp32, integers as int32, block-size constants with small powers of two and flags as True.
Prints one line a kernel and exits 1 if any fails; the lane forward needs triton >= 3.3 (``ssm_triton._TUPLES``), so
its failure below 3.3 is expected and reported as such.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
from pathlib import Path

SIZES = dict(BLOCK_D=16, N_P2=16, BLOCK_T=256, BLOCK=1024, BLOCK_R=32, N=16, S=2, VEC=8, MODE=0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80 or 90")
    args = ap.parse_args(argv)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    path = Path(__file__).resolve().parents[1] / "modeling" / "ssm_triton.py"
    spec = importlib.util.spec_from_file_location("ssm_triton_check", path)
    st = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(st)
    version = tuple(int(p) for p in triton.__version__.split(".")[:2])
    failed = []
    for name in sorted(n for n in dir(st) if n.endswith("_kernel") and hasattr(getattr(st, n), "fn")):
        fn = getattr(st, name)
        const, sig = {}, {}
        for p, param in inspect.signature(fn.fn).parameters.items():
            if "constexpr" in str(param.annotation):
                const[p], sig[p] = SIZES.get(p, True), "constexpr"
            else:
                sig[p] = "*fp32" if p.endswith("_ptr") else "i32"
        # triton >= 3.3 takes constexprs=..., older ones constants=...
        src = (ASTSource(fn=fn, signature=sig, constexprs=const) if version >= (3, 3)
               else ASTSource(fn=fn, signature=sig, constants=const))
        try:
            triton.compile(src, target=GPUTarget("cuda", args.arch, 32), options={"num_warps": 4})
            print(f"ok      {name}")
        except Exception as err:  # noqa: BLE001 -- report every kernel, then fail
            expected = name == "_scan_fwd_lane_kernel" and not st._TUPLES
            print(f"{'gated' if expected else 'FAILED':7s} {name}: {type(err).__name__}")
            if not expected:
                failed.append(name)
    print(f"triton {triton.__version__}, sm_{args.arch}: {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
