"""Shared helpers of the benchmark scripts: import `ssmvl` from the checkout when it is not installed (the GPU machine
gets a bare copy of the repository), timing with CUDA events, peak memory."""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ensure_ssmvl():
    """Makes `import ssmvl` work from a plain checkout: the repository root is the package `ssmvl`."""
    try:
        import ssmvl  # noqa: F401
        return
    except ImportError:
        pass
    spec = importlib.util.spec_from_file_location("ssmvl", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["ssmvl"] = module
    spec.loader.exec_module(module)


def cuda_time_ms(fn, warmup=2, repeats=5):
    """Median milliseconds of fn() measured with CUDA events."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_device_ms(fn, reps=20):
    """{kernel name: GPU milliseconds a call} of fn() from torch.profiler over ``reps`` calls (after one warm-up call):
    kernel time apart from launch cost."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    rows = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None)
        t = e.cuda_time_total if t is None else t
        if t > 0 and e.key and not e.key.startswith("cuda"):
            rows[e.key] = t / 1000.0 / reps
    return rows


def wall_time_s(fn, warmup=1, repeats=3):
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory_mib(fn):
    """Runs fn once and returns the peak CUDA memory it allocated above what was allocated before, in MiB."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def plot_panels(result, path, x_key: str, panels, title: str, log_x: bool = False):
    """A 2 x 2 figure of result["rows"] (one line per row["model"]): panels = four (key, y label) pairs, x = row[x_key],
    log y; rows lacking a key (e.g. out of memory) are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for name in sorted({r["model"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["model"] == name]
        for ax, (key, label) in zip(axes.flat, panels):
            pts = [(r[x_key], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), "o-", label=name)
            ax.set(yscale="log", xscale="log" if log_x else "linear", xlabel=x_key, ylabel=label)
    for ax in axes.flat:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
