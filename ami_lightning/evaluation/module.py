"""``AmIEvalModule``: the AmI detector as a LightningModule; one ``trainer.test`` evaluates benign + attack sets."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import CatMetric, Metric, SumMetric
from torchmetrics.functional.classification import binary_auroc, binary_roc

from ami_lightning.data.datasets import SKIPPED
from ami_lightning.detectors.ami import AmIDetector
from ami_lightning.detectors.steering import detection_score
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


class AmIEvalModule(pl.LightningModule):
    """Evaluates ``detector`` on the test dataloaders named ``set_names`` (the first is the benign set).

    Per set: :class:`FlagRate` (FPR for the benign set, detection rate for attack sets) and the continuous scores of
    the eligible samples, from which AUROC and ROC of each attack set against the benign set are computed, and the
    set's :class:`~ami_lightning.evaluation.thresholds.OperatingPoint` at the score threshold calibrated on the
    benign scores to
    each of ``fpr_targets`` (benign FPRs, fractions in [0, 1]; deduplicated and sorted). After ``trainer.test`` the
    per-set figures are in :attr:`results` (name -> dict): ``n`` (evaluated), ``skipped``, ``eligible``,
    ``flagged``, ``rate``, ``auroc`` (None for the benign set or without scores), ``auroc_ci`` (its 95 % stratified
    percentile bootstrap interval ``(low, high)``,
    :func:`~ami_lightning.evaluation.intervals.bootstrap_auroc_interval` of the
    same eligible scores with ``bootstrap_resamples`` resamples drawn from a generator seeded with
    ``bootstrap_seed``; None where ``auroc`` is), ``roc_fpr``, ``roc_tpr`` and ``operating_points`` (one per target,
    ascending).

    Logged per set: ``<set>/rate`` with its 95 % Wilson interval ``<set>/rate_ci_low`` / ``<set>/rate_ci_high`` (nan
    when nothing is eligible), ``<set>/auroc`` with ``<set>/auroc_ci_low`` / ``<set>/auroc_ci_high`` where there is
    one, and the operating-point figures of :func:`~ami_lightning.evaluation.thresholds.point_metrics`.

    Under DDP the scores are gathered on every process (CatMetric) and the bootstrap depends only on the multisets of
    scores (it sorts them first) and the seed, so every process computes the same interval, equal to one process's.
    """

    DEFAULT_FPR_TARGETS: tuple[float, ...] = (0.05, 0.10)

    def __init__(
        self,
        detector: AmIDetector,
        set_names: Sequence[str],
        fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
        bootstrap_resamples: int = BOOTSTRAP_RESAMPLES,
        bootstrap_seed: int = BOOTSTRAP_SEED,
    ) -> None:
        super().__init__()
        if not set_names or set_names[0] != "benign":
            raise ValueError(f"the first set must be 'benign', got {list(set_names)}")
        self.detector = detector
        self.set_names = list(set_names)
        self.fpr_targets = sorted({check_target_fpr(t) for t in fpr_targets})
        self.bootstrap_resamples = check_resamples(bootstrap_resamples)
        self.bootstrap_seed = int(bootstrap_seed)
        self.rates = nn.ModuleList([FlagRate(adversarial=i > 0) for i in range(len(set_names))])
        self.scores = nn.ModuleList([CatMetric(nan_strategy="disable") for _ in set_names])
        self.seen = nn.ModuleList([SumMetric() for _ in set_names])
        self.skipped = nn.ModuleList([SumMetric() for _ in set_names])
        self.results: dict[str, dict[str, object]] = {}

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
        original, steered = self.detector(pixels)
        original_pred, steered_pred = original.argmax(1), steered.argmax(1)
        self.rates[dataloader_idx].update(original_pred, steered_pred, labels)
        eligible = eligible_mask(original_pred, labels, adversarial=dataloader_idx > 0)
        self.scores[dataloader_idx].update(detection_score(original, steered)[eligible])

    def on_test_epoch_end(self) -> None:
        benign_scores = _cat(self.scores[0])
        for i, name in enumerate(self.set_names):
            rate = _compute(self.rates[i])
            scores = _cat(self.scores[i]) if i > 0 else benign_scores
            n, eligible, flagged = int(_compute(self.seen[i])), int(rate["eligible"]), int(rate["flagged"])
            points = [operating_point(benign_scores, scores, t) for t in self.fpr_targets]
            row: dict[str, object] = {
                "n": n,
                "skipped": int(_compute(self.skipped[i])),
                "eligible": eligible,
                "flagged": flagged,
                "rate": float(rate["rate"]),
                "auroc": None,
                "auroc_ci": None,
                "roc_fpr": [],
                "roc_tpr": [],
                "operating_points": points,
            }
            if i > 0 and len(scores) and len(benign_scores):
                preds = torch.cat([benign_scores, scores])
                target = torch.cat([torch.zeros_like(benign_scores), torch.ones_like(scores)]).long()
                fpr, tpr, _ = binary_roc(preds, target)
                interval = bootstrap_auroc_interval(benign_scores, scores, self.bootstrap_resamples,
                                                    self.bootstrap_seed, CONFIDENCE)
                row.update(auroc=float(binary_auroc(preds, target)), auroc_ci=interval, roc_fpr=fpr.tolist(),
                           roc_tpr=tpr.tolist())
            self.results[name] = row
            self.log(f"{name}/rate", row["rate"], sync_dist=False)
            for bound, value in zip(("low", "high"), wilson_interval(flagged, eligible, CONFIDENCE), strict=True):
                self.log(f"{name}/rate_ci_{bound}", value, sync_dist=False)
            if row["auroc"] is not None:
                self.log(f"{name}/auroc", row["auroc"], sync_dist=False)
                for bound, value in zip(("low", "high"), row["auroc_ci"], strict=True):
                    self.log(f"{name}/auroc_ci_{bound}", value, sync_dist=False)
            for key, value in point_metrics(points, n, eligible, flagged, adversarial=i > 0).items():
                self.log(f"{name}/{key}", value, sync_dist=False)
        for metric in (*self.rates, *self.scores, *self.seen, *self.skipped):
            metric.reset()


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
