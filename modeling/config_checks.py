"""Argument checks shared by the configuration classes. Each raises a ValueError naming the config class, the argument
and the value it got, so that a wrong value (a string, None, NaN, a bool where a size goes, a negative epsilon) fails
when the config is made -- not later, deep inside torch, when the model is built or run."""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional


def is_int(value) -> bool:
    """An integer that is not a bool (``True`` is an int to Python, never a size to us)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(owner: str, name: str, value, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (1: a positive size), else a ValueError naming ``owner.name``."""
    if not is_int(value) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{owner}.{name} must be {what}, got {value!r}")
    return int(value)


def check_number(owner: str, name: str, value, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float in the interval [low, high] (``low_open`` / ``high_open``: excluding that end),
    else a ValueError naming ``owner.name`` and the interval."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        interval = (f"{'(' if low_open else '['}{'-inf' if low is None else low}, "
                    f"{'inf' if high is None else high}{')' if high_open or high is None else ']'}")
        raise ValueError(f"{owner}.{name} must be a finite number in {interval}, got {value!r}")
    return float(value)


def check_token_id(owner: str, name: str, value, allow_list: bool = False):
    """A special token id: None or an int >= 0 (``allow_list``: also a list of them, as transformers' eos ids)."""
    ok = value is None or (is_int(value) and value >= 0)
    if not ok and allow_list and isinstance(value, (list, tuple)):
        ok = bool(value) and all(is_int(v) and v >= 0 for v in value)
    if not ok:
        what = "an int >= 0" + (", a list of them" if allow_list else "") + " or None"
        raise ValueError(f"{owner}.{name} must be a token id ({what}), got {value!r}")
    return value


def check_choice(owner: str, name: str, value, allowed: Iterable[str]) -> str:
    """``value`` must be one of ``allowed`` (strings), else a ValueError listing them."""
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{owner}.{name} must be one of {allowed}, got {value!r}")
    return value


def check_time_steps(owner: str, time_step_min, time_step_max, time_step_floor=0.0, time_step_scale=1.0):
    """Mamba's dt initialisation arguments: 0 < time_step_min <= time_step_max, floor >= 0, scale > 0."""
    low = check_number(owner, "time_step_min", time_step_min, low=0.0, low_open=True)
    high = check_number(owner, "time_step_max", time_step_max, low=0.0, low_open=True)
    if low > high:
        raise ValueError(f"{owner} needs time_step_min <= time_step_max, got {time_step_min} > {time_step_max}")
    check_number(owner, "time_step_floor", time_step_floor, low=0.0)
    check_number(owner, "time_step_scale", time_step_scale, low=0.0, low_open=True)


def check_time_step_rank(owner: str, time_step_rank, hidden_size: int) -> int:
    """"auto" -> ceil(hidden_size / 16); else a positive integer."""
    if time_step_rank == "auto":
        return math.ceil(hidden_size / 16)
    return check_int(owner, "time_step_rank", time_step_rank)


__all__ = ["is_int", "check_int", "check_number", "check_token_id", "check_choice", "check_time_steps",
           "check_time_step_rank"]
