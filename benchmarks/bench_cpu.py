"""CPU benchmarks of the foundation, in one process:

1. selective scan, `torch` backend vs the sequential `reference` (B=1, D=1536, N=16, L=256/1024/4096),
   forward and forward+backward, fp32; the `torch` backend twice: with its fused C++ CPU kernel (the default,
   `torch_*` keys) and with SSMVL_CPU_SCAN_KERNEL=0 (the eager torch ops, `torch_eager_*` keys);
2. Mamba LM at the mamba-130m config (d_model 768, 24 layers, vocab 50280), fp32, batch 1: prefill tokens/s and
   decode tokens/s, ours vs transformers' `MambaForCausalLM` (its torch path; no mamba_ssm kernels on CPU).

Writes benchmarks/results/cpu.json and cpu.png. Usage: python benchmarks/bench_cpu.py [--quick] [--scan-only]
[--repeats N] (--scan-only keeps the LM rows of the existing cpu.json). Times are medians of the repeats (the
reference's L=4096 rows: one run); the `*_min_ms` keys are the minima.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from ssmvl.modeling import MambaLMConfig, MambaLMForCausalLM, ssm_ops


def timeit(fn, repeats=3, warmup=1, with_min=False):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return (statistics.median(times), min(times)) if with_min else statistics.median(times)


def bench_scan(lengths, repeats):
    from ssmvl.modeling import ssm_cpu_kernel

    rows = []
    B, D, N = 1, 1536, 16
    t0 = time.perf_counter()
    built = ssm_cpu_kernel.load() is not None  # compiled here on a machine's first run, else loaded from the cache
    load_s = time.perf_counter() - t0
    print(f"CPU scan kernel: {'ready' if built else 'unavailable: ' + str(ssm_cpu_kernel.error())} "
          f"({load_s:.1f} s to build or load)", flush=True)
    for L in lengths:
        g = torch.Generator().manual_seed(0)
        u = torch.randn(B, D, L, generator=g)
        delta = torch.randn(B, D, L, generator=g) * 0.5
        A = -torch.rand(D, N, generator=g) * 8
        Bm, Cm = torch.randn(B, N, L, generator=g), torch.randn(B, N, L, generator=g)
        Dv, z, bias = torch.randn(D, generator=g), torch.randn(B, D, L, generator=g), torch.randn(D, generator=g)
        row = {"B": B, "D": D, "N": N, "L": L, "dtype": "float32", "cpu_kernel": built}
        # torch: the default (the fused C++ kernel where it builds); torch_eager: SSMVL_CPU_SCAN_KERNEL=0
        for name, backend, env in (("torch", "torch", "auto"), ("torch_eager", "torch", "0"),
                                   ("reference", "reference", "auto")):
            reps = 1 if (backend == "reference" and L >= 4096) else repeats
            previous = os.environ.get("SSMVL_CPU_SCAN_KERNEL")
            os.environ["SSMVL_CPU_SCAN_KERNEL"] = env

            def fwd():
                with torch.no_grad():
                    ssm_ops.selective_scan(u, delta, A, Bm, Cm, Dv, z, bias, True, backend=backend)

            def fwd_bwd():
                uu, dd = u.clone().requires_grad_(), delta.clone().requires_grad_()
                y = ssm_ops.selective_scan(uu, dd, A, Bm, Cm, Dv, z, bias, True, backend=backend)
                y.sum().backward()

            try:
                for key, fn in (("fwd", fwd), ("fwdbwd", fwd_bwd)):
                    median, best = timeit(fn, reps, warmup=0 if reps == 1 else 1, with_min=True)
                    row[f"{name}_{key}_ms"], row[f"{name}_{key}_min_ms"] = 1e3 * median, 1e3 * best
            finally:
                if previous is None:
                    os.environ.pop("SSMVL_CPU_SCAN_KERNEL")
                else:
                    os.environ["SSMVL_CPU_SCAN_KERNEL"] = previous
            print(f"scan L={L:5d} {name:11s} fwd {row[f'{name}_fwd_ms']:9.1f} ms (min {row[f'{name}_fwd_min_ms']:.1f})"
                  f"   fwd+bwd {row[f'{name}_fwdbwd_ms']:9.1f} ms (min {row[f'{name}_fwdbwd_min_ms']:.1f})",
                  flush=True)
        for name in ("torch", "torch_eager"):
            suffix = "" if name == "torch" else "_eager"
            row[f"speedup_fwd{suffix}"] = row["reference_fwd_ms"] / row[f"{name}_fwd_ms"]
            row[f"speedup_fwdbwd{suffix}"] = row["reference_fwdbwd_ms"] / row[f"{name}_fwdbwd_ms"]
        rows.append(row)
    return rows, load_s


def bench_lm(prompt_lens, new_tokens, repeats):
    from transformers import MambaConfig, MambaForCausalLM

    cfg = dict(vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=16, expand=2, conv_kernel=4,
               pad_token_id=0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    hf = MambaForCausalLM(MambaConfig(**cfg)).eval()
    ours = MambaLMForCausalLM(MambaLMConfig(**cfg)).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    rows = []
    for P in prompt_lens:
        ids = torch.randint(1, 50000, (1, P), generator=torch.Generator().manual_seed(P))
        row = {"batch": 1, "prompt": P, "new_tokens": new_tokens, "dtype": "float32", "config": "mamba-130m"}
        for name, model in (("ssmvl", ours), ("transformers", hf)):
            with torch.no_grad():
                prefill = timeit(lambda: model(ids, use_cache=True), repeats)
                total = timeit(lambda: model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                      do_sample=False), 1)
            row[f"{name}_prefill_tok_s"] = P / prefill
            row[f"{name}_decode_tok_s"] = (new_tokens - 1) / max(total - prefill, 1e-9)
            print(f"LM prompt={P:5d} {name:12s} prefill {row[f'{name}_prefill_tok_s']:8.1f} tok/s   "
                  f"decode {row[f'{name}_decode_tok_s']:6.1f} tok/s", flush=True)
        rows.append(row)
    return rows


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    scan = result["scan"]
    Ls = [r["L"] for r in scan]
    for i, (name, label, marker) in enumerate((("torch", "torch (C++ kernel)", "o"),
                                               ("torch_eager", "torch (eager ops)", "^"), ("reference", "reference", "s"))):
        for key, line in (("fwd", "-"), ("fwdbwd", "--")):
            if all(f"{name}_{key}_ms" in r for r in scan):
                axes[0].plot(Ls, [r[f"{name}_{key}_ms"] for r in scan], marker + line, color=f"C{i}",
                             label=f"{label} {key}")
    axes[0].set(xscale="log", yscale="log", xlabel="sequence length", ylabel="ms",
                title="selective scan, B=1 D=1536 N=16, fp32, CPU")
    axes[0].legend(fontsize=8)
    lm = result["lm"]
    Ps = [r["prompt"] for r in lm]
    for name in ("ssmvl", "transformers"):
        axes[1].plot(Ps, [r[f"{name}_prefill_tok_s"] for r in lm], "o-", label=f"{name} prefill")
        axes[1].plot(Ps, [r[f"{name}_decode_tok_s"] for r in lm], "s--", label=f"{name} decode")
    axes[1].set(xscale="log", yscale="log", xlabel="prompt length", ylabel="tokens/s",
                title="mamba-130m config, batch 1, fp32, CPU")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--scan-only", action="store_true", help="time the scan only; keep the LM rows of --out")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each scan (median and min reported)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lengths = [64, 256] if args.quick else [256, 1024, 4096]
    prompts = [32] if args.quick else [128, 512, 1024]
    scan, load_s = bench_scan(lengths, repeats=1 if args.quick else args.repeats)
    previous = json.loads((out / "cpu.json").read_text()) if (out / "cpu.json").exists() else {}
    result = {
        "date": datetime.date.today().isoformat(),
        "device": f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "cpu_kernel_load_s": load_s,
        "scan": scan,
        "lm": previous.get("lm", []) if args.scan_only else bench_lm(
            prompts, new_tokens=8 if args.quick else 32, repeats=1 if args.quick else 2),
    }
    if args.scan_only and "date" in previous:
        result["lm_date"] = previous.get("lm_date", previous["date"])
    (out / "cpu.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "cpu.png")
    print(f"wrote {out / 'cpu.json'} and {out / 'cpu.png'}")


if __name__ == "__main__":
    main()
