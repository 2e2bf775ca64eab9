"""Multi-GPU training through the same Trainer recipe (issue 12, part 1): DDP images/s and the validation-accuracy
trajectory against one GPU, and FSDP peak memory per GPU for the largest presets.

DDP scaling of Vim-S (configs/vim-small.json, 224 px, bf16 autocast, AdamW, fixed global batch):

    python benchmarks/ddp_scaling.py --out results/ddp_vim_small_1gpu.json      # one GPU (GPU 0 unless told)
    torchrun --standalone --nproc_per_node 2 benchmarks/ddp_scaling.py --out results/ddp_vim_small_2gpu.json
    python benchmarks/ddp_scaling.py --compare results/ddp_vim_small_1gpu.json results/ddp_vim_small_2gpu.json

FSDP (the shipped training/accelerate_configs/fsdp.yaml: FSDP2, one unit per block, full state dicts) against one
GPU without FSDP at the same batch per GPU, peak memory per GPU:

    python benchmarks/ddp_scaling.py --model vim-base --per-device-batch 32 --steps 30 --eval-every 0 \
        --out results/fsdp_vim_base_1gpu.json
    accelerate launch --config_file training/accelerate_configs/fsdp.yaml --num_processes 2 --mixed_precision bf16 \
        benchmarks/ddp_scaling.py --model vim-base --per-device-batch 32 --steps 30 --eval-every 0 \
        --out results/fsdp_vim_base_2gpu.json
    (the same with --model vlm:cobra-style --per-device-batch 4 --steps 10 --gradient-checkpointing: 3.19B
     parameters, rows of 729 image + 256 text tokens; vlm:qwen-vl-style, 9.66B, needs more than 2 x 80 GB: fp32
     weights, gradients and AdamW's two moments are 16 bytes per parameter before activations, 155 GB, 77 GB per GPU
     over 2)

Data. Vim: scikit-learn's digits (shipped with it; 1,437 train / 360 validation, the stratified split of
``training.data.digits_split_indices``) upsampled from 8 x 8 to the model's image size (bilinear, grey -> 3 channels,
[-1, 1]); the recipe is ``training.recipes.train_image_classifier`` (Trainer), validation accuracy (local evaluate
module) every ``--eval-every`` steps. VLM presets (``vlm:<name>``, the ``real`` size of configs/vlm-<name>.json):
synthetic batches (random pixels; ``num_image_tokens`` placeholders then ``--text-tokens`` random text ids; loss on the
text) through ``Trainer`` with ``recipes.training_arguments``: a memory and speed measurement, nothing to learn.

Measured (rank 0 writes the JSON; every rank reports its memory):
  images_per_s      global batch x steps / wall time between the ends of step ``--warmup`` and of the last step,
                    without the intervals that held an evaluation (CUDA-synchronised at each step end)
  step_ms_median    the median of those per-step intervals
  loss_history      Trainer's logged training loss (every ``--logging-steps``)
  eval_history      validation accuracy at each evaluation (Vim)
  peak_memory_mib   torch.cuda.max_memory_allocated() of each rank over the whole run
With the same ``--global-batch`` (per-GPU batch = global / processes; ``--per-device-batch`` fixes it instead) and
seed, one and two GPUs see the same batches in the same order (accelerate's seeded sampler, sharded per process), so
the loss and accuracy trajectories should agree up to bf16 rounding; drop-path is off (its masks are drawn per
process). ``--compare A.json B.json`` prints the speed-up and the largest accuracy / loss difference.

``--tiny``: a tiny Vim at 16 px (or the preset's ``tiny`` size) on CPU with gloo when there is no GPU, a few steps;
for checking the script (tests/test_distributed.py runs it under torchrun with 2 CPU processes), not for numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

# A plain `python benchmarks/ddp_scaling.py` is the one-GPU baseline: on a multi-GPU host Trainer would otherwise wrap
# the model in torch.nn.DataParallel over every visible GPU. Set before torch initialises CUDA.
if not any(os.environ.get(k) for k in ("WORLD_SIZE", "LOCAL_RANK")) and "CUDA_VISIBLE_DEVICES" not in os.environ:
    os.environ["CUDA_VISIBLE_DEVICES"] = "0"

import torch  # noqa: E402

from common import ensure_ssmvl  # noqa: E402

ensure_ssmvl()

from transformers import TrainerCallback  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------------
class UpsampledDigits(torch.utils.data.Dataset):
    """scikit-learn digits (8 x 8, 0..16) upsampled to ``image_size`` once (uint8, one channel, ~90 MB at 224 px);
    items are ``pixel_values`` (3, S, S) float32 in [-1, 1] and ``labels``."""

    def __init__(self, split: str, image_size: int):
        import numpy as np
        import torch.nn.functional as F
        from sklearn.datasets import load_digits

        from ssmvl.training.data import digits_split_indices

        digits = load_digits()
        train_idx, test_idx = digits_split_indices()
        idx = train_idx if split == "train" else test_idx
        small = torch.as_tensor(digits.images[idx], dtype=torch.float32)[:, None] / 16.0  # (n, 1, 8, 8)
        big = F.interpolate(small, size=(image_size, image_size), mode="bilinear", align_corners=False)
        self.images = (big.clamp(0, 1) * 255).round().to(torch.uint8)  # (n, 1, S, S)
        self.labels = torch.as_tensor(np.asarray(digits.target[idx]), dtype=torch.long)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i].float().div_(127.5).sub_(1.0).expand(3, -1, -1)  # (3, S, S)
        return {"pixel_values": x, "labels": self.labels[i]}


class SyntheticVlmBatches(torch.utils.data.Dataset):
    """Rows for a prefix-fusion VLM: ``num_image_tokens`` image placeholders then ``text_tokens`` random text ids
    (labels on the text only), one random image per row. Seeded per index: every process sees the same rows."""

    def __init__(self, config, rows: int, text_tokens: int):
        self.config, self.rows, self.text_tokens = config, rows, text_tokens
        vision = config.vision_config
        self.image_size = int(getattr(vision, "image_size", 0) or 0)
        if config.fusion != "prefix" or not self.image_size or getattr(config, "is_video", False):
            raise ValueError("the VLM benchmark feeds one image per row to a prefix-fusion image VLM (cobra-style, "
                             "qwen-vl-style, vlm-mamba); this preset is not one")
        self.channels = int(getattr(vision, "num_channels", 3) or 3)

    def __len__(self):
        return self.rows

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        n_img, vocab = self.config.num_image_tokens, self.config.text_config.vocab_size
        text = torch.randint(3, min(vocab, self.config.image_token_id) - 1, (self.text_tokens,), generator=g)
        ids = torch.cat([torch.full((n_img,), self.config.image_token_id, dtype=torch.long), text])
        labels = ids.clone()
        labels[:n_img] = -100
        pixels = torch.randn(self.channels, self.image_size, self.image_size, generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "pixel_values": pixels}


# ---------------------------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------------------------
class StepClock(TrainerCallback):
    """Wall time at the end of every optimizer step (CUDA-synchronised); intervals that held an evaluation or a save
    are marked and left out of the throughput."""

    def __init__(self):
        self.ends, self.dirty = {}, set()

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.ends[state.global_step] = time.perf_counter()

    def on_evaluate(self, args, state, control, **kwargs):
        self.dirty.add(state.global_step + 1)

    def on_save(self, args, state, control, **kwargs):
        self.dirty.add(state.global_step + 1)

    def intervals(self, warmup: int):
        steps = sorted(self.ends)
        return [self.ends[s] - self.ends[s - 1] for s in steps if s > warmup and s - 1 in self.ends
                and s not in self.dirty]


# ---------------------------------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------------------------------
def _world():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _gather(value):
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, value)
        return out
    return [value]


def _peak_mib():
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def vim_config(name: str, tiny: bool):
    from ssmvl.modeling import VimConfig
    from ssmvl.training.cli import resolve_image_config

    if tiny:
        return VimConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, state_size=4, num_labels=10,
                         drop_path_rate=0.0)
    config = resolve_image_config(name, image_size=224, num_labels=10)
    if config is None:
        raise ValueError(f"--model {name!r} is not a preset in configs/ or a config JSON")
    config.drop_path_rate = 0.0  # drawn per process: off, so that 1 and N GPUs follow the same trajectory
    return config


def run(args) -> dict:
    from ssmvl.training.distributed import fsdp_enabled, fsdp_wrap_classes, prepare_for_fsdp
    from ssmvl.training.recipes import train_image_classifier, training_arguments

    rank, world = _world()
    on_gpu = torch.cuda.is_available()
    accum = args.grad_accum
    per_device = args.per_device_batch or max(1, args.global_batch // (world * accum))
    if args.per_device_batch is None and args.global_batch % (world * accum):
        raise ValueError(f"--global-batch {args.global_batch} does not split over {world} processes x {accum} "
                         "accumulation steps")
    clock = StepClock()
    workers = args.workers if on_gpu else 0
    common = dict(bf16=on_gpu and not args.fp32, dataloader_num_workers=workers,
                  # the digits are 5.6 steps an epoch at 256: workers respawned at every epoch cost a stall each
                  dataloader_persistent_workers=workers > 0,
                  # every Vim parameter gets a gradient; a VLM leaves the tower's layers after
                  # vision_feature_layer unused (cobra-style: SigLIP's last layer), which DDP must be told
                  ddp_find_unused_parameters=args.model.startswith("vlm:"), disable_tqdm=True, report_to="none",
                  gradient_accumulation_steps=accum)
    if args.gradient_checkpointing:  # transformers 5.24 renamed it (the old name warns); 5.0 has only the old one
        from ssmvl.training.recipes import _training_argument_names

        names = _training_argument_names()
        common["activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"] = True
    out_dir = Path(args.work) / f"rank-shared-{args.label or 'run'}"
    record = dict(model=args.model, world_size=world, per_device_batch=per_device, gradient_accumulation_steps=accum,
                  global_batch=per_device * world * accum,
                  steps=args.steps, warmup_steps_excluded=args.warmup, bf16=common["bf16"], fsdp=fsdp_enabled(),
                  gradient_checkpointing=args.gradient_checkpointing, tiny=args.tiny)
    torch.manual_seed(args.seed)
    if args.model.startswith("vlm:"):
        from transformers import Trainer, default_data_collator

        from ssmvl.modeling import SsmVlmForConditionalGeneration
        from ssmvl.training.vlm_presets import vlm_preset

        config = vlm_preset(args.model.split(":", 1)[1], size="tiny" if args.tiny else "real")
        data = SyntheticVlmBatches(config, rows=per_device * world * accum * (args.steps + 1),
                                   text_tokens=args.text_tokens)
        t0 = time.perf_counter()
        model = SsmVlmForConditionalGeneration(config)
        record.update(params=sum(p.numel() for p in model.parameters()), build_s=time.perf_counter() - t0,
                      image_size=data.image_size, image_tokens=config.num_image_tokens, text_tokens=args.text_tokens,
                      fsdp_wrap_classes=fsdp_wrap_classes(model))
        targs = training_arguments(out_dir, max_steps=args.steps, lr=args.lr, batch_size=per_device,
                                   eval_strategy="no", save_strategy="no", logging_steps=args.logging_steps,
                                   warmup_ratio=0.0, seed=args.seed, remove_unused_columns=False, **common)
        trainer = Trainer(model=prepare_for_fsdp(model), args=targs, train_dataset=data,
                          data_collator=default_data_collator, callbacks=[clock])
        t0 = time.perf_counter()
        trainer.train()
        record["train_s"] = time.perf_counter() - t0
        unit = "sequences"
    else:
        train, val = (UpsampledDigits(s, 16 if args.tiny else 224) for s in ("train", "val"))
        config = vim_config(args.model, args.tiny)
        from ssmvl.modeling import VimForImageClassification

        t0 = time.perf_counter()
        model = VimForImageClassification(config)
        record.update(params=sum(p.numel() for p in model.parameters()), build_s=time.perf_counter() - t0,
                      image_size=config.image_size, train_images=len(train), val_images=len(val),
                      fsdp_wrap_classes=fsdp_wrap_classes(model))
        evals = dict(eval_strategy="steps", eval_steps=args.eval_every) if args.eval_every else {}
        result = train_image_classifier(
            model, train, val if args.eval_every else None, out_dir, max_steps=args.steps, lr=args.lr,
            batch_size=per_device, warmup_ratio=args.warmup_ratio, weight_decay=0.05, logging_steps=args.logging_steps,
            seed=args.seed, save=False, save_strategy="no", callbacks=[clock], eval_batch_size=per_device,
            **evals, **common)
        trainer = result.trainer
        record["train_s"] = result["train_seconds"]
        if "eval_accuracy" in result:
            record["final_eval_accuracy"] = result["eval_accuracy"]
        unit = "images"
    intervals = clock.intervals(args.warmup)
    global_batch = per_device * world * accum
    record[f"{unit}_per_s"] = global_batch * len(intervals) / sum(intervals) if intervals else None
    record["step_ms_median"] = 1e3 * statistics.median(intervals) if intervals else None
    record["timed_steps"] = len(intervals)
    history = trainer.state.log_history
    record["loss_history"] = [[e["step"], e["loss"]] for e in history if "loss" in e]
    record["eval_history"] = [[e["step"], e["eval_accuracy"]] for e in history if "eval_accuracy" in e]
    record["peak_memory_mib_per_rank"] = _gather(_peak_mib())
    record["device_per_rank"] = _gather(torch.cuda.get_device_name() if on_gpu else platform.processor() or "cpu")
    return record


def compare(paths):
    a, b = (json.loads(Path(p).read_text()) for p in paths)
    key = "images_per_s" if a.get("images_per_s") else "sequences_per_s"
    for path, r in zip(paths, (a, b)):
        speed = f"{r[key]:.1f} {key}" if r.get(key) else "no timed steps (--steps <= --warmup)"
        print(f"{path}: {r['world_size']} process(es), {speed}, peak MiB per rank {r['peak_memory_mib_per_rank']}")
    if a.get(key) and b.get(key):
        print(f"speed-up {b[key] / a[key]:.2f}x (by median step time "
              f"{b['global_batch'] * a['step_ms_median'] / (a['global_batch'] * b['step_ms_median']):.2f}x)")
    for name in ("eval_history", "loss_history"):
        pa, pb = dict(map(tuple, a.get(name, []))), dict(map(tuple, b.get(name, [])))
        common = sorted(set(pa) & set(pb))
        if common:
            worst = max(abs(pa[s] - pb[s]) for s in common)
            print(f"{name}: {len(common)} common steps, max |difference| {worst:.4f}; "
                  f"{[(s, round(pa[s], 4), round(pb[s], 4)) for s in common[-3:]]}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vim-small", help="a Vim preset (vim-small, vim-base) or config JSON, or "
                        "vlm:<preset> (cobra-style, qwen-vl-style, vlm-mamba)")
    parser.add_argument("--out", default=None, help="JSON written by rank 0")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--global-batch", type=int, default=None,
                        help="split over the processes (default 256 for Vim, 8 for a VLM preset)")
    parser.add_argument("--per-device-batch", type=int, default=None, help="fix the per-GPU batch instead")
    parser.add_argument("--grad-accum", type=int, default=1,
                        help="gradient accumulation steps: one GPU at the per-GPU batch of an N-GPU run with N "
                             "accumulation steps has the same global batch, so the same trajectory")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the images/s (compilation, "
                        "autotuning, allocator)")
    parser.add_argument("--eval-every", type=int, default=20, help="validation accuracy every N steps (0: none)")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--text-tokens", type=int, default=256, help="VLM: text tokens after the image tokens")
    parser.add_argument("--workers", type=int, default=4, help="dataloader workers per process on GPU")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="tiny model, 16 px / tiny preset, CPU without a GPU")
    parser.add_argument("--label", default=None)
    parser.add_argument("--work", default=None, help="scratch folder (Trainer output_dir; nothing is saved)")
    parser.add_argument("--compare", nargs=2, metavar=("ONE.json", "TWO.json"))
    args = parser.parse_args(argv)
    if args.compare:
        compare(args.compare)
        return 0
    if args.global_batch is None:
        args.global_batch = 8 if args.model.startswith("vlm:") else 256
    if args.tiny:
        args.steps = min(args.steps, 6)
        args.global_batch = min(args.global_batch, 16)
        args.warmup = min(args.warmup, 2)
        args.eval_every = min(args.eval_every, 3) if args.eval_every else 0
        args.logging_steps = 1
        args.text_tokens = min(args.text_tokens, 8)
        torch.set_num_threads(1)
    args.work = args.work or str(Path(os.environ.get("TMPDIR", "/tmp")) / "ssmvl_ddp_scaling")
    launcher = ("accelerate launch" if any(k.startswith("ACCELERATE_") for k in os.environ)
                else "torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else "python")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    try:
        record = run(args)
        record["status"] = "ok"
    except torch.cuda.OutOfMemoryError as exc:  # recorded by each rank that hits it (no collective after it)
        record = {"model": args.model, "status": "oom", "error": str(exc).splitlines()[0], "rank": _world()[0],
                  "peak_memory_mib_this_rank": _peak_mib(), "world_size": _world()[1]}
        traceback.print_exc()
    import accelerate
    import transformers

    record.update(started=started, torch=torch.__version__, transformers=transformers.__version__,
                  accelerate=accelerate.__version__, python=platform.python_version(), argv=sys.argv[1:],
                  launcher=launcher, cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    if record["status"] == "oom":
        out = Path(args.out or "oom.json")
        out = out.with_name(f"{out.stem}.rank{record['rank']}{out.suffix}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record, indent=2))
        return 1
    rank = _world()[0]
    if rank == 0:
        text = json.dumps(record, indent=2)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text + "\n")
        brief = {k: v for k, v in record.items() if k not in ("loss_history", "eval_history")}
        print(json.dumps(brief, indent=2))
    from ssmvl.training.distributed import shutdown

    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
