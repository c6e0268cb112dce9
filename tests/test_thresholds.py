"""Thresholds calibrated to a target benign FPR, against a plain-Python reference, and the undetected success rate."""

from __future__ import annotations

import math

import pytest
import torch

from ami_lightning.evaluation.thresholds import (
    OperatingPoint,
    count_above,
    operating_point,
    point_metrics,
    threshold_at_fpr,
    undetected_rate,
)

TARGETS = (0.0, 0.01, 0.05, 0.07, 0.1, 0.29, 1 / 3, 0.5, 0.99, 1.0)


def _best_count(scores: list[float], target: float) -> int:
    """Reference: the most scores any rule ``score > t`` flags without the flagged fraction exceeding ``target``."""
    best = 0
    for t in [*scores, -math.inf]:  # every distinct flagged set is 'above one of the scores' or 'all'
        count = 0
        for s in scores:
            if s > t:
                count += 1
        if count / len(scores) <= target:
            best = max(best, count)
    return best


def _flagged(scores: torch.Tensor, target: float) -> int:
    return count_above(scores, threshold_at_fpr(scores, target))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 20, 33, 100, 343])
def test_distinct_scores_reach_the_target_within_one_sample(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    for trial in range(3):
        scores = torch.rand(n, generator=g) * 10 ** trial  # float32, distinct with overwhelming probability
        assert len(scores.unique()) == n
        for target in (*TARGETS, *torch.rand(5, generator=g).tolist()):
            flagged = _flagged(scores, target)
            assert flagged == _best_count(scores.tolist(), target) == math.floor(round(target * n, 9))
            fpr = flagged / n
            assert target - 1 / n < fpr <= target


@pytest.mark.parametrize("n", [1, 5, 10, 40, 101])
def test_ties_never_exceed_the_target(n: int) -> None:
    g = torch.Generator().manual_seed(100 + n)
    for levels in (1, 2, 4, 10):
        scores = torch.randint(0, levels, (n,), generator=g).float() / 3
        for target in (*TARGETS, *torch.rand(5, generator=g).tolist()):
            flagged = _flagged(scores, target)
            assert flagged / n <= target
            assert flagged == _best_count(scores.tolist(), target)  # the best the rule can do under ties
    tied = torch.tensor([1.0, 2.0, 2.0, 2.0, 3.0])  # 40 % FPR would need 2 flagged: only 1 (the 3.0) or 4 can be
    assert threshold_at_fpr(tied, 0.4) == 2.0 and _flagged(tied, 0.4) == 1
    assert _flagged(tied, 0.8) == 4 and _flagged(tied, 0.79) == 1


def test_threshold_values_and_extremes() -> None:
    scores = torch.tensor([0.5, 3.0, 1.0, 2.0, 4.0, 0.25, 6.0, 5.0, 0.75, 1.5])  # 10 distinct
    assert threshold_at_fpr(scores, 0.1) == 5.0  # one above: 6.0
    assert threshold_at_fpr(scores, 0.05) == 6.0 == threshold_at_fpr(scores, 0.0)  # none above
    assert threshold_at_fpr(scores, 0.3) == 3.0  # three above
    hundred = torch.arange(100, dtype=torch.float32)
    assert 0.29 * 100 < 29 and threshold_at_fpr(hundred, 0.29) == 70.0  # 29 above, although 0.29 * 100 floors to 28
    everything = threshold_at_fpr(scores, 1.0)
    assert math.isfinite(everything) and everything < 0.25 and count_above(scores, everything) == 10
    assert count_above(scores.double(), 2.0) == count_above(scores.view(2, 5), 2.0) == 4


def test_bad_input_is_rejected() -> None:
    scores = torch.rand(10)
    for target in (-0.01, 1.01, 5.0, float("nan")):
        with pytest.raises(ValueError, match=r"a target FPR is a fraction in \[0, 1\], got"):
            threshold_at_fpr(scores, target)
    with pytest.raises(ValueError, match="must not be nan"):
        threshold_at_fpr(torch.tensor([0.1, float("nan")]), 0.1)
    with pytest.raises(ValueError, match="threshold is nan"):
        count_above(scores, float("nan"))


def test_no_benign_scores_means_no_threshold() -> None:
    assert math.isnan(threshold_at_fpr(torch.zeros(0), 0.05))
    point = operating_point(torch.zeros(0), torch.rand(4), 0.05)
    assert point.target_fpr == 0.05 and math.isnan(point.threshold) and math.isnan(point.benign_fpr)
    assert point.detected is None
    assert math.isnan(undetected_rate(4, point.detected, 5)) and math.isnan(undetected_rate(0, 0, 0))


def test_operating_point_counts_the_set_above_the_benign_threshold() -> None:
    benign = torch.arange(20, dtype=torch.float32)  # 0..19: at 10 % the threshold is 17 (18, 19 above)
    attack = torch.tensor([16.5, 17.0, 17.5, 30.0, 0.0])
    point = operating_point(benign, attack, 0.1)
    assert point == OperatingPoint(0.1, 17.0, 0.1, 2)
    assert operating_point(benign, attack, 0.05) == OperatingPoint(0.05, 18.0, 0.05, 1)
    # SR@N's numerator: of the successful samples' scores, those not above the threshold (17.0 is not above it)
    success = torch.tensor([17.0, 17.5, 2.0])
    assert operating_point(benign, attack, 0.1, success).evaded == 2
    assert operating_point(benign, attack, 0.1, success[:0]).evaded == 0
    assert operating_point(benign[:0], attack, 0.1, success).evaded is None  # no threshold


def test_point_metrics_names_and_values() -> None:
    points = [OperatingPoint(0.05, 3.0, 0.04, 30, 42), OperatingPoint(0.1, 2.0, 0.1, 45, 27)]
    attack = point_metrics(points, n=100, eligible=80, flagged=60, adversarial=True)
    assert attack == {
        "undetected": 0.2,  # (80 - 60) / 100
        "detection_at_fpr_0.05": 30 / 80, "undetected_at_fpr_0.05": 0.5, "success_rate_at_fpr_0.05": 0.42,
        "detection_at_fpr_0.1": 45 / 80, "undetected_at_fpr_0.1": 0.35, "success_rate_at_fpr_0.1": 0.27,
    }
    benign = point_metrics(points, n=50, eligible=25, flagged=3, adversarial=False)
    assert benign == {"threshold_at_fpr_0.05": 3.0, "achieved_fpr_at_fpr_0.05": 0.04,
                      "threshold_at_fpr_0.1": 2.0, "achieved_fpr_at_fpr_0.1": 0.1}
    empty = point_metrics([OperatingPoint(0.05, math.nan, math.nan, None)], n=0, eligible=0, flagged=0,
                          adversarial=True)
    assert set(empty) == {"undetected", "detection_at_fpr_0.05", "undetected_at_fpr_0.05", "success_rate_at_fpr_0.05"}
    assert all(math.isnan(v) for v in empty.values())
