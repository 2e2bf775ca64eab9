"""Convert an official VMamba classification checkpoint (MzeroMiko/VMamba, `ckpt["model"]`) to an ssmvl
`VMambaForImageClassification` folder: key map -> pure `convert_state_dict()` -> strict load -> parity report ->
`save_pretrained` (model + modeling code + image processor + model card) -> optional push.

    python -m ssmvl.conversion.convert_vmamba_to_hf --checkpoint vssm1_tiny_0230s_ckpt_epoch_264.pth \
        --variant vmamba-tiny --out vmamba-tiny-hf [--reference-logits upstream_logits.pt] [--push-to user/repo]

Key map (official names from `classification/models/vmamba.py`; `Linear2d` weights may be (out, in, 1, 1)):

    patch_embed.0.* / .2.* / .5.* / .7.*      -> vmamba.patch_embed.conv1 / norm1 / conv2 / norm2   (stem "v2")
    patch_embed.0.* / .2.*                    -> vmamba.patch_embed.conv / norm                      (stem "v1")
    layers.{i}.blocks.{j}.{norm, norm2, mlp.fc1, mlp.fc2, op.in_proj, op.conv2d, op.x_proj_weight,
        op.dt_projs_weight, op.dt_projs_bias, op.A_logs, op.Ds, op.out_norm, op.out_proj}
                                              -> vmamba.layers.{i}.blocks.{j}.<same>, except the stacked
                                                 per-direction projections, split along their first axis (k = 0..3):
        op.x_proj_weight (4, R+2N, d)         -> op.x_proj.{k}.weight (R+2N, d)
        op.dt_projs_weight (4, d, R)          -> op.dt_projs.{k}.weight (d, R)
        op.dt_projs_bias (4, d)               -> op.dt_projs.{k}.bias (d,)
    layers.{i}.downsample.1.* / .3.*          -> vmamba.layers.{i}.downsample.conv / norm            (v2, v3)
    layers.{i}.downsample.{norm,reduction}.*  -> vmamba.layers.{i}.downsample.{norm,reduction}       (v1)
    classifier.norm.*                         -> vmamba.norm.*
    classifier.head.*                         -> classifier.*
Older upstream names (`patch_embed.proj/norm`, `blocks.{j}.ln_1`, `blocks.{j}.self_attention`, top-level `norm` /
`head`) are renamed first, as upstream `VSSM._load_from_state_dict` does; a DDP `module.` prefix is dropped.

The checkpoint is read with `torch.load(weights_only=True)`: nothing in it is executed. Full training checkpoints that
also pickle the training config (a yacs `CfgNode`) cannot be read that way; the error says how to extract `model`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Dict, Optional

import torch

from .output import check_out_dir, save_converted
from ..modeling.configuration_vmamba import VMambaConfig, parse_forward_type
from ..modeling.modeling_vmamba import VMambaForImageClassification


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
VARIANTS = ("vmamba-tiny",)
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
UPSTREAM = "https://github.com/MzeroMiko/VMamba"


class ConversionError(ValueError):
    """A checkpoint that does not match the requested variant / layout; the message names the keys."""


def load_variant_config(variant: str, **overrides) -> VMambaConfig:
    """The preset `configs/<variant>.json` as a VMambaConfig (keys starting with '_' are comments)."""
    path = CONFIG_DIR / f"{variant}.json"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("vmamba-*.json"))
        raise ConversionError(f"Unknown VMamba variant {variant!r}; presets in {CONFIG_DIR}: {known}")
    data = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_") and k != "model_type"}
    data.update(overrides)
    return VMambaConfig(**data)


# ---------------------------------------------------------------------------------------------------------------------
# key map
# ---------------------------------------------------------------------------------------------------------------------
_LEGACY = [  # upstream VSSM._load_from_state_dict renames
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.ln_1\."), r"\1.norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.self_attention\."), r"\1.op."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
]
_BLOCK_PARTS = (
    "norm.weight", "norm.bias", "norm2.weight", "norm2.bias",
    "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
    "op.in_proj.weight", "op.in_proj.bias", "op.conv2d.weight", "op.conv2d.bias",
    "op.x_proj_weight", "op.dt_projs_weight", "op.dt_projs_bias", "op.A_logs", "op.Ds",
    "op.out_norm.weight", "op.out_norm.bias", "op.out_proj.weight", "op.out_proj.bias",
)


# upstream stacked parameter -> the per-direction HF key it is split into ("{k}" = direction 0..3)
_STACKED = {
    "op.x_proj_weight": "op.x_proj.{k}.weight",
    "op.dt_projs_weight": "op.dt_projs.{k}.weight",
    "op.dt_projs_bias": "op.dt_projs.{k}.bias",
}
_SPLIT_KEY = re.compile(r"(.*\.)(op\.(?:x_proj|dt_projs)\.)(\d+)\.(weight|bias)")


def _stacked_name(hf_key: str) -> Optional[str]:
    """HF per-direction key (`....op.x_proj.2.weight`) -> its stacked name in the official layout
    (`....op.x_proj_weight`), or None for any other key."""
    m = _SPLIT_KEY.fullmatch(hf_key)
    if m is None:
        return None
    part = f"{m[2]}{{k}}.{m[4]}"
    return next(m[1] + name for name, split in _STACKED.items() if split == part)


def _legacy_rename(key: str) -> str:
    key = key[len("module."):] if key.startswith("module.") else key
    for pattern, repl in _LEGACY:
        key = pattern.sub(repl, key)
    return key


def map_key(key: str, config: VMambaConfig) -> Optional[str]:
    """Official key (after legacy renames) -> HF key, or None when it has no place in the HF model. The stacked
    per-direction projections keep their official name (`vmamba.layers.{i}.blocks.{j}.op.x_proj_weight`): a key of
    `stacked_shapes`, split into the per-direction HF keys by `convert_state_dict`."""
    if config.patchembed == "v2":
        stem = {"0": "conv1", "2": "norm1", "5": "conv2", "7": "norm2"}
    else:
        stem = {"0": "conv", "2": "norm"}
    m = re.fullmatch(r"patch_embed\.(\d+)\.(weight|bias)", key)
    if m:
        return f"vmamba.patch_embed.{stem[m[1]]}.{m[2]}" if m[1] in stem else None
    m = re.fullmatch(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)", key)
    if m:
        return f"vmamba.layers.{m[1]}.blocks.{m[2]}.{m[3]}" if m[3] in _BLOCK_PARTS else None
    m = re.fullmatch(r"layers\.(\d+)\.downsample\.(\w+)\.(weight|bias)", key)
    if m:
        down = {"v1": {"norm": "norm", "reduction": "reduction"}}.get(config.downsample, {"1": "conv", "3": "norm"})
        return f"vmamba.layers.{m[1]}.downsample.{down[m[2]]}.{m[3]}" if m[2] in down else None
    m = re.fullmatch(r"classifier\.(norm|head)\.(weight|bias)", key)
    if m:
        return f"vmamba.norm.{m[2]}" if m[1] == "norm" else f"classifier.{m[2]}"
    return None


def expected_shapes(config: VMambaConfig) -> Dict[str, torch.Size]:
    """HF key -> shape, from the model built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = VMambaForImageClassification(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def stacked_shapes(config: VMambaConfig) -> Dict[str, torch.Size]:
    """`expected_shapes` with the per-direction keys of each block folded back into upstream's stacked parameters,
    e.g. `vmamba.layers.0.blocks.0.op.x_proj_weight`: (4, R + 2N, d_inner): the shapes the checkpoint must have."""
    shapes: Dict[str, torch.Size] = {}
    parts: Dict[str, list] = {}
    for key, shape in expected_shapes(config).items():
        stacked = _stacked_name(key)
        if stacked is None:
            shapes[key] = shape
        else:
            parts.setdefault(stacked, []).append((int(_SPLIT_KEY.fullmatch(key)[3]), shape))
            shapes.setdefault(stacked, None)  # keep the model's key order
    for stacked, items in parts.items():
        items.sort()
        assert [k for k, _ in items] == list(range(len(items))) and len({s for _, s in items}) == 1, stacked
        shapes[stacked] = torch.Size((len(items),) + tuple(items[0][1]))
    return shapes


def _split_stacked(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Stacked official-layout keys -> one HF key per direction (a clone each: no shared storage on save)."""
    out = {}
    for key, tensor in state.items():
        name = next((n for n in _STACKED if key.endswith("." + n)), None)
        if name is None:
            out[key] = tensor
            continue
        prefix = key[: -len(name)]
        for k in range(tensor.shape[0]):
            out[prefix + _STACKED[name].format(k=k)] = tensor[k].clone()
    return out


def _shape(t) -> tuple:
    """The shape of a tensor, () for anything else (a broken checkpoint may hold non-tensors)."""
    return tuple(t.shape) if isinstance(t, torch.Tensor) else ()


def describe_checkpoint(original: Dict[str, torch.Tensor]) -> dict:
    """Architecture read off the official keys (to tell a checkpoint of another variant from a broken one); what a
    key cannot tell (absent, not a tensor, too few dimensions) is left out. ``info["sources"]`` names the key each
    value was read from."""
    sd = {_legacy_rename(k): v for k, v in original.items()}
    info: dict = {}
    sources: dict = {}
    depths = {}
    for k in sd:
        m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", k)
        if m:
            depths[int(m[1])] = max(depths.get(int(m[1]), 0), int(m[2]) + 1)
    info["depths"] = [depths[i] for i in sorted(depths)]
    sources["depths"] = "layers.{i}.blocks.{j}.*"
    dims = []
    for i in sorted(depths):
        shape = _shape(sd.get(f"layers.{i}.blocks.0.norm.weight"))
        dims.append(shape[0] if shape else None)
    if dims and None not in dims:  # a stage whose norm is missing or broken: the strict key check names it
        info["hidden_sizes"] = dims
        sources["hidden_sizes"] = ", ".join(f"layers.{i}.blocks.0.norm.weight" for i in sorted(depths))
    a = _shape(sd.get("layers.0.blocks.0.op.A_logs"))
    info["d_state"] = a[1] if len(a) >= 2 else None
    sources["d_state"] = "layers.0.blocks.0.op.A_logs"
    ds = _shape(sd.get("layers.0.blocks.0.op.Ds"))
    if ds and dims and dims[0]:  # (dims[0] may be None: the norm weight is missing)
        info["ssm_ratio"] = ds[0] / 4 / dims[0]
        sources["ssm_ratio"] = "layers.0.blocks.0.op.Ds over layers.0.blocks.0.norm.weight"
    w = _shape(sd.get("layers.0.blocks.0.op.in_proj.weight"))
    if w and ds:
        info["gated"] = w[0] == 2 * (ds[0] // 4)
        sources["gated"] = "layers.0.blocks.0.op.in_proj.weight"
    head = _shape(sd.get("classifier.head.weight"))
    info["num_labels"] = head[0] if head else None
    info["sources"] = sources
    return info


def _check_variant(original, config: VMambaConfig):
    info = describe_checkpoint(original)
    want = dict(depths=list(config.depths), hidden_sizes=list(config.hidden_sizes), d_state=config.d_state,
                ssm_ratio=config.ssm_ratio, gated=not parse_forward_type(config.forward_type)["noz"])
    diffs = {k: (info.get(k), v) for k, v in want.items() if k in info and info[k] is not None and info[k] != v}
    if diffs:
        detail = "; ".join(f"{k}: checkpoint {got} (read from {info['sources'][k]}) vs config {exp}"
                           for k, (got, exp) in diffs.items())
        raise ConversionError(
            f"The checkpoint is another VMamba variant than the one requested ({detail}). Pick the matching "
            f"--variant (presets: {list(VARIANTS)}) or pass a config with these sizes."
        )


def convert_state_dict(original: Dict[str, torch.Tensor], config: VMambaConfig) -> Dict[str, torch.Tensor]:
    """Official VMamba state dict -> state dict of `VMambaForImageClassification(config)`. Pure; strict: raises
    `ConversionError` naming every unexpected, missing or mis-shaped key. The accounting is done in the official
    layout (`stacked_shapes`), so a missing / mis-shaped stacked projection is named as upstream names it
    (`...op.x_proj_weight`); the stacked tensors are then split into `op.x_proj.{k}` / `op.dt_projs.{k}`."""
    _check_variant(original, config)
    shapes = stacked_shapes(config)
    converted, unexpected, misshaped, origin = {}, [], [], {}
    for key, tensor in original.items():
        if not isinstance(tensor, torch.Tensor):
            unexpected.append(f"{key} (not a tensor: {type(tensor).__name__})")
            continue
        new = map_key(_legacy_rename(key), config)
        if new is None or new not in shapes:
            unexpected.append(key)
            continue
        want = shapes[new]
        if tensor.dim() == 4 and len(want) == 2 and tensor.shape[2:] == (1, 1):  # upstream Linear2d stored as conv
            tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])
        if tensor.shape != want:
            misshaped.append(f"{key}: checkpoint {tuple(tensor.shape)}, model {new} expects {tuple(want)}")
            origin[new] = key
            continue
        if new in converted:
            unexpected.append(f"{key} (duplicate of {origin[new]})")
            continue
        converted[new], origin[new] = tensor.detach().clone(), key
    missing = [k for k in shapes if k not in origin]
    missing = [f"{k} (official {k[len('vmamba.'):]}, stacked over the 4 directions)" if _is_stacked(k) else k
               for k in missing]
    problems = []
    if missing:
        problems.append(f"missing ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"unexpected ({len(unexpected)}): {unexpected}")
    if misshaped:
        problems.append(f"mis-shaped ({len(misshaped)}): {misshaped}")
    if problems:
        raise ConversionError("VMamba checkpoint does not match the config:\n  " + "\n  ".join(problems))
    return _split_stacked(converted)


def _is_stacked(key: str) -> bool:
    return any(key.endswith("." + n) for n in _STACKED)


# ---------------------------------------------------------------------------------------------------------------------
# checkpoint reading, processor, card, parity
# ---------------------------------------------------------------------------------------------------------------------
def load_original(path: str, key: str = "model") -> Dict[str, torch.Tensor]:
    """Reads `ckpt[key]` (or a bare state dict) with weights_only=True; no code in the file is run."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError for non-tensor globals (e.g. yacs CfgNode)
        raise ConversionError(
            f"Could not read {path} with torch.load(weights_only=True): {type(err).__name__}: {err}\n"
            "Full training checkpoints pickle the training config too. In an environment that trusts the file "
            "(with yacs installed) extract the weights once:\n"
            f"  python -c \"import torch; c = torch.load('{path}', weights_only=False); "
            f"torch.save(c['{key}'], 'vmamba_model_only.pth')\"\nthen convert vmamba_model_only.pth."
        ) from err
    if isinstance(ckpt, dict) and key in ckpt and isinstance(ckpt[key], dict):
        return ckpt[key]
    if isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt
    keys = list(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
    raise ConversionError(f"{path} has no state dict under {key!r} (top-level keys: {keys}); pass --key.")


def make_image_processor(config: VMambaConfig):
    """Upstream evaluation preprocessing (timm, `TEST.CROP=True`, bicubic): resize the short side to size/0.875 and
    center-crop size x size, ImageNet mean/std. transformers' ConvNext image processor does exactly that."""
    from transformers import ConvNextImageProcessor

    return ConvNextImageProcessor(
        size={"shortest_edge": config.image_size}, crop_pct=0.875, resample=3,  # PIL.Image.BICUBIC
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_rescale=True, do_normalize=True,
    )


def parity_report(model: VMambaForImageClassification, reference_logits: Optional[torch.Tensor] = None,
                  seed: int = 0, batch: int = 2) -> dict:
    """Logits on a fixed input (torch.manual_seed(seed); randn(batch, C, S, S)), compared to
    (a) the same model with the sequential `reference` scan (backend parity) and (b) `reference_logits` when given:
    logits of the upstream model on the same input, produced where the upstream code runs, e.g.
    `torch.manual_seed(0); x = torch.randn(2, 3, 224, 224); torch.save(vssm(x), 'upstream_logits.pt')`."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.num_channels, cfg.image_size, cfg.image_size, generator=g)
    model.eval()
    report = {"input": f"randn({batch}, {cfg.num_channels}, {cfg.image_size}, {cfg.image_size}), seed {seed}"}
    with torch.no_grad():
        logits = model(x).logits.float()
        backends = {}
        for name, module in model.named_modules():
            if hasattr(module, "ssm_backend"):
                backends[name] = module.ssm_backend
                module.ssm_backend = "reference"
        try:
            ref = model(x).logits.float()
        finally:
            for name, module in model.named_modules():
                if name in backends:
                    module.ssm_backend = backends[name]
    report["max_abs_diff_vs_reference_scan"] = float((logits - ref).abs().max())
    report["top1"] = logits.argmax(-1).tolist()
    if reference_logits is not None:
        reference_logits = reference_logits.float().reshape(logits.shape)
        report["max_abs_diff_vs_upstream"] = float((logits - reference_logits).abs().max())
        report["top1_upstream"] = reference_logits.argmax(-1).tolist()
        report["top1_agree"] = report["top1"] == report["top1_upstream"]
    return report


def convert(checkpoint: str, variant: str, out: str, key: str = "model", reference_logits: Optional[str] = None,
            push_to: Optional[str] = None, ssm_backend: str = "auto", config: Optional[VMambaConfig] = None,
            overwrite: bool = False) -> dict:
    """Reads, converts strictly, reports parity, saves model + processor + card to `out` (and pushes). `config`
    replaces the preset of `variant` (e.g. for tests). A non-empty `out` is refused unless `overwrite`; the folder is
    written aside and swapped in at the end."""
    check_out_dir(out, overwrite, source=checkpoint)
    config = config if config is not None else load_variant_config(variant, ssm_backend=ssm_backend)
    original = load_original(checkpoint, key)
    info = describe_checkpoint(original)
    if info.get("num_labels") and info["num_labels"] != config.num_labels:
        config.num_labels = info["num_labels"]
    state = convert_state_dict(original, config)
    model = VMambaForImageClassification(config)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    ref = torch.load(reference_logits, map_location="cpu", weights_only=True) if reference_logits else None
    report = parity_report(model, ref)
    save_converted(out, model, report, overwrite=overwrite, source=checkpoint, processor=make_image_processor(config),
                   card=dict(family="vmamba", variant=variant, parity=report,
                             source_checkpoint=os.path.basename(checkpoint)),
                   push_to_hub=push_to)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="official .pth (ckpt['model']) or a bare state dict")
    parser.add_argument("--variant", default="vmamba-tiny", help=f"preset in configs/ ({', '.join(VARIANTS)})")
    parser.add_argument("--out", required=True, help="output folder for save_pretrained")
    parser.add_argument("--key", default="model", help="state dict key in the checkpoint ('model' or 'model_ema')")
    parser.add_argument("--reference-logits", default=None, help="upstream logits on the parity input (.pt)")
    parser.add_argument("--push-to-hub", "--push_to_hub", "--push-to", dest="push_to", default=None, metavar="REPO",
                        help="Hub repo id to upload the folder to")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--ssm-backend", default="auto")
    args = parser.parse_args(argv)
    report = convert(args.checkpoint, args.variant, args.out, key=args.key, reference_logits=args.reference_logits,
                     push_to=args.push_to, ssm_backend=args.ssm_backend, overwrite=args.overwrite)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
