"""Convert an official Vim checkpoint (github hustvl/Vim; the .pth files of hustvl/Vim-{tiny,small,base}-midclstok)
to a transformers ``VimForImageClassification`` folder, with a logits parity report.

    python -m ssmvl.conversion.convert_vim_to_hf --checkpoint vim_t.pth --variant vim-tiny --out DIR \
        [--push_to_hub REPO] [--id2label imagenet_labels.json]

``--variant``: vim-tiny / vim-small / vim-base (``configs/*.json``) or a path to a JSON file of VimConfig arguments.

Key map (official ``VisionMamba.state_dict()`` -> ours): every key ``k`` becomes ``"vim." + k`` except the head,
``head.weight`` / ``head.bias``, which stays. The official names (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``layers.{i}.norm``, ``layers.{i}.mixer.{in_proj, conv1d, x_proj, dt_proj, A_log, D, conv1d_b, x_proj_b, dt_proj_b,
A_b_log, D_b, out_proj}``, ``norm_f``) are kept unchanged inside ``VimModel``; see hustvl/Vim ``vim/models_mamba.py``
and ``mamba-1p1p1/mamba_ssm/modules/mamba_simple.py`` (in_proj / out_proj without bias, convs with bias).

Steps: read the checkpoint without unpickling code (``torch.load(weights_only=True)`` or safetensors) -> check that it
is the requested variant -> pure ``convert_state_dict`` with strict key accounting -> strict ``load_state_dict`` ->
parity of our logits against ``original_forward`` (an independent functional forward over the *original* keys, using
only ``selective_scan_ref``) -> ``save_pretrained`` with the image processor and a model card -> optional push.

Image processor: ``vim_image_processor(config)`` is transformers' ``CLIPImageProcessor`` set up as the official eval
transform (hustvl/Vim ``vim/datasets.py``: Resize(int(224 / 0.875)) bicubic on the short side, CenterCrop(224),
ImageNet mean / std), with ``do_convert_rgb=True`` so grayscale / RGBA / palette images work. Saved as
``preprocessor_config.json`` it loads with ``AutoImageProcessor`` without ssmvl.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .output import check_out_dir, save_converted
from ..modeling.configuration_vim import VimConfig
from ..modeling.modeling_vim import VimForImageClassification
from ..modeling.ssm_ops import selective_scan_ref


PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"
VARIANTS = ("vim-tiny", "vim-small", "vim-base")
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)  # timm.data.constants, used by hustvl/Vim vim/datasets.py
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
# config fields that define a variant (the head size does not: fine-tuned checkpoints keep their own num_labels)
ARCH_FIELDS = ("hidden_size", "num_hidden_layers", "patch_size", "image_size", "num_channels", "state_size",
               "intermediate_size", "conv_kernel", "time_step_rank", "rms_norm", "bimamba", "use_cls_token",
               "if_abs_pos_embed")


# ---------------------------------------------------------------------------------------------------------------------
# configs and checkpoints
# ---------------------------------------------------------------------------------------------------------------------
def load_preset(variant: str, **overrides) -> VimConfig:
    """VimConfig from ``configs/<variant>.json``, or from ``variant`` itself when it is a path to a JSON file of
    VimConfig arguments (keys starting with "_" are comments)."""
    path = Path(variant) if str(variant).endswith(".json") else PRESETS_DIR / f"{variant}.json"
    if not path.is_file():
        known = sorted(p.stem for p in PRESETS_DIR.glob("vim-*.json"))
        raise ValueError(f"Unknown Vim variant {variant!r}; presets in {PRESETS_DIR}: {known}")
    data = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_") and k != "model_type"}
    data.update(overrides)
    return VimConfig(**data)


def load_original_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """The official state dict: ``torch.load(weights_only=True)`` (no code is unpickled) or safetensors; the model
    weights are under ``"model"`` in the official .pth files (hustvl/Vim ``vim/main.py`` saves ``{'model': ...}``)."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(ckpt, dict) and key in ckpt and isinstance(ckpt[key], dict):
            return ckpt[key]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"{path} holds neither a state dict nor a dict with one under 'model'.")
    return ckpt


def original_key_to_hf(key: str) -> str:
    """Official key -> ours (see the module docstring)."""
    return key if key.startswith("head.") else "vim." + key


def hf_key_to_original(key: str) -> str:
    return key[len("vim."):] if key.startswith("vim.") else key


def expected_original_shapes(config: VimConfig) -> Dict[str, tuple]:
    """Official key -> shape for ``config``, read from our model built on the meta device (one source of truth)."""
    with torch.device("meta"):
        model = VimForImageClassification(config)
    return {hf_key_to_original(k): tuple(v.shape) for k, v in model.state_dict().items()}


def infer_config_from_state_dict(original: Dict[str, torch.Tensor], **overrides) -> VimConfig:
    """Read the architecture from the shapes of an official state dict. What shapes cannot tell (the cls position,
    pooling, eps, residual dtype) takes the official v2 values (middle cls token, its state read by the head)."""
    def need(key):
        if key not in original:
            raise ValueError(f"Cannot infer a Vim config: the checkpoint has no {key!r} "
                             f"(first keys: {sorted(original)[:8]})")
        return original[key]

    proj = need("patch_embed.proj.weight")  # (D, C, p, p)
    hidden, channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = len({k.split(".")[1] for k in original if k.startswith("layers.") and k.endswith(".norm.weight")})
    a_log = need("layers.0.mixer.A_log")  # (I, N)
    intermediate, state = a_log.shape
    conv_kernel = need("layers.0.mixer.conv1d.weight").shape[-1]  # (I, 1, K)
    dt_rank = need("layers.0.mixer.dt_proj.weight").shape[1]  # (I, R)
    use_cls = "cls_token" in original
    kw = dict(hidden_size=hidden, num_channels=channels, patch_size=patch, num_hidden_layers=depth,
              intermediate_size=intermediate, expand=max(1, intermediate // hidden), state_size=state,
              conv_kernel=conv_kernel, time_step_rank=dt_rank, use_cls_token=use_cls,
              final_pool_type="cls" if use_cls else "mean", if_abs_pos_embed="pos_embed" in original,
              bimamba="layers.0.mixer.A_b_log" in original, rms_norm="norm_f.bias" not in original,
              use_bias="layers.0.mixer.in_proj.bias" in original,
              use_conv_bias="layers.0.mixer.conv1d.bias" in original,
              num_labels=original["head.weight"].shape[0] if "head.weight" in original else 0)
    if "pos_embed" in original:
        side = math.isqrt(original["pos_embed"].shape[1] - int(use_cls))
        if side * side != original["pos_embed"].shape[1] - int(use_cls):
            raise ValueError(f"pos_embed has {original['pos_embed'].shape[1]} positions: not a square grid"
                             f"{' plus a cls token' if use_cls else ''} (strided patch embeddings are not supported).")
        kw["image_size"] = side * patch
    kw.update(overrides)
    return VimConfig(**kw)


def check_variant(original: Dict[str, torch.Tensor], config: VimConfig, variant: str = "the requested variant"):
    """Raise a ValueError naming the first mismatching key / shape when ``original`` is not ``variant``."""
    expected = expected_original_shapes(config)
    depth = len({k.split(".")[1] for k in original if k.startswith("layers.") and k.endswith(".norm.weight")})
    if depth != config.num_hidden_layers:
        raise ValueError(f"Checkpoint is not {variant}: it has {depth} blocks (layers.0..{depth - 1}), "
                         f"{variant} has num_hidden_layers={config.num_hidden_layers}.")
    first = ("patch_embed.proj.weight", "pos_embed", "layers.0.mixer.A_log", "layers.0.mixer.dt_proj.weight")
    for key in sorted(expected, key=lambda k: (k not in first, first.index(k) if k in first else 0)):
        shape = expected[key]
        if key.startswith("head."):
            continue
        if isinstance(original.get(key), torch.Tensor) and tuple(original[key].shape) != shape:
            try:
                inferred = infer_config_from_state_dict(original)
                hint = ", ".join(f"{f}={getattr(inferred, f)}" for f in ("hidden_size", "num_hidden_layers",
                                                                         "state_size", "patch_size", "image_size"))
                hint = f" The checkpoint looks like {hint}; pick the matching --variant."
            except Exception:  # only a hint: a checkpoint too broken to read a config from gets none
                hint = ""
            raise ValueError(f"Checkpoint is not {variant}: {key} has shape {tuple(original[key].shape)}, "
                             f"{variant} expects {shape}.{hint}")


# ---------------------------------------------------------------------------------------------------------------------
# the pure conversion
# ---------------------------------------------------------------------------------------------------------------------
def convert_state_dict(original: Dict[str, torch.Tensor], config: VimConfig) -> Dict[str, torch.Tensor]:
    """Official Vim state dict -> ``VimForImageClassification`` state dict. Strict: missing, unexpected and mis-shaped
    keys are all listed (by their official names) in one ValueError."""
    expected = expected_original_shapes(config)
    missing = sorted(k for k in expected if k not in original)
    unexpected = sorted(k for k in original if k not in expected)
    not_tensors = sorted(f"{k} ({type(v).__name__})" for k, v in original.items() if not isinstance(v, torch.Tensor))
    misshaped = sorted(f"{k}: checkpoint {tuple(original[k].shape)} vs expected {expected[k]}"
                       for k in expected if isinstance(original.get(k), torch.Tensor)
                       and tuple(original[k].shape) != expected[k])
    if missing or unexpected or misshaped or not_tensors:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped),
                             ("non-tensor", not_tensors)):
            if items:
                parts.append(f"{len(items)} {label} key(s): " + "; ".join(items))
        raise ValueError("Vim checkpoint does not match the config. " + " | ".join(parts))
    return {original_key_to_hf(k): v.detach().clone().contiguous() for k, v in original.items()}


# ---------------------------------------------------------------------------------------------------------------------
# independent reference: the official forward written functionally over the original keys
# ---------------------------------------------------------------------------------------------------------------------
def _norm(x, sd, prefix, config):
    x = x.float()
    if config.rms_norm:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config.layer_norm_epsilon) * sd[prefix + "weight"]
    return F.layer_norm(x, x.shape[-1:], sd[prefix + "weight"], sd[prefix + "bias"], config.layer_norm_epsilon)


def _mamba_direction(xz, sd, p, sfx, a_name, config):
    """mamba_simple.py ``mamba_inner_fn_no_out_proj`` for one direction: xz (b, 2I, L) -> y (b, I, L)."""
    x, z = xz.chunk(2, dim=1)
    seqlen, k = x.shape[-1], config.conv_kernel
    x = F.silu(F.conv1d(x, sd[f"{p}conv1d{sfx}.weight"], sd.get(f"{p}conv1d{sfx}.bias"), padding=k - 1,
                        groups=x.shape[1])[..., :seqlen])
    x_dbl = torch.einsum("bil,ri->brl", x, sd[f"{p}x_proj{sfx}.weight"])  # (b, R + 2N, L)
    dt, B, C = torch.split(x_dbl, [config.time_step_rank, config.state_size, config.state_size], dim=1)
    dt = torch.einsum("brl,ir->bil", dt, sd[f"{p}dt_proj{sfx}.weight"])  # (b, I, L), bias added in the scan
    A = -torch.exp(sd[f"{p}{a_name}"].float())
    return selective_scan_ref(x, dt, A, B, C, D=sd[f"{p}D{sfx}"].float(), z=z,
                              delta_bias=sd[f"{p}dt_proj{sfx}.bias"].float(), delta_softplus=True)


@torch.no_grad()
def original_forward(sd: Dict[str, torch.Tensor], config: VimConfig, pixel_values: torch.Tensor) -> torch.Tensor:
    """Logits of the official ``VisionMamba.forward`` (eval mode, bimamba v2), computed directly from the official
    state dict ``sd`` in float32: patch conv, cls insertion, pos embed, add-then-norm blocks, final norm, pool, head."""
    x = F.conv2d(pixel_values.float(), sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"],
                 stride=config.patch_size).flatten(2).transpose(1, 2)  # (b, M, D)
    b, m, _ = x.shape
    pos = None
    if config.use_cls_token:
        pos = m // 2 if config.use_middle_cls_token else 0
        x = torch.cat([x[:, :pos], sd["cls_token"].expand(b, -1, -1), x[:, pos:]], dim=1)
    if config.if_abs_pos_embed:
        x = x + sd["pos_embed"]
    hidden, residual = x, None
    for i in range(config.num_hidden_layers):
        p = f"layers.{i}.mixer."
        residual = hidden if residual is None else residual + hidden
        h = _norm(residual, sd, f"layers.{i}.norm.", config)
        xz = torch.einsum("bld,ed->bel", h, sd[p + "in_proj.weight"])  # (b, 2I, L)
        if p + "in_proj.bias" in sd:
            xz = xz + sd[p + "in_proj.bias"][None, :, None]
        y = _mamba_direction(xz, sd, p, "", "A_log", config)
        if config.bimamba:
            y_b = _mamba_direction(xz.flip([-1]), sd, p, "_b", "A_b_log", config)
            y = y + y_b.flip([-1])
            if config.divide_output:
                y = y / 2
        hidden = F.linear(y.transpose(1, 2), sd[p + "out_proj.weight"], sd.get(p + "out_proj.bias"))
    out = _norm(residual + hidden, sd, "norm_f.", config)
    if config.final_pool_type == "cls":
        feat = out[:, pos]
    elif config.final_pool_type == "mean":
        feat = out.mean(1)
    else:
        feat = out[:, -1]
    return F.linear(feat, sd["head.weight"], sd.get("head.bias")) if "head.weight" in sd else feat


def parity_report(model: VimForImageClassification, original: Dict[str, torch.Tensor], config: VimConfig,
                  pixel_values: Optional[torch.Tensor] = None, atol: float = 1e-4, seed: int = 0) -> dict:
    """Compare our logits (model in eval mode, fp32) with ``original_forward`` on the same pixels; the default input
    is 2 seeded random images at the config's size. Returns max/mean abs diff, top-1 agreement, pass flag."""
    if pixel_values is None:
        g = torch.Generator().manual_seed(seed)
        pixel_values = torch.randn(2, config.num_channels, config.image_size, config.image_size, generator=g)
    model.eval()
    with torch.no_grad():
        ours = model(pixel_values.float()).logits.float()
    # the reference in fp32, as our model holds the weights (a half-precision checkpoint is loaded as fp32)
    original = {k: v.float() if v.is_floating_point() else v for k, v in original.items()}
    ref = original_forward(original, config, pixel_values).float()
    diff = (ours - ref).abs()
    return {
        "reference": "original_forward (functional official forward over the original keys, selective_scan_ref)",
        "input_shape": list(pixel_values.shape),
        "max_abs_diff": diff.max().item(),
        "mean_abs_diff": diff.mean().item(),
        "max_abs_logit": ref.abs().max().item(),
        "top1_agreement": (ours.argmax(-1) == ref.argmax(-1)).float().mean().item(),
        "atol": atol,
        "passed": bool(diff.max().item() <= atol),
    }


# ---------------------------------------------------------------------------------------------------------------------
# processor, card, CLI
# ---------------------------------------------------------------------------------------------------------------------
def vim_image_processor(config: VimConfig, crop_pct: float = 0.875):
    """transformers' CLIPImageProcessor (PIL backend without torchvision) matching the official eval transform:
    short side resized to int(image_size / crop_pct) (bicubic), center crop image_size, ImageNet mean / std,
    ``do_convert_rgb=True`` (grayscale, RGBA, palette -> RGB). (CLIP's, not ViT's: transformers 5.0's
    ViTImageProcessor refuses a `shortest_edge` size; CLIP's does this in every 5.x release.)"""
    from transformers import CLIPImageProcessor
    from transformers.image_utils import PILImageResampling

    return CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": int(config.image_size / crop_pct)},
        resample=PILImageResampling.BICUBIC, do_center_crop=True,
        crop_size={"height": config.image_size, "width": config.image_size},
        do_rescale=True, do_normalize=True, image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD), do_convert_rgb=True,
    )


def convert(checkpoint: str, variant: str, out: str, push_to_hub: Optional[str] = None,
            id2label: Optional[dict] = None, atol: float = 1e-4, allow_parity_failure: bool = False,
            overwrite: bool = False) -> dict:
    """Checkpoint file -> saved model folder; returns the parity report (also written as parity_report.json).
    A non-empty ``out`` is refused unless ``overwrite``; the folder is written aside and swapped in at the end."""
    check_out_dir(out, overwrite, source=checkpoint)
    original = load_original_checkpoint(checkpoint)
    num_labels = original["head.weight"].shape[0] if "head.weight" in original else 0
    config = load_preset(variant, num_labels=num_labels)
    check_variant(original, config, variant)
    if id2label:
        config.id2label = {int(k): v for k, v in id2label.items()}
        config.label2id = {v: k for k, v in config.id2label.items()}
    model = VimForImageClassification(config)
    model.load_state_dict(convert_state_dict(original, config), strict=True)
    report = parity_report(model, original, config, atol=atol)
    print(json.dumps(report, indent=2))
    if not report["passed"] and not allow_parity_failure:
        raise RuntimeError(f"Parity check failed: max |diff| {report['max_abs_diff']:.3e} > atol {atol}")
    save_converted(out, model, report, overwrite=overwrite, source=checkpoint, processor=vim_image_processor(config),
                   card=dict(family="vim", variant=variant, base_model=None, license="apache-2.0",
                             datasets=["imagenet-1k"], source_checkpoint=os.path.basename(str(checkpoint)),
                             parity=report, pipeline_tag="image-classification"),
                   push_to_hub=push_to_hub)
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="official .pth (weights under 'model') or .safetensors")
    ap.add_argument("--variant", required=True, help=f"preset name {VARIANTS} or a path to a VimConfig JSON file")
    ap.add_argument("--out", required=True, help="output folder (save_pretrained)")
    ap.add_argument("--push-to-hub", "--push_to_hub", dest="push_to_hub", default=None, metavar="REPO")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    ap.add_argument("--id2label", default=None, help="JSON file {index: label} (e.g. the ImageNet-1k class names)")
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--allow_parity_failure", action="store_true")
    args = ap.parse_args(argv)
    id2label = json.loads(Path(args.id2label).read_text()) if args.id2label else None
    convert(args.checkpoint, args.variant, args.out, push_to_hub=args.push_to_hub, id2label=id2label,
            atol=args.atol, allow_parity_failure=args.allow_parity_failure, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
