"""Paired comparisons of detectors scored on the same samples: exact McNemar tests on the discordant samples, with
Holm's correction over the pairs of one attack set (or of the worst case).

Every detector of a run sees the same samples of a set, and a sample fools the plain model or not whatever the
detector, so two detectors' verdicts on the samples that fool the model are paired. A sample caught by one and not
by the other is discordant; under the null hypothesis that the two catch as often, the count caught only by the first
is Binomial(discordant, 1/2). The exact McNemar test is that binomial test, two-sided (doubling the smaller tail,
capped at 1, as ``scipy.stats.binomtest`` computes it for p = 1/2). The p-values of the pairs of one set are adjusted
by Holm's step-down method (family-wise error rate at the level, for the set's family of pairs); a pair is called
distinguishable at ``level`` (0.05) when its adjusted p-value is below it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any

import torch

LEVEL = 0.05
"""The family-wise level at which a pair of detectors is called distinguishable."""


@dataclass(frozen=True)
class PairedComparison:
    """Two detectors on the same ``total`` samples of set ``set`` (the samples that fool the model; for the worst
    case, the faces): ``only_first`` caught by ``first`` and not by ``second``, ``only_second`` the reverse;
    ``p_value`` the exact two-sided McNemar p-value, ``p_holm`` Holm's adjustment over the set's pairs; ``better``
    the detector that catches more when ``p_holm < LEVEL``, else None."""

    set: str
    first: str
    second: str
    total: int
    only_first: int
    only_second: int
    p_value: float
    p_holm: float
    better: str | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the fields by name)."""
        return asdict(self)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value of the discordant counts: ``min(1, 2 P[X <= min(b, c)])`` for X ~
    Binomial(b + c, 1/2) (1.0 without discordant samples). Computed in exact integer arithmetic."""
    if only_first < 0 or only_second < 0:
        raise ValueError(f"discordant counts must be >= 0, got {only_first}, {only_second}")
    n, k = only_first + only_second, min(only_first, only_second)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): the i-th smallest times (m - i), made monotone and
    capped at 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def compare_pairs(set_name: str, caught: Mapping[str, torch.Tensor], level: float = LEVEL) -> list[PairedComparison]:
    """Every pair (in the order of ``caught``) of detectors on one set: ``caught`` detector -> (N,) bool, whether it
    catches each of the same N samples (the samples that fool the model, in one order). ValueError when the lengths
    differ."""
    lengths = {name: len(flags) for name, flags in caught.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{set_name}: detectors compared on different numbers of samples: {lengths}")
    raw = []
    for first, second in combinations(caught, 2):
        a, b = caught[first].bool(), caught[second].bool()
        only_first, only_second = int((a & ~b).sum()), int((b & ~a).sum())
        raw.append((first, second, len(a), only_first, only_second, mcnemar_exact(only_first, only_second)))
    adjusted = holm([r[-1] for r in raw])
    out = []
    for (first, second, total, only_first, only_second, p), p_adj in zip(raw, adjusted, strict=True):
        better = None
        if p_adj < level and only_first != only_second:
            better = first if only_first > only_second else second
        out.append(PairedComparison(set_name, first, second, total, only_first, only_second, p, p_adj, better))
    return out
