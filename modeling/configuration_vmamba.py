"""Configuration of the ssmvl VMamba family (hierarchical SS2D vision backbone, MzeroMiko/VMamba)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

from transformers import PretrainedConfig

from .config_checks import check_int, check_number, is_int


# forward types of upstream SS2Dv2 (classification/models/vmamba.py, `SS2Dv2.__initv2__`) whose core is the same
# 4-direction cross-scan ("cross2d"); they differ only in kernels / fp32 casts, not in the function computed.
_CORE_FORWARD_TYPES = ("v01", "v02", "v03", "v04", "v05", "v2", "v3")
# postfixes understood here (upstream `checkpostfix`): "_no32" (no fp32 cast; ignored: we always scan in fp32),
# "_oact" (GELU on the scan output), "_noz" (no gate branch), "_nozact" (gate without SiLU).
_POSTFIXES = ("_no32", "_oact", "_noz", "_nozact")


def parse_forward_type(forward_type: str) -> dict:
    """Splits an upstream forward type such as "v05_noz" into its core and flags; raises for unsupported ones."""
    if not isinstance(forward_type, str):
        raise ValueError(f"VMambaConfig.forward_type must be a string such as 'v05_noz', got {forward_type!r}")
    rest, flags = forward_type, {}
    for tag in _POSTFIXES:  # upstream strips them in this order
        flags[tag[1:]] = rest.endswith(tag)
        if flags[tag[1:]]:
            rest = rest[: -len(tag)]
    if rest not in _CORE_FORWARD_TYPES:
        raise ValueError(
            f"VMambaConfig.forward_type={forward_type!r} is not supported. Supported: one of {_CORE_FORWARD_TYPES} "
            f"optionally followed by postfixes from {_POSTFIXES} (e.g. 'v05_noz', the VMamba-v2 tiny/small/base type, "
            "or 'v2' with the z gate). The v0/xv/m0 variants and out-norm postfixes (_on*) are not implemented."
        )
    return dict(core=rest, **flags)


class VMambaConfig(PretrainedConfig):
    r"""
    Configuration of a [`VMambaModel`] / [`VMambaForImageClassification`]. Names follow the upstream VMamba config
    (`MODEL.VSSM.*` in MzeroMiko/VMamba `classification/config.py`). The defaults are the VMamba-v2 tiny model
    `vmamba_tiny_s1l8` (`configs/vssm/vmambav2v_tiny_224.yaml`, 30M params, 82.6% ImageNet-1k top-1).

    Args:
        image_size (`int`, defaults to 224): training resolution; any input whose sides are multiples of
            `patch_size * 2 ** (len(depths) - 1)` (32 for the default) runs, there is no position embedding.
        patch_size (`int`, defaults to 4): total stride of the stem (`PATCH_SIZE`).
        num_channels (`int`, defaults to 3): input channels (`IN_CHANS`).
        embed_dim (`int`, defaults to 96): width of the first stage (`EMBED_DIM`); stage `i` has `embed_dim * 2**i`
            channels unless `hidden_sizes` is given.
        hidden_sizes (`list[int]`, *optional*): explicit width of each stage (upstream `dims` as a list).
        depths (`list[int]`, defaults to `[2, 2, 8, 2]`): number of VSS blocks per stage (`DEPTHS`).
        d_state (`int`, defaults to 1): SSM state size N (`SSM_D_STATE`).
        ssm_ratio (`float`, defaults to 1.0): SS2D inner width `d_inner = int(ssm_ratio * dim)` (`SSM_RATIO`).
        dt_rank (`int` or "auto", defaults to "auto"): rank of the dt projection; "auto" is `ceil(dim / 16)` of each
            stage (`SSM_DT_RANK`).
        ssm_act (`str`, defaults to "silu"): activation after the depthwise conv (`SSM_ACT_LAYER`: silu/gelu/relu).
        ssm_conv (`int`, defaults to 3): kernel of the depthwise 2-D conv in SS2D; < 2 means no conv (`SSM_CONV`).
        ssm_conv_bias (`bool`, defaults to False): bias of that conv (`SSM_CONV_BIAS`).
        forward_type (`str`, defaults to "v05_noz"): SS2D variant (`SSM_FORWARDTYPE`); "v05_noz": in_proj to
            d_inner, no gate; "v2"/"v05": in_proj to 2*d_inner, output multiplied by act(z). See `parse_forward_type`.
        ssm_init (`str`, defaults to "v0"): "v0" = Mamba init of dt / A / D (`SSM_INIT`).
        dt_min / dt_max / dt_init_floor / dt_scale (`float`, defaults 0.001 / 0.1 / 1e-4 / 1.0), dt_init ("random"):
            initialisation of the dt projections (only used for models built from scratch).
        mlp_ratio (`float`, defaults to 4.0): hidden width of the block MLP; 0 removes the MLP branch (`MLP_RATIO`).
        mlp_act (`str`, defaults to "gelu"): MLP activation (`MLP_ACT_LAYER`).
        drop_path_rate (`float`, defaults to 0.2): stochastic depth, linearly increasing over all blocks.
        patch_norm (`bool`, defaults to True): normalise inside the stem (`PATCH_NORM`).
        norm_layer (`str`, defaults to "ln2d"): "ln2d" (channel-first LayerNorm, the v2 models) or "ln" (channel-last);
            the two compute the same function with the same parameters, this only records the upstream layout.
        downsample (`str`, defaults to "v3"): between stages; "v3" conv 3x3 stride 2 + norm, "v2" conv 2x2 stride 2 +
            norm, "v1" patch merging (norm(4C) + linear) (`DOWNSAMPLE`).
        patchembed (`str`, defaults to "v2"): stem; "v2" conv 3x3 s2 -> norm -> GELU -> conv 3x3 s2 -> norm (upstream
            `_make_patch_embed_v2`, used by every v2 model), "v1" conv p x p stride p -> norm (`PATCHEMBED`).
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of every LayerNorm (torch's default, as upstream).
        out_features (`list[str]`, *optional*) / out_indices (`list[int]`, *optional*): which of `stage_names`
            (`["stem", "stage1", ..., "stageS"]`) `VMambaModel` returns in `feature_maps` (transformers' backbone
            convention; negative indices allowed). Default: every stage (`stage1` .. `stageS`).
        initializer_range (`float`, defaults to 0.02): std of the truncated-normal init of Linear weights.
        ssm_backend (`str`, *optional*): selective-scan backend ("reference", "torch", "triton", "mamba_ssm");
            unset (None) or "auto": env SSMVL_SSM_BACKEND if set, else the fastest available (logged once).
        use_cuda_graph (`bool`, defaults to False): on CUDA, in inference (eval mode, no gradients, no
            `output_hidden_states`), the backbone's forward is captured as a CUDA graph the second time an input
            shape is met and replayed after that (at most 2 shapes kept; parameters updated in place are seen, any
            other change to the model recaptures; `.to()` frees them): the host's Python and launch work, which
            bounds small or short forwards, then costs one replay (see `cuda_graphs.py`).
        num_labels (`int`, defaults to 2 via `PretrainedConfig`; 1000 for ImageNet checkpoints) / id2label /
            label2id / problem_type: classification head settings, as for any transformers config.
    """

    model_type = "ssmvl_vmamba"
    attribute_map = {"dims": "hidden_sizes", "in_chans": "num_channels"}

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 4,
        num_channels: int = 3,
        embed_dim: int = 96,
        hidden_sizes: Optional[Sequence[int]] = None,
        depths: Sequence[int] = (2, 2, 8, 2),
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        dt_rank: Union[int, str] = "auto",
        ssm_act: str = "silu",
        ssm_conv: int = 3,
        ssm_conv_bias: bool = False,
        forward_type: str = "v05_noz",
        ssm_init: str = "v0",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        mlp_ratio: float = 4.0,
        mlp_act: str = "gelu",
        drop_path_rate: float = 0.2,
        patch_norm: bool = True,
        norm_layer: str = "ln2d",
        downsample: str = "v3",
        patchembed: str = "v2",
        layer_norm_eps: float = 1e-5,
        out_features: Optional[List[str]] = None,
        out_indices: Optional[List[int]] = None,
        initializer_range: float = 0.02,
        ssm_backend: Optional[str] = None,
        use_cuda_graph: bool = False,
        **kwargs,
    ):
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.embed_dim = check_int("VMambaConfig", "embed_dim", embed_dim)  # first: the widths below use it
        self.depths = self._int_list("depths", depths)
        if hidden_sizes is None:
            hidden_sizes = [int(embed_dim * 2**i) for i in range(len(self.depths))]
        self.hidden_sizes = self._int_list("hidden_sizes", hidden_sizes)
        self.d_state = d_state
        self.ssm_ratio = check_number("VMambaConfig", "ssm_ratio", ssm_ratio, low=0.0, low_open=True)
        self.dt_rank = dt_rank
        self.ssm_act = ssm_act
        self.ssm_conv = ssm_conv
        self.ssm_conv_bias = ssm_conv_bias
        self.forward_type = forward_type
        self.ssm_init = ssm_init
        self.dt_min, self.dt_max, self.dt_init = dt_min, dt_max, dt_init
        self.dt_scale, self.dt_init_floor = dt_scale, dt_init_floor
        self.mlp_ratio = check_number("VMambaConfig", "mlp_ratio", mlp_ratio, low=0.0)
        self.mlp_act = mlp_act
        self.drop_path_rate = drop_path_rate
        self.patch_norm = patch_norm
        self.norm_layer = norm_layer
        self.downsample = downsample
        self.patchembed = patchembed
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.ssm_backend = ssm_backend
        self.use_cuda_graph = bool(use_cuda_graph)
        self.stage_names = ["stem"] + [f"stage{i + 1}" for i in range(len(self.depths))]
        self._validate()
        self.out_features, self.out_indices = self._align_out(out_features, out_indices)
        super().__init__(**kwargs)

    @staticmethod
    def _int_list(name: str, values) -> List[int]:
        """A list of positive integers (one per stage)."""
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not all(
                is_int(v) and v > 0 for v in values):
            raise ValueError(f"VMambaConfig.{name} must be a list of positive integers (one per stage), got {values!r}")
        return [int(v) for v in values]

    # -- derived sizes ---------------------------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this: the stem stride times one 2x downsample per later stage."""
        return self.patch_size * 2 ** (self.num_stages - 1)

    @property
    def num_features(self) -> int:
        return self.hidden_sizes[-1]

    def stage_dt_rank(self, stage: int) -> int:
        dim = self.hidden_sizes[stage]
        return -(-dim // 16) if self.dt_rank == "auto" else int(self.dt_rank)

    # -- checks ----------------------------------------------------------------------------------------------------
    def _validate(self):
        for name in ("image_size", "patch_size", "num_channels", "embed_dim", "d_state"):
            check_int("VMambaConfig", name, getattr(self, name))
        if not self.depths:
            raise ValueError("VMambaConfig.depths must list at least one stage, got []")
        if len(self.hidden_sizes) != len(self.depths):
            raise ValueError(
                f"VMambaConfig.hidden_sizes has {len(self.hidden_sizes)} entries but depths has {len(self.depths)} "
                f"stages ({self.hidden_sizes} vs {self.depths}); give one width per stage."
            )
        for i, h in enumerate(self.hidden_sizes):
            if int(self.ssm_ratio * h) <= 0:
                raise ValueError(f"VMambaConfig: ssm_ratio={self.ssm_ratio} gives an empty SS2D for width {h}")
        if self.dt_rank != "auto":
            check_int("VMambaConfig", "dt_rank", self.dt_rank)
        if not is_int(self.ssm_conv) or self.ssm_conv < 0 or (self.ssm_conv > 1 and self.ssm_conv % 2 == 0):
            raise ValueError(
                f"VMambaConfig.ssm_conv must be an odd kernel size (or < 2 for no conv), got {self.ssm_conv!r}"
            )
        parse_forward_type(self.forward_type)
        if self.ssm_init != "v0":
            raise ValueError(f"VMambaConfig.ssm_init must be 'v0' (Mamba init), got {self.ssm_init!r}")
        for name, allowed in (("ssm_act", ("silu", "gelu", "relu", "sigmoid")), ("mlp_act", ("silu", "gelu", "relu")),
                              ("norm_layer", ("ln", "ln2d")), ("downsample", ("v1", "v2", "v3")),
                              ("patchembed", ("v1", "v2")), ("dt_init", ("random", "constant"))):
            value = getattr(self, name)
            if not isinstance(value, str) or value.lower() not in allowed:
                raise ValueError(f"VMambaConfig.{name} must be one of {allowed}, got {value!r}")
        if self.patchembed == "v2" and self.patch_size != 4:
            raise ValueError(f"VMambaConfig: patchembed 'v2' is two stride-2 convs, i.e. patch_size 4; got "
                             f"{self.patch_size}. Use patchembed='v1' for other patch sizes.")
        if self.downsample == "v1":
            for a, b in zip(self.hidden_sizes[:-1], self.hidden_sizes[1:]):
                if b != 2 * a:
                    raise ValueError(f"VMambaConfig: downsample 'v1' (patch merging) needs doubling widths, "
                                     f"got {self.hidden_sizes}")
        if self.image_size % self.size_multiple:
            raise ValueError(
                f"VMambaConfig.image_size={self.image_size} must be a multiple of patch_size * 2**(stages-1) = "
                f"{self.size_multiple}."
            )
        check_number("VMambaConfig", "drop_path_rate", self.drop_path_rate, low=0.0, high=1.0, high_open=True)
        check_number("VMambaConfig", "layer_norm_eps", self.layer_norm_eps, low=0.0, low_open=True)
        check_number("VMambaConfig", "initializer_range", self.initializer_range, low=0.0)
        dt_min = check_number("VMambaConfig", "dt_min", self.dt_min, low=0.0, low_open=True)
        dt_max = check_number("VMambaConfig", "dt_max", self.dt_max, low=0.0, low_open=True)
        if dt_min > dt_max:
            raise ValueError(f"VMambaConfig needs dt_min <= dt_max, got {dt_min} > {dt_max}")
        check_number("VMambaConfig", "dt_scale", self.dt_scale, low=0.0, low_open=True)
        check_number("VMambaConfig", "dt_init_floor", self.dt_init_floor, low=0.0)

    def _align_out(self, out_features, out_indices):
        names = self.stage_names
        if out_features is None and out_indices is None:
            out_indices = list(range(1, len(names)))
        if out_indices is not None:
            try:
                idx = [names.index(names[i]) for i in out_indices]  # normalises negative indices
            except (IndexError, TypeError):
                raise ValueError(f"VMambaConfig.out_indices must index stage_names {names}, got {out_indices}")
            feats = [names[i] for i in idx]
            if out_features is not None and list(out_features) != feats:
                raise ValueError(
                    f"VMambaConfig.out_features {out_features} and out_indices {out_indices} name different stages "
                    f"({feats}); give one of them."
                )
        else:
            unknown = [f for f in out_features if f not in names]
            if unknown:
                raise ValueError(f"VMambaConfig.out_features {unknown} are not in stage_names {names}")
            idx = [names.index(f) for f in out_features]
            feats = list(out_features)
        if idx != sorted(set(idx)):
            raise ValueError(f"VMambaConfig.out_indices/out_features must be increasing without repeats, got {feats}")
        return feats, idx


__all__ = ["VMambaConfig", "parse_forward_type"]
