"""Video question answering with the combined pipeline (issue 11) on the CPU: a STORM video tower aligned with the
clips' captions by the sigmoid loss (stage 1), then the VLM (STORM tower -> MLP projector -> Mamba LM) tuned to answer
questions about the clips -- the fresh decoder and the projector trained, the tower frozen (stage 2; ``--lora-r 16``:
LoRA on the decoder instead) -- evaluated by greedy exact match
on held-out clips (combinations of shape, colour, motion, speed, event and start cell never seen in training), overall
and per question type (direction, speed, colour, shape, count).

    python benchmarks/train_video_qa.py                           # the recipe (up to two shapes a clip); appends an
                                                                  # attempt to video_qa.json (about 50 min, 1 thread)
    python benchmarks/train_video_qa.py --stage1-steps 0 --label "no stage 1"   # the ablation: a fresh tower
    python benchmarks/train_video_qa.py --merge a.json b.json    # attempts run in separate processes -> one report

Clips: 16 frames of 32 px (``moving_shapes.make_moving_shapes_qa_dataset``: 1..``--max-objects`` objects, each moving
or still, each with an event with probability 0.5); the processor samples ``--frames`` of them; 8 px patches (16 a
frame). Uses ``ssmvl.training.video_vlm.train_video_qa_pipeline``. Each run is an *attempt* in
``benchmarks/results/<--name>`` (settings, stage-1 retrieval R@1, stage-2 exact match overall and per type, parameters,
tokens to the decoder vs frames x patches, steps, seconds, threads, seed); ``--headline`` makes it the report's
headline.
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

from ssmvl.training.moving_shapes import make_moving_shapes_qa_dataset  # noqa: E402
from ssmvl.training.video_vlm import storm_video_tower_config, train_video_qa_pipeline  # noqa: E402

TASK = ("moving shapes video QA (direction, speed, colour, shape, count), held-out clips, greedy exact match; "
        "stage 1: STORM tower + Mamba text tower aligned by the sigmoid loss on captions, stage 2: VLM, frozen tower, "
        "decoder (in full or LoRA, see each attempt's lora_r) + projector trained")


def load_data(args):
    """Train / held-out QA datasets, cached under ``--data-cache`` (rendering 3,000 clips takes about 90 s)."""
    from datasets import load_from_disk

    kwargs = dict(num_frames=16, image_size=32, max_objects=args.max_objects, max_questions=args.max_questions)
    key = f"c{args.clips}_t{args.test_clips}_o{args.max_objects}_q{args.max_questions}"
    cache = Path(args.data_cache) / key if args.data_cache else None
    if cache is not None and (cache / "test" / "state.json").is_file():  # saved last
        train, test = load_from_disk(str(cache / "train")), load_from_disk(str(cache / "test"))
        for ds in (train, test):
            ds.set_format("numpy", columns=["video"], dtype="uint8", output_all_columns=True)
        return train, test
    train = make_moving_shapes_qa_dataset(args.clips, seed=0, split="train", **kwargs)
    test = make_moving_shapes_qa_dataset(args.test_clips, seed=1, split="test", **kwargs)
    if cache is not None:
        for name, ds in (("train", train), ("test", test)):
            ds.with_format(None).save_to_disk(str(cache / name))  # the numpy format's dtype is not JSON
    return train, test


def attempt(args) -> dict:
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train, test = load_data(args)
    data_seconds = time.perf_counter() - start
    tower = storm_video_tower_config(num_frames=args.frames, hidden=args.tower_hidden, keep_ratio=args.keep_ratio,
                                     temporal_pool=args.temporal_pool, layers=args.tower_layers,
                                     temporal_layers=args.temporal_layers)
    report = train_video_qa_pipeline(
        Path(args.work), train, test, tower_config=tower, stage1_steps=args.stage1_steps, stage1_lr=args.stage1_lr,
        stage1_batch_size=args.stage1_batch_size, stage2_steps=args.stage2_steps, stage2_lr=args.stage2_lr,
        stage2_batch_size=args.stage2_batch_size, lora_r=args.lora_r or None, freeze_tower=not args.train_tower,
        decoder_hidden=args.decoder_hidden, decoder_layers=args.decoder_layers, seed=args.seed,
        video_tower=args.stage1_from, caption_rows=args.caption_rows)
    report.pop("model"), report.pop("processor"), report.pop("output_dir")
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "work", "name", "merge", "headline",
                                                                 "data_cache", "label")}
    s1, s2 = report.get("stage1", {}), report["stage2"]
    return dict(
        label=args.label, settings=settings,
        video_to_caption_recall_at_1=s1.get("video_to_caption_recall@1"),
        exact_match=s2["exact_match"], exact_match_per_type=s2["exact_match_per_type"],
        train_questions=len(train), test_questions=len(test), train_clips=args.clips, test_clips=args.test_clips,
        **{k: v for k, v in report.items() if k not in ("seed",)},
        train_seconds=round(s1.get("train_seconds", 0.0) + s2["train_seconds"], 1),
        data_seconds=round(data_seconds, 1), wall_seconds=round(time.perf_counter() - start, 1), seed=args.seed,
        threads=args.threads,
        device=f"CPU, torch threads {args.threads} ({platform.processor() or platform.machine()}, {args.device_note})",
        torch=torch.__version__, date=time.strftime("%Y-%m-%d"))


def write(path: Path, attempts: list, headline_label=None):
    report = json.loads(path.read_text()) if path.is_file() else {"task": TASK, "attempts": []}
    known = {a["label"] for a in attempts}
    report["attempts"] = [a for a in report["attempts"] if a["label"] not in known] + attempts
    if headline_label is not None:
        report["headline"] = next(a for a in report["attempts"] if a["label"] == headline_label)["label"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="recipe", help="name of this attempt in the report")
    parser.add_argument("--headline", action="store_true", help="make this attempt the report's headline")
    parser.add_argument("--merge", nargs="+", default=None, help="add the attempts of these reports to --name")
    parser.add_argument("--clips", type=int, default=3000, help="training clips (all their questions)")
    parser.add_argument("--test-clips", type=int, default=200, help="held-out clips")
    parser.add_argument("--max-objects", type=int, default=2)
    parser.add_argument("--max-questions", type=int, default=None, help="questions per clip (None: all)")
    parser.add_argument("--frames", type=int, default=4, help="frames sampled per clip (clips have 16)")
    parser.add_argument("--tower-hidden", type=int, default=64)
    parser.add_argument("--tower-layers", type=int, default=1, help="STORM blocks")
    parser.add_argument("--temporal-layers", type=int, default=1)
    parser.add_argument("--temporal-pool", type=int, default=4)
    parser.add_argument("--keep-ratio", type=float, default=1.0, help="retention of the first STORM block")
    parser.add_argument("--stage1-steps", type=int, default=3000, help="0: no stage 1 (a fresh tower)")
    parser.add_argument("--stage1-from", default=None, help="a saved stage-1 folder: stage 2 starts from it")
    parser.add_argument("--stage1-lr", type=float, default=3e-3)
    parser.add_argument("--stage1-batch-size", type=int, default=32)
    parser.add_argument("--stage2-steps", type=int, default=6000)
    parser.add_argument("--stage2-lr", type=float, default=1e-3)
    parser.add_argument("--stage2-batch-size", type=int, default=32)
    parser.add_argument("--lora-r", type=int, default=0,
                        help="LoRA rank on the decoder (0: the fresh decoder trained in full, the default)")
    parser.add_argument("--caption-rows", action="store_true",
                        help="stage 2 also learns to answer 'what is there?' with each training clip's caption")
    parser.add_argument("--train-tower", action="store_true", help="stage 2 trains the tower too")
    parser.add_argument("--decoder-hidden", type=int, default=96)
    parser.add_argument("--decoder-layers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device-note", default="local machine", help="where it ran, for the report")
    parser.add_argument("--data-cache", default="outputs/video-qa-data")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--name", default="video_qa.json")
    parser.add_argument("--work", default="outputs/video-qa")
    args = parser.parse_args(argv)
    path = Path(args.out) / args.name
    if args.merge:
        attempts = [a for p in args.merge for a in json.loads(Path(p).read_text())["attempts"]]
        write(path, attempts)
        return
    row = attempt(args)
    write(path, [row], args.label if args.headline else None)
    print(json.dumps({k: v for k, v in row.items() if k not in ("settings",)}, indent=2), flush=True)


if __name__ == "__main__":
    main()
