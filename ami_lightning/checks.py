"""The words of a configuration problem, shared by the config check (:mod:`ami_lightning.pipeline.validation`) and
every component's ``check_params`` (detectors, attacks, models), so that all problem lines read alike:
``<key>=<value>: expected <what>``, the value shown as the user wrote it in YAML (:func:`show`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def show(value: Any) -> str:
    """A value as the problem lines show it: YAML words for null and booleans, ``repr`` otherwise (containers as
    plain lists and dicts)."""
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=False)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_positive(value: Any) -> bool:
    """A finite number > 0."""
    return is_number(value) and math.isfinite(value) and value > 0


def expect(params: Mapping[str, Any], key: str, ok: Callable[[Any], bool], expected: str) -> list[str]:
    """``["<key>=<value>: expected <expected>"]`` when ``params`` has ``key`` and ``ok(value)`` is false, else []."""
    if key not in params or ok(params[key]):
        return []
    return [f"{key}={show(params[key])}: expected {expected}"]


def existing(params: Mapping[str, Any], key: str, kind: str, what: str, required: bool = False) -> list[str]:
    """``["<key>=<path>: no such <kind>; the run needs <what> there"]`` when ``params[key]`` is a path that is not
    an existing ``kind`` (``"file"`` or ``"folder"``); when it is null, ``["<key>=null: not given; the run needs
    <what>"]`` if ``required``; [] when it exists, is absent, or is null and not required."""
    value = params.get(key)
    if value is None or value == "":
        return [f"{key}=null: not given; the run needs {what}"] if required and key in params else []
    path = Path(str(value))
    if path.is_file() if kind == "file" else path.is_dir():
        return []
    return [f"{key}={show(str(value))}: no such {kind}; the run needs {what} there"]


def unknown_keys(params: Mapping[str, Any], allowed: tuple[str, ...]) -> list[str]:
    """``["unknown parameters [...]; allowed: ..."]`` when ``params`` has keys outside ``allowed``, else []."""
    unknown = sorted(set(params) - set(allowed))
    return [f"unknown parameters {unknown}; allowed: {', '.join(allowed)}"] if unknown else []
