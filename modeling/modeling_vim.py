"""Vim (Vision Mamba, Zhu et al. 2024, "Vision Mamba: Efficient Visual Representation Learning with Bidirectional
State Space Model", github hustvl/Vim) as a transformers model.

Wiring follows hustvl/Vim ``vim/models_mamba.py`` (``VisionMamba.forward_features``, ``Block``) and the bimamba v2
mixer of ``mamba-1p1p1/mamba_ssm/modules/mamba_simple.py`` (our ``MambaMixer(bidirectional=True)``):

    pixels (b, C, H, W) -> patch_embed.proj (Conv2d, kernel = stride = patch) -> (b, M, D)
    -> cls token inserted at M // 2 (middle) or 0 -> + pos_embed -> 24 x Block -> norm_f -> pool -> head

Each ``Block`` uses Vim's add-then-norm order (the fused add+norm of mamba_ssm), returning ``(hidden, residual)``:
``residual = residual + drop_path(hidden)`` (just ``hidden`` for the first block), ``hidden = mixer(norm(residual))``;
at the end ``norm_f(residual + drop_path(hidden))``.

State-dict layout: ``VimModel`` holds the official names unchanged (``patch_embed.proj.*``, ``cls_token``,
``pos_embed``, ``layers.{i}.norm.*``, ``layers.{i}.mixer.*``, ``norm_f.*``); ``VimForImageClassification`` puts it
under ``vim.`` and keeps the official ``head.*``. So an official key ``k`` maps to ``"vim." + k``, except ``head.*``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import logging

from .configuration_vim import VimConfig
from .cuda_graphs import ForwardGraphs, graphs_apply
from .hf_compat import NamesReplacedFilesMixin
from .ssm_ops import add_rms_norm
from .ssm_layers import (GradientCheckpointingLayer, MambaMixer, RMSNorm, autocast_dtype, check_pixel_values, init,
                         unhooked)


if TYPE_CHECKING:  # never runs: names every sibling file for transformers 5.0's remote-code copy (see hf_compat.py)
    from .config_checks import check_int  # noqa: F401
    from .ssm_triton import selective_scan_triton  # noqa: F401


logger = logging.get_logger(__name__)


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (timm ``drop_path``): zero whole samples with probability ``rate``, rescale the
    rest."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


def resample_pos_embed(pos_embed: torch.Tensor, old_grid: Tuple[int, int], new_grid: Tuple[int, int],
                       old_cls_index: Optional[int], new_cls_index: Optional[int]) -> torch.Tensor:
    """Bicubic resampling of the patch part of an absolute position embedding (as timm's ``resample_abs_pos_embed``:
    float32, ``align_corners=False``, antialias), keeping the cls position and moving it to ``new_cls_index``.

    pos_embed: (1, old_h * old_w [+ 1], D) with the cls position at ``old_cls_index`` (None: no cls position)
    -> (1, new_h * new_w [+ 1], D). For a middle cls token the cls position is ``num_patches // 2``, not 0.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    dtype, dim = pos_embed.dtype, pos_embed.shape[-1]
    if old_cls_index is not None:
        cls_pos = pos_embed[:, old_cls_index:old_cls_index + 1]  # (1, 1, D)
        patch_pos = torch.cat([pos_embed[:, :old_cls_index], pos_embed[:, old_cls_index + 1:]], dim=1)
    else:
        cls_pos, patch_pos = None, pos_embed
    patch_pos = patch_pos.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()  # (1, D, h, w)
    patch_pos = F.interpolate(patch_pos, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=True)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(dtype)  # (1, M', D)
    if cls_pos is None:
        return patch_pos
    return torch.cat([patch_pos[:, :new_cls_index], cls_pos, patch_pos[:, new_cls_index:]], dim=1)


class VimPatchEmbeddings(nn.Module):
    """Conv2d patchify: (b, C, H, W) -> (b, (H/p) * (W/p), D), row-major patch order (official ``PatchEmbed``)."""

    def __init__(self, config: VimConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.proj = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size,
                              stride=config.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(self.proj.weight.dtype)
        conv = self.proj
        ph, pw = conv.kernel_size
        if (unhooked((conv,), (nn.Conv2d,)) and conv.kernel_size == conv.stride and conv.padding == (0, 0)
                and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
                and pixel_values.dim() == 4 and pixel_values.shape[2] % ph == 0 and pixel_values.shape[3] % pw == 0):
            # kernel = stride: the conv is one matrix product of the (b * M, C p p) patch rows with the flattened
            # weight, the same sums as the conv (cuDNN's bf16 patchify took 0.83 ms at 128 x 224 px on an H200,
            # a transposing copy and a GEMM take a few dozen us); an adapter / hook on proj keeps the module call
            b, c, height, width = pixel_values.shape
            rows = pixel_values.reshape(b, c, height // ph, ph, width // pw, pw).permute(0, 2, 4, 1, 3, 5)
            x = F.linear(rows.reshape(-1, c * ph * pw), conv.weight.reshape(conv.out_channels, -1), conv.bias)
            return x.view(b, (height // ph) * (width // pw), conv.out_channels)  # (b, M, D)
        x = conv(pixel_values)  # (b, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (b, M, D)


def add_norm(norm: nn.Module, residual: torch.Tensor, x: torch.Tensor,
             out_dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(r, norm(r.to(norm's dtype)))`` with ``r = residual + x``: Vim's add-then-norm, in one Triton kernel on a GPU
    at inference where ``norm`` is a plain RMSNorm (as mamba_ssm's fused add + norm; ssm_ops.add_rms_norm), its output
    then rounded to ``out_dtype`` if given (a block passes autocast's dtype: its mixer's in_proj casts to it anyway)."""
    if unhooked((norm,), (RMSNorm,)):
        return add_rms_norm(residual, x, norm.weight, norm.variance_epsilon, cast_input=True, out_dtype=out_dtype)
    residual = residual + x
    y = norm(residual.to(dtype=norm.weight.dtype))
    return residual, (y if out_dtype is None else y.to(out_dtype))


class VimBlock(GradientCheckpointingLayer):
    """Vim's block (official ``Block`` with ``fused_add_norm`` semantics): add the previous mixer output to the residual
    stream, normalise, mix. Returns ``(mixer_output, residual)``; the caller adds them after the last block."""

    def __init__(self, config: VimConfig, layer_idx: int, drop_path_rate: float = 0.0):
        super().__init__()
        self.layer_idx = layer_idx
        self.residual_in_fp32 = config.residual_in_fp32
        self.drop_path_rate = drop_path_rate
        self.mixer = MambaMixer(
            config.hidden_size, config.intermediate_size, state_size=config.state_size,
            conv_kernel=config.conv_kernel, time_step_rank=config.time_step_rank, use_bias=config.use_bias,
            use_conv_bias=config.use_conv_bias, bidirectional=config.bimamba, divide_output=config.divide_output,
            layer_idx=layer_idx, ssm_backend=config.ssm_backend, time_step_min=config.time_step_min,
            time_step_max=config.time_step_max, time_step_floor=config.time_step_floor,
            time_step_scale=config.time_step_scale, time_step_init_scheme=config.time_step_init_scheme,
        )
        norm_cls = RMSNorm if config.rms_norm else nn.LayerNorm
        self.norm = norm_cls(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, hidden_states: torch.Tensor, residual: Optional[torch.Tensor] = None):
        """hidden_states: previous mixer output (or the embeddings for the first block), residual: stream or None;
        both (batch, seqlen, hidden)."""
        if residual is None:
            residual = hidden_states
            hidden_states = self.norm(residual.to(dtype=self.norm.weight.dtype))
        else:
            residual, hidden_states = add_norm(
                self.norm, residual, drop_path(hidden_states, self.drop_path_rate, self.training),
                out_dtype=autocast_dtype(residual.device))
        if self.residual_in_fp32:
            residual = residual.to(torch.float32)
        hidden_states = self.mixer(hidden_states)
        return hidden_states, residual


class VimPreTrainedModel(NamesReplacedFilesMixin, PreTrainedModel):
    config_class = VimConfig
    base_model_prefix = "vim"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["VimBlock"]
    supports_gradient_checkpointing = True

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() / .half(): captured forwards read the old tensors
        ForwardGraphs.release(self)
        return super()._apply(fn, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        """Official init (hustvl/Vim ``VisionMamba.__init__``): trunc-normal(0.02) cls / pos / head, lecun-normal patch
        conv, PyTorch-default mixer Linears, Mamba's dt / A / D init, out_proj scaled by 1/sqrt(depth)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):  # the head; mixer Linears are redone below (modules are visited post-order)
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.lecun_normal_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, MambaMixer):
            rescale = self.config.num_hidden_layers if self.config.rescale_prenorm_residual else None
            module.reset_vision_parameters(rescale)
        elif isinstance(module, VimModel):
            if module.cls_token is not None:
                init.trunc_normal_(module.cls_token, std=std)
            if module.pos_embed is not None:
                init.trunc_normal_(module.pos_embed, std=std)


class VimModel(VimPreTrainedModel):
    """Vim backbone. ``last_hidden_state``: (batch, seqlen, hidden) after ``norm_f`` (seqlen = patches + cls token);
    ``pooler_output``: (batch, hidden) per ``config.final_pool_type``; ``hidden_states`` (when asked): the embeddings,
    then the residual stream after each block, the last entry replaced by ``last_hidden_state`` (as ssmvl's Mamba LM).
    """

    def __init__(self, config: VimConfig):
        super().__init__(config)
        self.patch_embed = VimPatchEmbeddings(config)
        n_cls = 1 if config.use_cls_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_cls_token else None
        self.pos_embed = (nn.Parameter(torch.zeros(1, config.num_patches + n_cls, config.hidden_size))
                          if config.if_abs_pos_embed else None)
        # official stochastic depth: block i drops the *incoming* mixer output with rate [0] + linspace(0, r, depth)
        n = config.num_hidden_layers
        dpr = [0.0] + [config.drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # = torch.linspace(0, r, n)
        self.layers = nn.ModuleList(VimBlock(config, i, dpr[i]) for i in range(config.num_hidden_layers))
        self.final_drop_path_rate = config.drop_path_rate
        norm_cls = RMSNorm if config.rms_norm else nn.LayerNorm
        self.norm_f = norm_cls(config.hidden_size, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.patch_embed

    def cls_token_index(self, num_patches: int) -> Optional[int]:
        """Position of the cls token in a sequence of ``num_patches`` patches (None without cls token)."""
        if not self.config.use_cls_token:
            return None
        return num_patches // 2 if self.config.use_middle_cls_token else 0

    def _check_pixel_values(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool,
                            finite: bool = True) -> Tuple[int, int]:
        cfg = self.config
        if pixel_values is None or pixel_values.dim() != 4:
            shape = None if pixel_values is None else tuple(pixel_values.shape)
            raise ValueError(f"pixel_values must be (batch, {cfg.num_channels}, height, width), got {shape}")
        check_pixel_values(pixel_values, finite=finite)
        _, channels, height, width = pixel_values.shape
        if channels != cfg.num_channels:
            raise ValueError(
                f"pixel_values has {channels} channels but the model expects num_channels={cfg.num_channels}; "
                "convert the images (e.g. the image processor's do_convert_rgb=True for grayscale / RGBA)."
            )
        p = cfg.patch_size
        if not height or not width:
            raise ValueError(f"Image size {height}x{width} has an empty side; pass images of at least one {p}x{p} "
                             "patch.")
        if height % p or width % p:
            raise ValueError(
                f"Image size {height}x{width} is not a multiple of the patch size {p}; resize or crop to a "
                f"multiple of {p} (e.g. {max(p, height // p * p)}x{max(p, width // p * p)}) first."
            )
        if (cfg.if_abs_pos_embed and (height, width) != (cfg.image_size, cfg.image_size)
                and not interpolate_pos_encoding):
            raise ValueError(
                f"Image size {height}x{width} differs from the model's image_size {cfg.image_size}x{cfg.image_size}; "
                "pass interpolate_pos_encoding=True to resample the position embedding for it."
            )
        return height // p, width // p

    def _features(self, pixel_values: torch.Tensor, grid: Tuple[int, int], output_hidden_states: bool):
        """(last_hidden_state, pooled, hidden states or None) of checked pixel_values (see forward)."""
        cfg = self.config
        x = self.patch_embed(pixel_values)  # (b, M, D)
        batch, num_patches, _ = x.shape
        cls_index = self.cls_token_index(num_patches)
        if cls_index is not None:
            cls = self.cls_token.expand(batch, -1, -1).to(x.dtype)
            x = torch.cat([x[:, :cls_index], cls, x[:, cls_index:]], dim=1)  # (b, M + 1, D)
        if self.pos_embed is not None:
            side = cfg.image_size // cfg.patch_size
            pos = resample_pos_embed(self.pos_embed, (side, side), grid, self.cls_token_index(side * side), cls_index)
            x = x + pos.to(x.dtype)

        hidden_states, residual = x, None
        all_hidden_states: Optional[List[torch.Tensor]] = [x] if output_hidden_states else None
        for block in self.layers:
            hidden_states, residual = block(hidden_states, residual)
            if output_hidden_states:
                all_hidden_states.append(residual + hidden_states)
        _, hidden_states = add_norm(  # (b, L, D)
            self.norm_f, residual, drop_path(hidden_states, self.final_drop_path_rate, self.training))
        if output_hidden_states:
            all_hidden_states[-1] = hidden_states

        if cfg.final_pool_type == "cls":
            pooled = hidden_states[:, cls_index]
        elif cfg.final_pool_type == "mean":
            pooled = hidden_states.mean(dim=1)
        else:  # "last"
            pooled = hidden_states[:, -1]
        return hidden_states, pooled, tuple(all_hidden_states) if output_hidden_states else None

    def forward(
        self,
        pixel_values: Optional[torch.FloatTensor] = None,
        output_hidden_states: Optional[bool] = None,
        interpolate_pos_encoding: bool = False,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> Union[Tuple, BaseModelOutputWithPooling]:
        r"""pixel_values: (batch, num_channels, H, W), H and W multiples of patch_size; other sizes than
        config.image_size need ``interpolate_pos_encoding=True`` (bicubic resampling of the patch positions)."""
        cfg = self.config
        output_hidden_states = output_hidden_states if output_hidden_states is not None else cfg.output_hidden_states
        return_dict = return_dict if return_dict is not None else cfg.return_dict
        graphed = not output_hidden_states and graphs_apply(self, pixel_values)  # see VimConfig.use_cuda_graph
        grid = self._check_pixel_values(pixel_values, interpolate_pos_encoding, finite=not graphed)
        out = None
        if graphed:
            out = ForwardGraphs.run(self, lambda pv: self._features(pv, grid, False)[:2], (pixel_values,))
            check_pixel_values(pixel_values)  # after the replay's launch: its wait overlaps the kernels
        if out is not None:
            hidden_states, pooled, all_hidden_states = *out, None
        else:
            hidden_states, pooled, all_hidden_states = self._features(pixel_values, grid, output_hidden_states)
        if not return_dict:
            return tuple(v for v in (hidden_states, pooled, all_hidden_states) if v is not None)
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=pooled,
                                          hidden_states=all_hidden_states)


class VimForImageClassification(VimPreTrainedModel):
    """Vim backbone + linear ``head`` on the pooled feature (official ``VisionMamba.head``)."""

    def __init__(self, config: VimConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vim = VimModel(config)
        self.head = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(
        self,
        pixel_values: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        output_hidden_states: Optional[bool] = None,
        interpolate_pos_encoding: bool = False,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> Union[Tuple, ImageClassifierOutput]:
        r"""labels: (batch,) class ids for single-label classification, (batch, num_labels) floats for multi-label, or
        regression targets (num_labels == 1); the loss follows transformers' ``config.problem_type`` convention."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.vim(pixel_values, output_hidden_states=output_hidden_states,
                           interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True)
        logits = self.head(outputs.pooler_output.to(self.head.weight.dtype) if self.num_labels > 0
                           else outputs.pooler_output)  # (b, num_labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        if not return_dict:
            out = tuple(v for v in (logits, outputs.hidden_states) if v is not None)
            return (loss,) + out if loss is not None else out
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


__all__ = ["VimPreTrainedModel", "VimModel", "VimForImageClassification"]

# save_pretrained writes `auto_map` and copies this file and its sibling imports, so that
# AutoModel*/AutoConfig.from_pretrained(..., trust_remote_code=True) works without ssmvl installed.
VimConfig.register_for_auto_class()
VimModel.register_for_auto_class("AutoModel")
VimForImageClassification.register_for_auto_class("AutoModelForImageClassification")
