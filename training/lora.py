"""PEFT LoRA presets per model family, as data.

The targets name the SSM projections of each family so that LoRA really trains the state-space part of the model:
``in_proj`` (input + gate), ``x_proj`` (input-dependent dt / B / C), ``dt_proj`` (dt up-projection) and ``out_proj``;
Vim's bidirectional mixer adds the backward branch twins ``x_proj_b`` / ``dt_proj_b``. PEFT matches a target against
the end of a module name, so ``"x_proj"`` does not catch ``x_proj_b`` (listed separately).

VMamba's SS2D has one ``x_proj.k`` / ``dt_projs.k`` Linear per scan direction k; PEFT's list form matches only name
endings, so its preset is the regex ``VMAMBA_LORA_TARGETS`` (in_proj, every x_proj.k and dt_projs.k, out_proj).

Image classifiers train their (new) head fully (``modules_to_save``); language models use ``task_type="CAUSAL_LM"``.

The VLM (``ssmvl_vlm``) preset is computed from the model: every Linear of the projector (and of the cross-attention
fusion) plus the decoder's own preset (the SSM projections of a Mamba decoder, the attention and MLP projections of a
transformers decoder); the vision tower is left alone (frozen by the recipe unless asked). Linears used through raw
weights (``nn.MultiheadAttention.out_proj``) are skipped, since an adapter there would never run.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch.nn as nn

from ..modeling.modeling_vmamba import VMAMBA_LORA_TARGETS

LORA_TARGETS: Dict[str, Union[List[str], str]] = {
    "ssmvl_mamba": ["in_proj", "x_proj", "dt_proj", "out_proj"],
    "ssmvl_vim": ["in_proj", "x_proj", "dt_proj", "out_proj", "x_proj_b", "dt_proj_b"],
    "ssmvl_vmamba": VMAMBA_LORA_TARGETS,  # a regex (PEFT full-matches it against module names)
    # transformers models used as stand-ins / towers
    "vit": ["query", "value"],
    "mamba": ["in_proj", "x_proj", "dt_proj", "out_proj"],
    # transformers decoders of the VLM
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
VLM_ADAPTED_PARTS = ("model.projector.", "fusion.")  # every (plain) Linear below these is adapted

# name of the classification head of each image classifier (trained fully next to the adapters)
CLASSIFIER_HEADS: Dict[str, str] = {
    "ssmvl_vim": "head",
    "ssmvl_vmamba": "classifier",
    "vit": "classifier",
}


def _model_type(model) -> str:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise ValueError(f"{type(model).__name__} has no config.model_type; pass target_modules explicitly.")
    return model_type


def is_causal_lm(model) -> bool:
    return type(model).__name__.endswith("ForCausalLM") or (hasattr(model, "generate")
                                                             and not is_image_classifier(model))


def is_image_classifier(model) -> bool:
    return type(model).__name__.endswith("ForImageClassification") or (
        getattr(model, "main_input_name", None) == "pixel_values" and hasattr(getattr(model, "config", None),
                                                                              "num_labels"))


def classifier_head_name(model) -> Optional[str]:
    """Attribute name of the classification head (``head`` for Vim, ``classifier`` for VMamba / ViT)."""
    name = CLASSIFIER_HEADS.get(getattr(getattr(model, "config", None), "model_type", None))
    if name is not None:
        return name
    for candidate in ("classifier", "head", "score"):
        if hasattr(model, candidate):
            return candidate
    return None


def vlm_lora_targets(model) -> List[str]:
    """Full module names for a VLM: plain Linears of the projector / fusion and the decoder's preset modules."""
    text_type = model.config.text_config.model_type
    suffixes = LORA_TARGETS.get(text_type)
    names = []
    for name, module in model.named_modules():
        if type(module) is not nn.Linear:  # subclasses such as MultiheadAttention's out_proj are used by weight
            continue
        if name.startswith(VLM_ADAPTED_PARTS):
            names.append(name)
        elif name.startswith("language_model.") and name != "language_model.lm_head":
            if suffixes is None or isinstance(suffixes, str) or name.rsplit(".", 1)[-1] in suffixes:
                names.append(name)
    return names


def lora_targets(model) -> Union[List[str], str]:
    """The family's preset: a list of module-name endings, or a regex string (VMamba)."""
    model_type = _model_type(model)
    if model_type == "ssmvl_vlm":
        return vlm_lora_targets(model)
    if model_type not in LORA_TARGETS:
        raise ValueError(f"No LoRA preset for model_type {model_type!r}; known: {sorted(LORA_TARGETS)}. "
                         "Pass target_modules=[...] explicitly.")
    targets = LORA_TARGETS[model_type]
    return targets if isinstance(targets, str) else list(targets)


def lora_config_for(model, r: int = 8, alpha: int = 16, dropout: float = 0.0,
                    modules_to_save: Optional[Sequence[str]] = None,
                    target_modules: Optional[Sequence[str]] = None, **kwargs):
    """A ``peft.LoraConfig`` for ``model`` from the family preset: ``task_type="CAUSAL_LM"`` for language models;
    for image classifiers the head (``head`` / ``classifier``) goes to ``modules_to_save`` unless given."""
    from peft import LoraConfig

    if target_modules is None:
        targets = lora_targets(model)
    else:
        targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    task_type = None
    if is_image_classifier(model):
        if modules_to_save is None:
            head = classifier_head_name(model)
            modules_to_save = [head] if head else None
    elif is_causal_lm(model):
        task_type = "CAUSAL_LM"
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
        modules_to_save=list(modules_to_save) if modules_to_save else None, task_type=task_type, **kwargs,
    )


def count_parameters(model) -> Dict[str, float]:
    """trainable / total parameter counts and the trainable percentage (what PEFT's print_trainable_parameters shows)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total,
            "trainable_percent": 100.0 * trainable / max(total, 1)}


def adapted_module_names(model) -> List[str]:
    """Names of the modules that carry a LoRA adapter (``lora_A`` child) in a PEFT model."""
    return sorted({name.rsplit(".lora_A", 1)[0] for name, _ in model.named_modules() if name.endswith(".lora_A")})


__all__ = ["LORA_TARGETS", "vlm_lora_targets", "CLASSIFIER_HEADS", "lora_config_for", "lora_targets", "classifier_head_name",
           "count_parameters", "adapted_module_names", "is_causal_lm", "is_image_classifier"]
