"""Image STORM beside Vim at the same width and depth on scikit-learn's digits (CPU).

    python benchmarks/storm_vs_vim_digits.py [--epochs 12] [--threads 2]

Both: 32 px RGB digits (1,797 real 8x8 digits upsampled; stratified 80/20 split, seed 0), 8 px patches (16 tokens),
64 wide, 4 bidirectional Mamba layers, state 8; trained with the same recipe (`training/recipes.py`
`train_image_classifier`: Trainer, AdamW, lr 3e-3, batch 64). Vim: `configs/digits-recipes.json`'s vim-digits.
STORM: 4 STORM blocks (no separate frame layers), retention in blocks 2 and 4 at each `--keep` ratio, 4 memory
tokens. Writes ``benchmarks/results/storm_vs_vim_digits.json``: held-out accuracy, tokens reaching the head,
parameters, training seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import ssmvl.modeling  # noqa: F401  (registers the families)
from ssmvl.modeling.configuration_storm import StormConfig
from ssmvl.modeling.configuration_vim import VimConfig
from ssmvl.training.data import build_digits_dataset, make_digits_processor
from ssmvl.training.recipes import train_image_classifier


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=float, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    ap.add_argument("--out", default="benchmarks/results/storm_vs_vim_digits.json")
    ap.add_argument("--work", default="outputs/storm-vs-vim-digits")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    processor = make_digits_processor(32)
    data = build_digits_dataset(32, image_processor=processor, seed=0)
    shared = dict(image_size=32, patch_size=8, hidden_size=64, state_size=8, num_labels=10, ssm_backend="torch")
    models = {"vim": VimConfig(num_hidden_layers=4, **shared)}
    for keep in args.keep:
        models[f"storm-keep{keep:g}"] = StormConfig(num_hidden_layers=4, frame_layers=0, temporal_layers=0,
                                                    keep_ratios=[1.0, keep, 1.0, keep], num_memory_tokens=4,
                                                    bidirectional=True, num_frames=1, **shared)
    rows = []
    for name, config in models.items():
        torch.manual_seed(0)
        m = train_image_classifier(config, data["train"], data["test"], Path(args.work) / name, epochs=args.epochs,
                                   lr=3e-3, batch_size=64, image_processor=processor, seed=0, disable_tqdm=True)
        tokens = 16 if name == "vim" else config.num_output_tokens(1)
        row = dict(model=name, parameters=m["total_params"], accuracy=m["eval_accuracy"], tokens_to_head=tokens,
                   train_seconds=round(m["train_seconds"], 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = dict(rows=rows, epochs=args.epochs, device=f"CPU, {args.threads} threads ({platform.machine()})",
                  torch=torch.__version__, date=time.strftime("%Y-%m-%d"), test_images=len(data["test"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
