"""Projectors of the ssmvl VLM: vision features (or raw pixels) -> tokens of the text width.

Every projector is built from the `SsmVlmConfig` (its `projector_config` already holds the defaults of
`configuration_ssm_vlm.PROJECTOR_DEFAULTS`) and maps ``(batch, n_vision_tokens, vision_hidden) -> (batch,
config.num_image_tokens, text_hidden)``; `patch_linear` (no vision tower) reads ``pixel_values (batch, C, H, W)``
instead. A new projector is one class here, one entry in `PROJECTORS` and its name (and defaults) in
configuration_ssm_vlm.py.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.activations import ACT2FN

from .configuration_ssm_vlm import SsmVlmConfig, _side
from .vlm_bridge import SsmBridgeProjector


class MlpProjector(nn.Module):
    """LLaVA / Cobra projector: ``linear_1 -> act -> linear_2`` on every token (LLaVA's `LlavaMultiModalProjector`
    names); ``num_layers=1`` is one Linear (LLaVA-1.0). Keeps the token count."""


    def __init__(self, config: SsmVlmConfig):
        super().__init__()
        pc = config.projector_config
        hidden = pc["hidden_size"] or config.text_hidden_size
        if pc["num_layers"] == 1:
            self.linear_1 = nn.Linear(config.vision_hidden_size, config.text_hidden_size, bias=pc["bias"])
            self.act = self.linear_2 = None
        else:
            self.linear_1 = nn.Linear(config.vision_hidden_size, hidden, bias=pc["bias"])
            self.act = ACT2FN[pc["hidden_act"]]
            self.linear_2 = nn.Linear(hidden, config.text_hidden_size, bias=pc["bias"])

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        x = self.linear_1(image_features)  # (b, n, hidden)
        if self.linear_2 is not None:
            x = self.linear_2(self.act(x))  # (b, n, text_hidden)
        return x


def sincos_2d(dim: int, rows: int, cols: int, device=None) -> torch.Tensor:
    """MAE / Qwen-VL 2-D sin-cos positions, ``(rows * cols, dim)`` float32, row-major: the first half of the channels
    encodes the column, the second half the row (MAE's ``get_2d_sincos_pos_embed`` with ``meshgrid(w, h)``)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64, device=device) / (dim / 4.0))  # (dim/4,)
    ys, xs = torch.meshgrid(torch.arange(rows, dtype=torch.float64, device=device),
                            torch.arange(cols, dtype=torch.float64, device=device), indexing="ij")

    def one_d(pos):
        out = pos.reshape(-1, 1) * omega  # (rows*cols, dim/4)
        return torch.cat([out.sin(), out.cos()], dim=1)  # (rows*cols, dim/2)

    return torch.cat([one_d(xs), one_d(ys)], dim=1).float()  # (rows*cols, dim)


def resize_positions(pos: torch.Tensor, grid: Tuple[int, int], new_grid: Tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of ``(rows * cols, dim)`` positions to another grid (Qwen-VL's ``get_abs_pos``)."""
    if tuple(grid) == tuple(new_grid):
        return pos
    dim = pos.shape[-1]
    x = pos.float().reshape(1, grid[0], grid[1], dim).permute(0, 3, 1, 2)  # (1, dim, rows, cols)
    x = F.interpolate(x, size=tuple(new_grid), mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], dim).to(pos.dtype)


class ResamplerProjector(nn.Module):
    """Qwen-VL's position-aware resampler (QwenLM/Qwen-VL ``visual.py``: ``Resampler`` + ``ln_post`` + ``proj``): a
    fixed set of ``num_queries`` learned queries cross-attend, in one ``nn.MultiheadAttention`` layer, to the patch
    features. 2-D sin-cos positions of a ``sqrt(num_queries)`` grid are added to the queries and, resized (bicubic) to
    the patch grid, to the keys. ``kv_proj`` maps the vision width to the attention width; ``proj`` (Qwen-VL's
    ``x @ proj``, stored here as a Linear whose weight is ``proj.T``) to the text width. Output: ``num_queries``
    tokens per image, whatever the image resolution."""


    def __init__(self, config: SsmVlmConfig):
        super().__init__()
        pc = config.projector_config
        width, eps = config.resampler_width, pc["layer_norm_eps"]
        self.num_queries = int(pc["num_queries"])
        self.query_grid = (math.isqrt(self.num_queries),) * 2
        self.width = width
        self.query = nn.Parameter(torch.zeros(self.num_queries, width))
        self.kv_proj = (nn.Linear(config.vision_hidden_size, width, bias=False)
                        if config.vision_hidden_size != width else nn.Identity())
        self.attn = nn.MultiheadAttention(width, config.resampler_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(width, eps=eps)
        self.ln_kv = nn.LayerNorm(width, eps=eps)
        self.ln_post = nn.LayerNorm(width, eps=eps)
        self.proj = nn.Linear(width, config.text_hidden_size, bias=False)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        b, n, _ = image_features.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"The resampler needs a square grid of vision tokens, got {n}; use "
                             "vision_feature_select_strategy='default' to drop CLS-like tokens.")
        q_pos = sincos_2d(self.width, *self.query_grid, device=image_features.device)  # (Q, D) float32
        k_pos = resize_positions(q_pos, self.query_grid, (side, side))  # (n, D)
        kv = self.ln_kv(self.kv_proj(image_features))  # (b, n, D)
        q = self.ln_q(self.query)  # (Q, D)
        query = (q + q_pos.to(q.dtype)).unsqueeze(0).expand(b, -1, -1)  # (b, Q, D)
        out, _ = self.attn(query, kv + k_pos.to(kv.dtype), kv, need_weights=False)  # (b, Q, D)
        return self.proj(self.ln_post(out))  # (b, Q, text_hidden)


class BridgerFFN(nn.Module):
    """VLM-Mamba's ``BridgerFFN`` (kyegomez/VLM-Mamba ``vlm_mamba/model.py``): ``net = Linear -> act -> Linear ->
    LayerNorm`` on every token, no residual, with upstream's module names (``net.0``, ``net.2``, ``net.3``).
    Upstream's input and output widths are equal; here the first Linear maps ``in_features`` to ``expansion_factor x
    out_features`` and the second to ``out_features``."""

    def __init__(self, in_features: int, out_features: int, expansion_factor: int = 4, hidden_act: str = "gelu",
                 layer_norm_eps: float = 1e-5):
        super().__init__()
        inner = int(expansion_factor) * out_features
        self.net = nn.Sequential(
            nn.Linear(in_features, inner),
            ACT2FN[hidden_act],
            nn.Linear(inner, out_features),
            nn.LayerNorm(out_features, eps=layer_norm_eps),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (b, n, out_features)


class BridgerFFNProjector(BridgerFFN):
    """VLM-Mamba's encoder mode bridge: a `BridgerFFN` from the vision width to the text width. Keeps the token
    count."""

    def __init__(self, config: SsmVlmConfig):
        pc = config.projector_config
        super().__init__(config.vision_hidden_size, config.text_hidden_size, pc["expansion_factor"],
                         pc["hidden_act"], pc["layer_norm_eps"])


class PatchLinearProjector(nn.Module):
    """Fuyu mode (no vision tower), as VLM-Mamba's ``FuyuImageProcessor``: the image is cut into ``patch x patch``
    pixel patches, each flattened in (row, col, channel) order (einops ``b c (h p1) (w p2) -> b (h w) (p1 p2 c)``)
    and mapped by one Linear (``projection``) to the text width; a learned ``pos_embed`` per patch is added when
    ``use_position_embedding`` (VLM-Mamba; Fuyu itself has none). With ``bridger_ffn`` the tokens then pass through a
    text-width `BridgerFFN` (``bridger``), as VLM-Mamba's ``VLMamba.forward`` does in its Fuyu mode; without it the
    projection is linear in the pixels (Fuyu)."""

    def __init__(self, config: SsmVlmConfig):
        super().__init__()
        pc = config.projector_config
        self.patch = _side(config.patch_size)
        self.image_size = _side(config.image_size)
        self.num_channels = config.num_channels
        self.projection = nn.Linear(config.vision_hidden_size, config.text_hidden_size)
        n = config.num_image_tokens
        self.pos_embed = (nn.Parameter(torch.zeros(1, n, config.text_hidden_size))
                          if pc["use_position_embedding"] else None)
        self.bridger = (BridgerFFN(config.text_hidden_size, config.text_hidden_size, pc["expansion_factor"],
                                   pc["hidden_act"], pc["layer_norm_eps"]) if pc["bridger_ffn"] else None)

    def patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(b, C, H, W) -> (b, (H/p) * (W/p), p * p * C), patches row-major, pixels (p1, p2, c) inside a patch."""
        b, c, h, w = pixel_values.shape
        p1, p2 = self.patch
        x = pixel_values.reshape(b, c, h // p1, p1, w // p2, p2)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p1) * (w // p2), p1 * p2 * c)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.projection(self.patchify(pixel_values.to(self.projection.weight.dtype)))  # (b, n, text_hidden)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        if self.bridger is not None:
            x = self.bridger(x)  # (b, n, text_hidden)
        return x


# name -> class(config); the names match configuration_ssm_vlm.PROJECTOR_TYPES (a test checks). SsmBridgeProjector
# (vlm_bridge.py): state-space layers over the vision tokens, keeps their count.
PROJECTORS: Dict[str, Callable[[SsmVlmConfig], nn.Module]] = {
    "mlp": MlpProjector,
    "resampler": ResamplerProjector,
    "ssm_bridge": SsmBridgeProjector,
    "bridger_ffn": BridgerFFNProjector,
    "patch_linear": PatchLinearProjector,
}


def build_projector(config: SsmVlmConfig) -> nn.Module:
    """The projector named by ``config.projector_type``."""
    if config.projector_type not in PROJECTORS:
        raise ValueError(f"Unknown projector_type {config.projector_type!r}; known: {sorted(PROJECTORS)}")
    return PROJECTORS[config.projector_type](config)


__all__ = ["PROJECTORS", "build_projector", "MlpProjector", "ResamplerProjector", "BridgerFFN", "BridgerFFNProjector",
           "PatchLinearProjector", "SsmBridgeProjector", "sincos_2d"]
