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
from torchmetrics.functional.classification import binary_roc

from ami_lightning.data.datamodule import PADDING
from ami_lightning.data.datasets import SKIPPED
from ami_lightning.detectors.base import Detector
from ami_lightning.detectors.fitting import prime
from ami_lightning.evaluation.intervals import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    bootstrap_auroc_interval,
    check_resamples,
    mann_whitney_auroc,
)
from ami_lightning.evaluation.paired import PairedComparison, compare_pairs
from ami_lightning.evaluation.rates import eligible_mask, flag_rate
from ami_lightning.evaluation.success import WorstCase, attack_success, face_verdicts, worst_case
from ami_lightning.evaluation.thresholds import (
    OperatingPoint,
    above,
    check_target_fpr,
    operating_point,
    ratio,
)

WORST_CASE = "worst_case"
"""The name of a detector's worst case over the attack sets in :attr:`DetectorEvalModule.worst_case` and the logs."""


class DetectorEvalModule(pl.LightningModule):
    """Evaluates every detector of ``detectors`` (name -> :class:`~ami_lightning.detectors.base.Detector`, all on
    one classifier) on the test dataloaders named ``set_names`` (the first is the benign set), in one pass: per
    batch the classifier's plain forward runs once and every detector gets its logits.

    Per detector and set: :func:`~ami_lightning.evaluation.rates.flag_rate` of its records (FPR for the benign set,
    detection rate for attack sets; flags by the
    detector's own rule) and the continuous scores of the eligible samples, from which AUROC and ROC of each attack
    set against the benign set are computed, and the set's
    :class:`~ami_lightning.evaluation.thresholds.OperatingPoint` at the score threshold calibrated on the detector's
    benign scores to each of ``fpr_targets`` (benign FPRs, fractions in [0, 1]; deduplicated and sorted). After
    ``trainer.test`` the figures are in :attr:`results` (detector -> set -> dict): ``n`` (evaluated), ``skipped``,
    ``eligible``, ``flagged``, ``rate``, ``auroc`` (None for the benign set or without scores), ``auroc_ci`` (its
    95 % stratified percentile bootstrap interval ``(low, high)``,
    :func:`~ami_lightning.evaluation.intervals.bootstrap_auroc_interval` of the same eligible scores with
    ``bootstrap_resamples`` resamples drawn from a generator seeded with ``bootstrap_seed``; None where ``auroc``
    is), ``roc_fpr``, ``roc_tpr``, ``operating_points`` (one per target, ascending; for attack sets with ``evaded``,
    SR@N's numerator) and, for attack sets, ``success`` (how many samples succeed:
    :func:`~ami_lightning.evaluation.success.attack_success` with the per-file ``targets`` of the set, -1 = none).

    :attr:`worst_case` (detector -> dict) holds each detector's worst case over the attack sets whose per-file
    ``faces`` are given (:func:`~ami_lightning.evaluation.success.worst_case`), as a row of the same keys: ``n`` the
    faces attacked, ``eligible`` those some set fooled, ``flagged`` those whose every fooling version was flagged by
    the detector's rule, ``operating_points`` the same at each calibrated threshold (``detected`` faces caught,
    ``evaded`` faces some version got through), and ``sets``, the sets it covers (None when fewer than one set has
    faces).

    :attr:`comparisons` holds every pair of detectors compared on each attack set (on the samples that fool the
    model) and on the worst case (on the faces some set fooled): :func:`~ami_lightning.evaluation.paired.compare_pairs`,
    exact McNemar tests with Holm's correction per set.

    Nothing is logged here: every count comes from the gathered per-sample records (one CatMetric per detector and
    set), and the run's logger gets the figures once they are written
    (:func:`~ami_lightning.pipeline.loggers.log_results`).

    Under DDP the scores are gathered on every process (CatMetric) and the bootstrap depends only on the multisets of
    scores (it sorts them first) and the seed, so every process computes the same interval, equal to one process's.
    ``benign_records`` (detector -> records (N, 5), :mod:`ami_lightning.pipeline.benign`, with final flags): the
    benign verdicts already known (computed for calibration or by an earlier run), read instead of running those
    detectors on the benign set again (and, when every detector's are known, without the plain forward either).
    After ``trainer.test``, :attr:`benign_rows` (detector -> (N, 5)) holds every detector's benign records, for the
    cache. A process whose share of a set is empty (a placeholder batch, label ``PADDING``) or wholly skipped still
    takes part in every gather, with no records.
    """

    DEFAULT_FPR_TARGETS: tuple[float, ...] = (0.05, 0.50)

    def __init__(
        self,
        detectors: Mapping[str, Detector],
        set_names: Sequence[str],
        fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
        bootstrap_resamples: int = BOOTSTRAP_RESAMPLES,
        bootstrap_seed: int = BOOTSTRAP_SEED,
        targets: Mapping[str, Sequence[int]] | None = None,
        faces: Mapping[str, Sequence[str]] | None = None,
        benign_records: Mapping[str, torch.Tensor] | None = None,
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
        unknown = sorted(set(targets or {}) - set(set_names[1:])) + sorted(set(faces or {}) - set(set_names[1:]))
        if unknown:
            raise ValueError(f"targets or faces given for {unknown}, which are not attack sets of {self.set_names}")
        self.targets = {name: torch.as_tensor(list(v), dtype=torch.long) for name, v in (targets or {}).items()}
        self.faces = {name: list(values) for name, values in (faces or {}).items()}
        sets = range(len(set_names))
        # per sample: index in its set, plain top-1, label, flagged by the rule, score (float32, as CatMetric stores),
        # flattened to (5 N,): a process without records gathers an empty (0,) tensor, which must have the same
        # number of dimensions as the others' for torchmetrics' all_gather
        self.records = nn.ModuleList([nn.ModuleList([CatMetric(nan_strategy="disable") for _ in sets])
                                      for _ in detectors])
        self.seen = nn.ModuleList([SumMetric() for _ in set_names])
        self.skipped = nn.ModuleList([SumMetric() for _ in set_names])
        unknown = sorted(set(benign_records or {}) - set(detectors))
        if unknown:
            raise ValueError(f"benign records given for {unknown}, which are not detectors of {list(detectors)}")
        self.known = {name: _by_index(rows) for name, rows in (benign_records or {}).items()}
        self.results: dict[str, dict[str, dict[str, object]]] = {}
        self.worst_case: dict[str, dict[str, object]] = {}
        self.comparisons: list[PairedComparison] = []
        self.benign_rows: dict[str, torch.Tensor] = {}

    @property
    def bootstrap(self) -> dict[str, int]:
        """The AUROC bootstrap's settings, ``{"resamples": ..., "seed": ...}`` (for
        :attr:`ami_lightning.reporting.results.RunResults.bootstrap`)."""
        return {"resamples": self.bootstrap_resamples, "seed": self.bootstrap_seed}

    def test_step(self, batch: Sequence[torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        pixels, labels, index = batch[0], batch[1], batch[2]
        skipped = labels == SKIPPED
        keep = ~skipped & (labels != PADDING)  # PADDING: a process's placeholder for an empty share
        self.seen[dataloader_idx].update(keep.sum())
        self.skipped[dataloader_idx].update(skipped.sum())
        pixels, labels, index = pixels[keep], labels[keep], index[keep]
        if len(labels) == 0:
            return
        known = self.known if dataloader_idx == 0 else {}
        if len(known) == len(self.detectors):  # every benign verdict is known: no forward at all
            name, table = next(iter(known.items()))
            original_pred = _known_rows(table, index, labels, name)[:, 1].to(labels)
        else:
            logits = prime(self.model, pixels, self.detectors.values())  # with the layers detectors read
            original_pred = logits.argmax(1)
        for j, (name, detector) in enumerate(self.detectors.items()):
            if name in known:
                rows = _known_rows(known[name], index, labels, name)
                flagged, score = rows[:, 3] > 0, rows[:, 4]
            else:
                out = detector(pixels, logits)
                flagged, score = out.flagged, out.score.detach()
            columns = (index, original_pred, labels, flagged, score)
            self.records[j][dataloader_idx].update(torch.stack([c.to(torch.float32) for c in columns], 1).flatten())

    def on_test_epoch_end(self) -> None:
        seen = [int(_compute(m)) for m in self.seen]
        skipped = [int(_compute(m)) for m in self.skipped]
        every: dict[str, list[_Records]] = {}
        for j, name in enumerate(self.detectors):
            records = every[name] = [_records(m) for m in self.records[j]]
            self.benign_rows[name] = records[0].rows
            self.results[name] = self._detector_results(records, seen, skipped)
            self.worst_case[name] = self._worst_case(records, self.results[name]["benign"]["operating_points"])
        self.comparisons = self._comparisons(every)
        for metric in (*self.seen, *self.skipped, *(m for per in self.records for m in per)):
            metric.reset()

    def _detector_results(
        self, records: list[_Records], seen: list[int], skipped: list[int]
    ) -> dict[str, dict[str, object]]:
        """One detector's rows (set -> dict, see the class docstring), from its gathered records."""
        results: dict[str, dict[str, object]] = {}
        benign_scores = records[0].scores[records[0].eligible(adversarial=False)]
        for i, name in enumerate(self.set_names):
            rate = flag_rate(records[i].flagged, records[i].pred, records[i].labels, adversarial=i > 0)
            set_scores = records[i].scores[records[i].eligible(adversarial=True)] if i > 0 else benign_scores
            success = records[i].success(self.targets.get(name)) if i > 0 else None
            success_scores = None if success is None else records[i].scores[success]
            n, eligible, flagged = seen[i], rate.eligible, rate.flagged
            points = [operating_point(benign_scores, set_scores, t, success_scores) for t in self.fpr_targets]
            row: dict[str, object] = {
                "n": n,
                "skipped": skipped[i],
                "eligible": eligible,
                "flagged": flagged,
                "rate": rate.value,
                "auroc": None,
                "auroc_ci": None,
                "roc_fpr": [],
                "roc_tpr": [],
                "operating_points": points,
                "success": None if success is None else int(success.sum()),
            }
            if i > 0 and len(set_scores) and len(benign_scores):
                target = torch.cat([torch.zeros_like(benign_scores), torch.ones_like(set_scores)]).long()
                fpr, tpr, _ = binary_roc(_unit_ranks(torch.cat([benign_scores, set_scores])), target)
                interval = bootstrap_auroc_interval(benign_scores, set_scores, self.bootstrap_resamples,
                                                    self.bootstrap_seed, CONFIDENCE)
                row.update(auroc=mann_whitney_auroc(benign_scores, set_scores), auroc_ci=interval,
                           roc_fpr=fpr.tolist(), roc_tpr=tpr.tolist())
            results[name] = row
        return results

    def _comparisons(self, every: dict[str, list[_Records]]) -> list[PairedComparison]:
        """Every pair of detectors on each attack set (the samples that fool the model, matched by index) and on the
        worst case (the faces some covered set fooled, matched by name); none with fewer than two detectors."""
        if len(every) < 2:
            return []
        out: list[PairedComparison] = []
        for i, set_name in enumerate(self.set_names[1:], start=1):
            caught = {}
            for name, records in every.items():
                r = records[i]
                order = torch.argsort(r.index)
                caught[name] = r.flagged[order][r.eligible(adversarial=True)[order]]
            out += compare_pairs(set_name, caught)
        covered = [i for i, name in enumerate(self.set_names) if i > 0 and name in self.faces]
        if covered:
            verdicts = {}
            for name, records in every.items():
                faces = [[self.faces[self.set_names[i]][k] for k in records[i].index.tolist()] for i in covered]
                _, per_face = face_verdicts(faces, [records[i].eligible(adversarial=True) for i in covered],
                                            [records[i].flagged for i in covered])
                verdicts[name] = torch.tensor(list(per_face.values()), dtype=torch.bool)
            out += compare_pairs(WORST_CASE, verdicts)
        return out

    def _worst_case(self, records: list[_Records], benign_points: list[OperatingPoint]) -> dict[str, object]:
        """The detector's worst case over the attack sets with known faces (see the class docstring), at its rule
        and at each calibrated threshold of ``benign_points``."""
        covered = [i for i, name in enumerate(self.set_names) if i > 0 and name in self.faces]
        names = [[self.faces[self.set_names[i]][k] for k in records[i].index.tolist()] for i in covered]
        fooled = [records[i].eligible(adversarial=True) for i in covered]

        def over(flagged: list[torch.Tensor]) -> WorstCase:
            return worst_case(names, fooled, flagged)

        rule = over([records[i].flagged for i in covered])
        points = []
        for p in benign_points:
            if p.detected is None:
                points.append(p)
                continue
            at = over([above(records[i].scores, p.threshold) for i in covered])
            points.append(OperatingPoint(p.target_fpr, p.threshold, p.benign_fpr, at.caught, at.through))
        row: dict[str, object] = {"n": rule.faces, "eligible": rule.fooled, "flagged": rule.caught,
                                  "rate": ratio(rule.caught, rule.fooled),
                                  "operating_points": points, "sets": [self.set_names[i] for i in covered] or None}
        return row


class _Records:
    """One detector's per-sample records of one set, on the CPU: ``index`` (N,) long in the set, ``pred`` (N,) the
    plain top-1, ``labels`` (N,), ``flagged`` (N,) bool by the detector's rule, ``scores`` (N,) float."""

    def __init__(self, rows: torch.Tensor) -> None:
        rows = rows.reshape(-1, 5).cpu()
        self.rows = rows
        self.index, self.pred, self.labels = (rows[:, k].long() for k in range(3))
        self.flagged, self.scores = rows[:, 3] > 0, rows[:, 4]

    def eligible(self, adversarial: bool) -> torch.Tensor:
        """(N,) bool: :func:`~ami_lightning.evaluation.rates.eligible_mask` of the records."""
        return eligible_mask(self.pred, self.labels, adversarial)

    def success(self, targets: torch.Tensor | None) -> torch.Tensor:
        """(N,) bool: :func:`~ami_lightning.evaluation.success.attack_success` given the set's per-file targets
        (all -1 when None)."""
        per_sample = torch.full_like(self.index, -1) if targets is None else targets[self.index]
        return attack_success(self.pred, self.labels, per_sample)


def _unit_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Scores (N,) mapped onto [0, 1] by the rank of their distinct values (float64; ties stay tied, order kept), so
    that torchmetrics' ROC does not squash them through a sigmoid (it does for values outside [0, 1], and a score of
    a few tens, AmI's nats or a sum of standardised distances, then ties with every larger one in float32)."""
    values, inverse = torch.unique(scores.double(), return_inverse=True)
    return inverse.double() / max(len(values) - 1, 1)


def _compute(metric: Metric) -> Any:
    """``metric.compute()``, synced across processes (collective: every process calls it, also for a set it saw no
    batch of); quiet about sets without updates."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*compute.*called before.*update.*")
        return metric.compute()


def _by_index(rows: torch.Tensor) -> torch.Tensor:
    """Records (N, 5) (:mod:`ami_lightning.pipeline.benign`) as a table (max index + 1, 5) whose row i is the record
    of sample i (nan where a sample has none)."""
    rows = rows.reshape(-1, 5).cpu().to(torch.float32)
    index = rows[:, 0].long()
    table = torch.full((int(index.max()) + 1 if len(index) else 0, 5), float("nan"))
    table[index] = rows
    return table


def _known_rows(table: torch.Tensor, index: torch.Tensor, labels: torch.Tensor, detector: str) -> torch.Tensor:
    """The rows (B, 5) of ``table`` (:func:`_by_index`) of the samples ``index`` (B,), on the labels' device;
    RuntimeError when the table does not hold them with these labels (records of another benign set)."""
    index = index.cpu()
    rows = table[index.clamp(max=len(table) - 1)] if len(table) else torch.full((len(index), 5), float("nan"))
    if (index >= len(table)).any() or rows[:, 2].isnan().any() or (rows[:, 2].long() != labels.cpu()).any():
        raise RuntimeError(f"the benign records of {detector!r} do not match the benign set (a sample without a "
                           "record or with another label): delete the cache entries under <paths.cache_dir>/benign")
    return rows.to(labels.device)


def _records(metric: CatMetric) -> _Records:
    """The concatenated records (N, 5) of a CatMetric of flattened (5 n,) rows (none when nothing was seen)."""
    value = _compute(metric)
    return _Records(value if isinstance(value, torch.Tensor) else torch.zeros(0, 5))
