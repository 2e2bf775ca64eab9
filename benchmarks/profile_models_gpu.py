"""Where a whole model's GPU time goes: images/s (or prefill ms) and the top CUDA kernels of one call, for the issue 10
shapes (run on the device machine):

    python benchmarks/profile_models_gpu.py OUT.json [CASE ...]

CASE: vim_s_1248 (Vim-S, 1248 px, batch 4), vim_s_224 (224 px, batch 128), vmamba_t_1248, deit_s_1248, deit_s_224
(transformers ViT with the DeiT-S config, SDPA), vim_s_1248_train / vim_s_224_train / vmamba_t_1248_train /
deit_s_1248_train (a training step's forward + backward, no optimizer step), each inference case also as CASE_graph (the forward replayed as a CUDA graph: ours
with config.use_cuda_graph, DeiT-S captured by cuda_graphs.capture), lm_prefill (mamba-130m shape, 16 x 4096 tokens, no cache), all by
default; lm_prefill_1x1024 (1 x 1024 tokens, median of 51 calls: host-bound); mamba_ssm_prefill and
mamba_ssm_prefill_1x1024 (the same forwards by mamba_ssm's MambaLMHeadModel, its CUDA kernels, with
MAMBA_SSM_PATHS=colon-separated import paths of a build, as ../shared/anchors/gen_vs_mamba_ssm.py takes them). bf16 autocast over fp32 weights (vision; as bench_gpu_models.py), bf16 weights (LM); random weights.
Kernels are grouped by name; the JSON keeps the top 25 of each case with their share of the CUDA time, and host_ms,
the median time until a call returns (its host work). --host-ops adds each case's top host ops by own CPU time;
--ops the torch ops (with input shapes) by the GPU time of the kernels each launched;
--lane=KEY=INT sets ssm_triton.LANE_CONFIG[KEY] first (e.g. --lane=bf16_words=1).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from common import ROOT, cuda_time_ms, ensure_ssmvl

ensure_ssmvl()

VISION = {"vim_s_1248": ("vim_s", 1248, 4), "vim_s_224": ("vim_s", 224, 128), "vmamba_t_1248": ("vmamba_t", 1248, 4),
          "deit_s_1248": ("deit_s_sdpa", 1248, 4), "deit_s_224": ("deit_s_sdpa", 224, 128)}
# the same with the forward replayed as a CUDA graph: ours through config.use_cuda_graph, DeiT-S (transformers) by
# capturing its forward with ssmvl.modeling.cuda_graphs.capture, so both sides lose their host time alike
VISION.update({f"{case}_graph": spec for case, spec in VISION.items()})
# a training step's forward + backward (bf16 autocast, train mode, labels; no optimizer step)
VISION.update({f"{case}_train": VISION[case] for case in ("vim_s_1248", "vim_s_224", "vmamba_t_1248", "deit_s_1248")})


# the LM prefill cases: (batch, tokens); 1 x 1024 is bound by the host (Python and launches a layer), so its median
# is taken over more calls (REPEATS)
LM = {"lm_prefill": (16, 4096), "lm_prefill_1x1024": (1, 1024),
      "mamba_ssm_prefill": (16, 4096), "mamba_ssm_prefill_1x1024": (1, 1024)}
REPEATS = {"lm_prefill_1x1024": 51, "mamba_ssm_prefill_1x1024": 51}


def build(case):
    batch, tokens = LM.get(case, (16, 4096))
    ids = torch.randint(1, 50000, (batch, tokens), device="cuda")
    if case.startswith("mamba_ssm_prefill"):
        import os

        sys.path[:0] = os.environ["MAMBA_SSM_PATHS"].split(":")
        from mamba_ssm.models.config_mamba import MambaConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

        cfg = MambaConfig(d_model=768, n_layer=24, vocab_size=50280, ssm_cfg={"layer": "Mamba1"}, rms_norm=True,
                          residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=8)
        ref = MambaLMHeadModel(cfg, device="cuda", dtype=torch.bfloat16).eval()

        def run():
            with torch.no_grad():
                ref(ids, num_last_tokens=1)

        return run, batch * tokens, "tokens"
    if case.startswith("lm_prefill"):
        from bench_gpu_models import MAMBA_130M

        from ssmvl.modeling import MambaLMConfig, MambaLMForCausalLM

        model = MambaLMForCausalLM(MambaLMConfig(**MAMBA_130M)).to("cuda", torch.bfloat16).eval()

        def run():
            with torch.no_grad():
                model(input_ids=ids, use_cache=False, logits_to_keep=1)

        return run, batch * tokens, "tokens"
    from bench_gpu_models import vision_models

    name, size, batch = VISION[case]
    model = vision_models()[name]().cuda().eval()
    x = torch.randn(batch, 3, size, size, device="cuda")
    kwargs = {} if name.startswith("vmamba") else {"interpolate_pos_encoding": size != 224}

    def run():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            model(pixel_values=x, **kwargs)

    if case.endswith("_train"):
        model.train()
        labels = torch.randint(0, 1000, (batch,), device="cuda")

        def run():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(pixel_values=x, labels=labels, **kwargs).loss
            loss.backward()
            model.zero_grad(set_to_none=True)

    if case.endswith("_graph"):
        if hasattr(model.config, "use_cuda_graph"):
            model.config.use_cuda_graph = True  # captured at the second call (the warm-up's)
        else:
            from ssmvl.modeling.cuda_graphs import capture

            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                graph, _ = capture(lambda t: model(pixel_values=t, **kwargs).logits, (x,))
            run = graph.replay
    return run, batch, "images"


def profile(run, top=25):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof_ctx

    with prof_ctx(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None)
        t = e.cuda_time_total if t is None else t
        if t > 0 and e.key and not e.key.startswith("cuda"):
            rows.append((e.key[:90], t / 1000.0, e.count))
    rows.sort(key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    return total, [{"kernel": k, "ms": round(ms, 3), "share": round(ms / total, 3), "calls": n} for k, ms, n in rows[:top]]


def host_ms(run, repeats=7):
    """Median milliseconds until run() returns, the GPU idle at each start: the host's share of a call (Python,
    dispatch and launches), to set beside the CUDA-event time."""
    import time

    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    return sorted(times)[len(times) // 2]


def host_ops(run, top=25):
    """The host ops of one call by their own CPU time (torch.profiler, CPU activity): where a host-bound call goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof_ctx

    with prof_ctx(activities=[ProfilerActivity.CPU]) as prof:
        run()
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return [{"op": e.key[:90], "self_ms": round(e.self_cpu_time_total / 1000.0, 3), "calls": e.count} for e in rows]


def device_ops(run, top=25):
    """The torch ops of one call by the GPU time of the kernels they launched themselves (torch.profiler, CPU and CUDA
    activities, grouped by input shapes): which op a generic kernel name (an element-wise copy, a cat) belongs to."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof_ctx

    with prof_ctx(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        run()
        torch.cuda.synchronize()

    def own(e):
        t = getattr(e, "self_device_time_total", None)
        return e.self_cuda_time_total if t is None else t

    rows = [e for e in prof.key_averages(group_by_input_shape=True) if own(e) > 0 and e.key.startswith("aten::")]
    rows.sort(key=lambda e: -own(e))
    return [{"op": e.key, "shapes": str(e.input_shapes)[:160], "ms": round(own(e) / 1000.0, 3), "calls": e.count}
            for e in rows[:top]]


def main():
    out = Path(sys.argv[1])
    args = sys.argv[2:]
    with_host_ops = "--host-ops" in args  # also the host ops of each case (see host_ops)
    with_ops = "--ops" in args  # also the torch ops that launched the kernels (see device_ops)
    args = [a for a in args if a not in ("--host-ops", "--ops")]
    lane = [a for a in args if a.startswith("--lane=")]  # --lane=KEY=INT: a ssm_triton.LANE_CONFIG setting
    args = [a for a in args if a not in lane]
    if lane:
        from ssmvl.modeling import ssm_triton

        for a in lane:
            key, value = a[len("--lane="):].split("=")
            ssm_triton.LANE_CONFIG[key] = int(value)
    cases = args or [*VISION, "lm_prefill", "lm_prefill_1x1024"]
    p = torch.cuda.get_device_properties(0)
    result = {"gpu": p.name, "torch": torch.__version__, "cases": {}}
    for case in cases:
        torch.manual_seed(0)
        run, items, unit = build(case)
        ms = cuda_time_ms(run, warmup=3, repeats=REPEATS.get(case, 7))
        host = host_ms(run)
        total, kernels = profile(run)
        result["cases"][case] = {"ms": round(ms, 3), f"{unit}_per_s": round(items / ms * 1000, 1),
                                 "kernel_ms": round(total, 3), "host_ms": round(host, 3), "top": kernels}
        print(f"== {case}: {ms:.2f} ms a call, {items / ms * 1000:.1f} {unit}/s; kernels {total:.2f} ms; host "
              f"{host:.2f} ms", flush=True)
        if with_host_ops:
            result["cases"][case]["host_ops"] = ops = host_ops(run)
            for o in ops[:12]:
                print(f"   host {o['self_ms']:8.3f} ms x{o['calls']:<5d} {o['op']}", flush=True)
        if with_ops:
            result["cases"][case]["device_ops"] = ops = device_ops(run)
            for o in ops:
                print(f"   op {o['ms']:8.3f} ms x{o['calls']:<5d} {o['op']} {o['shapes']}", flush=True)
        for k in kernels[:14]:
            print(f"   {k['ms']:8.3f} ms {100 * k['share']:5.1f}% x{k['calls']:<5d} {k['kernel']}", flush=True)
        del run
        torch.cuda.empty_cache()
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "benchmarks"))
    main()
