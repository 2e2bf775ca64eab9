"""Compile every Triton kernel of ``modeling/ssm_triton.py`` for a CUDA architecture without a GPU (``triton.compile``
needs only the ptxas that ships with triton): a check of the triton versions the ``[cuda]`` extra allows.

    pip install --no-deps --target /tmp/triton-3.2 triton==3.2.0
    PYTHONPATH=/tmp/triton-3.2 python benchmarks/compile_triton_kernels.py [--arch 90]

Pointers are compiled as fp32, integers as int32, block-size constants with small powers of two and flags as True.
Prints one line a kernel and exits 1 if any fails; the lane forward needs triton >= 3.3 (``ssm_triton._TUPLES``), so
its failure below 3.3 is expected and reported as such. Also checks that the lane forward keeps 16-byte loads for bf16
B / C rows whose stride is not a multiple of 16 elements (``lane_vector_loads``).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
from pathlib import Path

SIZES = dict(BLOCK_D=16, N_P2=16, BLOCK_T=256, BLOCK=1024, BLOCK_R=32, N=16, S=2, VEC=8, MODE=0, CPT=1, SUB=4, R=2,
             SAVE_EVERY=16)
# kernels compiled in several variants, each (constexprs over SIZES / True, num_warps): the time-tiled backward's
# lane adjoint (128-step tiles in one warp, two channels a program or one) and its tl.associative_scan one
VARIANTS = {"_scan_bwd_tile_kernel": [(dict(BLOCK_T=128, LANES=True, CH2=True), 1),
                                      (dict(BLOCK_T=128, LANES=True, CH2=False), 1),
                                      (dict(LANES=False, CH2=False), 4)]}


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
    names = sorted(n for n in dir(st) if n.endswith("_kernel") and hasattr(getattr(st, n), "fn"))
    for name, (update, warps) in ((n, v) for n in names for v in VARIANTS.get(n, [({}, 4)])):
        fn = getattr(st, name)
        fn = fn.kernel if isinstance(fn, st._Launcher) else fn  # the JITFunction inside ssm_triton's _Launcher
        const, sig = {}, {}
        for p, param in inspect.signature(fn.fn).parameters.items():
            if "constexpr" in str(param.annotation):
                const[p], sig[p] = update.get(p, SIZES.get(p, True)), "constexpr"
            else:
                sig[p] = "*fp32" if p.endswith("_ptr") else "i32"
        # triton >= 3.3 takes constexprs=..., older ones constants=...
        src = (ASTSource(fn=fn, signature=sig, constexprs=const) if version >= (3, 3)
               else ASTSource(fn=fn, signature=sig, constants=const))
        label = name + "".join(f" {k}={v}" for k, v in update.items())
        try:
            triton.compile(src, target=GPUTarget("cuda", args.arch, 32), options={"num_warps": warps})
            print(f"ok      {label}")
        except Exception as err:  # noqa: BLE001 -- report every kernel, then fail
            lanes = name == "_scan_bwd_tile_kernel" and update.get("LANES")  # tuples of columns: 3.3 on
            tuples = name in ("_scan_fwd_lane_kernel", "_scan_fwd_seg_kernel", "_scan_bwd_lane_kernel") or lanes
            expected = tuples and not st._TUPLES  # (the host runs these from triton 3.3 on)
            print(f"{'gated' if expected else 'FAILED':7s} {label}: {type(err).__name__}")
            if not expected:
                failed.append(label)
    if st._TUPLES:
        vector = lane_vector_loads(st, args.arch)
        print(f"{'ok' if vector else 'FAILED':7s} _scan_fwd_lane_kernel reads bf16 B / C rows of 56 elements with "
              f"16-byte loads ({vector} ld.global.v4)")
        if not vector:
            failed.append("lane vector loads")
    print(f"triton {triton.__version__}, sm_{args.arch}: {len(failed)} failed")
    return 1 if failed else 0


def lane_vector_loads(st, arch: int) -> int:
    """16-byte global loads in the lane forward's PTX for bf16 inputs read in place (VEC = 8) when the strides carry no
    divisibility of their own, as for a Vim-S x_proj row of 56 elements: the kernel must still vectorise its B / C
    loads (they went scalar once, and the kernel ran 2x slower on an H200)."""
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = st._scan_fwd_lane_kernel
    fn = fn.kernel if isinstance(fn, st._Launcher) else fn
    # VEC 16: bf16 rows as 32-bit words (the default)
    flags = dict(N=16, S=1, VEC=16, FAST=True, HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, HAS_H0=False,
                 MODE=0, BLOCK_D=32, A_IS_LOG=True, MEAN=False, SAVE_EVERY=0)
    params = list(inspect.signature(fn.fn).parameters)
    half = ("u_ptr", "dl_ptr", "z_ptr", "y_ptr", "B_ptr", "C_ptr")
    sig = {p: "constexpr" if p in flags else ("*bf16" if p in half else "*fp32") if p.endswith("_ptr") else "i32"
           for p in params}
    attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(params) if p.endswith("_ptr")}  # pointers only
    kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=flags, attrs=attrs),
                            target=GPUTarget("cuda", arch, 32), options={"num_warps": 1})
    return len(re.findall(r"ld\.global(?:\.\w+)*\.v4\.b32", kernel.asm["ptx"]))


if __name__ == "__main__":
    sys.exit(main())
