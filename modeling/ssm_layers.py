"""Layers shared by every ssmvl family: the Mamba mixer (uni- and bidirectional), RMSNorm, the residual block and
the constant-memory SSM cache. The math lives in ``ssm_ops.py``; this file only wires parameters to it.

Parameter names follow transformers' ``MambaMixer`` (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``,
``D``, ``out_proj``) so state-spaces / transformers Mamba checkpoints load unchanged, and Vim's "bimamba v2"
backward branch (``conv1d_b``, ``x_proj_b``, ``dt_proj_b``, ``A_b_log``, ``D_b``; see hustvl/Vim
``mamba-1p1p1/mamba_ssm/modules/mamba_simple.py``).
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .hf_compat import init  # noqa: F401  (the families import it from here)
from .ssm_ops import (causal_conv1d, causal_conv1d_update, rms_norm, scan_reads_channel_major, selective_scan,
                      selective_state_update)

try:  # transformers >= 4.56
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # pragma: no cover
    GradientCheckpointingLayer = nn.Module

from transformers.cache_utils import Cache



def cache_state_dtype(config) -> Optional[torch.dtype]:
    """The cache's SSM-state dtype from ``config.ssm_state_dtype``; None ("auto", configs saved before the option):
    the model's dtype."""
    name = getattr(config, "ssm_state_dtype", "auto")
    return None if name == "auto" else getattr(torch, name)


class SsmCache(Cache):
    """Constant-memory generation cache, a transformers ``Cache``: per layer a conv state (batch, intermediate,
    conv_kernel) holding the last ``conv_kernel`` inputs of the causal conv, and an SSM state (batch, intermediate,
    state_size) in the model's dtype, as mamba_ssm and transformers' ``MambaCache`` keep it (or the config's
    ``ssm_state_dtype``; each step computes in float32). Its size does not depend on the sequence length.

    generate() uses it like any ``Cache``: ``get_seq_length``, in-place ``reorder_cache`` for beam search,
    ``batch_repeat_interleave`` / ``batch_select_indices``, ``reset``, and ``crop`` for assisted decoding. A recurrent
    state cannot be cut back by itself, so ``activate_past_recording()`` (called by generate() before assisted
    decoding) makes the mixers step the last ``record_window`` tokens of each call one at a time and keep a snapshot of
    the states after each: ``crop`` then restores the snapshot from the requested position.
    """

    is_compileable = False  # set True to let generate() compile the decode step (static shapes, in-place updates)
    record_window = 64  # tokens that crop() can take back after a forward while recording

    def __init__(self, num_layers: int, batch_size: Optional[int], intermediate_size: int, conv_kernel: int,
                 state_size: int, dtype: torch.dtype = torch.float32, device=None,
                 ssm_dtype: Optional[torch.dtype] = None):
        super().__init__(layers=[])  # the base class only keeps bookkeeping here: the states are ours
        self.num_layers, self.intermediate_size = num_layers, intermediate_size
        self.conv_kernel, self.state_size = conv_kernel, state_size
        self.ssm_dtype = ssm_dtype  # the SSM states' (config.ssm_state_dtype); None: the model's (initialize's dtype)
        self.conv_states: List[torch.Tensor] = []
        self.ssm_states: List[torch.Tensor] = []
        self.seqlen_offset = 0
        self.record_past = False
        self._history: List[list] = [[] for _ in range(num_layers)]  # per layer: [(conv, ssm), ...], newest last
        if batch_size is not None:
            self.initialize(batch_size, dtype, device)

    def initialize(self, batch_size: int, dtype: torch.dtype = torch.float32, device=None):
        """Allocates zero states (a cache made by generate() before it knows the batch is sized at its first use)."""
        self.conv_states = [torch.zeros(batch_size, self.intermediate_size, self.conv_kernel, dtype=dtype,
                                        device=device) for _ in range(self.num_layers)]
        ssm_dtype = self.ssm_dtype or dtype
        self.ssm_states = [torch.zeros(batch_size, self.intermediate_size, self.state_size, dtype=ssm_dtype,
                                       device=device) for _ in range(self.num_layers)]

    @property
    def is_initialized(self) -> bool:
        return bool(self.conv_states)

    @classmethod
    def from_config(cls, config, batch_size: Optional[int] = None, dtype=torch.float32, device=None) -> "SsmCache":
        """A cache for ``config``'s model; without ``batch_size`` the states are allocated at the first forward."""
        return cls(config.num_hidden_layers, batch_size, config.intermediate_size, config.conv_kernel,
                   config.state_size, dtype=dtype, device=device,
                   ssm_dtype=cache_state_dtype(config))

    def __len__(self) -> int:
        return self.num_layers

    def __repr__(self) -> str:
        return (f"SsmCache(layers={len(self)}, batch={self.max_batch_size}, intermediate={self.intermediate_size}, "
                f"conv_kernel={self.conv_kernel}, state_size={self.state_size}, seqlen_offset={self.seqlen_offset})")

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seqlen_offset

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return -1  # no sequence dimension: any length fits

    @property
    def max_batch_size(self) -> int:
        return self.conv_states[0].shape[0] if self.conv_states else 0

    @property
    def max_cache_len(self) -> int:
        return -1

    @property
    def is_linear(self) -> List[bool]:
        return [True] * len(self)

    @property
    def is_sliding(self) -> List[bool]:
        return [False] * len(self)

    @property
    def is_croppable(self) -> bool:
        return self.record_past

    def _apply(self, fn):
        """Replaces every state by ``fn(state)`` (a new batch layout); snapshots follow."""
        self.conv_states = [fn(s) for s in self.conv_states]
        self.ssm_states = [fn(s) for s in self.ssm_states]
        self._history = [[(fn(c), fn(h)) for c, h in layer] for layer in self._history]

    def reorder_cache(self, beam_idx: torch.LongTensor):
        # in place: the tensors keep their addresses (a captured CUDA graph reads them)
        for s in self.conv_states + self.ssm_states:
            s.copy_(s.index_select(0, beam_idx.to(s.device)))
        self._history = [[(c.index_select(0, beam_idx.to(c.device)), h.index_select(0, beam_idx.to(h.device)))
                          for c, h in layer] for layer in self._history]

    def batch_repeat_interleave(self, repeats: int):
        self._apply(lambda s: s.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor):
        self._apply(lambda s: s[indices.to(s.device)])

    def reset(self):
        for s in self.conv_states + self.ssm_states:
            s.zero_()
        self.seqlen_offset = 0
        self._history = [[] for _ in self._history]

    # -- rollback for assisted decoding ------------------------------------------------------------------------------
    def activate_past_recording(self):
        self.record_past = True

    def is_recording_past(self, layer_idx: int = 0) -> bool:
        return self.record_past

    def record_state(self, layer_idx: int):
        """Called by a mixer while recording: snapshot of this layer's states after the token it just added."""
        history = self._history[layer_idx]
        history.append((self.conv_states[layer_idx].clone(), self.ssm_states[layer_idx].clone()))
        del history[: max(0, len(history) - self.record_window - 1)]

    def crop(self, max_length: int):
        """Takes tokens back. ``max_length`` <= 0: remove ``-max_length`` tokens (transformers >= 5.24's convention);
        > 0: keep the first ``max_length`` tokens (older 5.x)."""
        remove = -max_length if max_length <= 0 else self.seqlen_offset - max_length
        if remove <= 0:
            return
        if not self.record_past or any(len(h) <= remove for h in self._history):
            raise ValueError(
                f"SsmCache cannot take back {remove} token(s): a recurrent state is only recoverable for the last "
                f"{self.record_window} tokens and only after activate_past_recording()."
            )
        for idx, history in enumerate(self._history):
            conv, ssm = history[-remove - 1]
            self.conv_states[idx].copy_(conv)
            self.ssm_states[idx].copy_(ssm)
            del history[-remove:]
        self.seqlen_offset -= remove

    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.conv_states + self.ssm_states)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 (same as transformers' MambaRMSNorm / LlamaRMSNorm)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor, cast_input: bool = False) -> torch.Tensor:
        """``cast_input``: normalise ``hidden_states.to(self.weight.dtype)`` (on a GPU at inference the cast, like the
        whole norm, happens inside one Triton kernel)."""
        return rms_norm(hidden_states, self.weight, self.variance_epsilon, cast_input=cast_input)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.variance_epsilon}"


def check_pixel_values(pixel_values: torch.Tensor, name: str = "pixel_values", finite: bool = True) -> None:
    """What a vision model reads must be floating-point pixels (the image processor's rescaled, normalised output)
    and finite: integer images (uint8 0..255) are a TypeError and NaN / inf values a ValueError, each naming the fix,
    instead of silently wrong outputs. The finiteness check (``finite``; it waits for the GPU) is skipped while
    torch.compile traces: a model replaying a CUDA graph runs it after the replay's launch."""
    if not torch.is_floating_point(pixel_values):
        raise TypeError(f"{name} is {pixel_values.dtype}, but the model takes floating-point pixels: pass the image "
                        "processor's output (rescaled and normalised, e.g. processor(images, return_tensors='pt')), "
                        "or convert with .float() / 255 and normalise as the processor does.")
    # one fp32 sum first (a NaN or inf anywhere makes it non-finite): one reduction and no full-size temporaries (on
    # an H200, torch.profiler put 2 ms of host time a call on the element-wise test at 128 x 224 px); the element-wise
    # test only confirms (a sum of huge finite values can overflow)
    if (finite and not _compiling() and not bool(torch.isfinite(pixel_values.sum(dtype=torch.float32)))
            and not bool(torch.isfinite(pixel_values).all())):
        bad = int((~torch.isfinite(pixel_values)).sum())
        raise ValueError(f"{name} holds {bad} NaN or infinite value(s) (shape {tuple(pixel_values.shape)}); check the "
                         "images and their preprocessing (e.g. a division by a zero std).")


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The dtype autocast computes in on ``device``'s type, or None where autocast is off there."""
    try:
        if not torch.is_autocast_enabled(device.type):
            return None
        return torch.get_autocast_dtype(device.type)
    except (TypeError, AttributeError):  # torch < 2.4 takes no device type
        return torch.get_autocast_gpu_dtype() if device.type == "cuda" and torch.is_autocast_enabled() else None


def _compiling() -> bool:
    return getattr(torch, "compiler", None) is not None and torch.compiler.is_compiling()


def check_input_ids(input_ids, vocab_size: Optional[int] = None, name: str = "input_ids") -> None:
    """Token ids a model embeds must be an integer (batch, seqlen) tensor with at least one token and, given
    ``vocab_size`` (the embedding's rows), ids in [0, vocab_size): else a ValueError / TypeError naming the fix, instead
    of torch's "index out of range in self" from inside the embedding. The range check is skipped while torch.compile
    traces (it reads the values)."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids (batch, seqlen), got {type(input_ids).__name__}; "
                        "the tokenizer gives one with return_tensors='pt'.")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(f"{name} must be integer token ids (torch.long), got {input_ids.dtype}; pass vectors as "
                         "inputs_embeds (batch, seqlen, hidden).")
    if input_ids.dim() != 2:
        raise ValueError(f"{name} must be (batch, seqlen), got shape {tuple(input_ids.shape)}.")
    if input_ids.shape[1] == 0:
        raise ValueError(f"{name} has no tokens (shape {tuple(input_ids.shape)}): pass at least one token.")
    if vocab_size is not None and input_ids.numel() and not _compiling():
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"{name} holds ids {low}..{high} but the vocabulary has {vocab_size} tokens (ids "
                             f"0..{vocab_size - 1}); use the model's own tokenizer, or grow the embeddings after "
                             "adding tokens (model.resize_token_embeddings(len(tokenizer))).")


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Next-token cross-entropy of a causal LM. logits: (batch, seqlen, vocab); labels: (batch, seqlen) token ids,
    shifted inside, -100 ignored. The mean over the predicted tokens, or their sum / ``num_items_in_batch`` (what
    Trainer passes for gradient accumulation). A label outside [0, vocab) other than -100 is a ValueError naming it
    (torch raises "Target ... is out of bounds" from inside cross_entropy on CPU and a device-side assert on CUDA; the
    check is skipped while torch.compile traces). With no token to predict (seqlen 1, or every label -100) the loss is
    0, still part of the graph, not NaN: such a batch leaves the weights as they are."""
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels must be (batch, seqlen)={tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer token ids (-100 where no loss is taken), got {labels.dtype}")
    vocab = logits.shape[-1]
    shift_logits = logits[:, :-1].float().reshape(-1, vocab)  # (b * (L - 1), V)
    shift_labels = labels[:, 1:].reshape(-1).to(logits.device)  # (b * (L - 1),)
    if not _compiling():
        bad = shift_labels[(shift_labels != -100) & ((shift_labels < 0) | (shift_labels >= vocab))]
        if bad.numel():
            raise ValueError(f"labels hold {bad.numel()} id(s) outside the vocabulary of {vocab} tokens (e.g. "
                             f"{int(bad[0])}); labels are token ids in 0..{vocab - 1}, or -100 where no loss is taken.")
    loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
    count = (shift_labels != -100).sum() if num_items_in_batch is None else num_items_in_batch
    if isinstance(count, torch.Tensor):
        return loss / count.to(loss.device).clamp(min=1)
    return loss / max(count, 1)


def _mask(hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Zero the padding positions. hidden_states: (batch, seqlen, dim); attention_mask: (batch, seqlen)."""
    if attention_mask is None or attention_mask.shape[1] != hidden_states.shape[1]:
        return hidden_states
    return (hidden_states * attention_mask[:, :, None]).to(hidden_states.dtype)


def unhooked(modules, types) -> bool:
    """Whether every module is exactly one of ``types`` and no forward hook (its own or a global one) would run: then
    a fused kernel may do what calling them does."""
    hooks = nn.modules.module
    if getattr(hooks, "_global_forward_hooks", None) or getattr(hooks, "_global_forward_pre_hooks", None):
        return False
    return all(type(m) in types and not m._forward_hooks and not m._forward_pre_hooks for m in modules)


def _plain_linear(m: nn.Module) -> bool:
    """Whether calling m is exactly F.linear(x, m.weight, m.bias), so a kernel may compute it in place of the call (a
    PEFT adapter, a parametrization or a quantized layer has another type and is called)."""
    return unhooked((m,), (nn.Linear,))


def _channels_linear(x: torch.Tensor, linear: nn.Linear, batch: int, seqlen: int, bias: bool = True) -> torch.Tensor:
    """A plain nn.Linear on the (batch * L, in) token matrix x, returned as the (batch, out, L) view of one
    (out, batch * L) product, weight @ x.T (+ bias unless ``bias=False``): the layer's output with unit stride along
    L, which the channel-major scan kernels read without a transposing copy (mamba_ssm computes its in_proj / dt_proj
    this way). A bias along the rows costs cuBLAS an expanded copy: dt_proj's goes to the scan (delta_bias)."""
    if linear.bias is None or not bias:
        out = torch.mm(linear.weight, x.t())
    else:
        out = torch.addmm(linear.bias[:, None], linear.weight, x.t())
    return out.view(out.shape[0], batch, seqlen).transpose(0, 1)


def _token_matrix(t: torch.Tensor) -> torch.Tensor:
    """(batch, C, L) -> the (batch * L, C) matrix a linear layer takes: a view when t is stored (C, batch, L) or
    (batch, L, C) (as the triton conv and scan write), else one copy (torch's matmul would make it anyway for a
    transposed 3-D input)."""
    return t.transpose(1, 2).reshape(-1, t.shape[1])


class MambaMixer(nn.Module):
    """Mamba-1 mixer. ``bidirectional=True`` adds Vim's backward branch (bimamba v2): in_proj / out_proj shared, its own
    conv1d_b / x_proj_b / dt_proj_b / A_b_log / D_b, run on the flipped sequence; the two outputs are averaged
    (``divide_output``) or summed before out_proj.

    The projections are always called as modules (``self.x_proj(x)``, ``self.dt_proj(dt)`` with its bias), never
    through raw weights, so PEFT adapters and hooks on any of them are always honoured.
    """

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        state_size: int = 16,
        conv_kernel: int = 4,
        time_step_rank: Optional[int] = None,
        use_bias: bool = False,
        use_conv_bias: bool = True,
        bidirectional: bool = False,
        divide_output: bool = True,
        layer_idx: Optional[int] = None,
        ssm_backend: Optional[str] = None,
        time_step_min: float = 0.001,
        time_step_max: float = 0.1,
        time_step_floor: float = 1e-4,
        time_step_scale: float = 1.0,
        time_step_init_scheme: str = "random",
    ):
        super().__init__()
        self.hidden_size, self.intermediate_size = hidden_size, intermediate_size
        self.state_size, self.conv_kernel = state_size, conv_kernel
        self.time_step_rank = int(time_step_rank or math.ceil(hidden_size / 16))
        self.bidirectional, self.divide_output = bidirectional, divide_output
        self.layer_idx = layer_idx
        self.ssm_backend = ssm_backend
        self._init_args = dict(time_step_min=time_step_min, time_step_max=time_step_max,
                               time_step_floor=time_step_floor, time_step_scale=time_step_scale,
                               time_step_init_scheme=time_step_init_scheme)

        self.in_proj = nn.Linear(hidden_size, intermediate_size * 2, bias=use_bias)
        suffixes = ("", "_b") if bidirectional else ("",)
        for s in suffixes:
            setattr(self, f"conv1d{s}", nn.Conv1d(intermediate_size, intermediate_size, conv_kernel,
                                                 groups=intermediate_size, padding=conv_kernel - 1,
                                                 bias=use_conv_bias))
            setattr(self, f"x_proj{s}", nn.Linear(intermediate_size, self.time_step_rank + 2 * state_size, bias=False))
            setattr(self, f"dt_proj{s}", nn.Linear(self.time_step_rank, intermediate_size, bias=True))
            a_name = "A_log" if s == "" else "A_b_log"
            setattr(self, a_name, nn.Parameter(torch.empty(intermediate_size, state_size)))
            setattr(self, f"D{s}", nn.Parameter(torch.empty(intermediate_size)))
        self.out_proj = nn.Linear(intermediate_size, hidden_size, bias=use_bias)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self):
        """Mamba's initialisation (state-spaces/mamba ``Mamba.__init__``): S4D-real A = 1..N, D = 1, dt_proj weight
        uniform(+-rank^-0.5), dt bias = softplus^-1 of log-uniform(dt_min, dt_max); conv and out_proj kaiming."""
        a = self._init_args
        for s in ("", "_b") if self.bidirectional else ("",):
            A_log = getattr(self, "A_log" if s == "" else "A_b_log")
            if A_log.device.type == "meta":
                return
            A = torch.arange(1, self.state_size + 1, dtype=torch.float32, device=A_log.device)
            init.copy_(A_log, torch.log(A).expand(self.intermediate_size, -1))
            init.ones_(getattr(self, f"D{s}"))
            dt_proj = getattr(self, f"dt_proj{s}")
            std = self.time_step_rank**-0.5 * a["time_step_scale"]
            if a["time_step_init_scheme"] == "constant":
                init.constant_(dt_proj.weight, std)
            else:
                init.uniform_(dt_proj.weight, -std, std)
            dt = torch.exp(
                torch.rand(self.intermediate_size, device=A_log.device)
                * (math.log(a["time_step_max"]) - math.log(a["time_step_min"]))
                + math.log(a["time_step_min"])
            ).clamp(min=a["time_step_floor"])
            init.copy_(dt_proj.bias, dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            conv = getattr(self, f"conv1d{s}")
            init.kaiming_uniform_(conv.weight, a=math.sqrt(5))
            if conv.bias is not None:
                init.zeros_(conv.bias)
        init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))

    def reset_vision_parameters(self, rescale_layers: Optional[int] = None):
        """The vision families' init (Vim / STORM, after Vim's ``_init_weights``): in_proj / x_proj(_b) as
        nn.Linear's default, zero biases, the SSM parameters (`reset_ssm_parameters`), and with ``rescale_layers``
        out_proj scaled by 1 / sqrt(rescale_layers) (GPT-2's prenorm-residual rescaling)."""
        for name in ("in_proj", "x_proj", "x_proj_b"):
            linear = getattr(self, name, None)
            if linear is not None:
                init.kaiming_uniform_(linear.weight, a=5**0.5)
                if linear.bias is not None:
                    init.zeros_(linear.bias)
        if self.out_proj.bias is not None:
            init.zeros_(self.out_proj.bias)
        self.reset_ssm_parameters()
        if rescale_layers:
            init.copy_(self.out_proj.weight, self.out_proj.weight / rescale_layers**0.5)

    # -- one scan direction ------------------------------------------------------------------------------------------
    def _step(self, x, z, suffix, cache, idx, mask=None):
        """One decoding step, O(1) in the sequence length. x, z: (batch, intermediate); mask: (batch,) or None.
        Updates the layer's conv and SSM states in ``cache`` in place; returns y (batch, intermediate)."""
        conv = getattr(self, f"conv1d{suffix}")
        x_proj, dt_proj = getattr(self, f"x_proj{suffix}"), getattr(self, f"dt_proj{suffix}")
        A_log = getattr(self, "A_log" if suffix == "" else "A_b_log")  # (I, N); the step takes A = -exp(A_log)
        xc = causal_conv1d_update(x, cache.conv_states[idx], conv.weight, conv.bias, backend=self.ssm_backend)
        if mask is not None:  # a padding position leaves the SSM state as it is (zero input)
            xc = xc * mask[:, None].to(xc.dtype)
        dt, B, C = torch.split(x_proj(xc), [self.time_step_rank, self.state_size, self.state_size], dim=-1)
        D = getattr(self, f"D{suffix}")
        # x / z / B / C go in as the views they are: on a GPU the step is one kernel (no copies, no casts), which also
        # computes dt_proj where dt_proj is a plain nn.Linear (an adapter, a hook or a wrapped layer: called here)
        if _plain_linear(dt_proj):
            return selective_state_update(cache.ssm_states[idx], xc, dt, A_log, B, C, D=D, z=z, dt_bias=dt_proj.bias,
                                          dt_softplus=True, backend=self.ssm_backend, a_log=True,
                                          dt_weight=dt_proj.weight)
        return selective_state_update(cache.ssm_states[idx], xc, dt_proj(dt), A_log, B, C, D=D, z=z, dt_softplus=True,
                                      backend=self.ssm_backend, a_log=True)

    def _branch(self, x, z, suffix, attention_mask, cache=None, continuing=False, record=None, reverse=False,
                mean_into=None):
        """x, z: (batch, intermediate, seqlen) -> y (batch, intermediate, seqlen). With a ``cache``, the layer's states
        are read (``continuing``: the cache already holds earlier tokens) and left holding the state after x;
        ``record`` (default: the cache's ``record_past``) keeps snapshots of the last tokens' states for ``crop``.
        ``reverse`` (no cache): the branch over the time-reversed sequence, inputs and y in x's order (the conv and
        the scan read the steps backwards; the linear layers are per token); ``mean_into`` (no cache): the other
        direction's y, which receives the mean of the two and is returned (see ssm_ops.selective_scan)."""
        seqlen, idx = x.shape[-1], self.layer_idx
        record = cache is not None and (cache.record_past if record is None else record)
        if cache is not None and continuing and seqlen == 1 and not record:
            return self._step(x[..., 0], z[..., 0], suffix, cache, idx).unsqueeze(-1)
        if record:
            # assisted decoding can take back the last tokens: step them one by one, with a snapshot after each
            steps = min(seqlen, cache.record_window)
            head = seqlen - steps
            ys = [self._branch(x[..., :head], z[..., :head], suffix,
                               None if attention_mask is None else attention_mask[:, :head], cache, continuing, record=False)
                  ] if head else []
            if not continuing and not head:  # a fresh cache: the steps start from zero states
                cache.conv_states[idx].zero_()
                cache.ssm_states[idx].zero_()
            if head or not continuing:  # older snapshots no longer lead to the current state
                cache._history[idx].clear()
            if not cache._history[idx]:
                cache.record_state(idx)
            for t in range(head, seqlen):
                mask = None if attention_mask is None or attention_mask.shape[1] != seqlen else attention_mask[:, t]
                ys.append(self._step(x[..., t], z[..., t], suffix, cache, idx, mask).unsqueeze(-1))
                cache.record_state(idx)
            return torch.cat(ys, dim=-1)

        conv = getattr(self, f"conv1d{suffix}")
        x_proj, dt_proj = getattr(self, f"x_proj{suffix}"), getattr(self, f"dt_proj{suffix}")
        A_log = getattr(self, "A_log" if suffix == "" else "A_b_log")  # (I, N): the scan takes A = -exp(A_log)
        D = getattr(self, f"D{suffix}")  # the backends read it in fp32
        initial_state = prefix = None
        if cache is not None and continuing:  # continue from the cached conv inputs and state
            prefix = cache.conv_states[idx][:, :, 1:]  # the last width - 1 inputs
            initial_state = cache.ssm_states[idx]
        xc = causal_conv1d(x, conv.weight, conv.bias, backend=self.ssm_backend, initial_states=prefix,
                           reverse=reverse)  # (b, I, L)
        if cache is not None:  # the window after x (written after the conv has read the prefix)
            width = self.conv_kernel
            last = torch.cat([prefix.to(x.dtype), x], dim=-1) if prefix is not None and seqlen < width else x
            last = last[..., -width:]
            if last.shape[-1] < width:  # fewer inputs than the window so far: zeros before them
                last = F.pad(last, (width - last.shape[-1], 0))
            cache.conv_states[idx].copy_(last)
        if attention_mask is not None and attention_mask.shape[1] == seqlen:  # zero the padding positions
            xc = (xc * attention_mask[:, None, :]).to(xc.dtype)
        # the linear layers take (batch * L, features) matrices: views of the (features, batch, L)- or (batch, L,
        # features)-stored tensors that the triton conv and scan write (no transposing copies around the scan)
        batch = xc.shape[0]
        x_dbl = x_proj(_token_matrix(xc))  # (b L, R + 2N)
        dt, B, C = torch.split(x_dbl, [self.time_step_rank, self.state_size, self.state_size], dim=-1)

        def channels(t):  # (b L, C) -> a (b, C, L) view
            return t.view(batch, seqlen, t.shape[-1]).transpose(1, 2)

        delta_bias = None
        if x.stride(-1) == 1 and seqlen > 1 and _plain_linear(dt_proj):  # delta channel-major, as x (see forward)
            delta = _channels_linear(dt, dt_proj, batch, seqlen, bias=False)
            delta_bias = dt_proj.bias  # added in fp32 by the scan
        else:
            delta = channels(dt_proj(dt))  # (b, I, L), with its bias
        out = selective_scan(
            xc, delta, A_log, channels(B), channels(C), D=D, z=z, delta_bias=delta_bias,
            delta_softplus=True, return_last_state=cache is not None, initial_state=initial_state,
            backend=self.ssm_backend, reverse=reverse, a_log=True, mean_into=mean_into,
        )
        if cache is None:
            return out
        y, last_state = out
        cache.ssm_states[idx].copy_(last_state)
        return y

    def forward(self, hidden_states: torch.Tensor, cache: Optional[SsmCache] = None,
                attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """hidden_states: (batch, seqlen, hidden) -> (batch, seqlen, hidden). ``cache``: an ``SsmCache`` whose states
        for this layer (``layer_idx``) are continued and updated; its ``seqlen_offset`` is advanced by the model."""
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.hidden_size:
            raise ValueError(f"MambaMixer expects (batch, seqlen, {self.hidden_size}), got {tuple(hidden_states.shape)}")
        if cache is not None and self.bidirectional:
            raise ValueError("A bidirectional mixer sees the whole sequence; it cannot decode with a cache.")
        dtype = hidden_states.dtype
        batch, seqlen = hidden_states.shape[:2]
        hidden_states = _mask(hidden_states, attention_mask)
        # where the scan reads channel-major inputs best (see ssm_ops.scan_reads_channel_major), a plain in_proj (and
        # dt_proj, in _branch) are computed as weight @ x.T: x / z / delta with unit stride along L, no transposing
        # copies; an adapter, a hook or a wrapped layer keeps the module call (time-major views)
        if seqlen > 1 and _plain_linear(self.in_proj) and scan_reads_channel_major(
                batch, self.intermediate_size, 1, self.state_size, seqlen, hidden_states.device, self.ssm_backend,
                need_grad=torch.is_grad_enabled()):
            xz = _channels_linear(hidden_states.reshape(batch * seqlen, self.hidden_size), self.in_proj, batch, seqlen)
        else:
            xz = self.in_proj(hidden_states).transpose(1, 2)  # (b, 2I, L)
        x, z = xz.chunk(2, dim=1)
        continuing = cache is not None and cache.seqlen_offset > 0
        y = self._branch(x, z, "", attention_mask, cache, continuing)
        if self.bidirectional:  # Vim's backward branch: the same, over the reversed sequence (read in place)
            if self.divide_output and not (torch.is_grad_enabled() and y.requires_grad):
                # the mean written into y by the backward branch's scan (the triton lane kernel as it stores y)
                y = self._branch(x, z, "_b", attention_mask, reverse=True, mean_into=y)
            else:
                y_b = self._branch(x, z, "_b", attention_mask, reverse=True)
                # the mean as one kernel (lerp computes (y + y_b) / 2 in fp32 and rounds once)
                y = torch.lerp(y, y_b, 0.5) if self.divide_output else y + y_b
        if not torch.is_autocast_enabled(y.device.type):  # under autocast out_proj casts y itself
            y = y.to(dtype)
        # a (batch, L, I) view of the token matrix: out_proj's matmul folds it back without a copy, and its output is
        # a tensor of its own (returning a view upsets FSDP2's hooks)
        return self.out_proj(_token_matrix(y).view(y.shape[0], y.shape[2], y.shape[1]))


class MambaBlock(GradientCheckpointingLayer):
    """Pre-norm residual block: ``h + mixer(norm(h))``, with the residual kept in float32 if asked
    (same wiring as transformers' MambaBlock)."""

    def __init__(self, hidden_size: int, mixer: nn.Module, norm_eps: float = 1e-5, residual_in_fp32: bool = True):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.norm = RMSNorm(hidden_size, eps=norm_eps)
        self.mixer = mixer

    def forward(self, hidden_states, cache=None, attention_mask=None):
        residual = hidden_states
        hidden_states = self.norm(hidden_states, cast_input=True)  # the norm of hidden_states.to(its weight's dtype)
        if self.residual_in_fp32:
            residual = residual.to(torch.float32)
        hidden_states = self.mixer(hidden_states, cache=cache, attention_mask=attention_mask)
        return residual + hidden_states
