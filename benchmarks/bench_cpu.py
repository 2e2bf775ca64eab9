"""CPU benchmarks of the foundation, in one process:

1. selective scan, `torch` backend vs the sequential `reference` (B=1, D=1536, N=16, L=256/1024/4096),
   forward and forward+backward, fp32;
2. Mamba LM at the mamba-130m config (d_model 768, 24 layers, vocab 50280), fp32, batch 1: prefill tokens/s and
   decode tokens/s, ours vs transformers' `MambaForCausalLM` (its torch path; no mamba_ssm kernels on CPU).

Writes benchmarks/results/cpu.json and cpu.png. Usage: python benchmarks/bench_cpu.py [--quick]
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


def timeit(fn, repeats=3, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_scan(lengths, repeats):
    rows = []
    B, D, N = 1, 1536, 16
    for L in lengths:
        g = torch.Generator().manual_seed(0)
        u = torch.randn(B, D, L, generator=g)
        delta = torch.randn(B, D, L, generator=g) * 0.5
        A = -torch.rand(D, N, generator=g) * 8
        Bm, Cm = torch.randn(B, N, L, generator=g), torch.randn(B, N, L, generator=g)
        Dv, z, bias = torch.randn(D, generator=g), torch.randn(B, D, L, generator=g), torch.randn(D, generator=g)
        row = {"B": B, "D": D, "N": N, "L": L, "dtype": "float32"}
        for backend in ("torch", "reference"):
            reps = 1 if (backend == "reference" and L >= 4096) else repeats

            def fwd():
                with torch.no_grad():
                    ssm_ops.selective_scan(u, delta, A, Bm, Cm, Dv, z, bias, True, backend=backend)

            def fwd_bwd():
                uu, dd = u.clone().requires_grad_(), delta.clone().requires_grad_()
                y = ssm_ops.selective_scan(uu, dd, A, Bm, Cm, Dv, z, bias, True, backend=backend)
                y.sum().backward()

            row[f"{backend}_fwd_ms"] = 1e3 * timeit(fwd, reps, warmup=0 if reps == 1 else 1)
            row[f"{backend}_fwdbwd_ms"] = 1e3 * timeit(fwd_bwd, reps, warmup=0 if reps == 1 else 1)
            print(f"scan L={L:5d} {backend:9s} fwd {row[f'{backend}_fwd_ms']:9.1f} ms   "
                  f"fwd+bwd {row[f'{backend}_fwdbwd_ms']:9.1f} ms", flush=True)
        row["speedup_fwd"] = row["reference_fwd_ms"] / row["torch_fwd_ms"]
        row["speedup_fwdbwd"] = row["reference_fwdbwd_ms"] / row["torch_fwdbwd_ms"]
        rows.append(row)
    return rows


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
    for key, style in (("torch_fwd_ms", "o-"), ("torch_fwdbwd_ms", "o--"), ("reference_fwd_ms", "s-"),
                       ("reference_fwdbwd_ms", "s--")):
        axes[0].plot(Ls, [r[key] for r in scan], style, label=key.replace("_ms", ""))
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
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lengths = [64, 256] if args.quick else [256, 1024, 4096]
    prompts = [32] if args.quick else [128, 512, 1024]
    result = {
        "date": datetime.date.today().isoformat(),
        "device": f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "scan": bench_scan(lengths, repeats=1 if args.quick else 3),
        "lm": bench_lm(prompts, new_tokens=8 if args.quick else 32, repeats=1 if args.quick else 2),
    }
    (out / "cpu.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "cpu.png")
    print(f"wrote {out / 'cpu.json'} and {out / 'cpu.png'}")


if __name__ == "__main__":
    main()
