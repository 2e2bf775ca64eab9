"""Configuration of Vim (Vision Mamba, Zhu et al. 2024, github hustvl/Vim): a plain (non-hierarchical) bidirectional
Mamba backbone over image patches."""

from __future__ import annotations

from typing import Optional

from transformers import PretrainedConfig

from .config_checks import check_choice, check_int, check_number, check_time_step_rank, check_time_steps


class VimConfig(PretrainedConfig):
    r"""
    Configuration of a [`VimModel`] / [`VimForImageClassification`]. Defaults give Vim-tiny
    (`vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2` in hustvl/Vim
    `vim/models_mamba.py`); the presets `configs/vim-{tiny,small,base}.json` hold the three official variants.
    Names in brackets are the official `VisionMamba` arguments (also accepted here through `attribute_map` where noted).

    Args:
        image_size (`int`, defaults to 224): side of the square training resolution; `pos_embed` has
            `(image_size // patch_size) ** 2` patch positions (plus one for the cls token). Other sides that are
            multiples of `patch_size` run with `interpolate_pos_encoding=True`.
        patch_size (`int`, defaults to 16): side of the square patches; the patch embedding is a Conv2d with
            kernel = stride = patch_size (`patch_embed.proj`).
        num_channels (`int`, defaults to 3): input channels (`channels`).
        hidden_size (`int`, defaults to 192): model width (`embed_dim`, `d_model`; 192 / 384 / 768 for tiny / small /
            base).
        num_hidden_layers (`int`, defaults to 24): number of Mamba blocks (`depth`).
        state_size (`int`, defaults to 16): SSM state size N (`d_state`).
        expand (`int`, defaults to 2): `intermediate_size = expand * hidden_size` when `intermediate_size` is not given.
        intermediate_size (`int`, *optional*): inner width of the mixer (`d_inner`).
        conv_kernel (`int`, defaults to 4): width of the causal depthwise conv (`d_conv`).
        time_step_rank (`int` or "auto", defaults to "auto"): rank of the dt projection; auto = ceil(hidden_size / 16).
        use_bias (`bool`, defaults to False): bias in in_proj / out_proj (official `bias=False`).
        use_conv_bias (`bool`, defaults to True): bias in the convs (official `conv_bias=True`).
        rms_norm (`bool`, defaults to True): RMSNorm for the block norms and `norm_f`; False uses LayerNorm (with bias).
        residual_in_fp32 (`bool`, defaults to True): keep the residual stream in float32.
        layer_norm_epsilon (`float`, defaults to 1e-5): epsilon of the norms (`norm_epsilon`).
        use_cls_token (`bool`, defaults to True): add a learned cls token (`if_cls_token`).
        use_middle_cls_token (`bool`, defaults to True): insert the cls token at position `num_patches // 2` (the
            official Vim v2 models); False puts it first. Ignored without a cls token.
        final_pool_type (`str`, defaults to "cls"): `pooler_output`, the input of the head. "cls": the final hidden
            state of the cls token -- what the official `forward_features` returns whenever there is a cls token, even
            for the models named `..._final_pool_mean_..._with_midclstok` (so the presets use "cls"); "mean": mean over
            all tokens (official `final_pool_type='mean'` without cls token); "last": the last token (official 'none').
        if_abs_pos_embed (`bool`, defaults to True): learned absolute position embedding added after the cls token is
            inserted (so `pos_embed[:, num_patches // 2]` belongs to a middle cls token).
        bimamba (`bool`, defaults to True): bidirectional mixer, "bimamba v2" (`bimamba_type="v2"`): shared in_proj /
            out_proj, a second conv1d / x_proj / dt_proj / A / D (`*_b`) scanning the flipped sequence.
        divide_output (`bool`, defaults to True): average (instead of sum) the two directions (`if_divide_out`).
        drop_path_rate (`float`, defaults to 0.0): stochastic depth, linearly increasing over the blocks as in the
            official code (training only; hustvl/Vim `vim/scripts/pt-vim-{t,s}.sh` use 0.0 / 0.05).
        rescale_prenorm_residual (`bool`, defaults to True): scale the out_proj init by 1/sqrt(num_hidden_layers)
            (official `_init_weights`).
        time_step_min / time_step_max / time_step_floor / time_step_scale (`float`): dt initialisation, defaults
            0.001 / 0.1 / 1e-4 / 1.0; time_step_init_scheme ("random" | "constant").
        initializer_range (`float`, defaults to 0.02): std of the truncated normal init of `cls_token`, `pos_embed`
            and the classification head.
        ssm_backend (`str`, *optional*): selective-scan backend ("reference", "torch", "triton", "mamba_ssm");
            unset (None) or "auto": env SSMVL_SSM_BACKEND if set, else the fastest available (logged once).
        use_cuda_graph (`bool`, defaults to False): on CUDA, in inference (eval mode, no gradients, no
            `output_hidden_states`), the backbone's forward is captured as a CUDA graph the second time an input
            shape is met and replayed after that (at most 2 shapes kept; parameters updated in place are seen, any
            other change to the model recaptures; `.to()` frees them): the host's Python and launch work, which
            bounds small or short forwards, then costs one replay (see `cuda_graphs.py`).
        num_labels / id2label / label2id / problem_type: the classification head, as in every transformers config
            (`num_classes`, 1000 for the ImageNet-1k checkpoints).
    """

    model_type = "ssmvl_vim"
    attribute_map = {
        "embed_dim": "hidden_size",
        "d_model": "hidden_size",
        "depth": "num_hidden_layers",
        "d_state": "state_size",
        "d_conv": "conv_kernel",
    }

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        hidden_size: int = 192,
        num_hidden_layers: int = 24,
        state_size: int = 16,
        expand: int = 2,
        intermediate_size: int | None = None,
        conv_kernel: int = 4,
        time_step_rank="auto",
        use_bias: bool = False,
        use_conv_bias: bool = True,
        rms_norm: bool = True,
        residual_in_fp32: bool = True,
        layer_norm_epsilon: float = 1e-5,
        use_cls_token: bool = True,
        use_middle_cls_token: bool = True,
        final_pool_type: str = "cls",
        if_abs_pos_embed: bool = True,
        bimamba: bool = True,
        divide_output: bool = True,
        drop_path_rate: float = 0.0,
        rescale_prenorm_residual: bool = True,
        time_step_min: float = 0.001,
        time_step_max: float = 0.1,
        time_step_floor: float = 1e-4,
        time_step_scale: float = 1.0,
        time_step_init_scheme: str = "random",
        initializer_range: float = 0.02,
        ssm_backend: Optional[str] = None,
        use_cuda_graph: bool = False,
        **kwargs,
    ):
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = check_int("VimConfig", "hidden_size", hidden_size)  # checked first: the sizes below use it
        self.num_hidden_layers = num_hidden_layers
        self.state_size = state_size
        self.expand = check_int("VimConfig", "expand", expand)
        self.intermediate_size = intermediate_size if intermediate_size is not None else expand * hidden_size
        self.conv_kernel = conv_kernel
        self.time_step_rank = check_time_step_rank("VimConfig", time_step_rank, hidden_size)
        self.use_bias = use_bias
        self.use_conv_bias = use_conv_bias
        self.rms_norm = rms_norm
        self.residual_in_fp32 = residual_in_fp32
        self.layer_norm_epsilon = layer_norm_epsilon
        self.use_cls_token = use_cls_token
        self.use_middle_cls_token = use_middle_cls_token
        self.final_pool_type = final_pool_type
        self.if_abs_pos_embed = if_abs_pos_embed
        self.bimamba = bimamba
        self.divide_output = divide_output
        self.drop_path_rate = drop_path_rate
        self.rescale_prenorm_residual = rescale_prenorm_residual
        self.time_step_min = time_step_min
        self.time_step_max = time_step_max
        self.time_step_floor = time_step_floor
        self.time_step_scale = time_step_scale
        self.time_step_init_scheme = time_step_init_scheme
        self.initializer_range = initializer_range
        self.ssm_backend = ssm_backend
        self.use_cuda_graph = bool(use_cuda_graph)
        self._validate()
        super().__init__(**kwargs)

    @property
    def num_patches(self) -> int:
        """Patches at the configured resolution: (image_size // patch_size) ** 2."""
        return (self.image_size // self.patch_size) ** 2

    def _validate(self):
        for name in ("image_size", "patch_size", "num_channels", "num_hidden_layers", "state_size",
                     "intermediate_size", "conv_kernel"):
            check_int("VimConfig", name, getattr(self, name))
        if self.image_size % self.patch_size:
            raise ValueError(
                f"VimConfig.image_size={self.image_size} is not a multiple of patch_size={self.patch_size}; "
                f"use e.g. image_size={self.image_size // self.patch_size * self.patch_size or self.patch_size}."
            )
        check_choice("VimConfig", "final_pool_type", self.final_pool_type, ("cls", "mean", "last"))
        if self.final_pool_type == "cls" and not self.use_cls_token:
            raise ValueError(
                "VimConfig.final_pool_type='cls' needs use_cls_token=True; use 'mean' without a cls token."
            )
        check_number("VimConfig", "drop_path_rate", self.drop_path_rate, low=0.0, high=1.0, high_open=True)
        check_number("VimConfig", "layer_norm_epsilon", self.layer_norm_epsilon, low=0.0, low_open=True)
        check_number("VimConfig", "initializer_range", self.initializer_range, low=0.0)
        check_time_steps("VimConfig", self.time_step_min, self.time_step_max, self.time_step_floor,
                         self.time_step_scale)
        check_choice("VimConfig", "time_step_init_scheme", self.time_step_init_scheme, ("random", "constant"))


__all__ = ["VimConfig"]
