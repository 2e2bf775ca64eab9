"""SigLIP-style dual encoder: any vision tower + any text tower, projected to one embedding space and trained with the
pairwise sigmoid loss (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training", arXiv:2303.15343) or CLIP's
softmax loss (Radford et al. 2021).

    pixel_values (b_i, C, H, W) -> vision tower -> pool -> visual_projection -> L2 norm -> image_embeds (b_i, P)
    input_ids (b_t, L)         -> text tower   -> pool -> text_projection   -> L2 norm -> text_embeds  (b_t, P)
    logits_per_text = exp(t') * text_embeds @ image_embeds.T + b           (b_t, b_i); logits_per_image = its transpose

Towers: transformers encoders are built with ``AutoModel.from_config`` (ViT, SigLIP / CLIP vision, DINOv2, BERT /
MiniLM, ...; no code of ours); ssmvl's Vim / VMamba / STORM / Mamba LM come from the sibling modeling files, so
``save_pretrained`` copies them and the folder loads with ``trust_remote_code=True`` where ssmvl is not installed.
With STORM as the vision tower the "images" are videos, pixel_values (b_i, frames, C, H, W) (or pixel_values_videos).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, logging

from .configuration_dual_encoder import VIDEO_TOWER_TYPES, SigLipDualEncoderConfig, tower_width
from .configuration_mamba_lm import MambaLMConfig
from .configuration_storm import StormConfig
from .configuration_vim import VimConfig
from .configuration_vmamba import VMambaConfig
from .hf_compat import NamesReplacedFilesMixin, init, set_auto_map
from .modeling_mamba_lm import MambaLMModel
from .modeling_storm import StormModel
from .modeling_vim import VimModel
from .modeling_vmamba import VMambaModel
from .ssm_layers import check_pixel_values


if TYPE_CHECKING:  # never runs: names every sibling file for transformers 5.0's remote-code copy (see hf_compat.py)
    from .cuda_graphs import ForwardGraphs  # noqa: F401
    from .config_checks import check_int  # noqa: F401
    from .hf_compat import CACHE_NAME  # noqa: F401
    from .ssm_layers import MambaMixer  # noqa: F401
    from .ssm_ops import resolve_backend  # noqa: F401
    from .ssm_triton import selective_scan_triton  # noqa: F401
    from .configuration_ssm_vlm import SsmVlmConfig  # noqa: F401
    from .modeling_ssm_vlm import SsmVlmModel  # noqa: F401
    from .vlm_bridge import BridgeVisionConfig  # noqa: F401
    from .vlm_projectors import build_projector  # noqa: F401


logger = logging.get_logger(__name__)

# ssmvl's own towers, by model_type (the rest come from transformers' AutoModel)
SSMVL_TOWERS = {
    VimConfig.model_type: VimModel,
    VMambaConfig.model_type: VMambaModel,
    StormConfig.model_type: StormModel,
    MambaLMConfig.model_type: MambaLMModel,
}
# forward() arguments that callers pass to every model and that the dual encoder has no use for
_IGNORED_KWARGS = frozenset({"num_items_in_batch", "output_attentions"})


# ---------------------------------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------------------------------
def _check_square(logits: torch.Tensor, name: str):
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"{name} pairs image i with text i, so it needs a square (n_images, n_texts) logits matrix; "
                         f"got shape {tuple(logits.shape)}. Give as many texts as images, one caption per image.")


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss of SigLIP (Zhai et al. 2023, Algorithm 1; open_clip ``loss.py`` ``SigLipLoss``;
    big_vision ``trainers/proj/image_text/siglip.py``). Every image-text pair is its own binary classification:

        z_ij = +1 if i == j else -1                    (image i and text i are the positive pair)
        loss = -(1 / n) * sum_i sum_j log sigmoid(z_ij * logits_ij)

    with ``logits_ij = exp(t') * <x_i, y_j> + b`` and n the batch size (the paper's normalisation: a sum over all n^2
    pairs divided by n, not a mean over the pairs)."""

    def forward(self, logits_per_image: torch.Tensor) -> torch.Tensor:
        """logits_per_image: (n, n), row i = image i against every text. Returns a scalar."""
        _check_square(logits_per_image, "SigLipLoss")
        n = logits_per_image.shape[0]
        labels = 2 * torch.eye(n, device=logits_per_image.device, dtype=logits_per_image.dtype) - 1  # (n, n): +1 / -1
        return -F.logsigmoid(labels * logits_per_image.float()).sum() / n


class ClipLoss(nn.Module):
    """CLIP's symmetric InfoNCE (Radford et al. 2021; open_clip ``loss.py`` ``ClipLoss``): cross-entropy of each image
    over the texts and of each text over the images, the matching index being the target, averaged:

        loss = (CE(logits_per_image, arange(n)) + CE(logits_per_image.T, arange(n))) / 2"""

    def forward(self, logits_per_image: torch.Tensor) -> torch.Tensor:
        """logits_per_image: (n, n), row i = image i against every text. Returns a scalar."""
        _check_square(logits_per_image, "ClipLoss")
        logits = logits_per_image.float()
        targets = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


LOSSES = {"sigmoid": SigLipLoss, "softmax": ClipLoss}


# ---------------------------------------------------------------------------------------------------------------------
# outputs and pooling
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class SigLipDualEncoderOutput(ModelOutput):
    """As transformers' ``SiglipOutput``. loss: the contrastive loss (paired batches); logits_per_image: (n_images,
    n_texts) ``exp(t') * cos + b``; logits_per_text: its transpose; text_embeds: (n_texts, projection_dim) and
    image_embeds: (n_images, projection_dim), L2-normalised; text_model_output / vision_model_output: the towers'
    outputs."""

    loss: Optional[torch.FloatTensor] = None
    logits_per_image: Optional[torch.FloatTensor] = None
    logits_per_text: Optional[torch.FloatTensor] = None
    text_embeds: Optional[torch.FloatTensor] = None
    image_embeds: Optional[torch.FloatTensor] = None
    text_model_output: Optional[ModelOutput] = None
    vision_model_output: Optional[ModelOutput] = None

    def to_tuple(self) -> Tuple[Any, ...]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last real token of each row (the last 1 of the mask), for left or right padding.
    attention_mask: (batch, seqlen) -> (batch,)"""
    positions = torch.arange(1, attention_mask.shape[1] + 1, device=attention_mask.device)
    return (attention_mask.to(positions.dtype) * positions).argmax(dim=-1)


def pool_text(hidden: torch.Tensor, attention_mask: Optional[torch.Tensor], how: str) -> torch.Tensor:
    """hidden: (batch, seqlen, width), attention_mask: (batch, seqlen) or None -> (batch, width)."""
    if how == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    if how == "mean":
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (b, L, 1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    index = last_token_index(attention_mask)  # "last_token"
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


# ---------------------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------------------
class SigLipDualEncoderPreTrainedModel(NamesReplacedFilesMixin, PreTrainedModel):
    config_class = SigLipDualEncoderConfig
    base_model_prefix = "dual_encoder"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True

    @torch.no_grad()
    def _init_weights(self, module):
        """The towers initialise themselves (each is a PreTrainedModel); here: the projections (normal, std
        ``initializer_range`` or width ** -0.5 as CLIP's) and the logit scale / bias (the config's init values)."""
        if isinstance(module, SigLipDualEncoderModel):
            cfg = self.config
            for proj in (module.visual_projection, module.text_projection):
                init.normal_(proj.weight, std=cfg.initializer_range or proj.in_features ** -0.5)
            init.constant_(module.logit_scale, cfg.logit_scale_init)
            init.constant_(module.logit_bias, cfg.logit_bias_init)


def _one_pixel_input(pixel_values, pixel_values_videos):
    """pixel_values_videos is a video tower's name for pixel_values (what StormVideoProcessor returns)."""
    if pixel_values is not None and pixel_values_videos is not None:
        raise ValueError("Pass pixel_values or pixel_values_videos, not both: the model has one vision tower.")
    return pixel_values if pixel_values_videos is None else pixel_values_videos


def build_tower(config) -> PreTrainedModel:
    """ssmvl's Vim / VMamba / STORM / Mamba LM from the sibling files; any other config through
    ``AutoModel.from_config``."""
    if config.model_type in SSMVL_TOWERS:
        return SSMVL_TOWERS[config.model_type](config)
    return AutoModel.from_config(config)


class SigLipDualEncoderModel(SigLipDualEncoderPreTrainedModel):
    """Dual encoder with learned ``logit_scale`` (t', logits use exp(t')) and ``logit_bias`` (b). See the module
    docstring for the data flow and [`SigLipDualEncoderConfig`] for the options.

    ``pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)`` loads it (``auto_map`` names
    it for ``AutoModelForZeroShotImageClassification``) with the saved ``SigLipDualEncoderProcessor``'s image processor
    and tokenizer. transformers' pipeline applies SigLIP's per-label sigmoid only to model types containing "siglip";
    for this one it reports a softmax over the candidate labels (scores sum to 1, same ranking);
    ``torch.sigmoid(model(...).logits_per_image)`` gives the independent per-label probabilities of a sigmoid model.
    """

    def __init__(self, config: SigLipDualEncoderConfig):
        super().__init__(config)
        self.vision_model = build_tower(config.vision_config)
        self.text_model = build_tower(config.text_config)
        self.visual_projection = nn.Linear(tower_width(config.vision_config), config.projection_dim, bias=False)
        self.text_projection = nn.Linear(tower_width(config.text_config), config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor([config.logit_scale_init]))
        self.logit_bias = nn.Parameter(torch.tensor([config.logit_bias_init]))
        self.loss_fn = LOSSES[config.loss_type]()
        self._text_takes = set(inspect.signature(self.text_model.forward).parameters)
        self._vision_takes = set(inspect.signature(self.vision_model.forward).parameters)
        self.post_init()
        self._apply_freezing()

    def _apply_freezing(self):
        if self.config.freeze_text_tower:
            self.text_model.requires_grad_(False).eval()
        if self.config.freeze_vision_tower:
            self.vision_model.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        """As ``nn.Module.train``, but a frozen tower stays in eval mode (no dropout: its features are fixed)."""
        super().train(mode)
        self._apply_freezing()
        return self

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As every model; a class registered for remote code (``register_for_auto_class``, done at the end of this
        file) also names itself for ``AutoModelForZeroShotImageClassification`` in ``auto_map``, the class
        ``pipeline("zero-shot-image-classification")`` loads (a class has one ``_auto_class``, so the second entry is
        added here)."""
        if getattr(type(self), "_auto_class", None) is not None:
            set_auto_map(self, {"AutoModelForZeroShotImageClassification": type(self).__name__})
        return super().save_pretrained(save_directory, *args, **kwargs)

    def get_input_embeddings(self):
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.text_model.set_input_embeddings(value)

    @classmethod
    def from_towers(cls, vision_model=None, text_model=None, **config_kwargs) -> "SigLipDualEncoderModel":
        """A dual encoder whose towers start from pretrained models: ``vision_model`` / ``text_model`` are a
        ``PreTrainedModel`` or a path / repo id (loaded with ``AutoModel.from_pretrained``); their configs become
        ``vision_config`` / ``text_config`` and their weights are copied in (strictly). ``config_kwargs`` go to
        [`SigLipDualEncoderConfig`] (``vision_config`` / ``text_config`` there for a tower not given)."""
        towers = {}
        for key, tower in (("vision", vision_model), ("text", text_model)):
            if tower is None:
                continue
            if not isinstance(tower, PreTrainedModel):
                tower = AutoModel.from_pretrained(str(tower))
            towers[key] = tower
            config_kwargs[f"{key}_config"] = tower.config
        model = cls(cls.config_class(**config_kwargs))
        for key, tower in towers.items():
            target = getattr(model, f"{key}_model")
            result = target.load_state_dict(tower.state_dict(), strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise ValueError(f"{key} tower weights do not fit: missing {result.missing_keys}, unexpected "
                                 f"{result.unexpected_keys}")
        model._apply_freezing()
        return model

    # ----------------------------------------------------------------------------------------------------------------
    # towers
    # ----------------------------------------------------------------------------------------------------------------
    def _check_pixel_values(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool):
        vcfg = self.config.vision_config
        if vcfg.model_type in VIDEO_TOWER_TYPES:  # STORM checks the frames itself (count, channels, size, values)
            if not torch.is_tensor(pixel_values) or pixel_values.dim() != 5:
                shape = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
                raise ValueError(f"The vision tower ({vcfg.model_type}) takes videos: pixel_values (or "
                                 f"pixel_values_videos) must be (batch, frames, channels, height, width), got {shape}; "
                                 "its video processor (StormVideoProcessor) makes them.")
            return
        if not torch.is_tensor(pixel_values) or pixel_values.dim() != 4:
            shape = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be (batch, channels, height, width), got {shape}")
        check_pixel_values(pixel_values)
        channels = getattr(vcfg, "num_channels", None)
        if channels is not None and pixel_values.shape[1] != channels:
            raise ValueError(f"pixel_values has {pixel_values.shape[1]} channels but the vision tower "
                             f"({vcfg.model_type}) expects {channels}; convert the images to RGB (the processor does).")
        size = getattr(vcfg, "image_size", None)
        if isinstance(size, (list, tuple)):
            size = tuple(size)
        elif size is not None:
            size = (size, size)
        has_positions = vcfg.model_type != VMambaConfig.model_type and getattr(vcfg, "if_abs_pos_embed", True)
        got = tuple(pixel_values.shape[-2:])
        if size is not None and has_positions and got != size and not interpolate_pos_encoding:
            raise ValueError(
                f"pixel_values are {got[0]}x{got[1]} but the vision tower ({vcfg.model_type}) was built for "
                f"{size[0]}x{size[1]}; resize them (the processor does) or pass interpolate_pos_encoding=True where "
                "the tower can resample its position embedding."
            )

    def _vision_forward(self, pixel_values, interpolate_pos_encoding=False, output_hidden_states=None):
        self._check_pixel_values(pixel_values, interpolate_pos_encoding)
        kwargs = dict(pixel_values=pixel_values.to(self.visual_projection.weight.dtype), return_dict=True)
        if interpolate_pos_encoding:
            if "interpolate_pos_encoding" not in self._vision_takes:
                raise ValueError(f"The vision tower {type(self.vision_model).__name__} cannot resample its position "
                                 "embedding (no interpolate_pos_encoding); resize the images to its image_size.")
            kwargs["interpolate_pos_encoding"] = True
        if output_hidden_states:
            kwargs["output_hidden_states"] = True
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision_tower):
            return self.vision_model(**kwargs)

    def _pool_vision(self, outputs) -> torch.Tensor:
        how = self.config.vision_pooling
        if how == "pooler":
            pooled = getattr(outputs, "pooler_output", None)
            if pooled is None:
                raise ValueError(f"The vision tower {type(self.vision_model).__name__} returns no pooler_output; set "
                                 "vision_pooling='cls' or 'mean'.")
            return pooled
        hidden = outputs.last_hidden_state
        if hidden.dim() == 4:  # channel-first feature map (VMamba): (b, C, h, w)
            return hidden.mean(dim=(2, 3))
        if how == "mean":
            return hidden.mean(dim=1)
        if isinstance(self.vision_model, VimModel):  # "cls": Vim's cls token may sit in the middle
            index = self.vision_model.cls_token_index(hidden.shape[1] - 1)
            return hidden[:, index]
        return hidden[:, 0]

    def _text_forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                      output_hidden_states=None):
        if not torch.is_tensor(input_ids) or input_ids.dim() != 2 or input_ids.is_floating_point():
            shape = tuple(input_ids.shape) if torch.is_tensor(input_ids) else type(input_ids).__name__
            raise ValueError(f"input_ids must be integer token ids of shape (batch, seqlen), got {shape}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids "
                             f"{tuple(input_ids.shape)}")
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        for name, value in (("token_type_ids", token_type_ids), ("position_ids", position_ids)):
            if value is not None and name in self._text_takes:
                kwargs[name] = value
        if isinstance(self.text_model, MambaLMModel):
            kwargs["use_cache"] = False
        if output_hidden_states:
            kwargs["output_hidden_states"] = True
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_text_tower):
            return self.text_model(**kwargs)

    # ----------------------------------------------------------------------------------------------------------------
    # public API
    # ----------------------------------------------------------------------------------------------------------------
    def get_image_features(self, pixel_values: Optional[torch.FloatTensor] = None,
                           interpolate_pos_encoding: bool = False, normalize: bool = True,
                           pixel_values_videos: Optional[torch.FloatTensor] = None) -> torch.FloatTensor:
        """pixel_values: (batch, C, H, W) -> image embeddings (batch, projection_dim), L2-normalised unless
        ``normalize=False``. A video tower (STORM) takes videos (batch, frames, C, H, W), as ``pixel_values`` or
        ``pixel_values_videos``."""
        pixel_values = _one_pixel_input(pixel_values, pixel_values_videos)
        pooled = self._pool_vision(self._vision_forward(pixel_values, interpolate_pos_encoding))
        embeds = self.visual_projection(pooled.to(self.visual_projection.weight.dtype))
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def get_text_features(self, input_ids: torch.LongTensor, attention_mask: Optional[torch.Tensor] = None,
                          token_type_ids: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
                          normalize: bool = True) -> torch.FloatTensor:
        """input_ids, attention_mask: (batch, seqlen) (0 = padding, left or right) -> text embeddings
        (batch, projection_dim), L2-normalised unless ``normalize=False``."""
        outputs = self._text_forward(input_ids, attention_mask, token_type_ids, position_ids)
        pooled = pool_text(outputs.last_hidden_state, attention_mask, self.config.text_pooling)
        embeds = self.text_projection(pooled.to(self.text_projection.weight.dtype))
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """logits_per_image: (n_images, n_texts) = exp(t') * image_embeds @ text_embeds.T + b."""
        return image_embeds @ text_embeds.t() * self.logit_scale.exp() + self.logit_bias

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        pixel_values: Optional[torch.FloatTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        return_loss: Optional[bool] = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        pixel_values_videos: Optional[torch.FloatTensor] = None,
        **kwargs,
    ) -> Union[Tuple, SigLipDualEncoderOutput]:
        r"""input_ids / attention_mask: (n_texts, seqlen); pixel_values: (n_images, C, H, W) -- with a video tower
        (STORM) videos (n_videos, frames, C, H, W), also accepted as ``pixel_values_videos``.
        return_loss: True -- the loss of ``config.loss_type`` over the paired batch (text i describes image i; a
        different number of images and texts is an error); False -- none; None (default) -- the loss whenever the
        batch pairs up (as many texts as images), so Trainer gets it and a zero-shot call with K labels does not."""
        unknown = sorted(set(kwargs) - _IGNORED_KWARGS)
        if unknown:
            raise TypeError(f"{type(self).__name__}.forward() got unexpected argument(s) {unknown}; it takes "
                            "input_ids, pixel_values, attention_mask, token_type_ids, position_ids, return_loss, "
                            "interpolate_pos_encoding, output_hidden_states, return_dict.")
        pixel_values = _one_pixel_input(pixel_values, pixel_values_videos)
        if input_ids is None or pixel_values is None:
            raise ValueError("forward() needs both input_ids and pixel_values; for one modality use "
                             "get_text_features() / get_image_features().")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        vision_outputs = self._vision_forward(pixel_values, interpolate_pos_encoding, output_hidden_states)
        text_outputs = self._text_forward(input_ids, attention_mask, token_type_ids, position_ids,
                                          output_hidden_states)
        image_embeds = self.visual_projection(self._pool_vision(vision_outputs).to(self.visual_projection.weight.dtype))
        text_pooled = pool_text(text_outputs.last_hidden_state, attention_mask, self.config.text_pooling)
        text_embeds = self.text_projection(text_pooled.to(self.text_projection.weight.dtype))
        image_embeds = F.normalize(image_embeds, dim=-1)  # (n_images, P)
        text_embeds = F.normalize(text_embeds, dim=-1)  # (n_texts, P)
        logits_per_image = self.logits(image_embeds, text_embeds)  # (n_images, n_texts)
        logits_per_text = logits_per_image.t()

        loss = None
        paired = image_embeds.shape[0] == text_embeds.shape[0]
        if return_loss and not paired:
            raise ValueError(f"return_loss=True needs one caption per image, got {image_embeds.shape[0]} image(s) and "
                             f"{text_embeds.shape[0]} text(s).")
        if return_loss or (return_loss is None and paired):
            loss = self.loss_fn(logits_per_image)

        if not return_dict:
            out = (logits_per_image, logits_per_text, text_embeds, image_embeds, text_outputs, vision_outputs)
            return (loss,) + out if loss is not None else out
        return SigLipDualEncoderOutput(
            loss=loss, logits_per_image=logits_per_image, logits_per_text=logits_per_text, text_embeds=text_embeds,
            image_embeds=image_embeds, text_model_output=text_outputs, vision_model_output=vision_outputs,
        )


__all__ = [
    "SigLipLoss", "ClipLoss", "SigLipDualEncoderOutput", "SigLipDualEncoderPreTrainedModel", "SigLipDualEncoderModel",
]

# save_pretrained writes `auto_map` and copies this file and its sibling imports, so that
# AutoModel/AutoConfig.from_pretrained(..., trust_remote_code=True) and the zero-shot-image-classification pipeline
# work without ssmvl installed.
SigLipDualEncoderConfig.register_for_auto_class()
SigLipDualEncoderModel.register_for_auto_class("AutoModel")  # + AutoModelForZeroShotImageClassification (save_pretrained)
