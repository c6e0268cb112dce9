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
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from ami_lightning.evaluation.paired import PairedComparison
from ami_lightning.evaluation.thresholds import OperatingPoint
from ami_lightning.pipeline.files import write_text
from ami_lightning.reporting.formatting import has_interval, json_safe
from ami_lightning.reporting.matrix import plot_matrix
from ami_lightning.reporting.metrics import scalar_metrics
from ami_lightning.reporting.plots import plot_detection_rates, plot_roc, plot_undetected
from ami_lightning.reporting.records import (
    LEGACY_DETECTOR,
    RunResults,
    SampleBatch,
    SetResult,
    check_sample_batch,
    interval_methods,
)
from ami_lightning.reporting.samples import save_sample_figures
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
    ``comparisons`` (every pair of detectors per attack set and on the worst case:
    :class:`~ami_lightning.evaluation.paired.PairedComparison` fields), ``extra`` and ``provenance``."""
    return json_safe({
        "model": results.model,
        "detectors": results.detectors,
        "attack_sets": results.attack_sets,
        "intervals": results.intervals(),
        "bootstrap": results.bootstrap,
        "sets": [_set_dict(s) for s in results.sets],
        "worst_case": {s.detector: _worst_case_dict(s) for s in results.sets if s.worst_case},
        "comparisons": [c.to_dict() for c in results.comparisons],
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
    ``weaken`` and ``strengthen``), the one AmI detector that evaluated it, :data:`LEGACY_DETECTOR`, described by the
    AmI detector's own class (its score, rule and gradient)."""
    if "detectors" in data:
        return data["detectors"]
    from ami_lightning.detectors.ami import AmIDetector as ami

    return {LEGACY_DETECTOR: {
        "type": LEGACY_DETECTOR,
        "params": {"weaken": data["weaken"], "strengthen": list(data["strengthen"])},
        "score": ami.score_unit,
        "rule": ami.rule,
        "gradient": ami.gradient,
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
        comparisons=[PairedComparison(**c) for c in data.get("comparisons", [])],
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
        **({"matrix": plot_matrix(results, out_dir / "matrix.png")} if results.set_names else {}),
        **save_sample_figures(results, out_dir),
    }
    if is_wandb_logger(logger):
        log_to_wandb(results, logger, figures)
    return {**paths, **figures}
