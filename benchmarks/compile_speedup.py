"""`torch.compile` against eager for Vim and the Mamba LM: forward (inference) and forward+backward (a training step's
compute, no optimizer): eager and compiled calls alternate after warm-up (so both see the same background load), the
speed-up is the median of the paired ratios (and the ratio of the fastest calls), wall and process-CPU medians kept;
the compile time (the first compiled call, cold inductor caches unless --warm-caches) is reported beside it, with the
compiled output against eager and the graph breaks that `torch._dynamo.explain` finds.

Each (case, mode, thread count) runs in a fresh subprocess, so that thread settings, dynamo and inductor state and
memory start clean; the load average of the machine is kept with each row (other jobs on a shared machine skew
timings: compare rows of one run).

    python benchmarks/compile_speedup.py                               # CPU, fp32, 1 and 2 threads -> *_cpu.json
    python benchmarks/compile_speedup.py --device cuda --dtype bf16    # GPU -> compile_speedup_cuda_bf16.json
    python benchmarks/compile_speedup.py --quick                       # two small cases only

bf16: the forward runs with bf16 weights and inputs; forward+backward keeps fp32 weights under
`torch.autocast(bfloat16)` (what Trainer's `bf16=True` does). Cases (`--cases` to pick some):
vim-tiny / vim-small (configs/) at 112 and 224 px; the demo Mamba LM (configs/mamba-lm-demo.json, vocab 512) and a
mamba-130m-size LM (d_model 768, 24 layers, vocab 50280), `use_cache=False` (a training / scoring forward).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import ensure_ssmvl  # noqa: E402

# name -> (family, config, inputs); batch and sizes per device
LM_130M = dict(vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=16, pad_vocab_size_multiple=8)
CASES = {
    "vim-tiny-112": dict(family="vim", preset="vim-tiny", image_size=112, batch={"cpu": 1, "cuda": 64}),
    "vim-tiny-224": dict(family="vim", preset="vim-tiny", image_size=224, batch={"cpu": 1, "cuda": 64}),
    "vim-small-224": dict(family="vim", preset="vim-small", image_size=224, batch={"cpu": 1, "cuda": 32}),
    "mamba-lm-demo": dict(family="lm", preset="mamba-lm-demo", overrides=dict(vocab_size=512), seqlen=256,
                          batch={"cpu": 4, "cuda": 32}),
    "mamba-lm-130m": dict(family="lm", overrides=LM_130M, seqlen={"cpu": 256, "cuda": 1024},
                          batch={"cpu": 1, "cuda": 8}),
}
QUICK = ["vim-tiny-112", "mamba-lm-demo"]


def _per_device(value, device):
    return value[device] if isinstance(value, dict) else value


def build(case: dict, device: str):
    """(model, make_inputs) for one case; the model in fp32 on ``device``, eval mode."""
    import torch

    from ssmvl.modeling import MambaLMConfig, MambaLMForCausalLM, VimConfig, VimForImageClassification

    torch.manual_seed(0)
    if case["family"] == "vim":
        cfg = json.loads((ROOT / "configs" / f"{case['preset']}.json").read_text())
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_") and k != "model_type"}
        cfg.update(image_size=case["image_size"])
        model = VimForImageClassification(VimConfig(**cfg))
        batch, size = _per_device(case["batch"], device), case["image_size"]

        def inputs():
            g = torch.Generator().manual_seed(1)
            x = torch.randn(batch, 3, size, size, generator=g)
            return {"pixel_values": x.to(device), "labels": torch.randint(0, 1000, (batch,), generator=g).to(device)}

        shape = {"batch": batch, "image_size": size, "tokens": model.config.num_patches + 1}
    else:
        cfg = {}
        if case.get("preset"):
            cfg = json.loads((ROOT / "configs" / f"{case['preset']}.json").read_text())
            cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
        cfg.update(case.get("overrides", {}))
        model = MambaLMForCausalLM(MambaLMConfig(**cfg))
        batch, seqlen = _per_device(case["batch"], device), _per_device(case["seqlen"], device)
        vocab = model.config.vocab_size

        def inputs():
            ids = torch.randint(0, vocab, (batch, seqlen), generator=torch.Generator().manual_seed(1)).to(device)
            return {"input_ids": ids, "labels": ids, "use_cache": False}

        shape = {"batch": batch, "seqlen": seqlen}
    params = sum(p.numel() for p in model.parameters())
    return model.to(device).eval(), inputs, shape, params


def _paired_times(run_a, run_b, warmup: int, repeats: int, sync):
    """Wall and process-CPU seconds of ``repeats`` alternating calls a, b, a, b, ... after ``warmup`` of each: on a
    shared machine both then see the same background load, and the ratio of each pair cancels most of it."""
    for _ in range(warmup):
        run_a()
        run_b()
    sync()
    wall, cpu = {"a": [], "b": []}, {"a": [], "b": []}
    for _ in range(repeats):
        for key, fn in (("a", run_a), ("b", run_b)):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            wall[key].append(time.perf_counter() - w0)
            cpu[key].append(time.process_time() - c0)
    return wall, cpu


def worker(spec: dict) -> dict:
    """Runs one case in one mode at one thread count; returns its result row."""
    import torch
    import torch._dynamo as dynamo

    ensure_ssmvl()
    from ssmvl.modeling import ssm_ops

    device, mode, bf16 = spec["device"], spec["mode"], spec["dtype"] == "bf16"
    if device == "cpu":
        torch.set_num_threads(spec["threads"])
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    case = CASES[spec["case"]]
    model, make_inputs, shape, params = build(case, device)
    row = {"case": spec["case"], "family": case["family"], "mode": mode, "device": device, "dtype": spec["dtype"],
           "threads": spec["threads"] if device == "cpu" else None, "params": params, **shape,
           "compile_mode": spec["compile_mode"],
           "ssm_backend": ssm_ops.resolve_backend(model.config.ssm_backend, device),
           "load_average_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    kwargs = make_inputs()
    reference = None
    if mode == "forward":  # inference: bf16 weights and inputs when asked
        if bf16:  # the fp32 logits: how far eager bf16 itself is from them sets the scale of compiled-vs-eager
            with torch.inference_mode():
                reference = model(**{k: v for k, v in kwargs.items() if k != "labels"}).logits.float()
        model = model.to(torch.bfloat16) if bf16 else model
        kwargs.pop("labels")
        if "pixel_values" in kwargs:
            kwargs["pixel_values"] = kwargs["pixel_values"].to(next(model.parameters()).dtype)

        def run(m):
            with torch.inference_mode():
                return m(**kwargs).logits
    else:  # a training step's compute: fp32 weights, bf16 autocast when asked
        model.train()

        def run(m):
            m.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = m(**kwargs).loss
            loss.backward()
            return loss.detach()
    try:
        eager_out = run(model)  # also sets what the first call sets (e.g. config.problem_type), as in training
        sync()
        with torch.no_grad():
            ex = dynamo.explain(model)(**kwargs)
        row["graphs"], row["graph_breaks"] = ex.graph_count, ex.graph_break_count
        row["break_reasons"] = sorted({r.reason.splitlines()[0][:160] for r in ex.break_reasons})
        dynamo.reset()
        compiled = torch.compile(model, mode=None if spec["compile_mode"] == "default" else spec["compile_mode"])
        t0 = time.perf_counter()
        compiled_out = run(compiled)
        sync()
        row["compile_s"] = time.perf_counter() - t0  # the first call: tracing + code generation + one run
        wall, cpu = _paired_times(lambda: run(model), lambda: run(compiled), spec["warmup"], spec["repeats"], sync)
        row["eager_s"], row["compiled_s"] = statistics.median(wall["a"]), statistics.median(wall["b"])
        row["eager_min_s"], row["compiled_min_s"] = min(wall["a"]), min(wall["b"])
        row["eager_cpu_s"], row["compiled_cpu_s"] = statistics.median(cpu["a"]), statistics.median(cpu["b"])
        row["speedup"] = statistics.median(e / c for e, c in zip(wall["a"], wall["b"]))  # median of paired ratios
        row["speedup_min"] = row["eager_min_s"] / row["compiled_min_s"]
        row["eager_all_s"], row["compiled_all_s"] = wall["a"], wall["b"]
        a, b = eager_out.float(), compiled_out.float()
        row["max_abs_diff"], row["max_abs_eager"] = float((a - b).abs().max()), float(a.abs().max())
        if reference is not None:  # a randomly initialised deep model in bf16 can be far from fp32 either way
            row["eager_vs_fp32_max_abs"] = float((a - reference).abs().max())
            row["compiled_vs_fp32_max_abs"] = float((b - reference).abs().max())
            row["argmax_agree_eager_fp32"] = float((a.argmax(-1) == reference.argmax(-1)).float().mean())
            row["argmax_agree_compiled_fp32"] = float((b.argmax(-1) == reference.argmax(-1)).float().mean())
    except Exception as err:  # a failing case is a result too (e.g. a backend that cannot be compiled)
        row["error"] = f"{type(err).__name__}: {str(err)[:500]}"
    row["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return row


def markdown_table(result: dict) -> str:
    """The rows of a results JSON as a markdown table (one line per case, mode and thread count)."""
    lines = ["| case | mode | threads | batch x size | eager ms | compiled ms | speed-up (paired median) | "
             "compile s | graph breaks | max abs diff |", "|" + "---|" * 10]
    for r in result["rows"]:
        size = f"{r.get('batch')} x {r.get('image_size', r.get('seqlen'))}" if "batch" in r else ""
        if "speedup" not in r:
            lines.append(f"| {r['case']} | {r.get('mode')} | {r.get('threads') or '-'} | {size} | error: "
                         f"{r.get('error', '')[:80]} |||||")
            continue
        lines.append(f"| {r['case']} | {r['mode']} | {r.get('threads') or '-'} | {size} | {r['eager_s'] * 1e3:.1f} | "
                     f"{r['compiled_s'] * 1e3:.1f} | x{r['speedup']:.2f} | {r['compile_s']:.0f} | "
                     f"{r['graph_breaks']} | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts (CPU only)")
    parser.add_argument("--cases", nargs="+", default=None, choices=sorted(CASES))
    parser.add_argument("--modes", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed (eager, compiled) pairs after warm-up (default: 10 CPU, 20 GPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile-mode", default="default",
                        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    parser.add_argument("--warm-caches", action="store_true",
                        help="keep inductor's on-disk caches (the compile time is then not a cold one)")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--out", default=None, help="JSON path (default results/compile_speedup_<device>[_bf16].json)")
    parser.add_argument("--table", default=None, metavar="JSON", help="print a results JSON as a markdown table")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    ensure_ssmvl()
    import torch
    import transformers

    cases = args.cases or (QUICK if args.quick else list(CASES))
    repeats = args.repeats or (10 if args.device == "cpu" else 20)
    threads = args.threads if args.device == "cpu" else [None]
    env = dict(os.environ)
    if not args.warm_caches:
        env["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
    rows = []
    suffix = "_bf16" if args.dtype == "bf16" else ""
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"compile_speedup_{args.device}{suffix}.json")

    def write():  # after every row, so that an interrupted run keeps what it measured
        result = {
            "date": datetime.date.today().isoformat(),
            "device": (torch.cuda.get_device_name(0) if args.device == "cuda" else
                       f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "dtype": args.dtype,
            "repeats": repeats,
            "warmup": args.warmup,
            "cold_inductor_caches": not args.warm_caches,
            "rows": rows,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")

    for name in cases:
        for n, mode in [(n, mode) for n in threads for mode in args.modes]:
            spec = dict(case=name, device=args.device, dtype=args.dtype, threads=n, mode=mode,
                        repeats=repeats, warmup=args.warmup, compile_mode=args.compile_mode, explain=True)
            t0 = time.time()
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                                  text=True, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if lines:
                row = json.loads(lines[-1][len("RESULT "):])
            else:
                row = {"case": name, "threads": n, "mode": mode,
                       "error": f"worker exit {proc.returncode}: {proc.stderr[-1500:]}"}
            row["wall_s"] = round(time.time() - t0, 1)
            rows.append(row)
            write()
            if "speedup" in row:
                print(f"{name} {mode} threads={n}: eager {row['eager_s'] * 1e3:.1f} ms, compiled "
                      f"{row['compiled_s'] * 1e3:.1f} ms (x{row['speedup']:.2f}; min x{row['speedup_min']:.2f}; "
                      f"compile {row['compile_s']:.0f} s, {row['graph_breaks']} graph breaks)", flush=True)
            else:
                print(f"{name} {mode} threads={n}: ERROR {row.get('error', '')[:300]}", flush=True)

    print(f"wrote {out}")


if __name__ == "__main__":
    main()
