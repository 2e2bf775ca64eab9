"""STORM on the GPU (issue 11): how cost grows with the number of frames, and image STORM against Vim-S.

--section video  STORM-small (configs/storm-small.json, num_frames raised to 512) on 224 px videos of 8 / 32 / 128 /
                 512 frames, batch 1, bf16 autocast: inference frames/s and peak memory (and a training step), against
                 a baseline of equal width and depth: a ViT per frame (4 layers, 384 wide, 6 heads, as STORM's 4 frame
                 layers) then full self-attention (SDPA, flash) over the tokens of all frames (14 layers: STORM's 2
                 temporal layers + 12 blocks) -> storm_video.json, storm_video.png.
--section image  image STORM (the same config, one frame) against Vim-S (configs/vim-small.json) at 224 / 512 / 1024 /
                 1248 px (batch 128 / 32 / 8 / 4 as bench_gpu_models.py): inference and training images/s and peak
                 memory -> storm_image.json, storm_image.png.

    python benchmarks/bench_storm_gpu.py --section all --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn

from common import ROOT, ensure_ssmvl, peak_memory_mib, plot_panels, wall_time_s

ensure_ssmvl()

from bench_gpu_models import VISION_BATCH, device_info  # noqa: E402

FRAMES = (8, 32, 128, 512)
SIZE = 224


def storm_config(num_frames: int):
    from ssmvl.modeling.configuration_storm import StormConfig

    cfg = StormConfig.from_json_file(str(ROOT / "configs/storm-small.json"))
    cfg.num_frames = num_frames
    return cfg


class FrameViTFullAttention(nn.Module):
    """The baseline: transformers' ViT encoder on each frame, then a ViT encoder (full attention) over the tokens of
    all frames with a learned temporal embedding, mean pool, linear head. Width, depth and head as STORM-small."""

    def __init__(self, frame_layers: int = 4, joint_layers: int = 14, hidden: int = 384, heads: int = 6,
                 max_frames: int = 512, num_labels: int = 1000):
        super().__init__()
        from transformers import ViTConfig, ViTModel
        from transformers.models.vit.modeling_vit import ViTLayer  # ViTEncoder is gone in transformers 5.24

        common = dict(hidden_size=hidden, num_attention_heads=heads, intermediate_size=4 * hidden, image_size=SIZE,
                      patch_size=16, attn_implementation="sdpa")
        self.frame = ViTModel(ViTConfig(num_hidden_layers=frame_layers, **common), add_pooling_layer=False)
        joint = ViTConfig(num_hidden_layers=joint_layers, **common)
        self.joint = nn.ModuleList([ViTLayer(joint) for _ in range(joint_layers)])
        self.temporal_embed = nn.Parameter(torch.zeros(1, max_frames, 1, hidden))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, num_labels)

    def forward(self, pixel_values_videos, labels=None):
        b, t = pixel_values_videos.shape[:2]
        x = self.frame(pixel_values=pixel_values_videos.flatten(0, 1)).last_hidden_state  # (b*t, 1 + M, D)
        x = x.reshape(b, t, x.shape[1], x.shape[2]) + self.temporal_embed[:, :t]
        x = x.reshape(b, -1, x.shape[-1])
        for layer in self.joint:
            x = layer(x)
            x = x[0] if isinstance(x, tuple) else x  # older transformers return (hidden_states, ...)
        logits = self.head(self.norm(x).mean(1))
        loss = None if labels is None else nn.functional.cross_entropy(logits.float(), labels)
        return loss, logits


def _measure(model, inputs, labels, count, row, train: bool = True):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def infer():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            model(**inputs)

    def train_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(**inputs, labels=labels)
        loss = out[0] if isinstance(out, tuple) else out.loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        model.eval()
        row["infer_ms"] = 1e3 * wall_time_s(infer, warmup=2, repeats=5)
        row["infer_per_s"] = count / (row["infer_ms"] / 1e3)
        row["infer_peak_mib"] = peak_memory_mib(infer)
    except torch.cuda.OutOfMemoryError as err:
        row["infer_error"] = f"OOM: {err}"[:160]
    if train:
        try:
            model.train()
            row["train_ms"] = 1e3 * wall_time_s(train_step, warmup=1, repeats=3)
            row["train_per_s"] = count / (row["train_ms"] / 1e3)
            row["train_peak_mib"] = peak_memory_mib(train_step)
        except torch.cuda.OutOfMemoryError as err:
            row["train_error"] = f"OOM: {err}"[:160]
    opt.zero_grad(set_to_none=True)
    del opt
    torch.cuda.empty_cache()


def section_video(out: Path, frames_list=FRAMES):
    from ssmvl.modeling.modeling_storm import StormForVideoClassification

    result = {"device": device_info(), "dtype": "bfloat16 autocast (fp32 weights)", "batch": 1, "image_size": SIZE,
              "rows": []}
    builds = {"storm_small": lambda: StormForVideoClassification(storm_config(max(frames_list))),
              "vit_frame_full_attention": lambda: FrameViTFullAttention(max_frames=max(frames_list))}
    for name, build in builds.items():
        torch.manual_seed(0)
        model = build().cuda()
        result.setdefault("params", {})[name] = sum(p.numel() for p in model.parameters())
        for frames in frames_list:
            video = torch.randn(1, frames, 3, SIZE, SIZE, device="cuda")
            labels = torch.zeros(1, dtype=torch.long, device="cuda")
            row = {"model": name, "frames": frames}
            if name == "storm_small":
                row["tokens_out"] = model.config.num_output_tokens(frames)
            _measure(model, {"pixel_values_videos": video}, labels, frames, row)
            report(f"{name:26s} T={frames:4d}", row, "frames/s")
            result["rows"].append(row)
        del model
        torch.cuda.empty_cache()
    (out / "storm_video.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "storm_video.png", "frames", "frames/s", log_x=True)


def section_image(out: Path, sizes=(224, 512, 1024, 1248)):
    from ssmvl.modeling.configuration_vim import VimConfig
    from ssmvl.modeling.modeling_storm import StormForImageClassification
    from ssmvl.modeling.modeling_vim import VimForImageClassification

    result = {"device": device_info(), "dtype": "bfloat16 autocast (fp32 weights)", "batch": VISION_BATCH, "rows": []}
    builds = {"storm_small_image": lambda: StormForImageClassification(storm_config(16)),
              "vim_s": lambda: VimForImageClassification(VimConfig.from_json_file(str(ROOT / "configs/vim-small.json")))}
    for name, build in builds.items():
        torch.manual_seed(0)
        model = build().cuda()
        result.setdefault("params", {})[name] = sum(p.numel() for p in model.parameters())
        for size in sizes:
            batch = VISION_BATCH[size]
            x = torch.randn(batch, 3, size, size, device="cuda")
            labels = torch.randint(0, 1000, (batch,), device="cuda")
            row = {"model": name, "size": size, "batch": batch}
            _measure(model, {"pixel_values": x, "interpolate_pos_encoding": size != SIZE}, labels, batch, row)
            report(f"{name:18s} {size:5d}px b={batch:3d}", row, "img/s")
            result["rows"].append(row)
        del model
        torch.cuda.empty_cache()
    (out / "storm_image.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "storm_image.png", "size", "images/s", log_x=False)


def plot(result, path, x_key, unit, log_x):
    panels = [("infer_per_s", f"inference {unit}"), ("infer_peak_mib", "inference peak MiB"),
              ("train_per_s", f"training {unit}"), ("train_peak_mib", "training peak MiB")]
    plot_panels(result, path, x_key, panels, f"{result['device']['gpu']}, {result['dtype']}", log_x=log_x)


def report(label: str, row, unit: str):
    print(f"{label} infer {row.get('infer_per_s', math.nan):9.1f} {unit} {row.get('infer_peak_mib', math.nan):9.1f} MiB"
          f" | train {row.get('train_per_s', math.nan):8.1f} {unit} {row.get('train_peak_mib', math.nan):9.1f} MiB",
          flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--section", choices=["video", "image", "all"], default="all")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--frames", default=",".join(map(str, FRAMES)))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.section in ("video", "all"):
        section_video(out, tuple(int(f) for f in args.frames.split(",")))
    if args.section in ("image", "all"):
        section_image(out)
    print(f"done in {time.time() - t0:.0f} s; results in {out}")


if __name__ == "__main__":
    main()
