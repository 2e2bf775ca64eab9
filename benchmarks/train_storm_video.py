"""A small STORM video classifier trained on the CPU to tell the motion direction (left / right / up / down) of the
generated moving shapes clips, evaluated on held-out clips (combinations of shape, colour, direction, speed and start
cell never seen in training).

    python benchmarks/train_storm_video.py                      # one model (keep ratio --keep-ratio, default 0.125)
    python benchmarks/train_storm_video.py --keep-ratios-table  # the same model at keep ratios 1, 0.5, 0.25, 0.125
    python benchmarks/train_storm_video.py --keep-ratios-table --from-full --steps 300  # ratios < 1 fine-tuned from it
    # the table in two processes (one core each), then merged:
    python benchmarks/train_storm_video.py --keep-ratios-table --ratios 1 0.5 --name part1.json
    python benchmarks/train_storm_video.py --keep-ratios-table --ratios 0.25 0.125 --name part2.json
    python benchmarks/train_storm_video.py --merge benchmarks/results/part1.json benchmarks/results/part2.json

Clips have 16 frames of 32 px; the processor samples ``--frames`` of them uniformly (8: a moving object shifts 1 or 2 px
between sampled frames) and the model cuts each into 8 px patches (16 tokens a frame, ``frames x 16`` tokens a clip).
One frame Mamba layer, ``--temporal-layers`` Mamba layers over all frames (where the motion becomes visible), then
``--layers`` STORM block(s) whose retention keeps ``--keep-ratio`` of the tokens (top-k of a learned score; the memory
tokens read all tokens first). Trained with ``ssmvl.training.video.train_video_classifier`` (Trainer).

Writes ``benchmarks/results/storm_video_shapes.json`` (one model) or ``storm_video_keep_ratios.json`` (the table):
held-out accuracy, tokens handed to the head per clip vs frames x patches, train / wall seconds, CPU threads, sizes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_ssmvl  # noqa: E402

ensure_ssmvl()

from ssmvl.training.moving_shapes import make_moving_shapes_dataset  # noqa: E402
from ssmvl.training.video import (  # noqa: E402
    evaluate_video_classifier, storm_video_classifier, train_video_classifier, video_processor_for)

TABLE_RATIOS = (1.0, 0.5, 0.25, 0.125)


def run_one(args, keep_ratio: float, train, test, init=None) -> dict:
    """Trains (``init``: a trained model to start from, else fresh weights) and evaluates one model."""
    torch.manual_seed(args.seed)
    model = storm_video_classifier(
        num_frames=args.frames, image_size=args.image_size, hidden=args.hidden, layers=args.layers,
        keep_ratios=[keep_ratio] + [1.0] * (args.layers - 1), labels=train, frame_layers=args.frame_layers,
        temporal_layers=args.temporal_layers, temporal_pool=args.temporal_pool, num_memory_tokens=args.memory,
        state_size=args.state_size, patch_size=args.patch_size, conv_kernel=args.conv_kernel)
    steps, lr = args.steps, args.lr
    if init is not None:  # same weights; only the new retention scorer starts fresh
        missing, unexpected = model.load_state_dict(init.state_dict(), strict=False)
        assert not unexpected and all(".retention." in k for k in missing), (missing, unexpected)
        steps, lr = args.finetune_steps, args.finetune_lr
    processor = video_processor_for(model.config)
    work = Path(args.work) / f"keep{keep_ratio:g}"
    start = time.perf_counter()
    result = train_video_classifier(model, processor, train, work, max_steps=steps, lr=lr,
                                    batch_size=args.batch_size, seed=args.seed, disable_tqdm=True,
                                    logging_steps=50, save_strategy="no")
    train_eval = evaluate_video_classifier(result.model, processor, train.select(range(min(len(train), 512))))
    scores = evaluate_video_classifier(result.model, processor, test)
    cfg = model.config
    row = dict(keep_ratio=keep_ratio, start="keep-1.0 model" if init is not None else "fresh", lr=lr,
               accuracy=scores["accuracy"], train_accuracy_512=train_eval["accuracy"],
               tokens_to_head=scores["tokens_to_head"], memory_tokens=scores["memory_tokens"],
               frames_x_patches=scores["frames_x_patches"], token_reduction=round(scores["token_reduction"], 2),
               token_counts=cfg.token_counts(args.frames), parameters=result["total_params"],
               steps=result["global_step"], train_loss=round(result["train_loss"], 4),
               loss_every_50=[round(x, 3) for x in result["loss_history"]],
               train_seconds=round(result["train_seconds"], 1), seconds=round(time.perf_counter() - start, 1))
    print(json.dumps({k: v for k, v in row.items() if k != "loss_every_50"}), flush=True)
    return row, result.model


def table(rows) -> list:
    """Accuracy vs tokens handed to the head, with the drop (points) from the keep-ratio-1.0 row when there is one."""
    full = next((r["accuracy"] for r in rows if r["keep_ratio"] == 1.0), None)
    return [dict(keep_ratio=r["keep_ratio"], accuracy=r["accuracy"], accuracy_drop_points=None if full is None else
                 round(100 * (full - r["accuracy"]), 2), tokens_to_head=r["tokens_to_head"],
                 memory_tokens=r["memory_tokens"], frames_x_patches=r["frames_x_patches"],
                 token_reduction=r["token_reduction"], train_seconds=r["train_seconds"]) for r in rows]


def merge(args):
    """One report from table runs made in separate processes (same settings but the ratios)."""
    parts = [json.loads(Path(p).read_text()) for p in args.merge]
    report = dict(parts[0])
    report["results"] = sorted((r for p in parts for r in p["results"]), key=lambda r: -r["keep_ratio"])
    report["settings"] = {k: v for k, v in report["settings"].items() if k != "ratios"}
    report["wall_seconds"] = [p["wall_seconds"] for p in parts]
    report["note"] = f"{len(parts)} processes side by side, one per part ({', '.join(args.merge)})"
    report["table"] = table(report["results"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / (args.name or "storm_video_keep_ratios.json")).write_text(json.dumps(report, indent=2))
    print(json.dumps(report["table"], indent=2))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-ratios-table", action="store_true",
                        help=f"train at keep ratios {TABLE_RATIOS} (first STORM block) and report the table")
    parser.add_argument("--ratios", type=float, nargs="+", default=None, help="the table's keep ratios")
    parser.add_argument("--from-full", action="store_true",
                        help="table: ratios < 1 start from the trained keep-1.0 model (new scorer) and train "
                             "--finetune-steps more steps at --finetune-lr, as DynamicViT prunes a trained model")
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--merge", nargs="+", default=None, help="merge the results of table runs into the table")
    parser.add_argument("--keep-ratio", type=float, default=0.125, help="keep ratio of the first STORM block")
    parser.add_argument("--clips", type=int, default=4000, help="training clips")
    parser.add_argument("--test-clips", type=int, default=400, help="held-out clips")
    parser.add_argument("--frames", type=int, default=8, help="frames sampled per clip (clips have 16)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--conv-kernel", type=int, default=None,
                        help="width of the Mamba mixers' causal conv (default: patches per frame + 1)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=1, help="STORM blocks")
    parser.add_argument("--frame-layers", type=int, default=1)
    parser.add_argument("--temporal-layers", type=int, default=1)
    parser.add_argument("--temporal-pool", type=int, default=1)
    parser.add_argument("--memory", type=int, default=4, help="memory tokens")
    parser.add_argument("--state-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=600, help="training steps (with --from-full: of the 1.0 model)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="model init and training order")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--name", default=None, help="result file name (default by mode)")
    parser.add_argument("--work", default="outputs/storm-video")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train = make_moving_shapes_dataset(args.clips, seed=0, split="train", num_frames=16, image_size=args.image_size)
    test = make_moving_shapes_dataset(args.test_clips, seed=1, split="test", num_frames=16, image_size=args.image_size)
    ratios = (tuple(args.ratios or TABLE_RATIOS)) if args.keep_ratios_table else (args.keep_ratio,)
    rows, full = [], None
    for r in ratios:
        init = full if args.from_full and r < 1.0 else None
        if args.from_full and r < 1.0 and full is None:
            raise SystemExit("--from-full needs keep ratio 1.0 first in --ratios")
        row, model = run_one(args, r, train, test, init)
        rows.append(row)
        full = model if r == 1.0 else full
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "work", "name", "keep_ratios_table", "merge")}
    report = dict(task="moving shapes direction (4 classes), held-out clips", settings=settings,
                  train_clips=len(train), test_clips=len(test), clip_frames=16,
                  patches_per_frame=rows[0]["frames_x_patches"] // args.frames, results=rows,
                  wall_seconds=round(time.perf_counter() - start, 1),
                  device=f"CPU, torch threads {args.threads} ({platform.processor() or platform.machine()})",
                  torch=torch.__version__, date=time.strftime("%Y-%m-%d"))
    if args.keep_ratios_table:
        report["table"] = table(rows)
    name = args.name or ("storm_video_keep_ratios.json" if args.keep_ratios_table else "storm_video_shapes.json")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=2), flush=True)


if __name__ == "__main__":
    main()
