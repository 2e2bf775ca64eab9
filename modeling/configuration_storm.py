"""Configuration of STORM: selective token retention with Mamba, for images and videos (image STORM, "Selective Token
Retention and Mamba"; video STORM, Jiang et al. 2025, arXiv 2503.04130, "Token-Efficient Long Video Understanding for
Multimodal LLMs"): a per-frame encoder, Mamba layers over the tokens of all frames, temporal pooling, then blocks that
alternate a learned top-k token retention with a Mamba layer over the kept tokens and a cross-layer memory pool."""

from __future__ import annotations

import copy
import math
import numbers
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from transformers import PretrainedConfig
from transformers.models.auto.configuration_auto import AutoConfig

from .config_checks import check_choice, check_int, check_number, check_time_step_rank, is_int

if TYPE_CHECKING:  # never runs: names every sibling file for transformers 5.0's remote-code copy (see hf_compat.py)
    from .configuration_mamba_lm import MambaLMConfig  # noqa: F401
    from .configuration_vim import VimConfig  # noqa: F401
    from .configuration_vmamba import VMambaConfig  # noqa: F401
    from .hf_compat import CACHE_NAME  # noqa: F401
    from .ssm_layers import MambaMixer  # noqa: F401
    from .ssm_ops import resolve_backend  # noqa: F401
    from .ssm_triton import selective_scan_triton  # noqa: F401
    from .vlm_bridge import BridgeVisionConfig  # noqa: F401


# Frame encoders a nested `vision_config` may name, and how many leading non-patch tokens (CLS) each returns; the frame
# tokens are the patch tokens only. Vim's cls token (middle or first) is found by the model (VimModel.cls_token_index).
FRAME_ENCODER_PREFIX_TOKENS = {"vit": 1, "clip_vision_model": 1, "dinov2": 1, "siglip_vision_model": 0,
                               "ssmvl_vim": None}
FRAME_ENCODER_TYPES = tuple(FRAME_ENCODER_PREFIX_TOKENS)
RETENTION_GATES = ("straight_through", "sigmoid")


def _pair(value) -> Tuple[int, int]:
    """An image / patch size given as an int or a (height, width) pair."""
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def default_keep_ratios(num_blocks: int) -> List[float]:
    """0.7 for every third block, 1.0 for the others (token pruning at three evenly spaced stages, as DynamicViT)."""
    return [0.7 if (i + 1) % 3 == 0 else 1.0 for i in range(num_blocks)]


def num_kept(num_tokens: int, keep_ratio: float) -> int:
    """Tokens one retention step keeps out of ``num_tokens``: ``round(keep_ratio * num_tokens)`` (halves round up), at
    least 1, at most ``num_tokens``."""
    return max(1, min(num_tokens, int(math.floor(keep_ratio * num_tokens + 0.5))))


class StormConfig(PretrainedConfig):
    r"""
    Configuration of a [`StormModel`] / [`StormForImageClassification`] / [`StormForVideoClassification`]. Defaults give
    the `configs/storm-tiny.json` preset (7.2M parameters with a 1000-class head); `configs/storm-small.json` (26.6M)
    is the larger one.

    The model (an image is a video of one frame):

        frames (b, T, C, H, W) -> frame encoder per frame -> (b*T, M, hidden) -> `frame_layers` Mamba blocks per frame
        -> + temporal embedding -> (b, T*M, hidden) -> `temporal_layers` Mamba blocks over the tokens of all frames
        -> temporal pooling (mean of each group of `temporal_pool` frames) -> (b, ceil(T / temporal_pool) * M, hidden)
        -> `num_hidden_layers` STORM blocks, block i: memory write, retention (keep `keep_ratios[i]` of the tokens),
           Mamba layer over [memory; kept tokens] -> norm_f -> last_hidden_state (kept tokens), pooler_output (mean of
           kept tokens and memory) -> head

    Args:
        image_size (`int`, *optional*, defaults to 224): side of the square training frames; STORM's own 2-D position
            embedding has `(image_size // patch_size) ** 2` positions (other sides that are multiples of `patch_size`
            run with `interpolate_pos_encoding=True`, bicubic resampling). With a `vision_config` it is the frame
            encoder's `image_size` (filled in when None; a different value is an error).
        patch_size (`int`, *optional*, defaults to 16): side of the square patches of STORM's own patch embedding
            (Conv2d, kernel = stride = patch_size). With a `vision_config`: the frame encoder's.
        num_channels (`int`, *optional*, defaults to 3): input channels. With a `vision_config`: the frame encoder's.
        hidden_size (`int`, defaults to 192): width of every STORM layer (the frame encoder's tokens are projected to it
            by `frame_proj` when a `vision_config` is given).
        num_hidden_layers (`int`, defaults to 12): number of STORM blocks (retention + Mamba layer + memory); one keep
            ratio each.
        keep_ratios (`list[float]`, *optional*): fraction of the tokens each STORM block keeps, in (0, 1], one per
            block; block i keeps `round(keep_ratios[i] * n)` (at least 1) of the n tokens it receives, so the ratios
            compound (`token_counts()` / `num_output_tokens()` give the numbers).
            1.0 keeps every token and the block has no scorer (it is then a plain Mamba block, plus the memory).
            Defaults to 0.7 for every third block (blocks 3, 6, 9, ...; DynamicViT's schedule) and 1.0 for the others.
        num_memory_tokens (`int`, defaults to 8): size of the global memory pool: learned tokens that every STORM block
            reads and updates. Each block first writes into the memory (one cross-attention of the memory over all the
            tokens it receives, including those it is about to drop, so their context survives), then runs its Mamba
            layer over `[memory; kept tokens]`: the tokens read the memory through the scan, and the memory positions'
            outputs are the updated memory handed to the next block. 0 disables the memory.
        retention_gate (`str`, defaults to `"straight_through"`): how the retention trains. A scorer (RMSNorm ->
            Linear(hidden, 1)) gives each token a score s; the top-k tokens by score are kept, in their original
            (frame, row, column) order, the others dropped. Top-k has no gradient, so the kept tokens are multiplied by
            a gate of their score:
            - `"straight_through"`: the gate is `exp(logsigmoid(s) - logsigmoid(s).detach())`, exactly 1 in the forward
              pass (the kept tokens are unchanged; training and inference compute the same function) with the gradient
              of `sigmoid(s)` relative to itself, `1 - sigmoid(s)`, in the backward pass.
            - `"sigmoid"`: the gate is `sigmoid(s)` (TokenLearner-like soft weighting; the forward pass scales the kept
              tokens).
        state_size (`int`, defaults to 16): SSM state size N of every Mamba layer.
        expand (`int`, defaults to 2): `intermediate_size = expand * hidden_size` when `intermediate_size` is not given.
        intermediate_size (`int`, *optional*): inner width of the Mamba mixers.
        conv_kernel (`int`, defaults to 4): width of the mixers' causal depthwise conv.
        time_step_rank (`int` or `"auto"`, defaults to `"auto"`): rank of the dt projection; auto =
            ceil(hidden_size / 16).
        use_bias (`bool`, defaults to False): bias in the mixers' in_proj / out_proj.
        use_conv_bias (`bool`, defaults to True): bias in the mixers' convs.
        bidirectional (`bool`, defaults to True): every Mamba layer (frame, temporal and STORM blocks) scans both ways,
            Vim's bimamba v2 (`MambaMixer(bidirectional=True)`, the two directions averaged); False: forward scan only.
        frame_layers (`int`, defaults to 4): Mamba blocks applied to each frame on its own, after the patch embedding
            (or after `frame_proj` with a `vision_config`).
        temporal_layers (`int`, defaults to 2): Mamba blocks over the tokens of all frames of a video, frame after
            frame (frame-major order), mixing information across frames (video STORM's temporal encoder).
        num_frames (`int`, defaults to 8): most frames per video; the learned temporal embedding has `num_frames`
            positions. A video with more frames is a `ValueError` (sample at most `num_frames`, or build the model
            with a larger value).
        temporal_pool (`int`, defaults to 1): after the temporal layers, each group of `temporal_pool` consecutive
            frames is averaged into one (video STORM's temporal pooling); the last group may be shorter (it is the mean
            of the frames it has). 1 keeps every frame.
        vision_config (`dict` or `PretrainedConfig`, *optional*): a frame encoder instead of STORM's own patch
            embedding: ssmvl's Vim (`"ssmvl_vim"`) or a transformers `"vit"`, `"siglip_vision_model"`,
            `"clip_vision_model"` or `"dinov2"` config (a dict needs its `model_type`; built as the VLM builds its
            tower, with `build_sub_config` / `build_vision_tower`). Its `last_hidden_state` patch tokens (CLS-like
            tokens dropped) go through `frame_proj` (Linear to `hidden_size`); STORM's own 2-D position embedding is
            then not used (the encoder has its own positions). None (default): STORM's patch embedding + learned 2-D
            positions.
        layer_norm_epsilon (`float`, defaults to 1e-5): epsilon of the RMSNorms.
        residual_in_fp32 (`bool`, defaults to True): keep the residual stream of the Mamba blocks in float32.
        rescale_prenorm_residual (`bool`, defaults to True): scale each mixer's out_proj init by 1/sqrt(number of Mamba
            layers), as Mamba / Vim.
        initializer_range (`float`, defaults to 0.02): std of the truncated normal init of the position, temporal and
            memory embeddings, the scorers, the memory writers, `frame_proj` and the head.
        ssm_backend (`str`, *optional*): selective-scan backend ("reference", "torch", "triton", "mamba_ssm"); unset
            (None) or "auto": env SSMVL_SSM_BACKEND if set, else the fastest available (logged once).
        num_labels / id2label / label2id / problem_type: the classification head, as in every transformers config.
    """

    model_type = "ssmvl_storm"
    sub_configs = {"vision_config": AutoConfig}

    def __init__(
        self,
        image_size: Optional[int] = None,
        patch_size: Optional[int] = None,
        num_channels: Optional[int] = None,
        hidden_size: int = 192,
        num_hidden_layers: int = 12,
        keep_ratios: Optional[Sequence[float]] = None,
        num_memory_tokens: int = 8,
        retention_gate: str = "straight_through",
        state_size: int = 16,
        expand: int = 2,
        intermediate_size: Optional[int] = None,
        conv_kernel: int = 4,
        time_step_rank="auto",
        use_bias: bool = False,
        use_conv_bias: bool = True,
        bidirectional: bool = True,
        frame_layers: int = 4,
        temporal_layers: int = 2,
        num_frames: int = 8,
        temporal_pool: int = 1,
        vision_config: Union[None, dict, PretrainedConfig] = None,
        layer_norm_epsilon: float = 1e-5,
        residual_in_fp32: bool = True,
        rescale_prenorm_residual: bool = True,
        initializer_range: float = 0.02,
        ssm_backend: Optional[str] = None,
        **kwargs,
    ):
        self.vision_config = self._build_vision_config(vision_config)
        self.image_size, self.patch_size, self.num_channels = self._resolve_input(image_size, patch_size, num_channels)
        # checked first: the sizes below are computed from them
        self.hidden_size = check_int("StormConfig", "hidden_size", hidden_size)
        self.num_hidden_layers = check_int("StormConfig", "num_hidden_layers", num_hidden_layers)
        self.keep_ratios = (default_keep_ratios(num_hidden_layers) if keep_ratios is None
                            else self._keep_ratios(keep_ratios))
        self.num_memory_tokens = num_memory_tokens
        self.retention_gate = retention_gate
        self.state_size = state_size
        self.expand = check_int("StormConfig", "expand", expand)
        self.intermediate_size = intermediate_size if intermediate_size is not None else expand * hidden_size
        self.conv_kernel = conv_kernel
        self.time_step_rank = check_time_step_rank("StormConfig", time_step_rank, hidden_size)
        self.use_bias = use_bias
        self.use_conv_bias = use_conv_bias
        self.bidirectional = bidirectional
        self.frame_layers = frame_layers
        self.temporal_layers = temporal_layers
        self.num_frames = num_frames
        self.temporal_pool = temporal_pool
        self.layer_norm_epsilon = layer_norm_epsilon
        self.residual_in_fp32 = residual_in_fp32
        self.rescale_prenorm_residual = rescale_prenorm_residual
        self.initializer_range = initializer_range
        self.ssm_backend = ssm_backend
        self._validate()
        super().__init__(**kwargs)

    # -- the frame encoder ------------------------------------------------------------------------------------------
    @staticmethod
    def _build_vision_config(value) -> Optional[PretrainedConfig]:
        if value is None:
            return None
        if isinstance(value, dict) and not value.get("model_type"):
            raise ValueError("StormConfig.vision_config is a dict without 'model_type'; say which frame encoder it "
                             f"configures, one of {FRAME_ENCODER_TYPES}, e.g. {{'model_type': 'vit', ...}}.")
        # imported here, not at the top: the VLM's config imports this file to take STORM as a video tower
        from .configuration_ssm_vlm import build_sub_config

        config = build_sub_config(value, "vision_config")
        if config.model_type not in FRAME_ENCODER_TYPES:
            raise ValueError(f"StormConfig.vision_config.model_type={config.model_type!r} is not a supported frame "
                             f"encoder; use one of {FRAME_ENCODER_TYPES} (or None for STORM's own patch embedding).")
        return config

    @staticmethod
    def _keep_ratios(keep_ratios) -> List[float]:
        if isinstance(keep_ratios, (str, bytes)) or not isinstance(keep_ratios, Sequence):
            raise ValueError(f"StormConfig.keep_ratios must be a list of numbers in (0, 1] (one per block), got "
                             f"{keep_ratios!r}")
        bad = [r for r in keep_ratios if isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0.0 < r <= 1.0]
        if bad:
            raise ValueError(f"StormConfig.keep_ratios must lie in (0, 1] (the fraction of tokens each block keeps), "
                             f"got {bad}.")
        return [float(r) for r in keep_ratios]

    @staticmethod
    def _size(name: str, value):
        """An image / patch size: a positive int or a (height, width) pair of them."""
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(is_int(v) and v > 0 for v in value):
            return value
        if is_int(value) and value > 0:
            return value
        raise ValueError(f"StormConfig.{name} must be a positive integer or a (height, width) pair of them, got "
                         f"{value!r}")

    def _resolve_input(self, image_size, patch_size, num_channels):
        vc = self.vision_config
        if vc is None:
            return (self._size("image_size", 224 if image_size is None else image_size),
                    self._size("patch_size", 16 if patch_size is None else patch_size),
                    3 if num_channels is None else num_channels)
        for name, given in (("image_size", image_size), ("patch_size", patch_size), ("num_channels", num_channels)):
            encoder = getattr(vc, name)
            if given is not None and _pair(given) != _pair(encoder):
                raise ValueError(f"StormConfig.{name}={given} differs from vision_config.{name}={encoder}; the frame "
                                 f"encoder's value is the model's: set vision_config.{name} instead (or leave {name} "
                                 "unset).")
        return vc.image_size, vc.patch_size, vc.num_channels

    def _validate(self):
        for name in ("state_size", "intermediate_size", "conv_kernel", "num_frames", "temporal_pool", "num_channels"):
            check_int("StormConfig", name, getattr(self, name))
        for name in ("frame_layers", "temporal_layers", "num_memory_tokens"):
            check_int("StormConfig", name, getattr(self, name), minimum=0)
        check_number("StormConfig", "layer_norm_epsilon", self.layer_norm_epsilon, low=0.0, low_open=True)
        check_number("StormConfig", "initializer_range", self.initializer_range, low=0.0)
        if len(self.keep_ratios) != self.num_hidden_layers:
            raise ValueError(f"StormConfig.keep_ratios has {len(self.keep_ratios)} entries but num_hidden_layers="
                             f"{self.num_hidden_layers}: give one keep ratio per STORM block.")
        check_choice("StormConfig", "retention_gate", self.retention_gate, RETENTION_GATES)
        if self.vision_config is None:
            (h, w), (ph, pw) = _pair(self.image_size), _pair(self.patch_size)
            if h % ph or w % pw:
                raise ValueError(f"StormConfig.image_size={self.image_size} is not a multiple of patch_size="
                                 f"{self.patch_size}; use e.g. image_size={max(ph, h // ph * ph)}.")

    # -- token counts ------------------------------------------------------------------------------------------------
    def frame_grid(self, image_size=None) -> Tuple[int, int]:
        """(rows, cols) of patch tokens per frame at ``image_size`` (int or (height, width); default: the config's)."""
        (h, w), (ph, pw) = _pair(self.image_size if image_size is None else image_size), _pair(self.patch_size)
        return h // ph, w // pw

    def tokens_per_frame(self, image_size=None) -> int:
        rows, cols = self.frame_grid(image_size)
        return rows * cols

    def num_pooled_frames(self, num_frames: int = 1) -> int:
        """Frames left after temporal pooling: ceil(num_frames / temporal_pool)."""
        return -(-int(num_frames) // self.temporal_pool)

    def token_counts(self, num_frames: int = 1, image_size=None) -> List[int]:
        """Tokens entering the first STORM block, then after each block (``num_hidden_layers + 1`` numbers)."""
        counts = [self.num_pooled_frames(num_frames) * self.tokens_per_frame(image_size)]
        for ratio in self.keep_ratios:
            counts.append(num_kept(counts[-1], ratio))
        return counts

    def num_output_tokens(self, num_frames: int = 1, image_size=None) -> int:
        """Length of `StormModel`'s `last_hidden_state` for a video of ``num_frames`` frames (1 for an image) at
        ``image_size``: what a VLM reserves as video placeholders (the memory tokens are not part of it)."""
        return self.token_counts(num_frames, image_size)[-1]

    @property
    def num_mamba_layers(self) -> int:
        """All Mamba layers: frame + temporal + STORM blocks (the out_proj init scale uses it)."""
        return self.frame_layers + self.temporal_layers + self.num_hidden_layers

    # -- serialisation -----------------------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        output = super().to_dict()
        vc = self.vision_config
        output["vision_config"] = vc.to_dict() if isinstance(vc, PretrainedConfig) else vc
        output["keep_ratios"] = copy.deepcopy(self.keep_ratios)
        return output


__all__ = ["StormConfig", "FRAME_ENCODER_TYPES", "num_kept"]
