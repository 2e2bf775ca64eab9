"""ssmvl Mamba language model: a Mamba-1 decoder with the state-dict layout of transformers' `MambaForCausalLM`
(`backbone.embeddings`, `backbone.layers.{i}.norm`, `backbone.layers.{i}.mixer.*`, `backbone.norm_f`, tied
`lm_head`), a constant-memory cache and every `generate()` mode."""

from __future__ import annotations

import copy
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Optional, Tuple, Union

import torch
import torch.nn as nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput, logging

from .configuration_mamba_lm import MambaLMConfig
from .cuda_graphs import graph_fingerprint
from .hf_compat import CACHE_NAME, NamesReplacedFilesMixin, cache_output, new_token_count, pop_cache
from .ssm_layers import (MambaBlock, MambaMixer, RMSNorm, SsmCache, cache_state_dtype, causal_lm_loss,
                         check_input_ids, init, unhooked)
from .ssm_ops import add_rms_norm


if TYPE_CHECKING:  # never runs: names every sibling file for transformers 5.0's remote-code copy (see hf_compat.py)
    from .config_checks import check_int  # noqa: F401
    from .ssm_triton import selective_scan_triton  # noqa: F401


logger = logging.get_logger(__name__)

# model -> OrderedDict of captured decoding steps kept across generate() calls (MambaLMForCausalLM, "CUDA-graph
# decoding"); weak keys: a deleted model frees its graphs, and copy.deepcopy / pickling never meet a CUDA graph
_CUDA_GRAPHS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_DEFAULTS = []


def _default_generation_settings() -> dict:
    """GenerationConfig()'s settings, read once (a GenerationConfig costs about a millisecond to build)."""
    if not _DEFAULTS:
        _DEFAULTS.append(GenerationConfig().to_dict())
    return _DEFAULTS[0]


# Forward arguments that callers pass to every model and that a Mamba model has no use for (transformers' own Mamba
# ignores them too). Any other unknown argument is an error, so that nothing given to forward() or generate() is
# dropped silently.
_IGNORED_KWARGS = frozenset({"cache_position", "position_ids", "output_attentions", "token_type_ids"})


def _check_kwargs(kwargs: dict, where: str):
    unknown = sorted(set(kwargs) - _IGNORED_KWARGS - {"num_items_in_batch"})
    if unknown:
        raise TypeError(f"{where}.forward() got unexpected argument(s) {unknown}; it takes input_ids or inputs_embeds, "
                        "attention_mask, cache, use_cache, labels, output_hidden_states, return_dict, logits_to_keep.")


@cache_output
class MambaLMOutput(ModelOutput):
    """last_hidden_state: (batch, seqlen, hidden); cache: the `SsmCache` when use_cache (the field is named as this
    transformers names it, see hf_compat.py; `.cache` always works); hidden_states: the embeddings and each block's
    output when output_hidden_states."""

    last_hidden_state: Optional[torch.FloatTensor] = None
    cache: Optional[SsmCache] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None


@cache_output
class MambaLMCausalLMOutput(ModelOutput):
    """loss (labels given; shifted inside), logits: (batch, seqlen, vocab), cache, hidden_states."""

    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    cache: Optional[SsmCache] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None


class MambaLMPreTrainedModel(NamesReplacedFilesMixin, PreTrainedModel):
    config_class = MambaLMConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    _no_split_modules = ["MambaBlock"]
    supports_gradient_checkpointing = True
    # SsmCache can take tokens back (crop) while recording, so assisted decoding works: not "stateful" for generate()
    _is_stateful = False

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, MambaMixer):
            module.reset_ssm_parameters()
            if self.config.rescale_prenorm_residual:
                init.copy_(module.out_proj.weight, module.out_proj.weight / self.config.num_hidden_layers**0.5)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not build a transformers DynamicCache: _prepare_cache_for_generation builds an SsmCache
        return False

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """generate() hook: an ``SsmCache`` (sized at its first forward) unless the caller passed one or
        ``use_cache=False``; it exists before the first step, as assisted decoding requires."""
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        cache = pop_cache(model_kwargs.pop("cache", None), model_kwargs)
        if cache is None and generation_config.use_cache is not False:
            cache = SsmCache.from_config(self.config)
        if cache is not None:
            model_kwargs[CACHE_NAME] = cache


def _mixer(config: MambaLMConfig, layer_idx: int, bidirectional: bool = False) -> MambaMixer:
    return MambaMixer(
        config.hidden_size, config.intermediate_size, state_size=config.state_size, conv_kernel=config.conv_kernel,
        time_step_rank=config.time_step_rank, use_bias=config.use_bias, use_conv_bias=config.use_conv_bias,
        bidirectional=bidirectional, layer_idx=layer_idx, ssm_backend=config.ssm_backend,
        time_step_min=config.time_step_min, time_step_max=config.time_step_max,
        time_step_floor=config.time_step_floor, time_step_scale=config.time_step_scale,
        time_step_init_scheme=config.time_step_init_scheme,
    )


class MambaLMModel(MambaLMPreTrainedModel):
    def __init__(self, config: MambaLMConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            MambaBlock(config.hidden_size, _mixer(config, i), config.layer_norm_epsilon, config.residual_in_fp32)
            for i in range(config.num_hidden_layers)
        )
        self.norm_f = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, new_embeddings):
        self.embeddings = new_embeddings

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        cache: Optional[SsmCache] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        attention_mask: Optional[torch.LongTensor] = None,
        **kwargs,
    ) -> Union[Tuple, MambaLMOutput]:
        r"""input_ids: (batch, seqlen) token ids, or inputs_embeds: (batch, seqlen, hidden); cache: an `SsmCache` to
        continue (also accepted as `past_key_values` / `cache_params`); attention_mask: (batch, seqlen), 0 = padding."""
        cache = pop_cache(cache, kwargs)
        _check_kwargs(kwargs, type(self).__name__)
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if input_ids is not None:
            # the id range is read (a device sync) for prompts only: decoding steps feed ids generate() sampled
            decoding = cache is not None and cache.get_seq_length() > 0
            check_input_ids(input_ids, None if decoding else self.embeddings.num_embeddings)
            inputs_embeds = self.embeddings(input_ids)  # (b, L, H)
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"inputs_embeds must be (batch, seqlen, {self.config.hidden_size}), got {tuple(inputs_embeds.shape)}"
            )
        if not inputs_embeds.is_floating_point():
            raise ValueError(f"inputs_embeds must be floating point, got {inputs_embeds.dtype}; token ids go in input_ids.")
        if inputs_embeds.shape[1] == 0:
            raise ValueError(f"inputs_embeds has no positions (shape {tuple(inputs_embeds.shape)}): pass at least one.")
        if attention_mask is not None and attention_mask.shape != inputs_embeds.shape[:2]:
            if cache is None or cache.get_seq_length() == 0:
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)} but the inputs are "
                    f"{tuple(inputs_embeds.shape[:2])} (batch, seqlen)."
                )
            attention_mask = None  # generate() passes the whole mask; after the prompt only new tokens come
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        if use_cache and cache is None:
            cache = SsmCache.from_config(self.config)
        if use_cache and not cache.is_initialized:
            cache.initialize(inputs_embeds.shape[0], dtype=inputs_embeds.dtype, device=inputs_embeds.device)
        if use_cache and cache.max_batch_size != inputs_embeds.shape[0]:
            raise ValueError(f"The cache holds {cache.max_batch_size} sequence(s) but the inputs have batch size "
                             f"{inputs_embeds.shape[0]}.")
        hidden_states = inputs_embeds
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        if not output_hidden_states and self._fused_norms_apply():
            hidden_states = self._run_blocks_fused(hidden_states, cache if use_cache else None, attention_mask)
        else:
            for block in self.layers:
                hidden_states = block(hidden_states, cache=cache if use_cache else None, attention_mask=attention_mask)
                if output_hidden_states:
                    all_hidden_states = all_hidden_states + (hidden_states,)
            hidden_states = self.norm_f(hidden_states)
        if use_cache:
            cache.seqlen_offset += inputs_embeds.shape[1]
        if output_hidden_states:
            all_hidden_states = all_hidden_states[:-1] + (hidden_states,)
        if not return_dict:
            return tuple(v for v in (hidden_states, cache if use_cache else None, all_hidden_states) if v is not None)
        return MambaLMOutput(hidden_states, cache if use_cache else None, all_hidden_states)


    # -- inference: each block's residual sum and the next norm in one op --------------------------------------------
    # Block i computes r_i = r_{i-1} + mixer_i(norm_i(r_{i-1})). Outside autograd, the loop below computes the same
    # numbers with (r_i, norm_{i+1}(r_i)) from one `add_rms_norm` (one Triton kernel on a GPU, as mamba_ssm's fused
    # add + norm) instead of an add, a cast and a norm: a decoding step then runs 7 kernels a layer. The mixers are
    # still called as modules (hooks and PEFT adapters inside them run); hooks on blocks or norms keep the plain loop.
    def _fused_norms_apply(self) -> bool:
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or not len(self.layers):
            return False
        modules = [self.norm_f] + [m for block in self.layers for m in (block, getattr(block, "norm", None))]
        return unhooked(modules, (MambaBlock, RMSNorm))

    def _run_blocks_fused(self, hidden_states, cache, attention_mask):
        """The blocks and norm_f (see above): returns norm_f's output."""
        first = self.layers[0]
        residual = hidden_states.to(torch.float32) if first.residual_in_fp32 else hidden_states
        normed = first.norm(hidden_states, cast_input=True)
        for i, block in enumerate(self.layers):
            out = block.mixer(normed, cache=cache, attention_mask=attention_mask)
            if i + 1 < len(self.layers):
                norm, cast_input = self.layers[i + 1].norm, True
            else:
                norm, cast_input = self.norm_f, False
            residual, normed = add_rms_norm(residual, out, norm.weight, norm.variance_epsilon, cast_input=cast_input)
        return normed


class MambaLMForCausalLM(MambaLMPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "backbone.embeddings.weight"}

    def __init__(self, config: MambaLMConfig):
        super().__init__(config)
        self.backbone = MambaLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, new_embeddings):
        self.backbone.set_input_embeddings(new_embeddings)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def prepare_inputs_for_generation(
        self, input_ids, inputs_embeds=None, use_cache=None, cache: Optional[SsmCache] = None, attention_mask=None,
        is_first_iteration=False, next_sequence_length=None, cache_position=None, past_key_values=None,
        cache_params=None, **kwargs,
    ):
        """What generate() feeds forward() at each step. Prefill: the prompt, as ``inputs_embeds`` whenever they are
        given (with or without ``input_ids``: the ids then only serve generate()'s bookkeeping, e.g. prompt tuning or a
        multimodal prefix), with its attention mask. Later steps: only the tokens the cache has not seen (one, or
        several for assisted decoding and cache continuation); the left padding already lives, as zeros, in the
        states, so no mask is needed. Every other keyword reaches forward() (which rejects what it does not know)."""
        cache = pop_cache(cache, {"past_key_values": past_key_values, "cache_params": cache_params})
        kwargs.pop("labels", None)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        seen = cache.get_seq_length() if use_cache and cache is not None else 0
        if seen and not (is_first_iteration and inputs_embeds is not None):
            n = new_token_count(next_sequence_length, cache_position)
            if next_sequence_length is None and cache_position is None and inputs_embeds is None:
                n = max(1, input_ids.shape[1] - seen)  # a continued cache: input_ids hold the whole sequence
            model_inputs = {"input_ids": input_ids[:, -n:].contiguous(), "inputs_embeds": None}
            attention_mask = None
        elif inputs_embeds is not None and (seen or is_first_iteration or use_cache or input_ids.shape[1] == 0):
            if seen >= inputs_embeds.shape[1]:
                raise ValueError(f"The cache already holds {seen} positions but inputs_embeds has only "
                                 f"{inputs_embeds.shape[1]}: pass the embeddings of the whole sequence.")
            model_inputs = {"input_ids": None, "inputs_embeds": inputs_embeds[:, seen:]}
            if attention_mask is not None and seen:
                attention_mask = None
        elif inputs_embeds is not None:
            # no cache: re-run the embedded prompt followed by the ids generated so far, which generate() counts in
            # the attention mask (prompt length + generated)
            generated = (attention_mask.shape[1] - inputs_embeds.shape[1] if attention_mask is not None
                         else input_ids.shape[1])
            new = self.get_input_embeddings()(input_ids[:, input_ids.shape[1] - generated:])
            model_inputs = {"input_ids": None, "inputs_embeds": torch.cat([inputs_embeds, new.to(inputs_embeds.dtype)],
                                                                           dim=1)}
        else:
            model_inputs = {"input_ids": input_ids.contiguous(), "inputs_embeds": None}
        model_inputs.update(cache=cache if use_cache else None, use_cache=use_cache, attention_mask=attention_mask)
        model_inputs.update(kwargs)
        return model_inputs

    # -- greedy decoding without generate()'s per-step work -----------------------------------------------------------
    # generate()'s loop costs about 0.5 ms a token on top of a replayed CUDA-graph step (H200, batch 1: 0.76 ms), most
    # of it because it reads `unfinished_sequences.max()` on the host every step, so the GPU waits for Python between
    # steps. For plain greedy decoding of input_ids (every setting is a length / token id, greedy-neutral, or a
    # sampling / beam knob that greedy decoding ignores; no streamer, processors, stopping criteria, extra outputs or
    # model kwargs) the loop below gives the same tokens (tested against generate()'s own loop) and reads the device
    # only every _EOS_CHECK_EVERY steps, to stop once every sequence has ended; tokens past the end are cut off, so the
    # result is generate()'s. Any other request goes to generate(); `fast_greedy_generate = False` sends all of them.
    fast_greedy_generate = True
    _GREEDY_SETTINGS = frozenset({"max_length", "max_new_tokens", "min_length", "min_new_tokens", "eos_token_id",
                                  "pad_token_id", "bos_token_id", "decoder_start_token_id", "transformers_version",
                                  "_from_model_config", "_commit_hash", "use_cache",
                                  # ignored without sampling or beams (generate() only warns about them)
                                  "temperature", "top_k", "top_p", "typical_p", "min_p", "top_h", "epsilon_cutoff",
                                  "eta_cutoff", "length_penalty", "early_stopping"})
    _GREEDY_NEUTRAL = {"num_beams": 1, "num_return_sequences": 1, "num_beam_groups": 1, "repetition_penalty": 1.0,
                       "encoder_repetition_penalty": 1.0, "diversity_penalty": 0.0, "no_repeat_ngram_size": 0,
                       "encoder_no_repeat_ngram_size": 0, "guidance_scale": 1.0}
    _EOS_CHECK_EVERY = 16

    def _greedy_plan(self, inputs, generation_config, kwargs):
        """(input_ids, attention_mask, max_length, min_length, eos ids, pad id) when the request is plain greedy
        decoding of input_ids, else None."""
        if not self.fast_greedy_generate or torch.compiler.is_compiling():
            return None
        distributed = getattr(torch, "distributed", None)
        if distributed is not None and distributed.is_available() and distributed.is_initialized():
            return None  # generate() keeps sharded ranks stepping together (synced_gpus): left to it
        kwargs = dict(kwargs)
        input_ids = kwargs.pop("input_ids", None) if inputs is None else inputs
        attention_mask = kwargs.pop("attention_mask", None)
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long \
                or input_ids.shape[1] == 0 or input_ids.device != self.device:
            return None
        config = copy.deepcopy(generation_config if generation_config is not None else self.generation_config)
        if not isinstance(config, GenerationConfig) or config.update(**kwargs):  # a model kwarg: generate() handles it
            return None
        default = _default_generation_settings()
        for key, value in config.to_dict().items():
            if key in self._GREEDY_SETTINGS or value is None or value is False or value == default.get(key):
                continue
            if key not in self._GREEDY_NEUTRAL or value != self._GREEDY_NEUTRAL[key]:
                return None  # a processor, an output or a mode of generate()'s
        if config.use_cache is False:
            return None
        prompt = input_ids.shape[1]
        max_length = prompt + config.max_new_tokens if config.max_new_tokens is not None else config.max_length
        min_length = max(config.min_length or 0, prompt + (config.min_new_tokens or 0))
        eos = config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        pad = config.pad_token_id
        if max_length is None or max_length <= prompt or not all(isinstance(e, int) for e in eos):
            return None
        if attention_mask is None and pad is not None and pad not in eos and bool((input_ids == pad).any()):
            return None  # generate() infers the padding mask from pad_token_id: left to it
        if eos and pad is None:
            pad = eos[0]  # as generate() does
        return input_ids, attention_mask, max_length, min_length, eos, pad

    def generate(self, inputs=None, generation_config=None, *args, **kwargs):
        """`GenerationMixin.generate`; plain greedy requests take a lean loop with the same result (see above)."""
        plan = None if args else self._greedy_plan(inputs, generation_config, kwargs)
        if plan is None:
            return super().generate(inputs, generation_config, *args, **kwargs)
        return self._greedy_generate(*plan)

    @torch.no_grad()
    def _greedy_generate(self, input_ids, attention_mask, max_length, min_length, eos, pad):
        batch, prompt = input_ids.shape
        out = input_ids.new_empty((batch, max_length))
        out[:, :prompt] = input_ids
        cache = self._cache_on_kept_graph(input_ids)
        outputs = self(input_ids, attention_mask=attention_mask, cache=cache, use_cache=True, logits_to_keep=1)
        cache, logits = outputs.cache, outputs.logits[:, -1]
        eos_ids = torch.tensor(eos, device=input_ids.device) if eos else None
        unfinished = torch.ones(batch, dtype=torch.bool, device=input_ids.device)
        check_every = self._EOS_CHECK_EVERY if input_ids.is_cuda else 1
        end = max_length
        for pos in range(prompt, max_length):
            if eos_ids is not None and pos < min_length:
                logits[:, eos_ids] = -float("inf")  # MinLength / MinNewTokens processors
            tokens = logits.argmax(-1)
            if eos_ids is not None:
                tokens = torch.where(unfinished, tokens, pad)
                unfinished &= ~torch.isin(tokens, eos_ids)
            out[:, pos] = tokens
            if pos + 1 == max_length:
                break
            if eos_ids is not None and (pos - prompt) % check_every == check_every - 1 and not bool(unfinished.any()):
                end = pos + 1
                break
            logits = self(tokens[:, None], cache=cache, use_cache=True).logits[:, -1]
        if eos_ids is not None:  # generate() stops right after the step where the last sequence ended
            ended = torch.isin(out[:, prompt:end], eos_ids).cumsum(-1).gt(0).all(0)  # (steps,): all ended by then
            if bool(ended.any()):
                end = prompt + int(ended.nonzero()[0, 0]) + 1
        return out[:, :end]

    # -- CUDA-graph decoding ----------------------------------------------------------------------------------------
    def _can_replay_graph(self, input_ids, inputs_embeds, cache, labels, output_hidden_states, use_cache):
        return (
            self.config.use_cuda_graph
            and not self.training
            and not torch.is_grad_enabled()
            and input_ids is not None
            and inputs_embeds is None
            and input_ids.is_cuda
            and input_ids.shape[1] == 1
            and cache is not None
            and cache.seqlen_offset > 0
            and not cache.record_past
            and use_cache is not False
            and labels is None
            and not output_hidden_states
            and not torch.compiler.is_compiling()
        )

    def _decode_step(self, input_ids, cache):
        hidden = self.backbone(input_ids, cache=cache, use_cache=True, return_dict=True)
        return self.lm_head(hidden.last_hidden_state.to(self.lm_head.weight.dtype)).float()

    # A captured step is kept across generate() calls (mamba_ssm keeps its graphs too): capturing costs about 40 ms, a
    # step 0.65 ms (H200, mamba-130m shape), so a fresh capture per call cost a 256-token generation 20%. A graph reads
    # and writes fixed state tensors: a new cache is bound to them (its states copied in, its lists pointing at them),
    # and the cache bound before gets copies of its states back, so no cache ever loses what it holds. A graph also
    # bakes in what the Python code decided while it was captured, so one is reused only while the fingerprint below
    # is unchanged: every parameter and buffer where it was, each module's train flag, hooks and plain settings (PEFT
    # adapters enabled, active, merged, scaling), the config's settings, global hooks, autocast and the backend
    # variable. `.to()` and friends drop the graphs; `release_cuda_graphs()` frees them. The lean greedy loop prefills
    # straight into a kept graph's state buffers (no new states, no copy).
    _MAX_CUDA_GRAPHS = 4

    def release_cuda_graphs(self):
        """Frees the captured decoding steps (and their state buffers) kept across generate() calls."""
        _CUDA_GRAPHS.pop(self, None)

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() / .half(): the captured steps read the old tensors
        self.release_cuda_graphs()
        return super()._apply(fn, *args, **kwargs)

    def _graph_fingerprint(self):
        return graph_fingerprint(self)

    @staticmethod
    def _bind_graph(graph, cache: SsmCache):
        """Points ``cache`` at the graph's state tensors, holding ``cache``'s states; the cache bound before keeps
        copies of its own."""
        states = cache.conv_states + cache.ssm_states
        previous = graph["owner"]() if graph["owner"] is not None else None
        if previous is not None and previous is not cache and any(
                a is b for a, b in zip(previous.conv_states + previous.ssm_states, graph["states"])):
            previous.conv_states = [s.clone() for s in previous.conv_states]
            previous.ssm_states = [s.clone() for s in previous.ssm_states]
        for static, state in zip(graph["states"], states):
            if static is not state:
                static.copy_(state)
        n = len(graph["states"]) // 2
        cache.conv_states, cache.ssm_states = list(graph["states"][:n]), list(graph["states"][n:])
        graph["owner"] = weakref.ref(cache)
        cache._cuda_graph = graph

    def _graph_key(self, input_ids, conv_dtype, ssm_dtype):
        c = self.config
        return (tuple(input_ids.shape), str(input_ids.device), c.num_hidden_layers, conv_dtype, ssm_dtype,
                c.intermediate_size, c.conv_kernel, c.state_size)

    def _cache_on_kept_graph(self, input_ids) -> Optional[SsmCache]:
        """For the lean loop: a cache whose states ARE the buffers of a kept graph for this batch (no allocation, no
        copy at the first step), or None."""
        graphs = _CUDA_GRAPHS.get(self)
        if not graphs or not input_ids.is_cuda or not self.config.use_cuda_graph:
            return None
        dtype = self.get_input_embeddings().weight.dtype
        key = self._graph_key(input_ids[:, :1], dtype, cache_state_dtype(self.config) or dtype)
        graph = graphs.get(key)
        if graph is None or graph["fingerprint"] != self._graph_fingerprint():
            return None
        cache = SsmCache.from_config(self.config)  # no states of its own: the prefill writes into the graph's
        self._bind_graph(graph, cache)
        graphs.move_to_end(key)
        return cache

    def _capture_graph(self, input_ids, cache: SsmCache, fingerprint):
        states = cache.conv_states + cache.ssm_states
        saved = [s.clone() for s in states]
        offset = cache.seqlen_offset
        static_ids = input_ids.clone()
        stream = torch.cuda.Stream(device=input_ids.device)
        stream.wait_stream(torch.cuda.current_stream(input_ids.device))
        with torch.cuda.stream(stream):  # warm-up (kernel compilation, allocator) outside the capture
            self._decode_step(static_ids, cache)
        torch.cuda.current_stream(input_ids.device).wait_stream(stream)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            static_logits = self._decode_step(static_ids, cache)
        for s, v in zip(states, saved):  # undo the warm-up steps
            s.copy_(v)
        cache.seqlen_offset = offset
        return {"graph": cuda_graph, "ids": static_ids, "logits": static_logits, "states": states,
                "fingerprint": fingerprint, "owner": weakref.ref(cache)}

    def _decode_with_cuda_graph(self, input_ids, cache: SsmCache):
        """One decoding step by replaying a CUDA graph of the whole model step (see above). The cache's state tensors
        are updated in place by the graph."""
        graph = getattr(cache, "_cuda_graph", None)
        if (graph is None or graph["ids"].shape != input_ids.shape or graph["owner"]() is not cache
                or not all(a is b for a, b in zip(graph["states"], cache.conv_states + cache.ssm_states))):
            graphs = _CUDA_GRAPHS.setdefault(self, OrderedDict())
            key = self._graph_key(input_ids, cache.conv_states[0].dtype, cache.ssm_states[0].dtype)
            fingerprint = self._graph_fingerprint()
            graph = graphs.get(key)
            if graph is not None and graph["fingerprint"] == fingerprint:
                self._bind_graph(graph, cache)
                graphs.move_to_end(key)
            else:
                graph = graphs[key] = self._capture_graph(input_ids, cache, fingerprint)
                graphs.move_to_end(key)
                cache._cuda_graph = graph
                while len(graphs) > self._MAX_CUDA_GRAPHS:
                    graphs.popitem(last=False)
        graph["ids"].copy_(input_ids)
        graph["graph"].replay()
        cache.seqlen_offset += input_ids.shape[1]
        return graph["logits"].clone()

    def _chunked_prefill(self, input_ids, inputs_embeds, attention_mask, cache, logits_to_keep):
        """Runs a long prompt through the backbone `chunked_prefill_size` tokens at a time, the cache carrying the conv
        and SSM states between chunks: peak memory depends on the chunk, not on the prompt length. Keeps only the
        hidden states that the requested logits need. Same result as one pass (tested)."""
        inputs = input_ids if input_ids is not None else inputs_embeds
        seqlen, chunk = inputs.shape[1], self.config.chunked_prefill_size
        keep = seqlen if not isinstance(logits_to_keep, int) or logits_to_keep == 0 else logits_to_keep
        kept = []
        for start in range(0, seqlen, chunk):
            end = min(seqlen, start + chunk)
            out = self.backbone(
                None if input_ids is None else input_ids[:, start:end],
                inputs_embeds=None if inputs_embeds is None else inputs_embeds[:, start:end],
                cache=cache, use_cache=True, return_dict=True,
                attention_mask=None if attention_mask is None else attention_mask[:, start:end],
            )
            cache = out.cache
            if end > seqlen - keep:
                kept.append(out.last_hidden_state[:, max(0, seqlen - keep - start):])
        return MambaLMOutput(torch.cat(kept, dim=1), cache)

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        cache: Optional[SsmCache] = None,
        labels: Optional[torch.LongTensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        use_cache: Optional[bool] = None,
        logits_to_keep: Union[int, torch.Tensor] = 0,
        **kwargs,
    ) -> Union[Tuple, MambaLMCausalLMOutput]:
        r"""labels: (batch, seqlen) token ids, -100 ignored; shifted inside (labels = input_ids is right). cache: an
        `SsmCache` to continue (also accepted as `past_key_values` / `cache_params`)."""
        cache = pop_cache(cache, kwargs)
        _check_kwargs(kwargs, type(self).__name__)
        if input_ids is not None:  # the form here; the id range (a device sync) once, by the backbone or below
            check_input_ids(input_ids)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if self._can_replay_graph(input_ids, inputs_embeds, cache, labels, output_hidden_states, use_cache):
            logits = self._decode_with_cuda_graph(input_ids, cache)
            if not return_dict:
                return (logits, cache)
            return MambaLMCausalLMOutput(None, logits, cache)
        seqlen = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        chunk = self.config.chunked_prefill_size
        if (chunk and seqlen > chunk and labels is None and not output_hidden_states and not torch.is_grad_enabled()
                and (use_cache if use_cache is not None else self.config.use_cache) and not self.training):
            if input_ids is not None and not (cache is not None and cache.get_seq_length() > 0):
                # the backbone takes the chunks after the first for decoding steps, whose ids it does not read
                check_input_ids(input_ids, self.get_input_embeddings().num_embeddings)
            outputs = self._chunked_prefill(input_ids, inputs_embeds, attention_mask, cache, logits_to_keep)
        else:
            outputs = self.backbone(
                input_ids, inputs_embeds=inputs_embeds, cache=cache, use_cache=use_cache,
                output_hidden_states=output_hidden_states, return_dict=True, attention_mask=attention_mask,
            )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states.to(self.lm_head.weight.dtype)).float()
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, kwargs.get("num_items_in_batch"))
        if not return_dict:
            out = (logits, outputs.cache, outputs.hidden_states)
            out = tuple(v for v in out if v is not None)
            return (loss,) + out if loss is not None else out
        return MambaLMCausalLMOutput(loss, logits, outputs.cache, outputs.hidden_states)


__all__ = ["MambaLMPreTrainedModel", "MambaLMModel", "MambaLMForCausalLM", "SsmCache"]

# save_pretrained writes `auto_map` and copies this file and its sibling imports, so that
# AutoModel*/AutoConfig.from_pretrained(..., trust_remote_code=True) works without ssmvl installed.
MambaLMConfig.register_for_auto_class()
MambaLMModel.register_for_auto_class("AutoModel")
MambaLMForCausalLM.register_for_auto_class("AutoModelForCausalLM")
