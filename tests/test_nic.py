"""NIC (:mod:`ami_lightning.detectors.nic`): its torch kernels against plain numpy formulas and scikit-learn's own
``decision_function``, ``transform`` and ``predict_proba``, its solvers against scikit-learn's fits and SciPy's
general-purpose optimisers, and the detector on the toy classifier fitted on noisy toy faces: shapes, the score
against the same pipeline in numpy and refitted with scikit-learn, batch independence, gradients, deterministic
fitting, the cache, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy.optimize import minimize
from scipy.special import softmax
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.svm import OneClassSVM
from threadpoolctl import threadpool_limits

from ami_lightning.cli import config_dir
from ami_lightning.detectors import create_detector
from ami_lightning.detectors.base import SetupContext
from ami_lightning.detectors.fitting import FitSet, fit_features
from ami_lightning.detectors.nic import (
    MIN_FIT_ITEMS,
    NICDetector,
    fit_one_class_svm,
    fit_pca,
    fit_softmax_regression,
    ocsvm_decision,
    pca_project,
    rbf_gamma_scale,
    softmax_probabilities,
    split_fit_parts,
)
from tests.toy import NUM_CLASSES, PixelSet, toy_classifier, toy_faces

COPIES = 6  # noisy copies of the 10 toy faces in the fit set: 60 images, parts of 30, 15 and 15


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _numpy_decision(x: np.ndarray, sv: np.ndarray, dual: np.ndarray, intercept: float, gamma: float) -> np.ndarray:
    """The one-class SVM decision function written out: sum_i dual_i exp(-gamma |x - sv_i|^2) + intercept."""
    squared = ((x[:, None, :] - sv[None, :, :]) ** 2).sum(axis=2)
    return np.exp(-gamma * squared) @ dual + intercept


def _libsvm_dual(x: np.ndarray, nu: float) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, kernel) of the one-class dual solved by SciPy's SLSQP: min 1/2 a'Ka, 0 <= a <= 1, sum a = nu n."""
    n, d = x.shape
    gamma = 1.0 / (d * x.var())
    kernel = np.exp(-gamma * ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2))
    result = minimize(lambda a: 0.5 * a @ kernel @ a, np.full(n, nu), jac=lambda a: kernel @ a, method="SLSQP",
                      bounds=[(0.0, 1.0)] * n,
                      constraints=[{"type": "eq", "fun": lambda a: a.sum() - nu * n, "jac": lambda a: np.ones(n)}],
                      options={"ftol": 1e-15, "maxiter": 1000})
    assert result.success, result.message
    return result.x, kernel


# ---------------------------------------------------------------------------------------------------- kernels


def test_ocsvm_decision_is_the_kernel_sum_and_differentiable() -> None:
    rng = _rng(0)
    x, sv, dual = rng.normal(size=(7, 5)), rng.normal(size=(4, 5)), rng.uniform(0.1, 1, size=4)
    got = ocsvm_decision(torch.from_numpy(x), torch.from_numpy(sv), torch.from_numpy(dual),
                         torch.tensor(-0.3, dtype=torch.float64), 0.7)
    assert got.shape == (7,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), _numpy_decision(x, sv, dual, -0.3, 0.7), atol=1e-12)
    leaf = torch.from_numpy(sv[:2].copy()).requires_grad_(True)  # at a support vector itself: distance 0
    (grad,) = torch.autograd.grad(ocsvm_decision(leaf, torch.from_numpy(sv), torch.from_numpy(dual), 0.0, 0.7).sum(),
                                  leaf)
    assert bool(torch.isfinite(grad).all())
    with pytest.raises(ValueError, match="ocsvm_decision: expected"):
        ocsvm_decision(torch.zeros(3, 4), torch.zeros(2, 5), torch.zeros(2), 0.0, 1.0)


def test_fit_one_class_svm_solves_libsvms_dual() -> None:
    """The SMO solution is the optimum SciPy's SLSQP finds, its rho satisfies the KKT conditions, and its gamma is
    scikit-learn's ``"scale"``."""
    rng = _rng(1)
    for n, d, nu in ((30, 3, 0.1), (20, 2, 0.5), (15, 6, 0.3)):
        x = rng.normal(size=(n, d))
        fitted = fit_one_class_svm(torch.from_numpy(x), nu)
        assert float(fitted.gamma) == pytest.approx(1.0 / (d * x.var()), rel=1e-12)
        assert float(fitted.gamma) == rbf_gamma_scale(torch.from_numpy(x))
        alpha, kernel = _libsvm_dual(x, nu)
        dual = fitted.dual_coef.numpy()
        full = np.zeros(n)
        full[[int(np.flatnonzero((x == row).all(axis=1))[0]) for row in fitted.support_vectors.numpy()]] = dual
        assert full.sum() == pytest.approx(nu * n, rel=1e-12) and bool(((dual > 0) & (dual <= 1)).all())
        np.testing.assert_allclose(full, alpha, atol=2e-5)
        gradient, rho = kernel @ full, -float(fitted.intercept)
        free = (full > 1e-9) & (full < 1 - 1e-9)
        assert bool((gradient[full <= 0] >= rho - 1e-6).all()) and bool((gradient[full >= 1] <= rho + 1e-6).all())
        np.testing.assert_allclose(gradient[free], rho, atol=1e-6)
        np.testing.assert_allclose(fitted.decision(torch.from_numpy(x)).numpy(), gradient - rho, atol=1e-10)


def test_fit_one_class_svm_degenerate_inputs() -> None:
    every = fit_one_class_svm(torch.randn(9, 2), 1.0)  # nu = 1: the only feasible point, every coefficient 1
    assert len(every.dual_coef) == 9 and bool((every.dual_coef == 1).all())
    same = fit_one_class_svm(torch.ones(6, 3), 0.5)  # zero variance: gamma 1, every point on the boundary
    assert float(same.gamma) == 1.0
    np.testing.assert_allclose(same.decision(torch.ones(2, 3)).numpy(), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="nu=0"):
        fit_one_class_svm(torch.zeros(4, 2), 0)
    with pytest.raises(ValueError, match="non-finite"):
        fit_one_class_svm(torch.tensor([[0.0, float("nan")]]), 0.5)


def test_pca_is_the_covariances_eigenbasis() -> None:
    rng = _rng(2)
    x = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6))
    mean, components = fit_pca(torch.from_numpy(x), 4)
    assert mean.shape == (6,) and components.shape == (4, 6)
    np.testing.assert_allclose(mean.numpy(), x.mean(axis=0), atol=1e-12)
    values, vectors = np.linalg.eigh(np.cov(x, rowvar=False, bias=True))
    top = vectors[:, ::-1][:, :4].T
    signs = np.sign(top[np.arange(4), np.abs(top).argmax(axis=1)])
    np.testing.assert_allclose(components.numpy(), top * signs[:, None], atol=1e-8)
    scores = pca_project(torch.from_numpy(x), mean, components).numpy()
    np.testing.assert_allclose(scores.var(axis=0), values[::-1][:4], rtol=1e-8)
    assert fit_pca(torch.from_numpy(x[:3]), 32)[1].shape == (3, 6)  # at most min(n, D) components


def test_softmax_regression_is_the_penalised_optimum() -> None:
    """The L-BFGS fit reaches the minimiser SciPy's L-BFGS-B finds for scikit-learn's objective on the standardised
    features, and its folded coefficients give the same probabilities on the raw features."""
    rng = _rng(3)
    n, d, k = 45, 5, 3
    labels = np.arange(n) % k
    x = rng.normal(size=(n, d)) * [1, 2, 3, 4, 5] + labels[:, None] * 0.7 + 10
    coef, intercept, classes = fit_softmax_regression(torch.from_numpy(x), torch.from_numpy(labels + 4))
    assert classes.tolist() == [4, 5, 6] and coef.shape == (k, d) and intercept.shape == (k,)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    onehot = np.eye(k)[labels]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: k * d].reshape(k, d), theta[k * d:]
        p = softmax(z @ w.T + b, axis=1)
        loss = -np.log(p[onehot == 1]).sum() + 0.5 * (w * w).sum()  # C = 1
        return loss, np.concatenate([((p - onehot).T @ z + w).ravel(), (p - onehot).sum(axis=0)])

    result = minimize(objective, np.zeros(k * (d + 1)), jac=True, method="L-BFGS-B",
                      options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10000})
    w, b = result.x[: k * d].reshape(k, d), result.x[k * d:]
    expected = softmax(z @ w.T + b, axis=1)
    got = softmax_probabilities(torch.from_numpy(x), coef, intercept).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)
    with torch.inference_mode():  # as under a Lightning loop: the same fit
        again = fit_softmax_regression(torch.from_numpy(x), torch.from_numpy(labels + 4))
    assert all(torch.equal(a, b) for a, b in zip((coef, intercept, classes), again, strict=True))
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_softmax_regression(torch.from_numpy(x), torch.zeros(n, dtype=torch.long))


def test_split_fit_parts_is_seeded_disjoint_and_class_balanced() -> None:
    labels = torch.arange(40) % 10  # 4 images of each of 10 identities
    parts = split_fit_parts(labels)
    assert [len(p) for p in parts] == [20, 10, 10]
    assert sorted(torch.cat(parts).tolist()) == list(range(40))
    for part, per_class in zip(parts, (2, 1, 1), strict=True):
        assert bool((part[1:] > part[:-1]).all())
        assert torch.bincount(labels[part], minlength=10).tolist() == [per_class] * 10
    assert all(torch.equal(a, b) for a, b in zip(parts, split_fit_parts(labels), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(parts, split_fit_parts(labels, seed=1), strict=True))
    uneven = split_fit_parts(torch.tensor([0] * 7 + [1] * 2 + [2]))  # positions 0..9 dealt 0, 0, 1, 2, 0, 0, ...
    assert [len(p) for p in uneven] == [6, 2, 2]


# ---------------------------------------------------------------------------------------------------- scikit-learn


def test_ocsvm_decision_and_fit_match_scikit_learn() -> None:
    """The kernel at scikit-learn's fitted attributes is its ``decision_function``; our fit is its fit."""
    rng = _rng(4)
    x, test = rng.normal(size=(60, 5)), rng.normal(size=(9, 5)) * 1.5
    for nu in (0.1, 0.5):
        reference = OneClassSVM(nu=nu, gamma="scale", tol=1e-12).fit(x)
        got = ocsvm_decision(torch.from_numpy(test), torch.from_numpy(reference.support_vectors_),
                             torch.from_numpy(reference.dual_coef_.ravel()),
                             torch.from_numpy(reference.intercept_)[0], reference._gamma)
        np.testing.assert_allclose(got.numpy(), reference.decision_function(test), atol=1e-6)
        ours = fit_one_class_svm(torch.from_numpy(x), nu)
        assert float(ours.gamma) == pytest.approx(reference._gamma, rel=1e-12)
        assert float(ours.intercept) == pytest.approx(float(reference.intercept_[0]), abs=1e-6)
        np.testing.assert_allclose(ours.decision(torch.from_numpy(test)).numpy(), reference.decision_function(test),
                                   atol=1e-6)
        assert len(ours.dual_coef) == len(reference.dual_coef_.ravel())


def test_pca_projection_matches_scikit_learn() -> None:
    rng = _rng(5)
    x, test = rng.normal(size=(40, 6)) @ rng.normal(size=(6, 6)), rng.normal(size=(7, 6))
    reference = PCA(n_components=3, svd_solver="full").fit(x)
    mean, components = fit_pca(torch.from_numpy(x), 3)
    projected = pca_project(torch.from_numpy(test), mean, components).numpy()
    np.testing.assert_allclose(projected, reference.transform(test), atol=1e-8)  # scikit-learn >= 1.5's signs
    np.testing.assert_allclose(components.numpy(), reference.components_, atol=1e-8)


def test_softmax_probabilities_and_fit_match_scikit_learn() -> None:
    """The torch probabilities at scikit-learn's ``coef_`` and ``intercept_`` are its ``predict_proba``; our fit
    (standardisation folded in) gives the probabilities of its fit on the standardised features."""
    rng = _rng(6)
    labels = np.arange(60) % 3
    x, test = rng.normal(size=(60, 5)) * [1, 2, 3, 4, 5] + labels[:, None], rng.normal(size=(9, 5)) * 2
    mu, sigma = x.mean(axis=0), x.std(axis=0)
    reference = LogisticRegression(C=1.0, tol=1e-12, max_iter=10000).fit((x - mu) / sigma, labels)
    np.testing.assert_allclose(
        softmax_probabilities(torch.from_numpy((test - mu) / sigma), torch.from_numpy(reference.coef_),
                              torch.from_numpy(reference.intercept_)).numpy(),
        reference.predict_proba((test - mu) / sigma), atol=1e-12)
    coef, intercept, classes = fit_softmax_regression(torch.from_numpy(x), torch.from_numpy(labels))
    assert classes.tolist() == reference.classes_.tolist()
    np.testing.assert_allclose(softmax_probabilities(torch.from_numpy(test), coef, intercept).numpy(),
                               reference.predict_proba((test - mu) / sigma), atol=1e-5)


# ---------------------------------------------------------------------------------------------------- the detector


def _fit_set(copies: int = COPIES, seed: int = 0) -> FitSet:
    """``copies`` noisy copies (sigma 8 pixels) of the 10 toy faces, labelled, as a fit set."""
    x, y = toy_faces(32)
    g = torch.Generator().manual_seed(seed)
    noisy = torch.cat([(x + 8 * torch.randn(x.shape, generator=g)).clamp(0, 255) for _ in range(copies)])
    return FitSet(PixelSet(noisy, y.repeat(copies)), {"rule": "test", "files": [f"f{i}" for i in range(len(noisy))]})


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> SetupContext:
    root = tmp_path_factory.mktemp("nic")
    return SetupContext(root / "out", root / "cache", model_key="toy", fit=_fit_set())


@pytest.fixture(scope="module")
def fitted(context: SetupContext) -> NICDetector:
    detector = NICDetector(toy_classifier(32))
    detector.setup(context)
    return detector


@pytest.fixture(scope="module")
def probes() -> torch.Tensor:
    """Toy faces with other noise than the fit set's, and two of heavy noise: (12, 3, 32, 32)."""
    x, _ = toy_faces(32)
    g = torch.Generator().manual_seed(9)
    return torch.cat([(x + 20 * torch.randn(x.shape, generator=g)).clamp(0, 255),
                      (x[:2] + 150 * torch.randn(x[:2].shape, generator=g)).clamp(0, 255)])


def test_defaults_shapes_and_finite_scores(fitted: NICDetector, probes: torch.Tensor) -> None:
    assert fitted.layers == ("relu1", "pool1", "relu2", "pool2") and fitted.needs_fit and fitted.gradient == "exact"
    assert (fitted.components, fitted.nu, fitted.fpr) == (32, 0.1, 0.05)
    with torch.no_grad():
        score = fitted.score(probes)
        features = fit_features(fitted.model, FitSet(PixelSet(probes, torch.zeros(12)), {}), fitted.layers)[0]
        values = fitted.invariant_values(features)
    assert score.shape == (12,) and score.dtype == torch.float32 and bool(torch.isfinite(score).all())
    assert values.shape == (12, 7) and values.dtype == torch.float64
    assert [len(m.sv) > 0 for m in (*fitted.value_svms, *fitted.provenance_svms)] == [True] * 7
    assert fitted.value_pca[0].components.shape == (16, 16)  # relu1 has 16 channels, fewer than components=32
    assert fitted.classifiers[3].coef.shape == (NUM_CLASSES, 32)
    assert float(score[10:].min()) > float(score[:10].median())  # heavy noise breaks the invariants
    assert not any(k.startswith(("value_", "classifiers", "provenance_", "final_")) for k in fitted.state_dict())


def _cached_state(context: SetupContext) -> dict[str, torch.Tensor]:
    """The tensors the fixture's setup fitted, from the cache."""
    (path,) = (context.cache_dir / "fitted").glob("nic-*.pt")
    return torch.load(path, weights_only=True)


def test_score_is_the_pipeline_in_numpy(fitted: NICDetector, context: SetupContext, probes: torch.Tensor) -> None:
    """The torch score equals NIC's pipeline written out in numpy from the fitted tensors (the cached state)."""
    state = {k: v.numpy() for k, v in _cached_state(context).items()}
    with torch.no_grad():
        features = fit_features(fitted.model, FitSet(PixelSet(probes, torch.zeros(12)), {}), fitted.layers)[0]
        score = fitted.score(probes).double().numpy()
    feats = [features[name].double().numpy() for name in fitted.layers]

    def svm(prefix: str, x: np.ndarray) -> np.ndarray:
        return _numpy_decision(x, state[f"{prefix}sv"], state[f"{prefix}dual"], float(state[f"{prefix}intercept"]),
                               float(state[f"{prefix}gamma"]))

    values = [svm(f"vi{i}.", (f - state[f"vi{i}.mean"]) @ state[f"vi{i}.components"].T) for i, f in enumerate(feats)]
    probs = [softmax(f @ state[f"lr{i}.coef"].T + state[f"lr{i}.intercept"], axis=1) for i, f in enumerate(feats)]
    values += [svm(f"pi{j}.", np.concatenate([probs[j], probs[j + 1]], axis=1)) for j in range(len(feats) - 1)]
    standardised = (np.stack(values, axis=1) - state["final.center"]) / state["final.scale"]
    np.testing.assert_allclose(score, -svm("final.", standardised), rtol=1e-5, atol=1e-6)


def _scikit_learn_nic(
    fit_feats: list[np.ndarray], labels: np.ndarray, probe: list[np.ndarray], nu: float = 0.1
) -> np.ndarray:
    """NIC's score of ``probe`` (one (B, C_i) array per layer) fitted on ``fit_feats`` (one (n, C_i) array per layer)
    with ``labels`` (n,) by scikit-learn's own PCA, LogisticRegression and OneClassSVM on the parts of
    :func:`split_fit_parts`, evaluated by their ``transform``, ``predict_proba`` and ``decision_function``."""
    classifiers, invariants, combiner = (p.numpy() for p in split_fit_parts(torch.from_numpy(labels)))
    first_two = np.sort(np.concatenate([classifiers, invariants]))

    def one_class(train: np.ndarray) -> OneClassSVM:
        return OneClassSVM(nu=nu, gamma="scale", tol=1e-12).fit(train)

    fit_values, probe_values, fit_probs, probe_probs = [], [], [], []
    for f, g in zip(fit_feats, probe, strict=True):
        pca = PCA(n_components=min(32, f.shape[1]), svd_solver="full").fit(f[first_two])
        svm = one_class(pca.transform(f[first_two]))
        fit_values.append(svm.decision_function(pca.transform(f[combiner])))
        probe_values.append(svm.decision_function(pca.transform(g)))
        mu, sigma = f[classifiers].mean(axis=0), f[classifiers].std(axis=0)
        sigma[sigma == 0] = 1.0
        classifier = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit((f[classifiers] - mu) / sigma,
                                                                               labels[classifiers])
        fit_probs.append(classifier.predict_proba((f - mu) / sigma))
        probe_probs.append(classifier.predict_proba((g - mu) / sigma))
    for j in range(len(fit_feats) - 1):
        joint, joint_probe = (np.concatenate([p[j], p[j + 1]], axis=1) for p in (fit_probs, probe_probs))
        svm = one_class(joint[invariants])
        fit_values.append(svm.decision_function(joint[combiner]))
        probe_values.append(svm.decision_function(joint_probe))
    values = np.stack(fit_values, axis=1)
    center, scale = values.mean(axis=0), values.std(axis=0)
    final = one_class((values - center) / scale)
    return -final.decision_function((np.stack(probe_values, axis=1) - center) / scale)


def test_score_is_the_pipeline_refitted_with_scikit_learn(
    fitted: NICDetector, context: SetupContext, probes: torch.Tensor
) -> None:
    """The detector's score equals NIC's pipeline fitted by scikit-learn's own models (:func:`_scikit_learn_nic`)."""
    with torch.no_grad():
        fit_feats, labels, _ = fit_features(fitted.model, context.fit, fitted.layers)
        probe_feats = fit_features(fitted.model, FitSet(PixelSet(probes, torch.zeros(12)), {}), fitted.layers)[0]
        score = fitted.score(probes).double().numpy()
    with threadpool_limits(1):  # scikit-learn's small BLAS calls, much faster so on a busy CPU
        expected = _scikit_learn_nic([fit_feats[n].double().numpy() for n in fitted.layers], labels.numpy(),
                                     [probe_feats[n].double().numpy() for n in fitted.layers])
    np.testing.assert_allclose(score, expected, rtol=1e-4, atol=1e-4)


def test_batch_independence(fitted: NICDetector, probes: torch.Tensor) -> None:
    with torch.no_grad():
        together = fitted.score(probes)
        alone = torch.cat([fitted.score(probes[i:i + 1]) for i in range(len(probes))])
        mixed = fitted.score(probes[[7, 2]])
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed, together[[7, 2]], rtol=1e-4, atol=1e-5)


def test_gradients_reach_the_pixels(fitted: NICDetector, probes: torch.Tensor) -> None:
    leaf = probes[:4].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fitted.score(leaf).sum(), leaf)
    assert bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0
    leaf = probes[:4].clone().requires_grad_(True)
    loss = fitted.evasion_loss(leaf, torch.arange(4), exact=True)
    assert loss.shape == (4,)
    (grad,) = torch.autograd.grad(loss.sum(), leaf)
    assert bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0


def test_fitting_is_deterministic_and_the_second_setup_reads_the_cache(
    fitted: NICDetector, context: SetupContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = _cached_state(context), fitted.fit_state(context.fit)  # the fixture's fit, and one more
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert int(first["items"]) == 10 * COPIES and first["parts"].tolist() == [30, 15, 15]

    def refit(self: NICDetector, fit: FitSet) -> dict[str, torch.Tensor]:
        raise AssertionError("fitted again instead of reading the cache")

    monkeypatch.setattr(NICDetector, "fit_state", refit)
    again = NICDetector(toy_classifier(32))
    again.setup(context)
    assert again.fit_items == fitted.fit_items == 10 * COPIES
    for ours, theirs in zip(again.buffers(), fitted.buffers(), strict=True):
        assert torch.equal(ours, theirs)


def test_setup_under_inference_mode_keeps_gradients(context: SetupContext, probes: torch.Tensor) -> None:
    detector = NICDetector(toy_classifier(32))
    with torch.inference_mode():
        detector.setup(context)  # from the cache
    leaf = probes[:2].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(detector.score(leaf).sum(), leaf)
    assert bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0


def test_parameters_dict_and_description(fitted: NICDetector) -> None:
    params = fitted.parameters_dict()
    assert params["layers"] == ["relu1", "pool1", "relu2", "pool2"] and params["components"] == 32
    assert params["fit"]["rule"] == "test" and params["fit"]["items"] == 10 * COPIES and "files" not in params["fit"]
    assert fitted.fit_record is not None and len(fitted.fit_record["files"]) == 10 * COPIES
    json.dumps(fitted.description())
    assert "fpr" not in fitted.score_identity() and "threshold" not in fitted.score_identity()


def test_calibrated_forward(fitted: NICDetector, probes: torch.Tensor) -> None:
    detector = NICDetector(toy_classifier(32), layers=["pool1", "pool2"], components=4, nu=0.2)
    detector.load_fitted(detector.fit_state(_fit_set(copies=2, seed=5)))  # 20 images: parts of 10, 5 and 5
    with torch.no_grad():
        detector.calibrate(detector.score(probes[:10]))
        out = detector(probes)
    assert out.score.shape == (12,) and out.flagged.dtype == torch.bool
    assert torch.equal(out.flagged, out.score.double() > detector.threshold) and int(out.flagged[:10].sum()) == 0
    classes = detector.classifiers[0].coef.shape[0]  # the identities among the 10 images of the classifiers' part
    assert 2 <= classes <= NUM_CLASSES and detector.provenance_svms[0].sv.shape[1] == 2 * classes
    assert detector.fit_items == 20 and detector.fit_record is None  # loaded by hand, not set up


def test_not_fitted_and_bad_fit_sets(tmp_path: Path, probes: torch.Tensor) -> None:
    detector = NICDetector(toy_classifier(32))
    assert detector.fit_record is None and detector.parameters_dict()["fit"] is None
    with pytest.raises(RuntimeError, match=r"setup\(context\)"):
        detector.score(probes[:2])
    with pytest.raises(RuntimeError, match="needs a benign fit set"):
        detector.setup(SetupContext(tmp_path, tmp_path / "cache", model_key="toy"))
    x, y = toy_faces(32)
    small = FitSet(PixelSet(x[: MIN_FIT_ITEMS - 1], y[: MIN_FIT_ITEMS - 1]), {"rule": "small"})
    with pytest.raises(ValueError, match=rf"has {MIN_FIT_ITEMS - 1} readable images; NIC needs at least"):
        detector.setup(SetupContext(tmp_path, tmp_path / "cache", model_key="toy", fit=small))
    one = FitSet(PixelSet(x[:1].repeat(10, 1, 1, 1), torch.zeros(10, dtype=torch.long)), {"rule": "one"})
    with pytest.raises(ValueError, match="fewer than 2 identities"):
        detector.setup(SetupContext(tmp_path, tmp_path / "cache", model_key="toy", fit=one))


@pytest.mark.parametrize(("params", "key"), [
    ({"layers": "relu1"}, "layers='relu1'"),
    ({"layers": ["relu1"]}, r"layers=\['relu1'\]"),
    ({"layers": ["relu1", "relu1"]}, "layers="),
    ({"layers": ["relu1", "conv9"]}, r"\['conv9'\] are not hook layers"),
    ({"components": 0}, "components=0"),
    ({"components": 2.5}, "components=2.5"),
    ({"components": True}, "components=true"),
    ({"nu": 0}, "nu=0"),
    ({"nu": 1.5}, "nu=1.5"),
    ({"nu": float("nan")}, "nu=nan"),
    ({"fpr": 1.0}, "fpr=1.0"),
])
def test_bad_parameters_name_the_key(params: dict, key: str) -> None:
    with pytest.raises(ValueError, match=rf"nic: bad parameters: .*{key}"):
        NICDetector(toy_classifier(32), **params)


def test_config_file_builds_the_detector() -> None:
    config = OmegaConf.to_container(OmegaConf.load(config_dir() / "detector" / "nic.yaml"))
    assert config["type"] == "nic" and NICDetector.check_params(config["params"]) == []
    detector = create_detector(config["type"], toy_classifier(32), **config["params"])
    assert isinstance(detector, NICDetector) and detector.layers == ("relu1", "pool1", "relu2", "pool2")
    assert NICDetector.check_params({"bogus": 1}) == ["unknown parameters ['bogus']; allowed: layers, components, "
                                                      "nu, fpr"]
