"""GPU benchmarks of whole models, one process per section (run on the device machine).

--section lm      Mamba LM at the mamba-130m config, bf16: prefill time of 1024 tokens; generate() tokens/s and peak
                  memory at prompt 128 / 4096, +256 new tokens, batch 1 / 16; against transformers' MambaForCausalLM
                  (no mamba_ssm: its torch path) and a Llama of about the same size (SDPA, KV cache); and a sweep of
                  per-token decode time and peak memory against context length (ours vs Llama) -> lm.json, lm.png.
--section vision  Vim-S and VMamba-T against DeiT-S (transformers ViT, SDPA and eager attention), bf16 autocast:
                  inference and training-step images/s and peak memory at 224 / 512 / 1024 / 1248 px
                  -> vision.json, vision.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import time
from pathlib import Path

import torch

from common import ROOT, ensure_ssmvl, peak_memory_mib, plot_panels, wall_time_s

ensure_ssmvl()

MAMBA_130M = dict(vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=16, expand=2, conv_kernel=4,
                  pad_token_id=0, bos_token_id=0, eos_token_id=0)


def device_info():
    p = torch.cuda.get_device_properties(0)
    import transformers

    return {"gpu": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "torch": torch.__version__,
            "transformers": transformers.__version__, "date": datetime.date.today().isoformat()}


# ---------------------------------------------------------------------------------------------------------------------
def lm_models(names):
    from transformers import LlamaConfig, LlamaForCausalLM, MambaConfig, MambaForCausalLM

    from ssmvl.modeling import MambaLMConfig, MambaLMForCausalLM

    torch.manual_seed(0)
    models = {}
    if "ssmvl" in names:
        models["ssmvl"] = MambaLMForCausalLM(MambaLMConfig(**MAMBA_130M))
    if "transformers_mamba" in names:
        models["transformers_mamba"] = MambaForCausalLM(MambaConfig(**MAMBA_130M))
    if "llama" in names:
        # about the size of mamba-130m: 768 wide, 12 layers, 12 heads, SwiGLU 2048, tied embeddings
        models["llama"] = LlamaForCausalLM(LlamaConfig(
            vocab_size=50280, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
            num_key_value_heads=12, max_position_embeddings=32768, tie_word_embeddings=True, pad_token_id=0,
            bos_token_id=0, eos_token_id=0, attn_implementation="sdpa"))
    for name, m in models.items():
        models[name] = m.to("cuda", torch.bfloat16).eval()
        models[name].generation_config.pad_token_id = 0
    return models


def generate_fn(model, ids, new_tokens):
    def run():
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False)
    return run


def measure_generate(model, ids, new_tokens):
    """(seconds, peak MiB) of one generate() call, after a short warm-up generate at the same batch size."""
    generate_fn(model, ids[:, :16], 4)()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    generate_fn(model, ids, new_tokens)()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return seconds, (torch.cuda.max_memory_allocated() - base) / 2**20


def section_lm(out: Path, quick: bool):
    models = lm_models(["ssmvl", "transformers_mamba", "llama"])
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    result = {"device": device_info(), "dtype": "bfloat16", "config": "mamba-130m (d_model 768, 24 layers)",
              "llama_config": "768 wide, 12 layers, 12 heads, intermediate 2048, SDPA", "params": params}
    gen = torch.Generator().manual_seed(0)

    # prefill: one forward over 1024 tokens, batch 1
    ids = torch.randint(1, 50000, (1, 1024), generator=gen).cuda()
    result["prefill_1024_ms"] = {}
    for name, m in models.items():
        with torch.no_grad():
            result["prefill_1024_ms"][name] = 1e3 * wall_time_s(lambda: m(ids, use_cache=True), warmup=1, repeats=3)
        print(f"prefill 1024  {name:20s} {result['prefill_1024_ms'][name]:9.2f} ms", flush=True)

    # where the prefill time of ours goes (top CUDA kernels)
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        models["ssmvl"](ids, use_cache=True)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15)
    print(table, flush=True)
    result["prefill_profile_ssmvl"] = table

    # generation: tokens/s counted as batch * new tokens / wall time of generate()
    new = 32 if quick else 256
    cells = [(128, 1), (128, 16)] if quick else [(128, 1), (128, 16), (4096, 1), (4096, 16)]
    result["generate"] = []
    for prompt, batch in cells:
        ids = torch.randint(1, 50000, (batch, prompt), generator=gen).cuda()
        row = {"prompt": prompt, "batch": batch, "new_tokens": new}
        for name, m in models.items():
            seconds, row[f"{name}_peak_mib"] = measure_generate(m, ids, new)
            row[f"{name}_tok_s"] = batch * new / seconds
            print(f"generate P={prompt:5d} B={batch:3d} {name:20s} {row[f'{name}_tok_s']:9.1f} tok/s "
                  f"{row[f'{name}_peak_mib']:9.1f} MiB", flush=True)
        result["generate"].append(row)

    # flat time and memory: per-token decode time and peak memory against context length, batch 16
    del models["transformers_mamba"]
    torch.cuda.empty_cache()
    result["context_sweep"] = []
    contexts = [512, 2048] if quick else [512, 1024, 2048, 4096, 8192, 16384]
    steps = 64
    for ctx in contexts:
        ids = torch.randint(1, 50000, (16, ctx), generator=gen).cuda()
        row = {"context": ctx, "batch": 16, "decode_steps": steps}
        for name, m in models.items():
            # the difference of two generate() calls cancels the prefill and the one-off graph capture
            short, _ = measure_generate(m, ids, 2)
            long, row[f"{name}_peak_mib"] = measure_generate(m, ids, 2 + steps)
            row[f"{name}_ms_per_token"] = 1e3 * max(long - short, 0.0) / steps
            print(f"context {ctx:6d} {name:8s} {row[f'{name}_ms_per_token']:8.2f} ms/token "
                  f"{row[f'{name}_peak_mib']:9.1f} MiB", flush=True)
        result["context_sweep"].append(row)
    (out / "lm.json").write_text(json.dumps(result, indent=2))
    plot_lm(result, out / "lm.png")


def section_lm_batch64(out: Path, quick: bool):
    """generate() at batch 64 (prompt 128, +256 new tokens): tokens/s and peak memory, the three models."""
    models = lm_models(["ssmvl", "transformers_mamba", "llama"])
    ids = torch.randint(1, 50000, (64, 128), generator=torch.Generator().manual_seed(64)).cuda()
    new = 32 if quick else 256
    row = {"prompt": 128, "batch": 64, "new_tokens": new}
    for name, m in models.items():
        seconds, row[f"{name}_peak_mib"] = measure_generate(m, ids, new)
        row[f"{name}_tok_s"] = 64 * new / seconds
        print(f"generate P=  128 B= 64 {name:20s} {row[f'{name}_tok_s']:9.1f} tok/s {row[f'{name}_peak_mib']:9.1f} MiB",
              flush=True)
    (out / "lm_batch64.json").write_text(json.dumps({"device": device_info(), "dtype": "bfloat16", "row": row},
                                                    indent=2))


def plot_lm(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["context_sweep"]
    ctx = [r["context"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, label in (("ssmvl", "ssmvl Mamba (130m)"), ("llama", "Llama ~130m, SDPA + KV cache")):
        axes[0].plot(ctx, [r[f"{name}_ms_per_token"] for r in rows], "o-", label=label)
        axes[1].plot(ctx, [r[f"{name}_peak_mib"] / 1024 for r in rows], "o-", label=label)
    axes[0].set(xscale="log", xlabel="context length (tokens)", ylabel="ms per decode step (batch 16)",
                title="decode time vs context")
    axes[1].set(xscale="log", xlabel="context length (tokens)", ylabel="peak GPU memory (GiB)",
                title="memory vs context (batch 16)")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{result['device']['gpu']}, bf16", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------------------------------
VISION_BATCH = {224: 128, 512: 32, 1024: 8, 1248: 4}


def vision_models():
    from transformers import ViTConfig, ViTForImageClassification

    from ssmvl.modeling.configuration_vim import VimConfig
    from ssmvl.modeling.configuration_vmamba import VMambaConfig
    from ssmvl.modeling.modeling_vim import VimForImageClassification
    from ssmvl.modeling.modeling_vmamba import VMambaForImageClassification

    deit_s = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                  image_size=224, patch_size=16, num_labels=1000)
    return {
        "vim_s": lambda: VimForImageClassification(VimConfig.from_json_file(str(ROOT / "configs/vim-small.json"))),
        "vmamba_t": lambda: VMambaForImageClassification(
            VMambaConfig.from_json_file(str(ROOT / "configs/vmamba-tiny.json"))),
        "deit_s_sdpa": lambda: ViTForImageClassification(ViTConfig(**deit_s, attn_implementation="sdpa")),
        "deit_s_eager": lambda: ViTForImageClassification(ViTConfig(**deit_s, attn_implementation="eager")),
    }


def section_vision(out: Path, quick: bool):
    result = {"device": device_info(), "dtype": "bfloat16 autocast (fp32 weights)", "batch": VISION_BATCH, "rows": []}
    sizes = [224, 1248] if quick else [224, 512, 1024, 1248]
    for name, build in vision_models().items():
        torch.manual_seed(0)
        model = build().cuda()
        result.setdefault("params", {})[name] = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for size in sizes:
            batch = VISION_BATCH[size]
            x = torch.randn(batch, 3, size, size, device="cuda")
            labels = torch.randint(0, 1000, (batch,), device="cuda")
            kwargs = {} if name.startswith("vmamba") else {"interpolate_pos_encoding": size != 224}
            row = {"model": name, "size": size, "batch": batch}

            def infer():
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    model(pixel_values=x, **kwargs)

            def train_step():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = model(pixel_values=x, labels=labels, **kwargs).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            try:
                model.eval()
                row["infer_img_s"] = batch / wall_time_s(infer, warmup=2, repeats=5)
                row["infer_peak_mib"] = peak_memory_mib(infer)
                model.train()
                row["train_img_s"] = batch / wall_time_s(train_step, warmup=2, repeats=3)
                row["train_peak_mib"] = peak_memory_mib(train_step)
            except torch.cuda.OutOfMemoryError as err:
                row["error"] = f"OOM: {err}"[:200]
            opt.zero_grad(set_to_none=True)
            print(f"{name:14s} {size:5d}px b={batch:3d} infer {row.get('infer_img_s', math.nan):9.1f} img/s "
                  f"{row.get('infer_peak_mib', math.nan):8.1f} MiB | train {row.get('train_img_s', math.nan):8.1f} "
                  f"img/s {row.get('train_peak_mib', math.nan):8.1f} MiB", flush=True)
            result["rows"].append(row)
        del model, opt
        torch.cuda.empty_cache()
    (out / "vision.json").write_text(json.dumps(result, indent=2))
    plot_vision(result, out / "vision.png")


def section_vim_backends(out: Path, quick: bool):
    """Vim-S training step at 224 px, batch 64, bf16 autocast: the Triton scan backend vs the torch backend."""
    from ssmvl.modeling.configuration_vim import VimConfig
    from ssmvl.modeling.modeling_vim import VimForImageClassification

    result = {"device": device_info(), "dtype": "bfloat16 autocast", "size": 224, "batch": 64, "rows": []}
    for backend in ("triton", "torch"):
        torch.manual_seed(0)
        cfg = VimConfig.from_json_file(str(ROOT / "configs/vim-small.json"))
        cfg.ssm_backend = backend
        model = VimForImageClassification(cfg).cuda().train()
        for m in model.modules():  # the mixers read the backend they were built with
            if hasattr(m, "ssm_backend"):
                m.ssm_backend = backend
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(64, 3, 224, 224, device="cuda")
        labels = torch.randint(0, 1000, (64,), device="cuda")

        def train_step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(pixel_values=x, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        seconds = wall_time_s(train_step, warmup=1, repeats=2 if quick else 3)
        row = {"backend": backend, "train_img_s": 64 / seconds, "train_peak_mib": peak_memory_mib(train_step)}
        print(f"vim_s 224px b=64 train, backend {backend:7s}: {row['train_img_s']:8.1f} img/s "
              f"{row['train_peak_mib']:9.1f} MiB", flush=True)
        result["rows"].append(row)
        del model, opt
        torch.cuda.empty_cache()
    (out / "vim_backends.json").write_text(json.dumps(result, indent=2))


def plot_vision(result, path):
    panels = [("infer_img_s", "inference images/s"), ("infer_peak_mib", "inference peak MiB"),
              ("train_img_s", "training images/s"), ("train_peak_mib", "training peak MiB")]
    plot_panels(result, path, "size", panels, f"{result['device']['gpu']}, bf16 autocast, batch {result['batch']}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--section", choices=["lm", "lm_batch64", "vision", "vim_backends", "all"], default="all")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.section in ("vision", "all"):
        section_vision(out, args.quick)
    if args.section in ("vim_backends", "all"):
        section_vim_backends(out, args.quick)
    if args.section in ("lm", "all"):
        section_lm(out, args.quick)
    if args.section in ("lm_batch64", "all"):
        section_lm_batch64(out, args.quick)
    print(f"done in {time.time() - t0:.0f} s; results in {out}")


if __name__ == "__main__":
    main()
