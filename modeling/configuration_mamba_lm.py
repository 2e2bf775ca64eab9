"""Configuration of the ssmvl Mamba language model (Mamba-1 decoder)."""

from __future__ import annotations

from typing import Optional

from transformers import PretrainedConfig

from .config_checks import (
    check_choice, check_int, check_number, check_time_step_rank, check_time_steps, check_token_id,
)


class MambaLMConfig(PretrainedConfig):
    r"""
    Configuration of a [`MambaLMForCausalLM`]. Attribute names follow transformers' `MambaConfig`, so a config.json of
    a `state-spaces/mamba-*-hf` checkpoint is read as it is (its `model_type` is rewritten on conversion).

    Args:
        vocab_size (`int`, defaults to 50280): vocabulary size.
        hidden_size (`int`, defaults to 768): model width (`d_model`).
        state_size (`int`, defaults to 16): SSM state size N (`d_state`).
        num_hidden_layers (`int`, defaults to 32): number of Mamba blocks (`n_layer`).
        layer_norm_epsilon (`float`, defaults to 1e-5): RMSNorm epsilon.
        pad_token_id / bos_token_id / eos_token_id (`int`, defaults 0): special token ids.
        expand (`int`, defaults to 2): `intermediate_size = expand * hidden_size` when `intermediate_size` is not given.
        intermediate_size (`int`, *optional*): inner width I of the mixer.
        conv_kernel (`int`, defaults to 4): width of the causal depthwise conv (`d_conv`).
        use_bias (`bool`, defaults to False): bias in in_proj / out_proj.
        use_conv_bias (`bool`, defaults to True): bias in the conv.
        hidden_act (`str`, defaults to "silu"): activation of the conv and gate; only "silu" is supported.
        initializer_range (`float`, defaults to 0.1): std of the normal init of Linear / Embedding.
        residual_in_fp32 (`bool`, defaults to True): keep the residual stream in float32.
        time_step_rank (`int` or "auto", defaults to "auto"): rank of the dt projection; auto = ceil(hidden_size/16).
        time_step_scale / time_step_min / time_step_max / time_step_floor (`float`): dt initialisation
            (defaults 1.0 / 0.001 / 0.1 / 1e-4); time_step_init_scheme ("random" | "constant").
        rescale_prenorm_residual (`bool`, defaults to False): scale out_proj init by 1/sqrt(n_layers).
        use_cache (`bool`, defaults to True): return the SSM cache.
        tie_word_embeddings (`bool`, defaults to True): lm_head shares the embedding matrix.
        ssm_backend (`str`, *optional*): selective-scan backend ("reference", "torch", "triton", "mamba_ssm");
            unset (None) or "auto": env SSMVL_SSM_BACKEND if set, else the fastest available (logged once).
        chunked_prefill_size (`int`, defaults to 1024): in inference with a cache, prompts longer than this run through
            the model in chunks of this many tokens (the cache carries the state between chunks), so prefill memory
            stays flat in the prompt length; 0 disables.
        use_cuda_graph (`bool`, defaults to True): on CUDA, in inference, each single-token decoding step replays a
            CUDA graph captured once per generate() call (no per-token Python / kernel-launch overhead).
        ssm_state_dtype (`str`, defaults to "auto"): dtype of the SSM states a cache keeps between calls: "auto" (the
            model's dtype, as mamba_ssm and transformers' MambaCache keep them), "float32", "bfloat16" or "float16".
            Every step computes in float32 and rounds the kept state; "float32" keeps a bf16 model's states exact, at
            twice the cache memory.
    """

    model_type = "ssmvl_mamba"
    attribute_map = {
        "d_model": "hidden_size",
        "n_layer": "num_hidden_layers",
        "d_state": "state_size",
        "d_conv": "conv_kernel",
    }

    def __init__(
        self,
        vocab_size: int = 50280,
        hidden_size: int = 768,
        state_size: int = 16,
        num_hidden_layers: int = 32,
        layer_norm_epsilon: float = 1e-5,
        pad_token_id: int = 0,
        bos_token_id: int = 0,
        eos_token_id: int = 0,
        expand: int = 2,
        intermediate_size: int | None = None,
        conv_kernel: int = 4,
        use_bias: bool = False,
        use_conv_bias: bool = True,
        hidden_act: str = "silu",
        initializer_range: float = 0.1,
        residual_in_fp32: bool = True,
        time_step_rank="auto",
        time_step_scale: float = 1.0,
        time_step_min: float = 0.001,
        time_step_max: float = 0.1,
        time_step_init_scheme: str = "random",
        time_step_floor: float = 1e-4,
        rescale_prenorm_residual: bool = False,
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        ssm_backend: Optional[str] = None,
        use_cuda_graph: bool = True,
        chunked_prefill_size: int = 1024,
        ssm_state_dtype: str = "auto",
        **kwargs,
    ):
        # keys of transformers' MambaConfig that mean nothing here
        for k in ("use_mambapy", "use_associative_scan", "layer_types"):
            kwargs.pop(k, None)
        self.vocab_size = vocab_size
        self.hidden_size = check_int("MambaLMConfig", "hidden_size", hidden_size)  # first: the sizes below use it
        self.state_size = state_size
        self.num_hidden_layers = num_hidden_layers
        self.layer_norm_epsilon = layer_norm_epsilon
        self.expand = check_int("MambaLMConfig", "expand", expand)
        self.intermediate_size = intermediate_size if intermediate_size is not None else expand * hidden_size
        self.conv_kernel = conv_kernel
        self.use_bias = use_bias
        self.use_conv_bias = use_conv_bias
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.residual_in_fp32 = residual_in_fp32
        self.time_step_rank = check_time_step_rank("MambaLMConfig", time_step_rank, hidden_size)
        self.time_step_scale = time_step_scale
        self.time_step_min = time_step_min
        self.time_step_max = time_step_max
        self.time_step_init_scheme = time_step_init_scheme
        self.time_step_floor = time_step_floor
        self.rescale_prenorm_residual = rescale_prenorm_residual
        self.use_cache = use_cache
        self.ssm_backend = ssm_backend
        self.use_cuda_graph = use_cuda_graph
        self.chunked_prefill_size = check_int("MambaLMConfig", "chunked_prefill_size", chunked_prefill_size, minimum=0)
        if ssm_state_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"MambaLMConfig: ssm_state_dtype must be 'auto', 'float32', 'bfloat16' or 'float16', got "
                             f"{ssm_state_dtype!r}")
        self.ssm_state_dtype = ssm_state_dtype
        self._validate_sizes()
        for name, value in (("pad_token_id", pad_token_id), ("bos_token_id", bos_token_id),
                            ("eos_token_id", eos_token_id)):
            check_token_id("MambaLMConfig", name, value, allow_list=name == "eos_token_id")
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    def _validate_sizes(self):
        for name in ("vocab_size", "state_size", "num_hidden_layers", "intermediate_size", "conv_kernel"):
            check_int("MambaLMConfig", name, getattr(self, name))
        if self.hidden_act not in ("silu", "swish"):
            raise ValueError(f"MambaLMConfig.hidden_act must be 'silu' (Mamba's gate), got {self.hidden_act!r}")
        check_number("MambaLMConfig", "layer_norm_epsilon", self.layer_norm_epsilon, low=0.0, low_open=True)
        check_number("MambaLMConfig", "initializer_range", self.initializer_range, low=0.0)
        check_time_steps("MambaLMConfig", self.time_step_min, self.time_step_max, self.time_step_floor,
                         self.time_step_scale)
        check_choice("MambaLMConfig", "time_step_init_scheme", self.time_step_init_scheme, ("random", "constant"))
        if self.time_step_rank > self.intermediate_size:
            raise ValueError(
                f"MambaLMConfig.time_step_rank={self.time_step_rank} exceeds intermediate_size="
                f"{self.intermediate_size}; the dt projection would not be low-rank. Check hidden_size / expand."
            )


__all__ = ["MambaLMConfig"]
