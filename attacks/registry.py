"""The attack sets by name (timm-style registry): name -> attack constructor, target mode, file format.

An attack class registers its sets with the decorator ``@register_attack("fgsm")`` (or
``@register_attack("patch_first", target_mode="first", file_format="png")``, stacked for several sets); every
module of :mod:`ami_lightning.attacks` is imported with the package (``__init__`` discovers them: a new module is
found without being listed anywhere), so :data:`ATTACK_SETS` is complete whenever this module is importable.

The 12 published sets, plus the adaptive attacks ``adaptive_transfer`` and ``adaptive_gradient``
(:mod:`ami_lightning.attacks.adaptive`) and ``selective_pgd`` and ``orthogonal_pgd`` (Bryniarski et al. 2022,
:mod:`ami_lightning.attacks.detector_pgd`), which attack a detector (any of :mod:`ami_lightning.detectors`) and so
are built with ``detector=`` (:attr:`AttackSpec.needs_detector`); they choose their own targets (``untargeted``
mode).
A config's attack set (``attacks.<set>``) names its registered attack (``name``), so that one attack makes several
sets, e.g. ``adaptive_gradient`` against AmI and ``adaptive_gradient_fs`` against Feature Squeezing.

``create_attack("cw_l2_next", steps=100)`` builds the attack of a set with its defaults overridden;
``ATTACK_SETS[name].parameters()`` lists the keyword parameters its constructor takes (what ``attacks.<set>.params``
of a config may set), without building an attack;
``ATTACK_SETS[name].target_mode`` says which targets the set uses (:func:`ami_lightning.attacks.base.make_targets`) and
``file_format`` how the published samples are stored (``npy``: float32 (3, 224, 224) RGB 0-255; ``png``: 8-bit
image; the release used JPEG, which :func:`ami_lightning.pipeline.generation.generate` offers as an option).

This module imports no attack, so the code digest of one attack's sets (the cache key) does not follow the others'.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ami_lightning.attacks.base import TARGET_MODES, Attack

FILE_FORMATS: tuple[str, ...] = ("npy", "png", "jpg")


@dataclass(frozen=True)
class AttackSpec:
    """An attack set: ``factory(**params)`` builds its attack; ``target_mode`` is ``first`` / ``next`` /
    ``untargeted``; ``file_format`` the published one (``npy`` or ``png``, see the module docstring);
    ``needs_detector``: the factory takes the detector under attack as ``detector=``."""

    name: str
    factory: Callable[..., Attack]
    target_mode: str
    file_format: str
    needs_detector: bool = False

    def __post_init__(self) -> None:
        if self.target_mode not in TARGET_MODES:
            raise ValueError(f"attack set {self.name!r}: unknown target mode {self.target_mode!r}; "
                             f"expected one of {TARGET_MODES}")
        if self.file_format not in FILE_FORMATS:
            raise ValueError(f"attack set {self.name!r}: unknown file format {self.file_format!r}; "
                             f"expected one of {FILE_FORMATS}")

    @property
    def folder(self) -> str:
        """The name of the folder its samples are written to: :attr:`name`, a dotted path's ``:`` as ``.``."""
        return self.name.replace(":", ".")

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The keyword parameters of :attr:`factory`, by name (see :func:`keyword_parameters`); for a set that
        :attr:`needs_detector`, ``detector`` is among them (the pipeline passes it, not the config)."""
        return keyword_parameters(self.factory)


ATTACK_SETS: dict[str, AttackSpec] = {}


def register(spec: AttackSpec) -> AttackSpec:
    """Add ``spec`` to :data:`ATTACK_SETS`; ``ValueError`` if its name is taken."""
    if spec.name in ATTACK_SETS:
        raise ValueError(f"attack set {spec.name!r} is already registered")
    ATTACK_SETS[spec.name] = spec
    return spec


A = TypeVar("A", bound=type[Attack])


def register_attack(name: str, target_mode: str = "untargeted", file_format: str = "npy") -> Callable[[A], A]:
    """Decorator: register the :class:`~ami_lightning.attacks.base.Attack` class as the set ``name`` with its
    ``target_mode`` and published ``file_format`` (:class:`AttackSpec`); it attacks a detector when its constructor
    takes ``detector``. Stack it for several sets of one class. ValueError if the name is taken."""

    def decorate(cls: A) -> A:
        register(AttackSpec(name, cls, target_mode, file_format, needs_detector="detector" in keyword_parameters(cls)))
        return cls

    return decorate


def keyword_parameters(constructor: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The parameters of ``constructor`` that can be passed by keyword, by name, in signature order.

    For a class, ``**kwargs`` of an ``__init__`` are taken to be passed on to the base class's ``__init__`` (as every
    attack here does: ``Patch(**settings)`` -> ``MaskedAttack``, ``DetectorGradient(**kwargs)`` -> ``AdaptiveAttack``),
    so the base's parameters are added; a ``**kwargs`` that reaches ``object`` (or a function's own) is kept in the
    result as a ``VAR_KEYWORD`` parameter: any keyword is accepted. ``self`` and positional-only parameters are left
    out.
    """
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if not isinstance(constructor, type):
        return {name: p for name, p in inspect.signature(constructor).parameters.items()
                if p.kind in keyword or p.kind is inspect.Parameter.VAR_KEYWORD}
    found: dict[str, inspect.Parameter] = {}
    open_ended: inspect.Parameter | None = None
    for cls in constructor.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        if cls is object:
            break
        params = list(inspect.signature(init).parameters.values())[1:]  # without self
        for p in params:
            if p.kind in keyword:
                found.setdefault(p.name, p)
        open_ended = next((p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None)
        if open_ended is None:
            return found
    if open_ended is not None:
        found[open_ended.name] = open_ended
    return found


def get_spec(name: str) -> AttackSpec:
    """The registered set ``name``, or the attack class at the dotted path ``"package.module:Name"`` (a researcher's
    own :class:`~ami_lightning.attacks.base.Attack`, not registered: its class attributes ``target_mode`` (default
    ``untargeted``) and ``file_format`` (default ``npy``) describe its sets, and it attacks a detector when its
    constructor takes ``detector``); ``KeyError`` listing the registered names, or saying why the path does not
    import."""
    if ":" in name:
        from ami_lightning.detectors.base import import_dotted

        cls = import_dotted(name)
        if not (isinstance(cls, type) and issubclass(cls, Attack)):
            raise KeyError(f"attack {name!r} is {cls!r}, not a subclass of ami_lightning.attacks.base.Attack")
        return AttackSpec(name, cls, getattr(cls, "target_mode", "untargeted"), getattr(cls, "file_format", "npy"),
                          needs_detector="detector" in keyword_parameters(cls))
    if name not in ATTACK_SETS:
        raise KeyError(f"unknown attack set {name!r}; registered: {', '.join(sorted(ATTACK_SETS))}, or "
                       "'package.module:Name' for an attack of your own")
    return ATTACK_SETS[name]


def known_attack(name: str) -> bool:
    """Whether :func:`get_spec` finds ``name`` (a registered set, or a dotted path to an Attack class)."""
    try:
        get_spec(name)
    except KeyError:
        return False
    return True


def create_attack(name: str | AttackSpec, **overrides: Any) -> Attack:
    """The attack of set ``name`` (or of a spec), its defaults overridden by ``overrides`` (steps, eps, ...);
    ``TypeError`` naming the set and the parameters if the constructor rejects them; ``ValueError`` if the set
    attacks the detector and no ``detector=`` is given."""
    spec = name if isinstance(name, AttackSpec) else get_spec(name)
    if spec.needs_detector and overrides.get("detector") is None:
        raise ValueError(f"attack set {spec.name!r} attacks a detector: pass detector=<a Detector>")
    try:
        return spec.factory(**overrides)
    except TypeError as err:
        raise TypeError(f"attack set {spec.name!r}: bad parameters {overrides}: {err}") from err
