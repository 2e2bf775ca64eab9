"""Configuration of the SigLIP-style dual encoder: any vision tower + any text tower, each projected to a shared
embedding space, trained with the pairwise sigmoid loss (Zhai et al. 2023, "Sigmoid Loss for Language Image
Pre-Training") or CLIP's softmax loss (Radford et al. 2021)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Union

from transformers import AutoConfig, PretrainedConfig

from .config_checks import check_int, check_number
from .configuration_mamba_lm import MambaLMConfig
from .configuration_storm import StormConfig
from .configuration_vim import VimConfig
from .configuration_vmamba import VMambaConfig

if TYPE_CHECKING:  # never runs: names every sibling file for transformers 5.0's remote-code copy (see hf_compat.py)
    from .configuration_ssm_vlm import SsmVlmConfig  # noqa: F401
    from .hf_compat import CACHE_NAME  # noqa: F401
    from .ssm_layers import MambaMixer  # noqa: F401
    from .ssm_ops import resolve_backend  # noqa: F401
    from .ssm_triton import selective_scan_triton  # noqa: F401
    from .vlm_bridge import BridgeVisionConfig  # noqa: F401

# ssmvl's own tower configs, by model_type. Built from the sibling classes (not through AutoConfig), because as remote
# code these files run where ssmvl is not installed and its model types are not registered with AutoConfig.
SSMVL_TOWER_CONFIGS = {
    VimConfig.model_type: VimConfig,
    VMambaConfig.model_type: VMambaConfig,
    StormConfig.model_type: StormConfig,
    MambaLMConfig.model_type: MambaLMConfig,
}
VIDEO_TOWER_TYPES = (StormConfig.model_type,)  # towers that take videos (batch, frames, C, H, W)
LOSS_TYPES = ("sigmoid", "softmax")
TEXT_POOLING = ("cls", "mean", "last_token")
VISION_POOLING = ("pooler", "cls", "mean")
# model types of causal text towers: their natural sentence summary is the last real token
_CAUSAL_TEXT_TYPES = frozenset({MambaLMConfig.model_type, "mamba", "mamba2", "gpt2", "llama", "qwen2", "mistral"})


def tower_config(value: Union[None, dict, PretrainedConfig], name: str, default_type: str) -> PretrainedConfig:
    """A tower config from a config (kept as is), a dict (built by its ``model_type``: ssmvl's own types from their
    classes, any other through ``AutoConfig.for_model``) or None (the default type with default values)."""
    if isinstance(value, PretrainedConfig):
        return value
    if value is None:
        value = {"model_type": default_type}
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a PretrainedConfig, a dict or None, got {type(value).__name__}")
    kwargs = dict(value)
    model_type = kwargs.pop("model_type", None)
    if not model_type:
        raise ValueError(f"{name} needs a 'model_type' (e.g. 'vit', 'siglip_vision_model', 'bert', 'ssmvl_vim', "
                         f"'ssmvl_mamba') to know which config to build; got keys {sorted(kwargs)}")
    if model_type in SSMVL_TOWER_CONFIGS:
        return SSMVL_TOWER_CONFIGS[model_type](**kwargs)
    try:
        return AutoConfig.for_model(model_type, **kwargs)
    except ValueError as err:
        raise ValueError(f"{name}: unknown model_type {model_type!r} ({err})") from None


def tower_width(config: PretrainedConfig) -> int:
    """Width of a tower's pooled feature: ``num_features`` (VMamba: the last stage) or ``hidden_size``."""
    for name in ("num_features", "hidden_size"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise ValueError(f"Cannot tell the feature width of a {type(config).__name__} (no hidden_size / num_features)")


class SigLipDualEncoderConfig(PretrainedConfig):
    r"""
    Configuration of a [`SigLipDualEncoderModel`]: a vision tower and a text tower (nested sub-configs, as in
    transformers' `SiglipConfig` / `LlavaConfig`), linear projections of their pooled features to `projection_dim`,
    L2-normalised embeddings, and a learned temperature and bias on the cosine similarities.

    Args:
        vision_config (`dict` or `PretrainedConfig`, *optional*): the vision tower. A transformers vision encoder
            (`"vit"`, `"siglip_vision_model"`, `"clip_vision_model"`, `"dinov2"`, ... built with
            `AutoModel.from_config`) or ssmvl's `"ssmvl_vim"` / `"ssmvl_vmamba"` (built from the sibling modeling files,
            so a saved model loads without ssmvl). A dict is turned into a config by its `model_type`. Default: Vim-tiny
            (`VimConfig()`). ssmvl's STORM (`"ssmvl_storm"`) makes it a video-text dual encoder: the "images" are then
            videos, `pixel_values` (or `pixel_values_videos`) of shape (batch, frames, C, H, W), pooled by STORM's
            `pooler_output` (the mean of its kept tokens and memory).
        text_config (`dict` or `PretrainedConfig`, *optional*): the text tower. A transformers encoder (`"bert"` --
            MiniLM is a BERT --, `"roberta"`, `"siglip_text_model"`, ...) or ssmvl's Mamba LM (`"ssmvl_mamba"`, its
            `MambaLMModel` backbone). Default: `MambaLMConfig()`.
        projection_dim (`int`, defaults to 512): width of the shared embedding space; each tower's pooled feature goes
            through a bias-free Linear to this width, then is L2-normalised.
        loss_type (`str`, defaults to `"sigmoid"`): `"sigmoid"` -- SigLIP's pairwise sigmoid loss (every image-text
            pair is an independent binary classification, labels +1 on the diagonal and -1 elsewhere); `"softmax"` --
            CLIP's symmetric cross-entropy over the rows and columns of the similarity matrix.
        logit_scale_init (`float`, *optional*): initial value of the learned log-temperature t' (logits use
            `exp(t')`). Default: `log(10)` for the sigmoid loss (the SigLIP paper's t' = log 10), `log(1 / 0.07)` for
            the softmax loss (CLIP).
        logit_bias_init (`float`, *optional*): initial value of the learned bias b added to every logit. Default: -10
            for the sigmoid loss (the SigLIP paper; it keeps the many negative pairs from dominating the first steps),
            0 for the softmax loss (where a bias cancels out).
        text_pooling (`str`, *optional*): how the text tower's `last_hidden_state` becomes one vector. `"cls"`: the
            first token (BERT's [CLS]); `"mean"`: the mean over real tokens (the `attention_mask`; what
            sentence-transformers' all-MiniLM-L6-v2 was trained with); `"last_token"`: the last real token, found from
            the `attention_mask` so that left and right padding give the same result (for causal towers such as the
            Mamba LM, where only the last token has read the whole text). Default: `"last_token"` for causal towers
            (`ssmvl_mamba`, GPT-2 / Llama style), else `"mean"`.
        vision_pooling (`str`, defaults to `"pooler"`): how the vision tower's output becomes one vector.
            `"pooler"`: the tower's own `pooler_output` (ViT: tanh dense on [CLS]; SigLIP: attention-pooling head; CLIP:
            post-LayerNorm [CLS]; Vim: per its `final_pool_type`; VMamba: spatial mean); `"cls"`: the first token of
            `last_hidden_state` (Vim: the cls token wherever it sits); `"mean"`: the mean over all tokens / positions.
        freeze_text_tower (`bool`, defaults to False): the text tower's parameters get `requires_grad=False`, it runs
            under `torch.no_grad()` and stays in eval mode (no dropout) when the model is put in training mode -- e.g.
            a pretrained sentence encoder with only the projection trained (LiT-style "locked" tower).
        freeze_vision_tower (`bool`, defaults to False): the same for the vision tower (LiT: locked image tower).
        initializer_range (`float`, *optional*): std of the normal init of the projections; default
            `width ** -0.5` of each projection's input (as CLIP's `text_projection` / `visual_projection`).
    """

    model_type = "ssmvl_dual_encoder"

    def __init__(
        self,
        vision_config: Union[None, dict, PretrainedConfig] = None,
        text_config: Union[None, dict, PretrainedConfig] = None,
        projection_dim: int = 512,
        loss_type: str = "sigmoid",
        logit_scale_init: Optional[float] = None,
        logit_bias_init: Optional[float] = None,
        text_pooling: Optional[str] = None,
        vision_pooling: str = "pooler",
        freeze_text_tower: bool = False,
        freeze_vision_tower: bool = False,
        initializer_range: Optional[float] = None,
        **kwargs,
    ):
        self.vision_config = tower_config(vision_config, "vision_config", VimConfig.model_type)
        self.text_config = tower_config(text_config, "text_config", MambaLMConfig.model_type)
        self.projection_dim = projection_dim
        self.loss_type = loss_type
        sigmoid = loss_type == "sigmoid"
        self.logit_scale_init = check_number(
            "SigLipDualEncoderConfig", "logit_scale_init",
            logit_scale_init if logit_scale_init is not None else (math.log(10.0) if sigmoid else math.log(1 / 0.07)))
        self.logit_bias_init = check_number(
            "SigLipDualEncoderConfig", "logit_bias_init",
            logit_bias_init if logit_bias_init is not None else (-10.0 if sigmoid else 0.0))
        if text_pooling is None:
            text_pooling = "last_token" if self.text_config.model_type in _CAUSAL_TEXT_TYPES else "mean"
        self.text_pooling = text_pooling
        self.vision_pooling = vision_pooling
        self.freeze_text_tower = freeze_text_tower
        self.freeze_vision_tower = freeze_vision_tower
        self.initializer_range = initializer_range
        self._validate()
        super().__init__(**kwargs)

    def _validate(self):
        check_int("SigLipDualEncoderConfig", "projection_dim", self.projection_dim)
        if self.initializer_range is not None:
            check_number("SigLipDualEncoderConfig", "initializer_range", self.initializer_range, low=0.0)
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"SigLipDualEncoderConfig.loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.text_pooling not in TEXT_POOLING:
            raise ValueError(f"SigLipDualEncoderConfig.text_pooling must be one of {TEXT_POOLING}, got "
                             f"{self.text_pooling!r}")
        if self.vision_pooling not in VISION_POOLING:
            raise ValueError(f"SigLipDualEncoderConfig.vision_pooling must be one of {VISION_POOLING}, got "
                             f"{self.vision_pooling!r}")
        if self.vision_pooling == "cls" and self.vision_config.model_type == VMambaConfig.model_type:
            raise ValueError("vision_pooling='cls' needs a tower with a cls token; VMamba has none: use 'pooler' or "
                             "'mean'.")
        tower_width(self.vision_config)
        tower_width(self.text_config)

    def to_dict(self):
        """As every config, with the towers as nested dicts that keep their `model_type` (how they are rebuilt)."""
        output = super().to_dict()
        for key in ("vision_config", "text_config"):
            sub = getattr(self, key)
            output[key] = sub.to_dict()
            output[key]["model_type"] = sub.model_type
        return output

    def to_diff_dict(self):
        """Saved config.json: each tower is written in full (its own `to_diff_dict` against its own defaults plus
        `model_type`), never diffed against the *default* tower, which may be of another type."""
        output = super().to_diff_dict()
        for key in ("vision_config", "text_config"):
            sub = getattr(self, key)
            output[key] = sub.to_diff_dict()
            output[key]["model_type"] = sub.model_type
        return output


__all__ = ["SigLipDualEncoderConfig", "SSMVL_TOWER_CONFIGS", "VIDEO_TOWER_TYPES", "tower_config", "tower_width"]
