"""STORM as transformers models: selective token retention with Mamba for images and videos (image STORM, "Selective
Token Retention and Mamba"; video STORM, arXiv 2503.04130). Written from the papers' descriptions; no upstream code.

    pixel_values (b, C, H, W) = a video of one frame, or pixel_values_videos (b, T, C, H, W)
    -> frame encoder per frame: patch_embed (Conv2d) + pos_embed (learned 2-D, resampled for other sizes),
       or a nested vision tower (Vim / ViT / SigLIP / ...) whose patch tokens go through frame_proj  -> (b*T, M, D)
    -> frame_layers x MambaBlock per frame -> + temporal_embed[:T] -> (b, T*M, D)
    -> temporal_layers x MambaBlock over the tokens of all frames (frame-major order)
    -> temporal pooling: mean of each group of temporal_pool frames -> (b, N = ceil(T / temporal_pool) * M, D)
    -> num_hidden_layers x StormBlock, each:
         memory write   memory (b, K, D) += cross-attention of the memory over all N_i tokens (dropped ones included)
         retention      score each token, keep the top round(keep_ratio * N_i) in their original order (gated by score)
         Mamba layer    pre-norm residual MambaMixer over [memory; kept tokens]; the memory part is the new memory
    -> norm_f -> last_hidden_state (b, N_out, D) kept tokens, memory_tokens (b, K, D), pooler_output = mean of both
    -> head (Linear) -> logits

With every keep ratio 1.0 and no memory tokens the STORM blocks are plain pre-norm Mamba blocks (tests/test_storm.py
checks this against an independent forward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import ModelOutput, logging

from .configuration_storm import FRAME_ENCODER_PREFIX_TOKENS, StormConfig, _pair, num_kept
from .hf_compat import NamesReplacedFilesMixin, set_auto_map
from .modeling_vim import VimPatchEmbeddings, resample_pos_embed
from .ssm_layers import GradientCheckpointingLayer, MambaBlock, MambaMixer, RMSNorm, check_pixel_values, init


if TYPE_CHECKING:  # never runs: names every sibling file for transformers 5.0's remote-code copy (see hf_compat.py)
    from .cuda_graphs import ForwardGraphs  # noqa: F401
    from .config_checks import check_int  # noqa: F401
    from .configuration_mamba_lm import MambaLMConfig  # noqa: F401
    from .configuration_ssm_vlm import SsmVlmConfig  # noqa: F401
    from .configuration_vim import VimConfig  # noqa: F401
    from .configuration_vmamba import VMambaConfig  # noqa: F401
    from .modeling_mamba_lm import MambaLMModel  # noqa: F401
    from .modeling_vmamba import VMambaModel  # noqa: F401
    from .ssm_ops import resolve_backend  # noqa: F401
    from .ssm_triton import selective_scan_triton  # noqa: F401
    from .vlm_bridge import BridgeVisionModel  # noqa: F401
    from .vlm_projectors import build_projector  # noqa: F401


logger = logging.get_logger(__name__)


@dataclass
class StormModelOutput(ModelOutput):
    """last_hidden_state: (batch, n_tokens_out, hidden) the kept tokens after norm_f, in their original (frame, row,
    column) order; n_tokens_out = ``config.num_output_tokens(num_frames)``. pooler_output: (batch, hidden) mean of the
    kept tokens and the memory. memory_tokens: (batch, num_memory_tokens, hidden) the final memory after norm_f (None
    without memory). kept_tokens: one (batch, n_i) LongTensor per STORM block, the positions (in the sequence entering
    the first block, i.e. frame_after_pooling * M + row * cols + col) of the tokens that block kept; ``n_i`` follows
    ``config.token_counts``. hidden_states (when asked): the tokens entering the first block, then the kept tokens after
    each block (lengths shrink), the last entry replaced by last_hidden_state."""

    last_hidden_state: Optional[torch.FloatTensor] = None
    pooler_output: Optional[torch.FloatTensor] = None
    memory_tokens: Optional[torch.FloatTensor] = None
    kept_tokens: Optional[Tuple[torch.LongTensor, ...]] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None


@dataclass
class StormClassifierOutput(ImageClassifierOutput):
    """ImageClassifierOutput (loss when labels are given, logits (batch, num_labels), hidden_states) plus the
    backbone's ``kept_tokens`` (see StormModelOutput): ``kept_tokens[-1].shape[1]`` tokens reached the head."""

    kept_tokens: Optional[Tuple[torch.LongTensor, ...]] = None


def build_mixer(config: StormConfig, layer_idx: int) -> MambaMixer:
    return MambaMixer(
        config.hidden_size, config.intermediate_size, state_size=config.state_size, conv_kernel=config.conv_kernel,
        time_step_rank=config.time_step_rank, use_bias=config.use_bias, use_conv_bias=config.use_conv_bias,
        bidirectional=config.bidirectional, layer_idx=layer_idx, ssm_backend=config.ssm_backend,
    )


def build_mamba_block(config: StormConfig, layer_idx: int) -> MambaBlock:
    """A pre-norm residual Mamba block (``h + mixer(norm(h))``) for the frame and temporal layers."""
    return MambaBlock(config.hidden_size, build_mixer(config, layer_idx), norm_eps=config.layer_norm_epsilon,
                      residual_in_fp32=config.residual_in_fp32)


def temporal_mean_pool(x: torch.Tensor, pool: int) -> torch.Tensor:
    """x: (b, T, M, D) -> (b, ceil(T / pool), M, D), each output frame the mean of ``pool`` consecutive frames (the
    last group may be shorter)."""
    if pool == 1 or x.shape[1] == 1:
        return x
    return torch.stack([x[:, t:t + pool].mean(dim=1) for t in range(0, x.shape[1], pool)], dim=1)


class StormRetention(nn.Module):
    """Learned token retention: a score per token (RMSNorm -> Linear(hidden, 1)), the top-k tokens kept in their
    original order, multiplied by a gate of their score so that the scorer gets gradients (``config.retention_gate``:
    "straight_through" -- value 1, gradient of sigmoid(s) relative to itself -- or "sigmoid")."""

    def __init__(self, config: StormConfig, keep_ratio: float):
        super().__init__()
        self.keep_ratio = keep_ratio
        self.gate = config.retention_gate
        self.norm = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.scorer = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor, positions: torch.Tensor):
        """hidden_states: (b, n, D), positions: (b, n) -> kept (b, k, D), their positions (b, k), scores (b, n)."""
        dtype = self.norm.weight.dtype
        scores = self.scorer(self.norm(hidden_states.to(dtype))).squeeze(-1).float()  # (b, n)
        k = num_kept(hidden_states.shape[1], self.keep_ratio)
        index = scores.topk(k, dim=1, sorted=False).indices.sort(dim=1).values  # (b, k), original order
        kept = hidden_states.gather(1, index[..., None].expand(-1, -1, hidden_states.shape[-1]))  # (b, k, D)
        kept_scores = scores.gather(1, index)  # (b, k)
        if self.gate == "sigmoid":
            gate = torch.sigmoid(kept_scores)
        else:  # straight-through: exactly 1 forward, d/ds = 1 - sigmoid(s) backward
            log_gate = F.logsigmoid(kept_scores)
            gate = torch.exp(log_gate - log_gate.detach())
        return kept * gate[..., None].to(kept.dtype), positions.gather(1, index), scores


class StormMemoryWriter(nn.Module):
    """The memory reads the tokens: one single-head cross-attention, queries from the memory, keys / values from all
    tokens of the block (before retention drops any), added to the memory (residual)."""

    def __init__(self, config: StormConfig):
        super().__init__()
        d = config.hidden_size
        self.norm_memory = RMSNorm(d, eps=config.layer_norm_epsilon)
        self.norm_tokens = RMSNorm(d, eps=config.layer_norm_epsilon)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, memory: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """memory: (b, K, D), hidden_states: (b, n, D) -> memory (b, K, D)."""
        dtype = self.q_proj.weight.dtype
        q = self.q_proj(self.norm_memory(memory.to(dtype)))  # (b, K, D)
        tokens = self.norm_tokens(hidden_states.to(dtype))
        k, v = self.k_proj(tokens), self.v_proj(tokens)  # (b, n, D)
        weights = torch.softmax((q @ k.transpose(1, 2)).float() / math.sqrt(q.shape[-1]), dim=-1)  # (b, K, n)
        return memory + self.o_proj((weights.to(v.dtype) @ v))  # (b, K, D)


class StormBlock(GradientCheckpointingLayer):
    """One STORM block: memory write -> retention (absent when keep_ratio is 1.0) -> pre-norm residual Mamba layer over
    ``[memory; kept tokens]`` (memory first, so every token's scan starts from the memory's state)."""

    def __init__(self, config: StormConfig, layer_idx: int, keep_ratio: float):
        super().__init__()
        self.layer_idx = layer_idx
        self.residual_in_fp32 = config.residual_in_fp32
        self.memory_writer = StormMemoryWriter(config) if config.num_memory_tokens else None
        self.retention = StormRetention(config, keep_ratio) if keep_ratio < 1.0 else None
        self.norm = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mixer = build_mixer(config, layer_idx)

    def forward(self, hidden_states: torch.Tensor, memory: Optional[torch.Tensor], positions: torch.Tensor):
        """hidden_states: (b, n, D), memory: (b, K, D) or None, positions: (b, n) -> (kept (b, k, D), memory, positions
        (b, k)). Tensors are positional (gradient checkpointing replays them)."""
        if memory is not None:
            memory = self.memory_writer(memory, hidden_states)
        if self.retention is not None:
            hidden_states, positions, _ = self.retention(hidden_states, positions)  # (b, k, D), (b, k)
        num_memory = 0 if memory is None else memory.shape[1]
        sequence = hidden_states if memory is None else torch.cat([memory.to(hidden_states.dtype), hidden_states], 1)
        residual = sequence.to(torch.float32) if self.residual_in_fp32 else sequence
        sequence = residual + self.mixer(self.norm(sequence.to(dtype=self.norm.weight.dtype)))  # (b, K + k, D)
        if memory is not None:
            memory = sequence[:, :num_memory]
        return sequence[:, num_memory:], memory, positions


class StormPreTrainedModel(NamesReplacedFilesMixin, PreTrainedModel):
    config_class = StormConfig
    base_model_prefix = "storm"
    main_input_name = "pixel_values"
    input_modalities = ("image", "video")
    _no_split_modules = ["StormBlock", "MambaBlock", "VimBlock"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True  # for a transformers frame encoder (ViT / SigLIP ...); STORM's own layers use no attention

    @torch.no_grad()
    def _init_weights(self, module):
        """Trunc-normal(initializer_range) Linears and embeddings, lecun-normal patch conv, Mamba's dt / A / D init with
        out_proj scaled by 1/sqrt(number of Mamba layers) (as Vim). A nested frame encoder initialises itself."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):  # head, scorers, memory writers, frame_proj; mixer Linears redone below
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.lecun_normal_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, MambaMixer):
            rescale = self.config.num_mamba_layers if self.config.rescale_prenorm_residual else None
            module.reset_vision_parameters(rescale)
        elif isinstance(module, StormModel):
            for param in (module.pos_embed, module.temporal_embed, module.memory_tokens):
                if param is not None:
                    init.trunc_normal_(param, std=std)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As PreTrainedModel's, with every Auto class of the family in `auto_map` (a class has one `_auto_class`), so
        that AutoModel / AutoModelForImageClassification / AutoModelForVideoClassification all load the folder with
        trust_remote_code. The two heads share one layout (``storm.*``, ``head.*``): either loads the other's
        weights."""
        set_auto_map(self, {"AutoModel": "StormModel",
                            "AutoModelForImageClassification": "StormForImageClassification",
                            "AutoModelForVideoClassification": "StormForVideoClassification"})
        return super().save_pretrained(save_directory, *args, **kwargs)


class StormModel(StormPreTrainedModel):
    """STORM backbone (also the video tower of a VLM): ``forward(pixel_values=...)`` for images (b, C, H, W) or
    ``forward(pixel_values_videos=...)`` for videos (b, T, C, H, W) -> `StormModelOutput`; ``last_hidden_state`` has
    ``config.num_output_tokens(T)`` tokens."""

    def __init__(self, config: StormConfig):
        super().__init__(config)
        d = config.hidden_size
        self.frame_encoder, self.frame_proj, self.patch_embed, self.pos_embed = None, None, None, None
        if config.vision_config is not None:
            # imported here, not at the top: the VLM's modeling file imports this one to take STORM as a video tower
            from .modeling_ssm_vlm import build_vision_tower

            self.frame_encoder = build_vision_tower(config.vision_config)
            config.vision_config = self.frame_encoder.config  # one config object: edits reach save_pretrained
            self.frame_proj = nn.Linear(config.vision_config.hidden_size, d)
        else:
            self.patch_embed = VimPatchEmbeddings(config)
            self.pos_embed = nn.Parameter(torch.zeros(1, config.tokens_per_frame(), d))
        self.temporal_embed = nn.Parameter(torch.zeros(1, config.num_frames, 1, d))
        n_frame, n_temporal = config.frame_layers, config.temporal_layers
        self.frame_layers = nn.ModuleList(build_mamba_block(config, i) for i in range(n_frame))
        self.temporal_layers = nn.ModuleList(build_mamba_block(config, n_frame + i) for i in range(n_temporal))
        self.memory_tokens = (nn.Parameter(torch.zeros(1, config.num_memory_tokens, d)) if config.num_memory_tokens
                              else None)
        self.layers = nn.ModuleList(StormBlock(config, n_frame + n_temporal + i, ratio)
                                    for i, ratio in enumerate(config.keep_ratios))
        self.norm_f = RMSNorm(d, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.patch_embed if self.frame_encoder is None else self.frame_encoder.get_input_embeddings()

    # -- inputs ------------------------------------------------------------------------------------------------------
    def video_input(self, pixel_values: Optional[torch.Tensor] = None,
                    pixel_values_videos: Optional[torch.Tensor] = None, interpolate_pos_encoding: bool = False
                    ) -> torch.Tensor:
        """The checked input as a video (b, T, C, H, W): ``pixel_values`` (b, C, H, W) is one frame; a 5-D
        ``pixel_values`` is taken as a video too. Every problem is a ValueError that names it and the fix."""
        cfg = self.config
        if pixel_values is not None and pixel_values_videos is not None:
            raise ValueError("Pass either pixel_values (images) or pixel_values_videos (videos), not both.")
        if pixel_values_videos is not None:
            if pixel_values_videos.dim() != 5:
                raise ValueError(
                    f"pixel_values_videos must be 5-D (batch, frames, {cfg.num_channels}, height, width), got shape "
                    f"{tuple(pixel_values_videos.shape)}; pass a batch of images as pixel_values, or add the frame "
                    "axis with pixel_values_videos.unsqueeze(1)."
                )
            video = pixel_values_videos
        elif pixel_values is not None:
            if pixel_values.dim() not in (4, 5):
                raise ValueError(
                    f"pixel_values must be (batch, {cfg.num_channels}, height, width) for images or (batch, frames, "
                    f"{cfg.num_channels}, height, width) for videos, got shape {tuple(pixel_values.shape)}."
                )
            video = pixel_values.unsqueeze(1) if pixel_values.dim() == 4 else pixel_values
        else:
            raise ValueError("StormModel needs pixel_values (batch, C, H, W) or pixel_values_videos "
                             "(batch, frames, C, H, W).")
        check_pixel_values(video, "pixel_values_videos" if pixel_values_videos is not None else "pixel_values")
        _, frames, channels, height, width = video.shape
        if frames == 0:
            raise ValueError(f"The video has no frames (shape {tuple(video.shape)}, frames == 0); give each video at "
                             "least one frame.")
        if frames > cfg.num_frames:
            raise ValueError(
                f"The video has {frames} frames but config.num_frames={cfg.num_frames} (the temporal embedding has "
                f"{cfg.num_frames} positions); sample at most {cfg.num_frames} frames, or build the model with "
                f"num_frames>={frames}."
            )
        if channels != cfg.num_channels:
            raise ValueError(
                f"The frames have {channels} channels but the model expects num_channels={cfg.num_channels}; convert "
                "them (e.g. to RGB), or check the axis order: images are (batch, C, H, W), videos (batch, frames, C, "
                "H, W)."
            )
        (ph, pw), (h0, w0) = _pair(cfg.patch_size), _pair(cfg.image_size)
        if not height or not width:
            raise ValueError(f"Image size {height}x{width} has an empty side; pass frames of at least one {ph}x{pw} "
                             "patch.")
        if height % ph or width % pw:
            raise ValueError(
                f"Image size {height}x{width} is not a multiple of the patch size {ph}x{pw}; resize or crop "
                f"to a multiple (e.g. {max(ph, height // ph * ph)}x{max(pw, width // pw * pw)}) first."
            )
        if (height, width) != (h0, w0) and not interpolate_pos_encoding:
            raise ValueError(
                f"Image size {height}x{width} differs from the model's image_size {h0}x{w0}; resize the frames, or "
                "pass interpolate_pos_encoding=True to resample the position embedding for it."
            )
        return video

    # -- frames -> tokens --------------------------------------------------------------------------------------------
    def embed_frames(self, frames: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """frames (n, C, H, W) -> patch tokens (n, M, hidden): STORM's patch embedding + 2-D positions, or the frame
        encoder's patch tokens (CLS-like tokens dropped) through frame_proj."""
        cfg = self.config
        if self.frame_encoder is None:
            x = self.patch_embed(frames)  # (n, M, D)
            rows, cols = cfg.frame_grid()
            pos = resample_pos_embed(self.pos_embed, (rows, cols), cfg.frame_grid(tuple(frames.shape[-2:])), None,
                                     None)
            return x + pos.to(x.dtype)
        encoder_dtype = next(self.frame_encoder.parameters()).dtype
        kwargs = {"interpolate_pos_encoding": True} if interpolate_pos_encoding else {}
        tokens = self.frame_encoder(frames.to(encoder_dtype), return_dict=True, **kwargs).last_hidden_state
        prefix = FRAME_ENCODER_PREFIX_TOKENS[cfg.vision_config.model_type]
        if prefix is None:  # Vim: its cls token sits in the middle or first, if it has one
            index = self.frame_encoder.cls_token_index(tokens.shape[1] - 1) if cfg.vision_config.use_cls_token else None
            if index is not None:
                tokens = torch.cat([tokens[:, :index], tokens[:, index + 1:]], dim=1)
        elif prefix:
            tokens = tokens[:, prefix:]
        return self.frame_proj(tokens.to(self.frame_proj.weight.dtype))  # (n, M, D)

    def forward(
        self,
        pixel_values: Optional[torch.FloatTensor] = None,
        pixel_values_videos: Optional[torch.FloatTensor] = None,
        output_hidden_states: Optional[bool] = None,
        interpolate_pos_encoding: bool = False,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> Union[Tuple, StormModelOutput]:
        r"""pixel_values: images (batch, C, H, W) (or videos, 5-D); pixel_values_videos: videos (batch, frames, C, H, W)
        with 1 <= frames <= config.num_frames. H and W multiples of the patch size; other sizes than config.image_size
        need ``interpolate_pos_encoding=True``."""
        cfg = self.config
        output_hidden_states = output_hidden_states if output_hidden_states is not None else cfg.output_hidden_states
        return_dict = return_dict if return_dict is not None else cfg.return_dict
        video = self.video_input(pixel_values, pixel_values_videos, interpolate_pos_encoding)
        batch, frames = video.shape[:2]

        x = self.embed_frames(video.flatten(0, 1), interpolate_pos_encoding)  # (b*T, M, D)
        tokens_per_frame, dim = x.shape[1], x.shape[2]
        for layer in self.frame_layers:  # each frame on its own
            x = layer(x)
        x = x.reshape(batch, frames, tokens_per_frame, dim) + self.temporal_embed[:, :frames].to(x.dtype)
        x = x.reshape(batch, frames * tokens_per_frame, dim)  # frame-major
        for layer in self.temporal_layers:  # across frames
            x = layer(x)
        x = temporal_mean_pool(x.reshape(batch, frames, tokens_per_frame, dim), cfg.temporal_pool)
        x = x.flatten(1, 2)  # (b, N, D), N = ceil(T / temporal_pool) * M (flatten, not reshape(b, -1): b may be 0)

        positions = torch.arange(x.shape[1], device=x.device).expand(batch, -1)  # (b, N)
        memory = None if self.memory_tokens is None else self.memory_tokens.expand(batch, -1, -1).to(x.dtype)
        all_hidden_states: Optional[List[torch.Tensor]] = [x] if output_hidden_states else None
        kept_tokens = []
        for block in self.layers:
            x, memory, positions = block(x, memory, positions)  # (b, k_i, D), (b, K, D), (b, k_i)
            kept_tokens.append(positions)
            if output_hidden_states:
                all_hidden_states.append(x)

        num_memory = 0 if memory is None else memory.shape[1]
        sequence = x if memory is None else torch.cat([memory, x], dim=1)
        sequence = self.norm_f(sequence.to(dtype=self.norm_f.weight.dtype))  # (b, K + k, D)
        hidden_states = sequence[:, num_memory:]
        memory_out = sequence[:, :num_memory] if num_memory else None
        pooled = sequence.mean(dim=1)  # (b, D)
        if output_hidden_states:
            all_hidden_states[-1] = hidden_states
            all_hidden_states = tuple(all_hidden_states)
        if not return_dict:
            return tuple(v for v in (hidden_states, pooled, memory_out, tuple(kept_tokens), all_hidden_states)
                         if v is not None)
        return StormModelOutput(last_hidden_state=hidden_states, pooler_output=pooled, memory_tokens=memory_out,
                                kept_tokens=tuple(kept_tokens), hidden_states=all_hidden_states)


class StormForImageClassification(StormPreTrainedModel):
    """STORM backbone + linear ``head`` on the pooled feature, for images (batch, C, H, W)."""

    def __init__(self, config: StormConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.storm = StormModel(config)
        self.head = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def _classify(self, pixel_values, pixel_values_videos, labels, output_hidden_states, interpolate_pos_encoding,
                  return_dict, kwargs) -> Union[Tuple, StormClassifierOutput]:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.storm(pixel_values=pixel_values, pixel_values_videos=pixel_values_videos,
                             output_hidden_states=output_hidden_states,
                             interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True)
        pooled = outputs.pooler_output
        logits = self.head(pooled.to(self.head.weight.dtype) if self.num_labels > 0 else pooled)  # (b, num_labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        if not return_dict:
            out = tuple(v for v in (logits, outputs.hidden_states) if v is not None)
            return (loss,) + out if loss is not None else out
        return StormClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                     kept_tokens=outputs.kept_tokens)

    def forward(
        self,
        pixel_values: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        output_hidden_states: Optional[bool] = None,
        interpolate_pos_encoding: bool = False,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> Union[Tuple, StormClassifierOutput]:
        r"""pixel_values: (batch, C, H, W). labels: (batch,) class ids for single-label classification, (batch,
        num_labels) floats for multi-label, or regression targets (num_labels == 1); the loss follows transformers'
        ``config.problem_type`` convention."""
        videos_given = kwargs.pop("pixel_values_videos", None) is not None
        if videos_given or (pixel_values is not None and pixel_values.dim() == 5):
            raise ValueError("StormForImageClassification takes images, pixel_values (batch, C, H, W); for videos "
                             "(batch, frames, C, H, W) use StormForVideoClassification (same weights).")
        if pixel_values is not None and pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be (batch, {self.config.num_channels}, height, width), got shape "
                             f"{tuple(pixel_values.shape)}.")
        return self._classify(pixel_values, None, labels, output_hidden_states, interpolate_pos_encoding, return_dict,
                              kwargs)


class StormForVideoClassification(StormForImageClassification):
    """STORM backbone + linear ``head``, for videos (batch, frames, C, H, W) given as ``pixel_values_videos`` or as a
    5-D ``pixel_values`` (what transformers' video processors return). Same layout as the image classifier."""

    main_input_name = "pixel_values_videos"

    def forward(
        self,
        pixel_values_videos: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        output_hidden_states: Optional[bool] = None,
        interpolate_pos_encoding: bool = False,
        return_dict: Optional[bool] = None,
        pixel_values: Optional[torch.FloatTensor] = None,
        **kwargs,
    ) -> Union[Tuple, StormClassifierOutput]:
        r"""pixel_values_videos (or pixel_values): (batch, frames, C, H, W), 1 <= frames <= config.num_frames. labels:
        as StormForImageClassification's."""
        if pixel_values is not None and pixel_values_videos is not None:
            raise ValueError("Pass the videos once: pixel_values_videos or pixel_values, not both.")
        video = pixel_values_videos if pixel_values_videos is not None else pixel_values
        if video is not None and video.dim() != 5:
            name = "pixel_values_videos" if pixel_values_videos is not None else "pixel_values"
            raise ValueError(
                f"StormForVideoClassification takes videos (batch, frames, {self.config.num_channels}, height, width); "
                f"{name} has shape {tuple(video.shape)}. For images (batch, C, H, W) use StormForImageClassification "
                "(same weights), or add the frame axis with .unsqueeze(1)."
            )
        return self._classify(None, video, labels, output_hidden_states, interpolate_pos_encoding, return_dict, kwargs)


__all__ = ["StormPreTrainedModel", "StormModel", "StormForImageClassification", "StormForVideoClassification",
           "StormModelOutput", "StormClassifierOutput"]

# save_pretrained writes `auto_map` (all three Auto classes, see StormPreTrainedModel.save_pretrained) and copies this
# file and its sibling imports, so that the Auto classes load the folder with trust_remote_code=True without ssmvl.
StormConfig.register_for_auto_class()
StormModel.register_for_auto_class("AutoModel")
StormForImageClassification.register_for_auto_class("AutoModelForImageClassification")
StormForVideoClassification.register_for_auto_class("AutoModelForVideoClassification")
