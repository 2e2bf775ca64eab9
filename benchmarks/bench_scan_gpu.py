"""Selective scan on GPU: our Triton kernels vs the `torch` backend of ssm_ops, transformers' Mamba slow path, and
the memory-bound lower bound.

    python benchmarks/bench_scan_gpu.py [--out DIR] [--sweep] [--lengths 1024 4096 16384]
    python benchmarks/bench_scan_gpu.py --plot-only benchmarks/results/scan_gpu.json

Sizes: batch 8, dim 1536 (mamba-130m's d_inner), dstate 16, bf16 activations, fp32 A / D / delta_bias, z gate,
softplus(delta + delta_bias), as in a Mamba mixer. Times are medians of triton.testing.do_bench.
Lower bound: bytes that must move (forward: u, delta, z, B, C read + y written; backward adds dy read and du, ddelta,
dz, dB, dC written) divided by the measured device-to-device copy bandwidth (bytes read + written per second).
Layouts of u / delta / z (batch, dim, L) and B / C (batch, N, L), timed for our Triton scan:
  channel  all contiguous (unit stride along L), as before;
  time     all time-major (unit stride along dim / N: `x.transpose(1, 2)` of a (batch, L, dim) tensor);
  mixer    what ssmvl's MambaMixer passes: u channel-major (the conv output), delta / z / B / C time-major; timed as
           the wrapper takes it by default ("triton_mixer_*") and with ssm_triton.LAYOUT["u_to_time_major"] on (u made
           time-major by one transposing copy first: "triton_mixer_u_tm_*").
Writes scan_gpu.json and scan_gpu.png into --out (default benchmarks/results).
"""

import argparse
import datetime
import importlib
import json
import os
import sys
import types

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_modeling():
    try:
        from ssmvl.modeling import ssm_ops, ssm_triton

        return ssm_ops, ssm_triton
    except ImportError:
        name = "_ssmvl_modeling_bench"
        pkg = types.ModuleType(name)
        pkg.__path__ = [os.path.join(ROOT, "modeling")]
        sys.modules[name] = pkg
        return importlib.import_module(f"{name}.ssm_ops"), importlib.import_module(f"{name}.ssm_triton")


def bench(fn, rep=200):
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=rep, return_mode="median")


def copy_bandwidth():
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()  # 1 GiB
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    return 2 * x.numel() / (ms * 1e-3)  # bytes read + written per second


LAYOUTS = ("channel", "time", "mixer")


def make(batch, dim, L, N, dtype, grad=False, seed=0, layout="channel"):
    """Inputs in one of LAYOUTS (same values whatever the layout). Time-major tensors are leaves that are transposed
    views of (batch, L, C) tensors, so autograd adds no copies of its own."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, device="cuda", generator=g) * scale).to(dtype)

    def lay(x, time_major):  # x (batch, C, L) -> the same values, time-major in memory
        return x.transpose(1, 2).contiguous().transpose(1, 2) if time_major else x

    tm = layout in ("time", "mixer")
    t = dict(
        u=lay(r(batch, dim, L), layout == "time"), delta=lay(r(batch, dim, L, scale=0.5), tm),
        A=-torch.rand(dim, N, device="cuda", generator=g) * 4,
        B=lay(r(batch, N, L), tm), C=lay(r(batch, N, L), tm), D=torch.randn(dim, device="cuda", generator=g),
        z=lay(r(batch, dim, L), tm), delta_bias=torch.rand(dim, device="cuda", generator=g) - 4,
    )
    if grad:
        for v in t.values():
            v.requires_grad_()
    return t


def fwd_bwd(fn, t, gy):
    def run():
        y = fn(**t, delta_softplus=True)
        y.backward(gy)

    return run


def grad_to_none(t):
    for v in t.values():
        v.grad = None


def hf_mixer(dim_model, dtype):
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    cfg = MambaConfig(hidden_size=dim_model, state_size=16, expand=2, conv_kernel=4, num_hidden_layers=1,
                      vocab_size=100, use_mambapy=False)
    torch.manual_seed(0)
    mixer = MambaMixer(cfg, layer_idx=0).to("cuda", dtype).eval()
    slow = getattr(mixer, "slow_forward", None)
    what = "MambaMixer.slow_forward" if slow is not None else "MambaMixer.forward (torch fallback, no kernels)"
    return mixer, (slow if slow is not None else mixer.forward), what


def our_mixer(mixer, scan):
    """The mixer's math with our scan (and F.conv1d for the conv): same weights as transformers' MambaMixer, tensors
    laid out as ssmvl's MambaMixer passes them (u = conv output channel-major; delta, z, B, C time-major views)."""
    import torch.nn.functional as F

    N, R = mixer.ssm_state_size, mixer.time_step_rank

    def run(hidden):
        L = hidden.shape[1]
        proj = mixer.in_proj(hidden).transpose(1, 2)
        x, gate = proj.chunk(2, dim=1)
        x = F.silu(mixer.conv1d(x)[..., :L])
        dt, Bm, Cm = torch.split(mixer.x_proj(x.transpose(1, 2)), [R, N, N], dim=-1)
        dt = F.linear(dt, mixer.dt_proj.weight).transpose(1, 2)  # time-major, as in ssmvl's MambaMixer
        A = -torch.exp(mixer.A_log.float())
        y = scan(x, dt, A, Bm.transpose(1, 2), Cm.transpose(1, 2), D=mixer.D.float(), z=gate,
                 delta_bias=mixer.dt_proj.bias.float(), delta_softplus=True)
        return mixer.out_proj(y.transpose(1, 2))

    return run


def sweep(ssm_triton, L=4096, batch=8, dim=1536, N=16, dtype=torch.bfloat16, layout="channel"):
    """Times a few block configurations on inputs in `layout`; sets the module's configs to the fastest ones."""
    t = make(batch, dim, L, N, dtype, layout=layout)
    out = {"fwd": [], "bwd": [], "L": L, "layout": layout}
    fwd_cfgs = [(4, 1), (8, 1), (8, 2), (16, 1), (16, 2), (32, 1), (32, 4)]
    bwd_cfgs = [(8, 1, 64, False), (8, 1, 32, False), (8, 1, 64, True), (4, 1, 64, False), (16, 1, 64, False),
                (16, 1, 32, True), (8, 2, 64, False), (16, 2, 64, False)]
    if layout != "channel":  # time-major: a step of BLOCK_D channels is one run of memory, so wider blocks may pay
        fwd_cfgs = [(16, 1), (32, 1), (32, 2), (64, 2)]
        bwd_cfgs = [(8, 1, 64, True), (16, 1, 64, True), (32, 1, 64, True), (16, 2, 64, True)]
    for bd, nw in fwd_cfgs:
        ssm_triton.FWD_CONFIG.update(BLOCK_D=bd, num_warps=nw)
        try:
            with torch.no_grad():
                ms = bench(lambda: ssm_triton.selective_scan_triton(**t, delta_softplus=True), rep=100)
        except Exception as err:
            print(f"sweep fwd {bd},{nw} failed: {err}", flush=True)
            continue
        out["fwd"].append({"BLOCK_D": bd, "num_warps": nw, "ms": ms})
        print(f"sweep fwd BLOCK_D={bd} warps={nw}: {ms:.3f} ms", flush=True)
    best = min(out["fwd"], key=lambda r: r["ms"])
    ssm_triton.FWD_CONFIG.update({k: best[k] for k in ("BLOCK_D", "num_warps")})
    tg = make(batch, dim, L, N, dtype, grad=True, layout=layout)
    gy = torch.randn_like(tg["u"])
    for bd, nw, ch, at in bwd_cfgs:
        ssm_triton.BWD_CONFIG.update(BLOCK_D=bd, num_warps=nw, CHUNK=ch, atomic=at)
        try:
            ms = bench(fwd_bwd(ssm_triton.selective_scan_triton, tg, gy), rep=100)
        except Exception as err:  # e.g. out of memory
            print(f"sweep bwd {bd},{nw},{ch},{at} failed: {err}", flush=True)
            continue
        grad_to_none(tg)
        out["bwd"].append({"BLOCK_D": bd, "num_warps": nw, "CHUNK": ch, "atomic": at, "ms_fwd_bwd": ms})
        print(f"sweep fwd+bwd BLOCK_D={bd} warps={nw} CHUNK={ch} atomic={at}: {ms:.3f} ms", flush=True)
    best = min(out["bwd"], key=lambda r: r["ms_fwd_bwd"])
    ssm_triton.BWD_CONFIG.update({k: best[k] for k in ("BLOCK_D", "num_warps", "CHUNK", "atomic")})
    out["chosen"] = {"fwd": dict(ssm_triton.FWD_CONFIG), "bwd": dict(ssm_triton.BWD_CONFIG)}
    print("chosen", out["chosen"], flush=True)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--sweep", action="store_true", help="time a few block configs first and use the fastest")
    p.add_argument("--sweep-layout", default="channel", choices=LAYOUTS, help="input layout the sweep times")
    p.add_argument("--torch-max-len", type=int, default=1024, help="longest L for the python-loop baselines")
    p.add_argument("--plot-only", default=None, help="re-draw the PNG from an existing JSON")
    args = p.parse_args()
    if args.plot_only:
        with open(args.plot_only) as f:
            plot(json.load(f), os.path.join(os.path.dirname(args.plot_only), "scan_gpu.png"))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ssm_ops, ssm_triton = load_modeling()
    os.makedirs(args.out, exist_ok=True)
    import triton

    batch, dim, N, dtype = 8, 1536, 16, torch.bfloat16
    res = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "date": datetime.date.today().isoformat(), "batch": batch, "dim": dim, "dstate": N, "dtype": "bfloat16",
        "timing": "triton.testing.do_bench, median, ms",
    }
    try:
        import transformers

        res["transformers"] = transformers.__version__
    except ImportError:
        pass
    bw = copy_bandwidth()
    res["copy_bandwidth_GBps"] = bw / 1e9
    print(f"device {res['device']}; copy bandwidth {bw / 1e9:.0f} GB/s (read + write)", flush=True)
    if args.sweep:
        res["sweep"] = sweep(ssm_triton, layout=args.sweep_layout)
    res["fwd_config"], res["bwd_config"] = dict(ssm_triton.FWD_CONFIG), dict(ssm_triton.BWD_CONFIG)
    rows = []
    for L in args.lengths:
        row = {"L": L}
        el = 2  # bf16
        big, small = batch * dim * L * el, batch * N * L * el
        row["bytes_fwd"] = 4 * big + 2 * small  # u, delta, z, B, C read; y written
        row["bytes_bwd"] = 7 * big + 4 * small  # u, delta, z, dy, B, C read; du, ddelta, dz, dB, dC written
        row["bound_fwd_ms"] = row["bytes_fwd"] / bw * 1e3
        row["bound_fwd_bwd_ms"] = (row["bytes_fwd"] + row["bytes_bwd"]) / bw * 1e3
        # our scan in each layout ("triton_*" without a suffix: channel-major, as in earlier results); "mixer_u_tm":
        # the mixer layout with ssm_triton.LAYOUT["u_to_time_major"] on (u copied to time-major first)
        saved_layout = dict(ssm_triton.LAYOUT)
        for layout, u_to_tm in (("channel", False), ("time", False), ("mixer", False), ("mixer", True)):
            key = "" if layout == "channel" else f"_{layout}" + ("_u_tm" if u_to_tm else "")
            ssm_triton.LAYOUT["u_to_time_major"] = u_to_tm
            try:
                t = make(batch, dim, L, N, dtype, layout=layout)
                with torch.no_grad():
                    row[f"triton{key}_fwd_ms"] = bench(lambda: ssm_triton.selective_scan_triton(**t,
                                                                                                delta_softplus=True))
                tg = make(batch, dim, L, N, dtype, grad=True, layout=layout)
                gy = torch.randn_like(tg["u"])
                if layout != "channel":  # the gradient of a time-major y comes time-major (y.transpose -> out_proj)
                    gy = gy.transpose(1, 2).contiguous().transpose(1, 2)
                row[f"triton{key}_fwd_bwd_ms"] = bench(fwd_bwd(ssm_triton.selective_scan_triton, tg, gy))
                grad_to_none(tg)
            finally:
                ssm_triton.LAYOUT.update(saved_layout)
            row[f"triton{key}_fwd_x_bound"] = row[f"triton{key}_fwd_ms"] / row["bound_fwd_ms"]
            row[f"triton{key}_fwd_bwd_x_bound"] = row[f"triton{key}_fwd_bwd_ms"] / row["bound_fwd_bwd_ms"]
            print(f"L={L} {layout}{' (u copied to time-major)' if u_to_tm else ''}: fwd {row[f'triton{key}_fwd_ms']:.3f} ms "
                  f"({row[f'triton{key}_fwd_x_bound']:.1f}x bound), fwd+bwd {row[f'triton{key}_fwd_bwd_ms']:.3f} ms "
                  f"({row[f'triton{key}_fwd_bwd_x_bound']:.1f}x)", flush=True)
            if layout != "channel":
                del t, tg, gy
        t, tg = make(batch, dim, L, N, dtype), make(batch, dim, L, N, dtype, grad=True)
        gy = torch.randn_like(tg["u"])
        # parity at this size against the torch backend (fp32 state) on the same bf16 inputs
        if L <= args.torch_max_len:
            with torch.no_grad():
                y_ref = ssm_ops.selective_scan_torch(**t, delta_softplus=True).float()
                y_tr = ssm_triton.selective_scan_triton(**t, delta_softplus=True).float()
            row["rel_err_vs_torch_backend"] = ((y_tr - y_ref).norm() / y_ref.norm()).item()
            with torch.no_grad():
                row["torch_backend_fwd_ms"] = bench(lambda: ssm_ops.selective_scan_torch(**t, delta_softplus=True),
                                                    rep=50)
            row["torch_backend_fwd_bwd_ms"] = bench(fwd_bwd(ssm_ops.selective_scan_torch, tg, gy), rep=50)
            grad_to_none(tg)
        del t, tg, gy
        # whole mixer: transformers' slow path vs the same math with our scan (d_model 768 -> d_inner 1536)
        mixer, hf_fwd, what = hf_mixer(dim // 2, dtype)
        ours = our_mixer(mixer, ssm_triton.selective_scan_triton)
        res["hf_mixer_timed"] = what
        hidden = torch.randn(batch, L, dim // 2, device="cuda", dtype=dtype)
        hidden_g = hidden.clone().requires_grad_()
        gout = torch.randn_like(hidden)

        def fb(f):
            def run():
                f(hidden_g).backward(gout)
            return run

        with torch.no_grad():
            row["ours_mixer_fwd_ms"] = bench(lambda: ours(hidden))
        row["ours_mixer_fwd_bwd_ms"] = bench(fb(ours))
        if L <= args.torch_max_len:  # the slow path loops over time in python: L=1024 only
            with torch.no_grad():
                a, b = ours(hidden).float(), hf_fwd(hidden).float()
                row["mixer_rel_err_vs_hf"] = ((a - b).norm() / b.norm()).item()
                row["hf_mixer_fwd_ms"] = bench(lambda: hf_fwd(hidden), rep=50)
            row["hf_mixer_fwd_bwd_ms"] = bench(fb(hf_fwd), rep=50)
        del mixer, hidden, hidden_g, gout
        torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
        res["rows"] = rows
        with open(os.path.join(args.out, "scan_gpu.json"), "w") as f:
            json.dump(res, f, indent=1)
    try:
        plot(res, os.path.join(args.out, "scan_gpu.png"))
    except ImportError as err:
        print(f"no plot ({err}); run with --plot-only on a machine with matplotlib")


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = res["rows"]
    for ax, kind, title in ((axes[0], "fwd", "forward"), (axes[1], "fwd_bwd", "forward + backward")):
        series = [
            (f"triton scan, channel-major inputs", f"triton_{kind}_ms", "o-"),
            (f"triton scan, time-major inputs", f"triton_time_{kind}_ms", "o--"),
            (f"triton scan, mixer layout", f"triton_mixer_{kind}_ms", "d:"),
            (f"lower bound (bytes / copy bw)", f"bound_{kind}_ms", "k--"),
            (f"torch backend scan", f"torch_backend_{kind}_ms", "s-"),
            (f"HF mixer (slow path)", f"hf_mixer_{kind}_ms", "^-"),
            (f"our mixer (triton scan)", f"ours_mixer_{kind}_ms", "v-"),
        ]
        for label, key, style in series:
            pts = [(r["L"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), style, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel("ms (median)")
        ax.set_title(f"{title}: B={res['batch']}, D={res['dim']}, N={res['dstate']}, {res['dtype']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Selective scan on {res['device']} ({res['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
