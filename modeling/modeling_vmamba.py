"""ssmvl VMamba: the hierarchical SS2D vision backbone of "VMamba: Visual State Space Model" (Liu et al., 2024) as a
transformers model. Architecture facts (module order, cross-scan order, parameter layout, init) follow the official
code, MzeroMiko/VMamba `classification/models/vmamba.py` (`SS2Dv2.forward_corev2` / `forwardv2`, `VSSBlock`, `VSSM`,
`_make_patch_embed_v2`, `_make_downsample_v3`) and `classification/models/csm_triton.py` (`cross_scan_fwd`,
`cross_merge_fwd`); it is written anew on top of `ssm_ops.selective_scan`.

Layout: inside the network activations are channel-last (batch, h, w, C) so that projections are plain `nn.Linear`
and norms plain `nn.LayerNorm` (upstream "ln2d" = LayerNorm over channels of a channel-first map: same function, same
parameters). Every tensor the model *returns* (`last_hidden_state`, `hidden_states`, `feature_maps`) is channel-first
(batch, C, h, w), the convention of transformers' convolutional backbones (ConvNext, ResNet).

Parameter names match the official checkpoint except the stem / downsample / head (Sequential indices upstream):

    official (ckpt["model"])                     this model (VMambaForImageClassification)
    patch_embed.0 / .2 / .5 / .7  (stem v2)      vmamba.patch_embed.conv1 / norm1 / conv2 / norm2
    patch_embed.0 / .2            (stem v1)      vmamba.patch_embed.conv / norm
    layers.{i}.blocks.{j}.<rest>                 vmamba.layers.{i}.blocks.{j}.<rest>   (norm, op.*, norm2, mlp.*)
      ....op.x_proj_weight    (K, R+2N, d)       ....op.x_proj.{k}.weight    (R+2N, d)    k = 0..3
      ....op.dt_projs_weight  (K, d, R)          ....op.dt_projs.{k}.weight  (d, R)
      ....op.dt_projs_bias    (K, d)             ....op.dt_projs.{k}.bias    (d,)
    layers.{i}.downsample.1 / .3  (v2, v3)       vmamba.layers.{i}.downsample.conv / norm
    layers.{i}.downsample.norm / .reduction (v1) vmamba.layers.{i}.downsample.norm / reduction
    classifier.norm                              vmamba.norm
    classifier.head                              classifier
Upstream `Linear2d` weights may be stored as (out, in, 1, 1); they are (out, in) here. See
`conversion/convert_vmamba_to_hf.py`.

Upstream stacks the four directions' x / dt projections into raw parameters; here each direction has its own
`nn.Linear` (`x_proj.{k}`, `dt_projs.{k}`), always called as a module, so PEFT adapters and hooks on them are honoured.
PEFT's list form of `target_modules` matches a name *suffix* (`key.endswith(".x_proj")`), which would hit the
`ModuleList` and not its Linear children: use `VMAMBA_LORA_TARGETS` (a regex, matched with `re.fullmatch`) to adapt
in_proj, every direction's x_proj and dt_projs, and out_proj.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import logging

from .configuration_vmamba import VMambaConfig, parse_forward_type
from .cuda_graphs import ForwardGraphs, graphs_apply
from .hf_compat import NamesReplacedFilesMixin
from .ssm_layers import GradientCheckpointingLayer, _plain_linear, autocast_dtype, check_pixel_values, init, unhooked
from .ssm_ops import fused_kernels, layer_norm, selective_scan


if TYPE_CHECKING:  # never runs: names every sibling file for transformers 5.0's remote-code copy (see hf_compat.py)
    from .config_checks import check_int  # noqa: F401
    from .ssm_ops import resolve_backend  # noqa: F401
    from .ssm_triton import selective_scan_triton  # noqa: F401


logger = logging.get_logger(__name__)

_ACTS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}
K_DIRECTIONS = 4  # row-major, column-major, and both reversed

# PEFT `LoraConfig(target_modules=VMAMBA_LORA_TARGETS)`: a string is matched with re.fullmatch against each module
# name, e.g. "vmamba.layers.0.blocks.0.op.x_proj.3". Hits the SS2D in_proj, x_proj.0-3, dt_projs.0-3 and out_proj
# (not the MLP fc1/fc2, the downsample or the classifier).
VMAMBA_LORA_TARGETS = r"(?:.*\.)?(?:in_proj|x_proj\.\d+|dt_projs\.\d+|out_proj)"


@dataclass
class VMambaModelOutput(BaseModelOutputWithPooling):
    """last_hidden_state: (batch, C, h, w) final map after the last norm; pooler_output: (batch, C) its spatial mean;
    hidden_states (output_hidden_states): the stem output and each stage's output before its downsample, each
    (batch, C_i, h_i, w_i); feature_maps: the stages named by `config.out_features`, same layout."""

    feature_maps: Optional[Tuple[torch.FloatTensor, ...]] = None


# ---------------------------------------------------------------------------------------------------------------------
# cross-scan / cross-merge (upstream csm_triton.py `cross_scan_fwd` / `cross_merge_fwd`, scans=0, channel-first)
# ---------------------------------------------------------------------------------------------------------------------
def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """x: (batch, d, H, W) -> (batch, 4, d, H*W): row-major, column-major, reversed row-major, reversed column-major."""
    row = x.flatten(2)  # (b, d, L), index h*W + w
    col = x.transpose(2, 3).flatten(2)  # (b, d, L), index w*H + h
    return torch.stack([row, col, row.flip(-1), col.flip(-1)], dim=1)


def cross_merge(ys: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """ys: (batch, 4, d, H*W) in each direction's own order -> (batch, d, H, W), the sum of the four directions."""
    b, _, d, _ = ys.shape
    y = ys[:, 0:2] + ys[:, 2:4].flip(-1)  # undo the reversals: (b, 2, d, L)
    return y[:, 0].reshape(b, d, height, width) + y[:, 1].reshape(b, d, width, height).transpose(2, 3)


def _norm(norm: Optional[nn.LayerNorm], x: torch.Tensor, backend: Optional[str],
          out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``norm(x)`` (rounded to ``out_dtype`` if given; None = no norm): on a GPU tier at inference, a plain unhooked
    LayerNorm runs as one Triton kernel (ssm_ops.layer_norm), its result in the dtype the module's would have (fp32
    under autocast, else x's) unless ``out_dtype`` says otherwise."""
    if norm is None:
        return x
    if unhooked((norm,), (nn.LayerNorm,)) and fused_kernels(backend, x) is not None:
        if out_dtype is None:
            out_dtype = torch.float32 if torch.is_autocast_enabled(x.device.type) else x.dtype
        return layer_norm(x, norm.weight, norm.bias, norm.eps, out_dtype=out_dtype)
    y = norm(x)
    return y if out_dtype is None else y.to(out_dtype)


class VMambaDropPath(nn.Module):
    """Stochastic depth per sample (timm `DropPath`)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class VMambaSS2D(nn.Module):
    """2-D selective scan (upstream `SS2Dv2`, cross2d scan mode). x: (batch, H, W, dim) -> (batch, H, W, dim).

    in_proj -> [split gate z] -> depthwise conv kxk -> act -> 4-direction cross-scan -> ONE selective scan over the
    four directions packed as groups (u: (b, 4*d_inner, L), B/C: (b, 4, N, L), A: (4*d_inner, N)) -> cross-merge ->
    out_norm -> [GELU if _oact] -> [* z] -> out_proj.

    Parameters: in_proj (d_inner or 2*d_inner, dim), conv2d (d_inner, 1, k, k), x_proj.{k} Linear d_inner -> R + 2N
    (no bias), dt_projs.{k} Linear R -> d_inner (with bias), k = 0..3 the directions, A_logs (4*d_inner, N),
    Ds (4*d_inner,), out_norm (d_inner), out_proj (dim, d_inner). Upstream's stacked x_proj_weight (4, R + 2N, d_inner),
    dt_projs_weight (4, d_inner, R) and dt_projs_bias (4, d_inner) are the k-th slices of these; the dt bias is added
    by the dt_projs Linear (not as the scan's delta_bias), so that adapters on dt_projs see the whole projection
    (plain Linears at inference on a GPU tier excepted: ``_projections``).

    On a GPU tier (triton / mamba_ssm backend, CUDA) the cross-scan and merge are Triton kernels (differentiable), and
    at inference out_norm [+ GELU, z] joins the merge's kernel (``scan_fused``); elsewhere the torch ops below.
    """

    def __init__(self, config: VMambaConfig, dim: int, dt_rank: int):
        super().__init__()
        flags = parse_forward_type(config.forward_type)
        self.gated, self.z_act, self.out_act = not flags["noz"], not flags["nozact"], flags["oact"]
        self.d_model, self.d_state, self.dt_rank = dim, config.d_state, dt_rank
        self.d_inner = int(config.ssm_ratio * dim)
        self.ssm_backend = config.ssm_backend
        self._init_args = dict(dt_min=config.dt_min, dt_max=config.dt_max, dt_init=config.dt_init,
                               dt_scale=config.dt_scale, dt_init_floor=config.dt_init_floor)
        d_inner, N, R, K = self.d_inner, self.d_state, dt_rank, K_DIRECTIONS

        self.in_proj = nn.Linear(dim, d_inner * (2 if self.gated else 1), bias=False)
        self.act = _ACTS[config.ssm_act.lower()]()
        self.conv2d = None
        if config.ssm_conv > 1:
            self.conv2d = nn.Conv2d(d_inner, d_inner, config.ssm_conv, padding=(config.ssm_conv - 1) // 2,
                                    groups=d_inner, bias=config.ssm_conv_bias)
        self.x_proj = nn.ModuleList(nn.Linear(d_inner, R + 2 * N, bias=False) for _ in range(K))
        self.dt_projs = nn.ModuleList(nn.Linear(R, d_inner, bias=True) for _ in range(K))
        self.A_logs = nn.Parameter(torch.empty(K * d_inner, N))
        self.Ds = nn.Parameter(torch.empty(K * d_inner))
        self.out_norm = nn.LayerNorm(d_inner, eps=config.layer_norm_eps)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self):
        """Upstream `mamba_init.init_dt_A_D` ("v0", the Mamba init) per direction: A = 1..N (S4D real), D = 1,
        dt weight uniform(+-R^-0.5 * dt_scale), dt bias = softplus^-1(log-uniform(dt_min, dt_max)); x_proj as a
        default nn.Linear (uniform(+-1/sqrt(d_inner)))."""
        if self.A_logs.device.type == "meta":
            return
        a, dev = self._init_args, self.A_logs.device
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=dev)
        init.copy_(self.A_logs, torch.log(A).expand_as(self.A_logs))
        init.ones_(self.Ds)
        std = self.dt_rank**-0.5 * a["dt_scale"]
        bound = 1.0 / math.sqrt(self.d_inner)
        for x_proj, dt_proj in zip(self.x_proj, self.dt_projs):
            if a["dt_init"] == "constant":
                init.constant_(dt_proj.weight, std)
            else:
                init.uniform_(dt_proj.weight, -std, std)
            dt = torch.exp(
                torch.rand(dt_proj.bias.shape, device=dev) * (math.log(a["dt_max"]) - math.log(a["dt_min"]))
                + math.log(a["dt_min"])
            ).clamp(min=a["dt_init_floor"])
            init.copy_(dt_proj.bias, dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            init.uniform_(x_proj.weight, -bound, bound)

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, d_inner, H, W) -> (batch, d_inner, H, W); the cross-scan SSM core (upstream `forward_corev2`).
        On a GPU tier (training included) the cross-scan and merge are differentiable Triton kernels: u time-major
        (b, L, K, d), the result a channel-last map's (b, d, H, W) view; else torch's stack, flips and sums."""
        b, d, H, W = x.shape
        N, R, K, L = self.d_state, self.dt_rank, K_DIRECTIONS, H * W
        ops = fused_kernels(self.ssm_backend, x, autograd=True)
        if ops is not None and hasattr(ops, "cross_scan_autograd"):
            ys = self._scan_directions(ops.cross_scan_autograd(x), None)
            return ops.cross_merge_autograd(ys, H, W).permute(0, 3, 1, 2)
        xs = cross_scan(x)  # (b, K, d, L)
        xs_t = xs.transpose(2, 3)  # (b, K, L, d)
        # each direction's projections called as modules (PEFT / hooks see them), on its own cross-scanned sequence
        x_dbl = torch.stack([proj(xs_t[:, k]) for k, proj in enumerate(self.x_proj)], dim=1)  # (b, K, L, R + 2N)
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=-1)
        # stacked token-major, (b, L, K, d): the (b, K*d, L) view the scan takes needs no second copy
        dts = torch.stack([proj(dts[:, k]) for k, proj in enumerate(self.dt_projs)], dim=2)  # + bias
        ys = selective_scan(
            xs.reshape(b, K * d, L),  # u: (b, K*d, L), direction-major as upstream
            dts.flatten(2).transpose(1, 2),
            self.A_logs,  # (K*d, N): the scan uses A = -exp(A_logs)
            Bs.transpose(2, 3),  # (b, K, N, L) views: one B per direction (groups); the backends read any layout
            Cs.transpose(2, 3),
            D=self.Ds,
            delta_softplus=True,
            backend=self.ssm_backend,
            a_log=True,
        )  # (b, K*d, L)
        return cross_merge(ys.reshape(b, K, d, L), H, W)  # (b, d, H, W)

    def _kernels(self, x: torch.Tensor, z: Optional[torch.Tensor]):
        """The Triton module where this SS2D may run its fused inference path (ssm_ops.fused_kernels; no gradient
        wanted for x, z or a parameter, out_norm a plain unhooked LayerNorm), else None."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return None
        if not unhooked((self.out_norm,), (nn.LayerNorm,)):
            return None
        return fused_kernels(self.ssm_backend, x, *(() if z is None else (z,)))

    def scan_fused(self, ops, x: torch.Tensor, z: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
        """``scan`` -> out_norm [-> GELU] [* z] at inference on a GPU with Triton kernels (``ops``): x (batch, d_inner,
        H, W) before the activation -> (batch, H, W, d_inner) in ``out_dtype``. One kernel builds the four
        directions time-major (b, L, 4, d) (with SiLU when the activation is a plain one), so each direction's x_proj
        reads a strided view and the scan a time-major u (no stack, flip or transposing copies); one kernel merges
        the scan's outputs (whatever layout the scan wrote them in) and normalises them channel-last. Same numbers as
        the torch path (``scan`` then out_norm; the norm in fp32)."""
        H, W = x.shape[2:]
        silu = unhooked((self.act,), (nn.SiLU,))
        u = ops.cross_scan_triton(x if silu else self.act(x), silu=silu)  # (b, L, K, d)
        ys = self._scan_directions(u, autocast_dtype(x.device) or self.x_proj[0].weight.dtype)
        norm = self.out_norm
        return ops.cross_merge_norm_triton(ys, H, W, norm.weight, norm.bias, norm.eps, z=z, gelu=self.out_act,
                                           out_dtype=out_dtype)

    def _scan_directions(self, u: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
        """The selective scan of the four directions of the time-major u (b, L, K, d), projected by _projections
        (``dtype``: see there): (b, K*d, L), in the layout the scan writes."""
        b, L, K, d = u.shape
        N, R = self.d_state, self.dt_rank
        x_dbl, dts, dt_bias = self._projections(u, dtype)
        _, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=-1)
        return selective_scan(u.view(b, L, K * d).transpose(1, 2), dts.flatten(2).transpose(1, 2), self.A_logs,
                              Bs.permute(0, 2, 3, 1), Cs.permute(0, 2, 3, 1), D=self.Ds, delta_bias=dt_bias,
                              delta_softplus=True, backend=self.ssm_backend, a_log=True)

    def _projections(self, u: torch.Tensor, dtype: Optional[torch.dtype]):
        """Each direction's x_proj and dt_projs on the cross-scanned u (b, L, K, d), for scan_fused: x_dbl (b, L, K,
        R + 2N), dts (b, L, K, d) and the dt bias left to the scan (K * d,) or None. Plain unhooked Linears: cuBLAS
        writes each direction's product into its slice of one buffer (in ``dtype``, what autocast computes in; one
        batched product for the four directions: fewer ops for the host to dispatch in an eager call), the
        dt bias goes to the scan (delta_bias: torch adds a bias after a product of a strided input in an element-wise
        pass of its own, 2.4 ms of a 19.7 ms VMamba-T call at 1248 px, H200). Else the modules are called on their
        direction's view and stacked, so adapters and hooks see each direction; so also with ``dtype`` None (training:
        autograd takes no ``out=``)."""
        b, L, K, d = u.shape
        R = self.dt_rank
        if dtype is None or not all(_plain_linear(p) for p in (*self.x_proj, *self.dt_projs)):
            # each direction's module on its (b L, .) 2-D view (a 2-D input takes addmm's fused bias)
            rows = u.view(b * L, K, d)
            x_dbl = torch.stack([proj(rows[:, k]) for k, proj in enumerate(self.x_proj)], dim=1)
            dts = torch.stack([proj(x_dbl[:, k, :R]) for k, proj in enumerate(self.dt_projs)], dim=1)
            return x_dbl.view(b, L, K, -1), dts.view(b, L, K, d), None
        # one batched product a projection over the K directions: (K, b*L, d) views of the (b, L, K, d) buffers
        # (batch stride d, row stride K*d), which cuBLAS reads and writes in place
        rows = u.view(b * L, K, d).transpose(0, 1).to(dtype)
        x_dbl = u.new_empty((b, L, K, R + 2 * self.d_state), dtype=dtype)
        dts = u.new_empty((b, L, K, d), dtype=dtype)
        x_rows = x_dbl.view(b * L, K, -1).transpose(0, 1)
        torch.bmm(rows, torch.stack([p.weight for p in self.x_proj]).to(dtype).transpose(1, 2), out=x_rows)
        torch.bmm(x_rows[..., :R], torch.stack([p.weight for p in self.dt_projs]).to(dtype).transpose(1, 2),
                  out=dts.view(b * L, K, d).transpose(0, 1))
        bias = torch.cat([p.bias if p.bias is not None else p.weight.new_zeros(d) for p in self.dt_projs])
        return x_dbl, dts, bias

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(hidden_states)  # (b, H, W, d_inner | 2*d_inner)
        z = None
        if self.gated:
            x, z = x.chunk(2, dim=-1)
            if self.z_act:
                z = self.act(z)
        x = x.permute(0, 3, 1, 2)  # (b, d_inner, H, W)
        if self.conv2d is not None:
            x = self.conv2d(x)
        ops = self._kernels(x, z)
        if ops is not None:
            dtype = autocast_dtype(x.device) or torch.promote_types(
                hidden_states.dtype, hidden_states.dtype if z is None else z.dtype)
            return self.out_proj(self.scan_fused(ops, x, z, dtype))
        x = self.act(x)
        y = self.scan(x).permute(0, 2, 3, 1)  # (b, H, W, d_inner)
        y = self.out_norm(y.to(hidden_states.dtype))
        if self.out_act:
            y = F.gelu(y)
        if z is not None:
            y = y * z
        return self.out_proj(y)


class VMambaMLP(nn.Module):
    def __init__(self, config: VMambaConfig, dim: int):
        super().__init__()
        hidden = int(dim * config.mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = _ACTS[config.mlp_act.lower()]()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VMambaBlock(GradientCheckpointingLayer):
    """VSS block (upstream `VSSBlock`, pre-norm): x + drop_path(op(norm(x))); x + drop_path(mlp(norm2(x))).
    x: (batch, H, W, dim)."""

    def __init__(self, config: VMambaConfig, dim: int, dt_rank: int, drop_path: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.op = VMambaSS2D(config, dim, dt_rank)
        self.drop_path = VMambaDropPath(drop_path)
        self.norm2 = self.mlp = None
        if config.mlp_ratio > 0:
            self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
            self.mlp = VMambaMLP(config, dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        backend = self.op.ssm_backend
        if (self.mlp is not None and not (self.training and self.drop_path.drop_prob > 0)
                and unhooked((self.norm2,), (nn.LayerNorm,)) and fused_kernels(backend, hidden_states) is not None):
            # inference on a GPU: the norms in autocast's dtype (what in_proj / fc1 cast to), the SS2D's residual sum
            # in the second norm's kernel (ssm_ops.layer_norm: torch ops where a gradient is wanted)
            dtype = autocast_dtype(hidden_states.device)
            n2 = self.norm2
            hidden_states, x = layer_norm(self.op(_norm(self.norm, hidden_states, backend, dtype)), n2.weight, n2.bias,
                                          n2.eps, residual=hidden_states, out_dtype=dtype)
            return hidden_states + self.mlp(x)
        hidden_states = hidden_states + self.drop_path(self.op(self.norm(hidden_states)))
        if self.mlp is not None:
            hidden_states = hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))
        return hidden_states


class VMambaPatchEmbed(nn.Module):
    """Stem. "v2" (upstream `_make_patch_embed_v2` with patch 4): conv 3x3 s2 -> norm -> GELU -> conv 3x3 s2 -> norm;
    "v1" (`_make_patch_embed`): conv p x p stride p -> norm. pixel_values (b, C_in, H, W) -> (b, H/p, W/p, dim)."""

    def __init__(self, config: VMambaConfig):
        super().__init__()
        dim, eps = config.hidden_sizes[0], config.layer_norm_eps
        self.version = config.patchembed
        self.ssm_backend = config.ssm_backend  # which tier runs the norms (see _norm)
        make_norm = (lambda c: nn.LayerNorm(c, eps=eps)) if config.patch_norm else (lambda c: None)
        if self.version == "v2":
            stride = config.patch_size // 2
            self.conv1 = nn.Conv2d(config.num_channels, dim // 2, stride + 1, stride=stride, padding=1)
            self.norm1 = make_norm(dim // 2)
            self.act = nn.GELU()
            self.conv2 = nn.Conv2d(dim // 2, dim, stride + 1, stride=stride, padding=1)
            self.norm2 = make_norm(dim)
        else:
            self.conv = nn.Conv2d(config.num_channels, dim, config.patch_size, stride=config.patch_size)
            self.norm = make_norm(dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.version == "v2":
            if fused_kernels(self.ssm_backend, pixel_values) is not None:  # conv1 then writes channel-last: its
                pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)  # norm reads it in place
            x = self.conv1(pixel_values).permute(0, 2, 3, 1)  # (b, H/2, W/2, dim/2)
            x = self.act(_norm(self.norm1, x, self.ssm_backend)).permute(0, 3, 1, 2)  # upstream LayerNorm2d
            x = self.conv2(x).permute(0, 2, 3, 1)  # (b, H/4, W/4, dim)
            return _norm(self.norm2, x, self.ssm_backend)
        x = self.conv(pixel_values).permute(0, 2, 3, 1)  # (b, H/p, W/p, dim)
        return _norm(self.norm, x, self.ssm_backend)


class VMambaDownsample(nn.Module):
    """Between stages, halves H and W. "v3": conv 3x3 s2 p1 -> norm (upstream `_make_downsample_v3`); "v2": conv 2x2
    s2 -> norm (`_make_downsample`); "v1": patch merging, norm(4C) -> linear (`PatchMerging2D`).
    (b, H, W, dim) -> (b, H/2, W/2, out_dim)."""

    def __init__(self, config: VMambaConfig, dim: int, out_dim: int):
        super().__init__()
        self.version = config.downsample
        self.ssm_backend = config.ssm_backend  # which tier runs the norm (see _norm)
        if self.version == "v1":
            self.norm = nn.LayerNorm(4 * dim, eps=config.layer_norm_eps)
            self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        else:
            kernel, padding = (3, 1) if self.version == "v3" else (2, 0)
            self.conv = nn.Conv2d(dim, out_dim, kernel, stride=2, padding=padding)
            self.norm = nn.LayerNorm(out_dim, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.version == "v1":
            # same concatenation order as upstream: (0,0), (1,0), (0,1), (1,1) offsets in (h, w)
            x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
            return self.reduction(_norm(self.norm, x, self.ssm_backend))
        return _norm(self.norm, self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), self.ssm_backend)


class VMambaStage(nn.Module):
    def __init__(self, config: VMambaConfig, stage: int, drop_paths):
        super().__init__()
        dim = config.hidden_sizes[stage]
        self.blocks = nn.ModuleList(
            VMambaBlock(config, dim, config.stage_dt_rank(stage), p) for p in drop_paths
        )
        self.downsample = None
        if stage < config.num_stages - 1:
            self.downsample = VMambaDownsample(config, dim, config.hidden_sizes[stage + 1])


class VMambaPreTrainedModel(NamesReplacedFilesMixin, PreTrainedModel):
    config_class = VMambaConfig
    base_model_prefix = "vmamba"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["VMambaBlock"]
    supports_gradient_checkpointing = True

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() / .half(): captured forwards read the old tensors
        ForwardGraphs.release(self)
        return super()._apply(fn, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        """As upstream `VSSM._init_weights`: Linear trunc_normal(std=initializer_range) and zero bias, LayerNorm 1/0;
        convs keep torch's default (kaiming-uniform) init; SS2D parameters get the Mamba init. Modules are visited
        children first, so the SS2D branch (its `reset_ssm_parameters`) runs after the generic Linear branch has touched
        its x_proj.{k} / dt_projs.{k} and overrides it: x_proj uniform(+-d_inner^-0.5), dt weight uniform(+-R^-0.5 *
        dt_scale), dt bias softplus^-1(log-uniform(dt_min, dt_max)), as upstream."""
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, VMambaSS2D):
            module.reset_ssm_parameters()


class VMambaModel(VMambaPreTrainedModel):
    """Stem -> stages of VSS blocks (each but the last followed by a 2x downsample) -> LayerNorm -> mean pool."""

    def __init__(self, config: VMambaConfig):
        super().__init__(config)
        self.patch_embed = VMambaPatchEmbed(config)
        n = sum(config.depths)  # stochastic depth decay rule, linspace(0, rate, n) as upstream (no tensor: meta-safe)
        dpr = [config.drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        starts = [sum(config.depths[:i]) for i in range(config.num_stages)]
        self.layers = nn.ModuleList(
            VMambaStage(config, i, dpr[starts[i]: starts[i] + config.depths[i]]) for i in range(config.num_stages)
        )
        self.norm = nn.LayerNorm(config.num_features, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def _check_pixel_values(self, pixel_values: Optional[torch.Tensor], finite: bool = True):
        cfg = self.config
        if pixel_values is None:
            raise ValueError("VMamba needs pixel_values of shape (batch, channels, height, width).")
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must be (batch, {cfg.num_channels}, height, width), "
                f"got shape {tuple(pixel_values.shape)}"
            )
        check_pixel_values(pixel_values, finite=finite)
        if pixel_values.shape[1] != cfg.num_channels:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[1]} channels but the model was configured with "
                f"num_channels={cfg.num_channels} (shape {tuple(pixel_values.shape)}; expected "
                f"(batch, {cfg.num_channels}, height, width)). Convert the images (e.g. to RGB) or use channels-first."
            )
        h, w = pixel_values.shape[-2:]
        m = cfg.size_multiple
        if h % m or w % m or h == 0 or w == 0:
            def up(v):
                return max(m, -(-v // m) * m)

            raise ValueError(
                f"VMamba needs image sides that are multiples of {m} (patch_size {cfg.patch_size} x 2^"
                f"{cfg.num_stages - 1} downsamplings); got {h}x{w}. Resize or pad the images, e.g. to "
                f"{up(h)}x{up(w)} (the image processor resizes to {cfg.image_size}x{cfg.image_size})."
            )

    def forward(
        self,
        pixel_values: Optional[torch.FloatTensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> Union[Tuple, VMambaModelOutput]:
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        graphed = not output_hidden_states and graphs_apply(self, pixel_values)  # see VMambaConfig.use_cuda_graph
        self._check_pixel_values(pixel_values, finite=not graphed)
        out = None
        if graphed:
            out = ForwardGraphs.run(self, lambda pv: self._features(pv, False), (pixel_values,))
            check_pixel_values(pixel_values)  # after the replay's launch: its wait overlaps the kernels
        if out is None:
            out = self._features(pixel_values, output_hidden_states)
        x, pooled, *stages = out

        def channel_first(t):
            return t.permute(0, 3, 1, 2)

        last_hidden_state = channel_first(x)
        hidden_states = tuple(channel_first(t) for t in stages) if output_hidden_states else None
        if output_hidden_states:
            stages = [stages[i] for i in self.config.out_indices]
        feature_maps = tuple(channel_first(t) for t in stages)
        if not return_dict:
            return tuple(v for v in (last_hidden_state, pooled, hidden_states, feature_maps) if v is not None)
        return VMambaModelOutput(last_hidden_state=last_hidden_state, pooler_output=pooled,
                                 hidden_states=hidden_states, feature_maps=feature_maps)

    def _features(self, pixel_values: torch.Tensor, all_stages: bool):
        """(final map after the norm, pooled, *stage outputs) as (b, h, w, C) tensors: every stage's (stem first) with
        ``all_stages``, else those of config.out_indices."""
        x = self.patch_embed(pixel_values.to(self.patch_embed_dtype))  # (b, H/4, W/4, C0)
        stage_outputs = [x]
        for stage in self.layers:
            for block in stage.blocks:
                x = block(x)
            stage_outputs.append(x)  # (b, h_i, w_i, C_i), before the downsample
            if stage.downsample is not None:
                x = stage.downsample(x)
        x = _norm(self.norm, x, self.config.ssm_backend)  # (b, h, w, C)
        pooled = x.mean(dim=(1, 2))  # (b, C)
        if not all_stages:
            stage_outputs = [stage_outputs[i] for i in self.config.out_indices]
        return (x, pooled, *stage_outputs)

    @property
    def patch_embed_dtype(self) -> torch.dtype:
        return next(self.patch_embed.parameters()).dtype


class VMambaForImageClassification(VMambaPreTrainedModel):
    def __init__(self, config: VMambaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vmamba = VMambaModel(config)
        self.classifier = nn.Linear(config.num_features, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(
        self,
        pixel_values: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> Union[Tuple, ImageClassifierOutput]:
        r"""labels: (batch,) class ids for single-label classification (cross-entropy), (batch, num_labels) floats for
        multi-label (BCE with logits), or values for regression (num_labels == 1, MSE); see `config.problem_type`."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.vmamba(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(outputs.pooler_output)  # (b, num_labels)
        loss = None
        if labels is not None:
            loss = self._loss(logits, labels.to(logits.device))
        if not return_dict:
            out = tuple(v for v in (logits, outputs.hidden_states) if v is not None)
            return (loss,) + out if loss is not None else out
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        problem_type = self.config.problem_type
        if problem_type is None:
            if self.num_labels == 1:
                problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem_type = "single_label_classification"
            else:
                problem_type = "multi_label_classification"
            self.config.problem_type = problem_type
        if problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if problem_type == "single_label_classification":
            if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
                raise ValueError(f"single-label labels must be (batch,)={logits.shape[:1]} class ids, got "
                                 f"{tuple(labels.shape)}")
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        if problem_type == "multi_label_classification":
            if labels.shape != logits.shape:
                raise ValueError(f"multi-label labels must be (batch, num_labels)={tuple(logits.shape)}, got "
                                 f"{tuple(labels.shape)}")
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        raise ValueError(f"Unknown config.problem_type {problem_type!r}; use 'regression', "
                         "'single_label_classification' or 'multi_label_classification'.")


__all__ = [
    "VMambaPreTrainedModel", "VMambaModel", "VMambaForImageClassification", "VMambaModelOutput",
    "cross_scan", "cross_merge", "VMAMBA_LORA_TARGETS",
]

# save_pretrained writes `auto_map` and copies this file and its sibling imports, so that
# AutoModel*/AutoConfig.from_pretrained(..., trust_remote_code=True) works without ssmvl installed.
VMambaConfig.register_for_auto_class()
VMambaModel.register_for_auto_class("AutoModel")
VMambaForImageClassification.register_for_auto_class("AutoModelForImageClassification")
