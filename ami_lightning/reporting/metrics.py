"""A run's results as flat scalar metrics, ``<detector>/<set>/<figure>`` -> number, for any Lightning logger.

Rates are fractions in [0, 1] (nan where undefined), thresholds in the unit of the detector's score; every interval
is logged as its two bounds, ``<figure>_ci_low`` / ``<figure>_ci_high``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ami_lightning.evaluation.thresholds import fpr_suffix, point_metrics

if TYPE_CHECKING:
    from ami_lightning.reporting.records import RunResults, SetResult


def _flatten_numbers(values: dict[str, Any], prefix: str) -> dict[str, float | int]:
    """The int / float leaves of a nested dict, keyed ``<prefix>/<key>/<key>...`` (bools left out)."""
    out: dict[str, float | int] = {}
    for key, value in values.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out.update(_flatten_numbers(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    return out


def set_intervals(s: SetResult, fpr_targets: list[float]) -> dict[str, tuple[float, float]]:
    """A set's intervals keyed by the name of the figure they bound (fractions, nan where undefined): ``rate``,
    ``auroc`` (where there is one) and, for an attack set, ``undetected`` and per target ``detection_at_fpr_<t>``,
    ``undetected_at_fpr_<t>`` and ``success_rate_at_fpr_<t>`` (SR@N)."""
    intervals = {"rate": s.rate_ci()}
    if s.auroc_ci is not None:
        intervals["auroc"] = s.auroc_ci
    if s.adversarial:
        intervals["undetected"] = s.undetected_ci()
        for t in fpr_targets:
            intervals[f"detection_{fpr_suffix(t)}"] = s.detection_ci_at(t)
            intervals[f"undetected_{fpr_suffix(t)}"] = s.undetected_ci_at(t)
            intervals[f"success_rate_{fpr_suffix(t)}"] = s.success_ci_at(t)
    return intervals


def set_metrics(s: SetResult) -> dict[str, float | int]:
    """One set's figures keyed without prefix: ``rate``, ``flagged``, ``eligible``, ``n``, ``auroc`` (where there
    is one), those of :func:`~ami_lightning.evaluation.thresholds.point_metrics` (e.g. ``undetected``,
    ``detection_at_fpr_0.05``, benign: ``threshold_at_fpr_0.05``) and the bounds of each interval of
    :func:`set_intervals` as ``<figure>_ci_low`` / ``<figure>_ci_high``."""
    metrics: dict[str, float | int] = {"rate": s.rate, "flagged": s.flagged, "eligible": s.eligible, "n": s.n}
    if s.auroc is not None:
        metrics["auroc"] = s.auroc
    metrics.update(point_metrics(s.operating_points, s.n, s.eligible, s.flagged, s.adversarial))
    for key, (low, high) in set_intervals(s, [p.target_fpr for p in s.operating_points]).items():
        metrics.update({f"{key}_ci_low": low, f"{key}_ci_high": high})
    return metrics


def scalar_metrics(results: RunResults) -> dict[str, float | int]:
    """:func:`set_metrics` of every set keyed ``<detector>/<set>/<figure>`` (e.g. ``ami/fgsm/rate``,
    ``feature_squeezing/benign/threshold_at_fpr_0.05``, ``ami/fgsm/auroc_ci_low``), plus the numbers in ``extra``
    as ``extra/<key>`` (nested keys joined by ``/``)."""
    metrics = {f"{s.detector}/{s.name}/{key}": value for s in results.sets for key, value in set_metrics(s).items()}
    return {**metrics, **_flatten_numbers(results.extra, "extra")}
