"""Pre-alignment of a SigLIP-style dual encoder with ``transformers.Trainer`` on (image, caption) pairs -- by default
the generated shapes scenes of ``training/shapes.py`` -- and image-caption retrieval evaluation.

* ``shapes_image_processor`` / ``shapes_dual_encoder_processor``: a ``SigLipDualEncoderProcessor`` for 64 px scenes
  (transformers' ``CLIPImageProcessor`` + a tokenizer, by default the word-level shapes tokenizer).
* ``DualEncoderCollator``: rows with an image (PIL, or ready ``pixel_values``) and a caption -> ``input_ids``,
  ``attention_mask``, ``pixel_values`` and ``return_loss=True`` (the caption of row i describes image i).
* ``train_dual_encoder``: the Trainer recipe (conventions of ``recipes.py``: ``training_arguments``, ``use_cpu``
  without CUDA, safetensors, a ``RecipeResult``); the loss is the model's own (``config.loss_type``, sigmoid by
  default). The trained model and processor are saved so that ``AutoModel`` / ``AutoProcessor`` /
  ``pipeline("zero-shot-image-classification")`` load them with ``trust_remote_code=True`` and without ssmvl.
* ``evaluate_retrieval``: image-to-caption and caption-to-image recall@k / mean rank over a held-out set, through the
  local ``evaluate`` module ``training/metrics/retrieval.py`` (loaded by path, no network).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch

from .distributed import prepare_for_fsdp
from .lora import count_parameters
from .recipes import RecipeResult, finish_recipe, training_arguments

RETRIEVAL_METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "retrieval.py"


# ---------------------------------------------------------------------------------------------------------------------
# processor and collator
# ---------------------------------------------------------------------------------------------------------------------
def shapes_image_processor(image_size: int = 64):
    """transformers' ``CLIPImageProcessor`` for square scenes: RGB conversion, resize + centre crop to ``image_size``,
    scale to [0, 1], normalise with mean = std = 0.5 (pixels in [-1, 1])."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_center_crop=True, do_resize=True, do_rescale=True, do_normalize=True, do_convert_rgb=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )


def shapes_dual_encoder_processor(image_size: int = 64, tokenizer=None):
    """A ``SigLipDualEncoderProcessor`` of ``shapes_image_processor(image_size)`` and ``tokenizer`` (default: the
    word-level shapes tokenizer, ``shapes.build_shapes_tokenizer``)."""
    from ..modeling.processing_dual_encoder import SigLipDualEncoderProcessor

    if tokenizer is None:
        from .shapes import build_shapes_tokenizer

        tokenizer = build_shapes_tokenizer()
    return SigLipDualEncoderProcessor(image_processor=shapes_image_processor(image_size), tokenizer=tokenizer)


class DualEncoderCollator:
    """Batches (image, caption) rows for the dual encoder: images (PIL, column ``image_column``; or videos for a STORM
    tower with a ``StormVideoProcessor``) through the processor's image processor -- or a ready ``pixel_values``
    column stacked as is --, captions (``text_column``)
    through its tokenizer (padded to the longest; truncated to ``max_length`` when given). Adds ``return_loss=True``:
    caption i describes image i."""

    def __init__(self, processor, image_column: str = "image", text_column: str = "caption",
                 max_length: Optional[int] = None):
        self.processor = processor
        self.image_column = image_column
        self.text_column = text_column
        self.max_length = max_length

    def __call__(self, rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        texts = [row[self.text_column] for row in rows]
        text_kwargs = dict(padding=True, return_tensors="pt")
        if self.max_length is not None:
            text_kwargs.update(truncation=True, max_length=self.max_length)
        batch = dict(self.processor.tokenizer(texts, **text_kwargs))
        if "pixel_values" in rows[0]:
            batch["pixel_values"] = torch.stack([torch.as_tensor(np.asarray(row["pixel_values"]), dtype=torch.float32)
                                                 for row in rows])
        else:
            images = [row[self.image_column] for row in rows]
            pixels = self.processor.image_processor(images, return_tensors="pt")
            # a video processor (StormVideoProcessor, for a STORM tower) names its output pixel_values_videos
            key = "pixel_values" if "pixel_values" in pixels else "pixel_values_videos"
            batch["pixel_values"] = pixels[key]
        batch["return_loss"] = True
        return batch


# ---------------------------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------------------------
def load_retrieval_metric():
    """The local ``evaluate`` retrieval module (recall@k, mean / median rank), loaded by path (no network)."""
    import evaluate

    return evaluate.load(str(RETRIEVAL_METRIC_PATH))


@torch.no_grad()
def embed_dataset(model, processor, dataset, image_column: str = "image", text_column: str = "caption",
                  batch_size: int = 128):
    """(image_embeds, text_embeds), each (len(dataset), projection_dim), L2-normalised, in row order."""
    model.eval()
    device = next(model.parameters()).device
    collate = DualEncoderCollator(processor, image_column, text_column)
    images, texts = [], []
    for start in range(0, len(dataset), batch_size):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
        batch = collate([rows[i] for i in range(len(rows))])
        images.append(model.get_image_features(batch["pixel_values"].to(device)).cpu())
        text_inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask",
                                                                             "token_type_ids")}
        texts.append(model.get_text_features(**text_inputs).cpu())
    return torch.cat(images), torch.cat(texts)


def evaluate_retrieval(model, processor, dataset, k: Sequence[int] = (1, 5), image_column: str = "image",
                       text_column: str = "caption", batch_size: int = 128) -> Dict[str, float]:
    """Retrieval over ``dataset`` (one caption per image, captions distinct -- the shapes test split guarantees it):
    every image ranks all captions (``image_to_text_recall@k``, ``image_to_text_mean_rank``) and every caption ranks
    all images (``text_to_image_...``), by cosine similarity of the embeddings (the order of the model's logits, which
    only scale and shift it). Computed by the local evaluate module ``training/metrics/retrieval.py``."""
    image_embeds, text_embeds = embed_dataset(model, processor, dataset, image_column, text_column, batch_size)
    similarity = (image_embeds @ text_embeds.t()).double().numpy()  # (n_images, n_captions)
    references = list(range(similarity.shape[0]))
    metric = load_retrieval_metric()
    results = {"num_queries": len(references)}
    for name, scores in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        out = metric.compute(predictions=scores.tolist(), references=references, k=tuple(k))
        results.update({f"{name}_{key}": float(value) for key, value in out.items()})
    return results


# ---------------------------------------------------------------------------------------------------------------------
# recipe
# ---------------------------------------------------------------------------------------------------------------------
def train_dual_encoder(model_or_config, train_ds, processor, out_dir: Union[str, Path], eval_ds=None,
                       epochs: float = 1.0, max_steps: int = -1, lr: float = 1e-3, batch_size: int = 64,
                       warmup_ratio: float = 0.1, weight_decay: float = 0.0, logging_steps: int = 10, seed: int = 0,
                       save: bool = True, save_strategy: str = "no", image_column: str = "image",
                       text_column: str = "caption", max_length: Optional[int] = None, evaluate_before: bool = False,
                       **training_kwargs) -> RecipeResult:
    """Trains a ``SigLipDualEncoderModel`` (a model, or a ``SigLipDualEncoderConfig`` for fresh weights) with Trainer
    on ``train_ds`` rows of (image, caption), with the model's loss (``config.loss_type``). Metrics: parameter counts
    (frozen towers are not trainable), ``train_seconds``, ``train_loss`` (mean over the run), ``global_step``,
    ``final_loss`` (the last logged loss), and with ``eval_ds`` the ``evaluate_retrieval`` figures (prefixed
    ``before_`` for the untrained model when ``evaluate_before``). The model and processor go to ``out_dir`` (with
    ``auto_map``: loadable without ssmvl). Checkpoints (``save_strategy``, default none) go to
    ``out_dir/checkpoints``."""
    from transformers import Trainer, set_seed

    from ..modeling.configuration_dual_encoder import SigLipDualEncoderConfig
    from ..modeling.modeling_dual_encoder import SigLipDualEncoderModel

    set_seed(seed)
    out_dir = Path(out_dir)
    if isinstance(model_or_config, SigLipDualEncoderConfig):
        model = SigLipDualEncoderModel(model_or_config)
    elif isinstance(model_or_config, torch.nn.Module):
        model = model_or_config
    else:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(model_or_config), trust_remote_code=True)
    metrics = RecipeResult(count_parameters(model))
    if evaluate_before and eval_ds is not None:
        metrics.update({f"before_{k}": v for k, v in evaluate_retrieval(model, processor, eval_ds).items()})
    args = training_arguments(
        out_dir / "checkpoints", epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, eval_strategy="no",
        save_strategy=save_strategy, warmup_ratio=warmup_ratio, weight_decay=weight_decay,
        logging_steps=logging_steps, seed=seed, remove_unused_columns=False, label_names=[], **training_kwargs,
    )
    collator = DualEncoderCollator(processor, image_column, text_column, max_length)
    trainer = Trainer(model=prepare_for_fsdp(model), args=args, train_dataset=train_ds, data_collator=collator)
    start = time.time()
    train_out = trainer.train()
    metrics["train_seconds"] = time.time() - start
    metrics["train_loss"] = train_out.training_loss
    metrics["global_step"] = train_out.global_step
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if losses:
        metrics["first_logged_loss"], metrics["final_loss"] = losses[0], losses[-1]
    if eval_ds is not None:
        metrics.update(evaluate_retrieval(trainer.model, processor, eval_ds))
    return finish_recipe(metrics, trainer, out_dir, processor, save)


__all__ = [
    "RETRIEVAL_METRIC_PATH", "shapes_image_processor", "shapes_dual_encoder_processor", "DualEncoderCollator",
    "load_retrieval_metric", "embed_dataset", "evaluate_retrieval", "train_dual_encoder",
]
