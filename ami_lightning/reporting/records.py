"""The figures of one evaluation run, as records (:class:`SetResult` per detector and set, :class:`RunResults` for the
run): the data model every report reads (tables, plots, sample figures, scalar metrics, W&B, ``results.json``), with
the rules for each rate's Wilson interval in one place (the methods of :class:`SetResult`). What the figures mean:
:mod:`ami_lightning.reporting.results`. This module imports no other report, so none of them imports back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ami_lightning.evaluation.intervals import CONFIDENCE, NAN_INTERVAL, Interval, wilson_interval
from ami_lightning.evaluation.paired import PairedComparison
from ami_lightning.evaluation.thresholds import OperatingPoint, ratio, undetected_rate
from ami_lightning.reporting.formatting import fraction_text, has_interval, interval_text, is_missing

LEGACY_DETECTOR = "ami"
"""The detector of the sets of a ``results.json`` written before runs evaluated several detectors."""


@dataclass
class SetResult:
    """One detector's figures on one data set: ``n`` samples evaluated, ``eligible`` of them counted, ``flagged``
    of those flagged by the detector's published rule.

    ``detector``: the name of the detector (a key of :attr:`RunResults.detectors`); ``name``: the set (``"benign"``, an
    attack set, or ``"worst_case"``, the detector's worst case over the attack sets, in faces, when ``worst_case`` is
    set; see the module docstring); ``success``: an attack set's successful samples (None for the benign set, the worst
    case and older results). ``auroc`` (None for the benign set, or when a side has no eligible sample) and the ROC
    points ``roc_fpr`` / ``roc_tpr`` (fractions in [0, 1]) compare the detector's scores of the set with its scores of
    the benign set; ``auroc_ci``: the AUROC's bootstrap interval ``(low, high)`` (None where there is no AUROC, and in
    results written before intervals existed). ``operating_points``: the set at each threshold of the detector's score
    calibrated to a target benign FPR (empty in results written before they existed). The Wilson intervals of the rates
    are derived from the counts (:meth:`rate_ci`, :meth:`undetected_ci`, :meth:`detection_ci_at`,
    :meth:`undetected_ci_at`).
    """

    detector: str
    name: str
    adversarial: bool
    n: int
    eligible: int
    flagged: int
    auroc: float | None = None
    auroc_ci: tuple[float, float] | None = None
    roc_fpr: list[float] = field(default_factory=list)
    roc_tpr: list[float] = field(default_factory=list)
    operating_points: list[OperatingPoint] = field(default_factory=list)
    success: int | None = None
    worst_case: bool = False

    @property
    def rate(self) -> float:
        """``flagged / eligible`` in [0, 1] (nan when nothing is eligible): FPR for benign, detection rate otherwise."""
        return ratio(self.flagged, self.eligible)

    def rate_ci(self, confidence: float = CONFIDENCE) -> Interval:
        """Wilson interval of :attr:`rate` (fractions); (nan, nan) when nothing is eligible."""
        return wilson_interval(self.flagged, self.eligible, confidence)

    @property
    def undetected_rate(self) -> float:
        """Attack set: ``(eligible - flagged) / n`` in [0, 1], the samples that fool the original model and are not
        flagged (nan when ``n == 0``); nan for the benign set."""
        return undetected_rate(self.eligible, self.flagged, self.n) if self.adversarial else float("nan")

    def undetected_ci(self, confidence: float = CONFIDENCE) -> Interval:
        """Wilson interval of :attr:`undetected_rate` (``eligible - flagged`` of ``n``); (nan, nan) for the benign
        set or when ``n == 0``."""
        return wilson_interval(self.eligible - self.flagged, self.n, confidence) if self.adversarial else NAN_INTERVAL

    def point(self, target_fpr: float) -> OperatingPoint | None:
        """The operating point calibrated to ``target_fpr`` (None if the set has none)."""
        return next((p for p in self.operating_points if p.target_fpr == target_fpr), None)

    def detected_at(self, target_fpr: float) -> int | None:
        """How many eligible samples score above the threshold for ``target_fpr`` (None without one)."""
        point = self.point(target_fpr)
        return None if point is None else point.detected

    def detection_at(self, target_fpr: float) -> float:
        """``detected / eligible`` at the threshold for ``target_fpr`` (benign set: its achieved FPR); nan when
        nothing is eligible or there is no threshold."""
        return ratio(self.detected_at(target_fpr), self.eligible)

    def detection_ci_at(self, target_fpr: float, confidence: float = CONFIDENCE) -> Interval:
        """Attack set: Wilson interval of :meth:`detection_at` given the threshold; (nan, nan) without a threshold,
        when nothing is eligible, and for the benign set (its achieved FPR is fixed by the calibration on these very
        samples)."""
        detected = self.detected_at(target_fpr)
        if not self.adversarial or detected is None:
            return NAN_INTERVAL
        return wilson_interval(detected, self.eligible, confidence)

    def undetected_at(self, target_fpr: float) -> float:
        """Attack set: ``(eligible - detected) / n`` at the threshold for ``target_fpr``; nan for the benign set, when
        ``n == 0`` or without a threshold."""
        detected = self.detected_at(target_fpr)
        return undetected_rate(self.eligible, detected, self.n) if self.adversarial else float("nan")

    def undetected_ci_at(self, target_fpr: float, confidence: float = CONFIDENCE) -> Interval:
        """Attack set: Wilson interval of :meth:`undetected_at` given the threshold; (nan, nan) where that is
        nan."""
        detected = self.detected_at(target_fpr)
        if not self.adversarial or detected is None:
            return NAN_INTERVAL
        return wilson_interval(self.eligible - detected, self.n, confidence)

    def evaded_at(self, target_fpr: float) -> int | None:
        """Attack set: how many samples succeed and are not flagged at the threshold for ``target_fpr`` (worst case:
        faces some attack got through); None without it."""
        point = self.point(target_fpr)
        return None if point is None or not self.adversarial else point.evaded

    def success_rate_at(self, target_fpr: float) -> float:
        """SR@N: :meth:`evaded_at` over ``n``; nan where undefined."""
        return ratio(self.evaded_at(target_fpr), self.n)

    def success_ci_at(self, target_fpr: float, confidence: float = CONFIDENCE) -> Interval:
        """Wilson interval of :meth:`success_rate_at` given the threshold; (nan, nan) where that is nan."""
        evaded = self.evaded_at(target_fpr)
        return NAN_INTERVAL if evaded is None else wilson_interval(evaded, self.n, confidence)

    def success_at_text(self, target_fpr: float, ci: bool = True) -> str:
        """:meth:`success_rate_at` in % with its counts and (``ci``) its interval; ``"-"`` where undefined."""
        evaded = self.evaded_at(target_fpr)
        return "-" if evaded is None else fraction_text(evaded, self.n, self.success_ci_at(target_fpr) if ci else None)

    @property
    def metric(self) -> str:
        """What :attr:`rate` is: ``"detection"`` for an attack set, ``"FPR"`` for the benign set, ``"worst-case
        detection"`` for the worst case."""
        if self.worst_case:
            return "worst-case detection"
        return "detection" if self.adversarial else "FPR"

    def rate_text(self, ci: bool = True) -> str:
        """The rate in % with its counts and (``ci``) its interval in %, e.g. ``"87.50 % (7/8) [52.9, 97.8]"``;
        ``"n/a (0/0)"`` when nothing is eligible."""
        return fraction_text(self.flagged, self.eligible, self.rate_ci() if ci else None)

    def detection_at_text(self, target_fpr: float, ci: bool = True) -> str:
        """:meth:`detection_at` in % with its counts and (``ci``, attack sets) its interval, e.g.
        ``"78.89 % (71/90) [69.4, 86.0]"``; ``"-"`` without a threshold."""
        detected = self.detected_at(target_fpr)
        interval = self.detection_ci_at(target_fpr) if ci else None
        return "-" if detected is None else fraction_text(detected, self.eligible, interval)

    def undetected_text(self, ci: bool = True) -> str:
        """:attr:`undetected_rate` in % with its counts and (``ci``) its interval, e.g.
        ``"9.00 % (9/100) [4.8, 16.2]"``; ``"-"`` for the benign set."""
        if not self.adversarial:
            return "-"
        return fraction_text(self.eligible - self.flagged, self.n, self.undetected_ci() if ci else None)

    def auroc_text(self, ci: bool = True) -> str:
        """AUROC with 3 decimals and (``ci``, where there is one) its interval, e.g. ``"0.943 [0.901, 0.977]"``;
        ``"-"`` when there is none."""
        if is_missing(self.auroc):
            return "-"
        interval = f" {interval_text(self.auroc_ci, 1.0, 3)}" if ci and has_interval(self.auroc_ci) else ""
        return f"{self.auroc:.3f}{interval}"


@dataclass
class RunResults:
    """Everything one evaluation run reports.

    ``sets``: every detector's figures, per detector its benign set first, then its attack sets (at most one
    :class:`SetResult` per detector and set: ValueError otherwise); ``model``: the model's name; ``detectors``:
    detector name -> description, in the run's order, ``{"type": registered type, "params": {...}, "score": what
    the score measures and its unit, "rule": the published flag rule in words, "gradient": "exact" |
    "straight-through" | "none"}`` (:meth:`ami_lightning.detectors.base.Detector.description`); ``attack_sets``:
    attack set name -> ``{"attack": registered attack name, "detector": the detector an adaptive set attacked, or
    None}``; ``extra``: free-form JSON-able figures (e.g. accuracy); ``samples``: per attack set, a few of its
    samples (:class:`SampleBatch`); ``bootstrap``: the settings of the AUROC
    intervals' bootstrap, ``{"resamples": int, "seed": int}`` (None when not known, e.g. results written before
    intervals existed); ``provenance``: the command, commit and machine of the run
    (:func:`ami_lightning.pipeline.provenance.provenance`; None for older files).
    """

    sets: list[SetResult]
    model: str
    detectors: dict[str, dict[str, Any]]
    attack_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, SampleBatch] = field(default_factory=dict)
    bootstrap: dict[str, int] | None = None
    provenance: dict[str, Any] | None = None
    comparisons: list[PairedComparison] = field(default_factory=list)

    def __post_init__(self) -> None:
        seen = set()
        for s in self.sets:
            if (s.detector, s.name) in seen:
                raise ValueError(f"RunResults: detector {s.detector!r} has the set {s.name!r} twice")
            seen.add((s.detector, s.name))

    @property
    def detector_names(self) -> list[str]:
        """The detectors in the order of :attr:`detectors`, then any other detector of :attr:`sets` in order of
        first appearance."""
        return list(dict.fromkeys([*self.detectors, *(s.detector for s in self.sets)]))

    def sets_of(self, detector: str) -> list[SetResult]:
        """The sets of ``detector``, in order (empty for an unknown name)."""
        return [s for s in self.sets if s.detector == detector]

    def benign_of(self, detector: str) -> SetResult | None:
        """The first non-adversarial set of ``detector`` (None if it has none)."""
        return next((s for s in self.sets_of(detector) if not s.adversarial), None)

    def attacks_of(self, detector: str) -> list[SetResult]:
        """The attack sets of ``detector``, in order (without its worst case)."""
        return [s for s in self.sets_of(detector) if s.adversarial and not s.worst_case]

    def worst_case_of(self, detector: str) -> SetResult | None:
        """The worst case over the attack sets of ``detector`` (None when the run has none)."""
        return next((s for s in self.sets_of(detector) if s.worst_case), None)

    @property
    def set_names(self) -> list[str]:
        """The names of the attack sets, each once, in order of first appearance (not the worst case)."""
        return list(dict.fromkeys(s.name for s in self.sets if s.adversarial and not s.worst_case))

    def attacked_detector(self, set_name: str) -> str | None:
        """The detector the adaptive attack set ``set_name`` attacked (:attr:`attack_sets`); None for a
        non-adaptive or unknown set."""
        return (self.attack_sets.get(set_name) or {}).get("detector")

    @property
    def fpr_targets(self) -> list[float]:
        """The target benign FPRs of the sets' operating points, ascending (empty for results without them)."""
        return sorted({p.target_fpr for s in self.sets for p in s.operating_points})

    def title(self) -> str:
        """One line naming the detectors and the model, e.g. ``"ami, feature_squeezing on dlib_resnet"``."""
        return f"{', '.join(self.detector_names) or 'no detector'} on {self.model}"

    def intervals(self) -> dict[str, str]:
        """How the intervals were computed (:func:`interval_methods` of :attr:`bootstrap`)."""
        return interval_methods(self.bootstrap)


def interval_methods(bootstrap: dict[str, int] | None, confidence: float = CONFIDENCE) -> dict[str, str]:
    """The methods of a run's intervals, in words: ``rates`` (Wilson score), ``auroc`` (stratified percentile
    bootstrap, with the number of resamples and the seed of ``bootstrap`` when known) and ``calibrated`` (what the
    interval of a rate at a calibrated threshold covers); e.g. ``{"rates": "Wilson score, 95 %", "auroc":
    "stratified bootstrap, percentile, 95 %, 1000 resamples, seed 0", ...}``."""
    level = f"{100 * confidence:g} %"
    auroc = f"stratified bootstrap, percentile, {level}"
    if bootstrap:
        auroc += f", {bootstrap['resamples']} resamples, seed {bootstrap['seed']}"
    else:
        auroc += " (resamples and seed not recorded)"
    calibrated = (f"Wilson score, {level}, given the threshold (the calibration's own variation is not included); "
                  "none for the benign set's achieved FPR")
    return {"rates": f"Wilson score, {level}", "auroc": auroc, "calibrated": calibrated}


@dataclass
class SampleBatch:
    """k samples of one attack set: pixels float (k, 3, H, W) RGB in [0, 255], the true identity and the identity
    the model gives the adversarial image (k names each), and ``flagged``: detector name -> whether it flags each
    adversarial image (k bools each), in the run's order of detectors."""

    original: torch.Tensor
    adversarial: torch.Tensor
    true_identity: list[str]
    adversarial_identity: list[str]
    flagged: dict[str, list[bool]]

    def __post_init__(self) -> None:
        check_sample_batch(self)

    def __len__(self) -> int:
        """``k``, the number of samples."""
        return len(self.original)


def check_sample_batch(batch: SampleBatch, name: str = "samples") -> None:
    """ValueError unless ``original`` and ``adversarial`` are both (k, 3, H, W) of one shape with k >= 1, and the
    identity lists and each detector's list of ``flagged`` have k entries; TypeError unless ``flagged`` is a mapping
    (``name`` prefixes the messages)."""
    original, adversarial = batch.original, batch.adversarial
    if original.dim() != 4 or original.shape[1] != 3 or len(original) == 0:
        raise ValueError(f"{name}: original pixels must be (k, 3, H, W) RGB with k >= 1, got {tuple(original.shape)}")
    if original.shape != adversarial.shape:
        raise ValueError(f"{name}: original {tuple(original.shape)} and adversarial {tuple(adversarial.shape)} "
                         "pixels differ in shape")
    if not isinstance(batch.flagged, Mapping):
        raise TypeError(f"{name}: flagged must map each detector's name to its k flags, got "
                        f"{type(batch.flagged).__name__}")
    k = len(original)
    lengths = {"true_identity": len(batch.true_identity), "adversarial_identity": len(batch.adversarial_identity),
               **{f"flagged[{detector}]": len(flags) for detector, flags in batch.flagged.items()}}
    wrong = {key: length for key, length in lengths.items() if length != k}
    if wrong:
        raise ValueError(f"{name}: {k} samples but {wrong} entries")
