"""Trainer + PEFT LoRA recipes.

``train_causal_lm`` and ``train_image_classifier`` wrap ``transformers.Trainer`` / ``TrainingArguments`` (no
reporting integrations, progress bars on, safetensors checkpoints, ``use_cpu`` when there is no CUDA device, accuracy
from the local ``evaluate`` module ``training/metrics/accuracy.py``), optionally with LoRA (``peft.get_peft_model``),
resume from a checkpoint (``resume_from_checkpoint``: a path or True for the last one), and save the result so that
``AutoModel*.from_pretrained(out_dir, trust_remote_code=True)`` loads it with transformers alone. A LoRA run saves the
merged model in ``out_dir`` and the adapter alone in ``out_dir/adapter``.

Each recipe returns a ``RecipeResult``: a dict of metrics that also carries ``.model`` (the trained model; the merged
one after LoRA) and ``.trainer``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from .distributed import prepare_for_fsdp
from .lora import count_parameters, is_image_classifier, lora_config_for

ACCURACY_METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "accuracy.py"
ADAPTER_SUBDIR = "adapter"


class RecipeResult(dict):
    """Metrics (a plain dict) plus ``.model``, ``.trainer`` and ``.output_dir``."""

    model: Any = None
    trainer: Any = None
    output_dir: Optional[str] = None


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------
def configure_cpu_threads(num_threads: Optional[int] = None) -> int:
    """Sets torch's intra-op threads on a CPU run. ``num_threads`` > env ``SSMVL_NUM_THREADS`` > a choice from the
    load: the scans are chains of small in-place ops, and with more threads than idle cores they slow down several
    times (OpenMP threads wait for each other), so only idle cores are used (at least one)."""
    if torch.cuda.is_available():
        return torch.get_num_threads()
    if num_threads is None and os.environ.get("SSMVL_NUM_THREADS"):
        num_threads = int(os.environ["SSMVL_NUM_THREADS"])
    if num_threads is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        try:
            busy = os.getloadavg()[0]
        except OSError:
            busy = 0.0
        num_threads = max(1, min(cpus, int(round(cpus - busy + 0.49))))
    torch.set_num_threads(num_threads)
    return num_threads


def load_accuracy_metric():
    """The local ``evaluate`` accuracy module, loaded by path (no network)."""
    import evaluate

    return evaluate.load(str(ACCURACY_METRIC_PATH))


def _accuracy_fn():
    metric = load_accuracy_metric()

    def compute_metrics(eval_pred):
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        return metric.compute(predictions=np.argmax(logits, axis=-1), references=labels)

    return compute_metrics


def training_arguments(output_dir: Union[str, Path], epochs: float = 1.0, lr: float = 1e-3, batch_size: int = 32,
                       max_steps: int = -1, eval_strategy: str = "epoch", save_strategy: str = "epoch",
                       save_steps: Optional[int] = None, logging_steps: int = 10, warmup_ratio: float = 0.0,
                       weight_decay: float = 0.0, lr_scheduler_type: str = "cosine", seed: int = 0,
                       save_total_limit: Optional[int] = 1, eval_batch_size: Optional[int] = None,
                       bf16: bool = False, **extra):
    """``TrainingArguments`` with the recipe defaults: no reporting integrations, progress bars on, safetensors,
    ``use_cpu`` without CUDA, checkpoints every epoch (keeping ``save_total_limit``). ``bf16``: bfloat16 mixed
    precision (Trainer's ``bf16=True``: the forward and backward under ``torch.autocast(bfloat16)``, weights, optimizer
    states and the SSM state in float32), on a GPU with bfloat16 (Ampere or newer) or on the CPU."""
    from transformers import TrainingArguments

    if bf16 and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ValueError(f"bf16=True needs a GPU with bfloat16 support (Ampere or newer); "
                         f"{torch.cuda.get_device_name(0)} has none. Train in float32 (bf16=False) instead.")

    kwargs = dict(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        max_steps=max_steps,
        learning_rate=lr,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size or max(batch_size, 64),
        eval_strategy=eval_strategy,
        save_strategy=save_strategy,
        logging_strategy="steps",
        logging_steps=logging_steps,
        warmup_steps=warmup_ratio,  # a float < 1 is a ratio of the total steps in transformers 5
        weight_decay=weight_decay,
        lr_scheduler_type=lr_scheduler_type,
        seed=seed,
        data_seed=seed,
        save_total_limit=save_total_limit,
        report_to="none",
        disable_tqdm=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        label_names=["labels"],
        bf16=bool(bf16),
    )
    if save_steps is not None:
        kwargs["save_steps"] = save_steps
    if isinstance(warmup_ratio, float) and 0 < warmup_ratio < 1 and not _accepts_float_warmup_steps():
        kwargs.pop("warmup_steps")
        kwargs["warmup_ratio"] = warmup_ratio
    kwargs.update(extra)
    if "save_safetensors" in _training_argument_names():  # transformers 4: make it explicit
        kwargs.setdefault("save_safetensors", True)
    return TrainingArguments(**kwargs)


def _training_argument_names():
    import inspect

    from transformers import TrainingArguments

    return set(inspect.signature(TrainingArguments).parameters)


def _accepts_float_warmup_steps() -> bool:
    import transformers

    return int(transformers.__version__.split(".")[0]) >= 5


def _load_model(model_or_config, auto_class):
    """A model instance from a model, a config (fresh weights) or a path / repo id (trust_remote_code)."""
    from transformers import PretrainedConfig

    if isinstance(model_or_config, torch.nn.Module):
        return model_or_config
    if isinstance(model_or_config, PretrainedConfig):
        # A config of a registered (installed) class builds that class. auto_class.from_config would follow the
        # config's `auto_map` instead once it has one (set by save_pretrained), which transformers 5.0 resolves as
        # remote code from `name_or_path` (empty for a config made in memory).
        model_class = auto_class._model_mapping.get(type(model_or_config), None)
        if model_class is not None:
            return model_class(model_or_config)
        return auto_class.from_config(model_or_config, trust_remote_code=True)
    return auto_class.from_pretrained(str(model_or_config), trust_remote_code=True)


def apply_lora(model, lora):
    """lora: False/None (unchanged), True (family preset, ``lora_config_for``), or a ``peft.LoraConfig``."""
    if not lora:
        return model
    from peft import get_peft_model

    config = lora_config_for(model) if lora is True else lora
    return get_peft_model(model, config)


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def merge_and_unload(model):
    """Folds LoRA weights into the base weights and returns the plain transformers model (with the trained copies of
    ``modules_to_save``). A model without adapters is returned as is. The PEFT wrapper is consumed."""
    if is_peft_model(model):
        return model.merge_and_unload()
    return model


def finish_recipe(metrics, trainer, out_dir: Union[str, Path], processor=None, save: bool = True):
    """The common end of a recipe: ``metrics.trainer`` / ``.model`` set, and with ``save`` the model (merged when it
    has LoRA adapters) and its processor saved to ``out_dir`` (``save_trained``); returns ``metrics``."""
    metrics.trainer = trainer
    metrics.model = trainer.model
    if save:
        metrics.model = save_trained(trainer.model, out_dir, processor=processor)
        metrics.output_dir = str(out_dir)
    return metrics


def save_trained(model, out_dir: Union[str, Path], processor=None, adapter_subdir: str = ADAPTER_SUBDIR):
    """Saves so that ``out_dir`` loads with ``trust_remote_code=True`` and without ssmvl: the model (merged if it has
    LoRA adapters; the adapter alone goes to ``out_dir/adapter`` first) plus its tokenizer / image processor.
    Returns the saved (merged) model.

    In a multi-process run every process calls it (as every process runs the recipe): each merges its own replica,
    only the main process writes, and all wait for it. An FSDP-sharded model is gathered first (a collective); with
    LoRA under FSDP only the adapter is written (merge it where the whole model fits: ``PeftModel.from_pretrained(base,
    out_dir / "adapter").merge_and_unload()``)."""
    from .distributed import barrier, full_state_dict, is_fsdp_model, is_main_process, original_class

    out_dir = Path(out_dir)
    main = is_main_process()
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if is_fsdp_model(model):
        state_dict = full_state_dict(model)  # every rank: the gather is a collective
        if main:
            if is_peft_model(model):
                model.save_pretrained(str(out_dir / adapter_subdir), state_dict=state_dict)
                print(f"[ssmvl] FSDP + LoRA: adapter saved to {out_dir / adapter_subdir}; merge it where the whole "
                      f"model fits (PeftModel.from_pretrained(base, adapter_dir).merge_and_unload())")
            else:
                with original_class(model):  # config.architectures and the copied code name our class
                    model.save_pretrained(str(out_dir), state_dict=state_dict)
            if processor is not None:
                processor.save_pretrained(str(out_dir))
        barrier()
        return model
    if is_peft_model(model):
        adapter_dir = out_dir / adapter_subdir
        if main:
            model.save_pretrained(str(adapter_dir))
            if processor is not None:
                processor.save_pretrained(str(adapter_dir))
        model = merge_and_unload(model)
    if main:
        model.save_pretrained(str(out_dir))
        if processor is not None:
            processor.save_pretrained(str(out_dir))
    barrier()
    return model


CHECKPOINT_COMPLETE_MARKER = "trainer_state.json"  # what Trainer._save_checkpoint writes last


def checkpoint_problem(checkpoint: Union[str, Path]) -> Optional[str]:
    """None for a complete Trainer checkpoint, else what is missing. Trainer (transformers 5.0 to 5.24,
    ``Trainer._save_checkpoint``) writes into ``checkpoint-N`` directly, with no temporary folder: the model
    (``save_model``), then optimizer / scheduler / RNG states, then ``trainer_state.json``, and only then deletes
    older checkpoints (``rotate_checkpoints``). A process killed while saving leaves ``checkpoint-N`` without a
    readable ``trainer_state.json`` and keeps the previous checkpoint."""
    import json

    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        return "not a folder"
    state = checkpoint / CHECKPOINT_COMPLETE_MARKER
    if not state.is_file():
        return f"no {CHECKPOINT_COMPLETE_MARKER} (Trainer writes it last: the save was interrupted)"
    try:
        json.loads(state.read_text())
    except (ValueError, OSError) as exc:
        return f"{CHECKPOINT_COMPLETE_MARKER} is unreadable ({exc}; the save was interrupted)"
    if not any(checkpoint.glob("*.safetensors")) and not any(checkpoint.glob("pytorch_model_fsdp*")):
        return "no model weights (*.safetensors)"
    return None


def last_complete_checkpoint(checkpoint_dir: Union[str, Path]) -> Optional[str]:
    """The ``checkpoint-N`` in ``checkpoint_dir`` with the largest N that is complete (``checkpoint_problem``); the
    incomplete ones after it are named on stdout and left in place (a run that reaches step N again overwrites
    them)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    steps = []
    for path in checkpoint_dir.iterdir():
        name = path.name
        if path.is_dir() and name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") and name.split("-", 1)[1].isdigit():
            steps.append((int(name.split("-", 1)[1]), path))
    for _, path in sorted(steps, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        print(f"[ssmvl] skipping incomplete checkpoint {path}: {problem}. Left in place; delete it yourself or let "
              f"the resumed run overwrite it when it saves that step again")
    return None


def _resolve_resume(resume_from_checkpoint, checkpoint_dir: Path):
    """True / "last" -> the last complete checkpoint in checkpoint_dir (incomplete ones are skipped with a message;
    None with a message when there is none); a path -> itself, checked to be complete."""
    if resume_from_checkpoint in (None, False):
        return None
    if resume_from_checkpoint is True or resume_from_checkpoint == "last":
        last = last_complete_checkpoint(checkpoint_dir)
        if last is None:
            print(f"[ssmvl] no complete checkpoint in {checkpoint_dir} to resume from; training from the start")
        else:
            print(f"[ssmvl] resuming from {last}")
        return last
    problem = checkpoint_problem(resume_from_checkpoint)
    if problem is not None:
        parent = Path(resume_from_checkpoint).parent
        raise ValueError(f"cannot resume from {resume_from_checkpoint}: {problem}. Resume from the last complete "
                         f"checkpoint instead (--resume with no value, or resume_from_checkpoint=True, picks it from "
                         f"{parent}: {last_complete_checkpoint(parent) or 'none there'})")
    print(f"[ssmvl] resuming from {resume_from_checkpoint}")
    return str(resume_from_checkpoint)


def _label_maps(train_ds, config):
    """Fills id2label / label2id from a ClassLabel ``label`` feature when the config still has the defaults."""
    feature = getattr(train_ds, "features", {}).get("label") if hasattr(train_ds, "features") else None
    names = getattr(feature, "names", None)
    if not names:
        return
    config.id2label = {i: n for i, n in enumerate(names)}
    config.label2id = {n: i for i, n in enumerate(names)}


# ---------------------------------------------------------------------------------------------------------------------
# evaluation helpers (plain loops: used for the merged models, outside a Trainer)
# ---------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_image_classifier(model, dataset, batch_size: int = 256) -> Dict[str, float]:
    """Accuracy (local evaluate module) of ``model`` on a dataset with ``pixel_values`` / ``label`` columns."""
    model.eval()
    metric = load_accuracy_metric()
    device = next(model.parameters()).device
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start: start + batch_size]
        logits = model(pixel_values=torch.as_tensor(batch["pixel_values"]).to(device)).logits
        metric.add_batch(predictions=logits.argmax(-1).cpu().numpy(), references=np.asarray(batch["label"]))
    return metric.compute()


@torch.no_grad()
def evaluate_perplexity(model, dataset, batch_size: int = 16) -> float:
    """exp(mean token cross-entropy) over a dataset of ``input_ids`` blocks."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        ids = torch.as_tensor(dataset[start: start + batch_size]["input_ids"]).to(device)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        n = ids[:, 1:].numel()
        total += float(loss) * n
        count += n
    return math.exp(total / max(count, 1))


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 40, seed: int = 0, **kwargs) -> str:
    """Sampled continuation of ``prompt`` (top-k 40, temperature 0.8 unless overridden)."""
    model.eval()
    torch.manual_seed(seed)
    inputs = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
    gen = dict(max_new_tokens=max_new_tokens, do_sample=True, top_k=40, temperature=0.8,
               pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    gen.update(kwargs)
    with torch.no_grad():
        out = model.generate(input_ids=inputs["input_ids"], **gen)
    return tokenizer.decode(out[0], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------------------------------
# recipes
# ---------------------------------------------------------------------------------------------------------------------
def train_causal_lm(model_or_config, train_ds, eval_ds, out_dir: Union[str, Path], tokenizer=None,
                    epochs: float = 1.0, max_steps: int = -1, lr: float = 3e-3, batch_size: int = 16,
                    lora=False, resume_from_checkpoint=None, checkpoint_dir: Optional[Union[str, Path]] = None,
                    save_steps: Optional[int] = None, warmup_ratio: float = 0.05, weight_decay: float = 0.01,
                    logging_steps: int = 20, seed: int = 0, save: bool = True, evaluate_before: bool = True,
                    **training_kwargs) -> RecipeResult:
    """Causal LM training with Trainer (+ LoRA). Metrics: ``perplexity_before`` / ``perplexity`` (exp of the eval
    loss at the start of training, i.e. of the checkpoint's weights when resuming / at the end), ``train_loss``,
    ``eval_loss``, parameter counts, ``train_seconds`` (without the first evaluation). ``checkpoint_dir``
    (default ``out_dir/checkpoints``) holds the Trainer checkpoints (every ``save_steps`` steps when given, else per
    epoch); the final model (merged when LoRA) goes to ``out_dir`` with the tokenizer."""
    from transformers import AutoModelForCausalLM, Trainer, default_data_collator, set_seed

    set_seed(seed)
    out_dir = Path(out_dir)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / "checkpoints"
    model = apply_lora(_load_model(model_or_config, AutoModelForCausalLM), lora)
    params = count_parameters(model)
    # The evaluation before training runs inside train() (eval_on_start), after the model is wrapped: a
    # trainer.evaluate() before trainer.train() makes accelerate mark the bare model as prepared
    # (prepare_model(evaluation_mode=True)), and train() then skips the DistributedDataParallel wrap, so under DDP
    # every process would train its own copy with no gradient sync, silently (transformers 5.0 / 5.24, accelerate 1.15;
    # tests/test_distributed.py).
    before = bool(evaluate_before and eval_ds is not None)
    args = training_arguments(
        checkpoint_dir, epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size,
        eval_on_start=training_kwargs.pop("eval_on_start", before),
        eval_strategy=training_kwargs.pop("eval_strategy", "no"),
        save_strategy=training_kwargs.pop("save_strategy", "steps" if save_steps else "epoch"), save_steps=save_steps,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay, logging_steps=logging_steps, seed=seed, **training_kwargs,
    )
    trainer = Trainer(model=prepare_for_fsdp(model), args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      data_collator=default_data_collator, processing_class=tokenizer)
    metrics = RecipeResult(params)
    start = time.time()
    train_out = trainer.train(resume_from_checkpoint=_resolve_resume(resume_from_checkpoint, checkpoint_dir))
    metrics["train_seconds"] = time.time() - start
    if before:
        first = next(entry for entry in trainer.state.log_history if "eval_loss" in entry)
        metrics["perplexity_before"] = math.exp(first["eval_loss"])
        metrics["train_seconds"] -= first.get("eval_runtime", 0.0)
    metrics["train_loss"] = train_out.training_loss
    metrics["global_step"] = train_out.global_step
    if eval_ds is not None:
        eval_loss = trainer.evaluate()["eval_loss"]
        metrics["eval_loss"] = eval_loss
        metrics["perplexity"] = math.exp(eval_loss)
    return finish_recipe(metrics, trainer, out_dir, tokenizer, save)


def train_image_classifier(model_or_config, train_ds, eval_ds, out_dir: Union[str, Path], epochs: float = 10,
                           lr: float = 2e-3, batch_size: int = 64, lora=False, resume_from_checkpoint=None,
                           image_processor=None, checkpoint_dir: Optional[Union[str, Path]] = None,
                           warmup_ratio: float = 0.1, weight_decay: float = 0.05, logging_steps: int = 10,
                           seed: int = 0, save: bool = True, eval_each_epoch: bool = False, max_steps: int = -1,
                           save_steps: Optional[int] = None, callbacks=None, **training_kwargs) -> RecipeResult:
    """Image classification with Trainer (+ LoRA). ``train_ds`` / ``eval_ds``: ``pixel_values`` and ``label``
    columns (``data.build_digits_dataset``). Metrics: ``eval_accuracy`` (local evaluate module), ``eval_loss``,
    ``train_loss``, parameter counts (trainable % for LoRA), ``train_seconds``; after LoRA also
    ``merged_eval_accuracy`` (the merged model, re-evaluated). Trainer checkpoints go to ``checkpoint_dir`` (default
    ``out_dir/checkpoints``) every ``save_steps`` steps when given, else per epoch (``save_strategy`` overrides;
    ``callbacks``: extra ``TrainerCallback``s). The final model (merged when LoRA; the adapter in
    ``out_dir/adapter``) goes to ``out_dir`` with the image processor."""
    from transformers import AutoModelForImageClassification, Trainer, default_data_collator, set_seed

    set_seed(seed)
    out_dir = Path(out_dir)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / "checkpoints"
    model = _load_model(model_or_config, AutoModelForImageClassification)
    if not is_image_classifier(model):
        raise ValueError(f"{type(model).__name__} is not an image classification model")
    if not isinstance(model_or_config, (str, Path)) and not isinstance(model_or_config, torch.nn.Module):
        _label_maps(train_ds, model.config)
    model = apply_lora(model, lora)
    params = count_parameters(model)
    args = training_arguments(
        checkpoint_dir, epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size,
        eval_strategy=training_kwargs.pop("eval_strategy",
                                          "epoch" if eval_each_epoch and eval_ds is not None else "no"),
        save_strategy=training_kwargs.pop("save_strategy", "steps" if save_steps else "epoch"), save_steps=save_steps,
        warmup_ratio=warmup_ratio, weight_decay=weight_decay, logging_steps=logging_steps, seed=seed,
        **training_kwargs,
    )
    trainer = Trainer(model=prepare_for_fsdp(model), args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      data_collator=default_data_collator, compute_metrics=_accuracy_fn(),
                      processing_class=image_processor, callbacks=callbacks)
    start = time.time()
    train_out = trainer.train(resume_from_checkpoint=_resolve_resume(resume_from_checkpoint, checkpoint_dir))
    metrics = RecipeResult(params)
    metrics["train_seconds"] = time.time() - start
    metrics["train_loss"] = train_out.training_loss
    metrics["global_step"] = train_out.global_step
    if eval_ds is not None:
        ev = trainer.evaluate()
        metrics["eval_accuracy"] = ev["eval_accuracy"]
        metrics["eval_loss"] = ev["eval_loss"]
    metrics.trainer = trainer
    metrics.model = trainer.model
    if save:
        was_peft = is_peft_model(trainer.model)
        metrics.model = save_trained(trainer.model, out_dir, processor=image_processor)
        metrics.output_dir = str(out_dir)
        if was_peft and eval_ds is not None:
            metrics["merged_eval_accuracy"] = evaluate_image_classifier(metrics.model, eval_ds)["accuracy"]
    return metrics


__all__ = [
    "RecipeResult", "configure_cpu_threads", "load_accuracy_metric", "training_arguments", "apply_lora",
    "merge_and_unload", "save_trained", "evaluate_image_classifier", "evaluate_perplexity", "generate_text",
    "train_causal_lm", "train_image_classifier", "is_peft_model", "ACCURACY_METRIC_PATH", "checkpoint_problem",
    "last_complete_checkpoint",
]
