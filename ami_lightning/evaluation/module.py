"""``DetectorEvalModule``: detectors side by side as a LightningModule; one ``trainer.test`` evaluates them all on the
benign set and every attack set."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import CatMetric, Metric, SumMetric
from torchmetrics.functional.classification import binary_auroc, binary_roc

from ami_lightning.data.datasets import SKIPPED
from ami_lightning.detectors.base import Detector
from ami_lightning.evaluation.intervals import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    bootstrap_auroc_interval,
    check_resamples,
    wilson_interval,
)
from ami_lightning.evaluation.metrics import FlagRate
from ami_lightning.evaluation.rates import eligible_mask
from ami_lightning.evaluation.thresholds import check_target_fpr, operating_point, point_metrics


class DetectorEvalModule(pl.LightningModule):
    """Evaluates every detector of ``detectors`` (name -> :class:`~ami_lightning.detectors.base.Detector`, all on
    one classifier) on the test dataloaders named ``set_names`` (the first is the benign set), in one pass: per
    batch the classifier's plain forward runs once and every detector gets its logits.

    Per detector and set: :class:`FlagRate` (FPR for the benign set, detection rate for attack sets; flags by the
    detector's own rule) and the continuous scores of the eligible samples, from which AUROC and ROC of each attack
    set against the benign set are computed, and the set's
    :class:`~ami_lightning.evaluation.thresholds.OperatingPoint` at the score threshold calibrated on the detector's
    benign scores to each of ``fpr_targets`` (benign FPRs, fractions in [0, 1]; deduplicated and sorted). After
    ``trainer.test`` the figures are in :attr:`results` (detector -> set -> dict): ``n`` (evaluated), ``skipped``,
    ``eligible``, ``flagged``, ``rate``, ``auroc`` (None for the benign set or without scores), ``auroc_ci`` (its
    95 % stratified percentile bootstrap interval ``(low, high)``,
    :func:`~ami_lightning.evaluation.intervals.bootstrap_auroc_interval` of the same eligible scores with
    ``bootstrap_resamples`` resamples drawn from a generator seeded with ``bootstrap_seed``; None where ``auroc``
    is), ``roc_fpr``, ``roc_tpr`` and ``operating_points`` (one per target, ascending).

    Logged per detector and set: ``<detector>/<set>/rate`` with its 95 % Wilson interval ``.../rate_ci_low`` /
    ``.../rate_ci_high`` (nan when nothing is eligible), ``.../auroc`` with ``.../auroc_ci_low`` /
    ``.../auroc_ci_high`` where there is one, and the operating-point figures of
    :func:`~ami_lightning.evaluation.thresholds.point_metrics`.

    Under DDP the scores are gathered on every process (CatMetric) and the bootstrap depends only on the multisets of
    scores (it sorts them first) and the seed, so every process computes the same interval, equal to one process's.
    """

    DEFAULT_FPR_TARGETS: tuple[float, ...] = (0.05, 0.10)

    def __init__(
        self,
        detectors: Mapping[str, Detector],
        set_names: Sequence[str],
        fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
        bootstrap_resamples: int = BOOTSTRAP_RESAMPLES,
        bootstrap_seed: int = BOOTSTRAP_SEED,
    ) -> None:
        super().__init__()
        if not set_names or set_names[0] != "benign":
            raise ValueError(f"the first set must be 'benign', got {list(set_names)}")
        if not detectors:
            raise ValueError("no detector to evaluate")
        models = {id(d.model) for d in detectors.values()}
        if len(models) != 1:
            raise ValueError(f"the detectors {list(detectors)} must share one classifier (their plain forward is "
                             "computed once per batch)")
        self.detectors = nn.ModuleDict(dict(detectors))
        self.model = next(iter(detectors.values())).model
        self.set_names = list(set_names)
        self.fpr_targets = sorted({check_target_fpr(t) for t in fpr_targets})
        self.bootstrap_resamples = check_resamples(bootstrap_resamples)
        self.bootstrap_seed = int(bootstrap_seed)
        sets = range(len(set_names))
        self.rates = nn.ModuleList([nn.ModuleList([FlagRate(adversarial=i > 0) for i in sets]) for _ in detectors])
        self.scores = nn.ModuleList([nn.ModuleList([CatMetric(nan_strategy="disable") for _ in sets])
                                     for _ in detectors])
        self.seen = nn.ModuleList([SumMetric() for _ in set_names])
        self.skipped = nn.ModuleList([SumMetric() for _ in set_names])
        self.results: dict[str, dict[str, dict[str, object]]] = {}

    @property
    def bootstrap(self) -> dict[str, int]:
        """The AUROC bootstrap's settings, ``{"resamples": ..., "seed": ...}`` (for
        :attr:`ami_lightning.reporting.results.RunResults.bootstrap`)."""
        return {"resamples": self.bootstrap_resamples, "seed": self.bootstrap_seed}

    def test_step(self, batch: Sequence[torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        pixels, labels = batch[0], batch[1]
        keep = labels != SKIPPED
        self.seen[dataloader_idx].update(keep.sum())
        self.skipped[dataloader_idx].update((~keep).sum())
        pixels, labels = pixels[keep], labels[keep]
        if len(labels) == 0:
            return
        logits = self.model(pixels)
        original_pred = logits.argmax(1)
        eligible = eligible_mask(original_pred, labels, adversarial=dataloader_idx > 0)
        for j, detector in enumerate(self.detectors.values()):
            out = detector(pixels, logits)
            self.rates[j][dataloader_idx].update(out.flagged, original_pred, labels)
            self.scores[j][dataloader_idx].update(out.score[eligible])

    def on_test_epoch_end(self) -> None:
        seen = [int(_compute(m)) for m in self.seen]
        skipped = [int(_compute(m)) for m in self.skipped]
        for j, name in enumerate(self.detectors):
            self.results[name] = self._detector_results(name, self.rates[j], self.scores[j], seen, skipped)
        for metric in (*self.seen, *self.skipped, *(m for per in (*self.rates, *self.scores) for m in per)):
            metric.reset()

    def _detector_results(
        self, detector: str, rates: nn.ModuleList, scores: nn.ModuleList, seen: list[int], skipped: list[int]
    ) -> dict[str, dict[str, object]]:
        """One detector's rows (set -> dict, see the class docstring), logged as ``<detector>/<set>/...``."""
        results: dict[str, dict[str, object]] = {}
        benign_scores = _cat(scores[0])
        for i, name in enumerate(self.set_names):
            rate = _compute(rates[i])
            set_scores = _cat(scores[i]) if i > 0 else benign_scores
            n, eligible, flagged = seen[i], int(rate["eligible"]), int(rate["flagged"])
            points = [operating_point(benign_scores, set_scores, t) for t in self.fpr_targets]
            row: dict[str, object] = {
                "n": n,
                "skipped": skipped[i],
                "eligible": eligible,
                "flagged": flagged,
                "rate": float(rate["rate"]),
                "auroc": None,
                "auroc_ci": None,
                "roc_fpr": [],
                "roc_tpr": [],
                "operating_points": points,
            }
            if i > 0 and len(set_scores) and len(benign_scores):
                preds = torch.cat([benign_scores, set_scores])
                target = torch.cat([torch.zeros_like(benign_scores), torch.ones_like(set_scores)]).long()
                fpr, tpr, _ = binary_roc(preds, target)
                interval = bootstrap_auroc_interval(benign_scores, set_scores, self.bootstrap_resamples,
                                                    self.bootstrap_seed, CONFIDENCE)
                row.update(auroc=float(binary_auroc(preds, target)), auroc_ci=interval, roc_fpr=fpr.tolist(),
                           roc_tpr=tpr.tolist())
            results[name] = row
            prefix = f"{detector}/{name}"
            self.log(f"{prefix}/rate", row["rate"], sync_dist=False)
            for bound, value in zip(("low", "high"), wilson_interval(flagged, eligible, CONFIDENCE), strict=True):
                self.log(f"{prefix}/rate_ci_{bound}", value, sync_dist=False)
            if row["auroc"] is not None:
                self.log(f"{prefix}/auroc", row["auroc"], sync_dist=False)
                for bound, value in zip(("low", "high"), row["auroc_ci"], strict=True):
                    self.log(f"{prefix}/auroc_ci_{bound}", value, sync_dist=False)
            for key, value in point_metrics(points, n, eligible, flagged, adversarial=i > 0).items():
                self.log(f"{prefix}/{key}", value, sync_dist=False)
        return results


def _compute(metric: Metric) -> Any:
    """``metric.compute()``, synced across processes (collective: every process calls it, also for a set it saw no
    batch of); quiet about sets without updates."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*compute.*called before.*update.*")
        return metric.compute()


def _cat(metric: CatMetric) -> torch.Tensor:
    """The concatenated values of a CatMetric as a flat float tensor on the CPU (empty when nothing was seen)."""
    value = _compute(metric)
    return value.flatten().float().cpu() if isinstance(value, torch.Tensor) else torch.zeros(0)
