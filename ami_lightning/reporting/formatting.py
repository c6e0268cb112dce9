"""How the reported figures are written: rates in % with their counts and intervals, and JSON-safe values.

Rates are fractions in [0, 1] and shown in % with two decimals and their counts (``"87.50 % (7/8)"``); interval
bounds in brackets, in % with one decimal for rates (``"[52.9, 97.8]"``) and as they are with three decimals for
AUROCs. A figure that is None or not finite is *missing* (shown as ``"-"`` or ``"n/a"`` by the callers).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def is_missing(value: float | None) -> bool:
    """Whether ``value`` is None or not finite (nan, inf)."""
    return value is None or not math.isfinite(value)


def has_interval(interval: tuple[float, float] | None) -> bool:
    """Whether ``interval`` is given and both its bounds are finite."""
    return interval is not None and not any(is_missing(bound) for bound in interval)


def interval_text(interval: tuple[float, float], scale: float, digits: int) -> str:
    """``"[low, high]"`` with the bounds times ``scale`` to ``digits`` decimals, e.g. ``"[52.9, 97.8]"``."""
    low, high = interval
    return f"[{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def fraction_text(count: int, total: int, interval: tuple[float, float] | None = None) -> str:
    """``count / total`` in % with the counts and, when given and finite, the interval (fractions) in % with one
    decimal, e.g. ``"87.50 % (7/8) [52.9, 97.8]"``; ``"n/a (0/0)"`` when ``total == 0``."""
    percent = f"{100 * count / total:.2f} %" if total else "n/a"
    bounds = f" {interval_text(interval, 100.0, 1)}" if has_interval(interval) else ""
    return f"{percent} ({count}/{total}){bounds}"


def short_percent(fraction: float) -> str:
    """A fraction as a short percentage for headers and labels: 0.05 -> ``"5%"``."""
    return f"{100 * fraction:g}%"


def json_safe(value: Any) -> Any:
    """``value`` with tensors / arrays as lists, paths as strings, tuples as lists, dict keys as strings and
    non-finite floats as None (so that ``json.dumps(..., allow_nan=False)`` accepts it)."""
    if hasattr(value, "tolist"):  # torch.Tensor, numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
