"""The host (CPU-side) cost of an inference forward on the triton backend, measured without a GPU.

On the H200 a 1 x 1024 prefill of the mamba-130m shape takes 19.5 ms a call while its 370 kernels run for 2.0 ms: it is
bound by the Python and launch work per layer (benchmarks/README.md). This script times that work on any machine:
the model runs on small CPU tensors with the backend forced to triton, and every Triton kernel launch is replaced by
a counter (Triton's own launch cost, about 35 us a launch on the device machine, is then counted, not timed). What
is timed is our wrappers, the checks, the allocations and torch's dispatch of the other ops.

    python benchmarks/host_overhead.py [--layers 24] [--tokens 1024] [--repeats 50]

Prints microseconds a layer (median of the repeats) and launches a layer, per path: the LM forward without a cache
(the tiled scan, as at 1 x 1024), and with a cache continuing (the chunked prefill); and the microseconds of one
selective scan forward + backward through autograd (the time-tiled training pair).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # the wrappers' device checks then accept CPU tensors

import torch  # noqa: E402

from common import ensure_ssmvl  # noqa: E402

ensure_ssmvl()

from ssmvl.modeling import MambaLMConfig, MambaLMForCausalLM, ssm_ops, ssm_triton  # noqa: E402


class _Launches:
    """Stands in for every ``kernel[grid](...)`` of ssm_triton: counts launches by kernel name."""

    def __init__(self):
        self.counts = {}

    def patch(self):
        for name in dir(ssm_triton):
            if name.startswith("_") and name.endswith("_kernel") and hasattr(getattr(ssm_triton, name), "run"):
                setattr(ssm_triton, name, _FakeKernel(name, self.counts))


class _FakeKernel:
    def __init__(self, name, counts):
        self.name, self.counts = name, counts

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.counts[self.name] = self.counts.get(self.name, 0) + 1
        return launch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--profile", type=int, default=0, help="also print cProfile's N most costly functions")
    args = ap.parse_args()
    launches = _Launches()
    launches.patch()
    resolve = ssm_ops.resolve_backend
    ssm_ops.resolve_backend = lambda requested=None, device=None: resolve(requested, "cuda")  # as on a GPU

    def on_gpu(x, weight, *others):  # ssm_ops._norm_kernel_applies with x.is_cuda taken as true
        tensors = (x, weight) + others
        return (all(t.dtype in (torch.float16, torch.bfloat16, torch.float32) for t in tensors) and x.numel() > 0
                and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
                and weight.shape == x.shape[-1:] and all(t.shape == x.shape for t in others))

    ssm_ops._norm_kernel_applies = on_gpu
    ssm_triton.TILE_CONFIG["enabled"] = True  # the scan path of a 1 x 1024 prefill, at --tokens steps
    cfg = MambaLMConfig(vocab_size=128, hidden_size=32, num_hidden_layers=args.layers, state_size=16, expand=2,
                        conv_kernel=4, pad_token_id=0, bos_token_id=0, eos_token_id=0, ssm_backend="triton",
                        use_cuda_graph=False)
    model = MambaLMForCausalLM(cfg).eval()
    ids = torch.randint(1, 128, (1, args.tokens))
    torch.set_num_threads(1)

    def timed(fn):
        fn()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e6 / args.layers

    with torch.no_grad():
        rows = {}
        launches.counts.clear()
        rows["forward, no cache"] = (timed(lambda: model(ids, use_cache=False, logits_to_keep=1)), dict(launches.counts))
        out = model(ids[:, :8], use_cache=True)
        launches.counts.clear()
        rows["forward, cache continuing"] = (
            timed(lambda: model(ids, cache=out.cache, use_cache=True, logits_to_keep=1)), dict(launches.counts))
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.repeats):
                model(ids, use_cache=False, logits_to_keep=1)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)
        torch_ops = _torch_kernels(lambda: model(ids, use_cache=False, logits_to_keep=1), args.layers)
    for name, (us, counts) in rows.items():
        calls = args.repeats + 1
        per_layer = {k: round(v / calls / args.layers, 2) for k, v in sorted(counts.items())}
        print(f"{name}: {us:.0f} us a layer (host, kernels not run); Triton launches a layer: "
              f"{sum(per_layer.values()):.2f} {per_layer}")
    print(f"torch ops that launch a kernel on a GPU, a layer (forward, no cache): {sum(torch_ops.values()):.2f} "
          f"{torch_ops}")
    us, counts = _scan_training(launches, args.repeats)
    print(f"selective scan forward + backward (training, the time-tiled pair; 1 x 64 channels x 1024 steps, bf16, "
          f"autograd's engine included): {us:.0f} us a call (host, kernels not run); Triton launches {counts}")


def _scan_training(launches, repeats):
    """Host us of one forward + backward of ssm_triton.selective_scan_triton through autograd (the scan as a training
    step calls it: five inputs that need gradients, D, delta_bias, the z gate), and its Triton launches."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(torch.bfloat16)

    dim, L, N = 64, 1024, 16
    A, D, bias, dy = -torch.rand(dim, N, generator=g), torch.randn(dim, generator=g), torch.randn(dim, generator=g), \
        rnd(1, dim, L)
    leaves = [t.requires_grad_() for t in (rnd(1, dim, L), rnd(1, dim, L), rnd(1, 1, N, L), rnd(1, 1, N, L),
                                            rnd(1, dim, L))]

    def fb():
        for t in leaves:
            t.grad = None
        u, delta, B, C, z = leaves
        ssm_triton.selective_scan_triton(u, delta, A, B, C, D, z, bias, True).backward(dy)

    fb()
    launches.counts.clear()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fb()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6, {k: v // repeats for k, v in launches.counts.items()}


# aten ops that run one GPU kernel each (cat is one kernel for its inputs; copy_ inside it is not counted)
_KERNEL_OPS = {"mm", "addmm", "bmm", "baddbmm", "cat", "copy_", "exp", "neg", "mul", "add", "sub", "div", "fill_",
               "zero_", "index_select", "softplus", "silu", "sigmoid", "pow", "mean", "rsqrt", "sum", "flip", "where",
               "conv1d", "_conv_depthwise2d", "convolution", "max", "min", "abs", "clamp", "exp_", "neg_", "mul_", "add_"}


def _torch_kernels(fn, layers):
    """The torch ops a call dispatches that launch a GPU kernel (matmuls, copies, element-wise), per layer."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    counts = {}
    for e in prof.events():
        name = e.name.split("::")[-1]
        parent = e.cpu_parent.name if e.cpu_parent is not None else ""
        nested = parent.split("::")[-1] in _KERNEL_OPS or parent in ("aten::cat", "aten::mm", "aten::addmm")
        if e.name.startswith("aten::") and name in _KERNEL_OPS and not nested:
            counts[name] = counts.get(name, 0) + 1
    return {k: round(v / layers, 2) for k, v in sorted(counts.items())}


if __name__ == "__main__":
    main()
