"""VLM generation on GPU: the same vision tower and projector in front of a Mamba decoder and of a transformer decoder
of (nearly) equal size; time to first token, decode tokens/s and peak memory at 256 image tokens + 1k / 8k text
tokens, batch 1 and 16 (the issue's must-show).

    python benchmarks/bench_vlm_gpu.py [--quick] [--out benchmarks/results]

Models (random weights, bf16, eval, torch.inference_mode), both `SsmVlmForConditionalGeneration`:
  vision tower  SigLIP vision (base size: 768 wide, 12 layers, 12 heads, MLP 3072) at 224 px, patch 14 -> 16 x 16 =
                256 patch tokens (SigLIP has no CLS token), features of the second-to-last layer (as Cobra / LLaVA)
  projector     2-layer GELU MLP 768 -> 768 -> 768 (keeps the 256 tokens), fusion "prefix": the 256 image tokens
                replace 256 `<image>` placeholders at the start of the prompt
  decoders      "mamba": ssmvl's Mamba LM at the mamba-130m config (768 wide, 24 layers, d_state 16, expand 2,
                vocab 50280, tied embeddings; Triton scan on CUDA, chunked prefill of 1024 tokens)
                "llama": transformers' LlamaForCausalLM, 768 wide, 12 layers, 12 heads (no GQA), SwiGLU 2240, vocab
                50280, tied embeddings, SDPA, DynamicCache; the MLP width 2240 puts it within 0.2% of the Mamba
                decoder's parameter count (the 2048 of lm.json's Llama would be 4.3% smaller)
Prompt: input_ids = 256 x image_token_id then `text` random text ids (all rows the same length, attention mask of
ones), pixel_values random (batch, 3, 224, 224): one image per sequence.
Measured per decoder x batch (1, 16) x text (1024, 8192):
  ttft_ms       generate(max_new_tokens=1): vision tower + projector + prefill of 256 + text tokens + the first token;
                median of `ttft_repeats` calls after a warm-up generate of 2 tokens at the same shapes (Triton
                compilation / autotuning and cuBLAS heuristics happen there), CUDA-synchronised wall time
  decode_tok_s  batch x (N - 1) / (t(generate N = 128 tokens, forced by min_new_tokens) - ttft): the N - 1 decode steps
                after the first token, counted over the whole batch; t(N) is the median of `decode_repeats` calls
  peak_mib      torch.cuda.max_memory_allocated() during the N-token generate call minus the model's weights
                (parameters + buffers): activations, KV cache / SSM state, logits
Repeats: 5 TTFT calls and 3 N-token calls per configuration; once `budget_s` (390 s) has passed since the start, each
remaining measurement runs once (the JSON keeps every repeat's time: `ttft_ms_all`, `generate_s_all`). Expected
runtime on one H100: about 3-5 minutes (model builds, Triton compilation in the first warm-up, and Llama's
generate() at 50-80 ms per decode step in transformers 5.17, as measured for lm.json, dominate).
A configuration that runs out of GPU memory is recorded as "oom" and the run goes on.
Note: the VLM feeds the merged image + text embeddings at prefill only; decoding steps reach the Mamba decoder as
token ids, so its CUDA-graph step applies as for the Mamba LM alone (lm.json); the Llama decoder decodes eagerly
(transformers' default, no static cache).
-> out/vlm_gpu.json, out/vlm_gpu.png, and a markdown table on stdout.

--quick: a tiny model (SigLIP 32 px / patch 8 -> 16 image tokens, decoders 64 wide), text 32 / 64, batch 1 / 2,
8 new tokens, on CPU (fp32) when there is no GPU; for checking the script end to end, not for numbers.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import statistics
import time
import traceback
from pathlib import Path

import torch

from common import ROOT, ensure_ssmvl

ensure_ssmvl()

VOCAB = 50280
IMAGE_TOKEN_ID = 50277  # free id of the GPT-NeoX vocabulary (padded 50277 -> 50280), as configs/vlm-cobra-style.json

FULL = dict(
    vision=dict(model_type="siglip_vision_model", hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, image_size=224, patch_size=14, vision_use_head=False),
    mamba=dict(model_type="ssmvl_mamba", vocab_size=VOCAB, hidden_size=768, num_hidden_layers=24, state_size=16,
               expand=2, conv_kernel=4, pad_token_id=0, bos_token_id=0, eos_token_id=0),
    llama=dict(model_type="llama", vocab_size=VOCAB, hidden_size=768, intermediate_size=2240, num_hidden_layers=12,
               num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=16384,
               tie_word_embeddings=True, pad_token_id=0, bos_token_id=0, eos_token_id=0),
    batches=(1, 16), texts=(1024, 8192), new_tokens=128, ttft_repeats=5, decode_repeats=3, budget_s=390,
)
QUICK = dict(
    vision=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, image_size=32, patch_size=8, vision_use_head=False),
    mamba=dict(model_type="ssmvl_mamba", vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, state_size=8,
               expand=2, conv_kernel=4, pad_token_id=0, bos_token_id=0, eos_token_id=0, chunked_prefill_size=32),
    llama=dict(model_type="llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True,
               pad_token_id=0, bos_token_id=0, eos_token_id=0),
    batches=(1, 2), texts=(32, 64), new_tokens=8, ttft_repeats=2, decode_repeats=1, budget_s=120,
)
LABELS = {"mamba": "Mamba LM decoder (ssmvl)", "llama": "Llama decoder (SDPA, KV cache)"}


def device_info(device):
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__,
            "date": datetime.date.today().isoformat(), "host": platform.node()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, memory_gib=round(p.total_memory / 2**30, 1))
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            info["triton"] = None
    else:
        info.update(gpu=None, cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_vlm(sizes, decoder, device, dtype):
    """The VLM with the shared tower / projector config and the `decoder` ("mamba" or "llama") text config."""
    from ssmvl.modeling.configuration_ssm_vlm import SsmVlmConfig
    from ssmvl.modeling.modeling_ssm_vlm import SsmVlmForConditionalGeneration

    text = dict(sizes[decoder])
    if decoder == "llama":
        text["attn_implementation"] = "sdpa"
    config = SsmVlmConfig(vision_config=dict(sizes["vision"]), text_config=text, projector_type="mlp",
                          projector_config={"num_layers": 2, "hidden_act": "gelu"}, fusion="prefix",
                          image_token_id=IMAGE_TOKEN_ID, vision_feature_layer=-2,
                          vision_feature_select_strategy="default")
    torch.manual_seed(0)  # the same tower and projector weights for both decoders
    model = SsmVlmForConditionalGeneration(config).to(device, dtype).eval()
    model.generation_config.pad_token_id = 0
    if decoder == "llama" and model.language_model.config._attn_implementation != "sdpa":
        print(f"note: the Llama decoder came up with attention "
              f"{model.language_model.config._attn_implementation!r}; switching it to 'sdpa'", flush=True)
        model.language_model.set_attn_implementation("sdpa")
    return model


def count_params(model):
    def n(module):
        return sum(p.numel() for p in module.parameters())

    return {"total": n(model), "vision_tower": n(model.model.vision_tower), "projector": n(model.model.projector),
            "decoder": n(model.language_model)}


def weight_bytes(model):
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def make_inputs(config, batch, text, device, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    n_img = config.num_image_tokens
    image = torch.full((batch, n_img), IMAGE_TOKEN_ID, dtype=torch.long)
    words = torch.randint(1, IMAGE_TOKEN_ID, (batch, text), generator=gen)
    ids = torch.cat([image, words], dim=1).to(device)
    pixels = torch.randn(batch, config.num_channels, config.image_size, config.image_size, generator=gen)
    return ids, pixels.to(device, dtype)


def generate(model, ids, pixels, new_tokens):
    with torch.inference_mode():
        return model.generate(ids, pixel_values=pixels, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens)


def timed_generate(model, ids, pixels, new_tokens, device):
    sync(device)
    t0 = time.perf_counter()
    out = generate(model, ids, pixels, new_tokens)
    sync(device)
    seconds = time.perf_counter() - t0
    assert out.shape[1] == ids.shape[1] + new_tokens, (out.shape, ids.shape, new_tokens)
    return seconds


def repeat(fn, n, deadline):
    """fn() n times, but only once more after the deadline (time.time()) has passed; the list of results."""
    results = []
    for _ in range(n):
        results.append(fn())
        if time.time() > deadline:
            break
    return results


def measure(model, decoder, batch, text, sizes, device, dtype, weights, deadline):
    """One configuration: ttft, decode tokens/s, peak memory (see the module docstring)."""
    new = sizes["new_tokens"]
    ids, pixels = make_inputs(model.config, batch, text, device, dtype, seed=batch * 100003 + text)
    row = {"decoder": decoder, "batch": batch, "text_tokens": text, "image_tokens": model.config.num_image_tokens,
           "prompt_tokens": ids.shape[1], "new_tokens": new}
    try:
        timed_generate(model, ids, pixels, 2, device)  # warm-up: prefill + one decode step at these shapes
        ttft = repeat(lambda: timed_generate(model, ids, pixels, 1, device), sizes["ttft_repeats"], deadline)
        row["ttft_ms"] = 1e3 * statistics.median(ttft)
        row["ttft_ms_all"] = [1e3 * t for t in ttft]
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        full = repeat(lambda: timed_generate(model, ids, pixels, new, device), sizes["decode_repeats"], deadline)
        if device.type == "cuda":
            row["peak_mib"] = (torch.cuda.max_memory_allocated(device) - weights) / 2**20
        row["generate_s"] = statistics.median(full)
        row["generate_s_all"] = full
        decode_s = row["generate_s"] - row["ttft_ms"] / 1e3
        row["decode_ms_per_step"] = 1e3 * decode_s / (new - 1)
        row["decode_tok_s"] = batch * (new - 1) / decode_s if decode_s > 0 else None
    except torch.cuda.OutOfMemoryError as err:
        row["oom"] = True
        row["error"] = f"OOM: {err}"[:300]
    except Exception as err:  # noqa: BLE001 - one failing configuration must not lose the others
        traceback.print_exc()
        row["error"] = f"{type(err).__name__}: {err}"[:500]
    finally:
        del ids, pixels
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def fmt(value, digits=1):
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def cell(row, key, digits=1):
    if row is None:
        return "-"
    if row.get("oom"):
        return "oom"
    if "error" in row:
        return "error"
    return fmt(row.get(key), digits)


def markdown_table(result):
    rows = {(r["decoder"], r["batch"], r["text_tokens"]): r for r in result["rows"]}
    keys = sorted({(r["batch"], r["text_tokens"]) for r in result["rows"]}, key=lambda k: (k[1], k[0]))
    lines = ["| batch | text | prompt | Mamba TTFT ms | Llama TTFT ms | Mamba decode tok/s | Llama decode tok/s "
             "| Mamba peak MiB | Llama peak MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for batch, text in keys:
        m, l = rows.get(("mamba", batch, text)), rows.get(("llama", batch, text))
        prompt = (m or l)["prompt_tokens"]
        lines.append(f"| {batch} | {text} | {prompt} | {cell(m, 'ttft_ms')} | {cell(l, 'ttft_ms')} | "
                     f"{cell(m, 'decode_tok_s')} | {cell(l, 'decode_tok_s')} | {cell(m, 'peak_mib', 0)} | "
                     f"{cell(l, 'peak_mib', 0)} |")
    return "\n".join(lines)


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {(r["decoder"], r["batch"], r["text_tokens"]): r for r in result["rows"]}
    keys = sorted({(r["batch"], r["text_tokens"]) for r in result["rows"]}, key=lambda k: (k[1], k[0]))
    decoders = [d for d in ("mamba", "llama") if any(r["decoder"] == d for r in result["rows"])]
    panels = [("ttft_ms", "time to first token (ms)"), ("decode_tok_s", "decode tokens/s (whole batch)")]
    if any("peak_mib" in r for r in result["rows"]):
        panels.append(("peak_mib", "peak memory above weights (MiB)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
    width = 0.8 / len(decoders)
    for ax, (key, label) in zip(axes, panels):
        for i, dec in enumerate(decoders):
            xs, ys = [], []
            for j, k in enumerate(keys):
                r = rows.get((dec,) + k)
                x = j + (i - (len(decoders) - 1) / 2) * width
                if r is None or "error" in r or r.get(key) is None:
                    ax.text(x, 0.02, "oom" if r and r.get("oom") else "n/a", ha="center", va="bottom",
                            fontsize=7, rotation=90, transform=ax.get_xaxis_transform())
                    continue
                xs.append(x)
                ys.append(r[key])
            bars = ax.bar(xs, ys, width, label=LABELS[dec])
            ax.bar_label(bars, labels=[fmt(y, 0 if key == "peak_mib" else 1) for y in ys], fontsize=6, rotation=90,
                         padding=2)
        ax.set_xticks(range(len(keys)), [f"B={b}\n{result['image_tokens']}+{t}" for b, t in keys], fontsize=8)
        ax.set(yscale="log", ylabel=label, title=label)
        ax.margins(y=0.25)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    dev = result["device"]
    sizes = " vs ".join(f"{result['params'][d]['decoder'] / 1e6:.1f}M ({d})" for d in decoders)
    fig.suptitle(f"VLM generate, {dev.get('gpu') or 'CPU'}, {result['dtype']}, {result['image_tokens']} image tokens, "
                 f"{result['new_tokens']} new tokens; decoders {sizes}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes (CPU ok), to test the script")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--decoders", default="mamba,llama", help="comma-separated subset of mamba,llama")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                        help="auto: bfloat16 on CUDA, float32 on CPU")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = QUICK if args.quick else FULL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.quick:
        print("warning: no GPU; the full sizes on CPU take very long (use --quick to test the script)", flush=True)
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    decoders = [d.strip() for d in args.decoders.split(",") if d.strip()]
    t_start = time.time()
    deadline = t_start + sizes["budget_s"]  # past it, each measurement repeats no more (at least one of each)
    result = {"device": device_info(device), "dtype": str(dtype).replace("torch.", ""), "quick": args.quick,
              "vision_config": sizes["vision"], "projector": "mlp, 2 layers, GELU, width = text hidden; fusion prefix",
              "vision_feature_layer": -2, "decoder_configs": {d: sizes[d] for d in decoders},
              "batches": list(sizes["batches"]), "text_tokens": list(sizes["texts"]),
              "new_tokens": sizes["new_tokens"], "ttft_repeats": sizes["ttft_repeats"],
              "decode_repeats": sizes["decode_repeats"],
              "method": "ttft = median wall time of generate(max_new_tokens=1) after a 2-token warm-up generate; "
                        "decode tok/s = batch * (N-1) / (median t(generate N forced tokens) - ttft); peak = "
                        "max_memory_allocated during the N-token generate minus parameter + buffer bytes",
              "budget_s": sizes["budget_s"],
              "notes": "decoding steps reach the Mamba decoder as ids (its CUDA-graph step applies); the Llama "
                       "decoder decodes eagerly (transformers' default dynamic cache)",
              "params": {}, "rows": []}
    for decoder in decoders:
        model = build_vlm(sizes, decoder, device, dtype)
        result["params"][decoder] = count_params(model)
        result["image_tokens"] = model.config.num_image_tokens
        weights = weight_bytes(model)
        if decoder == "llama":
            result["llama_attn_implementation"] = model.language_model.config._attn_implementation
        p = result["params"][decoder]
        print(f"[{time.time() - t_start:6.1f}s] {decoder}: total {p['total'] / 1e6:.2f}M = tower "
              f"{p['vision_tower'] / 1e6:.2f}M + projector {p['projector'] / 1e6:.2f}M + decoder "
              f"{p['decoder'] / 1e6:.2f}M; {model.config.num_image_tokens} image tokens; weights "
              f"{weights / 2**20:.0f} MiB", flush=True)
        for text in sizes["texts"]:
            for batch in sizes["batches"]:
                row = measure(model, decoder, batch, text, sizes, device, dtype, weights, deadline)
                result["rows"].append(row)
                if "error" in row:
                    print(f"[{time.time() - t_start:6.1f}s] {decoder:5s} B={batch:3d} text={text:5d}: "
                          f"{'oom' if row.get('oom') else row['error']}", flush=True)
                else:
                    print(f"[{time.time() - t_start:6.1f}s] {decoder:5s} B={batch:3d} text={text:5d} "
                          f"prompt={row['prompt_tokens']:5d}: ttft {row['ttft_ms']:9.1f} ms | decode "
                          f"{fmt(row['decode_tok_s'])} tok/s ({row['decode_ms_per_step']:.2f} ms/step"
                          f"{'; negative: timing noise' if row['decode_tok_s'] is None else ''}) | peak "
                          f"{fmt(row.get('peak_mib'), 0)} MiB", flush=True)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if len(decoders) == 2:
        a, b = result["params"]["mamba"]["decoder"], result["params"]["llama"]["decoder"]
        result["decoder_param_ratio_llama_over_mamba"] = b / a
        print(f"decoder parameters: mamba {a:,} vs llama {b:,} ({100 * (b / a - 1):+.2f}%)", flush=True)
    result["seconds"] = time.time() - t_start
    result["markdown"] = markdown_table(result)
    (out / "vlm_gpu.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "vlm_gpu.png")
    print()
    print(result["markdown"])
    print(f"\ndone in {result['seconds']:.0f} s; wrote {out / 'vlm_gpu.json'} and {out / 'vlm_gpu.png'}", flush=True)


if __name__ == "__main__":
    main()
