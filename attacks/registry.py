"""The published attack sets by name (timm-style registry): name -> attack constructor, target mode, file format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from attacks.base import Attack
from attacks.cw import CarliniWagnerL0, CarliniWagnerL2, CarliniWagnerLinf
from attacks.gradient import BIM, FGSM
from attacks.masked import Eyeglasses, Patch


@dataclass(frozen=True)
class AttackSpec:
    """An attack set: ``factory(**params)`` builds the attack; ``target`` is first / next / untargeted;
    ``file_format`` the published one (``npy``: float32 (3, 224, 224) RGB 0-255; ``png``: 8-bit image)."""

    name: str
    factory: Callable[..., Attack]
    target: str
    file_format: str


ATTACK_SETS: dict[str, AttackSpec] = {}


def register(name: str, factory: Callable[..., Attack], target: str, file_format: str) -> None:
    if name in ATTACK_SETS:
        raise ValueError(f"attack set {name!r} is already registered")
    ATTACK_SETS[name] = AttackSpec(name, factory, target, file_format)


for _target in ("first", "next"):
    register(f"patch_{_target}", Patch, _target, "png")
    register(f"glasses_{_target}", Eyeglasses, _target, "png")
    register(f"cw_l0_{_target}", CarliniWagnerL0, _target, "npy")
    register(f"cw_l2_{_target}", CarliniWagnerL2, _target, "npy")
    register(f"cw_li_{_target}", CarliniWagnerLinf, _target, "npy")
register("fgsm", FGSM, "untargeted", "npy")
register("bim", BIM, "untargeted", "npy")


def get_spec(name: str) -> AttackSpec:
    if name not in ATTACK_SETS:
        raise KeyError(f"unknown attack set {name!r}; registered: {sorted(ATTACK_SETS)}")
    return ATTACK_SETS[name]


def create_attack(name: str, **params: Any) -> Attack:
    """The attack of set ``name`` built with ``params`` (step budgets, eps, ...)."""
    try:
        return get_spec(name).factory(**params)
    except TypeError as err:
        raise TypeError(f"attack set {name!r}: bad parameters {params}: {err}") from err
