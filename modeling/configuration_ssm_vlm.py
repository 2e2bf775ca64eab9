"""Configuration of the ssmvl composable vision-language model: vision tower -> projector -> fusion -> causal LM."""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Union

from transformers import PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING, AutoConfig

from .config_checks import is_int
from .configuration_mamba_lm import MambaLMConfig
from .configuration_storm import StormConfig
from .configuration_vim import VimConfig
from .configuration_vmamba import VMambaConfig
from .vlm_bridge import BridgeDecoderConfig, BridgeVisionConfig, resolve_fusion_config, resolve_projector_config


if TYPE_CHECKING:  # never runs: names every sibling file for transformers 5.0's remote-code copy (see hf_compat.py)
    from .hf_compat import CACHE_NAME  # noqa: F401
    from .ssm_layers import MambaMixer  # noqa: F401
    from .ssm_ops import resolve_backend  # noqa: F401
    from .ssm_triton import selective_scan_triton  # noqa: F401


# ssmvl's own sub-config types, built without AutoConfig registration (remote code runs without ssmvl registered)
_SSMVL_CONFIGS = {
    VimConfig.model_type: VimConfig,
    VMambaConfig.model_type: VMambaConfig,
    MambaLMConfig.model_type: MambaLMConfig,
    BridgeVisionConfig.model_type: BridgeVisionConfig,
    BridgeDecoderConfig.model_type: BridgeDecoderConfig,
    StormConfig.model_type: StormConfig,
}

# Vision towers the model knows how to read, and how many leading non-patch ("CLS-like") tokens each returns
# (dinov2_with_registers: 1 + num_register_tokens; Vim's cls token sits in the middle or first, if it has one).
_PREFIX_TOKEN_TOWERS = {"vit": 1, "clip_vision_model": 1, "dinov2": 1, "dinov2_with_registers": None,
                        BridgeVisionConfig.model_type: 1}
_NO_PREFIX_TOWERS = ("siglip_vision_model",)
# STORM is the video tower: it takes pixel_values_videos (n, T, C, H, W) and returns its reduced tokens
VIDEO_TOWER_TYPES = (StormConfig.model_type,)
VISION_TOWER_TYPES = (tuple(_PREFIX_TOKEN_TOWERS) + _NO_PREFIX_TOWERS + (VimConfig.model_type, VMambaConfig.model_type)
                      + VIDEO_TOWER_TYPES)

PROJECTOR_TYPES = ("mlp", "resampler", "ssm_bridge", "bridger_ffn", "patch_linear")
FUSION_TYPES = ("prefix", "cross_attention")

# Defaults of `projector_config` per projector type (the projector classes in vlm_projectors.py read the resolved dict).
# "ssm_bridge" and the cross-attention fusion are defined in vlm_bridge.py, whose resolve_*_config own their keys.
PROJECTOR_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "mlp": {"hidden_size": None, "num_layers": 2, "hidden_act": "gelu", "bias": True},
    "resampler": {"num_queries": 256, "hidden_size": None, "num_heads": None, "layer_norm_eps": 1e-6},
    "bridger_ffn": {"expansion_factor": 4, "hidden_act": "gelu", "layer_norm_eps": 1e-5},
    "patch_linear": {"use_position_embedding": True, "bridger_ffn": False, "expansion_factor": 4, "hidden_act": "gelu",
                     "layer_norm_eps": 1e-5},
    "ssm_bridge": {},
}


def build_sub_config(value: Union[None, dict, PretrainedConfig], name: str) -> Optional[PretrainedConfig]:
    """A sub-config from a dict (its ``model_type`` picks the class: ssmvl's own types first, then transformers'
    ``CONFIG_MAPPING``), or the config itself."""
    if value is None or isinstance(value, PretrainedConfig):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"SsmVlmConfig.{name} must be a config or a dict, got {type(value).__name__}")
    value = dict(value)
    model_type = value.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"SsmVlmConfig.{name} is a dict without 'model_type'; say which model it configures, e.g. "
                         f"{{'model_type': 'llama', ...}} or {{'model_type': 'ssmvl_mamba', ...}}.")
    if model_type in _SSMVL_CONFIGS:
        return _SSMVL_CONFIGS[model_type](**value)
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"SsmVlmConfig.{name} has model_type={model_type!r}, which this transformers does not know.")
    return CONFIG_MAPPING[model_type](**value)


def _side(value) -> Tuple[int, int]:
    """An image / patch size given as an int or a (height, width) pair."""
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


class SsmVlmConfig(PretrainedConfig):
    r"""
    Configuration of a [`SsmVlmForConditionalGeneration`]: a vision tower, a projector to the text width, a fusion of
    the image tokens with the text, and a causal language model. Presets (configs/vlm-*.json, loaded with
    `ssmvl.training.vlm_presets.vlm_preset(name, size)`) reproduce the seed systems (Qwen-VL-style, Cobra-style,
    VLM-Mamba, VLM-Mamba Fuyu mode, SSM-bridge VLM) at a tiny and at their real size.

    Args:
        vision_config (`PretrainedConfig` or `dict`, *optional*): the vision tower. A transformers ViT
            (`"vit"`), SigLIP vision (`"siglip_vision_model"`), CLIP vision (`"clip_vision_model"`), DINOv2
            (`"dinov2"`, `"dinov2_with_registers"`) config, or ssmvl's Vim (`"ssmvl_vim"`) / VMamba (`"ssmvl_vmamba"`);
            or the video tower STORM (`"ssmvl_storm"`: the model then takes `pixel_values_videos` (n_videos,
            num_frames, C, H, W) and hands the decoder STORM's reduced tokens, `num_output_tokens(num_frames)` per
            video, at one `"<video>"` placeholder each); a dict needs its `model_type`. None only for
            `projector_type="patch_linear"` (no tower: raw pixel patches).
            When both vision_config and text_config are None (`SsmVlmConfig()`), the default is a Vim-tiny tower and a
            default Mamba LM.
        text_config (`PretrainedConfig` or `dict`, *optional*): the decoder: ssmvl's Mamba LM (`"ssmvl_mamba"`, with
            its constant-memory cache) or any transformers causal LM (`"llama"`, `"qwen2"`, `"gpt2"`, ...). Defaults to
            `MambaLMConfig()`.
        projector_type (`str`, defaults to `"mlp"`): how vision features become text-width tokens:
            - `"mlp"` (LLaVA / Cobra): Linear -> act -> Linear per token; keeps the token count.
            - `"resampler"` (Qwen-VL): `num_queries` learned queries cross-attend (one attention layer) to the patch
              features with 2-D sin-cos positions; output `num_queries` tokens.
            - `"ssm_bridge"` (SSM-as-VLM-bridge): state-space layers over the vision tokens (vlm_bridge.py).
            - `"bridger_ffn"` (VLM-Mamba): Linear -> GELU -> Linear -> LayerNorm per token; keeps the token count.
            - `"patch_linear"` (Fuyu mode of VLM-Mamba): no tower; raw pixel patches -> Linear (+ learned positions,
              + an optional BridgerFFN).
        projector_config (`dict`, *optional*): keyword arguments of the projector; missing keys take these defaults
            (None sizes mean the text hidden size):
            - mlp: `hidden_size` (None), `num_layers` (2: Linear-act-Linear; 1: one Linear), `hidden_act` ("gelu"),
              `bias` (True).
            - resampler: `num_queries` (256; a square number: the queries carry the positions of a sqrt x sqrt grid),
              `hidden_size` (None; the attention width), `num_heads` (None = hidden_size // 128, at least 1),
              `layer_norm_eps` (1e-6).
            - bridger_ffn: `expansion_factor` (4; inner width = expansion_factor x text hidden size), `hidden_act`
              ("gelu"), `layer_norm_eps` (1e-5).
            - patch_linear: `use_position_embedding` (True: a learned position embedding per patch, as VLM-Mamba's
              Fuyu mode; False: Fuyu's plain linear patches), `bridger_ffn` (False: the tokens are linear in the
              pixels, as Fuyu; True: then a text-width BridgerFFN, as VLM-Mamba's Fuyu mode), and the BridgerFFN's
              `expansion_factor` (4), `hidden_act` ("gelu"), `layer_norm_eps` (1e-5).
            - ssm_bridge: vlm_bridge.py's `SsmBridgeProjector` keys (`resolve_projector_config`: `ssm_type`
              "mamba" | "dense_recurrence", `hidden_size` 256, `num_layers` 4, `state_size` 64, ...); keeps the
              token count.
        fusion (`str`, defaults to `"prefix"`): `"prefix"` (LLaVA): the image tokens replace the `image_token_id`
            placeholders in the text embeddings; `"cross_attention"`: the text embeddings attend to the image tokens
            (vlm_bridge.py's `CrossModalFusion`) before the decoder, each sequence with exactly one image; with
            `cross_attention_config["image_prefix"]` (default True, as SSM-as-VLM-bridge) the image tokens also fill
            the placeholders, as for "prefix" (else the text holds no placeholders).
        cross_attention_config (`dict`, *optional*): keyword arguments of the cross-attention fusion (vlm_bridge.py's
            `resolve_fusion_config`: `num_layers` 2, `num_heads` 8, `num_key_value_heads` 1, `image_prefix` True,
            ...); empty for "prefix". Also accepted as `fusion_config=` (the stored name differs because transformers
            >= 5.24 reads `config.fusion_config` for its own runtime module fusions in `from_pretrained`).
        image_token_id (`int`, *optional*): id of the image placeholder token (what the processor writes
            `num_image_tokens` times per image). Required for fusion "prefix" once images are given.
        image_token (`str`, *optional*): the placeholder's text: `"<image>"`, or `"<video>"` with a video tower.
        vision_feature_layer (`int`, defaults to -1): which entry of the tower's `hidden_states` feeds the projector
            (-1: the last, -2: the one before, as LLaVA's; for VMamba the entries are the stem and each stage).
        vision_feature_select_strategy (`str`, defaults to `"default"`): `"default"` drops the CLS-like tokens (ViT /
            CLIP / DINOv2 CLS and registers, Vim's cls token); `"full"` keeps every token.
        image_size (`int`, *optional*): input side. With a tower it is the tower's `image_size` (filled in; a
            different value is an error); for patch_linear it defaults to 224.
        patch_size (`int`, *optional*): patch side for patch_linear (defaults to 16); with a tower, the tower's.
        num_channels (`int`, *optional*): input channels (the tower's, or 3 for patch_linear).
        freeze_vision_tower (`bool`, defaults to False): training recipes freeze the tower's parameters when set
            (the model sets `requires_grad=False` on them at construction).
        initializer_range (`float`, defaults to 0.02): std of the normal init of the projector / fusion Linears.
    """

    model_type = "ssmvl_vlm"
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config: Union[None, dict, PretrainedConfig] = None,
        text_config: Union[None, dict, PretrainedConfig] = None,
        projector_type: str = "mlp",
        projector_config: Optional[dict] = None,
        fusion: str = "prefix",
        cross_attention_config: Optional[dict] = None,
        image_token_id: Optional[int] = None,
        image_token: Optional[str] = None,
        vision_feature_layer: int = -1,
        vision_feature_select_strategy: str = "default",
        image_size: Optional[int] = None,
        patch_size: Optional[int] = None,
        num_channels: Optional[int] = None,
        freeze_vision_tower: bool = False,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        if vision_config is None and text_config is None and projector_type != "patch_linear":
            vision_config = VimConfig()  # the all-default configuration: Vim-tiny + a default Mamba LM
        self.vision_config = build_sub_config(vision_config, "vision_config")
        self.text_config = build_sub_config(text_config, "text_config")
        if self.text_config is None:
            self.text_config = MambaLMConfig()
        self.projector_type = projector_type
        self.fusion = fusion
        if "fusion_config" in kwargs:  # the argument's other name (not stored under it: see the docstring)
            if cross_attention_config is not None:
                raise ValueError("Pass cross_attention_config or fusion_config, not both.")
            cross_attention_config = kwargs.pop("fusion_config")
        if (cross_attention_config is not None and not isinstance(cross_attention_config, dict)
                and not hasattr(cross_attention_config, "to_dict")):
            raise ValueError("SsmVlmConfig.cross_attention_config must be a dict of the fusion's options or None, got "
                             f"{cross_attention_config!r}")
        self.cross_attention_config = (resolve_fusion_config(cross_attention_config) if fusion == "cross_attention"
                                       else dict(cross_attention_config or {}))
        self.image_token_id = image_token_id
        self.image_token = image_token or ("<video>" if self.is_video else "<image>")
        self.vision_feature_layer = vision_feature_layer
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.freeze_vision_tower = freeze_vision_tower
        self.initializer_range = initializer_range
        self._check_choices()
        self.projector_config = self._resolve_projector_config(projector_config)
        self.image_size, self.patch_size, self.num_channels = self._resolve_input(image_size, patch_size, num_channels)
        self._validate()
        super().__init__(**kwargs)

    # -- validation ------------------------------------------------------------------------------------------------
    def _check_choices(self):
        if self.image_token_id is not None and (not is_int(self.image_token_id) or self.image_token_id < 0):
            raise ValueError("SsmVlmConfig.image_token_id must be a token id (an int >= 0: the tokenizer's id of the "
                             f"image token) or None, got {self.image_token_id!r}")
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"SsmVlmConfig.projector_type={self.projector_type!r} is unknown; use one of "
                             f"{PROJECTOR_TYPES}.")
        if self.fusion not in FUSION_TYPES:
            raise ValueError(f"SsmVlmConfig.fusion={self.fusion!r} is unknown; use one of {FUSION_TYPES}.")
        if isinstance(self.vision_feature_layer, bool) or not isinstance(self.vision_feature_layer, int):
            raise ValueError("SsmVlmConfig.vision_feature_layer must be one int (an index into the tower's "
                             f"hidden_states), got {self.vision_feature_layer!r}; several layers are not supported.")
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError("SsmVlmConfig.vision_feature_select_strategy must be 'default' (drop CLS-like tokens) or "
                             f"'full', got {self.vision_feature_select_strategy!r}.")
        if self.projector_type == "patch_linear":
            if self.vision_config is not None:
                raise ValueError("SsmVlmConfig: projector_type='patch_linear' reads raw pixel patches and has no "
                                 "vision tower; pass vision_config=None (and image_size / patch_size).")
        elif self.vision_config is None:
            raise ValueError(f"SsmVlmConfig: projector_type={self.projector_type!r} needs a vision tower but "
                             "vision_config is None; pass a vision_config (e.g. a ViTConfig, SiglipVisionConfig or "
                             "VimConfig), or use projector_type='patch_linear' for a model without a tower.")
        if self.vision_config is not None and self.vision_config.model_type not in VISION_TOWER_TYPES:
            raise ValueError(f"SsmVlmConfig: vision_config.model_type={self.vision_config.model_type!r} is not a "
                             f"supported vision tower; use one of {VISION_TOWER_TYPES}.")
        if self.is_video and self.vision_feature_layer != -1:
            raise ValueError("SsmVlmConfig: a STORM video tower hands over its last (reduced) tokens; "
                             f"vision_feature_layer must be -1, got {self.vision_feature_layer}.")
        if getattr(self.text_config, "is_encoder_decoder", False):
            raise ValueError("SsmVlmConfig.text_config must be a decoder-only causal LM config, got an "
                             f"encoder-decoder ({self.text_config.model_type!r}).")

    def _resolve_projector_config(self, given: Optional[dict]) -> dict:
        if given is not None and not isinstance(given, dict) and not hasattr(given, "to_dict"):
            raise ValueError(f"SsmVlmConfig.projector_config must be a dict of the projector's options or None, got "
                             f"{given!r}")
        given = dict(given or {})
        defaults = PROJECTOR_DEFAULTS[self.projector_type]
        if self.projector_type == "ssm_bridge":
            return resolve_projector_config(given)
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ValueError(f"SsmVlmConfig.projector_config has keys {unknown} that projector "
                             f"{self.projector_type!r} does not take; it takes {sorted(defaults)}.")
        return {**defaults, **given}

    def _resolve_input(self, image_size, patch_size, num_channels):
        vc = self.vision_config
        if vc is None:  # patch_linear
            return (224 if image_size is None else image_size, 16 if patch_size is None else patch_size,
                    3 if num_channels is None else num_channels)
        for name, given in (("image_size", image_size), ("patch_size", patch_size), ("num_channels", num_channels)):
            tower = getattr(vc, name, None)
            if given is not None and tower is not None and _side(given) != _side(tower):
                raise ValueError(f"SsmVlmConfig.{name}={given} differs from vision_config.{name}={tower}; the tower's "
                                 f"value is the model's: set vision_config.{name} instead.")
        return vc.image_size, getattr(vc, "patch_size", None), getattr(vc, "num_channels", 3)

    def _validate(self):
        if self.vision_config is None:  # the towers check their own sizes (a conv patch embedding floors)
            (h, w), (ph, pw) = _side(self.image_size), _side(self.patch_size)
            if h % ph or w % pw:
                raise ValueError(f"SsmVlmConfig: image size {h}x{w} is not a multiple of the patch size {ph}x{pw}; "
                                 f"set image_size to a multiple, e.g. {max(ph, h // ph * ph)}.")
        n_states = self.num_vision_hidden_states
        if n_states and not -n_states <= self.vision_feature_layer < n_states:
            raise ValueError(f"SsmVlmConfig.vision_feature_layer={self.vision_feature_layer} is out of range: the "
                             f"tower returns {n_states} hidden states (use -{n_states} .. {n_states - 1}).")
        pc = self.projector_config
        if self.projector_type == "resampler":
            side = math.isqrt(int(pc["num_queries"]))
            if pc["num_queries"] <= 0 or side * side != pc["num_queries"]:
                raise ValueError(f"SsmVlmConfig.projector_config['num_queries']={pc['num_queries']} must be a square "
                                 "number (the queries sit on a sqrt x sqrt grid of 2-D sin-cos positions), e.g. 64.")
            width, heads = self.resampler_width, self.resampler_heads
            if width % heads or width % 4:
                raise ValueError(f"SsmVlmConfig: the resampler width {width} must be a multiple of 4 (2-D sin-cos) and "
                                 f"of num_heads={heads}; set projector_config['hidden_size'] / ['num_heads'].")
            n = self.num_vision_tokens
            if math.isqrt(n) ** 2 != n:
                raise ValueError(f"SsmVlmConfig: the resampler needs a square grid of vision tokens, got {n}; use "
                                 "vision_feature_select_strategy='default' to drop the CLS-like tokens.")
        if self.projector_type == "mlp" and pc["num_layers"] not in (1, 2):
            raise ValueError(f"SsmVlmConfig.projector_config['num_layers'] must be 1 or 2, got {pc['num_layers']}.")

    # -- derived sizes ---------------------------------------------------------------------------------------------
    @property
    def text_hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def is_video(self) -> bool:
        """Whether the tower is a video tower (STORM): inputs `pixel_values_videos` (n, num_frames, C, H, W), one
        placeholder (`image_token`, "<video>" by default) per video."""
        vc = self.vision_config
        return vc is not None and vc.model_type in VIDEO_TOWER_TYPES

    @property
    def num_frames(self) -> Optional[int]:
        """Frames per video a video tower takes (the processor samples exactly this many); None for images."""
        return self.vision_config.num_frames if self.is_video else None

    @property
    def num_vision_hidden_states(self) -> int:
        """Entries of the tower's `hidden_states` (embeddings + one per layer; VMamba: stem + one per stage)."""
        vc = self.vision_config
        if vc is None or self.is_video:  # STORM: only its last tokens are read
            return 0
        if vc.model_type == VMambaConfig.model_type:
            return vc.num_stages + 1
        return vc.num_hidden_layers + 1

    def _vmamba_stage(self) -> int:
        """VMamba stage index (0-based; the stem counts as stage 0's resolution) of `vision_feature_layer`."""
        k = self.vision_feature_layer % self.num_vision_hidden_states
        return max(k - 1, 0)

    @property
    def vision_hidden_size(self) -> int:
        """Width of the features the projector reads (pixels per patch x channels for patch_linear)."""
        vc = self.vision_config
        if vc is None:
            ph, pw = _side(self.patch_size)
            return ph * pw * self.num_channels
        if vc.model_type == VMambaConfig.model_type:
            return vc.hidden_sizes[self._vmamba_stage()]
        return vc.hidden_size

    @property
    def vision_grid(self) -> Tuple[int, int]:
        """(rows, cols) of patch tokens the projector reads (a conv patch embedding floors: SigLIP/14 at 384 px gives
        27 x 27)."""
        h, w = _side(self.image_size)
        vc = self.vision_config
        if vc is not None and vc.model_type == VMambaConfig.model_type:
            k = self.vision_feature_layer % self.num_vision_hidden_states
            stride = vc.patch_size * 2 ** max(k - 1, 0)
            return h // stride, w // stride
        ph, pw = _side(self.patch_size)
        return h // ph, w // pw

    @property
    def num_vision_prefix_tokens(self) -> int:
        """CLS-like tokens the tower returns besides the patches (dropped by the "default" strategy)."""
        vc = self.vision_config
        if vc is None or vc.model_type in _NO_PREFIX_TOWERS + VIDEO_TOWER_TYPES + (VMambaConfig.model_type,):
            return 0
        if vc.model_type == VimConfig.model_type:
            return 1 if vc.use_cls_token else 0
        if vc.model_type == "dinov2_with_registers":
            return 1 + vc.num_register_tokens
        return _PREFIX_TOKEN_TOWERS[vc.model_type]

    @property
    def num_vision_tokens(self) -> int:
        """Tokens per image that reach the projector (after `vision_feature_select_strategy`); for a video tower, the
        tokens STORM keeps of a video of `num_frames` frames (`StormConfig.num_output_tokens`)."""
        if self.is_video:
            return self.vision_config.num_output_tokens(self.vision_config.num_frames)
        rows, cols = self.vision_grid
        n = rows * cols
        if self.vision_feature_select_strategy == "full":
            n += self.num_vision_prefix_tokens
        return n

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image that the decoder sees: the placeholders the processor writes for each image with
        fusion "prefix" (resampler: num_queries; otherwise the vision tokens: e.g. (image_size / patch_size)^2 for a
        ViT with the "default" strategy, + 1 with "full")."""
        if self.projector_type == "resampler":
            return int(self.projector_config["num_queries"])
        return self.num_vision_tokens

    @property
    def uses_image_placeholders(self) -> bool:
        """Whether the text holds `num_image_tokens` placeholders per image: fusion "prefix", or "cross_attention"
        with `cross_attention_config["image_prefix"]`."""
        return self.fusion == "prefix" or bool(self.cross_attention_config.get("image_prefix"))

    @property
    def resampler_width(self) -> int:
        return self.projector_config.get("hidden_size") or self.text_hidden_size

    @property
    def resampler_heads(self) -> int:
        return self.projector_config.get("num_heads") or max(1, self.resampler_width // 128)

    # -- serialisation ---------------------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        output = super().to_dict()
        for key in ("vision_config", "text_config"):
            value = getattr(self, key)
            output[key] = value.to_dict() if isinstance(value, PretrainedConfig) else value
        output["projector_config"] = copy.deepcopy(self.projector_config)
        output["cross_attention_config"] = copy.deepcopy(self.cross_attention_config)
        return output


__all__ = ["SsmVlmConfig", "PROJECTOR_TYPES", "FUSION_TYPES", "VISION_TOWER_TYPES"]
