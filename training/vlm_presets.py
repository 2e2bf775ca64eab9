"""VLM presets: ``configs/vlm-<name>.json`` holds a ``tiny`` (tests, CPU) and a ``real`` (the seed system's documented
size) set of `SsmVlmConfig` arguments; keys starting with ``_`` are comments.

    from ssmvl.training.vlm_presets import vlm_preset, VLM_PRESETS
    config = vlm_preset("cobra-style", size="tiny")   # an SsmVlmConfig
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Tuple

from ssmvl.modeling.configuration_ssm_vlm import SsmVlmConfig

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
PREFIX = "vlm-"
SIZES = ("tiny", "real")


def available_presets() -> Tuple[str, ...]:
    """Preset names: the ``configs/vlm-*.json`` file stems (``vlm-cobra-style``, ...)."""
    return tuple(sorted(p.stem for p in CONFIGS_DIR.glob(f"{PREFIX}*.json")))


VLM_PRESETS = available_presets()


def _strip_comments(value):
    if isinstance(value, dict):
        return {k: _strip_comments(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_strip_comments(v) for v in value]
    return value


def vlm_preset_kwargs(name: str, size: str = "tiny") -> Dict[str, Any]:
    """The `SsmVlmConfig` keyword arguments of preset ``name`` ("vlm-cobra-style" or just "cobra-style") at ``size``
    ("tiny" or "real")."""
    stem = name if name.startswith(PREFIX) else PREFIX + name
    path = CONFIGS_DIR / f"{stem}.json"
    if not path.is_file():
        raise ValueError(f"Unknown VLM preset {name!r}; known: {', '.join(available_presets())} "
                         f"(configs/{PREFIX}*.json)")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    data = json.loads(path.read_text())
    if size not in data:
        raise ValueError(f"Preset {stem} has no {size!r} section ({path})")
    return _strip_comments(data[size])


def vlm_preset(name: str, size: str = "tiny", **overrides) -> SsmVlmConfig:
    """The `SsmVlmConfig` of preset ``name`` at ``size``; ``overrides`` replace top-level arguments."""
    return SsmVlmConfig(**{**vlm_preset_kwargs(name, size), **overrides})


__all__ = ["vlm_preset", "vlm_preset_kwargs", "available_presets", "VLM_PRESETS", "CONFIGS_DIR"]
