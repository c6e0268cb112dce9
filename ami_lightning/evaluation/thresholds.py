"""Operating points of a detector's continuous score (:attr:`ami_lightning.detectors.base.Detector.score_unit`).

Besides each detector's own rule (AmI: the original and the steered model disagree on top-1; Feature Squeezing: its
score above a threshold calibrated on the benign set), a set can be judged at a *calibrated threshold*: the score
threshold at which a target fraction of the benign set's eligible samples (the benign images the original model gets
right) is flagged, with the rule ``score > threshold``. An attack set's detection rate at that threshold is then
comparable across detectors at the same benign false-positive rate.

The *undetected success rate* of an attack set is the fraction of its evaluated samples (``n``, skipped files
excluded) that fool the original model and are not flagged: ``(eligible - flagged) / n`` at the detector's own rule,
and ``(eligible - detected) / n`` at a calibrated threshold.

Scores are compared in float64 (a float32 score is exact there), so a threshold must be applied with :func:`above`
or :func:`count_above`, not by comparing a float32 tensor with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OperatingPoint:
    """One set at the threshold calibrated to ``target_fpr`` (fraction in [0, 1]).

    ``threshold``: the score threshold (the score's unit; flagged when ``score > threshold``), nan when the benign
    set has no eligible sample; ``benign_fpr``: the benign FPR achieved at it (fraction, <= ``target_fpr``; nan
    likewise); ``detected``: how many of the set's eligible scores are above it (None when there is no threshold).
    For the benign set itself ``detected`` counts its flagged eligible samples, so ``detected / eligible ==
    benign_fpr``. ``evaded``: attack set, how many of its samples succeed
    (:func:`~ami_lightning.evaluation.success.attack_success`) and score at most the threshold, the numerator of
    SR@N (None for the benign set, without a threshold, and in results written before it existed).
    """

    target_fpr: float
    threshold: float
    benign_fpr: float
    detected: int | None
    evaded: int | None = None


def check_target_fpr(target_fpr: float) -> float:
    """``target_fpr`` as a float; ValueError unless it is a fraction in [0, 1] (not a percentage, not nan)."""
    target = float(target_fpr)
    if not 0.0 <= target <= 1.0:  # also rejects nan
        raise ValueError(f"a target FPR is a fraction in [0, 1], got {target_fpr!r}")
    return target


def _scores(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` flat, float64, on the CPU; ValueError if any is nan (it would rank nowhere)."""
    flat = scores.detach().flatten().to("cpu", torch.float64)
    if torch.isnan(flat).any():
        raise ValueError("detection scores must not be nan")
    return flat


def threshold_at_fpr(benign_scores: torch.Tensor, target_fpr: float) -> float:
    """The score threshold at which at most ``target_fpr`` of ``benign_scores`` (N,) are above it (``score > t``).

    With ``k`` the largest count such that ``k / N <= target_fpr`` (``k = floor(target_fpr * N)`` up to float
    rounding of the target), the threshold is the ``(k + 1)``-th largest score, so exactly ``k`` benign scores are
    above it when the scores are distinct: the achieved FPR ``f`` then satisfies ``target - 1/N < f <= target``.
    With ties at the threshold all tied scores stay unflagged, so ``f`` is the largest FPR the rule can reach that
    does not exceed the target (fewer than ``k`` may be flagged; never more). ``target_fpr == 1`` (``k == N``) gives
    the float64 just below the smallest score (every score flagged); ``target_fpr == 0`` gives the largest score.

    Returns a float (in the scores' unit); nan when ``benign_scores`` is empty (no calibration possible).
    Raises ValueError for a target outside [0, 1] or a nan score.
    """
    target = check_target_fpr(target_fpr)
    scores = _scores(benign_scores)
    n = len(scores)
    if n == 0:
        return float("nan")
    k = min(math.floor(target * n), n)
    if (k + 1) / n <= target:  # target * n rounded down below an integer it equals as a fraction
        k += 1
    elif k / n > target:  # ... or up above one
        k -= 1
    if k >= n:
        return torch.nextafter(scores.min(), torch.tensor(-math.inf, dtype=torch.float64)).item()
    return torch.sort(scores, descending=True).values[k].item()


def above(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N,) bool on the scores' device: which of ``scores`` (N,) are strictly above ``threshold`` (the rule
    ``score > threshold``), compared in float64. ValueError for a nan threshold (no calibration)."""
    if math.isnan(threshold):
        raise ValueError("the threshold is nan: the benign set had no eligible score to calibrate on (the model gets "
                         "no benign image right, top-1 accuracy 0, or the set is empty); check that the model's "
                         "weights and identity names or gallery (model.weights, model.names, model.faces_dir) match "
                         "the benign set")
    return scores.detach().to(torch.float64) > threshold


def count_above(scores: torch.Tensor, threshold: float) -> int:
    """How many of ``scores`` (any shape) are strictly above ``threshold`` (:func:`above`), compared in float64.

    Raises ValueError for a nan threshold (no calibration) or a nan score.
    """
    return int(above(_scores(scores), threshold).sum())


def operating_point(
    benign_scores: torch.Tensor, scores: torch.Tensor, target_fpr: float, success_scores: torch.Tensor | None = None
) -> OperatingPoint:
    """A set's :class:`OperatingPoint` at the threshold calibrated on ``benign_scores`` (N,) to ``target_fpr``;
    ``scores`` (M,): the set's eligible scores; ``success_scores`` (S,): those of its successful samples (attack
    sets; gives ``evaded``, the S minus those above the threshold). Without benign scores: nan threshold and FPR,
    ``detected`` and ``evaded`` None."""
    threshold = threshold_at_fpr(benign_scores, target_fpr)
    if math.isnan(threshold):
        return OperatingPoint(float(target_fpr), threshold, float("nan"), None)
    benign_fpr = count_above(benign_scores, threshold) / benign_scores.numel()
    evaded = None if success_scores is None else success_scores.numel() - count_above(success_scores, threshold)
    return OperatingPoint(float(target_fpr), threshold, benign_fpr, count_above(scores, threshold), evaded)


def undetected_rate(eligible: int, detected: int | None, n: int) -> float:
    """``(eligible - detected) / n``: the fraction of ``n`` evaluated samples that fool the original model and are
    not flagged; nan when ``n == 0`` or ``detected`` is None."""
    return (eligible - detected) / n if n and detected is not None else float("nan")


def ratio(count: int | None, total: int) -> float:
    """``count / total``; nan when ``total == 0`` or ``count`` is None."""
    return count / total if total and count is not None else float("nan")


def fpr_suffix(target_fpr: float) -> str:
    """The metric-name suffix of a target, e.g. ``"at_fpr_0.05"``."""
    return f"at_fpr_{target_fpr:g}"


def point_metrics(
    points: Sequence[OperatingPoint], n: int, eligible: int, flagged: int, adversarial: bool
) -> dict[str, float]:
    """A set's scalars beyond the binary rate, keyed by name (to be prefixed ``<set>/``), all fractions in [0, 1]
    except thresholds (in the score's unit), nan where undefined.

    Attack set: ``undetected`` (binary rule), and per target ``detection_at_fpr_<t>``, ``undetected_at_fpr_<t>`` and
    ``success_rate_at_fpr_<t>`` (SR@N: ``evaded / n``).
    Benign set: per target ``threshold_at_fpr_<t>`` and ``achieved_fpr_at_fpr_<t>``.
    """
    metrics = {"undetected": undetected_rate(eligible, flagged, n)} if adversarial else {}
    for p in points:
        suffix = fpr_suffix(p.target_fpr)
        if adversarial:
            metrics[f"detection_{suffix}"] = ratio(p.detected, eligible)
            metrics[f"undetected_{suffix}"] = undetected_rate(eligible, p.detected, n)
            metrics[f"success_rate_{suffix}"] = ratio(p.evaded, n)
        else:
            metrics[f"threshold_{suffix}"] = p.threshold
            metrics[f"achieved_fpr_{suffix}"] = p.benign_fpr
    return metrics
