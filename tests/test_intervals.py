"""Wilson score and stratified bootstrap AUROC intervals, against SciPy and plain-loop references, and the evaluation
module's AUROC intervals."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from scipy.stats import binomtest, mannwhitneyu, norm
from torchmetrics.functional.classification import binary_auroc

from ami_lightning.data.datamodule import EvalDataModule
from ami_lightning.detectors.steering import detection_score
from ami_lightning.evaluation.intervals import (
    bootstrap_auroc_interval,
    bootstrap_aurocs,
    mann_whitney_auroc,
    wilson_interval,
)
from ami_lightning.evaluation.module import DetectorEvalModule
from ami_lightning.evaluation.rates import eligible_mask
from tests.toy import PixelSet, toy_eval_sets

CASES = [(k, n) for n in (*range(1, 31), 50, 99, 100, 343, 933, 1000) for k in sorted({*range(0, min(n, 30) + 1),
                                                                                           n // 3, n // 2, n - 1, n})]


def _scipy_wilson(k: int, n: int, confidence: float) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _closed_form(k: int, n: int, confidence: float) -> tuple[float, float]:
    """The Wilson interval written as (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z from SciPy."""
    z = norm.ppf(1 - (1 - confidence) / 2)
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


@pytest.mark.parametrize("confidence", [0.95, 0.9, 0.99, 0.5])
def test_wilson_matches_scipy_and_the_closed_formula(confidence: float) -> None:
    assert len(CASES) > 500
    for k, n in CASES:
        low, high = wilson_interval(k, n, confidence)
        assert (low, high) == pytest.approx(_scipy_wilson(k, n, confidence), rel=1e-9, abs=1e-12), (k, n)
        assert (low, high) == pytest.approx(_closed_form(k, n, confidence), rel=1e-9, abs=1e-12), (k, n)
        assert 0.0 <= low <= k / n <= high <= 1.0
    assert wilson_interval(7, 8) == wilson_interval(7, 8, 0.95)  # 95 % is the default


def test_wilson_bounds_are_exact_at_the_ends_and_nan_without_samples() -> None:
    for n in (1, 2, 8, 343, 10**6):
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
        assert wilson_interval(0, n)[1] == pytest.approx(_scipy_wilson(0, n, 0.95)[1], rel=1e-9)
        assert wilson_interval(n, n)[0] == pytest.approx(_scipy_wilson(n, n, 0.95)[0], rel=1e-9)
    assert all(math.isnan(bound) for bound in wilson_interval(0, 0))
    assert wilson_interval(0, 1) == pytest.approx(_scipy_wilson(0, 1, 0.95)) and wilson_interval(1, 1)[1] == 1.0
    narrow, wide = wilson_interval(5, 10, 0.8), wilson_interval(5, 10, 0.99)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]  # a higher confidence widens the interval


@pytest.mark.parametrize(("successes", "total", "confidence", "message"), [
    (5, 4, 0.95, "0 <= successes <= total"),
    (-1, 4, 0.95, "0 <= successes <= total"),
    (1.5, 4, 0.95, "integers"),
    (1, 4, 0.0, r"confidence level is a fraction in \(0, 1\)"),
    (1, 4, 1.0, r"confidence level is a fraction in \(0, 1\)"),
    (1, 4, 95, r"confidence level is a fraction in \(0, 1\)"),
    (1, 4, math.nan, r"confidence level is a fraction in \(0, 1\)"),
])
def test_wilson_rejects_bad_arguments(successes: float, total: int, confidence: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wilson_interval(successes, total, confidence)  # type: ignore[arg-type]


def _reference_aurocs(negatives: torch.Tensor, positives: torch.Tensor, resamples: int, seed: int) -> np.ndarray:
    """The documented draws, rebuilt one resample at a time; each AUROC by SciPy's Mann-Whitney U / (N M)."""
    neg = np.sort(negatives.double().numpy())
    pos = np.sort(positives.double().numpy())
    generator = torch.Generator().manual_seed(seed)
    aurocs = []
    for _ in range(resamples):
        i = torch.randint(len(neg), (len(neg),), generator=generator).numpy()
        j = torch.randint(len(pos), (len(pos),), generator=generator).numpy()
        u = mannwhitneyu(pos[j], neg[i], method="asymptotic").statistic  # pairs with the positive above, ties 1/2
        aurocs.append(u / (len(neg) * len(pos)))
    return np.array(aurocs)


def _scores(n: int, m: int, shift: float, seed: int, ties: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    negatives, positives = torch.randn(n, generator=generator), torch.randn(m, generator=generator) + shift
    if ties:  # few distinct values: many ties within and across the sides
        negatives, positives = negatives.round(), positives.round()
    return negatives.float(), positives.float()


@pytest.mark.parametrize(("n", "m", "shift", "ties", "seed"), [
    (40, 25, 1.0, False, 0), (30, 30, 0.5, True, 3), (1, 12, 0.0, False, 5), (17, 1, 2.0, True, 11),
    (3, 2, 0.0, True, 0),
])
def test_bootstrap_rebuilds_from_the_documented_draws(n: int, m: int, shift: float, ties: bool, seed: int) -> None:
    negatives, positives = _scores(n, m, shift, seed=seed + 100, ties=ties)
    resamples = 150
    reference = _reference_aurocs(negatives, positives, resamples, seed)
    aurocs = bootstrap_aurocs(negatives, positives, resamples, seed)
    assert aurocs.dtype == torch.float64 and aurocs.shape == (resamples,)
    np.testing.assert_allclose(aurocs.numpy(), reference, rtol=0, atol=1e-12)
    for confidence in (0.95, 0.8):
        expected = np.quantile(reference, [(1 - confidence) / 2, (1 + confidence) / 2])  # NumPy's "linear"
        interval = bootstrap_auroc_interval(negatives, positives, resamples, seed, confidence)
        assert interval == pytest.approx(tuple(expected), abs=1e-12)
    for chunk in (1, 7, resamples, 10 * resamples):  # the chunk size bounds memory, it never changes a draw
        assert torch.equal(bootstrap_aurocs(negatives, positives, resamples, seed, chunk=chunk), aurocs)


def test_bootstrap_depends_on_the_multisets_and_the_seed_only() -> None:
    negatives, positives = _scores(60, 20, 1.0, seed=1)
    interval = bootstrap_auroc_interval(negatives, positives, 300, seed=4)
    permuted = (negatives[torch.randperm(60)], positives[torch.randperm(20)])  # e.g. gathered in another rank order
    assert bootstrap_auroc_interval(*permuted, 300, seed=4) == interval
    assert bootstrap_auroc_interval(negatives.double(), positives.double(), 300, seed=4) == interval  # same values
    assert bootstrap_auroc_interval(negatives, positives, 300, seed=5) != interval
    assert bootstrap_auroc_interval(negatives, positives) == bootstrap_auroc_interval(negatives, positives, 1000, 0)


def test_point_auroc_lies_inside_its_interval() -> None:
    for seed, (n, m, shift) in enumerate([(50, 50, 0.0), (200, 40, 1.0), (30, 90, -0.5), (500, 8, 2.0)]):
        negatives, positives = _scores(n, m, shift, seed=seed, ties=seed % 2 == 1)
        point = mann_whitney_auroc(negatives, positives)
        u = mannwhitneyu(positives.double().numpy(), negatives.double().numpy(), method="asymptotic").statistic
        assert point == pytest.approx(u / (n * m), abs=1e-12)
        preds, target = torch.cat([negatives, positives]), torch.cat([torch.zeros(n), torch.ones(m)]).long()
        assert point == pytest.approx(float(binary_auroc(preds, target)), abs=1e-6)  # the module's AUROC
        low, high = bootstrap_auroc_interval(negatives, positives, 500, seed)
        assert 0.0 <= low < point < high <= 1.0


def test_interval_narrows_as_the_sets_grow() -> None:
    widths = []
    for size in (20, 200, 2000):
        negatives, positives = _scores(size, size // 2, 1.0, seed=size)
        low, high = bootstrap_auroc_interval(negatives, positives)
        widths.append(high - low)
    assert widths[0] > 2 * widths[1] > 4 * widths[2] > 0  # about 1 / sqrt(size): a factor ~3.2 per step


def test_separated_sets_and_empty_sides() -> None:
    assert bootstrap_auroc_interval(torch.zeros(5), torch.ones(4)) == (1.0, 1.0)  # every resample separates them
    assert bootstrap_auroc_interval(torch.zeros(5), torch.zeros(4)) == (0.5, 0.5)  # all ties: 1/2 each
    for negatives, positives in ((torch.zeros(0), torch.ones(3)), (torch.ones(3), torch.zeros(0))):
        assert all(math.isnan(b) for b in bootstrap_auroc_interval(negatives, positives))
        assert math.isnan(mann_whitney_auroc(negatives, positives))
        assert bootstrap_aurocs(negatives, positives).shape == (0,)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"resamples": 0}, "resamples must be an integer >= 1"),
    ({"resamples": -3}, "resamples must be an integer >= 1"),
    ({"resamples": 2.5}, "resamples must be an integer >= 1"),
    ({"confidence": 0.0}, r"confidence level is a fraction in \(0, 1\)"),
    ({"confidence": 1.0}, r"confidence level is a fraction in \(0, 1\)"),
    ({"confidence": 95.0}, r"confidence level is a fraction in \(0, 1\)"),
])
def test_bootstrap_rejects_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_auroc_interval(torch.zeros(3), torch.ones(3), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):  # also before looking at empty sides
        bootstrap_auroc_interval(torch.zeros(0), torch.ones(3), **kwargs)  # type: ignore[arg-type]


def test_bootstrap_rejects_bad_scores() -> None:
    with pytest.raises(ValueError, match=r"negatives must be a 1-D tensor \(N,\), got shape \(2, 3\)"):
        bootstrap_auroc_interval(torch.zeros(2, 3), torch.ones(3))
    with pytest.raises(ValueError, match="positives must not contain nan"):
        bootstrap_auroc_interval(torch.zeros(3), torch.tensor([1.0, math.nan]))
    with pytest.raises(ValueError, match="chunk must be an integer >= 1"):
        bootstrap_aurocs(torch.zeros(3), torch.ones(3), 10, chunk=0)


def test_eval_module_reports_the_bootstrap_interval_of_its_auroc() -> None:
    detector, sets = toy_eval_sets(32)
    datamodule = EvalDataModule(PixelSet(*sets["benign"]), {k: PixelSet(*v) for k, v in sets.items() if k != "benign"},
                               3)
    module = DetectorEvalModule({"ami": detector}, datamodule.set_names, bootstrap_resamples=300, bootstrap_seed=7)
    assert module.bootstrap == {"resamples": 300, "seed": 7}
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, use_distributed_sampler=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    scores = {}
    with torch.no_grad():
        for name, (pixels, labels) in sets.items():
            batches = [pixels[i:i + 3] for i in range(0, 10, 3)]  # the module's batches: the same floats
            original = torch.cat([detector.model(b) for b in batches])
            score = torch.cat([detection_score(detector.model(b), detector.steered_logits(b)) for b in batches])
            scores[name] = score[eligible_mask(original.argmax(1), labels, adversarial=name != "benign")]
    assert module.results["ami"]["benign"]["auroc_ci"] is None
    for name in ("noise", "shifted"):
        row = module.results["ami"][name]
        expected = bootstrap_auroc_interval(scores["benign"], scores[name], resamples=300, seed=7)
        assert row["auroc_ci"] == expected and row["auroc_ci"][0] <= row["auroc"] <= row["auroc_ci"][1]
    default = DetectorEvalModule({"ami": detector}, ["benign"])
    assert default.bootstrap == {"resamples": 1000, "seed": 0}
    with pytest.raises(ValueError, match="resamples must be an integer >= 1"):
        DetectorEvalModule({"ami": detector}, ["benign"], bootstrap_resamples=0)


def test_auroc_and_roc_of_scores_far_outside_0_1_equal_scikit_learns() -> None:
    """Scores of tens or thousands (AmI's nats, sums of standardised distances) are not squashed by a sigmoid into
    ties: the module's AUROC and ROC equal scikit-learn's on the raw scores."""
    import lightning.pytorch as pl
    from sklearn.metrics import auc, roc_auc_score

    from ami_lightning.data.datamodule import EvalDataModule
    from ami_lightning.detectors.thresholded import ThresholdDetector
    from ami_lightning.evaluation.module import DetectorEvalModule
    from tests.toy import PixelSet, toy_classifier, toy_faces

    class Large(ThresholdDetector):
        """A score of a few hundred to thousands: 1000 x the mean pixel / 255 + 100."""

        def score(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
            return 100 + 1000 * x.mean(dim=(1, 2, 3)) / 255

        def evasion_loss(self, x: torch.Tensor, targets: torch.Tensor, exact: bool = False) -> torch.Tensor:
            return self.score(x)

        def parameters_dict(self) -> dict:
            return {}

    x, y = toy_faces(32)
    g = torch.Generator().manual_seed(5)
    noisy = (x + 60 * torch.randn(x.shape, generator=g)).clamp(0, 255)
    detector = Large(toy_classifier(32))
    detector.calibrate(detector.score(x))
    attack_labels = (y + 1) % len(y)  # every sample counts as fooling the model
    datamodule = EvalDataModule(PixelSet(x, y), {"noise": PixelSet(noisy, attack_labels)}, 4)
    module = DetectorEvalModule({"large": detector}, datamodule.set_names)
    pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               use_distributed_sampler=False).test(module, datamodule=datamodule, verbose=False)
    row = module.results["large"]["noise"]
    benign_pred = detector.model(x).argmax(1) == y
    negatives = detector.score(x)[benign_pred].double()
    positives = detector.score(noisy)[detector.model(noisy).argmax(1) != attack_labels].double()
    labels = [0] * len(negatives) + [1] * len(positives)
    expected = roc_auc_score(labels, torch.cat([negatives, positives]).numpy())
    assert 0 < expected < 1 and row["auroc"] == pytest.approx(expected, abs=1e-12)
    assert auc(row["roc_fpr"], row["roc_tpr"]) == pytest.approx(expected, abs=1e-6)  # ROC points in float32
