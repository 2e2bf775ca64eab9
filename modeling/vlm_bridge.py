"""The SSM-bridge vision-language parts (seed system "SSM-As-VLM-Bridge", PyPI ``ssm-bridge`` 0.0.2,
``ssm_bridge/model.py``; what it computes and where its code departs from its README: ``docs/ssm_bridge.md``).

Four pieces, each usable alone and together reproducing ``EnhancedVLM`` exactly (bit-exact fp32 logits on CPU):

* ``SsmBridgeProjector(config)``: vision features (B, N, vision_hidden) -> (B, N, text_hidden); an SSM stack between an
  input and an output projection. ``ssm_type="mamba"`` (default) stacks our ``MambaBlock(MambaMixer)``;
  ``ssm_type="dense_recurrence"`` is upstream's own "SSM" (``SSMLayer``), which is not a Mamba/S4 layer but a
  time-invariant recurrence with a dense state matrix and a clamped state (see ``BridgeDenseSsm``).
* ``CrossModalFusion(config)``: text embeddings (B, T, Dt) attend to image tokens (B, N, Dt) (text queries, image
  keys / values, grouped / multi-query heads); position-wise in T, so decoding step by step equals a full pass.
* ``BridgeVisionModel`` (``BridgeVisionConfig``, model_type ``ssmvl_bridge_vision``): upstream's
  ``EnhancedVisionTransformer``. Not a transformers ViT: its blocks use multi-query attention, a biased SwiGLU MLP and
  (upstream) a mis-wired MLP residual; no transformers vision model computes it.
* ``BridgeDecoderForCausalLM`` (``BridgeDecoderConfig``, model_type ``ssmvl_bridge_decoder``): upstream's language
  transformer (LayerNorm, learned absolute positions, multi-query attention, biased SwiGLU, biased head) with a
  transformers ``DynamicCache`` and ``generate()``. Not a Llama: Llama has RMSNorm, rotary positions, no biases.

Settings of the projector and the fusion are read from the VLM config's ``projector_config`` and
``cross_attention_config`` (``SsmVlmConfig`` stores the fusion settings under that name: transformers >= 5.24 claims
``config.fusion_config``) or ``fusion_config`` dicts; any object with those attributes and ``vision_hidden_size`` /
``text_hidden_size`` or ``vision_config.hidden_size`` / ``text_config.hidden_size`` works. Unknown keys are errors. ``"upstream_compat": true`` in either dict switches every default below to upstream's value (keys given
explicitly still win); the plain defaults are the intended computation.

projector_config (``SsmBridgeProjector``)        default          upstream (``EnhancedSSMBridge``)
    ssm_type            "mamba" | "dense_recurrence"  "mamba"     "dense_recurrence"
    hidden_size         width of the SSM stack        256         ssm_hidden_dim (256)
    num_layers          SSM layers                    4           ssm_num_layers (4)
    state_size          SSM state size N              64          ssm_state_dim (64)
    dropout             on each layer's output        0.0         ssm_dropout (0.1); dense_recurrence only
    layer_norm_eps      norm epsilon                  1e-5        1e-5 (hard-coded upstream)
  mamba only:
    expand              intermediate = expand*hidden  2
    conv_kernel         causal depthwise conv width   4
    time_step_rank      dt rank (None: ceil(hidden/16)) None
    bidirectional       Vim-style two-direction scan  False
    ssm_backend         selective-scan backend        None (auto, see ssm_ops.py)
  dense_recurrence only:
    state_clamp         clamp of the state h_t to [-c, c] (None: no clamp)   10.0   10.0
    residual_from_normed  the layer's residual adds to LayerNorm(x) instead of x   False   True (defect)

fusion_config / cross_attention_config (``CrossModalFusion``)   default   upstream (``CrossModalAttention`` x2)
    num_layers          cross-attention layers        2           cross_attn_layers (2)
    num_heads           query heads                   8           cross_attn_heads (8)
    num_key_value_heads key/value heads (1 = multi-query; None = num_heads)   1   None (plain multi-head: README
                                                                               says multi-query, code is not)
    head_dim            per head (None: hidden // num_heads)          None        None
    attention_bias      biases in q/k/v/o             True        True
    dropout             on the attention weights      0.0         dropout (0.1)
    residual            x + attn(x) (False: x is replaced by attn(x))   True   False (defect)
    query_norm          LayerNorm on the text queries before each layer   True   False
    attention_score_clamp  clamp of q.k/sqrt(d) to [-c, c] before softmax   None   100.0
    layer_norm_eps      epsilon of query_norm         1e-5
    image_prefix        also feed the image tokens to the decoder as a prefix (read by the VLM, not here)   True  True

BridgeVisionConfig / BridgeDecoderConfig flags (arguments; ``upstream_compat=True`` sets the upstream column):
    upstream_ffn_residual   block = LN2(h) + MLP(LN_mlp(LN2(h))) (upstream's TransformerBlock + SwiGLU wiring)
                            instead of h + MLP(LN2(h)); adds the extra ``mlp.norm``           False   True (defect)
    attention_score_clamp   as above, in the self-attention                                   None    100.0
    activation_clamp        Swish(x) = x * sigmoid(clamp(x, -c, c)) instead of SiLU           None    10.0

Decoding with the fusion (what a VLM does): the image tokens go through ``CrossModalFusion.precompute_image_kv`` once;
each new text embedding ``decoder.embed(ids, position_ids)`` (token + learned position, text positions counted from the
first text token, see ``text_position_ids``) goes through the fusion with those keys / values, then into the decoder
with ``inputs_embeds_include_positions=True`` and its cache. Upstream puts the image tokens in front of the text.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, logging

from .hf_compat import NamesReplacedFilesMixin, cache_output, init, pop_cache
from .ssm_layers import GradientCheckpointingLayer, MambaBlock, MambaMixer, RMSNorm


if TYPE_CHECKING:  # never runs: names every sibling file for transformers 5.0's remote-code copy (see hf_compat.py)
    from .ssm_ops import resolve_backend  # noqa: F401
    from .ssm_triton import selective_scan_triton  # noqa: F401


logger = logging.get_logger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# projector_config / fusion_config
# ---------------------------------------------------------------------------------------------------------------------
PROJECTOR_DEFAULTS = dict(ssm_type="mamba", hidden_size=256, num_layers=4, state_size=64, dropout=0.0,
                          layer_norm_eps=1e-5)
PROJECTOR_MAMBA_DEFAULTS = dict(expand=2, conv_kernel=4, time_step_rank=None, bidirectional=False, ssm_backend=None)
PROJECTOR_DENSE_DEFAULTS = dict(state_clamp=10.0, residual_from_normed=False)
PROJECTOR_UPSTREAM = dict(ssm_type="dense_recurrence", dropout=0.1, residual_from_normed=True)

FUSION_DEFAULTS = dict(num_layers=2, num_heads=8, num_key_value_heads=1, head_dim=None, attention_bias=True,
                       dropout=0.0, residual=True, query_norm=True, attention_score_clamp=None, layer_norm_eps=1e-5,
                       image_prefix=True)
FUSION_UPSTREAM = dict(num_key_value_heads=None, dropout=0.1, residual=False, query_norm=False,
                       attention_score_clamp=100.0)

SSM_TYPES = ("mamba", "dense_recurrence")


def _as_dict(value, name: str) -> dict:
    if value is None:
        return {}
    if hasattr(value, "to_dict") and not isinstance(value, dict):
        value = value.to_dict()
    if not isinstance(value, dict):
        raise TypeError(f"config.{name} must be a dict, got {type(value).__name__}")
    return dict(value)


def resolve_projector_config(projector_config) -> dict:
    """``projector_config`` (dict or None) -> every key with its value (defaults filled in, see the module docstring).
    Unknown keys, and keys of the other ``ssm_type``, are a ValueError."""
    given = _as_dict(projector_config, "projector_config")
    upstream = bool(given.pop("upstream_compat", False))
    ssm_type = given.get("ssm_type", PROJECTOR_UPSTREAM["ssm_type"] if upstream else PROJECTOR_DEFAULTS["ssm_type"])
    if ssm_type not in SSM_TYPES:
        raise ValueError(f"projector_config['ssm_type'] must be one of {SSM_TYPES}, got {ssm_type!r}")
    own, other = ((PROJECTOR_MAMBA_DEFAULTS, PROJECTOR_DENSE_DEFAULTS) if ssm_type == "mamba"
                  else (PROJECTOR_DENSE_DEFAULTS, PROJECTOR_MAMBA_DEFAULTS))
    wrong = sorted(k for k in given if k in other)
    if wrong:
        raise ValueError(f"projector_config keys {wrong} only apply to ssm_type="
                         f"{'dense_recurrence' if ssm_type == 'mamba' else 'mamba'!r}, not {ssm_type!r}.")
    known = {**PROJECTOR_DEFAULTS, **own}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"Unknown projector_config key(s) {unknown}; known: {sorted(known) + ['upstream_compat']}")
    out = dict(known)
    if upstream:
        out.update({k: v for k, v in PROJECTOR_UPSTREAM.items() if k in out})
    out.update(given)
    for key in ("hidden_size", "num_layers", "state_size"):
        if isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] <= 0:
            raise ValueError(f"projector_config['{key}'] must be a positive integer, got {out[key]!r}")
    return out


def resolve_fusion_config(fusion_config) -> dict:
    """``fusion_config`` (dict or None) -> every key with its value (see the module docstring); unknown keys raise."""
    given = _as_dict(fusion_config, "fusion_config")
    upstream = bool(given.pop("upstream_compat", False))
    unknown = sorted(set(given) - set(FUSION_DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown fusion_config key(s) {unknown}; known: "
                         f"{sorted(FUSION_DEFAULTS) + ['upstream_compat']}")
    out = dict(FUSION_DEFAULTS)
    if upstream:
        out.update(FUSION_UPSTREAM)
    out.update(given)
    heads, kv = out["num_heads"], out["num_key_value_heads"]
    if kv is None:
        out["num_key_value_heads"] = kv = heads
    if heads <= 0 or kv <= 0 or heads % kv:
        raise ValueError(f"fusion_config: num_heads ({heads}) must be a positive multiple of "
                         f"num_key_value_heads ({kv})")
    return out


def _hidden_size(config, which: str) -> int:
    """Width of the features the bridge reads (``which="vision"``) or writes (``"text"``): the VLM config's
    ``vision_hidden_size`` / ``text_hidden_size`` when it has them (e.g. a VMamba stage), else the sub-config's
    ``hidden_size`` (an object or a dict)."""
    size = getattr(config, f"{which}_hidden_size", None)
    if size is None:
        sub = getattr(config, f"{which}_config", None)
        size = sub.get("hidden_size") if isinstance(sub, dict) else getattr(sub, "hidden_size", None)
    if size is None:
        raise ValueError(f"config has neither {which}_hidden_size nor {which}_config.hidden_size")
    return int(size)


def text_position_ids(is_text: torch.Tensor) -> torch.Tensor:
    """(batch, seqlen) bool, True at text positions -> (batch, seqlen) long: the learned-position index of each text
    token, counted from the first text token (upstream adds ``pos_embed[:, :T]`` to the text only; the image prefix has
    no position). Non-text positions get 0 (they are not embedded through ``embed``)."""
    return (is_text.long().cumsum(-1) - 1).clamp(min=0)


# ---------------------------------------------------------------------------------------------------------------------
# attention shared by the fusion, the vision tower and the decoder
# ---------------------------------------------------------------------------------------------------------------------
def _attend(q, k, v, mask: Optional[torch.Tensor], score_clamp: Optional[float], dropout: float, training: bool):
    """q: (b, H, T, d); k, v: (b, Hkv, S, d); mask: (b or 1, 1, T, S) bool, True = may attend, or None.
    Query head h uses key/value head h // (H / Hkv) (upstream's ``repeat_interleave``, the same as Llama's repeat_kv).
    Returns (b, H, T, d). With ``score_clamp`` the scores are clamped before the mask (upstream), so that path is
    written out; otherwise SDPA."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1])
    p = dropout if training else 0.0
    if score_clamp is None:
        bias = None
        if mask is not None:  # additive, finite: a fully masked (padding) row stays finite
            bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, torch.finfo(q.dtype).min)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p, scale=scale)
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (b, H, T, S)
    scores = scores.clamp(-score_clamp, score_clamp)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    attn = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    if p:
        attn = F.dropout(attn, p=p)
    return torch.matmul(attn, v)


class _Attention(nn.Module):
    """q from ``x``, k / v from ``context`` (itself for self-attention); ``num_heads`` query heads share
    ``num_key_value_heads`` key/value heads. Parameter names as upstream (and Llama): q_proj, k_proj, v_proj, o_proj."""

    def __init__(self, hidden_size: int, num_heads: int, num_key_value_heads: int, head_dim: Optional[int] = None,
                 bias: bool = True, dropout: float = 0.0, score_clamp: Optional[float] = None,
                 layer_idx: Optional[int] = None):
        super().__init__()
        if num_heads % num_key_value_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_key_value_heads "
                             f"({num_key_value_heads})")
        self.num_heads, self.num_key_value_heads = num_heads, num_key_value_heads
        self.head_dim = head_dim or hidden_size // num_heads
        self.dropout, self.score_clamp, self.layer_idx = dropout, score_clamp, layer_idx
        self.q_proj = nn.Linear(hidden_size, num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden_size, num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * self.head_dim, hidden_size, bias=bias)

    def project_kv(self, context: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """context (b, S, D) -> k, v (b, Hkv, S, d)."""
        b, s, _ = context.shape
        k = self.k_proj(context).view(b, s, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(context).view(b, s, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        return k, v

    def forward(self, x, context=None, kv=None, mask=None, cache: Optional[Cache] = None):
        """x: (b, T, D) -> (b, T, D). Keys / values: ``kv`` (precomputed), else from ``context`` (default ``x``);
        ``cache``: a transformers Cache; this layer's keys / values are appended and all of them attended to."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (b, H, T, d)
        k, v = kv if kv is not None else self.project_kv(x if context is None else context)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        out = _attend(q, k, v, mask, self.score_clamp, self.dropout, self.training)  # (b, H, T, d)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


# ---------------------------------------------------------------------------------------------------------------------
# SsmBridgeProjector
# ---------------------------------------------------------------------------------------------------------------------
class BridgeDenseSsm(nn.Module):
    """Upstream's ``SSMLayer`` (ssm_bridge/model.py:275-346), computed exactly; a time-invariant recurrence with a dense
    state matrix, not a selective (Mamba) or diagonal (S4D) SSM. For x: (b, T, H):

        u_t = input_proj(x_t)                                   (b, N)
        h_t = clamp(A h_{t-1} + B * u_t + bias_A, -c, c)        (b, N), h_0 = 0; A: (N, N), B / bias_A: (N,)
        y_t = proj(C h_t + bias_C)                              (b, H); C: (H, N)
        g_t = sigmoid(gate(x_t))
        out_t = g_t * y_t + (1 - g_t) * x_t

    The clamp makes it non-linear, so it is a sequential loop over T (upstream's too), with upstream's operations in
    upstream's order (the converted model is bit-exact on CPU). The state is kept in float32 whatever the input dtype
    (upstream allocates it in float32 and then fails in bf16 / fp16: "expected m1 and m2 to have the same dtype")."""

    def __init__(self, hidden_size: int, state_size: int, state_clamp: Optional[float] = 10.0):
        super().__init__()
        self.hidden_size, self.state_size, self.state_clamp = hidden_size, state_size, state_clamp
        self.input_proj = nn.Linear(hidden_size, state_size)
        self.A = nn.Parameter(torch.empty(state_size, state_size))
        self.B = nn.Parameter(torch.empty(state_size))
        self.C = nn.Parameter(torch.empty(hidden_size, state_size))
        self.bias_A = nn.Parameter(torch.empty(state_size))
        self.bias_C = nn.Parameter(torch.empty(hidden_size))
        self.gate = nn.Linear(hidden_size, hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.reset_bridge_parameters()

    @torch.no_grad()
    def reset_bridge_parameters(self):
        """Upstream's init: A, B, C ~ N(0, 0.1^2), zero biases, xavier-uniform Linears (tensors already loaded from a
        checkpoint are skipped by transformers' init functions)."""
        if self.A.device.type == "meta":
            return
        for p in (self.A, self.B, self.C):
            init.normal_(p, mean=0.0, std=0.1)
        for p in (self.bias_A, self.bias_C):
            init.zeros_(p)
        for linear in (self.input_proj, self.gate, self.proj):
            init.xavier_uniform_(linear.weight)
            init.zeros_(linear.bias)

    def scan(self, u: torch.Tensor) -> torch.Tensor:
        """u: (b, T, N) projected inputs -> states h: (b, T, N) float32."""
        A, B, bias_A = self.A.float(), self.B.float()[:, None], self.bias_A.float()[:, None]
        u = u.float()
        h = torch.zeros(u.shape[0], self.state_size, 1, dtype=torch.float32, device=u.device)  # (b, N, 1)
        states = []
        for t in range(u.shape[1]):
            h = torch.matmul(A, h) + B * u[:, t, :, None] + bias_A  # upstream's order of operations
            if self.state_clamp is not None:
                h = h.clamp(-self.state_clamp, self.state_clamp)
            states.append(h[..., 0])
        return torch.stack(states, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.scan(self.input_proj(x))  # (b, T, N) float32
        C, bias_C = self.C.float(), self.bias_C.float()
        out = []
        # token by token like upstream (model.py:319-343): a Linear over (b, H) rounds differently from one over
        # (b, T, H), and per-token calls keep the converted model bit-exact; the loop is there for the state anyway
        for t in range(x.shape[1]):
            y = self.proj((torch.matmul(C, h[:, t, :, None])[..., 0] + bias_C).to(x.dtype))  # (b, H)
            g = torch.sigmoid(self.gate(x[:, t]))
            out.append(g * y + (1 - g) * x[:, t])
        return torch.stack(out, dim=1)


class BridgeDenseSsmBlock(nn.Module):
    """LayerNorm + ``BridgeDenseSsm`` + dropout, with a residual. ``residual_from_normed`` (upstream,
    ssm_bridge/model.py:403-405 ``x = ln(x); x = x + dropout(ssm(x))``): the residual adds to LayerNorm(x), so the
    stream is re-normalised at every layer; otherwise pre-norm ``x + dropout(ssm(LayerNorm(x)))``."""

    def __init__(self, hidden_size: int, state_size: int, state_clamp: Optional[float], eps: float, dropout: float,
                 residual_from_normed: bool):
        super().__init__()
        self.residual_from_normed = residual_from_normed
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.mixer = BridgeDenseSsm(hidden_size, state_size, state_clamp)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm(x)
        return (normed if self.residual_from_normed else x) + self.dropout(self.mixer(normed))


class SsmBridgeProjector(nn.Module):
    """``forward(image_features: (B, N, vision_hidden)) -> (B, N, text_hidden)``:
    ``in_proj`` -> ``num_layers`` SSM layers over the N image tokens (in their order) -> (mamba: final RMSNorm) ->
    ``out_proj``. Keys: ``in_proj``, ``layers.{i}.norm``, ``layers.{i}.mixer.*``, (``norm_f``), ``out_proj``.
    Settings: ``config.projector_config`` (module docstring)."""

    def __init__(self, config):
        super().__init__()
        pc = resolve_projector_config(getattr(config, "projector_config", None))
        self.settings = pc
        vision_hidden = _hidden_size(config, "vision")
        text_hidden = _hidden_size(config, "text")
        hidden = pc["hidden_size"]
        self.in_proj = nn.Linear(vision_hidden, hidden)
        if pc["ssm_type"] == "mamba":
            self.layers = nn.ModuleList(
                MambaBlock(hidden, MambaMixer(hidden, pc["expand"] * hidden, state_size=pc["state_size"],
                                              conv_kernel=pc["conv_kernel"], time_step_rank=pc["time_step_rank"],
                                              bidirectional=pc["bidirectional"], layer_idx=i,
                                              ssm_backend=pc["ssm_backend"]),
                           norm_eps=pc["layer_norm_eps"])
                for i in range(pc["num_layers"]))
            self.norm_f = RMSNorm(hidden, eps=pc["layer_norm_eps"])
        else:
            self.layers = nn.ModuleList(
                BridgeDenseSsmBlock(hidden, pc["state_size"], pc["state_clamp"], pc["layer_norm_eps"], pc["dropout"],
                                    pc["residual_from_normed"])
                for _ in range(pc["num_layers"]))
            self.norm_f = None
        self.out_proj = nn.Linear(hidden, text_hidden)
        with torch.no_grad():  # upstream's init of the two projections
            if self.in_proj.weight.device.type != "meta":
                for linear in (self.in_proj, self.out_proj):
                    init.xavier_uniform_(linear.weight)
                    init.zeros_(linear.bias)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        if image_features.dim() != 3 or image_features.shape[-1] != self.in_proj.in_features:
            raise ValueError(f"SsmBridgeProjector expects (batch, tokens, {self.in_proj.in_features}), got "
                             f"{tuple(image_features.shape)}")
        x = self.in_proj(image_features)  # (B, N, hidden)
        for layer in self.layers:
            x = layer(x)
        if self.norm_f is not None:
            x = self.norm_f(x.to(self.norm_f.weight.dtype))
        return self.out_proj(x.to(self.out_proj.weight.dtype))  # (B, N, text_hidden)


# ---------------------------------------------------------------------------------------------------------------------
# CrossModalFusion
# ---------------------------------------------------------------------------------------------------------------------
class CrossModalFusionLayer(nn.Module):
    """One text-to-image cross-attention: ``x + attn(norm(x), image)`` (``residual``, ``query_norm``), or upstream's
    ``attn(x, image)`` that replaces x (ssm_bridge/model.py:579-582)."""

    def __init__(self, hidden_size: int, fc: dict):
        super().__init__()
        self.residual = fc["residual"]
        self.norm = nn.LayerNorm(hidden_size, eps=fc["layer_norm_eps"]) if fc["query_norm"] else None
        self.cross_attn = _Attention(hidden_size, fc["num_heads"], fc["num_key_value_heads"], fc["head_dim"],
                                     bias=fc["attention_bias"], dropout=fc["dropout"],
                                     score_clamp=fc["attention_score_clamp"])

    def forward(self, x, kv, mask=None):
        out = self.cross_attn(self.norm(x) if self.norm is not None else x, kv=kv, mask=mask)
        return x + out if self.residual else out


class CrossModalFusion(nn.Module):
    """``forward(text_embeds: (B, T, Dt), image_tokens: (B, N, Dt)) -> (B, T, Dt)``: ``num_layers`` cross-attention
    layers, text queries and image keys / values, no text-to-text attention, so every text position is computed on its
    own and a step-by-step pass equals the full pass. ``precompute_image_kv`` projects the image tokens once (for
    decoding); pass the result as ``image_kv``. Keys: ``layers.{i}.cross_attn.{q,k,v,o}_proj``, ``layers.{i}.norm``.
    Settings: ``config.cross_attention_config`` or ``config.fusion_config`` (module docstring)."""

    def __init__(self, config):
        super().__init__()
        given = getattr(config, "cross_attention_config", None)  # SsmVlmConfig's name for it (see the module doc)
        fc = resolve_fusion_config(given if given is not None else getattr(config, "fusion_config", None))
        self.settings = fc
        hidden = _hidden_size(config, "text")
        self.hidden_size = hidden
        self.layers = nn.ModuleList(CrossModalFusionLayer(hidden, fc) for _ in range(fc["num_layers"]))

    def precompute_image_kv(self, image_tokens: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """(B, N, Dt) -> per layer (k, v), each (B, Hkv, N, head_dim)."""
        return [layer.cross_attn.project_kv(image_tokens) for layer in self.layers]

    def forward(self, text_embeds: torch.Tensor, image_tokens: Optional[torch.Tensor] = None,
                image_attention_mask: Optional[torch.Tensor] = None,
                image_kv: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None) -> torch.Tensor:
        """image_attention_mask: (B, N), 0 = an image token to ignore (e.g. padding)."""
        if (image_tokens is None) == (image_kv is None):
            raise ValueError("Pass exactly one of image_tokens or image_kv.")
        if text_embeds.dim() != 3 or text_embeds.shape[-1] != self.hidden_size:
            raise ValueError(f"CrossModalFusion expects text_embeds (batch, seqlen, {self.hidden_size}), got "
                             f"{tuple(text_embeds.shape)}")
        if image_kv is None:
            image_kv = self.precompute_image_kv(image_tokens.to(text_embeds.dtype))
        mask = None
        if image_attention_mask is not None:
            mask = image_attention_mask.bool()[:, None, None, :]  # (B, 1, 1, N)
        x = text_embeds
        for layer, kv in zip(self.layers, image_kv):
            x = layer(x, kv, mask)
        return x


# ---------------------------------------------------------------------------------------------------------------------
# the transformer block of the vision tower and of the decoder
# ---------------------------------------------------------------------------------------------------------------------
class BridgeMLP(nn.Module):
    """Upstream's ``SwiGLU`` (ssm_bridge/model.py:53-79) without its built-in residual:
    ``down_proj(dropout(swish(gate_proj(x)) * up_proj(x)))`` (upstream w1, w2, w3, all biased), swish = SiLU or,
    with ``activation_clamp`` c, upstream's ``x * sigmoid(clamp(x, -c, c))``. With ``upstream_ffn_residual`` it has
    upstream's own LayerNorm ``norm`` (applied by the block)."""

    def __init__(self, config):
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=config.mlp_bias)
        self.up_proj = nn.Linear(h, i, bias=config.mlp_bias)
        self.down_proj = nn.Linear(i, h, bias=config.mlp_bias)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.activation_clamp = config.activation_clamp
        self.norm = nn.LayerNorm(h, eps=config.layer_norm_eps) if config.upstream_ffn_residual else None

    def forward(self, x):
        g = self.gate_proj(x)
        c = self.activation_clamp
        g = F.silu(g) if c is None else g * torch.sigmoid(g.clamp(-c, c))
        return self.down_proj(self.dropout(g * self.up_proj(x)))


class BridgeBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block (upstream ``TransformerBlock``, ssm_bridge/model.py:239-271):
    ``h = h + dropout(attn(input_layernorm(h)))`` then

    * ``upstream_ffn_residual=False``: ``h + mlp(post_attention_layernorm(h))``;
    * ``upstream_ffn_residual=True`` (upstream): ``n + mlp(mlp.norm(n))`` with ``n = post_attention_layernorm(h)``:
      upstream's block drops its own residual (``residual = x`` is never used) and calls ``SwiGLU``, which normalises
      again and adds *its* input, so the stream after every block is a LayerNorm output plus the MLP."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.upstream_ffn_residual = config.upstream_ffn_residual
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = _Attention(config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                                    config.head_dim, bias=config.attention_bias, dropout=config.attention_dropout,
                                    score_clamp=config.attention_score_clamp, layer_idx=layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = BridgeMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states, mask=None, cache=None):
        hidden_states = hidden_states + self.dropout(self.self_attn(self.input_layernorm(hidden_states), mask=mask,
                                                                    cache=cache))
        normed = self.post_attention_layernorm(hidden_states)
        if self.upstream_ffn_residual:
            return normed + self.mlp(self.mlp.norm(normed))
        return hidden_states + self.mlp(normed)


_FLAG_DEFAULTS = dict(upstream_ffn_residual=(False, True), attention_score_clamp=(None, 100.0),
                      activation_clamp=(None, 10.0))


class _BridgeTransformerConfig(PretrainedConfig):
    """Arguments shared by the vision tower and the decoder (documented on each)."""

    def _set_common(self, hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim,
                    intermediate_size, layer_norm_eps, hidden_dropout, attention_dropout, attention_bias, mlp_bias,
                    initializer_range, upstream_compat, flags: dict):
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = head_dim if head_dim is not None else hidden_size // num_attention_heads
        self.intermediate_size = intermediate_size if intermediate_size is not None else 4 * hidden_size
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.attention_bias = attention_bias
        self.mlp_bias = mlp_bias
        self.initializer_range = initializer_range
        self.upstream_compat = bool(upstream_compat)
        for name, (fixed, upstream) in _FLAG_DEFAULTS.items():
            value = flags.get(name)
            setattr(self, name, value if value is not None else (upstream if upstream_compat else fixed))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"{type(self).__name__}: num_attention_heads ({self.num_attention_heads}) must be a "
                             f"multiple of num_key_value_heads ({self.num_key_value_heads})")


class BridgeVisionConfig(_BridgeTransformerConfig):
    r"""
    Configuration of [`BridgeVisionModel`], upstream's ``EnhancedVisionTransformer`` (ssm_bridge/model.py:412-481).
    Defaults give upstream's ViT (``VLMConfig()``), with the corrected computation unless ``upstream_compat``.

    Args:
        image_size (`int`, 224), patch_size (`int`, 16), num_channels (`int`, 3): the input; the position embedding has
            ``(image_size // patch_size) ** 2 + 1`` rows (cls first). Other sizes are refused (upstream has no
            interpolation).
        hidden_size (`int`, 768), num_hidden_layers (`int`, 12), num_attention_heads (`int`, 12).
        num_key_value_heads (`int`, 1): upstream's ViT blocks are multi-query (``TransformerBlock``'s default
            ``kv_heads=1``; the README's "12 heads" ViT is not a standard ViT). None = num_attention_heads.
        head_dim (`int`, *optional*): hidden_size // num_attention_heads.
        intermediate_size (`int`, 3072): SwiGLU width (upstream ``4 * vision_embed_dim``).
        layer_norm_eps (`float`, 1e-5): every block LayerNorm (hard-coded 1e-5 upstream).
        final_layer_norm_eps (`float`, 1e-5): the final LayerNorm (upstream ``config.layer_norm_eps``).
        hidden_dropout (`float`, 0.0), attention_dropout (`float`, 0.0): upstream uses ``dropout`` (0.1) for both and
            for the embeddings.
        attention_bias / mlp_bias (`bool`, True): biases in the projections (upstream has them).
        upstream_ffn_residual (`bool`), attention_score_clamp (`float`), activation_clamp (`float`): see
            ``modeling/vlm_bridge.py``; None takes False / None / None, or upstream's True / 100.0 / 10.0 with
            ``upstream_compat=True``.
        initializer_range (`float`, 0.02): std of the cls token / position embedding init.
    """

    model_type = "ssmvl_bridge_vision"

    def __init__(self, image_size: int = 224, patch_size: int = 16, num_channels: int = 3, hidden_size: int = 768,
                 num_hidden_layers: int = 12, num_attention_heads: int = 12, num_key_value_heads: Optional[int] = 1,
                 head_dim: Optional[int] = None, intermediate_size: Optional[int] = 3072,
                 layer_norm_eps: float = 1e-5, final_layer_norm_eps: float = 1e-5, hidden_dropout: float = 0.0,
                 attention_dropout: float = 0.0, attention_bias: bool = True, mlp_bias: bool = True,
                 upstream_ffn_residual: Optional[bool] = None, attention_score_clamp: Optional[float] = None,
                 activation_clamp: Optional[float] = None, upstream_compat: bool = False,
                 initializer_range: float = 0.02, **kwargs):
        self.image_size, self.patch_size, self.num_channels = image_size, patch_size, num_channels
        self.final_layer_norm_eps = final_layer_norm_eps
        self._set_common(hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim,
                         intermediate_size, layer_norm_eps, hidden_dropout, attention_dropout, attention_bias,
                         mlp_bias, initializer_range, upstream_compat,
                         dict(upstream_ffn_residual=upstream_ffn_residual, attention_score_clamp=attention_score_clamp,
                              activation_clamp=activation_clamp))
        if image_size % patch_size:
            raise ValueError(f"BridgeVisionConfig: image_size {image_size} is not a multiple of patch_size "
                             f"{patch_size}")
        super().__init__(**kwargs)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class BridgeDecoderConfig(_BridgeTransformerConfig):
    r"""
    Configuration of [`BridgeDecoderForCausalLM`], upstream's language transformer (``EnhancedVLM``'s ``token_embed``,
    ``pos_embed``, ``text_blocks``, ``ln``, ``head``; ssm_bridge/model.py:503-546). Defaults give upstream's
    (``VLMConfig()``: 12 layers, 12 heads, 1 key-value head, vocab 32000), corrected unless ``upstream_compat``.

    Args:
        vocab_size (`int`, 32000), hidden_size (`int`, 768), num_hidden_layers (`int`, 12),
        num_attention_heads (`int`, 12), num_key_value_heads (`int`, 1): multi-query attention (upstream
            ``text_kv_heads``); None = num_attention_heads.
        head_dim (`int`, *optional*): hidden_size // num_attention_heads.
        intermediate_size (`int`, 3072): SwiGLU width (upstream ``4 * text_embed_dim``).
        max_position_embeddings (`int`, 2048): rows of the learned absolute position embedding (upstream
            ``max_seq_length``); positions count text tokens only when the VLM adds them (see ``embed``).
        layer_norm_eps (`float`, 1e-5): block LayerNorms (hard-coded upstream); final_layer_norm_eps (`float`, 1e-5):
            the final LayerNorm (upstream ``config.layer_norm_eps``).
        hidden_dropout / attention_dropout (`float`, 0.0): upstream ``dropout`` (0.1) everywhere.
        attention_bias / mlp_bias / lm_head_bias (`bool`, True): biases (upstream has all three).
        upstream_ffn_residual / attention_score_clamp / activation_clamp / upstream_compat: as in BridgeVisionConfig.
        initializer_range (`float`, 0.02): std of the embeddings' init.
        use_cache (`bool`, True); bos_token_id (0) / eos_token_id (1): what upstream's ``generate`` starts / stops with;
        pad_token_id (*optional*).
    """

    model_type = "ssmvl_bridge_decoder"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(self, vocab_size: int = 32000, hidden_size: int = 768, num_hidden_layers: int = 12,
                 num_attention_heads: int = 12, num_key_value_heads: Optional[int] = 1, head_dim: Optional[int] = None,
                 intermediate_size: Optional[int] = 3072, max_position_embeddings: int = 2048,
                 layer_norm_eps: float = 1e-5, final_layer_norm_eps: float = 1e-5, hidden_dropout: float = 0.0,
                 attention_dropout: float = 0.0, attention_bias: bool = True, mlp_bias: bool = True,
                 lm_head_bias: bool = True, upstream_ffn_residual: Optional[bool] = None,
                 attention_score_clamp: Optional[float] = None, activation_clamp: Optional[float] = None,
                 upstream_compat: bool = False, initializer_range: float = 0.02, use_cache: bool = True,
                 bos_token_id: Optional[int] = 0, eos_token_id: Optional[int] = 1, pad_token_id: Optional[int] = None,
                 tie_word_embeddings: bool = False, **kwargs):
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.final_layer_norm_eps = final_layer_norm_eps
        self.lm_head_bias = lm_head_bias
        self.use_cache = use_cache
        self._set_common(hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim,
                         intermediate_size, layer_norm_eps, hidden_dropout, attention_dropout, attention_bias,
                         mlp_bias, initializer_range, upstream_compat,
                         dict(upstream_ffn_residual=upstream_ffn_residual, attention_score_clamp=attention_score_clamp,
                              activation_clamp=activation_clamp))
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)


class _BridgePreTrainedModel(NamesReplacedFilesMixin, PreTrainedModel):
    supports_gradient_checkpointing = True
    _no_split_modules = ["BridgeBlock"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        """Upstream's init: xavier-uniform Linear / Conv2d weights with zero biases, N(0, 0.02) embeddings, cls
        token and position embeddings; LayerNorm ones / zeros."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, BridgeVisionEmbeddings):
            init.normal_(module.cls_token, mean=0.0, std=std)
            init.normal_(module.position_embedding, mean=0.0, std=std)


# ---------------------------------------------------------------------------------------------------------------------
# vision tower
# ---------------------------------------------------------------------------------------------------------------------
class BridgeVisionEmbeddings(nn.Module):
    """Conv patch embedding, a cls token in front, learned absolute positions (upstream ``patch_embed``, ``cls_token``,
    ``pos_embed``; ssm_bridge/model.py:420-434)."""

    def __init__(self, config: BridgeVisionConfig):
        super().__init__()
        self.patch_size, self.image_size = config.patch_size, config.image_size
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size,
                                         stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embedding = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"BridgeVisionModel takes (batch, channels, {self.image_size}, {self.image_size}) pixels "
                             f"(its position embedding is fixed), got {tuple(pixel_values.shape)}")
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, D, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)  # (B, num_patches, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, num_patches + 1, D)
        return self.dropout(x + self.position_embedding)


class BridgeVisionModel(_BridgePreTrainedModel):
    """``pixel_values (B, C, H, W) -> last_hidden_state (B, num_patches + 1, D)`` (cls token first, after the final
    LayerNorm: upstream's ``vit(images)``, all of which its bridge consumes); ``pooler_output``: the cls token;
    ``hidden_states``: the embeddings and each block's output, the last one after the final LayerNorm (as ssmvl's
    Vim), so ``hidden_states[-1]`` is ``last_hidden_state``: what upstream feeds its bridge."""

    config_class = BridgeVisionConfig
    main_input_name = "pixel_values"
    base_model_prefix = "vision_model"

    def __init__(self, config: BridgeVisionConfig):
        super().__init__(config)
        self.embeddings = BridgeVisionEmbeddings(config)
        self.layers = nn.ModuleList(BridgeBlock(config, i) for i in range(config.num_hidden_layers))
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.final_layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.patch_embedding

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: Optional[bool] = None,
                return_dict: Optional[bool] = None, **kwargs) -> Union[Tuple, BaseModelOutputWithPooling]:
        unknown = sorted(set(kwargs) - {"output_attentions", "interpolate_pos_encoding"})
        if unknown:
            raise TypeError(f"BridgeVisionModel.forward() got unexpected argument(s) {unknown}")
        if kwargs.get("interpolate_pos_encoding"):
            raise ValueError("BridgeVisionModel has a fixed position embedding (as upstream): no interpolation.")
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden = self.embeddings(pixel_values)
        all_hidden = (hidden,) if output_hidden_states else None
        for layer in self.layers:
            hidden = layer(hidden)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden,)
        last = self.post_layernorm(hidden)
        if output_hidden_states:
            all_hidden = all_hidden[:-1] + (last,)
        if not return_dict:
            return tuple(v for v in (last, last[:, 0], all_hidden) if v is not None)
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=last[:, 0], hidden_states=all_hidden)


# ---------------------------------------------------------------------------------------------------------------------
# decoder
# ---------------------------------------------------------------------------------------------------------------------
@cache_output
class BridgeDecoderOutput(ModelOutput):
    """last_hidden_state: (batch, seqlen, hidden); cache: the transformers Cache when use_cache (field named as this
    transformers names it, see hf_compat.py); hidden_states: embeddings and each block's output."""

    last_hidden_state: Optional[torch.FloatTensor] = None
    cache: Optional[Cache] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None


@cache_output
class BridgeCausalLMOutput(ModelOutput):
    """loss (labels given; shifted inside), logits: (batch, seqlen, vocab), cache, hidden_states."""

    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    cache: Optional[Cache] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None


_IGNORED_KWARGS = frozenset({"cache_position", "output_attentions", "token_type_ids", "num_items_in_batch"})


def _check_kwargs(kwargs: dict, where: str):
    unknown = sorted(set(kwargs) - _IGNORED_KWARGS)
    if unknown:
        raise TypeError(f"{where}.forward() got unexpected argument(s) {unknown}; it takes input_ids or inputs_embeds, "
                        "attention_mask, position_ids, cache, use_cache, labels, output_hidden_states, return_dict, "
                        "logits_to_keep, inputs_embeds_include_positions.")


class BridgeDecoderModel(_BridgePreTrainedModel):
    config_class = BridgeDecoderConfig
    base_model_prefix = "model"

    def __init__(self, config: BridgeDecoderConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(BridgeBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.final_layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def embed(self, input_ids: torch.LongTensor, position_ids: Optional[torch.LongTensor] = None) -> torch.Tensor:
        """Token + learned position embedding (upstream ``token_embed(tokens) + pos_embed[:, :T]``), positions
        0..T-1 unless given. A VLM calls this *before* its fusion (upstream adds positions before the cross-attention)
        and passes the result with ``inputs_embeds_include_positions=True``."""
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        self._check_positions(position_ids)
        return self.embed_tokens(input_ids) + self.embed_positions(position_ids)

    def _check_positions(self, position_ids):
        if position_ids.numel() and int(position_ids.max()) >= self.config.max_position_embeddings:
            raise ValueError(f"Position {int(position_ids.max())} is beyond the learned position embedding "
                             f"(max_position_embeddings={self.config.max_position_embeddings}).")

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        cache: Optional[Cache] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        inputs_embeds_include_positions: bool = False,
        **kwargs,
    ) -> Union[Tuple, BridgeDecoderOutput]:
        r"""input_ids (batch, seqlen) or inputs_embeds (batch, seqlen, hidden) -- token embeddings, to which the
        learned positions are added, unless ``inputs_embeds_include_positions`` (then they are used as they are);
        attention_mask: (batch, past + seqlen) or (batch, seqlen), 0 = padding; position_ids: (batch, seqlen), default
        from the attention mask (cumsum - 1) or past + arange; cache: a transformers Cache (also
        ``past_key_values``)."""
        cache = pop_cache(cache, kwargs)
        _check_kwargs(kwargs, type(self).__name__)
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if input_ids is not None:
            if input_ids.is_floating_point() or input_ids.dim() != 2 or input_ids.shape[1] == 0:
                raise ValueError(f"input_ids must be (batch, seqlen>0) integer ids, got {input_ids.dtype} "
                                 f"{tuple(input_ids.shape)}")
            inputs_embeds = self.embed_tokens(input_ids)
            inputs_embeds_include_positions = False
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(f"inputs_embeds must be (batch, seqlen, {self.config.hidden_size}), got "
                             f"{tuple(inputs_embeds.shape)}")
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and cache is None:
            cache = DynamicCache()
        b, t = inputs_embeds.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        device = inputs_embeds.device
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be (batch, seqlen), got shape {tuple(attention_mask.shape)}")
        if attention_mask is not None and attention_mask.shape[1] not in (t, past + t):
            raise ValueError(f"attention_mask covers {attention_mask.shape[1]} positions; expected {past + t} "
                             f"(cached {past} + new {t}) or {t}.")
        if attention_mask is not None and attention_mask.shape[1] == t and past:
            attention_mask = torch.cat([attention_mask.new_ones(b, past), attention_mask], dim=1)
        if not inputs_embeds_include_positions:
            if position_ids is None:
                if attention_mask is not None:
                    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]
                else:
                    position_ids = torch.arange(past, past + t, device=device)[None]
            self._check_positions(position_ids)
            inputs_embeds = inputs_embeds + self.embed_positions(position_ids.to(device))
        hidden = self.dropout(inputs_embeds)

        # (b or 1, 1, t, past + t): causal over the whole (cached + new) sequence, and not onto padding
        key_pos = torch.arange(past + t, device=device)
        mask = (key_pos[None, :] <= (past + torch.arange(t, device=device))[:, None])[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :]

        all_hidden = (hidden,) if output_hidden_states else None
        for layer in self.layers:
            hidden = layer(hidden, mask=mask, cache=cache if use_cache else None)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden,)
        hidden = self.norm(hidden)
        if output_hidden_states:
            all_hidden = all_hidden[:-1] + (hidden,)
        cache = cache if use_cache else None
        if not return_dict:
            return tuple(v for v in (hidden, cache, all_hidden) if v is not None)
        return BridgeDecoderOutput(hidden, cache, all_hidden)


class BridgeDecoderForCausalLM(_BridgePreTrainedModel, GenerationMixin):
    config_class = BridgeDecoderConfig
    base_model_prefix = "model"

    def __init__(self, config: BridgeDecoderConfig):
        super().__init__(config)
        self.model = BridgeDecoderModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=config.lm_head_bias)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def get_decoder(self):
        return self.model

    def embed(self, input_ids, position_ids=None):
        """``self.model.embed``: token + learned position embedding (for a VLM, before its fusion)."""
        return self.model.embed(input_ids, position_ids)

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        cache: Optional[Cache] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        logits_to_keep: Union[int, torch.Tensor] = 0,
        inputs_embeds_include_positions: bool = False,
        **kwargs,
    ) -> Union[Tuple, BridgeCausalLMOutput]:
        r"""labels: (batch, seqlen), -100 ignored, shifted inside (labels = input_ids is right; upstream's
        ``targets`` are the already-shifted labels). Other arguments: ``BridgeDecoderModel.forward``."""
        cache = pop_cache(cache, kwargs)
        num_items = kwargs.pop("num_items_in_batch", None)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             inputs_embeds=inputs_embeds, cache=cache, use_cache=use_cache,
                             output_hidden_states=output_hidden_states, return_dict=True,
                             inputs_embeds_include_positions=inputs_embeds_include_positions, **kwargs)
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden).float()
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(f"labels must be (batch, seqlen)={tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
            loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100,
                                   reduction="sum" if num_items is not None else "mean")
            if num_items is not None:
                loss = loss / num_items
        if not return_dict:
            out = tuple(v for v in (logits, outputs.cache, outputs.hidden_states) if v is not None)
            return (loss,) + out if loss is not None else out
        return BridgeCausalLMOutput(loss, logits, outputs.cache, outputs.hidden_states)


__all__ = [
    "BridgeDecoderConfig", "BridgeDecoderForCausalLM", "BridgeDecoderModel", "BridgeDenseSsm", "BridgeVisionConfig",
    "BridgeVisionModel", "CrossModalFusion", "SsmBridgeProjector", "resolve_fusion_config",
    "resolve_projector_config", "text_position_ids",
]

# save_pretrained writes `auto_map` and copies this file and its sibling imports, so that the towers load with
# AutoModel* / AutoConfig.from_pretrained(..., trust_remote_code=True) without ssmvl installed.
BridgeVisionConfig.register_for_auto_class()
BridgeVisionModel.register_for_auto_class("AutoModel")
BridgeDecoderConfig.register_for_auto_class()
BridgeDecoderModel.register_for_auto_class("AutoModel")
BridgeDecoderForCausalLM.register_for_auto_class("AutoModelForCausalLM")
