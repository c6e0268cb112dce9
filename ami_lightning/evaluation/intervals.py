"""Confidence intervals of the reported figures (pure functions).

* :func:`wilson_interval`: the Wilson score interval of a binomial proportion ``successes / total`` (every rate of a
  run: benign FPR, detection rate, detection at a calibrated threshold, undetected success rate).
* :func:`bootstrap_auroc_interval`: a stratified percentile bootstrap interval of the AUROC of detection scores,
  positives (an attack set's eligible scores) against negatives (the benign set's eligible scores).
* :func:`mann_whitney_auroc`: the AUROC by the rank (Mann-Whitney) formula, ties counted 1/2; the statistic the
  bootstrap resamples.

All bounds are fractions in [0, 1] (AUROC likewise); ``(nan, nan)`` where a figure is undefined.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

CONFIDENCE = 0.95  # the level of every interval a run reports
BOOTSTRAP_RESAMPLES = 1000  # the default number of bootstrap resamples
BOOTSTRAP_SEED = 0  # the default seed of the bootstrap's generator
CHUNK_ELEMENTS = 1 << 22  # bootstrap: at most this many drawn indices per chunk of resamples (bounds memory)

Interval = tuple[float, float]
NAN_INTERVAL: Interval = (math.nan, math.nan)


def check_confidence(confidence: float) -> float:
    """``confidence`` as a float; ValueError unless it lies strictly between 0 and 1 (not a percentage, not nan)."""
    value = float(confidence)
    if not 0.0 < value < 1.0:  # also rejects nan
        raise ValueError(f"a confidence level is a fraction in (0, 1), got {confidence!r}")
    return value


def check_resamples(resamples: int) -> int:
    """``resamples`` as an int; ValueError unless it is a whole number >= 1."""
    if isinstance(resamples, bool) or int(resamples) != resamples or resamples < 1:
        raise ValueError(f"the number of bootstrap resamples must be an integer >= 1, got {resamples!r}")
    return int(resamples)


def _z(confidence: float) -> float:
    """The two-sided standard-normal quantile of ``confidence``: 1.959964 for 0.95."""
    return NormalDist().inv_cdf(0.5 + check_confidence(confidence) / 2)


def wilson_interval(successes: int, total: int, confidence: float = CONFIDENCE) -> Interval:
    """The Wilson score interval ``(low, high)`` of the proportion ``successes / total``, fractions in [0, 1].

    With ``p = successes / total``, ``n = total`` and ``z`` the two-sided normal quantile of ``confidence``::

        centre = (p + z^2 / (2n)) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))

    The interval is ``centre -+ half``, with the lower bound exactly 0 at ``0 / n`` and the upper bound exactly 1 at
    ``n / n`` (where the formula gives them up to rounding). ``(nan, nan)`` when ``total == 0``.

    Raises ValueError unless ``0 <= successes <= total`` are integers and ``0 < confidence < 1``.
    """
    z = _z(confidence)
    if int(successes) != successes or int(total) != total or not 0 <= successes <= total:
        raise ValueError(f"need integers 0 <= successes <= total, got {successes!r} of {total!r}")
    k, n = int(successes), int(total)
    if n == 0:
        return NAN_INTERVAL
    p, z2 = k / n, z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def _scores(scores: torch.Tensor, name: str) -> torch.Tensor:
    """``scores`` (N,) sorted ascending, float64, on the CPU; ValueError unless 1-D and free of nan."""
    if scores.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor (N,), got shape {tuple(scores.shape)}")
    flat = scores.detach().to("cpu", torch.float64)
    if torch.isnan(flat).any():
        raise ValueError(f"{name} must not contain nan (a nan score has no rank)")
    return flat.sort().values


def _tie_counts(negatives: torch.Tensor, positives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of ``positives`` (M,): how many of the sorted ``negatives`` (N,) are below it and how many are at most
    it, (M,) long each."""
    return (torch.searchsorted(negatives, positives, right=False),
            torch.searchsorted(negatives, positives, right=True))


def mann_whitney_auroc(negatives: torch.Tensor, positives: torch.Tensor) -> float:
    """AUROC of ``positives`` (M,) against ``negatives`` (N,) (scores, higher = more adversarial) by the rank
    formula ``U / (N M)``: the fraction of (negative, positive) pairs with the positive above, ties counted 1/2.
    nan when a side is empty; ValueError for a tensor that is not 1-D or holds nan."""
    negatives, positives = _scores(negatives, "negatives"), _scores(positives, "positives")
    if len(negatives) == 0 or len(positives) == 0:
        return math.nan
    below, at_most = _tie_counts(negatives, positives)
    return float((below + at_most).sum()) / (2 * len(negatives) * len(positives))


def bootstrap_aurocs(
    negatives: torch.Tensor,
    positives: torch.Tensor,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    chunk: int | None = None,
) -> torch.Tensor:
    """The AUROC (:func:`mann_whitney_auroc`) of each stratified bootstrap resample, (resamples,) float64.

    Draws (the order is part of the contract, so that the resamples can be rebuilt): both sides are first sorted
    ascending (the result depends only on the two multisets of scores, not on their order: processes that gather
    the scores in another order get the same draws); then one CPU ``torch.Generator`` seeded with ``seed`` gives,
    for each resample ``r = 0, 1, ...`` in turn, ``torch.randint(N, (N,))`` indices into the sorted negatives,
    then ``torch.randint(M, (M,))`` indices into the sorted positives (with replacement, each side keeping its
    size). The AUROCs are computed in chunks of ``chunk`` resamples (default: as many as keep a chunk within
    :data:`CHUNK_ELEMENTS` drawn indices); the chunk size changes memory use only, never the result.

    Per resample and without sorting it: ``U`` counts, for each drawn positive, the drawn negatives below it plus
    half those equal to it, read off the cumulative counts of the drawn negatives over the sorted originals. All
    counts are integers, so each AUROC is exact up to the final division.

    Raises ValueError for ``resamples < 1``, a bad ``chunk``, or scores that are not 1-D or hold nan; an empty side
    gives an empty tensor.
    """
    resamples = check_resamples(resamples)
    if chunk is not None and (int(chunk) != chunk or chunk < 1):
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    negatives, positives = _scores(negatives, "negatives"), _scores(positives, "positives")
    n, m = len(negatives), len(positives)
    if n == 0 or m == 0:
        return torch.zeros(0, dtype=torch.float64)
    below, at_most = _tie_counts(negatives, positives)  # (M,) per sorted positive
    chunk = int(chunk) if chunk is not None else max(1, CHUNK_ELEMENTS // (n + m))
    generator = torch.Generator().manual_seed(int(seed))
    aurocs = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        draws = [(torch.randint(n, (n,), generator=generator), torch.randint(m, (m,), generator=generator))
                 for _ in range(size)]
        negative_idx = torch.stack([d[0] for d in draws])  # (c, N)
        positive_idx = torch.stack([d[1] for d in draws])  # (c, M)
        # cumulative[:, i]: how many drawn negatives sit at sorted positions < i, (c, N + 1)
        counts = torch.zeros(size, n + 1, dtype=torch.long).scatter_add_(
            1, negative_idx + 1, torch.ones_like(negative_idx))
        cumulative = counts.cumsum(1)
        twice_u = (cumulative.gather(1, below[positive_idx]) + cumulative.gather(1, at_most[positive_idx])).sum(1)
        aurocs.append(twice_u.double() / (2 * n * m))
    return torch.cat(aurocs)


def bootstrap_auroc_interval(
    negatives: torch.Tensor,
    positives: torch.Tensor,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> Interval:
    """Stratified percentile bootstrap interval ``(low, high)`` of the AUROC of ``positives`` (M,) against
    ``negatives`` (N,) (detection scores, nats; any float dtype or device, computed in float64 on the CPU).

    Negatives and positives are resampled separately, with replacement (:func:`bootstrap_aurocs`: draws and seed
    semantics); the bounds are the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the
    ``resamples`` AUROCs, linearly interpolated between order statistics (``torch.quantile``, NumPy's default
    ``"linear"`` method). Deterministic for given scores, ``resamples`` and ``seed``. ``(nan, nan)`` when a side is
    empty.

    Raises ValueError for ``resamples < 1``, ``confidence`` outside (0, 1), or scores that are not 1-D or hold nan.
    """
    confidence = check_confidence(confidence)
    aurocs = bootstrap_aurocs(negatives, positives, resamples, seed)
    if len(aurocs) == 0:
        return NAN_INTERVAL
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(aurocs, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return low, high
