"""The results of one evaluation run of one or more detectors: the data model, ``results.json`` and :func:`write_all`.

A run evaluates each of its detectors (AmI, Feature Squeezing, ...) on the same benign set and attack sets; every
figure belongs to one detector and one set (:class:`SetResult`). Rates are fractions in [0, 1], shown as % with
their counts (``"9.62 % (33/343)"``): the benign set's is the detector's false-positive rate, an attack set's its
detection rate, each over the set's *eligible* samples (benign: the original model is right; attack: the original
model is fooled), a sample being flagged by the detector's own published rule (AmI: the original and the steered
model disagree on the top-1 identity; Feature Squeezing: its score is above the threshold calibrated on benign
images). AUROC and ROC points rank the detector's continuous score of an attack set's eligible samples (positives)
against the benign set's eligible samples (negatives).

Calibrated operating points (:mod:`ami_lightning.evaluation.thresholds`): per target benign FPR (e.g. 5 %, 50 %) the
score threshold set on the benign set's eligible scores (flagged when ``score > threshold``, the achieved FPR at
most the target), and each set's detection rate there (column ``det@5%FPR``; for the benign set its achieved FPR).
The *undetected success rate* of an attack set is the fraction of its ``n`` evaluated samples that fool the original
model and are not flagged, ``(eligible - flagged) / n`` (column ``undetected``), and likewise at each threshold.
**SR@N** (Bryniarski et al., ICLR 2022; column ``SR@5%``) is the fraction of the ``n`` samples that *succeed* (the
plain model predicts the attack's target, or any wrong identity for an untargeted set) and score at most the
threshold calibrated to N % benign FPR (:mod:`ami_lightning.evaluation.success`).

The **worst case over attacks** (MEAD, Granese et al. 2022) is one more row per detector, set ``worst_case``
(:attr:`SetResult.worst_case`), counted in faces: ``n`` faces attacked, ``eligible`` those some attack set fooled,
``flagged`` those whose every fooling version the detector flagged (its worst-case detection rate), and at each
threshold likewise; its ``undetected`` and ``SR@N`` are the faces on which some attack got through, over ``n``.

Intervals (:mod:`ami_lightning.evaluation.intervals`, all at 95 %): every rate carries its Wilson score interval,
derived from its counts (``"87.50 % (7/8) [52.9, 97.8]"``, bounds in %); a rate at a calibrated threshold is taken
given the threshold (the calibration's own variation is not included), and the benign set's achieved FPR there,
fixed by the calibration on those very samples, carries none. Every AUROC carries its stratified percentile
bootstrap interval, computed by the evaluation module from the scores (``"0.943 [0.901, 0.977]"``);
``results.json`` states both methods under ``intervals`` and the bootstrap's settings under ``bootstrap``.

Files written by :func:`write_all` under ``out_dir`` (each atomically,
:func:`ami_lightning.pipeline.files.atomic_path`): ``results.json`` (:func:`results_dict`), ``results.md``
(:mod:`~ami_lightning.reporting.tables`), ``detection_rates.png``, ``roc.png``, ``undetected.png``
(:mod:`~ami_lightning.reporting.plots`) and, per attack set with sample images, ``samples/<set>.png``
(:mod:`~ami_lightning.reporting.samples`). The other modules of this folder hold the tables, the plots, the sample
figures, the scalar metrics and the W&B logging; the names other code uses are re-exported here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ami_lightning.evaluation.intervals import CONFIDENCE, NAN_INTERVAL, Interval, wilson_interval
from ami_lightning.evaluation.thresholds import OperatingPoint, ratio, undetected_rate
from ami_lightning.pipeline.files import write_text
from ami_lightning.reporting.formatting import fraction_text, has_interval, interval_text, is_missing, json_safe
from ami_lightning.reporting.metrics import scalar_metrics
from ami_lightning.reporting.plots import plot_detection_rates, plot_roc, plot_undetected
from ami_lightning.reporting.samples import SampleBatch, check_sample_batch, save_sample_figures
from ami_lightning.reporting.tables import print_results, results_markdown
from ami_lightning.reporting.wandb_logging import is_wandb_logger, log_to_wandb

__all__ = [
    "LEGACY_DETECTOR",
    "RunResults",
    "SampleBatch",
    "SetResult",
    "check_sample_batch",
    "interval_methods",
    "print_results",
    "read_results",
    "results_dict",
    "scalar_metrics",
    "write_all",
    "write_results",
]

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
    samples (:class:`~ami_lightning.reporting.samples.SampleBatch`); ``bootstrap``: the settings of the AUROC
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


# ---- results.json ---------------------------------------------------------------------------------------------------
def _ci_json(interval: tuple[float, float] | None) -> list[float] | None:
    """An interval as ``[low, high]``, or None when it is missing or undefined."""
    return [float(interval[0]), float(interval[1])] if has_interval(interval) else None


def _set_dict(s: SetResult) -> dict[str, Any]:
    """``s`` as a dict (``detector`` and ``name`` first) with its derived rates and intervals: ``metric``, ``rate``,
    ``rate_ci``, ``undetected``, ``undetected_ci`` and, per operating point, ``detection``, ``detection_ci``,
    ``undetected``, ``undetected_ci``, ``success_rate`` (SR@N) and ``success_rate_ci`` (each interval ``[low, high]``
    or None where undefined)."""
    points = [{**asdict(p), "detection": s.detection_at(p.target_fpr),
               "detection_ci": _ci_json(s.detection_ci_at(p.target_fpr)), "undetected": s.undetected_at(p.target_fpr),
               "undetected_ci": _ci_json(s.undetected_ci_at(p.target_fpr)),
               "success_rate": s.success_rate_at(p.target_fpr),
               "success_rate_ci": _ci_json(s.success_ci_at(p.target_fpr))}
              for p in s.operating_points]
    return {**asdict(s), "auroc_ci": _ci_json(s.auroc_ci), "operating_points": points, "metric": s.metric,
            "rate": s.rate, "rate_ci": _ci_json(s.rate_ci()), "undetected": s.undetected_rate,
            "undetected_ci": _ci_json(s.undetected_ci())}


def _worst_case_dict(s: SetResult) -> dict[str, Any]:
    """A worst-case row under the names of the worst case (see :func:`results_dict`)."""
    points = [{"target_fpr": p.target_fpr, "threshold": p.threshold, "caught": p.detected,
               "detection": s.detection_at(p.target_fpr), "detection_ci": _ci_json(s.detection_ci_at(p.target_fpr)),
               "undetected": s.success_rate_at(p.target_fpr), "undetected_ci": _ci_json(s.success_ci_at(p.target_fpr))}
              for p in s.operating_points]
    return {"faces": s.n, "fooled": s.eligible, "caught": s.flagged, "detection": s.rate,
            "detection_ci": _ci_json(s.rate_ci()), "undetected": s.undetected_rate,
            "undetected_ci": _ci_json(s.undetected_ci()), "operating_points": points}


def results_dict(results: RunResults) -> dict[str, Any]:
    """Everything but the sample pixels, JSON-safe (NaN as None): ``model``, ``detectors``, ``attack_sets``,
    ``intervals`` (:func:`interval_methods`), ``bootstrap`` (its settings or None), ``sets`` (each with its detector,
    its derived rates and intervals: :func:`_set_dict`; the worst-case rows too), ``worst_case`` (detector -> its
    worst case in faces: ``faces``, ``fooled``, ``caught``, ``detection`` and ``undetected`` with their intervals, and
    per operating point ``caught``, ``detection`` and ``undetected`` (some attack got through) with theirs),
    ``extra`` and ``provenance``."""
    return json_safe({
        "model": results.model,
        "detectors": results.detectors,
        "attack_sets": results.attack_sets,
        "intervals": results.intervals(),
        "bootstrap": results.bootstrap,
        "sets": [_set_dict(s) for s in results.sets],
        "worst_case": {s.detector: _worst_case_dict(s) for s in results.sets if s.worst_case},
        "extra": results.extra,
        "provenance": results.provenance,
    })


def write_results(results: RunResults, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json`` (:func:`results_dict`, strict JSON) and ``results.md``
    (:func:`~ami_lightning.reporting.tables.results_markdown`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results_dict(results), indent=2, allow_nan=False) + "\n"
    return {
        "json": write_text(out_dir / "results.json", text),
        "md": write_text(out_dir / "results.md", results_markdown(results)),
    }


def _operating_point(data: dict[str, Any]) -> OperatingPoint:
    """An operating point from ``results.json`` (derived rates dropped; a null threshold or FPR reads as nan)."""
    nan = float("nan")
    return OperatingPoint(target_fpr=data["target_fpr"], detected=data["detected"], evaded=data.get("evaded"),
                          threshold=nan if data["threshold"] is None else data["threshold"],
                          benign_fpr=nan if data["benign_fpr"] is None else data["benign_fpr"])


def _read_interval(value: list[float | None] | None) -> tuple[float, float] | None:
    """An interval from ``results.json``: ``[low, high]`` as a tuple; None when absent or null."""
    if value is None or any(bound is None for bound in value):
        return None
    low, high = value
    return float(low), float(high)


def _set_result(data: dict[str, Any]) -> SetResult:
    """A set from ``results.json`` (derived rates dropped; a set without ``detector`` is :data:`LEGACY_DETECTOR`'s)."""
    names = {f.name for f in fields(SetResult)} - {"operating_points", "auroc_ci"}
    points = [_operating_point(p) for p in data.get("operating_points", [])]
    return SetResult(**{"detector": LEGACY_DETECTOR, **{k: v for k, v in data.items() if k in names}},
                     operating_points=points, auroc_ci=_read_interval(data.get("auroc_ci")))


def _detectors(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``detectors`` of ``results.json``; for a file written before runs had several detectors (top-level
    ``weaken`` and ``strengthen``), the one AmI detector that evaluated it, :data:`LEGACY_DETECTOR`."""
    if "detectors" in data:
        return data["detectors"]
    return {LEGACY_DETECTOR: {
        "type": "ami",
        "params": {"weaken": data["weaken"], "strengthen": list(data["strengthen"])},
        "score": "-log p of the original model's top-1 identity under the attribute-steered model (nats, >= 0)",
        "rule": "flagged when the original and the attribute-steered model disagree on the top-1 identity",
        "gradient": "exact",
    }}


def read_results(path: str | Path) -> RunResults:
    """A ``results.json`` back as :class:`RunResults` (without samples; a null AUROC reads as None).

    Older files read back too: written before runs had several detectors (top-level ``weaken`` / ``strengthen``,
    sets without ``detector``), as the one detector :data:`LEGACY_DETECTOR` with those parameters and no
    ``attack_sets``; before operating points existed, with none; before intervals existed, with no AUROC interval and
    ``bootstrap`` None (the Wilson intervals follow from the counts).
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return RunResults(
        sets=[_set_result(s) for s in data["sets"]],
        model=data["model"],
        detectors=_detectors(data),
        attack_sets=data.get("attack_sets", {}),
        extra=data["extra"],
        bootstrap=data.get("bootstrap"),
        provenance=data.get("provenance"),
    )


def write_all(results: RunResults, out_dir: str | Path, logger: Any = None) -> dict[str, Path]:
    """Write the results files, the plots and (when the run has samples) one sample figure per set under
    ``out_dir``; log them to W&B when ``logger`` is a Lightning ``WandbLogger``. Returns name -> path: ``json``,
    ``md``, ``detection_rates``, ``roc``, ``undetected`` and ``samples/<set>`` per set of ``results.samples``."""
    out_dir = Path(out_dir)
    paths = write_results(results, out_dir)
    figures = {
        "detection_rates": plot_detection_rates(results, out_dir / "detection_rates.png"),
        "roc": plot_roc(results, out_dir / "roc.png"),
        "undetected": plot_undetected(results, out_dir / "undetected.png"),
        **save_sample_figures(results, out_dir),
    }
    if is_wandb_logger(logger):
        log_to_wandb(results, logger, figures)
    return {**paths, **figures}
