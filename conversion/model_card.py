"""Model cards (the ``README.md`` of a model folder / Hub repo), rendered from a template in ``model_cards/``.

``render_model_card(model_dir, **metadata) -> str`` reads ``config.json`` (``model_type``, ``architectures``, sizes)
and counts the parameters from the safetensors headers (no weights are loaded), then fills
``model_cards/<family>.md`` or ``model_cards/<model_type>.md`` when such a family template exists, else
``model_cards/default.md``. Templates are ``string.Template`` text; the placeholders are:

``$front_matter`` (YAML, without the ``---`` fences), ``$title``, ``$summary``, ``$usage_intro`` (a paragraph),
``$usage`` (python code, no fences),
``$architecture`` (markdown table rows), ``$metrics``, ``$conversion``, ``$notes`` (whole sections or empty),
``$auto_class``, ``$repo_id``, ``$model_type``, ``$architectures``, ``$num_parameters``, ``$num_parameters_human``,
``$pipeline_tag``, ``$license``. Unknown ``$names`` are left as they are (``safe_substitute``).

Metadata keys understood (all optional): ``repo_id`` (used in the usage snippet), ``title``, ``description``,
``family``, ``variant``, ``license``, ``base_model`` (str or list), ``datasets`` (str or list), ``language``,
``tags`` (extra tags), ``pipeline_tag``, ``metrics`` (``{name: value}`` or a list of ``{"name", "value", "type",
"dataset", "split"}`` dicts; goes to a table and to ``model-index``), ``metrics_dataset`` / ``metrics_split``
(defaults for the dict form), ``parity`` (the converter's report dict), ``source`` / ``source_checkpoint`` /
``conversion`` (dict) for the conversion section, ``notes`` (str or list), ``num_parameters`` (overrides the
count), ``config`` (a ``PretrainedConfig`` or dict, when there is no ``model_dir`` yet). Any other scalar keyword
(``hidden_size=768`` ...) is listed in the model table.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from string import Template
from typing import Any, Dict, Iterable, List, Optional

import yaml

from ..modeling.hf_compat import SUPPORTED_TRANSFORMERS, TESTED_TRANSFORMERS

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "model_cards"
BASE_TAGS = ["ssmvl", "mamba", "state-space-model", "custom_code"]

# (architecture suffix, Auto class, default pipeline tag); first match wins
_TASKS = [
    ("ForCausalLM", "AutoModelForCausalLM", "text-generation"),
    ("LMHeadModel", "AutoModelForCausalLM", "text-generation"),  # GPT2LMHeadModel & co.
    ("ForImageClassification", "AutoModelForImageClassification", "image-classification"),
    ("ForVideoClassification", "AutoModelForVideoClassification", "video-classification"),
    ("ForConditionalGeneration", "AutoModelForImageTextToText", "image-text-to-text"),
    ("DualEncoderModel", "AutoModel", "zero-shot-image-classification"),
]
_SIZE_KEYS = ["hidden_size", "d_model", "n_embd", "embed_dim", "hidden_sizes", "num_hidden_layers", "n_layer",
              "depths", "intermediate_size", "state_size", "d_state", "expand", "conv_kernel", "d_conv",
              "time_step_rank", "vocab_size", "image_size", "patch_size", "num_frames", "num_labels",
              "max_position_embeddings", "n_positions"]
_KNOWN_KEYS = {"repo_id", "title", "description", "family", "variant", "license", "base_model", "datasets",
               "language", "tags", "pipeline_tag", "metrics", "metrics_dataset", "metrics_split", "parity", "source",
               "source_checkpoint", "conversion", "notes", "num_parameters", "config", "model_type", "library_name"}


# ---------------------------------------------------------------------------------------------------------------------
# reading a model folder
# ---------------------------------------------------------------------------------------------------------------------
def read_config(model_dir) -> Dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _safetensors_files(model_dir: Path) -> List[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f).get("weight_map", {}).values()))
        return [model_dir / s for s in shards if (model_dir / s).is_file()]
    single = model_dir / "model.safetensors"
    return [single] if single.is_file() else sorted(model_dir.glob("*.safetensors"))


def safetensors_header(path) -> Dict[str, Any]:
    """The JSON header of a .safetensors file (tensor names -> dtype/shape/offsets), read without the weights."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100_000_000:
            raise ValueError(f"{path}: implausible safetensors header size {n}")
        return json.loads(f.read(n))


def count_parameters(model_dir) -> Optional[int]:
    """Number of stored parameters (sum of tensor sizes over all safetensors shards), or None without weights."""
    files = _safetensors_files(Path(model_dir))
    if not files:
        return None
    total = 0
    for path in files:
        for name, info in safetensors_header(path).items():
            if name == "__metadata__":
                continue
            numel = 1
            for d in info.get("shape", []):
                numel *= int(d)
            total += numel
    return total


def human_count(n: Optional[int]) -> str:
    if n is None:
        return "unknown"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def auto_class_for(architectures: Iterable[str]) -> str:
    """The transformers Auto class that loads ``architectures[0]`` (AutoModel when nothing more specific fits)."""
    for arch in architectures or []:
        for suffix, auto, _ in _TASKS:
            if arch.endswith(suffix):
                return auto
        return "AutoModel"
    return "AutoModel"


def pipeline_tag_for(architectures: Iterable[str]) -> Optional[str]:
    for arch in architectures or []:
        for suffix, _, tag in _TASKS:
            if arch.endswith(suffix):
                return tag
        return "feature-extraction"
    return None


# ---------------------------------------------------------------------------------------------------------------------
# pieces
# ---------------------------------------------------------------------------------------------------------------------
def _as_list(value) -> List:
    if value is None:
        return []
    if isinstance(value, (list, tuple, set)):
        return [v for v in value if v is not None]
    return [value]


def _normalize_metrics(metrics, default_dataset=None, default_split=None) -> List[Dict[str, Any]]:
    if not metrics:
        return []
    items = [{"name": k, "value": v} for k, v in metrics.items()] if isinstance(metrics, dict) else list(metrics)
    out = []
    for m in items:
        m = dict(m)
        name = str(m.get("name") or m.get("type") or "metric")
        out.append({"name": name, "type": str(m.get("type") or name.lower().replace(" ", "_")),
                    "value": m.get("value"), "dataset": m.get("dataset", default_dataset),
                    "split": m.get("split", default_split)})
    return out


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    if isinstance(value, (list, tuple)) and len(value) > 12:
        return f"[{', '.join(_fmt(v) for v in value[:12])}, ...] ({len(value)} values)"
    if isinstance(value, (dict, list, tuple)):
        return "`" + json.dumps(value, default=str) + "`"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: Dict[str, Any], header=("", "")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"] if header != ("", "") else []
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows.items()]
    return "\n".join(lines)


def _usage(repo_id: str, auto_class: str, has_tokenizer: bool, has_processor: bool) -> str:
    q = json.dumps(repo_id)
    if auto_class == "AutoModelForCausalLM":
        if has_tokenizer:
            return (f"from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                    f"tokenizer = AutoTokenizer.from_pretrained({q})\n"
                    f"model = AutoModelForCausalLM.from_pretrained({q}, trust_remote_code=True)\n"
                    f"inputs = tokenizer(\"The state space model\", return_tensors=\"pt\")\n"
                    f"output = model.generate(**inputs, max_new_tokens=20)\n"
                    f"print(tokenizer.decode(output[0], skip_special_tokens=True))")
        return (f"import torch\nfrom transformers import AutoModelForCausalLM\n\n"
                f"model = AutoModelForCausalLM.from_pretrained({q}, trust_remote_code=True)\n"
                f"input_ids = torch.tensor([[1, 2, 3]])\n"
                f"output = model.generate(input_ids, max_new_tokens=20)")
    if auto_class == "AutoModelForImageClassification":
        proc = f"processor = AutoImageProcessor.from_pretrained({q}){'' if has_processor else '  # or your own'}\n"
        return ("from PIL import Image\n"
                "from transformers import AutoImageProcessor, AutoModelForImageClassification\n\n"
                f"{proc}"
                f"model = AutoModelForImageClassification.from_pretrained({q}, trust_remote_code=True)\n"
                f"inputs = processor(images=Image.open(\"image.jpg\"), return_tensors=\"pt\")\n"
                f"label = model.config.id2label[model(**inputs).logits.argmax(-1).item()]\nprint(label)")
    if auto_class == "AutoModelForImageTextToText":
        return (f"from PIL import Image\nfrom transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
                f"processor = AutoProcessor.from_pretrained({q}, trust_remote_code=True)\n"
                f"model = AutoModelForImageTextToText.from_pretrained({q}, trust_remote_code=True)\n"
                "messages = [{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": "
                "\"Describe the image.\"}, {\"type\": \"image\"}]}]\n"
                "prompt = processor.apply_chat_template(messages, add_generation_prompt=True)  # holds the image token\n"
                f"inputs = processor(images=Image.open(\"image.jpg\"), text=prompt, return_tensors=\"pt\")\n"
                f"output = model.generate(**inputs, max_new_tokens=30)\n"
                f"print(processor.batch_decode(output[:, inputs[\"input_ids\"].shape[1]:], "
                f"skip_special_tokens=True)[0])")
    if auto_class == "AutoModelForVideoClassification":
        return (f"import torch\nfrom transformers import AutoModelForVideoClassification\n\n"
                f"model = AutoModelForVideoClassification.from_pretrained({q}, trust_remote_code=True)\n"
                f"# pixel_values: (batch, frames, channels, height, width)\n"
                f"logits = model(pixel_values=torch.randn(1, 8, 3, 224, 224)).logits")
    return (f"from transformers import AutoModel\n\n"
            f"model = AutoModel.from_pretrained({q}, trust_remote_code=True)")


def _front_matter(meta: Dict[str, Any], model_name: str, pipeline_tag, metrics) -> str:
    fm: Dict[str, Any] = {}
    if meta.get("license"):
        fm["license"] = meta["license"]
    if meta.get("language"):
        fm["language"] = _as_list(meta["language"])
    fm["library_name"] = meta.get("library_name") or "transformers"
    tags = []
    for t in BASE_TAGS + [meta.get("family"), meta.get("model_type")] + _as_list(meta.get("tags")):
        if t and str(t) not in tags:
            tags.append(str(t))
    fm["tags"] = tags
    if pipeline_tag:
        fm["pipeline_tag"] = pipeline_tag
    base = _as_list(meta.get("base_model"))
    if base:
        fm["base_model"] = base[0] if len(base) == 1 else base
    datasets = _as_list(meta.get("datasets"))
    if datasets:
        fm["datasets"] = [str(d) for d in datasets]
    if metrics:
        results = []
        for m in metrics:
            if not isinstance(m["value"], (int, float)):
                continue
            r = {"task": {"type": pipeline_tag or "other"},
                 "metrics": [{"type": m["type"], "value": m["value"], "name": m["name"]}]}
            ds = m.get("dataset") or (datasets[0] if datasets else None)
            if ds:
                r["dataset"] = {"name": str(ds), "type": str(ds)}
                if m.get("split"):
                    r["dataset"]["split"] = str(m["split"])
            else:
                r["dataset"] = {"name": "unspecified", "type": "unspecified"}
            results.append(r)
        if results:
            fm["model-index"] = [{"name": model_name, "results": results}]
    return yaml.safe_dump(fm, sort_keys=False, allow_unicode=True, default_flow_style=False).strip()


def _find_template(*names) -> Path:
    for name in names:
        if name:
            path = TEMPLATE_DIR / f"{name}.md"
            if path.is_file():
                return path
    return TEMPLATE_DIR / "default.md"


# ---------------------------------------------------------------------------------------------------------------------
# the renderer
# ---------------------------------------------------------------------------------------------------------------------
def render_model_card(model_dir: Optional[str] = None, **metadata) -> str:
    """Render the model card of the model folder ``model_dir`` (see the module docstring for ``metadata``)."""
    model_dir = Path(model_dir) if model_dir is not None else None
    config = read_config(model_dir) if model_dir is not None else {}
    if not config and metadata.get("config") is not None:
        cfg = metadata["config"]
        config = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    meta = {k: v for k, v in metadata.items() if k != "config"}
    model_type = meta.get("model_type") or config.get("model_type") or "unknown"
    meta["model_type"] = model_type
    architectures = list(config.get("architectures") or [])
    auto_class = auto_class_for(architectures)
    pipeline_tag = meta.get("pipeline_tag") or pipeline_tag_for(architectures)

    num_parameters = meta.get("num_parameters")
    if num_parameters is None and model_dir is not None:
        num_parameters = count_parameters(model_dir)

    repo_id = meta.get("repo_id") or (model_dir.name if model_dir is not None else None) or "REPO_ID"
    model_name = repo_id.split("/")[-1]
    title = meta.get("title") or model_name
    family = meta.get("family")
    has_tok = model_dir is not None and any((model_dir / n).is_file() for n in
                                            ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    has_proc = model_dir is not None and any((model_dir / n).is_file() for n in
                                             ("preprocessor_config.json", "processor_config.json"))

    summary = meta.get("description") or (
        f"`{model_type}` model ({', '.join(f'`{a}`' for a in architectures) or 'no architecture recorded'})"
        f"{' from the ' + family + ' family' if family else ''}"
        f"{', variant ' + str(meta['variant']) if meta.get('variant') else ''}, packaged with "
        f"`ssmvl` as a Hugging Face transformers model with "
        f"{human_count(num_parameters)} parameters.")
    base = _as_list(meta.get("base_model"))
    if base:
        summary += " Base model: " + ", ".join(f"[{b}](https://huggingface.co/{b})" for b in base) + "."

    rows: Dict[str, Any] = {"model_type": f"`{model_type}`",
                            "architectures": ", ".join(f"`{a}`" for a in architectures) or "-",
                            "Auto class": f"`{auto_class}`",
                            "parameters": (f"{num_parameters:,} ({human_count(num_parameters)})"
                                           if num_parameters is not None else "unknown")}
    for key in _SIZE_KEYS:
        if key in config and config[key] is not None:
            rows[key] = config[key]
    for key, value in meta.items():  # extra scalar metadata (hidden_size=..., variant=...)
        if key not in _KNOWN_KEYS and isinstance(value, (str, int, float, bool, list, tuple)) and key not in rows:
            rows[key] = value
    if meta.get("variant"):
        rows["variant"] = meta["variant"]
    if config.get("torch_dtype") or config.get("dtype"):
        rows["stored dtype"] = config.get("dtype") or config.get("torch_dtype")
    architecture = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in rows.items())

    metrics = _normalize_metrics(meta.get("metrics"), meta.get("metrics_dataset"), meta.get("metrics_split"))
    metrics_md = ""
    if metrics:
        lines = ["## Evaluation", "", "| metric | value | dataset | split |", "| --- | --- | --- | --- |"]
        lines += [f"| {m['name']} | {_fmt(m['value'])} | {m.get('dataset') or '-'} | {m.get('split') or '-'} |"
                  for m in metrics]
        metrics_md = "\n".join(lines)

    conv_lines: List[str] = []
    conversion = dict(meta.get("conversion") or {})
    for key in ("source", "source_checkpoint"):
        if meta.get(key) is not None:
            conversion.setdefault(key, meta[key])
    if conversion:
        conv_lines += ["## Conversion", "", "\n".join(f"- **{k}**: {_fmt(v)}" for k, v in conversion.items())]
    parity = meta.get("parity")
    if parity:
        if not conv_lines:
            conv_lines += ["## Conversion", ""]
        conv_lines += ["", "Parity of the converted model against the original implementation:", ""]
        if isinstance(parity, dict):
            conv_lines.append(_table(parity, ("check", "result")))
        else:
            conv_lines.append(_fmt(parity))
    conversion_md = "\n".join(conv_lines)

    notes = _as_list(meta.get("notes"))
    notes_md = ("## Notes\n\n" + "\n".join(f"- {n}" for n in notes)) if notes else ""

    if config.get("auto_map"):
        usage_intro = ("The modeling code ships with the weights, so `ssmvl` does not need to be installed "
                       f"(`pip install torch \"transformers{SUPPORTED_TRANSFORMERS}\"` is enough; tested with "
                       f"transformers {TESTED_TRANSFORMERS[0]} to {TESTED_TRANSFORMERS[1]}); loading runs that code, "
                       "hence `trust_remote_code=True`. With `mamba-ssm` / `causal-conv1d` (or Triton) on a CUDA machine "
                       "the fused selective-scan kernels are used; on CPU a pure PyTorch implementation runs.")
    else:
        usage_intro = "Loads with `transformers` (`pip install torch transformers`)."
    fields = dict(
        usage_intro=usage_intro, front_matter=_front_matter(meta, model_name, pipeline_tag, metrics), title=title,
        summary=summary,
        usage=_usage(repo_id, auto_class, has_tok, has_proc), architecture=architecture, metrics=metrics_md,
        conversion=conversion_md, notes=notes_md, auto_class=auto_class, repo_id=repo_id, model_type=model_type,
        architectures=", ".join(architectures), num_parameters=str(num_parameters),
        num_parameters_human=human_count(num_parameters), pipeline_tag=pipeline_tag or "",
        license=meta.get("license") or "",
    )
    template = Template(_find_template(family, model_type).read_text(encoding="utf-8"))
    text = template.safe_substitute(fields)
    while "\n\n\n" in text:  # empty sections leave blank runs
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip() + "\n"


def write_model_card(model_dir, overwrite: bool = False, **metadata) -> Optional[Path]:
    """Render and write ``model_dir/README.md``; keeps an existing one unless ``overwrite``. Returns the path written
    (None when a README.md existed and was kept)."""
    path = Path(model_dir) / "README.md"
    if path.exists() and not overwrite:
        return None
    path.write_text(render_model_card(str(model_dir), **metadata), encoding="utf-8")
    return path


__all__ = ["render_model_card", "write_model_card", "count_parameters", "auto_class_for", "pipeline_tag_for",
           "safetensors_header", "read_config"]

if __name__ == "__main__":  # python -m ssmvl.conversion.model_card DIR  -> prints the card
    import sys

    print(render_model_card(sys.argv[1] if len(sys.argv) > 1 else os.getcwd()))
