"""The one place where ssmvl adapts to the transformers release it runs under (supported: transformers >=5.0,<6).

These modeling files run as remote code under whatever transformers a user has, so differences between releases are
detected here by feature, once, and nowhere else:

* The generation cache is called ``cache`` from transformers 5.24 on (``ModelOutput.__init__`` renames
  ``past_key_values`` / ``cache_params`` to it; ``generate()`` hands ``cache=`` to the model) and
  ``past_key_values`` before. ``CACHE_NAME`` is that name, read from ``generate()``'s own list of cache names;
  ``cache_output`` names the output field accordingly, and ``pop_cache`` accepts every spelling in ``forward``.
* ``prepare_inputs_for_generation`` receives ``next_sequence_length`` (>= 5.24) or ``cache_position`` (< 5.24):
  ``new_token_count`` reads either.
* ``init``: transformers' ``initialization`` functions (they skip tensors already loaded from a checkpoint), plus
  ``lecun_normal_`` where the release lacks it (5.0).
* transformers 5.0 copies, for remote code loaded from a local folder, only the sibling files that the modeling file
  imports directly (later releases follow imports recursively). So each ``modeling_<family>.py`` imports every
  sibling it needs by name: the ones it does not use itself inside ``if TYPE_CHECKING:``, which never runs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
from transformers import initialization as _hf_init
from transformers.utils import logging

logger = logging.get_logger(__name__)

# The transformers releases these files support (pyproject.toml says the same; a test checks) and the oldest and newest
# that the test suite ran against (`make test-oldest`, `make test-latest` / the lock). Model cards quote both.
SUPPORTED_TRANSFORMERS = ">=5.0,<6"
TESTED_TRANSFORMERS = ("5.0.0", "5.24.0")

try:
    from transformers.generation.utils import ALL_CACHE_NAMES as _CACHE_NAMES
except ImportError:  # pragma: no cover - not in any 5.x release we know of
    _CACHE_NAMES = ["past_key_values"]

# "cache" (transformers >= 5.24) or "past_key_values" (5.0 - 5.23): the model-kwarg and output-field name generate() uses
CACHE_NAME: str = _CACHE_NAMES[0]
# every spelling a caller may use for the cache argument (ours before 0.2 was `cache_params`, as in transformers' Mamba)
CACHE_ALIASES = ("cache", "past_key_values", "cache_params")


def cache_output(cls):
    """Class decorator for a ``ModelOutput``: like ``@dataclass``, but the field written ``cache`` is renamed to
    ``CACHE_NAME`` so that this transformers' ``generate()`` finds the cache. ``.cache`` and the old ``.cache_params``
    stay readable under every release."""
    annotations = dict(cls.__dict__.get("__annotations__", {}))
    if "cache" not in annotations:
        raise TypeError(f"{cls.__name__} has no `cache` field")
    if CACHE_NAME != "cache":
        cls.__annotations__ = {(CACHE_NAME if k == "cache" else k): v for k, v in annotations.items()}
        setattr(cls, CACHE_NAME, cls.__dict__["cache"])
        delattr(cls, "cache")
    cls = dataclass(cls)
    for alias in CACHE_ALIASES:
        if alias != CACHE_NAME:
            setattr(cls, alias, property(lambda self: getattr(self, CACHE_NAME)))
    return cls


def pop_cache(cache, kwargs: dict):
    """The cache argument of a ``forward`` / ``prepare_inputs_for_generation``, under any of its names: ``cache``
    (passed explicitly) or ``past_key_values`` / ``cache_params`` (popped from ``kwargs``). Two different ones is an error."""
    given = {"cache": cache} if cache is not None else {}
    for name in CACHE_ALIASES[1:]:
        value = kwargs.pop(name, None)
        if value is not None:
            given[name] = value
    if len({id(v) for v in given.values()}) > 1:  # the same object under two names is fine (generate() may do that)
        raise ValueError(f"Pass the cache once, as `cache`; got different caches as {sorted(given)}.")
    return next(iter(given.values()), None)


def set_auto_map(model, classes: dict) -> None:
    """Names each ``{Auto class: class name}`` of ``classes`` in ``model.config.auto_map`` as a class of the model's
    own module file, keeping the entries already there: ``save_pretrained`` writes only the one Auto class a class
    was registered for (``_auto_class``), so a family whose folder several Auto classes should load adds the others
    here before saving."""
    module = type(model).__module__.rsplit(".", 1)[-1]
    auto_map = dict(getattr(model.config, "auto_map", None) or {})
    auto_map.update({auto: f"{module}.{name}" for auto, name in classes.items()})
    model.config.auto_map = auto_map


def _files(folder) -> dict:
    """{name: (size, mtime_ns)} of the files directly in ``folder`` ({} when it does not exist)."""
    if not os.path.isdir(folder):
        return {}
    out = {}
    for entry in os.scandir(folder):
        if entry.is_file():
            stat = entry.stat()
            out[entry.name] = (stat.st_size, stat.st_mtime_ns)
    return out


class NamesReplacedFilesMixin:
    """``save_pretrained`` into a folder that already holds files: transformers writes its files over same-named ones
    (config.json, model.safetensors, the modeling .py files, README.md from a card) and deletes stale weight shards
    (``model-0000i-of-0000n.safetensors``), without a word. With this mixin first in a model's bases the save is the
    same, but every file that was there before and was rewritten or removed is named in one warning, so a user's own
    file is never replaced silently."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        before = _files(save_directory)
        result = super().save_pretrained(save_directory, *args, **kwargs)
        after = _files(save_directory)
        replaced = sorted(name for name, stat in before.items() if after.get(name) != stat)
        if replaced:
            logger.warning(f"save_pretrained replaced {len(replaced)} file(s) that were already in {save_directory}: "
                           f"{', '.join(replaced)}. Save into an empty folder to keep other files apart.")
        return result


def new_token_count(next_sequence_length: Optional[int] = None,
                    cache_position: Optional[torch.Tensor] = None) -> int:
    """How many trailing tokens of ``input_ids`` are not yet in the cache, as generate() says it: ``next_sequence_length``
    (transformers >= 5.24), else the length of ``cache_position`` (older 5.x), else one (plain decoding)."""
    if next_sequence_length is not None:
        return int(next_sequence_length)
    if cache_position is not None:
        return int(cache_position.shape[-1])
    return 1


class _Init:
    """``transformers.initialization`` with ``lecun_normal_`` for the releases that lack it."""

    def __getattr__(self, name):
        return getattr(_hf_init, name)

    @staticmethod
    def lecun_normal_(tensor: torch.Tensor) -> torch.Tensor:
        """Truncated normal with variance 1 / fan_in (JAX's lecun_normal, as transformers' own)."""
        if hasattr(_hf_init, "lecun_normal_"):
            return _hf_init.lecun_normal_(tensor)
        if getattr(tensor, "_is_hf_initialized", False):
            return tensor
        fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(tensor)
        return _hf_init.trunc_normal_(tensor, std=math.sqrt(1.0 / fan_in) / 0.87962566103423978)


init = _Init()
