"""The one interface every detector of adversarial faces implements, and the registry of them by name.

A detector wraps a pixel-space classifier ``model`` (pixels (B, 3, H, W) in [0, 255] -> logits (B, K)) and gives,
for a batch, one :class:`DetectorOutput`: the classifier's logits, a continuous ``score`` (B,) where larger means
more suspicious (its unit: the class's :attr:`Detector.score_unit`) and ``flagged`` (B,) by the method's own
published rule (:attr:`Detector.rule`). The plain forward may be handed in (``detector(x, logits)``) so that several
detectors evaluated on one batch share it.

Preparation happens in two steps the pipeline calls, never in the entry points: :meth:`Detector.setup` (one-off
and cacheable, e.g. AmI's witness extraction) and :meth:`Detector.calibrate` (a threshold set on the scores of
benign samples, for detectors whose rule needs one: :attr:`Detector.needs_calibration`).

Adaptive attacks need gradients: ``score`` carries one with respect to the pixels whenever they require it, exact
or through straight-through estimators (BPDA) where the method is not differentiable (:attr:`Detector.gradient`
says which), and :meth:`Detector.evasion_loss` is the loss an attacker minimises so that the detector's own view of
an image agrees with the target class.

Registry (timm style): ``@register_detector("name")`` on a factory ``(model, **params) -> Detector``; every module
of this package is imported when a name is looked up (no list to extend); :func:`create_detector` builds one,
:data:`DETECTORS` lists them, and the Hydra group ``conf/detector/`` has one file per configured detector
(``detectors.<name>: {type: <registered name or package.module:Name>, params: {...}}``).
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn


@dataclass
class DetectorOutput:
    """A detector's verdict on a batch of B images: ``logits`` (B, K) of the plain classifier, ``score`` (B,) float
    (larger = more suspicious, in the detector's :attr:`~Detector.score_unit`), ``flagged`` (B,) bool by its rule."""

    logits: torch.Tensor
    score: torch.Tensor
    flagged: torch.Tensor


@dataclass(frozen=True)
class SetupContext:
    """What a detector's :meth:`~Detector.setup` may use: ``out_dir``, the run's folder (a copy of what was prepared
    goes there); ``cache_dir``, where expensive preparation is cached; ``model_key``, the model's identity for cache
    keys (:func:`ami_lightning.pipeline.cache.model_identity`: config and file digests); ``fit``, the benign fit
    set (:class:`~ami_lightning.detectors.fitting.FitSet`, never evaluated) when a detector of the run
    :attr:`~Detector.needs_fit`, else None."""

    out_dir: Path
    cache_dir: Path
    model_key: Any
    fit: Any = None


class Detector(nn.Module, ABC):
    """Base class of the detectors. Subclasses set the class attributes and implement :meth:`score`,
    :meth:`evaluate` and :meth:`evasion_loss`; ``forward`` is shared.

    Class attributes: ``score_unit`` (what the score measures, in words with its unit and range), ``rule`` (the
    published flag rule, in words), ``gradient`` (``"exact"``, ``"straight-through"`` (BPDA) or ``"none"``: how the
    score is differentiated with respect to the pixels), ``needs_calibration`` (the rule needs :meth:`calibrate`
    before use) and ``needs_fit`` (its :meth:`setup` fits it on the context's benign fit set). ``name``: the run's
    name of this detector (the key under ``detectors.``; :func:`create_detector`
    sets it, default the registered type).
    """

    kind: ClassVar[str] = ""  # the registered type, set by register_detector
    score_unit: ClassVar[str] = ""
    rule: ClassVar[str] = ""
    gradient: ClassVar[str] = "exact"
    needs_calibration: ClassVar[bool] = False
    needs_fit: ClassVar[bool] = False

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.name = self.kind
        self.fit_record: dict[str, Any] | None = None  # what a fitted detector was fitted on (set by its setup)

    def forward(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> DetectorOutput:
        """The verdict on pixels x (B, 3, H, W) in [0, 255]; ``logits``: ``model(x)`` when already computed."""
        if logits is None:
            logits = self.model(x)
        score, flagged = self.evaluate(x, logits)
        return DetectorOutput(logits, score, flagged)

    @abstractmethod
    def score(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """The continuous score (B,) of pixels x (differentiable with respect to x as :attr:`gradient` says)."""

    @abstractmethod
    def evaluate(self, x: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(score (B,), flagged (B,) bool) of pixels x given the plain logits (B, K)."""

    @abstractmethod
    def evasion_loss(self, x: torch.Tensor, targets: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """Per-sample loss (B,) an attacker minimises, besides the plain model's, so that the detector's own view of
        x agrees with ``targets`` (B,) long (AmI: the steered model; Feature Squeezing: the squeezed inputs), with
        straight-through gradients where the method has none, or ``exact`` ones (ValueError where there are none)."""

    @staticmethod
    def check_params(params: Mapping[str, Any]) -> list[str]:
        """Problems with the value of ``params`` (a config's ``detectors.<name>.params``, resolved), one line each,
        ``"<param>=<value>: what is expected"``; [] when fine. The config check calls it before any work (unknown
        keys it finds itself from the factory's signature). Default: none."""
        return []

    def feature_layers(self) -> tuple[str, ...]:
        """The hooked layers whose outputs its score reads (default none): whoever runs several detectors on a batch
        computes them with the plain forward, once for all (:func:`~ami_lightning.detectors.fitting.prime`)."""
        return ()

    def setup(self, context: SetupContext) -> None:  # noqa: B027 - a hook with nothing to do by default
        """One-off preparation before use (default: nothing)."""

    def flags_from_scores(self, score: torch.Tensor) -> torch.Tensor | None:
        """Flags (B,) bool by the rule from the scores (B,) alone, for a detector whose rule is a threshold on its
        score (set by :meth:`calibrate`); None (the default) where the rule needs more than the score (AmI compares
        two top-1 identities). Lets the pipeline reuse benign scores computed before calibration."""
        return None

    def calibrate(self, benign_scores: torch.Tensor) -> None:  # noqa: B027 - a hook with nothing to do by default
        """Set the rule's threshold from the scores (N,) of benign samples the model gets right (default: nothing;
        detectors with :attr:`needs_calibration` override it)."""

    def description(self) -> dict[str, Any]:
        """What the results say about this detector: ``type``, ``params`` (:meth:`parameters_dict`), ``score``,
        ``rule``, ``gradient``, and ``fit_set`` (its record: rule, seed, files) for a detector fitted on one."""
        described = {"type": self.kind, "params": self.parameters_dict(), "score": self.score_unit,
                     "rule": self.rule, "gradient": self.gradient}
        if self.fit_record is not None:
            described["fit_set"] = self.fit_record
        return described

    @abstractmethod
    def parameters_dict(self) -> dict[str, Any]:
        """The detector's own parameters and a summary of what it was prepared with (JSON-able), for results."""

    def identity(self) -> Any:
        """Everything its verdicts depend on besides the model (JSON-able), for cache keys of the attack sets made
        against it (default :meth:`parameters_dict`; AmI adds its witness lists)."""
        return self.parameters_dict()

    def score_identity(self) -> Any:
        """Everything its scores depend on besides the model (JSON-able), for the cache of its benign records
        (default :meth:`identity`; a calibrated detector leaves out what calibration sets, which its scores do not
        depend on)."""
        return self.identity()


DetectorFactory = Callable[..., Detector]
DETECTORS: dict[str, DetectorFactory] = {}
F = TypeVar("F", bound=DetectorFactory)


def register_detector(name: str) -> Callable[[F], F]:
    """Decorator: register a factory ``(model, **params) -> Detector`` (a Detector subclass or a function) under
    ``name``; ValueError if the name is taken. A registered class gets ``kind = name``."""

    def decorate(factory: F) -> F:
        if name in DETECTORS:
            raise ValueError(f"detector {name!r} is already registered")
        if isinstance(factory, type) and issubclass(factory, Detector):
            factory.kind = name
        DETECTORS[name] = factory
        return factory

    return decorate


def get_detector_factory(kind: str) -> DetectorFactory:
    """The factory registered as ``kind``, or at the dotted path ``"package.module:Name"`` (a researcher's own
    detector, registered or not: a Detector subclass found there gets ``kind`` = that path unless registered);
    KeyError listing the registered names when there is none."""
    if ":" in kind:
        factory = import_dotted(kind)
        if isinstance(factory, type) and issubclass(factory, Detector) and not factory.kind:
            factory.kind = kind
        return factory  # type: ignore[no-any-return]
    _load_builtin()
    if kind not in DETECTORS:
        raise KeyError(f"unknown detector type {kind!r}; registered: {', '.join(sorted(DETECTORS))}, or "
                       "'package.module:Name' for a detector of your own")
    return DETECTORS[kind]


def import_dotted(path: str) -> Any:
    """The object at ``"package.module:Name"`` (a researcher's own detector or attack); KeyError naming the path and
    why it cannot be imported."""
    module_name, _, attribute = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as err:
        raise KeyError(f"cannot import {path!r} ({type(err).__name__}: {err}); expected 'package.module:Name' of "
                       "an installed or importable module") from err


def create_detector(kind: str, model: nn.Module, name: str | None = None, **params: Any) -> Detector:
    """The detector of type ``kind`` on ``model`` with ``params``, called ``name`` (default ``kind``); TypeError
    naming the type for a parameter its factory does not take, ValueError for a bad value (from the detector)."""
    factory = get_detector_factory(kind)
    try:
        detector = factory(model, **params)
    except TypeError as err:
        raise TypeError(f"detector {kind!r}: bad parameters {sorted(params)}: {err}") from err
    detector.name = name or kind
    return detector


def registered_detectors() -> list[str]:
    """The registered detector types, sorted."""
    _load_builtin()
    return sorted(DETECTORS)


def _load_builtin() -> None:
    """Import every module of this package, whose detectors register themselves: a new module here is found
    without being listed anywhere."""
    package = importlib.import_module(__package__ or "ami_lightning.detectors")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
