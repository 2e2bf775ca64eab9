"""Convert an ssm-bridge ``EnhancedVLM`` state dict (PyPI ``ssm-bridge`` 0.0.2, github kyegomez/SSM-As-VLM-Bridge,
``ssm_bridge/model.py``) to an ``SsmVlmForConditionalGeneration`` built from ssmvl's bridge parts
(``modeling/vlm_bridge.py``), with a logits parity report against the installed package.

    python -m ssmvl.conversion.convert_ssm_bridge_to_hf --checkpoint enhanced_vlm.pt \
        [--upstream-config vlm_config.json] [--image-token-id ID] (--out DIR [--push_to_hub REPO] | --check-only)

Upstream publishes no weights: a checkpoint is ``torch.save(EnhancedVLM(...).state_dict())`` (or ``{"model": ...}``,
or safetensors). ``--upstream-config``: a JSON object of ``VLMConfig`` fields; what the shapes tell (widths, depths,
vocabulary, image and patch size, SSM sizes, key-value heads) is read from the checkpoint, head counts come from the
JSON or upstream's defaults (12 / 12 / 8).

What maps where (upstream -> ours; ``{vision}`` etc. say where each part sits: ``VLM_PREFIXES`` in
``SsmVlmForConditionalGeneration``, ``PARTS_PREFIXES`` in ``ComposedBridgeVLM``):

    vit.patch_embed / cls_token / pos_embed          -> {vision}embeddings.patch_embedding / .cls_token /
                                                        .position_embedding
    vit.blocks.{i}.attn.{q,k,v,o}_proj               -> {vision}layers.{i}.self_attn.{q,k,v,o}_proj
    vit.blocks.{i}.ln1 / ln2                         -> {vision}layers.{i}.input_layernorm / post_attention_layernorm
    vit.blocks.{i}.ffn.w1 / w2 / w3 / layer_norm     -> {vision}layers.{i}.mlp.gate_proj / up_proj / down_proj / norm
    vit.ln                                           -> {vision}post_layernorm
    ssm_bridge.in_proj / out_proj                    -> {projector}in_proj / out_proj
    ssm_bridge.ssm_layers.{i}.*                      -> {projector}layers.{i}.mixer.*   (BridgeDenseSsm, same names)
    ssm_bridge.layer_norms.{i}                       -> {projector}layers.{i}.norm
    cross_attn_layers.{i}.{q,k,v,o}_proj             -> {fusion}layers.{i}.cross_attn.{q,k,v,o}_proj
    token_embed                                      -> {decoder}embed_tokens
    pos_embed (1, L, D)                              -> {decoder}embed_positions.weight (L, D)
    text_blocks.{i}.*                                -> {decoder}layers.{i}.*   (as vit.blocks)
    ln / head                                        -> {decoder}norm / {lm_head}

The converted config sets every upstream-compat flag (``upstream_compat``: the MLP-residual wiring, the score and
activation clamps, the dense-recurrence bridge with its normalised residual, the residual-free plain multi-head fusion),
so the converted model computes exactly what upstream computes; docs/ssm_bridge.md lists each.

Upstream's forward is: image tokens (cls + patches) -> bridge; text = token + learned position (text positions from 0)
-> fusion(text, image tokens); decoder over [image tokens; text] under a causal mask; logits of the text positions.
The VLM does the same when its text starts with ``num_image_tokens`` placeholders (``model_text_logits``); upstream has
no placeholder token, so one is added (``IMAGE_TOKEN_LOGIT_BIAS``) unless ``--image-token-id`` names an id to reuse.
``ComposedBridgeVLM`` wires the parts directly (``target="parts"``, no placeholder): an independent check of the VLM's
wiring, and the fallback where the VLM family is absent (parity only, nothing to save).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import types
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn as nn

from ..modeling.vlm_bridge import (
    BridgeDecoderConfig,
    BridgeDecoderForCausalLM,
    BridgeVisionConfig,
    BridgeVisionModel,
    CrossModalFusion,
    SsmBridgeProjector,
    resolve_fusion_config,
    resolve_projector_config,
)


# upstream ``VLMConfig`` defaults (ssm_bridge/model.py:9-40); a test checks them against the package
UPSTREAM_DEFAULTS = dict(
    img_size=224, patch_size=16, vision_embed_dim=768, vision_num_layers=12, vision_num_heads=12,
    vocab_size=32000, text_embed_dim=768, text_num_layers=12, text_num_heads=12, text_kv_heads=1, max_seq_length=2048,
    ssm_state_dim=64, ssm_hidden_dim=256, ssm_num_layers=4, ssm_dropout=0.1,
    cross_attn_layers=2, cross_attn_heads=8, dropout=0.1, layer_norm_eps=1e-5,
)

# where each part sits in the converted model's state dict: SsmVlmForConditionalGeneration (modeling_ssm_vlm.py), or
# ComposedBridgeVLM below (the parts alone, for where the VLM family is absent)
VLM_PREFIXES = dict(vision="model.vision_tower.", projector="model.projector.", fusion="fusion.",
                    decoder="language_model.model.", lm_head="language_model.lm_head.")
PARTS_PREFIXES = dict(vision="vision_tower.", projector="multi_modal_projector.", fusion="fusion.",
                      decoder="language_model.model.", lm_head="language_model.lm_head.")
DEFAULT_PREFIXES = VLM_PREFIXES
# upstream has no image token; the VLM's placeholder gets a new id (= upstream's vocab_size): a zero embedding row
# (always overwritten by an image token) and a head row of zeros with this bias, so it is never predicted and the
# softmax over upstream's vocabulary is upstream's
IMAGE_TOKEN_LOGIT_BIAS = -1e4

# inside vit.blocks.{i} / text_blocks.{i}: upstream module path -> ours (both ways one-to-one)
BLOCK_MODULES = {
    "attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj", "attn.v_proj": "self_attn.v_proj",
    "attn.o_proj": "self_attn.o_proj", "ln1": "input_layernorm", "ln2": "post_attention_layernorm",
    "ffn.w1": "mlp.gate_proj", "ffn.w2": "mlp.up_proj", "ffn.w3": "mlp.down_proj", "ffn.layer_norm": "mlp.norm",
}
DENSE_SSM_PARAMS = ("input_proj.weight", "input_proj.bias", "A", "B", "C", "bias_A", "bias_C", "gate.weight",
                    "gate.bias", "proj.weight", "proj.bias")


def _renames(p: dict):
    """(upstream prefix, our prefix) pairs for the keys outside the indexed blocks / layers."""
    return [
        ("vit.patch_embed.", p["vision"] + "embeddings.patch_embedding."),
        ("vit.cls_token", p["vision"] + "embeddings.cls_token"),
        ("vit.pos_embed", p["vision"] + "embeddings.position_embedding"),
        ("vit.ln.", p["vision"] + "post_layernorm."),
        ("ssm_bridge.in_proj.", p["projector"] + "in_proj."),
        ("ssm_bridge.out_proj.", p["projector"] + "out_proj."),
        ("token_embed.", p["decoder"] + "embed_tokens."),
        ("pos_embed", p["decoder"] + "embed_positions.weight"),
        ("ln.", p["decoder"] + "norm."),
        ("head.", p["lm_head"]),
    ]


def original_key_to_hf(key: str, prefixes: Optional[dict] = None) -> Optional[str]:
    """Upstream key -> ours, or None when no rule knows it."""
    p = {**DEFAULT_PREFIXES, **(prefixes or {})}
    m = re.match(r"^(vit\.blocks|text_blocks)\.(\d+)\.(.+)\.(weight|bias)$", key)
    if m:
        module = BLOCK_MODULES.get(m.group(3))
        if module is None:
            return None
        part = p["vision"] if m.group(1) == "vit.blocks" else p["decoder"]
        return f"{part}layers.{m.group(2)}.{module}.{m.group(4)}"
    m = re.match(r"^ssm_bridge\.ssm_layers\.(\d+)\.(.+)$", key)
    if m:
        return f"{p['projector']}layers.{m.group(1)}.mixer.{m.group(2)}" if m.group(2) in DENSE_SSM_PARAMS else None
    m = re.match(r"^ssm_bridge\.layer_norms\.(\d+)\.(weight|bias)$", key)
    if m:
        return f"{p['projector']}layers.{m.group(1)}.norm.{m.group(2)}"
    m = re.match(r"^cross_attn_layers\.(\d+)\.([qkvo]_proj)\.(weight|bias)$", key)
    if m:
        return f"{p['fusion']}layers.{m.group(1)}.cross_attn.{m.group(2)}.{m.group(3)}"
    for up, ours in _renames(p):
        exact = not up.endswith(".")
        if (exact and key == up) or (not exact and key.startswith(up) and key[len(up):] in ("weight", "bias")):
            return ours if exact else ours + key[len(up):]
    return None


def hf_key_to_original(key: str, prefixes: Optional[dict] = None) -> str:
    """Ours -> upstream (to name missing keys by upstream's names); the inverse of ``original_key_to_hf``."""
    p = {**DEFAULT_PREFIXES, **(prefixes or {})}
    inverse_block = {v: k for k, v in BLOCK_MODULES.items()}
    for part, up in ((p["vision"], "vit.blocks"), (p["decoder"], "text_blocks")):
        m = re.match(re.escape(part) + r"layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        if m and m.group(2) in inverse_block:
            return f"{up}.{m.group(1)}.{inverse_block[m.group(2)]}.{m.group(3)}"
    m = re.match(re.escape(p["projector"]) + r"layers\.(\d+)\.(mixer|norm)\.(.+)$", key)
    if m:
        return (f"ssm_bridge.ssm_layers.{m.group(1)}.{m.group(3)}" if m.group(2) == "mixer"
                else f"ssm_bridge.layer_norms.{m.group(1)}.{m.group(3)}")
    m = re.match(re.escape(p["fusion"]) + r"layers\.(\d+)\.cross_attn\.(.+)$", key)
    if m:
        return f"cross_attn_layers.{m.group(1)}.{m.group(2)}"
    for up, ours in _renames(p):
        if key == ours or (up.endswith(".") and key.startswith(ours)):
            return up + key[len(ours):] if up.endswith(".") else up
    return key


# ---------------------------------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------------------------------
def upstream_config_dict(upstream_config=None) -> dict:
    """A ``VLMConfig`` (dataclass), a dict of its fields, or None -> every field (upstream defaults filled in)."""
    if upstream_config is None:
        given = {}
    elif isinstance(upstream_config, dict):
        given = dict(upstream_config)
    else:
        given = {k: getattr(upstream_config, k) for k in UPSTREAM_DEFAULTS if hasattr(upstream_config, k)}
    unknown = sorted(set(given) - set(UPSTREAM_DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown VLMConfig field(s) {unknown}; known: {sorted(UPSTREAM_DEFAULTS)}")
    return {**UPSTREAM_DEFAULTS, **given}


def config_from_enhanced_vlm(upstream_config=None, target: Optional[str] = None,
                             image_token_id: Optional[int] = None):
    """Upstream ``VLMConfig`` (or a dict of its fields, or None for its defaults) -> our config, every part set to
    compute exactly what upstream computes (all upstream-compat flags on).

    ``target="vlm"`` (default when modeling/configuration_ssm_vlm.py is there): an ``SsmVlmConfig`` for
    ``SsmVlmForConditionalGeneration``: projector "ssm_bridge", fusion "cross_attention" with ``image_prefix`` (the
    image tokens fill ``num_image_tokens`` placeholders in front of the text), the tower's every token (cls included).
    The placeholder is ``image_token_id`` if given (an id of upstream's vocabulary that the text then never uses), else
    a new id ``vocab_size`` (the vocabulary grows by one, see ``IMAGE_TOKEN_LOGIT_BIAS``).
    ``target="parts"``: a namespace with the same attributes for ``ComposedBridgeVLM`` (no placeholder)."""
    u = upstream_config_dict(upstream_config)
    if target is None:
        target = "vlm" if _vlm_config_class() is not None else "parts"
    if target not in ("vlm", "parts"):
        raise ValueError(f"target must be 'vlm' or 'parts', got {target!r}")
    if u["vision_embed_dim"] % u["vision_num_heads"] or u["text_embed_dim"] % u["text_num_heads"] \
            or u["text_embed_dim"] % u["cross_attn_heads"]:
        raise ValueError("Upstream splits each width into heads of width // heads and then reshapes with it; widths "
                         "that the head counts do not divide do not run upstream either.")
    if u["layer_norm_eps"] <= 0:
        raise ValueError(f"layer_norm_eps must be positive, got {u['layer_norm_eps']}")
    add_token = target == "vlm" and image_token_id is None
    vision = BridgeVisionConfig(
        image_size=u["img_size"], patch_size=u["patch_size"], hidden_size=u["vision_embed_dim"],
        num_hidden_layers=u["vision_num_layers"], num_attention_heads=u["vision_num_heads"], num_key_value_heads=1,
        intermediate_size=4 * u["vision_embed_dim"], layer_norm_eps=1e-5, final_layer_norm_eps=u["layer_norm_eps"],
        hidden_dropout=u["dropout"], attention_dropout=u["dropout"], upstream_compat=True)
    text = BridgeDecoderConfig(
        vocab_size=u["vocab_size"] + int(add_token), hidden_size=u["text_embed_dim"],
        num_hidden_layers=u["text_num_layers"], num_attention_heads=u["text_num_heads"],
        num_key_value_heads=u["text_kv_heads"], intermediate_size=4 * u["text_embed_dim"],
        max_position_embeddings=u["max_seq_length"], layer_norm_eps=1e-5, final_layer_norm_eps=u["layer_norm_eps"],
        hidden_dropout=u["dropout"], attention_dropout=u["dropout"], upstream_compat=True)
    projector_config = resolve_projector_config(dict(
        upstream_compat=True, hidden_size=u["ssm_hidden_dim"], num_layers=u["ssm_num_layers"],
        state_size=u["ssm_state_dim"], dropout=u["ssm_dropout"]))
    fusion_config = resolve_fusion_config(dict(
        upstream_compat=True, num_layers=u["cross_attn_layers"], num_heads=u["cross_attn_heads"],
        dropout=u["dropout"], image_prefix=True))
    fields = dict(vision_config=vision, text_config=text, projector_type="ssm_bridge",
                  projector_config=projector_config, fusion="cross_attention",
                  vision_feature_layer=-1, vision_feature_select_strategy="full")  # the bridge reads cls + patches
    if target == "parts":
        return types.SimpleNamespace(**fields, fusion_config=fusion_config, image_token_id=None)
    vlm_config_cls = _vlm_config_class()
    if vlm_config_cls is None:
        raise ImportError("target='vlm' needs modeling/configuration_ssm_vlm.py (SsmVlmConfig); use target='parts'.")
    token = u["vocab_size"] if add_token else image_token_id
    if not 0 <= token < text.vocab_size:
        raise ValueError(f"image_token_id {token} is not an id of the vocabulary (0..{text.vocab_size - 1})")
    return vlm_config_cls(**fields, cross_attention_config=fusion_config, image_token_id=token)


def _vlm_config_class():
    try:
        from ..modeling.configuration_ssm_vlm import SsmVlmConfig
    except ImportError:
        return None
    return SsmVlmConfig


def _vlm_model_class():
    try:
        from ..modeling.modeling_ssm_vlm import SsmVlmForConditionalGeneration
    except ImportError:
        return None
    return SsmVlmForConditionalGeneration


def is_vlm_config(config) -> bool:
    cls = _vlm_config_class()
    return cls is not None and isinstance(config, cls)


def prefixes_for(config) -> dict:
    """Where the parts sit in the model ``build_model(config)`` makes."""
    return dict(VLM_PREFIXES if is_vlm_config(config) else PARTS_PREFIXES)


def infer_upstream_config(original: Dict[str, torch.Tensor], upstream_config=None) -> dict:
    """The ``VLMConfig`` fields the shapes of ``original`` determine, over ``upstream_config`` (head counts, dropouts
    and eps cannot be read from shapes; the text key-value heads can, given the text heads)."""
    u = upstream_config_dict(upstream_config)

    def need(key):
        if key not in original:
            raise ValueError(f"Not an EnhancedVLM state dict: no {key!r} (first keys: {sorted(original)[:6]})")
        return original[key]

    patch = need("vit.patch_embed.weight")  # (Dv, 3, p, p)
    u["vision_embed_dim"], u["patch_size"] = patch.shape[0], patch.shape[-1]
    n_pos = need("vit.pos_embed").shape[1] - 1
    side = int(round(n_pos ** 0.5))
    u["img_size"] = side * u["patch_size"]
    u["vision_num_layers"] = len({k.split(".")[2] for k in original if k.startswith("vit.blocks.")})
    u["vocab_size"], u["text_embed_dim"] = need("token_embed.weight").shape
    u["max_seq_length"] = need("pos_embed").shape[1]
    u["text_num_layers"] = len({k.split(".")[1] for k in original if k.startswith("text_blocks.")})
    u["ssm_hidden_dim"] = need("ssm_bridge.in_proj.weight").shape[0]
    u["ssm_state_dim"] = need("ssm_bridge.ssm_layers.0.A").shape[0]
    u["ssm_num_layers"] = len({k.split(".")[2] for k in original if k.startswith("ssm_bridge.ssm_layers.")})
    u["cross_attn_layers"] = len({k.split(".")[1] for k in original if k.startswith("cross_attn_layers.")})
    if "text_blocks.0.attn.k_proj.weight" in original:
        head_dim = u["text_embed_dim"] // u["text_num_heads"]
        u["text_kv_heads"] = max(1, original["text_blocks.0.attn.k_proj.weight"].shape[0] // head_dim)
    return u


# ---------------------------------------------------------------------------------------------------------------------
# the composed model (stands in for SsmVlmForConditionalGeneration; see the module docstring)
# ---------------------------------------------------------------------------------------------------------------------
class ComposedBridgeVLM(nn.Module):
    """Our parts wired as upstream's ``EnhancedVLM.forward`` (ssm_bridge/model.py:553-598). ``forward(pixel_values,
    input_ids) -> logits (B, T, vocab)`` of the text positions. State-dict keys: ``PARTS_PREFIXES``."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.vision_tower = BridgeVisionModel(_sub(config.vision_config, BridgeVisionConfig))
        self.multi_modal_projector = SsmBridgeProjector(config)
        self.fusion = CrossModalFusion(config)
        self.language_model = BridgeDecoderForCausalLM(_sub(config.text_config, BridgeDecoderConfig))

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> bridged image tokens (B, num_patches + 1, text_hidden)."""
        return self.multi_modal_projector(self.vision_tower(pixel_values).last_hidden_state)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.LongTensor) -> torch.Tensor:
        image = self.image_tokens(pixel_values)  # (B, N+1, Dt)
        text = self.fusion(self.language_model.embed(input_ids), image)  # (B, T, Dt), positions 0..T-1 first
        out = self.language_model(inputs_embeds=torch.cat([image, text], dim=1), inputs_embeds_include_positions=True,
                                  use_cache=False)
        return out.logits[:, image.shape[1]:]


def _sub(sub_config, cls):
    if isinstance(sub_config, cls):
        return sub_config
    data = sub_config.to_dict() if hasattr(sub_config, "to_dict") else dict(sub_config)
    data.pop("model_type", None)
    return cls(**data)


def build_model(config) -> nn.Module:
    """The converted model: ``SsmVlmForConditionalGeneration`` for an ``SsmVlmConfig``, else ``ComposedBridgeVLM``."""
    if is_vlm_config(config):
        return _vlm_model_class()(config)
    return ComposedBridgeVLM(config)


def model_text_logits(model: nn.Module, pixel_values: torch.Tensor, input_ids: torch.LongTensor) -> torch.Tensor:
    """Logits of the text positions (B, T, vocab) for upstream's input (images, text ids): the VLM gets
    ``num_image_tokens`` placeholders in front of the text, as upstream puts its image tokens there."""
    if isinstance(model, ComposedBridgeVLM):
        return model(pixel_values, input_ids)
    n, token = model.config.num_image_tokens, model.config.image_token_id
    prompt = torch.cat([torch.full((input_ids.shape[0], n), token, dtype=input_ids.dtype), input_ids], dim=1)
    return model(input_ids=prompt, pixel_values=pixel_values, use_cache=False).logits[:, n:]


def expected_shapes(config) -> Dict[str, tuple]:
    """Our key -> shape for ``config``: the state dict of ``build_model(config)`` built on the meta device."""
    with torch.device("meta"):
        model = build_model(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------------
# the pure conversion
# ---------------------------------------------------------------------------------------------------------------------
def convert_state_dict(original: Dict[str, torch.Tensor], config) -> Dict[str, torch.Tensor]:
    """Upstream ``EnhancedVLM.state_dict()`` -> the state dict of ``build_model(config)``. Strict: unknown
    (unexpected), missing and mis-shaped keys are all named, by their upstream names, in one ValueError. With a new
    image placeholder id (``config_from_enhanced_vlm``), the token embedding gets a zero row and the head a zero row
    with bias ``IMAGE_TOKEN_LOGIT_BIAS``."""
    prefixes = prefixes_for(config)
    expected = expected_shapes(config)
    not_tensors = sorted(f"{k} ({type(v).__name__})" for k, v in original.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"EnhancedVLM state dict holds {len(not_tensors)} value(s) that are not tensors: "
                         + "; ".join(not_tensors))
    vocab = original["token_embed.weight"].shape[0] if "token_embed.weight" in original else None
    new_token = (vocab is not None and getattr(config, "image_token_id", None) == vocab
                 and config.text_config.vocab_size == vocab + 1)
    converted, unexpected, misshaped = {}, [], []
    for key, value in original.items():
        new = original_key_to_hf(key, prefixes)
        if new is None or new not in expected:
            unexpected.append(key)
            continue
        value = value.detach()
        if key == "pos_embed" and value.dim() == 3 and value.shape[0] == 1:
            value = value[0]  # (1, L, D) -> (L, D): an nn.Embedding here
        if new_token and key in ("token_embed.weight", "head.weight", "head.bias"):
            row = torch.full_like(value[:1], IMAGE_TOKEN_LOGIT_BIAS if key == "head.bias" else 0.0)
            value = torch.cat([value, row], dim=0)
        if tuple(value.shape) != expected[new]:
            want = (1,) + expected[new] if key == "pos_embed" else expected[new]
            misshaped.append(f"{key}: checkpoint {tuple(original[key].shape)} vs expected {want}")
            continue
        converted[new] = value.clone().contiguous()
    missing = sorted(hf_key_to_original(k, prefixes) for k in expected
                     if k not in converted and hf_key_to_original(k, prefixes) not in original)
    if missing or unexpected or misshaped:
        parts = [f"{len(items)} {label} key(s): " + "; ".join(sorted(items))
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                 if items]
        raise ValueError("EnhancedVLM state dict does not match the config. " + " | ".join(parts))
    return converted


def load_original_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` (no code unpickled) or safetensors; a state dict or one under "model" /
    "state_dict"."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"{path} holds no state dict (tensors by name, or one under 'model').")
    return ckpt


# ---------------------------------------------------------------------------------------------------------------------
# parity against the installed package
# ---------------------------------------------------------------------------------------------------------------------
def _upstream_module():
    try:
        from ssm_bridge import model as upstream
    except ImportError as err:
        raise ImportError("The parity check runs upstream's own EnhancedVLM: pip install ssm-bridge==0.0.2 "
                          "(pure Python, needs only torch).") from err
    return upstream


def upstream_model(original: Dict[str, torch.Tensor], upstream_config) -> nn.Module:
    """The installed package's ``EnhancedVLM`` with ``original`` loaded strictly, in eval mode."""
    upstream = _upstream_module()
    model = upstream.EnhancedVLM(upstream.VLMConfig(**upstream_config_dict(upstream_config)))
    model.load_state_dict(original, strict=True)
    return model.eval()


@torch.no_grad()
def parity_report(model: nn.Module, original: Dict[str, torch.Tensor], upstream_config, batch_size: int = 2,
                  seq_len: int = 8, atol: float = 1e-4, seed: int = 0) -> dict:
    """Logits of ``model`` vs the installed package's ``EnhancedVLM`` (both fp32, eval) on the same seeded random
    images (N(0, 1), the config's size) and token ids. Our logits are compared over upstream's vocabulary; a column
    added for the image placeholder is reported separately."""
    u = upstream_config_dict(upstream_config)
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch_size, 3, u["img_size"], u["img_size"], generator=g)
    ids = torch.randint(0, u["vocab_size"], (batch_size, seq_len), generator=g)
    ref = upstream_model(original, u)(pixels, ids).float()
    model.eval()
    logits = model_text_logits(model, pixels, ids).float()
    ours = logits[..., : ref.shape[-1]]
    diff = (ours - ref).abs()
    report = {
        "reference": "ssm_bridge 0.0.2 EnhancedVLM.forward (installed package), eval, float32",
        "model": type(model).__name__,
        "images_shape": list(pixels.shape), "input_ids_shape": list(ids.shape),
        "max_abs_diff": diff.max().item(), "mean_abs_diff": diff.mean().item(),
        "max_abs_logit": ref.abs().max().item(),
        "argmax_agreement": (ours.argmax(-1) == ref.argmax(-1)).float().mean().item(),
        "atol": atol, "passed": bool(diff.max().item() <= atol),
    }
    if logits.shape[-1] > ref.shape[-1]:
        report["image_token_logit_max"] = logits[..., ref.shape[-1]:].max().item()
        report["argmax_is_image_token"] = bool((logits.argmax(-1) >= ref.shape[-1]).any())
    return report


def convert(checkpoint: str, out: Optional[str] = None, upstream_config=None, push_to_hub: Optional[str] = None,
            atol: float = 1e-4, allow_parity_failure: bool = False, overwrite: bool = False,
            check_only: bool = False, target: Optional[str] = None, image_token_id: Optional[int] = None) -> dict:
    """Checkpoint -> parity report (and, with ``out``, the saved ``SsmVlmForConditionalGeneration`` folder with
    ``parity_report.json`` and a model card). Returns the report."""
    if not check_only and out is None:
        raise ValueError("Pass out (a folder) or check_only=True.")
    if out is not None and not check_only:
        from .output import check_out_dir

        check_out_dir(out, overwrite, source=checkpoint)
    original = load_original_checkpoint(checkpoint)
    u = infer_upstream_config(original, upstream_config)
    config = config_from_enhanced_vlm(u, target=target, image_token_id=image_token_id)
    model = build_model(config)
    missing, unexpected = model.load_state_dict(convert_state_dict(original, config), strict=False)
    if missing or unexpected:  # convert_state_dict already accounted for every key: this would be our bug
        raise RuntimeError(f"Converted keys do not fit the model: missing {missing}, unexpected {unexpected}")
    report = parity_report(model, original, u, atol=atol)
    report["upstream_config"] = u
    print(json.dumps(report, indent=2))
    if not report["passed"] and not allow_parity_failure:
        raise RuntimeError(f"Parity check failed: max |diff| {report['max_abs_diff']:.3e} > atol {atol}")
    if check_only:
        return report
    if not hasattr(model, "save_pretrained"):
        raise ValueError("Only SsmVlmForConditionalGeneration can be saved (target='vlm'); the parts composition "
                         "serves --check-only.")
    from .output import save_converted

    save_converted(out, model, report, overwrite=overwrite, source=checkpoint,
                   card=dict(family="ssm_vlm", variant="ssm-bridge-vlm", base_model=None, license="mit",
                             source_checkpoint=os.path.basename(str(checkpoint)), parity=report,
                             pipeline_tag="image-text-to-text"),
                   push_to_hub=push_to_hub)
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="EnhancedVLM state dict: .pt/.pth (torch.save) or .safetensors")
    ap.add_argument("--upstream-config", "--upstream_config", dest="upstream_config", default=None,
                    help="JSON file of VLMConfig fields (head counts, dropouts, eps); shapes fill in the rest")
    ap.add_argument("--out", default=None, help="output folder (save_pretrained)")
    ap.add_argument("--check-only", "--check_only", dest="check_only", action="store_true",
                    help="only convert and print the parity report")
    ap.add_argument("--push-to-hub", "--push_to_hub", dest="push_to_hub", default=None, metavar="REPO")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    ap.add_argument("--image-token-id", "--image_token_id", dest="image_token_id", type=int, default=None,
                    help="reuse this id of upstream's vocabulary as the image placeholder (default: a new id)")
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--allow_parity_failure", action="store_true")
    args = ap.parse_args(argv)
    if not args.check_only and not args.out:
        ap.error("pass --out DIR, or --check-only")
    upstream_config = json.loads(Path(args.upstream_config).read_text()) if args.upstream_config else None
    return convert(args.checkpoint, args.out, upstream_config, push_to_hub=args.push_to_hub, atol=args.atol,
                   allow_parity_failure=args.allow_parity_failure, overwrite=args.overwrite,
                   check_only=args.check_only, image_token_id=args.image_token_id)


if __name__ == "__main__":
    main()
