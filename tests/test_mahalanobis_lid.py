"""The Mahalanobis and LID detectors: their kernels against independent references, the detectors on the toy face
classifier of ``tests/toy.py`` fitted on noisy toy faces.

References: :func:`class_gaussians` against NumPy class means, scikit-learn's ``EmpiricalCovariance`` (when
scikit-learn is installed; else the body of its ``empirical_covariance``, ``np.cov(bias=True)``) and
``np.linalg.pinv``; :func:`mahalanobis_score` against ``scipy.spatial.distance.mahalanobis``; :func:`lid_mle` against
a transcription of the reference's ``mle_batch`` (xingjunm/lid_adversarial_subspace_detection, ``util.py``) with
``scipy.spatial.distance.cdist``, in float64 instead of the reference's float32."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy.spatial.distance import cdist, mahalanobis
from sklearn.covariance import EmpiricalCovariance

from ami_lightning.cli import config_dir
from ami_lightning.detectors import lid as lid_module
from ami_lightning.detectors import mahalanobis as maha_module
from ami_lightning.detectors.base import SetupContext, create_detector
from ami_lightning.detectors.fitting import FitSet, fit_features, layer_features
from ami_lightning.detectors.layered import default_layers
from ami_lightning.detectors.lid import LIDDetector, lid_mle
from ami_lightning.detectors.mahalanobis import (
    MahalanobisDetector,
    class_gaussians,
    fold_assignment,
    mahalanobis_score,
)
from ami_lightning.models.layers import hook_layer_names
from tests.toy import PixelSet, toy_classifier, toy_faces


def _random(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


def _empirical_covariance(x: np.ndarray) -> np.ndarray:
    """scikit-learn's ``EmpiricalCovariance().fit(x).covariance_`` (what the reference code estimates)."""
    return EmpiricalCovariance().fit(x).covariance_


# ---------------------------------------------------------------------------------------------------- Mahalanobis


@pytest.mark.parametrize("shrinkage", [0.0, 0.3])
def test_class_gaussians_match_numpy_and_empirical_covariance(shrinkage: float) -> None:
    features = _random((80, 6), 0) * [1, 2, 3, 0.5, 1, 4] + 3
    labels = np.random.default_rng(1).choice([0, 1, 3, 4], size=80)  # class 2 absent
    means, precision = class_gaussians(torch.from_numpy(features), torch.from_numpy(labels), num_classes=5,
                                       shrinkage=shrinkage)
    present = np.unique(labels)
    expected_means = np.stack([features[labels == c].mean(0) for c in present])
    centred = features - expected_means[np.searchsorted(present, labels)]
    cov = _empirical_covariance(centred)
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / 6 * np.eye(6)
    assert means.shape == (4, 6) and precision.shape == (6, 6) and means.dtype == torch.float64
    np.testing.assert_allclose(means.numpy(), expected_means, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(precision.numpy(), np.linalg.pinv(cov), rtol=1e-9, atol=1e-9)
    if shrinkage == 0:  # the reference reads precision_ (SciPy's pinvh)
        np.testing.assert_allclose(precision.numpy(), EmpiricalCovariance().fit(centred).precision_, rtol=1e-9)
    # float32 in, float32 out; the same values
    means32, precision32 = class_gaussians(torch.from_numpy(features).float(), torch.from_numpy(labels),
                                           shrinkage=shrinkage)
    assert means32.dtype == precision32.dtype == torch.float32
    np.testing.assert_allclose(precision32.numpy(), np.linalg.pinv(cov), rtol=1e-4, atol=1e-5)


def test_class_gaussians_rank_deficient_and_bad_inputs() -> None:
    features = torch.from_numpy(_random((6, 10), 2))  # 6 images, 2 classes: rank 4 < 10
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    means, precision = class_gaussians(features, labels)
    centred = features - means[labels]
    cov = centred.T @ centred / 6
    assert torch.linalg.matrix_rank(precision) == 4
    torch.testing.assert_close(precision @ cov @ precision, precision)  # the pseudo-inverse's defining identities
    torch.testing.assert_close(cov @ precision @ cov, cov)
    with pytest.raises(ValueError, match="labels in"):
        class_gaussians(features, labels, num_classes=1)
    with pytest.raises(ValueError, match="shrinkage"):
        class_gaussians(features, labels, shrinkage=1.5)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        class_gaussians(features[:0], labels[:0])


def test_mahalanobis_score_matches_scipy() -> None:
    features, labels = _random((50, 5), 3), np.random.default_rng(4).integers(0, 3, 50)
    means, precision = class_gaussians(torch.from_numpy(features), torch.from_numpy(labels))
    queries = _random((9, 5), 5) * 2
    score = mahalanobis_score(torch.from_numpy(queries), means, precision)
    expected = [min(mahalanobis(q, m, precision.numpy()) ** 2 for m in means.numpy()) for q in queries]
    assert score.shape == (9,)
    np.testing.assert_allclose(score.numpy(), expected, rtol=1e-10)
    leaf = torch.from_numpy(queries).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: mahalanobis_score(f, means, precision), (leaf,))
    with pytest.raises(ValueError, match="mahalanobis_score"):
        mahalanobis_score(leaf, means[:, :4], precision)


def test_fold_assignment_is_seeded_and_balanced() -> None:
    folds = fold_assignment(23, 5)
    assert torch.equal(folds, fold_assignment(23, 5)) and sorted(torch.bincount(folds).tolist()) == [4, 4, 5, 5, 5]
    assert fold_assignment(3, 5).sort().values.tolist() == [0, 1, 2]


# ---------------------------------------------------------------------------------------------------- LID


def _mle_batch(data: np.ndarray, batch: np.ndarray, k: int) -> np.ndarray:
    """The reference's ``mle_batch`` (float64 instead of its float32): k = min(k, len(data) - 1); the sorted
    distances to ``data`` without the first (the point itself when it is in ``data``); ``-k / sum(log(v / v[-1]))``."""
    data, batch = np.asarray(data, dtype=np.float64), np.asarray(batch, dtype=np.float64)
    k = min(k, len(data) - 1)

    def f(v: np.ndarray) -> float:
        return -k / np.sum(np.log(v / v[-1]))

    a = cdist(batch, data)
    a = np.apply_along_axis(np.sort, axis=1, arr=a)[:, 1:k + 1]
    return np.apply_along_axis(f, axis=1, arr=a)


@pytest.mark.parametrize("k", [2, 5, 20, 100])
def test_lid_mle_matches_the_reference_mle_batch(k: int) -> None:
    pool, queries = _random((40, 12), 6), _random((7, 12), 7) * 1.5
    # the reference's normal batch: the batch is the data, each point skipped as its own nearest (k clamped to 39)
    np.testing.assert_allclose(lid_mle(torch.from_numpy(pool), torch.from_numpy(pool), k, exclude_self=True).numpy(),
                               _mle_batch(pool, pool, k), rtol=1e-9)
    # a query outside the pool: its k nearest pool points = the reference's on the pool with the query added
    expected = np.concatenate([_mle_batch(np.vstack([pool, q[None]]), q[None], k) for q in queries])
    np.testing.assert_allclose(lid_mle(torch.from_numpy(queries), torch.from_numpy(pool), k).numpy(), expected,
                               rtol=1e-9)


def test_lid_mle_of_one_neighbour_is_clamped() -> None:
    """k = 1: log(r_1 / r_1) = 0, the reference's -1 / 0; here 1 / MIN_LOG_SUM (finite)."""
    pool, queries = torch.from_numpy(_random((10, 3), 10)), torch.from_numpy(_random((4, 3), 11))
    assert torch.equal(lid_mle(queries, pool, 1), torch.full((4,), 1 / lid_module.MIN_LOG_SUM, dtype=torch.float64))


def test_lid_mle_kth_neighbour_by_hand() -> None:
    pool = torch.tensor([[1.0], [-2.0], [4.0], [-8.0], [16.0]], dtype=torch.float64)  # distances 1, 2, 4, 8, 16
    query = torch.zeros(1, 1, dtype=torch.float64)
    # k = 3: r = 1, 2, 4; sum log(r_i / r_3) = log(1/4) + log(2/4) = -3 log 2; LID = 3 / (3 log 2)
    torch.testing.assert_close(lid_mle(query, pool, 3), torch.tensor([1 / math.log(2)], dtype=torch.float64))
    torch.testing.assert_close(lid_mle(query, pool, 2), torch.tensor([2 / math.log(2)], dtype=torch.float64))
    torch.testing.assert_close(lid_mle(query, pool, 99), lid_mle(query, pool, 5))  # k clamped to the pool
    # leave-one-out: the pool's point 1 has neighbours -2 and 4 (at 3) and -8 (at 9): LID = 3 / log(9/3 * 9/3)
    loo = lid_mle(pool, pool, 3, exclude_self=True)
    torch.testing.assert_close(loo[0], torch.tensor(3 / math.log(9), dtype=torch.float64))
    with pytest.raises(ValueError, match="exclude_self"):
        lid_mle(query, pool, 3, exclude_self=True)
    with pytest.raises(ValueError, match="k=0"):
        lid_mle(query, pool, 0)


def test_lid_mle_finite_gradients_on_a_pool_point() -> None:
    pool = torch.from_numpy(_random((30, 8), 8)).float()
    query = pool[:3].clone().requires_grad_(True)  # at distance 0 from a pool point
    lids = lid_mle(query, pool, 10)
    (grad,) = torch.autograd.grad(lids.sum(), query)
    assert lids.dtype == torch.float32 and bool(torch.isfinite(lids).all()) and bool(torch.isfinite(grad).all())
    leaf = torch.from_numpy(_random((4, 8), 9)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q: lid_mle(q, pool.double(), 10), (leaf,))


# ---------------------------------------------------------------------------------------------------- detectors


@pytest.fixture(scope="module", autouse=True)
def _trained_toy() -> None:
    """Train the toy classifier (cached for the session) before the tests of the detectors time their calls."""
    toy_classifier(32)


@pytest.fixture(scope="module")
def fit() -> FitSet:
    """40 noisy copies of the 10 toy faces (4 per identity), batches of 16."""
    x, y = toy_faces(32)
    g = torch.Generator().manual_seed(1)
    xs = torch.cat([(x + 20 * torch.randn(x.shape, generator=g)).clamp(0, 255).round() for _ in range(4)])
    return FitSet(PixelSet(xs, y.repeat(4)), {"rule": "test", "files": [f"f{i}" for i in range(40)]}, 16)


@pytest.fixture(scope="module")
def probes() -> torch.Tensor:
    """(10, 3, 32, 32) toy faces with other noise (not fitted on)."""
    x, _ = toy_faces(32)
    g = torch.Generator().manual_seed(2)
    return (x + 30 * torch.randn(x.shape, generator=g)).clamp(0, 255).round()


def _context(root: Path, fit: FitSet | None) -> SetupContext:
    return SetupContext(root / "out", root / "cache", model_key="toy", fit=fit)


DETECTORS = [
    ("mahalanobis", {}),
    ("mahalanobis", {"eps": 2.0, "shrinkage": 0.1, "layers": ["pool1", "pool2"]}),
    ("lid", {}),
    ("lid", {"k": 5, "pool_size": 15, "layers": ["relu2"]}),
]
IDS = ["mahalanobis", "mahalanobis-eps", "lid", "lid-pool"]


@pytest.mark.parametrize(("kind", "params"), DETECTORS, ids=IDS)
def test_detector_scores_gradients_and_description(kind: str, params: dict[str, Any], fit: FitSet,
                                                   probes: torch.Tensor, tmp_path: Path) -> None:
    detector = create_detector(kind, toy_classifier(32), **params)
    assert detector.needs_fit and detector.needs_calibration and detector.gradient == "exact"
    assert detector.fit_record is None and detector.parameters_dict()["fit"] is None
    detector.setup(_context(tmp_path, fit))
    with torch.no_grad():
        score = detector.score(probes)
    assert score.shape == (10,) and score.dtype == torch.float32 and bool(torch.isfinite(score).all())
    with torch.inference_mode():  # the evaluation's mode (eps > 0 takes its gradient step all the same)
        torch.testing.assert_close(detector.score(probes), score)
    leaf = probes[:3].clone().requires_grad_(True)
    loss = detector.evasion_loss(leaf, torch.zeros(3, dtype=torch.long), exact=True)
    (grad,) = torch.autograd.grad(loss.sum(), leaf)
    assert loss.shape == (3,) and bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0
    torch.testing.assert_close(loss.detach(), score[:3])
    # batch independence: a batch's scores are the scores one at a time
    with torch.no_grad():
        alone = torch.cat([detector.score(probes[i:i + 1]) for i in range(10)])
        mixed = detector.score(probes[[7, 2]])
    torch.testing.assert_close(alone, score, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mixed, score[[7, 2]], rtol=1e-4, atol=1e-4)
    # calibration and flags come from ThresholdDetector
    detector.calibrate(score)
    out = detector(probes)
    assert out.flagged.dtype == torch.bool and int(out.flagged.sum()) <= 1
    description = json.loads(json.dumps(detector.description()))
    summary = description["params"]["fit"]
    assert summary["rule"] == "test" and summary["items"] == 40 and "files" not in summary
    assert len(summary["digest"]) == 16
    assert detector.fit_record == fit.record
    assert description["params"]["layers"] == list(params.get("layers", hook_layer_names(toy_classifier(32))))


def test_mahalanobis_score_by_hand(fit: FitSet, probes: torch.Tensor, tmp_path: Path) -> None:
    """The score is the sum over the layers of (distance - center) / scale, the Gaussians fitted on the whole fit
    set, center and scale the mean and population std of the out-of-fold distances of the fit set."""
    model = toy_classifier(32)
    detector = MahalanobisDetector(model, layers=["relu1", "pool2"])
    detector.setup(_context(tmp_path, fit))
    features, labels, _ = fit_features(model, fit, detector.layers)
    found, _ = layer_features(model, probes, detector.layers)
    folds = fold_assignment(40, 5)
    total = torch.zeros(10, dtype=torch.float64)
    for name in detector.layers:
        f = features[name].double()
        out_of_fold = torch.empty(40, dtype=torch.float64)
        for k in range(5):
            held = folds == k
            out_of_fold[held] = mahalanobis_score(f[held], *class_gaussians(f[~held], labels[~held]))
        distances = mahalanobis_score(found[name].double(), *class_gaussians(f, labels))
        total += (distances - out_of_fold.mean()) / out_of_fold.std(correction=0)
    with torch.no_grad():
        torch.testing.assert_close(detector.score(probes), total.float(), rtol=1e-4, atol=1e-3)


def test_lid_score_by_hand(fit: FitSet, probes: torch.Tensor, tmp_path: Path) -> None:
    """The score is the sum over the layers of (LID - center) / scale, the LIDs against the whole fit set, center and
    scale the mean and population std of the fit set's leave-one-out LIDs."""
    model = toy_classifier(32)
    detector = LIDDetector(model, layers=["pool1", "relu2"], k=10)
    detector.setup(_context(tmp_path, fit))
    features, _, _ = fit_features(model, fit, detector.layers, reduce="flatten")
    found, _ = layer_features(model, probes, detector.layers, reduce="flatten")
    total = torch.zeros(10, dtype=torch.float64)
    for name in detector.layers:
        own = torch.from_numpy(_mle_batch(features[name].numpy(), features[name].numpy(), 10))
        queries = np.concatenate([_mle_batch(np.vstack([features[name].numpy(), q[None]]), q[None], 10)
                                  for q in found[name].detach().numpy()])
        total += (torch.from_numpy(queries) - own.mean()) / own.std(correction=0)
    with torch.no_grad():
        torch.testing.assert_close(detector.score(probes), total.float(), rtol=1e-4, atol=1e-3)


def test_lid_pool_subsample_is_seeded(fit: FitSet, tmp_path: Path) -> None:
    model = toy_classifier(32)
    one, two, other = (LIDDetector(model, layers=["pool2"], k=5, pool_size=12, pool_seed=s) for s in (0, 0, 1))
    for detector in (one, two, other):
        detector.setup(_context(tmp_path, fit))
    assert one.pool_0.shape == (12, 32 * 8 * 8)
    assert torch.equal(one.pool_0, two.pool_0) and not torch.equal(one.pool_0, other.pool_0)


@pytest.mark.parametrize("kind", ["mahalanobis", "lid"])
def test_second_setup_reads_the_cache(kind: str, fit: FitSet, probes: torch.Tensor, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    model = toy_classifier(32)
    first = create_detector(kind, model)
    first.setup(_context(tmp_path, fit))
    assert len(list((tmp_path / "cache" / "fitted").glob(f"{kind}-*.pt"))) == 1

    def fail(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("fitted again instead of reading the cache")

    monkeypatch.setattr(maha_module if kind == "mahalanobis" else lid_module, "fit_features", fail)
    second = create_detector(kind, model)
    second.setup(_context(tmp_path, fit))
    with torch.no_grad():
        torch.testing.assert_close(second.score(probes), first.score(probes))
    assert second.parameters_dict() == first.parameters_dict()
    changed = FitSet(fit.dataset, {**fit.record, "files": ["other"]}, fit.batch_size)  # another fit set: refit
    with pytest.raises(AssertionError, match="fitted again"):
        create_detector(kind, model).setup(_context(tmp_path, changed))


@pytest.mark.parametrize("kind", ["mahalanobis", "lid"])
def test_not_fitted_and_no_fit_set(kind: str, probes: torch.Tensor, tmp_path: Path) -> None:
    detector = create_detector(kind, toy_classifier(32))
    with pytest.raises(RuntimeError, match=r"not fitted: call setup"):
        detector.score(probes)
    with pytest.raises(RuntimeError, match="needs a benign fit set"):
        detector.setup(_context(tmp_path, None))


def test_lid_needs_more_fit_images_than_k(fit: FitSet, tmp_path: Path) -> None:
    small = FitSet(torch.utils.data.Subset(fit.dataset, range(8)), {"rule": "small"})
    with pytest.raises(ValueError, match=r"k=20: the fit set \(small\) has 8 readable images"):
        create_detector("lid", toy_classifier(32)).setup(_context(tmp_path, small))


BAD = [
    ("mahalanobis", {"shrinkage": 2.0}, "shrinkage=2.0: expected a number in [0, 1]"),
    ("mahalanobis", {"eps": -1}, "eps=-1: expected a number of pixels"),
    ("mahalanobis", {"fpr": 1.5}, "fpr=1.5: expected a fraction"),
    ("mahalanobis", {"layers": []}, "layers=[]: expected null"),
    ("mahalanobis", {"layers": "pool2"}, "layers='pool2': expected null"),
    ("lid", {"k": 0}, "k=0: expected an integer >= 1"),
    ("lid", {"k": 2.5}, "k=2.5: expected an integer >= 1"),
    ("lid", {"pool_size": 1}, "pool_size=1: expected null"),
    ("lid", {"pool_size": 10, "k": 10}, "pool_size=10: expected more than k=10"),
    ("lid", {"pool_seed": "a"}, "pool_seed='a': expected an integer"),
    ("lid", {"layers": ["pool2", "pool2"]}, "layers=['pool2', 'pool2']: expected null"),
]


@pytest.mark.parametrize(("kind", "params", "message"), BAD, ids=[f"{k}-{next(iter(p))}" for k, p, _ in BAD])
def test_bad_parameters_name_the_key(kind: str, params: dict[str, Any], message: str) -> None:
    cls = MahalanobisDetector if kind == "mahalanobis" else LIDDetector
    problems = cls.check_params(params)
    assert len(problems) == 1 and problems[0].startswith(message), problems
    with pytest.raises(ValueError, match=rf"^{kind}: bad parameters: " + message.replace("[", r"\[")
                       .replace("]", r"\]").replace("(", r"\(").replace(".", r"\.").replace("+", r"\+")):
        create_detector(kind, toy_classifier(32), **params)


@pytest.mark.parametrize("cls", [MahalanobisDetector, LIDDetector])
def test_layers_must_be_hook_layers_and_default_to_the_last_four(cls: type) -> None:
    model = toy_classifier(32)
    assert cls(model).layers == default_layers(model) == hook_layer_names(model)[-4:]
    with pytest.raises(ValueError, match=r"layers=\['fc'\]: \['fc'\] are not hook layers.*relu1, pool1"):
        cls(model, layers=["fc"])


@pytest.mark.parametrize("name", ["mahalanobis", "lid"])
def test_config_file_builds_the_detector(name: str) -> None:
    node = OmegaConf.load(config_dir() / "detector" / f"{name}.yaml")
    params = OmegaConf.to_container(node.params)
    assert node.type == name
    assert (MahalanobisDetector if name == "mahalanobis" else LIDDetector).check_params(params) == []
    detector = create_detector(name, toy_classifier(32), **params)
    assert detector.layers == default_layers(toy_classifier(32)) and detector.fpr == 0.05
