"""Compose an ``SsmVlmForConditionalGeneration`` from a vision checkpoint folder and a causal-LM checkpoint folder.

    ssmvl compose-vlm --vision DIR --language DIR --out DIR [--projector mlp] [--fusion prefix] [--overwrite] \
        [--push-to-hub REPO]

Vision folders: a transformers SigLIP / CLIP checkpoint (the full dual model ``SiglipModel`` / ``CLIPModel``: its
vision part is taken, the text part dropped; or ``SiglipVisionModel`` / ``CLIPVisionModel``), ``ViTModel`` (or a
``ViTForImageClassification``: the backbone is taken), DINOv2, or an ssmvl Vim / VMamba folder (``VimModel`` /
``VMambaModel``, or their image-classification folders). The folder must hold an image processor
(``preprocessor_config.json``) that resizes to the tower's ``image_size``, or one is passed with ``--image-processor``.
Language folders: ssmvl's Mamba LM or any transformers causal LM (Llama, Qwen2, GPT-2, ...), with its tokenizer.
Everything is read from local folders (``local_files_only``; download a Hub repo first, e.g. ``hf download REPO
--local-dir DIR``); ssmvl's own families are loaded with ssmvl's classes, transformers' through its Auto classes.

Steps:
1. load both originals in float32 (strictly: a weight the checkpoint lacks is an error, never a silent random init;
   weights the VLM does not use, e.g. SigLIP's text tower or ViT's pooler, are listed as dropped in the report);
2. add the image token to the tokenizer when it has none (``add_tokens([image_token], special_tokens=True)``) and
   set ``image_token_id``;
3. build ``SsmVlmConfig(vision_config=..., text_config=...)`` and the model; copy the tower and the decoder in
   strictly (``load_state_dict(strict=True)`` on the same classes), then grow the decoder's embeddings (and tied or
   untied LM head) to the tokenizer when the new token needs a row; the old rows are kept as they were;
4. parity, float32: the composed tower's hidden states and the features the projector reads equal the original
   vision model's; the composed model's text-only logits equal the original LM's (over the original vocabulary);
5. save model + ``SsmVlmProcessor`` (image processor + tokenizer) + ``parity_report.json`` + model card through
   ``conversion/output.py``'s ``save_converted`` (never overwrites a non-empty folder without ``overwrite``);
   optional push.

The projector (and, for ``fusion="cross_attention"``, the fusion layers) is freshly initialised: the composed model
does not describe images until it is trained (LLaVA stage 1: tower and LM frozen, projector trained on captions).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ..modeling.configuration_mamba_lm import MambaLMConfig
from ..modeling.configuration_ssm_vlm import FUSION_TYPES, PROJECTOR_TYPES, VISION_TOWER_TYPES, SsmVlmConfig, _side
from ..modeling.configuration_vim import VimConfig
from ..modeling.configuration_vmamba import VMambaConfig
from ..modeling.modeling_mamba_lm import MambaLMForCausalLM
from ..modeling.modeling_ssm_vlm import _TOWER_KWARGS, SsmVlmForConditionalGeneration
from ..modeling.modeling_vim import VimModel
from ..modeling.modeling_vmamba import VMambaModel
from ..modeling.processing_ssm_vlm import SsmVlmProcessor
from .output import check_out_dir, save_converted

# ssmvl's own families: loaded with ssmvl's classes (their folders' auto_map would otherwise load a remote-code copy)
SSMVL_TOWERS = {VimConfig.model_type: VimModel, VMambaConfig.model_type: VMambaModel}
SSMVL_DECODERS = {MambaLMConfig.model_type: MambaLMForCausalLM}
# full dual models whose vision part is the tower (the config's `vision_config`, the checkpoint's vision weights)
DUAL_MODELS = ("siglip", "clip")
TRANSFORMERS_TOWERS = tuple(t for t in VISION_TOWER_TYPES if not t.startswith("ssmvl_"))
FRESH_PREFIXES = ("model.projector.", "fusion.")  # what compose_vlm leaves freshly initialised
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROJECTOR_NOTE = ("The projector{fusion} is freshly initialised (random weights): the tower and the language model are "
                  "the originals, but the model does not describe images until the projector is trained (e.g. LLaVA "
                  "stage 1: tower and LM frozen, projector trained on image-caption pairs).")


class ComposeError(ValueError):
    """An input that cannot be composed; the message names the folder, the problem and the fix."""


# ---------------------------------------------------------------------------------------------------------------------
# reading the folders
# ---------------------------------------------------------------------------------------------------------------------
def _folder(path, role: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"The {role} folder {str(path)!r} does not exist (or is not a folder). compose-vlm "
                                "reads local checkpoint folders only; download a Hub repo first, e.g. "
                                f"`hf download REPO --local-dir DIR`, and pass --{role} DIR.")
    if not (folder / "config.json").is_file():
        raise ComposeError(f"The {role} folder {str(path)!r} has no config.json: it is not a saved model "
                           "(save_pretrained writes config.json next to the weights).")
    return folder


def _model_type(folder: Path) -> str:
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if not model_type:
        raise ComposeError(f"{folder}/config.json has no model_type; cannot tell which model it holds.")
    return model_type


def _auto_config(folder: Path, role: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    except (ValueError, KeyError, OSError) as err:
        raise ComposeError(f"The {role} folder {folder} holds a config this transformers cannot read "
                           f"({type(err).__name__}: {err}).") from err


def _check_loading_info(info: dict, folder: Path, role: str) -> list:
    """Error on weights the checkpoint lacks or holds with another shape; returns the sorted unexpected (unused)
    keys."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k) for k in (info.get("mismatched_keys") or []))
    if missing or mismatched:
        parts = [f"{len(missing)} missing: {missing[:10]}" if missing else "",
                 f"{len(mismatched)} with another shape: {mismatched[:10]}" if mismatched else ""]
        raise ComposeError(f"The {role} checkpoint in {folder} does not hold every weight of its model "
                           f"({'; '.join(p for p in parts if p)}); transformers would initialise those randomly. "
                           "Check that config.json matches the weights.")
    return sorted(info.get("unexpected_keys") or [])


def vision_source(vision):
    """(folder, model_type, tower config, note): checks from config.json alone (no weights read) that the folder holds
    a vision tower compose-vlm can use."""
    folder = _folder(vision, "vision")
    model_type = _model_type(folder)
    if model_type in SSMVL_TOWERS:
        return folder, model_type, SSMVL_TOWERS[model_type].config_class.from_pretrained(folder), None
    config, note = _auto_config(folder, "vision"), None
    if model_type in DUAL_MODELS:  # a full SigLIP / CLIP: its vision part
        config = config.vision_config
        note = f"the vision part of {model_type!r} ({config.model_type})"
    if config.model_type not in TRANSFORMERS_TOWERS:
        raise ComposeError(f"The vision folder {folder} holds a {model_type!r} model, which is not a vision tower "
                           "compose-vlm can use; use a transformers SigLIP / CLIP (full or vision model), ViT or "
                           "DINOv2 checkpoint, or an ssmvl Vim / VMamba folder "
                           f"(tower types: {TRANSFORMERS_TOWERS + tuple(SSMVL_TOWERS)}).")
    return folder, model_type, config, note


def load_vision(vision) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """The original vision tower, float32, eval mode: the very class the VLM builds for its config (so the weights
    move over by name), loaded by its own ``from_pretrained``. Returns (model, info for the report)."""
    folder, model_type, config, note = vision_source(vision)
    info = {"folder": str(vision), "model_type": model_type}
    if note:
        info["taken"] = note
    if model_type in SSMVL_TOWERS:
        model, loading = SSMVL_TOWERS[model_type].from_pretrained(folder, config=config, dtype=torch.float32,
                                                                  local_files_only=True, output_loading_info=True)
    else:
        from transformers import AutoModel

        model, loading = AutoModel.from_pretrained(folder, config=config, dtype=torch.float32, trust_remote_code=True,
                                                   local_files_only=True, output_loading_info=True,
                                                   **_TOWER_KWARGS.get(config.model_type, {}))
    dropped = _check_loading_info(loading, folder, "vision")
    info.update({"class": type(model).__name__, "dropped_keys": len(dropped), "dropped_key_examples": dropped[:8]})
    return model.eval(), info


def language_source(language):
    """(folder, model_type, config): checks from config.json alone (no weights read) that the folder holds a
    decoder-only causal LM: ssmvl's Mamba LM or a type transformers' AutoModelForCausalLM knows."""
    folder = _folder(language, "language")
    model_type = _model_type(folder)
    if model_type in SSMVL_DECODERS:
        return folder, model_type, SSMVL_DECODERS[model_type].config_class.from_pretrained(folder)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = _auto_config(folder, "language")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(config, "is_encoder_decoder", False):
        raise ComposeError(f"The language folder {folder} holds a {model_type!r} model, which is not a decoder-only "
                           "causal language model; pass an ssmvl Mamba LM folder or a transformers causal LM "
                           "(Llama, Qwen2, GPT-2, ... anything AutoModelForCausalLM loads).")
    return folder, model_type, config


def load_language(language) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """The original causal LM, float32, eval mode (ssmvl's Mamba LM with ssmvl's class, any other through
    ``AutoModelForCausalLM``). Returns (model, info for the report)."""
    folder, model_type, _ = language_source(language)
    info = {"folder": str(language), "model_type": model_type}
    if model_type in SSMVL_DECODERS:
        model, loading = SSMVL_DECODERS[model_type].from_pretrained(folder, dtype=torch.float32, local_files_only=True,
                                                                    output_loading_info=True)
    else:
        from transformers import AutoModelForCausalLM

        model, loading = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=True,
                                                              local_files_only=True, output_loading_info=True)
    dropped = _check_loading_info(loading, folder, "language")
    info.update({"class": type(model).__name__, "dropped_keys": len(dropped), "dropped_key_examples": dropped[:8]})
    return model.eval(), info


def load_image_processor(vision, image_processor=None):
    """``image_processor`` (an image processor, or a folder holding one) or the one saved in the vision folder."""
    from transformers import AutoImageProcessor

    if image_processor is not None and not isinstance(image_processor, (str, Path)):
        return image_processor
    folder = Path(image_processor if image_processor is not None else vision)
    if not any((folder / name).is_file() for name in IMAGE_PROCESSOR_FILES):
        raise ComposeError(
            f"No image processor in {folder} (no {' or '.join(IMAGE_PROCESSOR_FILES)}). Save the one the tower was "
            f"trained with there, e.g. `SiglipImageProcessor(size={{'height': S, 'width': S}}).save_pretrained("
            f"{str(folder)!r})` (S = the tower's image_size), or pass image_processor=... (an image processor or a "
            "folder holding one; CLI: --image-processor DIR).")
    try:
        return AutoImageProcessor.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    except (ValueError, OSError, KeyError) as err:
        raise ComposeError(f"The image processor in {folder} cannot be loaded ({type(err).__name__}: {err}).") from err


def load_tokenizer(language, tokenizer=None):
    """``tokenizer`` (a tokenizer, or a folder holding one) or the one saved in the language folder."""
    from transformers import AutoTokenizer

    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer
    folder = Path(tokenizer if tokenizer is not None else language)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ComposeError(f"No tokenizer in {folder} (none of {TOKENIZER_FILES}). Save the language model's tokenizer "
                           f"there (`tokenizer.save_pretrained({str(folder)!r})`) or pass tokenizer=... "
                           "(CLI: --tokenizer DIR).")
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    except (ValueError, OSError, KeyError, TypeError) as err:
        raise ComposeError(f"The tokenizer in {folder} cannot be loaded ({type(err).__name__}: {err}).") from err


def _processor_pixels_shape(image_processor) -> Tuple[int, ...]:
    """Shape of pixel_values the processor makes from one odd-sized RGB image."""
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.full((37, 53, 3), 128, dtype=np.uint8))
    return tuple(image_processor(images=image, return_tensors="pt")["pixel_values"].shape)


# ---------------------------------------------------------------------------------------------------------------------
# the image token
# ---------------------------------------------------------------------------------------------------------------------
def _single_id(tokenizer, token: str) -> Optional[int]:
    """The id of ``token`` when the tokenizer knows it and encodes the text as exactly that id (SsmVlmProcessor's
    test); None otherwise (a text that merely encodes to one other id, e.g. after normalisation, does not count)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        return None
    return token_id if tokenizer.encode(token, add_special_tokens=False) == [token_id] else None


def ensure_image_token(tokenizer, image_token: str) -> Tuple[int, bool]:
    """(id of ``image_token``, whether it was added): reuses the token when the tokenizer has it as one token, else
    ``add_tokens([image_token], special_tokens=True)`` (on the tokenizer given: it is changed in place)."""
    token_id = _single_id(tokenizer, image_token)
    if token_id is not None:
        return token_id, False
    tokenizer.add_tokens([image_token], special_tokens=True)
    token_id = _single_id(tokenizer, image_token)
    if token_id is None:
        raise ComposeError(f"The tokenizer still splits {image_token!r} after add_tokens(special_tokens=True): "
                           f"{tokenizer.encode(image_token, add_special_tokens=False)}; pick another image_token.")
    return token_id, True


# ---------------------------------------------------------------------------------------------------------------------
# weights and parity
# ---------------------------------------------------------------------------------------------------------------------
def _load_strict(target: torch.nn.Module, source: torch.nn.Module, name: str) -> int:
    """Copy ``source``'s state dict into ``target`` (same class and config): every key must match. Returns the count."""
    state = source.state_dict()
    try:
        result = target.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise RuntimeError(f"Copying the {name} weights into the composed model failed: {err}") from err
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"The {name} weights do not fit the composed model's {name}: missing "
                           f"{sorted(result.missing_keys)[:10]}, unexpected {sorted(result.unexpected_keys)[:10]}.")
    return len(state)


def _reference_features(hidden: torch.Tensor, config: SsmVlmConfig, tower) -> torch.Tensor:
    """The tokens the projector reads, cut from the original tower's ``hidden_states[vision_feature_layer]``."""
    model_type = config.vision_config.model_type
    if model_type == VMambaConfig.model_type:
        return hidden.flatten(2).transpose(1, 2)  # (b, C, h, w) -> (b, h*w, C)
    n_prefix = config.num_vision_prefix_tokens
    if config.vision_feature_select_strategy == "full" or n_prefix == 0:
        return hidden
    if model_type == VimConfig.model_type:
        index = tower.cls_token_index(hidden.shape[1] - 1)
        return torch.cat([hidden[:, :index], hidden[:, index + 1:]], dim=1)
    return hidden[:, n_prefix:]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise RuntimeError(f"Parity: shapes differ, composed {tuple(a.shape)} vs original {tuple(b.shape)}.")
    return (a.float() - b.float()).abs().max().item()


@torch.no_grad()
def parity_report(model: SsmVlmForConditionalGeneration, vision_model, language_model, old_vocab: int,
                  atol: float = 1e-5, seed: int = 0, batch_size: int = 2, seq_len: int = 12) -> dict:
    """Composed vs original, float32, eval mode, on seeded random inputs: the tower's hidden states (every entry), the
    features the projector reads, the text-only logits over the original vocabulary, and the embedding rows kept."""
    config = model.config
    model.eval()
    g = torch.Generator().manual_seed(seed)
    h, w = _side(config.image_size)
    pixels = torch.randn(batch_size, config.num_channels, h, w, generator=g)
    ref_hidden = vision_model(pixels, output_hidden_states=True, return_dict=True).hidden_states
    ours_hidden = model.model.vision_tower(pixels, output_hidden_states=True, return_dict=True).hidden_states
    if len(ref_hidden) != len(ours_hidden):
        raise RuntimeError(f"Parity: the original tower returns {len(ref_hidden)} hidden states, the composed one "
                           f"{len(ours_hidden)}.")
    vision_all = max(_max_diff(a, b) for a, b in zip(ours_hidden, ref_hidden))
    ref_features = _reference_features(ref_hidden[config.vision_feature_layer], config, vision_model)
    features = model.model.select_vision_features(pixels)
    vision_features = _max_diff(features, ref_features)

    ids = torch.randint(0, old_vocab, (batch_size, seq_len), generator=g)
    ids[ids == config.image_token_id] = (config.image_token_id + 1) % old_vocab  # text only
    ref_logits = language_model(input_ids=ids).logits
    logits = model(input_ids=ids).logits[..., :old_vocab]
    text = _max_diff(logits, ref_logits)

    rows = _max_diff(model.get_input_embeddings().weight[:old_vocab],
                     language_model.get_input_embeddings().weight[:old_vocab])
    ref_head, head = language_model.get_output_embeddings(), model.get_output_embeddings()
    if ref_head is not None and head is not None:
        rows = max(rows, _max_diff(head.weight[:old_vocab], ref_head.weight[:old_vocab]))
    worst = max(vision_all, vision_features, text, rows)
    return {
        "reference": "the original vision model and causal LM, loaded by their own from_pretrained, float32, eval",
        "images_shape": list(pixels.shape),
        "input_ids_shape": list(ids.shape),
        "vision_hidden_states_max_abs_diff": vision_all,
        "vision_features_max_abs_diff": vision_features,
        "vision_features_shape": list(features.shape),
        "text_logits_max_abs_diff": text,
        "text_logits_max_abs": ref_logits.abs().max().item(),
        "original_vocab_size": old_vocab,
        "kept_embedding_rows_max_abs_diff": rows,
        "atol": atol,
        "passed": bool(worst <= atol),
    }


# ---------------------------------------------------------------------------------------------------------------------
# compose
# ---------------------------------------------------------------------------------------------------------------------
def compose_vlm(
    vision: str,
    language: str,
    out: str,
    projector_type: str = "mlp",
    projector_config: Optional[dict] = None,
    fusion: str = "prefix",
    image_token: str = "<image>",
    vision_feature_layer: int = -1,
    vision_feature_select_strategy: Optional[str] = None,
    overwrite: bool = False,
    push_to_hub: Optional[str] = None,
    *,
    image_processor: Union[None, str, Path, Any] = None,
    tokenizer: Union[None, str, Path, Any] = None,
    dtype: str = "float32",
    atol: float = 1e-5,
    allow_parity_failure: bool = False,
    seed: int = 0,
) -> dict:
    """Vision folder + causal-LM folder -> a saved ``SsmVlmForConditionalGeneration`` folder ``out`` with its
    ``SsmVlmProcessor``, ``parity_report.json`` and a model card; returns the report (see the module docstring).

    ``projector_type`` / ``projector_config`` / ``fusion`` / ``image_token`` / ``vision_feature_layer`` /
    ``vision_feature_select_strategy`` (None: "default") are ``SsmVlmConfig``'s. ``image_processor`` / ``tokenizer``:
    an object or a folder, instead of the ones saved in the vision / language folder. ``dtype``: the saved weights'
    dtype (parity always runs in float32). A non-empty ``out`` is refused unless ``overwrite``; it is written aside and
    swapped in only once everything was written. ``push_to_hub``: a repo id to push the folder to."""
    if projector_type not in PROJECTOR_TYPES or projector_type == "patch_linear":
        raise ComposeError(f"projector_type={projector_type!r}: compose-vlm needs a projector that reads a vision "
                           f"tower, one of {tuple(p for p in PROJECTOR_TYPES if p != 'patch_linear')}.")
    if fusion not in FUSION_TYPES:
        raise ComposeError(f"fusion={fusion!r} is unknown; use one of {FUSION_TYPES}.")
    if dtype not in DTYPES:
        raise ComposeError(f"dtype={dtype!r} is unknown; use one of {tuple(DTYPES)}.")
    vision_dir, _, tower_config, _ = vision_source(vision)  # config-level checks first: no weights read yet
    language_dir, _, text_config = language_source(language)
    for source in (vision_dir, language_dir):
        check_out_dir(out, overwrite, source=source)  # refuse early, touch nothing
    options = dict(projector_type=projector_type, projector_config=projector_config, fusion=fusion,
                   image_token=image_token, vision_feature_layer=vision_feature_layer,
                   vision_feature_select_strategy=vision_feature_select_strategy or "default")
    SsmVlmConfig(vision_config=copy.deepcopy(tower_config), text_config=copy.deepcopy(text_config), **options)  # valid?
    processor_images = load_image_processor(vision_dir, image_processor)
    expected = (getattr(tower_config, "num_channels", 3), *_side(tower_config.image_size))
    got = _processor_pixels_shape(processor_images)
    if got[1:] != expected:
        raise ComposeError(f"The image processor makes pixel_values of shape {got[1:]} (channels, height, width) but "
                           f"the vision tower takes {expected} (its image_size); save an image processor that resizes "
                           f"to the tower's image_size in the vision folder or pass image_processor=....")
    tok = load_tokenizer(language_dir, tokenizer)
    named = getattr(tok, "image_token", None)  # SsmVlmProcessor writes the tokenizer's own image_token if it has one
    if named not in (None, image_token):
        raise ComposeError(f"The tokenizer names {named!r} as its image token, not {image_token!r}; pass "
                           f"image_token={named!r} (CLI: --image-token {named!r}).")

    vision_model, vision_info = load_vision(vision_dir)
    language_model, language_info = load_language(language_dir)
    old_vocab = language_model.get_input_embeddings().weight.shape[0]
    image_token_id, token_added = ensure_image_token(tok, image_token)

    config = SsmVlmConfig(vision_config=copy.deepcopy(vision_model.config),
                          text_config=copy.deepcopy(language_model.config), image_token_id=image_token_id, **options)

    torch.manual_seed(seed)  # the fresh projector (and the new embedding rows) are reproducible
    model = SsmVlmForConditionalGeneration(config)
    n_tower = _load_strict(model.model.vision_tower, vision_model, "vision tower")
    n_decoder = _load_strict(model.language_model, language_model, "language model")
    new_vocab = max(old_vocab, len(tok), image_token_id + 1)
    if new_vocab > old_vocab:  # transformers' mean_resizing: new rows drawn around the old rows' mean
        model.resize_token_embeddings(new_vocab)
    loaded = ({f"model.vision_tower.{k}" for k in vision_model.state_dict()}
              | {f"language_model.{k}" for k in language_model.state_dict()})
    fresh = sorted(k for k in model.state_dict() if k not in loaded)
    unexpected_fresh = [k for k in fresh if not k.startswith(FRESH_PREFIXES)]
    if unexpected_fresh:
        raise RuntimeError("Composed weights neither copied nor part of the projector / fusion: "
                           f"{unexpected_fresh[:10]}")
    if getattr(language_model, "generation_config", None) is not None:
        model.generation_config = copy.deepcopy(language_model.generation_config)  # eos / pad / bos of the LM

    parity = parity_report(model, vision_model, language_model, old_vocab, atol=atol, seed=seed)
    del vision_model, language_model
    processor = SsmVlmProcessor.from_config(config, processor_images, tok)
    if config.uses_image_placeholders and processor.image_token_id != image_token_id:  # checked above; never false
        raise RuntimeError(f"The processor's image token id {processor.image_token_id} is not {image_token_id}.")

    fresh_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith(FRESH_PREFIXES))
    fresh_modules = sorted({p for p in FRESH_PREFIXES if any(k.startswith(p) for k in fresh)})
    report = {
        "vision": vision_info,
        "language": language_info,
        "projector_type": projector_type,
        "fusion": fusion,
        "fresh_modules": [m.rstrip(".") for m in fresh_modules],
        "fresh_parameters": fresh_params,
        "projector": PROJECTOR_NOTE.format(fusion=" (and the cross-attention fusion)" if fusion != "prefix" else ""),
        "copied_tensors": {"vision_tower": n_tower, "language_model": n_decoder},
        "image_token": image_token,
        "image_token_id": image_token_id,
        "image_token_added": token_added,
        "vocab_size_before": old_vocab,
        "vocab_size_after": model.config.text_config.vocab_size,
        "embeddings_resized": new_vocab > old_vocab,
        "num_image_tokens": config.num_image_tokens,
        "dtype": dtype,
        "parity": parity,
        "out": str(out),
    }
    print(json.dumps(report, indent=2))
    if not parity["passed"] and not allow_parity_failure:
        raise RuntimeError(f"Parity check failed (atol {atol}): {json.dumps(parity)}")
    model.to(DTYPES[dtype])
    card = dict(
        family="ssm_vlm", pipeline_tag="image-text-to-text", tags=["vision-language", "composed"],
        description=(f"A vision-language model composed with `ssmvl compose-vlm` from the vision tower "
                     f"`{vision_dir.name}` ({vision_info['class']}) and the language model `{language_dir.name}` "
                     f"({language_info['class']}), joined by a `{projector_type}` projector ({fusion} fusion). "
                     f"**The projector is freshly initialised: train it before use.**"),
        conversion={"vision": f"{vision_dir.name} ({vision_info['model_type']}, {vision_info['class']})",
                    "language": f"{language_dir.name} ({language_info['model_type']}, {language_info['class']})",
                    "image token": f"{image_token} (id {image_token_id}{', added' if token_added else ''})",
                    "fresh (random) modules": ", ".join(report["fresh_modules"])},
        parity=parity,
        notes=[report["projector"],
               f"Prompts hold one `{image_token}` where each image goes (e.g. "
               f"`\"{image_token} What is in the image?\"`); the processor expands it to the "
               f"{config.num_image_tokens} image tokens of the model."],
    )
    save_converted(out, model, report, overwrite=overwrite, source=vision_dir, processor=processor, card=card,
                   push_to_hub=push_to_hub)
    return report


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="ssmvl compose-vlm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--vision", required=True, metavar="DIR", help="vision checkpoint folder (SigLIP / CLIP / ViT / "
                    "DINOv2 / ssmvl Vim / VMamba) with its image processor")
    ap.add_argument("--language", required=True, metavar="DIR", help="causal LM folder (ssmvl Mamba LM, Llama, "
                    "Qwen2, GPT-2, ...) with its tokenizer")
    ap.add_argument("--out", required=True, metavar="DIR", help="output folder")
    ap.add_argument("--projector", default="mlp", choices=[p for p in PROJECTOR_TYPES if p != "patch_linear"])
    ap.add_argument("--projector-config", "--projector_config", dest="projector_config", default=None,
                    metavar="JSON", help="projector keyword arguments as JSON, e.g. '{\"num_queries\": 64}'")
    ap.add_argument("--fusion", default="prefix", choices=list(FUSION_TYPES))
    ap.add_argument("--image-token", "--image_token", dest="image_token", default="<image>")
    ap.add_argument("--vision-feature-layer", "--vision_feature_layer", dest="vision_feature_layer", type=int,
                    default=-1)
    ap.add_argument("--vision-feature-select-strategy", "--vision_feature_select_strategy",
                    dest="vision_feature_select_strategy", default=None, choices=["default", "full"])
    ap.add_argument("--image-processor", "--image_processor", dest="image_processor", default=None, metavar="DIR",
                    help="folder with the image processor (default: the vision folder's)")
    ap.add_argument("--tokenizer", default=None, metavar="DIR", help="folder with the tokenizer (default: the "
                    "language folder's)")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES), help="dtype of the saved weights")
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--allow-parity-failure", "--allow_parity_failure", dest="allow_parity_failure",
                    action="store_true")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    ap.add_argument("--push-to-hub", "--push_to_hub", dest="push_to_hub", default=None, metavar="REPO")
    args = ap.parse_args(argv)
    try:
        projector_config = json.loads(args.projector_config) if args.projector_config else None
        compose_vlm(args.vision, args.language, args.out, projector_type=args.projector,
                    projector_config=projector_config, fusion=args.fusion, image_token=args.image_token,
                    vision_feature_layer=args.vision_feature_layer,
                    vision_feature_select_strategy=args.vision_feature_select_strategy, overwrite=args.overwrite,
                    push_to_hub=args.push_to_hub, image_processor=args.image_processor, tokenizer=args.tokenizer,
                    dtype=args.dtype, atol=args.atol, allow_parity_failure=args.allow_parity_failure)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"ssmvl compose-vlm: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
