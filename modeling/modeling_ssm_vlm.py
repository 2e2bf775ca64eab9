"""ssmvl composable vision-language model: a vision tower (transformers ViT / SigLIP / CLIP / DINOv2, or ssmvl's Vim /
VMamba), a projector (vlm_projectors.py), a fusion of the image tokens with the text ("prefix": LLaVA's merge at the
image-token positions; "cross_attention": vlm_bridge.py's fusion) and a causal LM (ssmvl's Mamba LM with its
constant-memory cache, a transformers Llama / Qwen2 / GPT-2 style decoder with its own cache, or vlm_bridge.py's
decoder).

    pixel_values (n_images, C, H, W) -> vision_tower -> hidden_states[vision_feature_layer] -> drop CLS-like tokens
    -> projector -> image tokens (n_images, num_image_tokens, text_hidden)
    input_ids (b, T) -> decoder embeddings -> [cross_attention: CrossModalFusion(text, image tokens)]
                     -> [prefix, or cross_attention with image_prefix: masked_scatter of the image tokens at the
                         `image_token_id` placeholders]
    -> decoder (inputs_embeds) -> logits (b, T, vocab)

Module layout: ``model.vision_tower`` (absent for patch_linear), ``model.projector``, ``fusion`` (cross_attention
only), ``language_model`` (the decoder with its LM head: ``language_model.backbone.*`` / ``language_model.lm_head`` for
the Mamba LM, ``language_model.model.*`` for Llama / Qwen2).

generate() runs the vision tower once (prefill); later steps feed only the new tokens to the decoder's cache. The
image tokens are returned as ``image_hidden_states`` and carried in generate()'s model kwargs, so cross-attention
fusion (and decoding without a cache) reuse them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Tuple, Union

import torch
import torch.nn as nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput, logging

from .configuration_ssm_vlm import SsmVlmConfig, _side
from .hf_compat import (
    CACHE_NAME, NamesReplacedFilesMixin, cache_output, init, new_token_count, pop_cache, set_auto_map,
)
from .modeling_mamba_lm import MambaLMForCausalLM
from .modeling_storm import StormModel
from .modeling_vim import VimModel
from .modeling_vmamba import VMambaModel
from .ssm_layers import MambaMixer, RMSNorm, SsmCache, causal_lm_loss, check_input_ids, check_pixel_values
from .vlm_bridge import BridgeDecoderForCausalLM, BridgeVisionModel, CrossModalFusion, text_position_ids
from .vlm_projectors import PatchLinearProjector, ResamplerProjector, build_projector


if TYPE_CHECKING:  # never runs: names every sibling file for transformers 5.0's remote-code copy (see hf_compat.py)
    from .cuda_graphs import ForwardGraphs  # noqa: F401
    from .config_checks import check_int  # noqa: F401
    from .configuration_mamba_lm import MambaLMConfig  # noqa: F401
    from .configuration_storm import StormConfig  # noqa: F401
    from .configuration_vim import VimConfig  # noqa: F401
    from .configuration_vmamba import VMambaConfig  # noqa: F401
    from .ssm_ops import resolve_backend  # noqa: F401
    from .ssm_triton import selective_scan_triton  # noqa: F401


logger = logging.get_logger(__name__)

MAMBA_DECODER_TYPE = "ssmvl_mamba"
# vlm_bridge.py's decoder adds learned positions that count text tokens only: the VLM embeds the text with
# `decoder.embed(ids, text positions)` before the fusion and passes `inputs_embeds_include_positions=True`
TEXT_POSITION_DECODER_TYPE = "ssmvl_bridge_decoder"
# keyword arguments for AutoModel.from_config of a transformers tower: drop parts the VLM never reads
_TOWER_KWARGS = {"vit": {"add_pooling_layer": False}}


@cache_output
class SsmVlmCausalLMOutput(ModelOutput):
    """loss (labels given; shifted inside, -100 ignored), logits: (batch, seqlen, vocab), cache: the decoder's cache
    (`SsmCache` for the Mamba LM, a transformers `Cache` otherwise; the field is named as this transformers names it,
    `.cache` always works), hidden_states: the decoder's, image_hidden_states: (n_images, num_image_tokens,
    text_hidden) the projected image tokens when images were given."""

    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    cache: Optional[object] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
    image_hidden_states: Optional[torch.FloatTensor] = None


@dataclass
class SsmVlmModelOutput(ModelOutput):
    """last_hidden_state: (n_images, num_image_tokens, text_hidden) the projected image tokens; vision_hidden_states:
    (n_images, n_vision_tokens, vision_hidden) what the projector read (the selected tower features, or the pixel
    patches for patch_linear)."""

    last_hidden_state: Optional[torch.FloatTensor] = None
    vision_hidden_states: Optional[torch.FloatTensor] = None


def _one_visual_input(pixel_values, pixel_values_videos):
    """pixel_values_videos is the video tower's name for pixel_values (as transformers' video models call it)."""
    if pixel_values is not None and pixel_values_videos is not None:
        raise ValueError("Pass pixel_values (images) or pixel_values_videos (videos), not both: the model has one "
                         "vision tower.")
    return pixel_values if pixel_values_videos is None else pixel_values_videos


def build_vision_tower(vision_config) -> PreTrainedModel:
    """ssmvl's Vim / VMamba / bridge ViT from their sibling files; any other tower through transformers' AutoModel."""
    if vision_config.model_type == "ssmvl_vim":
        return VimModel(vision_config)
    if vision_config.model_type == "ssmvl_vmamba":
        return VMambaModel(vision_config)
    if vision_config.model_type == "ssmvl_bridge_vision":
        return BridgeVisionModel(vision_config)
    if vision_config.model_type == "ssmvl_storm":
        return StormModel(vision_config)
    return AutoModel.from_config(vision_config, **_TOWER_KWARGS.get(vision_config.model_type, {}))


def build_decoder(text_config) -> PreTrainedModel:
    """ssmvl's Mamba LM / bridge decoder from their sibling files; any other causal LM through transformers'
    AutoModelForCausalLM."""
    if text_config.model_type == MAMBA_DECODER_TYPE:
        return MambaLMForCausalLM(text_config)
    if text_config.model_type == TEXT_POSITION_DECODER_TYPE:
        return BridgeDecoderForCausalLM(text_config)
    return AutoModelForCausalLM.from_config(text_config)


class SsmVlmPreTrainedModel(NamesReplacedFilesMixin, PreTrainedModel):
    config_class = SsmVlmConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    _no_split_modules = ["MambaBlock", "VimBlock", "VMambaBlock"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        """The VLM's own modules (projector, fusion); the towers and the decoder initialise themselves."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:
                init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, nn.MultiheadAttention):
            if module.in_proj_weight is not None:
                init.xavier_uniform_(module.in_proj_weight)
            if module.in_proj_bias is not None:
                init.zeros_(module.in_proj_bias)
        elif isinstance(module, MambaMixer):  # an SSM bridge: its Linears were set above (post-order), now dt / A / D
            module.reset_ssm_parameters()
        elif hasattr(module, "reset_bridge_parameters"):  # upstream's dense-recurrence bridge (vlm_bridge.py)
            module.reset_bridge_parameters()
        if isinstance(module, ResamplerProjector):
            init.trunc_normal_(module.query, std=0.02)  # Qwen-VL
        elif isinstance(module, PatchLinearProjector) and module.pos_embed is not None:
            init.trunc_normal_(module.pos_embed, std=std)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As PreTrainedModel's, with every Auto class of the family in `auto_map` (not only this class's), so that
        AutoModel / AutoModelForImageTextToText / AutoModelForCausalLM all load the folder with trust_remote_code."""
        set_auto_map(self, {"AutoModel": "SsmVlmModel",
                            "AutoModelForImageTextToText": "SsmVlmForConditionalGeneration",
                            "AutoModelForCausalLM": "SsmVlmForConditionalGeneration"})
        return super().save_pretrained(save_directory, *args, **kwargs)


class SsmVlmModel(SsmVlmPreTrainedModel):
    """The image side: vision tower + projector. ``forward(pixel_values)`` gives the image tokens in the text width
    (``last_hidden_state``: (n_images, num_image_tokens, text_hidden)); the full model with the decoder is
    [`SsmVlmForConditionalGeneration`]."""

    main_input_name = "pixel_values"

    def __init__(self, config: SsmVlmConfig):
        super().__init__(config)
        self.vision_tower = None
        if config.vision_config is not None:
            self.vision_tower = build_vision_tower(config.vision_config)
            config.vision_config = self.vision_tower.config  # one config object: edits reach save_pretrained
            if config.freeze_vision_tower:
                self.vision_tower.requires_grad_(False)
        self.projector = build_projector(config)
        self.post_init()

    def _check_pixel_values(self, pixel_values: torch.Tensor):
        cfg = self.config
        check_pixel_values(pixel_values, "pixel_values_videos" if cfg.is_video else "pixel_values")
        if cfg.is_video:
            if pixel_values.dim() != 5:
                raise ValueError(f"This model's tower (STORM) takes videos: pixel_values_videos must be (n_videos, "
                                 f"{cfg.num_frames}, {cfg.num_channels}, height, width), got shape "
                                 f"{tuple(pixel_values.shape)}.")
            if pixel_values.shape[1] != cfg.num_frames:
                raise ValueError(f"Each video must have exactly {cfg.num_frames} frames (vision_config.num_frames: the "
                                 f"number of video tokens depends on it), got {pixel_values.shape[1]}; the processor "
                                 f"samples them (StormVideoProcessor(num_frames={cfg.num_frames})).")
            pixel_values = pixel_values[:, 0]  # the frame checks below
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be (n_images, {cfg.num_channels}, height, width), got shape "
                             f"{tuple(pixel_values.shape)}.")
        _, channels, height, width = pixel_values.shape
        if channels != cfg.num_channels:
            raise ValueError(f"pixel_values has {channels} channels but the model expects {cfg.num_channels}; convert "
                             "the images (e.g. to RGB) with the processor.")
        if (height, width) != _side(cfg.image_size):
            h, w = _side(cfg.image_size)
            raise ValueError(f"Image size {height}x{width} differs from the model's {h}x{w} (config.image_size): the "
                             f"number of image tokens is fixed by it. Resize the images to {h}x{w} (the processor "
                             "does).")

    def select_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The tower's ``hidden_states[vision_feature_layer]`` as (n_images, n_tokens, vision_hidden), CLS-like tokens
        dropped with the "default" strategy; the raw pixels for patch_linear."""
        cfg = self.config
        if self.vision_tower is None:
            return pixel_values
        tower_dtype = next(self.vision_tower.parameters()).dtype
        if cfg.is_video:  # STORM: its reduced tokens (n, num_output_tokens(T), hidden)
            outputs = self.vision_tower(pixel_values_videos=pixel_values.to(tower_dtype), return_dict=True)
            return outputs.last_hidden_state
        outputs = self.vision_tower(pixel_values.to(tower_dtype), output_hidden_states=True, return_dict=True)
        features = outputs.hidden_states[cfg.vision_feature_layer]
        model_type = cfg.vision_config.model_type
        if model_type == "ssmvl_vmamba":
            return features.flatten(2).transpose(1, 2)  # (b, C, h, w) -> (b, h*w, C)
        if cfg.vision_feature_select_strategy == "full" or cfg.num_vision_prefix_tokens == 0:
            return features
        if model_type == "ssmvl_vim":
            index = self.vision_tower.cls_token_index(features.shape[1] - 1)
            return torch.cat([features[:, :index], features[:, index + 1:]], dim=1)
        return features[:, cfg.num_vision_prefix_tokens:]

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (n_images, C, H, W) -> image tokens (n_images, num_image_tokens, text_hidden)."""
        return self(pixel_values, return_dict=True).last_hidden_state

    def forward(self, pixel_values: Optional[torch.FloatTensor] = None, return_dict: Optional[bool] = None,
                pixel_values_videos: Optional[torch.FloatTensor] = None, **kwargs) -> Union[Tuple, SsmVlmModelOutput]:
        unknown = sorted(set(kwargs) - {"output_attentions", "output_hidden_states"})
        if unknown:
            raise TypeError(f"SsmVlmModel.forward() got unexpected argument(s) {unknown}; it takes pixel_values.")
        pixel_values = _one_visual_input(pixel_values, pixel_values_videos)
        if pixel_values is None:
            raise ValueError("SsmVlmModel needs pixel_values (n_images, channels, height, width).")
        self._check_pixel_values(pixel_values)
        features = self.select_vision_features(pixel_values)  # (n, v, Dv) or pixels
        image_tokens = self.projector(features)  # (n, num_image_tokens, Dt)
        if image_tokens.shape[1] != self.config.num_image_tokens:
            raise ValueError(f"The {self.config.projector_type} projector returned {image_tokens.shape[1]} tokens per "
                             f"image but config.num_image_tokens is {self.config.num_image_tokens}; for ssm_bridge set "
                             "projector_config['num_output_tokens'] to what the bridge returns.")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            return (image_tokens, features)
        return SsmVlmModelOutput(last_hidden_state=image_tokens, vision_hidden_states=features)


class SsmVlmForConditionalGeneration(SsmVlmPreTrainedModel, GenerationMixin):
    def __init__(self, config: SsmVlmConfig):
        super().__init__(config)
        self.model = SsmVlmModel(config)
        self.fusion = CrossModalFusion(config) if config.fusion == "cross_attention" else None
        self.language_model = build_decoder(config.text_config)
        config.text_config = self.language_model.config  # one config object (resize_token_embeddings updates it)
        self._decoder_is_mamba = config.text_config.model_type == MAMBA_DECODER_TYPE
        self._text_positions = config.text_config.model_type == TEXT_POSITION_DECODER_TYPE
        params = inspect.signature(self.language_model.forward).parameters
        self._decoder_takes = {name for name in ("position_ids", "logits_to_keep") if name in params}
        self.post_init()

    # -- embeddings: the decoder's --------------------------------------------------------------------------------
    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.language_model.set_output_embeddings(value)

    def get_decoder(self):
        return self.language_model

    def resize_token_embeddings(self, new_num_tokens: Optional[int] = None, pad_to_multiple_of: Optional[int] = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """Resizes the decoder's embeddings (and tied head); config.text_config.vocab_size follows."""
        embeddings = self.language_model.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.config.text_config = self.language_model.config
        return embeddings

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (n_images, C, H, W) -> image tokens (n_images, num_image_tokens, text_hidden)."""
        return self.model.get_image_features(pixel_values)

    # -- fusion -----------------------------------------------------------------------------------------------------
    def image_token_mask(self, input_ids: Optional[torch.Tensor], inputs_embeds: torch.Tensor) -> torch.Tensor:
        """(batch, seqlen) bool: where the image placeholders are (from the ids, else by matching the embedding of
        the image token, as LLaVA)."""
        token_id = self.config.image_token_id
        if token_id is None:
            raise ValueError("config.image_token_id is not set: set it to the tokenizer's id of "
                             f"{self.config.image_token!r} (SsmVlmProcessor.image_token_id) so the model knows where "
                             "the image tokens go.")
        if input_ids is not None:
            return input_ids == token_id
        embedding = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
        return (inputs_embeds == embedding.to(inputs_embeds.dtype)).all(-1)

    def merge_image_tokens(self, input_ids: Optional[torch.Tensor], inputs_embeds: torch.Tensor,
                           image_features: torch.Tensor) -> torch.Tensor:
        """LLaVA's merge: the image tokens (n_images, n_per_image, D), in order, replace the embeddings at the image
        placeholder positions (row-major over the batch). The counts must agree exactly."""
        mask = self.image_token_mask(input_ids, inputs_embeds)  # (b, T)
        n_images, per_image = image_features.shape[:2]
        n_tokens = int(mask.sum())
        if n_tokens == 0:
            raise ValueError(f"Got {n_images} image(s) (pixel_values) but the text holds no image token "
                             f"({self.config.image_token!r}, id {self.config.image_token_id}); put "
                             f"{self.config.image_token!r} where each image goes (SsmVlmProcessor expands it to "
                             f"{per_image} tokens), or drop pixel_values.")
        if n_tokens != n_images * per_image:
            groups = n_tokens / per_image
            if n_tokens % per_image == 0 and groups < n_images:
                detail = f"more images ({n_images}) than image placeholders ({int(groups)}) in the text"
            elif n_tokens % per_image == 0:
                detail = f"more image placeholders ({int(groups)}) in the text than images ({n_images})"
            else:
                detail = "a placeholder that was not expanded to the full number of image tokens"
            raise ValueError(f"The text holds {n_tokens} image tokens but {n_images} image(s) x {per_image} tokens per "
                             f"image = {n_images * per_image} image features: {detail}. Write one "
                             f"{self.config.image_token!r} per image and let SsmVlmProcessor expand each to "
                             f"{per_image} tokens (config.num_image_tokens).")
        mask3 = mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device)
        return inputs_embeds.masked_scatter(mask3, image_features.to(inputs_embeds.device, inputs_embeds.dtype))

    def _text_mask(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """(batch, seqlen) bool: text tokens (not padding, not image placeholders)."""
        is_text = torch.ones_like(input_ids, dtype=torch.bool)
        if self.config.uses_image_placeholders and self.config.image_token_id is not None:
            is_text &= input_ids != self.config.image_token_id
        if attention_mask is not None:
            is_text &= attention_mask[:, -input_ids.shape[1]:].bool()
        return is_text

    # -- forward ----------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        pixel_values: Optional[torch.FloatTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        cache: Optional[object] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        image_hidden_states: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        logits_to_keep: Union[int, torch.Tensor] = 0,
        pixel_values_videos: Optional[torch.FloatTensor] = None,
        **kwargs,
    ) -> Union[Tuple, SsmVlmCausalLMOutput]:
        r"""input_ids: (batch, seqlen) with `num_image_tokens` image tokens per image (fusion "prefix"), or
        inputs_embeds; pixel_values: (n_images, C, H, W), the images in the order of their placeholders (fusion
        "cross_attention": one per sequence); image_hidden_states: already projected image tokens (n_images,
        num_image_tokens, text_hidden) instead of pixel_values (generate() passes them on); cache: the decoder's
        cache (also accepted as `past_key_values` / `cache_params`); labels: (batch, seqlen), shifted inside, -100
        ignored (mask the prompt and the image positions in the collator)."""
        cache = pop_cache(cache, kwargs)
        pixel_values = _one_visual_input(pixel_values, pixel_values_videos)  # a video tower's (n, T, C, H, W)
        for name in ("cache_position", "output_attentions", "token_type_ids"):  # no use here (older generate()
            kwargs.pop(name, None)                                              # passes cache_position)
        num_items = kwargs.pop("num_items_in_batch", None)
        if kwargs:
            raise TypeError(f"SsmVlmForConditionalGeneration.forward() got unexpected argument(s) {sorted(kwargs)}.")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if pixel_values is not None and image_hidden_states is not None:
            raise ValueError("Pass pixel_values or image_hidden_states, not both.")
        decoding = cache is not None and cache.get_seq_length() > 0
        if input_ids is not None:  # the id range only for prompts (a device sync): decoding feeds sampled ids
            check_input_ids(input_ids, None if decoding else self.get_input_embeddings().num_embeddings)
        decoder_kwargs = {CACHE_NAME: cache} if cache is not None else {}
        if inputs_embeds is None and self._text_positions:
            # learned positions counting text tokens only, added before the fusion (vlm_bridge.py's decoder)
            if position_ids is None:
                if decoding:
                    raise ValueError("Cached steps of a decoder with text positions need position_ids (the text "
                                     "position of each new token); generate() passes them.")
                position_ids = text_position_ids(self._text_mask(input_ids, attention_mask))
            inputs_embeds = self.language_model.embed(input_ids, position_ids)  # (b, T, Dt)
            decoder_kwargs["inputs_embeds_include_positions"] = True
            position_ids = None
        # text-only ids (decoding steps of the prefix fusion, or no image at all) go to the decoder as ids, so that
        # its own fast paths apply (the Mamba decoder replays a CUDA graph per step only for input_ids)
        plain_ids = (inputs_embeds is None and pixel_values is None and self.fusion is None
                     and (image_hidden_states is None or decoding))
        if plain_ids and self.config.uses_image_placeholders and not decoding:
            self._check_no_placeholders(input_ids)
        if plain_ids:
            return self._decoder_forward(input_ids, None, attention_mask, position_ids, labels, use_cache,
                                         output_hidden_states, return_dict, logits_to_keep, num_items,
                                         decoder_kwargs, None)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # (b, T, Dt)
        if pixel_values is not None:
            image_hidden_states = self.model(pixel_values, return_dict=True).last_hidden_state  # (n, N, Dt)

        if self.fusion is not None and image_hidden_states is not None:  # each sequence attends to its image's tokens
            if image_hidden_states.shape[0] != inputs_embeds.shape[0]:
                raise ValueError(f"fusion='cross_attention' needs exactly one image per sequence: got "
                                 f"{image_hidden_states.shape[0]} image(s) for {inputs_embeds.shape[0]} sequence(s).")
            inputs_embeds = self.fusion(inputs_embeds, image_hidden_states.to(inputs_embeds.dtype))  # (b, T, Dt)
        if self.config.uses_image_placeholders:
            # the image tokens of the prompt go in at its placeholders; cached steps hold none (those tokens are
            # in the cache) unless images come with them (continuing a cache with a new prompt)
            if image_hidden_states is not None and (not decoding or pixel_values is not None):
                inputs_embeds = self.merge_image_tokens(input_ids, inputs_embeds, image_hidden_states)
            elif image_hidden_states is None and input_ids is not None and not decoding:
                self._check_no_placeholders(input_ids)

        return self._decoder_forward(None, inputs_embeds, attention_mask, position_ids, labels, use_cache,
                                     output_hidden_states, return_dict, logits_to_keep, num_items, decoder_kwargs,
                                     image_hidden_states)

    def _check_no_placeholders(self, input_ids: torch.Tensor):
        """Image placeholders in a prompt that comes without images are an error."""
        if self.config.image_token_id is None:
            return
        n_tokens = int((input_ids == self.config.image_token_id).sum())
        if n_tokens:
            raise ValueError(f"The text holds {n_tokens} image tokens ({self.config.image_token!r}, id "
                             f"{self.config.image_token_id}) but no pixel_values were given; pass the images "
                             "(pixel_values) or remove the placeholders from the text.")

    def _decoder_forward(self, input_ids, inputs_embeds, attention_mask, position_ids, labels, use_cache,
                         output_hidden_states, return_dict, logits_to_keep, num_items, decoder_kwargs,
                         image_hidden_states):
        """The decoder on ids or fused embeddings, then the shifted loss and the output."""
        inputs = input_ids if input_ids is not None else inputs_embeds
        if "position_ids" in self._decoder_takes and position_ids is not None:
            decoder_kwargs["position_ids"] = position_ids
        if "logits_to_keep" in self._decoder_takes:
            decoder_kwargs["logits_to_keep"] = logits_to_keep
        # the Mamba decoder takes a mask at prefill only (left padding then lives in its state)
        if attention_mask is not None and (not self._decoder_is_mamba
                                           or attention_mask.shape == inputs.shape[:2]):
            decoder_kwargs["attention_mask"] = attention_mask
        decoder_kwargs["input_ids" if input_ids is not None else "inputs_embeds"] = inputs
        outputs = self.language_model(use_cache=use_cache, output_hidden_states=output_hidden_states,
                                      return_dict=True, **decoder_kwargs)
        logits = outputs.logits
        if "logits_to_keep" not in self._decoder_takes and isinstance(logits_to_keep, int) and logits_to_keep > 0:
            logits = logits[:, -logits_to_keep:]
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, num_items)
        new_cache = getattr(outputs, CACHE_NAME, None)
        if not return_dict:
            out = tuple(v for v in (logits, new_cache, outputs.hidden_states, image_hidden_states) if v is not None)
            return (loss,) + out if loss is not None else out
        return SsmVlmCausalLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                    image_hidden_states=image_hidden_states, **{CACHE_NAME: new_cache})

    # -- generate() ---------------------------------------------------------------------------------------------------
    def _supports_default_dynamic_cache(self) -> bool:
        # a Mamba decoder uses our SsmCache (made below); a transformer decoder transformers' DynamicCache
        return not self._decoder_is_mamba

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """generate() hook: transformers' cache for a transformer decoder; for the Mamba decoder an ``SsmCache``
        (sized at its first forward) unless the caller passed one or ``use_cache=False``."""
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        if not self._decoder_is_mamba:
            return
        cache = pop_cache(model_kwargs.pop("cache", None), model_kwargs)
        if cache is None and generation_config.use_cache is not False:
            cache = SsmCache.from_config(self.config.text_config)
        if cache is not None:
            model_kwargs[CACHE_NAME] = cache

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        """Keeps the image tokens of the prefill for the later steps (cross-attention fusion, decoding without a
        cache), so the vision tower runs once per generate() call."""
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        if getattr(outputs, "image_hidden_states", None) is not None:
            model_kwargs["image_hidden_states"] = outputs.image_hidden_states
        return model_kwargs

    def prepare_inputs_for_generation(
        self, input_ids, inputs_embeds=None, attention_mask=None, pixel_values=None, image_hidden_states=None,
        position_ids=None, use_cache=None, cache=None, is_first_iteration=False, next_sequence_length=None,
        cache_position=None, past_key_values=None, cache_params=None, pixel_values_videos=None, **kwargs,
    ):
        """What generate() feeds forward() at each step. Prefill: the whole prompt with its images (pixel_values) and
        attention mask. Later steps: only the tokens the decoder's cache has not seen; no pixels (the image tokens are
        in the cache for "prefix"; for "cross_attention" the carried `image_hidden_states` go with every step).
        Without a cache each step re-reads the whole sequence with the carried image tokens. Transformer decoders get
        the full attention mask and position ids counted from it (left padding; vlm_bridge.py's decoder: counted over
        the text tokens only); the Mamba decoder needs the mask only at prefill (padding lives in its state as
        zeros)."""
        cache = pop_cache(cache, {"past_key_values": past_key_values, "cache_params": cache_params})
        pixel_values = _one_visual_input(pixel_values, pixel_values_videos)
        kwargs.pop("labels", None)
        if use_cache is None:
            use_cache = getattr(self.config.text_config, "use_cache", True)
        seen = cache.get_seq_length() if use_cache and cache is not None else 0
        model_inputs = {"input_ids": input_ids, "inputs_embeds": None}
        if seen:
            if next_sequence_length is None and cache_position is None:
                n = max(1, input_ids.shape[1] - seen)  # a continued cache: input_ids hold the whole sequence
            else:
                n = new_token_count(next_sequence_length, cache_position)
            model_inputs["input_ids"] = input_ids[:, -n:]
        elif inputs_embeds is not None and is_first_iteration:
            model_inputs = {"input_ids": None, "inputs_embeds": inputs_embeds}
        length = (model_inputs["input_ids"] if model_inputs["input_ids"] is not None
                  else model_inputs["inputs_embeds"]).shape[1]
        if model_inputs["input_ids"] is not None:
            model_inputs["input_ids"] = model_inputs["input_ids"].contiguous()

        images = {}
        if seen == 0 or is_first_iteration:
            if image_hidden_states is not None:
                images["image_hidden_states"] = image_hidden_states
            elif pixel_values is not None:
                images["pixel_values"] = pixel_values
        elif self.config.fusion == "cross_attention" and image_hidden_states is not None:
            images["image_hidden_states"] = image_hidden_states
        model_inputs.update(images)

        if self._decoder_is_mamba:
            model_inputs["attention_mask"] = attention_mask if seen == 0 else None
        else:
            if self._text_positions and input_ids is not None and input_ids.shape[1]:
                position_ids = text_position_ids(self._text_mask(input_ids, attention_mask))  # text tokens only
            elif position_ids is None and attention_mask is not None:
                position_ids = attention_mask.long().cumsum(-1) - 1
                position_ids = position_ids.masked_fill(attention_mask == 0, 1)
            if position_ids is not None:
                position_ids = position_ids[:, -length:].contiguous()
            model_inputs["attention_mask"] = attention_mask
            model_inputs["position_ids"] = position_ids
        model_inputs.update(cache=cache if use_cache else None, use_cache=use_cache)
        model_inputs.update(kwargs)
        return model_inputs


__all__ = ["SsmVlmPreTrainedModel", "SsmVlmModel", "SsmVlmForConditionalGeneration", "SsmVlmCausalLMOutput",
           "SsmVlmModelOutput", "build_vision_tower", "build_decoder"]

# save_pretrained writes `auto_map` and copies this file and its sibling imports, so that
# AutoModel*/AutoConfig.from_pretrained(..., trust_remote_code=True) works without ssmvl installed.
SsmVlmConfig.register_for_auto_class()
SsmVlmModel.register_for_auto_class("AutoModel")
SsmVlmForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
