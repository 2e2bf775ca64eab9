"""Convert a Mamba-1 language model checkpoint folder to an ssmvl ``MambaLMForCausalLM`` folder, with a parity report.

    python -m ssmvl.conversion.convert_mamba_to_hf --checkpoint DIR --out DIR \
        [--source auto|state_spaces|transformers] [--dtype float32|bfloat16|float16] [--push-to-hub REPO] [--overwrite]

Sources (``DIR`` holds ``config.json`` and ``pytorch_model.bin`` or ``model.safetensors``, sharded or not):

``state_spaces``  the original checkpoints of github state-spaces/mamba (``state-spaces/mamba-130m`` ...). Config
                  fields (``mamba_ssm/models/config_mamba.py``): ``d_model``, ``n_layer``, ``vocab_size``,
                  ``ssm_cfg`` (kwargs of ``mamba_ssm/modules/mamba_simple.py`` ``Mamba``: ``d_state`` 16, ``d_conv`` 4,
                  ``expand`` 2, ``dt_rank`` "auto" = ceil(d_model / 16), ``conv_bias`` True, ``bias`` False, ``dt_min``,
                  ``dt_max``, ``dt_init``, ``dt_scale``, ``dt_init_floor``), ``rms_norm``, ``residual_in_fp32``,
                  ``fused_add_norm`` (a kernel choice, same math), ``pad_vocab_size_multiple``, ``tie_embeddings``;
                  newer versions add ``d_intermediate`` / ``attn_layer_idx`` / ``attn_cfg`` (MLP and attention layers,
                  not supported here) and ``ssm_cfg["layer"]`` ("Mamba1" only here).
                  ``MambaLMHeadModel`` (``mamba_ssm/models/mixer_seq_simple.py``) rounds the vocabulary up to a
                  multiple of ``pad_vocab_size_multiple`` and ties ``lm_head.weight`` to ``backbone.embedding.weight``;
                  its keys are ``backbone.embedding.weight``, ``backbone.layers.{i}.mixer.{in_proj, conv1d, x_proj,
                  dt_proj, A_log, D, out_proj}.*``, ``backbone.layers.{i}.norm.weight``, ``backbone.norm_f.weight``,
                  ``lm_head.weight``.
``transformers``  a folder written by transformers' ``MambaForCausalLM.save_pretrained`` (``state-spaces/mamba-*-hf``).

Key map: the only rename is ``backbone.embedding.weight`` -> ``backbone.embeddings.weight`` (transformers'
``MambaModel`` does the same in a load hook, and its own converter ``convert_mamba_ssm_checkpoint_to_pytorch.py`` keeps
every other name); all other keys are identical in both sources and in ours. ``lm_head.weight`` is optional when the
embeddings are tied; if it is present and differs from the embedding matrix, the model is converted untied (and said).

Parity: our logits vs transformers' ``MambaForCausalLM`` (an independent implementation: its own scan, conv and
norm code) on the same weights and a fixed random prompt. For a transformers folder the reference is built from the
folder's own config.json; for a state-spaces folder (``mamba_ssm`` needs CUDA and is not a dependency) from the
converted config. The report is written to ``parity_report.json``.

Safety: weights are read only with ``torch.load(..., weights_only=True)`` or safetensors (no code is unpickled); an
existing non-empty output folder is never touched without ``--overwrite``, and even then only after the new folder
has been written completely (it is written next to it, then swapped in).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from .output import check_out_dir, save_converted
from ..modeling.configuration_mamba_lm import MambaLMConfig
from ..modeling.modeling_mamba_lm import MambaLMForCausalLM


SOURCES = ("state_spaces", "transformers")
EMBED_ORIGINAL = "backbone.embedding.weight"  # mamba_ssm MixerModel.embedding
EMBED = "backbone.embeddings.weight"  # transformers MambaModel.embeddings (ours too)
LM_HEAD = "lm_head.weight"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class ConversionError(ValueError):
    """A checkpoint folder, config or state dict that cannot be converted; the message names the problem and the fix."""


# ---------------------------------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------------------------------
def pad_vocab_size(vocab_size: int, multiple: int) -> int:
    """state-spaces ``MambaLMHeadModel.__init__``: the vocabulary is rounded up to a multiple of
    ``pad_vocab_size_multiple`` (e.g. 50277 -> 50280 for 8)."""
    if multiple is None or multiple <= 1:
        return vocab_size
    return vocab_size + (-vocab_size) % multiple


def _positive_int(cfg: dict, key: str, where: str, default=None) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise ConversionError(f"{where} has no {key!r}; it is required (a state-spaces config.json has d_model, "
                              f"n_layer, vocab_size, ssm_cfg).")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConversionError(f"{where}: {key} must be a positive integer, got {value!r}.")
    return value


def config_from_state_spaces(cfg: dict, **overrides) -> MambaLMConfig:
    """``MambaLMConfig`` from a state-spaces/mamba ``config.json`` (fields of ``mamba_ssm/models/config_mamba.py``)."""
    where = "state-spaces config"
    d_model = _positive_int(cfg, "d_model", where)
    n_layer = _positive_int(cfg, "n_layer", where)
    vocab = _positive_int(cfg, "vocab_size", where, default=50277)  # MambaConfig default
    multiple = cfg.get("pad_vocab_size_multiple", 8)
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ConversionError(f"{where}: pad_vocab_size_multiple must be an integer >= 1, got {multiple!r}.")
    if not cfg.get("rms_norm", True):
        raise ConversionError(
            f"{where}: rms_norm=False (LayerNorm with bias) is not supported: MambaLMForCausalLM uses RMSNorm, as "
            "every released state-spaces Mamba checkpoint does. Convert a checkpoint trained with rms_norm=True."
        )
    if cfg.get("d_intermediate", 0):
        raise ConversionError(f"{where}: d_intermediate={cfg['d_intermediate']} (an MLP after each mixer) is not "
                              "supported; only pure Mamba-1 stacks (d_intermediate=0) convert.")
    if cfg.get("attn_layer_idx"):
        raise ConversionError(f"{where}: attn_layer_idx={cfg['attn_layer_idx']} (hybrid attention layers) is not "
                              "supported; only pure Mamba-1 stacks convert.")
    ssm = dict(cfg.get("ssm_cfg") or {})
    layer = ssm.pop("layer", "Mamba1")
    if layer != "Mamba1":
        raise ConversionError(f"{where}: ssm_cfg.layer={layer!r} is not supported; only Mamba1 mixers convert.")
    d_state = _positive_int(ssm, "d_state", where + " ssm_cfg", default=16)
    d_conv = _positive_int(ssm, "d_conv", where + " ssm_cfg", default=4)
    expand = ssm.get("expand", 2)
    if isinstance(expand, bool) or not isinstance(expand, (int, float)) or expand <= 0:
        raise ConversionError(f"{where}: ssm_cfg.expand must be a positive number, got {expand!r}.")
    intermediate = int(expand * d_model)  # mamba_simple.py: d_inner = int(expand * d_model)
    dt_rank = ssm.get("dt_rank", "auto")
    dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
    if isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank <= 0:
        raise ConversionError(f"{where}: ssm_cfg.dt_rank must be 'auto' or a positive integer, got {dt_rank!r}.")
    kwargs = dict(
        vocab_size=pad_vocab_size(vocab, multiple), hidden_size=d_model, num_hidden_layers=n_layer,
        state_size=d_state, conv_kernel=d_conv, expand=int(expand) if float(expand).is_integer() else 2,
        intermediate_size=intermediate, time_step_rank=dt_rank, use_conv_bias=bool(ssm.get("conv_bias", True)),
        use_bias=bool(ssm.get("bias", False)), layer_norm_epsilon=float(cfg.get("norm_epsilon", 1e-5)),
        residual_in_fp32=bool(cfg.get("residual_in_fp32", True)),
        tie_word_embeddings=bool(cfg.get("tie_embeddings", True)),
        time_step_min=float(ssm.get("dt_min", 0.001)), time_step_max=float(ssm.get("dt_max", 0.1)),
        time_step_scale=float(ssm.get("dt_scale", 1.0)), time_step_floor=float(ssm.get("dt_init_floor", 1e-4)),
        time_step_init_scheme=ssm.get("dt_init", "random"),
    )
    kwargs.update(overrides)
    try:
        return MambaLMConfig(**kwargs)
    except ValueError as err:
        raise ConversionError(f"{where} is inconsistent: {err}") from err


_DROP_KEYS = ("model_type", "architectures", "transformers_version", "_name_or_path", "auto_map", "torch_dtype",
              "dtype", "use_mambapy", "use_associative_scan", "layer_types")


def config_from_transformers(cfg: dict, **overrides) -> MambaLMConfig:
    """``MambaLMConfig`` from the config.json of a transformers ``MambaForCausalLM`` (``model_type`` "mamba"), or of an
    ssmvl folder (``ssmvl_mamba``). The attribute names are the same; sizes are checked against each other."""
    where = "transformers Mamba config"
    model_type = cfg.get("model_type", "mamba")
    if model_type not in ("mamba", MambaLMConfig.model_type):
        raise ConversionError(f"{where}: model_type={model_type!r} is not a Mamba-1 model ('mamba'); "
                              + ("Mamba-2 is not supported." if model_type == "mamba2" else "pick the right folder."))
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        _positive_int(cfg, key, where)
    kwargs = {k: v for k, v in cfg.items() if k not in _DROP_KEYS}
    hidden, expand = cfg["hidden_size"], cfg.get("expand", 2)
    inter = cfg.get("intermediate_size")
    if model_type == "mamba" and inter is not None and inter != int(expand * hidden):
        # transformers' MambaConfig always uses expand * hidden_size; a different value is a hand-edited config
        raise ConversionError(f"{where} is inconsistent: intermediate_size={inter} but expand * hidden_size = "
                              f"{expand} * {hidden} = {int(expand * hidden)}. Fix one of them in config.json.")
    kwargs.update(overrides)
    try:
        return MambaLMConfig(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConversionError(f"{where} is inconsistent: {err}") from err


def detect_source(cfg: dict, state_dict_keys=None) -> str:
    """'state_spaces' for a mamba_ssm config (d_model / n_layer / ssm_cfg), 'transformers' for a MambaConfig."""
    if any(k in cfg for k in ("d_model", "n_layer", "ssm_cfg")):
        return "state_spaces"
    if cfg.get("model_type") in ("mamba", MambaLMConfig.model_type) or "hidden_size" in cfg:
        return "transformers"
    if state_dict_keys is not None and EMBED_ORIGINAL in state_dict_keys:
        return "state_spaces"
    raise ConversionError("Cannot tell the checkpoint format from config.json: it has neither d_model/n_layer "
                          "(state-spaces) nor model_type 'mamba'/hidden_size (transformers). Pass --source.")


def config_from_dict(cfg: dict, source: str) -> MambaLMConfig:
    if source == "state_spaces":
        return config_from_state_spaces(cfg)
    if source == "transformers":
        return config_from_transformers(cfg)
    raise ConversionError(f"Unknown source {source!r}; choose one of {SOURCES} or 'auto'.")


# ---------------------------------------------------------------------------------------------------------------------
# the pure conversion
# ---------------------------------------------------------------------------------------------------------------------
def expected_shapes(config: MambaLMConfig) -> Dict[str, Tuple[int, ...]]:
    """Our key -> shape for ``config``, read from the model built on the meta device (one source of truth)."""
    with torch.device("meta"):
        model = MambaLMForCausalLM(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _infer_hint(original: Dict[str, torch.Tensor]) -> str:
    """What the weights look like, to help fix a config that does not match them."""
    try:
        emb = original.get(EMBED_ORIGINAL, original.get(EMBED))
        a_log = original["backbone.layers.0.mixer.A_log"]
        dt = original["backbone.layers.0.mixer.dt_proj.weight"]
        conv = original["backbone.layers.0.mixer.conv1d.weight"]
        n_layer = len({k.split(".")[2] for k in original if k.startswith("backbone.layers.")})
        return (f" The weights look like vocab_size={emb.shape[0]}, hidden_size={emb.shape[1]}, "
                f"num_hidden_layers={n_layer}, intermediate_size={a_log.shape[0]}, state_size={a_log.shape[1]}, "
                f"time_step_rank={dt.shape[1]}, conv_kernel={conv.shape[-1]}; fix config.json to match.")
    except (KeyError, AttributeError, IndexError):
        return ""


def convert_state_dict(original: Dict[str, torch.Tensor], config: MambaLMConfig,
                       source: str = "state_spaces") -> Dict[str, torch.Tensor]:
    """State dict of a state-spaces ``MambaLMHeadModel`` or a transformers ``MambaForCausalLM`` -> ours.

    Pure (the inputs are not modified) and strict: every key of our model must be present with its exact shape and no
    other key may be left over; otherwise one ``ConversionError`` (a ``ValueError``) lists the missing, unexpected and
    mis-shaped keys by name, with expected vs got shapes. ``lm_head.weight`` may be absent when
    ``config.tie_word_embeddings``; if present it must then equal the embedding matrix (see ``untie_if_needed``)."""
    if source not in SOURCES:
        raise ConversionError(f"Unknown source {source!r}; choose one of {SOURCES}.")
    renamed: Dict[str, torch.Tensor] = {}
    for key, value in original.items():
        new = EMBED if key == EMBED_ORIGINAL else key  # the only rename (both sources may use either name)
        if new in renamed:
            raise ConversionError(f"The checkpoint has both {EMBED_ORIGINAL!r} and {EMBED!r}; keep one of them.")
        renamed[new] = value
    expected = expected_shapes(config)
    tied = bool(config.tie_word_embeddings)
    missing = sorted(k for k in expected if k not in renamed and not (tied and k == LM_HEAD))
    unexpected = sorted(k for k in renamed if k not in expected)
    misshaped = sorted(f"{k}: expected {expected[k]}, got {tuple(renamed[k].shape)}"
                       for k in expected if isinstance(renamed.get(k), torch.Tensor)
                       and tuple(renamed[k].shape) != expected[k])
    not_tensors = sorted(k for k, v in renamed.items() if not isinstance(v, torch.Tensor))
    if missing or unexpected or misshaped or not_tensors:
        parts = [f"{len(items)} {label} key(s): " + "; ".join(items)
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped),
                                      ("non-tensor", not_tensors)) if items]
        hint = _infer_hint(original) if misshaped or missing else ""
        raise ConversionError(f"The {source} checkpoint does not match the config "
                              f"(hidden_size={config.hidden_size}, num_hidden_layers={config.num_hidden_layers}, "
                              f"vocab_size={config.vocab_size}). " + " | ".join(parts) + "." + hint)
    if tied and LM_HEAD in renamed and not torch.equal(renamed[LM_HEAD], renamed[EMBED]):
        raise ConversionError(f"config.tie_word_embeddings=True but {LM_HEAD} differs from {EMBED}; convert with "
                              "tie_word_embeddings=False (convert() does this itself, see untie_if_needed).")
    out = {k: v.detach().clone().contiguous() for k, v in renamed.items()}
    if tied:
        out[LM_HEAD] = out[EMBED]  # one tensor under both names, as the tied model's state_dict() has it
    return out


def untie_if_needed(original: Dict[str, torch.Tensor], config: MambaLMConfig) -> Tuple[MambaLMConfig, Optional[str]]:
    """If the config ties the embeddings but the checkpoint's lm_head differs from them, return an untied copy of the
    config and a note saying so (nothing is dropped silently); otherwise the config unchanged and None."""
    emb = original.get(EMBED_ORIGINAL, original.get(EMBED))
    head = original.get(LM_HEAD)
    if not config.tie_word_embeddings or head is None or emb is None or head.shape != emb.shape:
        return config, None
    if torch.equal(head, emb):
        return config, None
    diff = (head.float() - emb.float()).abs().max().item()
    untied = MambaLMConfig(**{**config.to_dict(), "tie_word_embeddings": False})
    note = (f"{LM_HEAD} differs from the embedding matrix (max |diff| {diff:.3e}) although the config ties them; "
            "converted UNTIED (tie_word_embeddings=False) so that both matrices are kept exactly.")
    return untied, note


# ---------------------------------------------------------------------------------------------------------------------
# reading a checkpoint folder
# ---------------------------------------------------------------------------------------------------------------------
def _load_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # SafetensorError (truncated / bad header), OSError
        raise ConversionError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}). It is "
                              "probably truncated or corrupted: download or copy it again.") from err


def _load_bin(path: Path) -> Dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as err:  # UnpicklingError, RuntimeError (bad zip), EOFError
        raise ConversionError(
            f"{path} could not be read with torch.load(weights_only=True) ({type(err).__name__}: {str(err)[:300]}). "
            "It is truncated or corrupted (download it again), or it pickles objects other than tensors (re-save "
            "it as a plain state dict or as safetensors; nothing else is unpickled, on purpose)."
        ) from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path} does not hold a state dict (a dict of tensors); got {type(obj).__name__}.")
    return obj


def _load_sharded(index_path: Path, loader) -> Dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except Exception as err:
        raise ConversionError(f"{index_path} is not a valid shard index ({err}).") from err
    state = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise ConversionError(f"{index_path} lists the shard {shard!r}, which is not in {index_path.parent}.")
        state.update(loader(shard_path))
    return state


def read_config(checkpoint_dir) -> dict:
    """config.json of a checkpoint folder as a dict, with clear errors for a missing path / file / bad JSON."""
    d = Path(checkpoint_dir)
    if not d.exists():
        raise ConversionError(f"Checkpoint path {str(d)!r} does not exist. Pass the folder that holds config.json "
                              "and pytorch_model.bin / model.safetensors (download it first, e.g. with "
                              "`huggingface-cli download state-spaces/mamba-130m --local-dir DIR`).")
    if not d.is_dir():
        raise ConversionError(f"Checkpoint path {str(d)!r} is a file; pass the folder that contains it together "
                              "with its config.json.")
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise ConversionError(f"{d} has no config.json. A checkpoint folder needs config.json next to its weights "
                              "(state-spaces: d_model, n_layer, vocab_size, ssm_cfg; transformers: MambaConfig).")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConversionError(f"{cfg_path} is not valid JSON ({err}); fix or download it again.") from err
    if not isinstance(cfg, dict):
        raise ConversionError(f"{cfg_path} must hold a JSON object, got {type(cfg).__name__}.")
    return cfg


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def find_weights(checkpoint_dir) -> Path:
    """The weights file of a folder; safetensors is preferred over .bin when both exist."""
    d = Path(checkpoint_dir)
    for name in _WEIGHT_FILES:
        if (d / name).is_file():
            return d / name
    present = sorted(p.name for p in d.iterdir())[:20]
    raise ConversionError(f"{d} has no weights: expected model.safetensors or pytorch_model.bin (or their sharded "
                          f".index.json), found {present}.")


def load_weights(path: Path) -> Dict[str, torch.Tensor]:
    path = Path(path)
    if path.name.endswith(".index.json"):
        return _load_sharded(path, _load_safetensors if "safetensors" in path.name else _load_bin)
    return _load_safetensors(path) if path.suffix == ".safetensors" else _load_bin(path)


def load_checkpoint_dir(checkpoint_dir) -> Tuple[dict, Dict[str, torch.Tensor], Path]:
    """(config.json as a dict, state dict, weights path)."""
    cfg = read_config(checkpoint_dir)
    path = find_weights(checkpoint_dir)
    return cfg, load_weights(path), path


# ---------------------------------------------------------------------------------------------------------------------
# parity against transformers' MambaForCausalLM
# ---------------------------------------------------------------------------------------------------------------------
def transformers_reference_config(config: MambaLMConfig):
    """transformers ``MambaConfig`` with the same architecture as ``config``."""
    from transformers import MambaConfig

    hf = MambaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, state_size=config.state_size,
        num_hidden_layers=config.num_hidden_layers, layer_norm_epsilon=config.layer_norm_epsilon,
        expand=config.expand, conv_kernel=config.conv_kernel, use_bias=config.use_bias,
        use_conv_bias=config.use_conv_bias, residual_in_fp32=config.residual_in_fp32,
        time_step_rank=config.time_step_rank, tie_word_embeddings=config.tie_word_embeddings,
        pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
    )
    hf.intermediate_size = config.intermediate_size  # MambaConfig derives it from expand; ours may be explicit
    return hf


@torch.no_grad()
def parity_report(model: MambaLMForCausalLM, state_dict: Dict[str, torch.Tensor], reference_config=None,
                  atol: float = 1e-4, seed: int = 0, batch: int = 2, seqlen: int = 16) -> dict:
    """Logits of ``model`` vs transformers' ``MambaForCausalLM`` (built from ``reference_config``, default: the same
    architecture as ``model.config``) holding ``state_dict``, in float32, on a seeded random prompt."""
    from transformers import MambaForCausalLM

    config = model.config
    hf_config = reference_config if reference_config is not None else transformers_reference_config(config)
    with torch.device("meta"):
        reference = MambaForCausalLM(hf_config)
    reference = reference.to_empty(device="cpu")
    missing, unexpected = reference.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=False)
    missing = [k for k in missing if not (k == LM_HEAD and hf_config.tie_word_embeddings)]
    if missing or unexpected:
        raise ConversionError(f"The transformers reference does not take these weights: missing {missing}, "
                              f"unexpected {unexpected}.")
    if hf_config.tie_word_embeddings:
        reference.lm_head.weight = reference.backbone.embeddings.weight
    reference.float().eval()
    ours_dtype = next(model.parameters()).dtype
    model.float().eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, seqlen), generator=g)
    ours = model(ids).logits.float()
    ref = reference(ids).logits.float()
    model.to(ours_dtype)
    diff = (ours - ref).abs()
    return {
        "reference": "transformers.MambaForCausalLM (same weights, float32)",
        "prompt": {"seed": seed, "shape": [batch, seqlen]},
        "max_abs_diff": diff.max().item(),
        "mean_abs_diff": diff.mean().item(),
        "max_abs_logit": ref.abs().max().item(),
        "argmax_agreement": (ours.argmax(-1) == ref.argmax(-1)).float().mean().item(),
        "atol": atol,
        "passed": bool(diff.max().item() <= atol),
    }


# ---------------------------------------------------------------------------------------------------------------------
# folder conversion
# ---------------------------------------------------------------------------------------------------------------------
def _check_out_dir(checkpoint_dir: Path, out_dir: Path, overwrite: bool):
    try:
        check_out_dir(out_dir, overwrite, source=checkpoint_dir)
    except FileExistsError:
        raise
    except ValueError as err:
        raise ConversionError(str(err)) from None


def convert(checkpoint_dir, out_dir, source: str = "auto", push_to_hub: Optional[str] = None,
            dtype: Optional[str] = None, overwrite: bool = False, atol: float = 1e-3,
            allow_parity_failure: bool = False, verbose: bool = True) -> dict:
    """Checkpoint folder -> ssmvl ``MambaLMForCausalLM`` folder (safetensors, modeling code, config with auto_map,
    tokenizer when present, parity_report.json, model card when the renderer exists). Returns the parity report.

    ``dtype``: the dtype to save in ("float32", "bfloat16", "float16"); default: the checkpoint's own dtype. The
    parity check always runs in float32. A parity failure (max |diff| > ``atol``) raises unless
    ``allow_parity_failure``."""
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if checkpoint_dir.exists():  # fail fast, before reading gigabytes (a missing path is reported by the loader)
        _check_out_dir(checkpoint_dir, out_dir, overwrite)
    # cheap checks first: config (sizes validated) and the weights file, then the weights themselves
    cfg = read_config(checkpoint_dir)
    weights_path = find_weights(checkpoint_dir)
    original = None
    if source == "auto":
        try:
            source = detect_source(cfg)
        except ConversionError:
            original = load_weights(weights_path)
            source = detect_source(cfg, original.keys())
    config = config_from_dict(cfg, source)
    if original is None:
        original = load_weights(weights_path)
    config, note = untie_if_needed(original, config)
    notes = [note] if note else []
    if note and verbose:
        print(f"NOTE: {note}", file=sys.stderr)
    state = convert_state_dict(original, config, source)
    save_dtype = DTYPES.get(str(dtype).replace("torch.", ""), None) if dtype not in (None, "auto") else None
    if dtype not in (None, "auto") and save_dtype is None:
        raise ConversionError(f"Unknown dtype {dtype!r}; choose one of float32, bfloat16, float16 or auto.")
    if save_dtype is None:
        save_dtype = state[EMBED].dtype if state[EMBED].is_floating_point() else torch.float32

    config.architectures = ["MambaLMForCausalLM"]
    with torch.device("meta"):
        model = MambaLMForCausalLM(config)
    model = model.to_empty(device="cpu").float()
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    reference_config = None
    if source == "transformers" and cfg.get("model_type", "mamba") == "mamba":
        from transformers import MambaConfig

        reference_config = MambaConfig.from_dict(dict(cfg))  # the folder's own config, read by transformers
        reference_config.tie_word_embeddings = config.tie_word_embeddings  # untied by untie_if_needed, if so
    report = parity_report(model, state, reference_config=reference_config, atol=atol)
    report.update(source=source, checkpoint=str(checkpoint_dir), weights_file=weights_path.name,
                  saved_dtype=str(save_dtype).replace("torch.", ""), notes=notes,
                  num_parameters=sum(p.numel() for p in model.parameters()))
    if verbose:
        print(json.dumps(report, indent=2))
    if not report["passed"] and not allow_parity_failure:
        raise RuntimeError(f"Parity check failed: max |logit diff| {report['max_abs_diff']:.3e} > atol {atol} "
                           "(pass allow_parity_failure=True / --allow-parity-failure to save anyway).")
    model.to(save_dtype)

    # write everything next to out_dir, then swap it in: a failure leaves whatever was there untouched
    _check_out_dir(checkpoint_dir, out_dir, overwrite)
    save_converted(out_dir, model, report, overwrite=overwrite, source=checkpoint_dir,
                   extra_files=[checkpoint_dir / n for n in TOKENIZER_FILES if (checkpoint_dir / n).is_file()],
                   card=dict(family="mamba_lm", model_type=config.model_type, source=source,
                             source_checkpoint=checkpoint_dir.name, base_model=None, license="apache-2.0",
                             pipeline_tag="text-generation", parity=report, notes=list(notes),
                             num_hidden_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
                             vocab_size=config.vocab_size),
                   push_to_hub=push_to_hub)
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m ssmvl.conversion.convert_mamba_to_hf",
                                 description="Convert a state-spaces / transformers Mamba-1 LM checkpoint folder to "
                                             "an ssmvl MambaLMForCausalLM folder, with a logits parity report.")
    ap.add_argument("--checkpoint", required=True, help="folder with config.json and pytorch_model.bin or "
                                                        "model.safetensors")
    ap.add_argument("--out", required=True, help="output folder (must be empty or new unless --overwrite)")
    ap.add_argument("--source", default="auto", choices=("auto",) + SOURCES)
    ap.add_argument("--dtype", default="auto", help="save dtype: auto (the checkpoint's), float32, bfloat16, float16")
    ap.add_argument("--push-to-hub", "--push_to_hub", dest="push_to_hub", default=None, metavar="REPO")
    ap.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out folder")
    ap.add_argument("--atol", type=float, default=1e-3, help="parity tolerance on the logits (default 1e-3)")
    ap.add_argument("--allow-parity-failure", action="store_true")
    args = ap.parse_args(argv)
    try:
        convert(args.checkpoint, args.out, source=args.source, push_to_hub=args.push_to_hub, dtype=args.dtype,
                overwrite=args.overwrite, atol=args.atol, allow_parity_failure=args.allow_parity_failure)
    except (ConversionError, FileExistsError) as err:
        ap.exit(2, f"error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
