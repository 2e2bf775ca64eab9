"""Video classification recipe: a STORM video classifier trained with ``transformers.Trainer`` on rows of
``video`` (``uint8`` (T, H, W, 3), e.g. ``moving_shapes.make_moving_shapes_dataset``) and ``label`` columns.

* ``storm_video_classifier``: a small ``StormForVideoClassification`` for the generated moving shapes clips, labels
  (id2label / label2id) from the dataset's ``ClassLabel``; ``video_processor_for``: its ``StormVideoProcessor``.
* ``VideoCollator``: rows -> ``pixel_values_videos`` (B, T, 3, H, W) float32 (the processor samples / resizes /
  normalises) and ``labels`` (B,) int64.
* ``train_video_classifier``: Trainer (``recipes.training_arguments``: no reporting integrations, ``use_cpu``
  without CUDA), then ``save_pretrained`` of model + processor so that ``AutoModelForVideoClassification`` /
  ``AutoProcessor.from_pretrained(out_dir, trust_remote_code=True)`` load it without ssmvl. Returns a
  ``recipes.RecipeResult``.
* ``evaluate_video_classifier``: accuracy (local evaluate module) and ``tokens_to_head``: the tokens the last STORM
  block hands to the head per clip (``config.num_output_tokens(frames)``, checked against the model's
  ``kept_tokens``), next to ``frames_x_patches`` (what a model without retention or pooling would hand on).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from .distributed import prepare_for_fsdp
from .lora import count_parameters
from .recipes import RecipeResult, finish_recipe, load_accuracy_metric, training_arguments

DEFAULT_LABELS = ("left", "right", "up", "down")  # moving_shapes.DIRECTIONS


def _label_names(labels) -> List[str]:
    """Names from a ``datasets.ClassLabel``, a dataset with a ClassLabel ``label`` column, or a sequence of names."""
    features = getattr(labels, "features", None)
    if features is not None and "label" in features:
        labels = features["label"]
    names = getattr(labels, "names", labels)
    if isinstance(names, str) or not names:
        raise ValueError(f"labels must be a ClassLabel, a dataset with a ClassLabel 'label' column or a list of class "
                         f"names, got {labels!r}")
    return [str(n) for n in names]


def storm_video_classifier(num_frames: int = 8, image_size: int = 32, hidden: int = 64, layers: int = 1,
                           keep_ratios: Optional[Sequence[float]] = None, labels=DEFAULT_LABELS, patch_size: int = 8,
                           frame_layers: int = 1, temporal_layers: int = 1, temporal_pool: int = 1,
                           num_memory_tokens: int = 4, state_size: int = 8, conv_kernel: Optional[int] = None,
                           **config_kwargs):
    """A small ``StormForVideoClassification`` for the moving shapes clips (32 px frames, 8 px patches: 16 tokens a
    frame). ``layers`` STORM blocks (retention + Mamba + memory), one keep ratio each (``keep_ratios``; default 1.0
    everywhere: no retention); ``frame_layers`` Mamba blocks per frame and ``temporal_layers`` over all frames (the
    motion is only visible across frames). ``conv_kernel`` (the Mamba mixers' causal depthwise conv) defaults to one
    frame of tokens plus one, ``(image_size // patch_size) ** 2 + 1``: in the temporal layers (frame-major order) each
    token's conv then reaches the same patch of the previous frame, a learned frame difference. With the usual width
    of 4 the moving shapes model stayed at chance for 300 steps (loss ln 4; benchmarks/README.md). Note that the
    mamba_ssm CUDA conv kernel takes widths 2..4 only. ``labels``: a ``ClassLabel``, a dataset with one, or the class
    names; they set ``id2label`` / ``label2id``. ``config_kwargs`` go to ``StormConfig``."""
    from ..modeling.configuration_storm import StormConfig
    from ..modeling.modeling_storm import StormForVideoClassification

    names = _label_names(labels)
    if conv_kernel is None:
        conv_kernel = (image_size // patch_size) ** 2 + 1
    config = StormConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=hidden, num_hidden_layers=layers,
        keep_ratios=[1.0] * layers if keep_ratios is None else list(keep_ratios), num_memory_tokens=num_memory_tokens,
        state_size=state_size, conv_kernel=conv_kernel, frame_layers=frame_layers, temporal_layers=temporal_layers,
        num_frames=num_frames, temporal_pool=temporal_pool, num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, **config_kwargs,
    )
    return StormForVideoClassification(config)


def video_processor_for(config, **kwargs):
    """The ``StormVideoProcessor`` of a STORM config (frames of ``config.image_size``, ``config.num_frames`` frames
    sampled uniformly from each clip); ``kwargs`` override."""
    from ..modeling.video_processing_storm import StormVideoProcessor

    return StormVideoProcessor.from_config(config, **kwargs)


class VideoCollator:
    """Rows (mappings with ``video`` and ``label``) -> ``{"pixel_values_videos": (B, T, 3, H, W) float32, "labels":
    (B,) int64}``; ``processor`` (a ``StormVideoProcessor``) samples the frames, resizes and normalises. Other columns
    are ignored. Rows without ``label`` give no ``labels``."""

    def __init__(self, processor, video_column: str = "video", label_column: str = "label"):
        self.processor = processor
        self.video_column = video_column
        self.label_column = label_column

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("VideoCollator got an empty batch")
        videos = [np.asarray(row[self.video_column]) for row in rows]
        batch = {"pixel_values_videos": self.processor(videos, return_tensors="pt")["pixel_values_videos"]}
        if all(self.label_column in row for row in rows):
            batch["labels"] = torch.as_tensor([int(row[self.label_column]) for row in rows], dtype=torch.long)
        return batch


def _batches(dataset, batch_size: int):
    """Rows of ``dataset`` (a ``datasets.Dataset`` or a list of row dicts), ``batch_size`` at a time."""
    for start in range(0, len(dataset), batch_size):
        if isinstance(dataset, (list, tuple)):
            yield list(dataset[start:start + batch_size])
        else:
            yield [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]


@torch.no_grad()
def evaluate_video_classifier(model, processor, ds, batch_size: int = 64) -> Dict[str, Union[float, int]]:
    """Accuracy of ``model`` on ``ds`` (rows with ``video`` / ``label``) and the token budget per clip:
    ``tokens_to_head`` (tokens of the last STORM block's output, pooled by the head with the ``memory_tokens``;
    ``config.num_output_tokens(frames)``, checked against the model's ``kept_tokens``), ``frames_x_patches`` (frames
    x patch tokens per frame, before pooling and retention) and ``token_reduction`` (their ratio)."""
    if len(ds) == 0:
        raise ValueError("evaluate_video_classifier got an empty dataset")
    model.eval()
    collate = VideoCollator(processor)
    metric = load_accuracy_metric()
    device = next(model.parameters()).device
    config = model.config
    tokens = frames = None
    for rows in _batches(ds, batch_size):
        batch = collate(rows)
        video = batch["pixel_values_videos"].to(device)
        out = model(pixel_values_videos=video)
        frames = video.shape[1]
        expected = config.num_output_tokens(frames, tuple(video.shape[-2:]))
        kept = out.kept_tokens[-1].shape[1] if getattr(out, "kept_tokens", None) else expected
        if kept != expected:  # pragma: no cover - a model bug, not a user error
            raise RuntimeError(f"The model handed {kept} tokens to the head; its config says {expected}")
        tokens = kept
        metric.add_batch(predictions=out.logits.argmax(-1).cpu().numpy(), references=batch["labels"].numpy())
    frames_x_patches = frames * config.tokens_per_frame()
    return {"accuracy": float(metric.compute()["accuracy"]), "tokens_to_head": int(tokens),
            "memory_tokens": int(config.num_memory_tokens), "frames_x_patches": int(frames_x_patches),
            "token_reduction": frames_x_patches / tokens}


def train_video_classifier(model, processor, train_ds, out_dir: Union[str, Path], max_steps: int = -1,
                           epochs: float = 1.0, lr: float = 2e-3, batch_size: int = 32, seed: int = 0, eval_ds=None,
                           warmup_ratio: float = 0.1, weight_decay: float = 0.05, logging_steps: int = 20,
                           save: bool = True, eval_batch_size: int = 64, **training_kwargs) -> RecipeResult:
    """Trains ``model`` (a video classifier taking ``pixel_values_videos``) on ``train_ds`` (rows with ``video`` /
    ``label``) with Trainer, ``max_steps`` steps (or ``epochs`` when ``max_steps`` is -1), cosine schedule with
    ``warmup_ratio`` warm-up, AdamW. Trainer checkpoints go to ``out_dir/checkpoints`` (one per epoch; pass
    ``save_strategy="no"`` for none); with ``save`` the model and processor go to ``out_dir`` (``save_pretrained``).
    Metrics: parameter counts, ``train_seconds``, ``train_loss``, ``global_step``, and with ``eval_ds`` the
    ``evaluate_video_classifier`` figures prefixed ``eval_``."""
    from transformers import Trainer, set_seed

    set_seed(seed)
    out_dir = Path(out_dir)
    settings = dict(eval_strategy="no", save_strategy="epoch", remove_unused_columns=False)
    settings.update(training_kwargs)
    args = training_arguments(out_dir / "checkpoints", epochs=epochs, max_steps=max_steps, lr=lr,
                              batch_size=batch_size, warmup_ratio=warmup_ratio, weight_decay=weight_decay,
                              logging_steps=logging_steps, seed=seed, **settings)
    trainer = Trainer(model=prepare_for_fsdp(model), args=args, train_dataset=train_ds,
                      data_collator=VideoCollator(processor),
                      processing_class=processor)
    metrics = RecipeResult(count_parameters(model))
    start = time.time()
    train_out = trainer.train()
    metrics["train_seconds"] = time.time() - start
    metrics["train_loss"] = train_out.training_loss
    metrics["global_step"] = train_out.global_step
    metrics["loss_history"] = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    if eval_ds is not None:
        for name, value in evaluate_video_classifier(trainer.model, processor, eval_ds, eval_batch_size).items():
            metrics[f"eval_{name}"] = value
    return finish_recipe(metrics, trainer, out_dir, processor, save)


__all__ = ["VideoCollator", "storm_video_classifier", "video_processor_for", "train_video_classifier",
           "evaluate_video_classifier", "DEFAULT_LABELS"]
