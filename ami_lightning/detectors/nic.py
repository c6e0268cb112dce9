"""NIC (Ma, Liu, Tao, Lee and Zhang, "NIC: Detecting Adversarial Samples with Neural Network Invariant Checking",
NDSS 2019), fitted on benign data only.

NIC models two kinds of invariants of a network on benign inputs and flags inputs that break them:

* **Value invariants (VI)**: per chosen layer, a one-class SVM (RBF kernel) on the layer's activations: where benign
  activations lie.
* **Provenance invariants (PI)**: per chosen layer a *derived model*, a linear softmax classifier of the identity
  trained on that layer's activations (the network's layers up to it kept fixed); per pair of consecutive chosen
  layers, a one-class SVM on the concatenation of the two derived models' probability vectors: how the evidence for
  each identity evolves from one layer to the next on benign inputs.
* **Combination**: one more one-class SVM on the vector of the decision values of all invariant models (L VI and
  L - 1 PI values for L layers), as the paper's detector does (and the public code, ``svm_3.py``). The score is minus
  its decision function (larger = more suspicious; the paper flags a sample outside its boundary, score > 0).

Reference code: github.com/RU-System-Software-and-Security/NIC (``PCA.py``, ``svm_2.1.py`` (VI), ``svm_2.2.py``
(PI), ``svm_3.py`` (combination)). This module follows the paper, not that code: there the per-layer derived models
of ``svm_2.2.py`` are Keras ``Dense`` + softmax layers that are compiled but never trained (``model.predict`` of the
random initialisation), so its PI models read random projections; here every derived model is trained.

What is computed, for pixels x (B, 3, H, W) in [0, 255] and chosen layers l_1..l_L (default: the last 4 hook layers):

1. features f_l (B, C_l): the channel means of layer l's activation (:func:`~ami_lightning.detectors.fitting.
   layer_features` with ``reduce="mean"``);
2. VI: ``v_l = ocsvm_l(pca_l(f_l))``, PCA to at most ``components`` dimensions (:func:`pca_project`,
   :func:`ocsvm_decision`);
3. PI: ``p_l = softmax(f_l W_l^T + b_l)`` (:func:`softmax_probabilities`) and ``u_l = ocsvm'_l([p_l, p_l+1])`` for
   l = 1..L-1;
4. score = ``-ocsvm_final((w - center) / scale)`` with w = (v_1..v_L, u_1..u_L-1) (B, 2L - 1) standardised by the
   mean and standard deviation of the invariant values on the fit set's combiner part.

Every fitted model is evaluated in torch from its fitted tensors (float64), so the score has exact gradients with
respect to the pixels. Fitting (:meth:`NICDetector.setup`) is deterministic (seeded split, deterministic solvers:
the same fit set gives the same tensors) and is cached by :func:`~ami_lightning.detectors.fitting.fitted_state`.

Solvers (numpy / torch, float64): the package does not import scikit-learn (an extra's dependency, while every
detector module is imported on any detector lookup); ``tests/test_nic.py`` checks each solver against scikit-learn's
own fit (decision values to 1e-6, probabilities to 1e-5) and the whole score against the pipeline refitted with it:

* PCA (:func:`fit_pca`): the SVD of the centred features, the top ``components`` right singular vectors, each signed
  so that its largest-magnitude entry is positive (scikit-learn's ``svd_flip(u_based_decision=False)``); the
  projection equals scikit-learn's (>= 1.5) ``PCA(n_components=k, svd_solver="full").transform``.
* Derived models (:func:`fit_softmax_regression`): multinomial logistic regression with scikit-learn's default L2
  penalty (``C = 1``, intercept not penalised), i.e. ``LogisticRegression(C=1)``'s objective ``C * sum_i CE_i
  + ||W||^2 / 2``, on standardised features (mean and standard deviation on its training part, folded into ``W`` and
  ``b`` afterwards), minimised by full-batch L-BFGS (torch, strong-Wolfe line search) from zero until no gradient
  entry of the mean objective exceeds 1e-7 (at most 1000 iterations). Only the identities present in its training
  part get a class.
* One-class SVMs (:func:`fit_one_class_svm`): libsvm's one-class formulation, which scikit-learn's ``OneClassSVM``
  wraps: ``min 1/2 a^T K a`` subject to ``0 <= a_i <= 1``, ``sum a_i = nu * n``, RBF kernel with
  ``gamma = 1 / (D * var(X))`` (``gamma="scale"``), solved by libsvm's SMO (its initialisation, second-order working
  set selection, update and ``rho``), without shrinking and to a tolerance of 1e-8 instead of libsvm's 1e-3. The
  decision function is ``sum_i a_i exp(-gamma ||x - sv_i||^2) - rho``: scikit-learn's ``decision_function`` with
  ``dual_coef_ = a`` (support vectors: a_i > 0) and ``intercept_ = -rho`` (> 0 inside the boundary).

Departures from the paper (which fits every model on the training set, on whole layer activations, at every layer):

* Layers: the chosen hook layers only (default the last 4); the paper checks every layer of the network.
* Features: channel means of each activation, then PCA to ``components`` (32) dimensions for the VI models (the
  public code reduces large layers by PCA to 5000 dimensions); the derived models read the channel means unreduced.
* Data: the benign fit set (a few hundred images, never evaluated), not the training set. A model fitted on the
  outputs of another model on that model's own training images would learn their in-sample values (a derived
  classifier is far more confident on the images it was trained on; a one-class SVM's values on its own support
  vectors sit on its boundary), not those of new benign images. So the fit set is split (seeded, class-balanced:
  :func:`split_fit_parts`) into three parts, half / quarter / quarter: the derived models are trained on the first
  part, the PCA and VI models fitted on the first two, the PI models on the second (probabilities out of their
  derived models' training data) and the final model on the third, where every invariant value is out of sample.
* Hyper-parameters: one ``nu`` (0.1) and ``gamma="scale"`` for every one-class SVM, where the public code tunes
  ``nu`` and ``gamma`` per layer on adversarial examples; the final model's inputs are standardised (their scales
  differ between the VI and PI models).
* Rule: flagged above the threshold that gives ``fpr`` benign false positives on the evaluated benign set
  (:class:`~ami_lightning.detectors.thresholded.ThresholdDetector`), as the other detectors of the comparison,
  instead of the final model's own boundary (score > 0, a benign FPR near ``nu`` on the fit data).

Memory and time: fitting holds one (n, n) float64 kernel per one-class SVM (n <= 3/4 of the fit set). Measured on
features of the real size (952 fit images of 238 identities, 4 layers of 256 channels) on this project's 2-core CPU
beside other jobs: 4 s (load average 3) to 15 s (load average 5.6) for all the models (:func:`fit_nic`), the derived
classifiers taking most of it; the model's forward passes over the fit set come on top. The solvers run on one torch
thread (:func:`fit_nic`): much faster so on a busy CPU, and rounding that does not depend on the machine's thread
count. Scoring adds (B, S) kernels (S support vectors, a few hundred at most) to one forward pass of the model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ami_lightning.checks import expect, is_int, is_number, unknown_keys
from ami_lightning.detectors.base import SetupContext, register_detector
from ami_lightning.detectors.fitting import FitSet, fit_features, fitted_state, layer_features
from ami_lightning.detectors.layered import LayerDetector, layers_problems, model_device
from ami_lightning.detectors.thresholded import fpr_problems

__all__ = [
    "MIN_FIT_ITEMS",
    "NICDetector",
    "OneClassSVMFit",
    "fit_nic",
    "fit_one_class_svm",
    "fit_pca",
    "fit_softmax_regression",
    "ocsvm_decision",
    "pca_project",
    "rbf_gamma_scale",
    "softmax_probabilities",
    "split_fit_parts",
]

MIN_FIT_ITEMS = 8
"""The fewest readable fit images NIC can be fitted on (each of its three parts needs two or more)."""

SPLIT_SEED = 0
"""The seed of the split of the fit set into its three parts (:func:`split_fit_parts`)."""

PART_PATTERN = (0, 0, 1, 2)
"""How the images of each identity are dealt to the parts: classifiers (0), invariants (1), combiner (2)."""

SVM_TOL = 1e-8
"""Stopping tolerance of the one-class SVM solver (libsvm's ``eps``, scikit-learn's ``tol``: 1e-3 there)."""

LR_C = 1.0
"""Inverse L2 penalty of the derived models (scikit-learn's ``LogisticRegression`` default)."""

LR_MAX_ITER = 1000
LR_TOL = 1e-7

P = ParamSpec("P")
R = TypeVar("R")
_TAU = 1e-12  # libsvm's TAU: the curvature used when a pair's is not positive


# ---------------------------------------------------------------------------------------------------- torch kernels


def ocsvm_decision(
    x: torch.Tensor,
    support_vectors: torch.Tensor,
    dual_coef: torch.Tensor,
    intercept: torch.Tensor | float,
    gamma: torch.Tensor | float,
) -> torch.Tensor:
    """A one-class SVM's decision function (N,) at the rows of ``x`` (N, D): ``sum_i dual_coef[i] *
    exp(-gamma * ||x - support_vectors[i]||^2) + intercept``, i.e. scikit-learn's ``OneClassSVM.decision_function``
    from its ``support_vectors_`` (S, D), ``dual_coef_`` (S,) (its (1, S) flattened), ``intercept_`` () (= -rho) and
    the gamma it used (``_gamma``). Positive inside the learned boundary (benign-like), negative outside; in the
    kernel's units (a sum of at most ``nu * n`` kernel values, minus rho). In the promoted dtype of the inputs,
    differentiable with respect to ``x`` (squared distances as ``|x|^2 + |sv|^2 - 2 x.sv``, clamped at 0)."""
    if x.dim() != 2 or support_vectors.dim() != 2 or x.shape[1] != support_vectors.shape[1] \
            or dual_coef.shape != (support_vectors.shape[0],):
        raise ValueError(f"ocsvm_decision: expected x (N, D), support_vectors (S, D), dual_coef (S,), got "
                         f"{tuple(x.shape)}, {tuple(support_vectors.shape)}, {tuple(dual_coef.shape)}")
    squared = ((x * x).sum(dim=1, keepdim=True) + (support_vectors * support_vectors).sum(dim=1)[None, :]
               - 2.0 * x @ support_vectors.T).clamp_min(0.0)  # (N, S)
    return torch.exp(-gamma * squared) @ dual_coef + intercept


def pca_project(x: torch.Tensor, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """PCA scores (N, k) of ``x`` (N, D): ``(x - mean) @ components.T`` with ``mean`` (D,) and ``components`` (k, D)
    (orthonormal rows), scikit-learn's ``PCA.transform`` without whitening; in the units of ``x``."""
    return (x - mean) @ components.T


def softmax_probabilities(x: torch.Tensor, coef: torch.Tensor, intercept: torch.Tensor) -> torch.Tensor:
    """Class probabilities (N, K) of a multinomial logistic regression at ``x`` (N, D): ``softmax(x @ coef.T +
    intercept)`` with ``coef`` (K, D) and ``intercept`` (K,), scikit-learn's ``LogisticRegression.predict_proba``
    (multinomial) from its ``coef_`` and ``intercept_``; rows sum to 1."""
    return torch.softmax(x @ coef.T + intercept, dim=1)


# ---------------------------------------------------------------------------------------------------- fitting


def _single_threaded(function: Callable[P, R]) -> Callable[P, R]:
    """``function`` run with one torch thread (the previous count restored after): the fitters' small matrix
    products are much faster so on a busy CPU, and their rounding does not depend on the machine's thread count."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


def _matvec(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix @ vector`` in torch (float64; one thread under :func:`_single_threaded`)."""
    return (torch.from_numpy(matrix) @ torch.from_numpy(vector)).numpy()


@dataclass(frozen=True)
class OneClassSVMFit:
    """A fitted one-class SVM (float64 CPU tensors): ``support_vectors`` (S, D), ``dual_coef`` (S,) in (0, 1],
    ``intercept`` () = -rho, ``gamma`` () of the RBF kernel, and ``iterations`` of the solver. Evaluate it with
    :func:`ocsvm_decision` (:meth:`decision`)."""

    support_vectors: torch.Tensor
    dual_coef: torch.Tensor
    intercept: torch.Tensor
    gamma: torch.Tensor
    iterations: int

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        """The decision function (N,) at ``x`` (N, D) (:func:`ocsvm_decision`, in x's promoted dtype)."""
        return ocsvm_decision(x, self.support_vectors.to(x), self.dual_coef.to(x), self.intercept.to(x),
                              self.gamma.to(x))

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """``{prefix + "sv": ..., prefix + "dual": ..., prefix + "intercept": ..., prefix + "gamma": ...}``."""
        return {f"{prefix}sv": self.support_vectors, f"{prefix}dual": self.dual_coef,
                f"{prefix}intercept": self.intercept, f"{prefix}gamma": self.gamma}


def rbf_gamma_scale(x: torch.Tensor) -> float:
    """scikit-learn's ``gamma="scale"`` for the rows of ``x`` (N, D): ``1 / (D * var(x))``, the variance of all its
    entries (population, float64); 1.0 when that variance is 0."""
    variance = float(x.double().var(correction=0)) if x.numel() > 0 else 0.0
    return 1.0 / (x.shape[1] * variance) if variance > 0 else 1.0


@_single_threaded
def fit_one_class_svm(
    x: torch.Tensor, nu: float = 0.1, tol: float = SVM_TOL, max_iter: int | None = None
) -> OneClassSVMFit:
    """A one-class SVM (RBF kernel, ``gamma="scale"``: :func:`rbf_gamma_scale`) fitted on the rows of ``x`` (n, D),
    as libsvm's one-class solver that scikit-learn's ``OneClassSVM(nu=nu, gamma="scale")`` calls: the dual ``min
    1/2 a^T Q a`` subject to ``0 <= a_i <= 1`` and ``sum a_i = nu * n`` (Q the kernel matrix), from libsvm's start
    (the first ``floor(nu * n)`` coefficients 1, the next the remainder), by SMO with its second-order working-set
    selection, until ``max_{a_i < 1} -G_i + max_{a_j > 0} G_j < tol`` (G = Q a); ``rho`` as libsvm's
    ``calculate_rho`` (the mean gradient over the free coefficients). No shrinking (it changes no result beyond the
    tolerance). Deterministic. ``max_iter``: default ``max(10**6, 100 n)``. Memory: the (n, n) float64 kernel.
    ValueError for an empty ``x``, a non-finite value or ``nu`` outside (0, 1]."""
    data = x.detach().to("cpu", torch.float64)
    if data.dim() != 2 or len(data) == 0 or data.shape[1] == 0:
        raise ValueError(f"fit_one_class_svm: expected x (n >= 1, D >= 1), got {tuple(x.shape)}")
    if not bool(torch.isfinite(data).all()):
        raise ValueError("fit_one_class_svm: x has non-finite values")
    if not 0.0 < nu <= 1.0:
        raise ValueError(f"fit_one_class_svm: nu={nu!r}: expected a number in (0, 1]")
    gamma = rbf_gamma_scale(data)
    points = data.numpy()
    n = len(points)
    q = torch.exp(-gamma * torch.cdist(data, data, compute_mode="donot_use_mm_for_euclid_dist").square()).numpy()
    diagonal = np.diagonal(q).copy()
    total = nu * n
    alpha = np.zeros(n)
    whole = min(int(total), n)
    alpha[:whole] = 1.0
    if whole < n:
        alpha[whole] = total - whole
    gradient = _matvec(q, alpha)
    limit = max(10**6, 100 * n) if max_iter is None else max_iter
    iterations = 0
    while iterations < limit:
        up = np.where(alpha < 1.0, -gradient, -np.inf)
        i = int(np.argmax(up))
        low = alpha > 0.0
        if up[i] + np.where(low, gradient, -np.inf).max() < tol:
            break
        difference = up[i] + gradient  # > 0: moving weight from j to i lowers the objective
        curvature = diagonal[i] + diagonal - 2.0 * q[i]
        curvature = np.where(curvature > 0, curvature, _TAU)
        gain = np.where(low & (difference > 0), -(difference * difference) / curvature, np.inf)
        j = int(np.argmin(gain))
        if not np.isfinite(gain[j]):
            break
        iterations += 1
        old_i, old_j = alpha[i], alpha[j]
        quad = diagonal[i] + diagonal[j] - 2.0 * q[i, j]
        delta = (gradient[i] - gradient[j]) / (quad if quad > 0 else _TAU)
        pair = old_i + old_j
        new_i, new_j = old_i - delta, old_j + delta
        if pair > 1.0:
            if new_i > 1.0:
                new_i, new_j = 1.0, pair - 1.0
        elif new_j < 0.0:
            new_i, new_j = pair, 0.0
        if pair > 1.0:
            if new_j > 1.0:
                new_i, new_j = pair - 1.0, 1.0
        elif new_i < 0.0:
            new_i, new_j = 0.0, pair
        gradient += q[i] * (new_i - old_i) + q[j] * (new_j - old_j)
        alpha[i], alpha[j] = new_i, new_j
    gradient = _matvec(q, alpha)  # afresh, free of the updates' rounding
    upper, lower = alpha >= 1.0, alpha <= 0.0
    free = ~upper & ~lower
    if free.any():
        rho = float(gradient[free].mean())
    else:
        ub = float(gradient[lower].min()) if lower.any() else math.inf
        lb = float(gradient[upper].max()) if upper.any() else -math.inf
        rho = (ub + lb) / 2
    support = alpha > 0.0
    return OneClassSVMFit(torch.from_numpy(points[support].copy()), torch.from_numpy(alpha[support].copy()),
                          torch.tensor(-rho, dtype=torch.float64), torch.tensor(gamma, dtype=torch.float64),
                          iterations)


@_single_threaded
def fit_pca(x: torch.Tensor, components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), components (k, D)) of the rows of ``x`` (n, D), k = min(components, n, D), float64 on the CPU:
    the top k right singular vectors of the centred data (descending variance), each signed so that its entry of
    largest magnitude is positive (scikit-learn's PCA convention since 1.5). Project with :func:`pca_project`."""
    data = x.detach().to("cpu", torch.float64)
    if data.dim() != 2 or len(data) == 0:
        raise ValueError(f"fit_pca: expected x (n >= 1, D), got {tuple(x.shape)}")
    if not is_int(components) or components < 1:
        raise ValueError(f"fit_pca: components={components!r}: expected an integer >= 1")
    mean = data.mean(dim=0)
    _, _, vt = torch.linalg.svd(data - mean, full_matrices=False)
    kept = vt[: min(components, *data.shape)]
    signs = kept.gather(1, kept.abs().argmax(dim=1, keepdim=True)).sign()
    return mean, (kept * torch.where(signs == 0, 1.0, signs)).contiguous()


@_single_threaded
def fit_softmax_regression(
    x: torch.Tensor, labels: torch.Tensor, c: float = LR_C, max_iter: int = LR_MAX_ITER, tol: float = LR_TOL
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(coef (K, D), intercept (K,), classes (K,) long) of a multinomial logistic regression of ``labels`` (n,) on the
    rows of ``x`` (n, D), float64 on the CPU, K = the distinct labels (sorted; probability column j is
    ``classes[j]``): the minimiser of ``sum_i CE_i / n + ||W||^2 / (2 c n)`` (scikit-learn's
    ``LogisticRegression(C=c)`` objective scaled by 1 / (c n); the intercept is not penalised) on the standardised
    features ``(x - mean) / std`` (a zero std taken as 1), the standardisation folded into ``coef`` and ``intercept``
    so that :func:`softmax_probabilities` reads ``x`` itself. Full-batch L-BFGS (strong-Wolfe line search, history
    20) from zero until the largest gradient entry is below ``tol`` or ``max_iter`` iterations; deterministic.
    ValueError for fewer than two classes. Works under ``torch.no_grad`` and ``torch.inference_mode`` too."""
    classes, target = torch.unique(labels.detach().cpu().long(), sorted=True, return_inverse=True)
    if x.dim() != 2 or len(x) != len(labels) or len(classes) < 2:
        raise ValueError(f"fit_softmax_regression: expected x (n, D) and labels (n,) of at least 2 classes, got "
                         f"{tuple(x.shape)}, {tuple(labels.shape)} with {len(classes)} classes")
    with torch.inference_mode(False), torch.enable_grad():
        data, target = x.detach().to("cpu", torch.float64).clone(), target.clone()  # normal tensors, never inference
        n = len(data)
        mean = data.mean(dim=0)
        std = data.std(dim=0, correction=0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        z = (data - mean) / std
        weight = torch.zeros(len(classes), data.shape[1], dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter,
                                      tolerance_grad=tol, tolerance_change=0.0, history_size=20,
                                      line_search_fn="strong_wolfe")

        def objective() -> torch.Tensor:
            optimiser.zero_grad()
            loss = F.cross_entropy(z @ weight.T + bias, target, reduction="sum") / n \
                + (weight * weight).sum() / (2.0 * c * n)
            loss.backward()
            return loss

        optimiser.step(objective)  # type: ignore[no-untyped-call]
        coef = weight.detach() / std
        return coef, bias.detach() - coef @ mean, classes.clone()


def split_fit_parts(labels: torch.Tensor, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (ascending, long) of the three parts of a fit set with ``labels`` (n,): classifiers, invariants,
    combiner. The items are shuffled (seeded), grouped by label (stably, so each identity's images stay in the
    shuffled order) and dealt in turn by :data:`PART_PATTERN` (classifiers, classifiers, invariants, combiner),
    the turn running on across identities: an identity with four images gives two to the classifiers and one to each
    other part; half, a quarter and a quarter of the set overall. The same labels and seed give the same parts."""
    n = len(labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    grouped = order[torch.sort(labels.detach().cpu()[order], stable=True).indices]
    pattern = torch.tensor(PART_PATTERN)[torch.arange(n) % len(PART_PATTERN)]
    return tuple(grouped[pattern == p].sort().values for p in range(3))  # type: ignore[return-value]


@_single_threaded
def fit_nic(
    features: Sequence[torch.Tensor], labels: torch.Tensor, components: int = 32, nu: float = 0.1
) -> dict[str, torch.Tensor]:
    """Every NIC model fitted on benign ``features`` (one (n, C_i) tensor per layer, in forward order, L >= 2) of n
    images with identity ``labels`` (n,), the parts of :func:`split_fit_parts` fitting the models as the module
    docstring says. Returns the tensors (float64 unless said; i indexes the layers, j the pairs of consecutive
    layers): ``items`` () and ``parts`` (3,) long, n and the sizes of the parts; ``vi<i>.mean`` (C_i,),
    ``vi<i>.components`` (k_i, C_i) and ``vi<i>.sv``, ``.dual``, ``.intercept``, ``.gamma``
    (:meth:`OneClassSVMFit.tensors`); ``lr<i>.coef`` (K_i, C_i), ``lr<i>.intercept`` (K_i,), ``lr<i>.classes``
    (K_i,) long; ``pi<j>.sv`` ...; ``final.center`` and ``final.scale`` (2L - 1,) and ``final.sv`` .... Deterministic
    (one torch thread). ValueError for fewer than :data:`MIN_FIT_ITEMS` images or fewer than two identities among
    the classifiers' part."""
    n = len(labels)
    if len(features) < 2 or any(f.dim() != 2 or len(f) != n for f in features):
        raise ValueError(f"fit_nic: expected at least 2 feature tensors (n, C_i) with n = {n}, got "
                         f"{[tuple(f.shape) for f in features]}")
    if n < MIN_FIT_ITEMS:
        raise ValueError(f"it has {n} readable images; NIC needs at least {MIN_FIT_ITEMS} (its three parts fit "
                         "different models)")
    labels = labels.detach().cpu().long()
    classifiers, invariants, combiner = split_fit_parts(labels)
    if len(torch.unique(labels[classifiers])) < 2:
        raise ValueError("it has images of fewer than 2 identities; NIC's derived classifiers need at least 2")
    first_two = torch.cat([classifiers, invariants]).sort().values
    feats = [f.detach().to("cpu", torch.float64) for f in features]
    state: dict[str, torch.Tensor] = {"items": torch.tensor(n),
                                      "parts": torch.tensor([len(classifiers), len(invariants), len(combiner)])}
    values = []
    for i, f in enumerate(feats):
        mean, axes = fit_pca(f[first_two], components)
        projected = pca_project(f, mean, axes)
        svm = fit_one_class_svm(projected[first_two], nu)
        state.update({f"vi{i}.mean": mean, f"vi{i}.components": axes, **svm.tensors(f"vi{i}.")})
        values.append(svm.decision(projected[combiner]))
    probabilities = []
    for i, f in enumerate(feats):
        coef, intercept, classes = fit_softmax_regression(f[classifiers], labels[classifiers])
        state.update({f"lr{i}.coef": coef, f"lr{i}.intercept": intercept, f"lr{i}.classes": classes})
        probabilities.append(softmax_probabilities(f, coef, intercept))
    for j in range(len(feats) - 1):
        joint = torch.cat([probabilities[j], probabilities[j + 1]], dim=1)
        svm = fit_one_class_svm(joint[invariants], nu)
        state.update(svm.tensors(f"pi{j}."))
        values.append(svm.decision(joint[combiner]))
    invariant_values = torch.stack(values, dim=1)  # (n_combiner, 2L - 1)
    center = invariant_values.mean(dim=0)
    scale = invariant_values.std(dim=0, correction=0)
    scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
    final = fit_one_class_svm((invariant_values - center) / scale, nu)
    state.update({"final.center": center, "final.scale": scale, **final.tensors("final.")})
    return state


# ---------------------------------------------------------------------------------------------------- torch heads


class _OneClassSVM(nn.Module):
    """A fitted one-class SVM as non-persistent buffers: forward (N, D) -> decision values (N,)."""

    def __init__(self, state: Mapping[str, torch.Tensor], prefix: str) -> None:
        super().__init__()
        for key in ("sv", "dual", "intercept", "gamma"):
            self.register_buffer(key, state[prefix + key], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ocsvm_decision(x, self.sv, self.dual, self.intercept, self.gamma)


class _Buffers(nn.Module):
    """Named tensors as non-persistent buffers (so that ``.to(device)`` moves them and no state dict holds them)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        for key, tensor in tensors.items():
            self.register_buffer(key, tensor, persistent=False)


# ---------------------------------------------------------------------------------------------------- detector


@register_detector("nic")
class NICDetector(LayerDetector):
    """NIC (Ma et al., NDSS 2019) on ``model`` (pixels (B, 3, H, W) in [0, 255] -> logits (B, K)), fitted by
    :meth:`setup` on the context's benign fit set (see the module docstring for the models and the departures).

    ``layers``: hook layer names in forward order, at least 2 (None: the last
    :data:`~ami_lightning.detectors.layered.DEFAULT_LAYER_COUNT`);
    ``components``: the most PCA dimensions of a VI model's input (integer >= 1); ``nu``: every one-class SVM's
    ``nu`` in (0, 1] (an upper bound on the fraction of its training points outside its boundary); ``fpr``: the
    benign false-positive rate of the threshold. ValueError for bad parameters (:meth:`check_params`)."""

    score_unit = (
        "minus the decision value of NIC's final one-class SVM (RBF) over the standardised decision values of its "
        "value and provenance invariant models; kernel units, any real, > 0 outside the boundary learned on the "
        "benign fit set (larger = more suspicious)"
    )
    rule = (
        "flagged when the score is above the threshold that gives `fpr` (5 %) FPR on the benign images the model "
        "classifies correctly (the paper flags outside the final one-class SVM's boundary, score > 0)"
    )
    min_layers = 2  # the provenance invariants pair consecutive layers

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        components: int = 32,
        nu: float = 0.1,
        fpr: float = 0.05,
    ) -> None:
        problems = self.check_params({"layers": layers, "components": components, "nu": nu, "fpr": fpr})
        if problems:
            raise ValueError(f"nic: bad parameters: {'; '.join(problems)}")
        super().__init__(model, layers, fpr)
        self.components = int(components)
        self.nu = float(nu)
        self.value_pca = nn.ModuleList()
        self.value_svms = nn.ModuleList()
        self.classifiers = nn.ModuleList()
        self.provenance_svms = nn.ModuleList()
        self.final_scaler = _Buffers({})
        self.final_svm: nn.Module | None = None

    @staticmethod
    def check_params(params: Mapping[str, Any]) -> list[str]:
        """Problems of ``params`` (any of ``layers``, ``components``, ``nu``, ``fpr``), one
        ``"<key>=<value>: expected ..."`` line each; [] when fine."""
        return [
            *unknown_keys(params, ("layers", "components", "nu", "fpr")),
            *layers_problems(params, 2, ", in forward order (PI models pair consecutive ones)"),
            *expect(params, "components", lambda v: is_int(v) and v >= 1,
                    "an integer >= 1: the most PCA dimensions of a value-invariant model's input (e.g. 32)"),
            *expect(params, "nu", lambda v: is_number(v) and math.isfinite(v) and 0 < v <= 1,
                    "a number in (0, 1]: the one-class SVMs' bound on the fraction of fit points outside (e.g. 0.1)"),
            *fpr_problems(params),
        ]

    # ---- fitting

    def fit_identity(self) -> dict[str, Any]:
        """What fitting reads besides the model, the fit set and the code: ``layers``, ``components``, ``nu``."""
        return {"layers": list(self.layers), "components": self.components, "nu": self.nu}

    def setup(self, context: SetupContext) -> None:
        """Fit the invariant models on ``context.fit`` (:meth:`fit_state`) or read them from the cache
        (:func:`~ami_lightning.detectors.fitting.fitted_state`, keyed by the model, the fit record,
        :meth:`fit_identity` and this module's code), then load them as non-persistent buffers on the model's
        device. RuntimeError when the context has no fit set; ValueError when it has fewer than
        :data:`MIN_FIT_ITEMS` readable images or fewer than two identities."""
        state = fitted_state(context, self.kind, self.fit_identity(), type(self),
                             lambda: self.fit_state(context.fit))
        self.load_fitted(state)
        self.to(model_device(self.model))
        self.fit_record = dict(context.fit.record)

    def fit_state(self, fit: FitSet) -> dict[str, torch.Tensor]:
        """The fitted tensors of :func:`fit_nic` on the channel means of ``layers`` over the fit set's readable
        images (:func:`~ami_lightning.detectors.fitting.fit_features`). ValueError naming the fit set when it has
        fewer than :data:`MIN_FIT_ITEMS` images or fewer than two identities."""
        features, labels, _ = fit_features(self.model, fit, self.layers, reduce="mean")
        try:
            return fit_nic([features[name] for name in self.layers], labels, self.components, self.nu)
        except ValueError as err:
            raise ValueError(f"nic: the fit set ({fit.record.get('rule', 'benign fit set')}): {err}") from None

    def load_fitted(self, state: Mapping[str, torch.Tensor]) -> None:
        """Rebuild the torch models from the tensors of :meth:`fit_state` (on the CPU; :meth:`setup` moves them),
        as copies made outside inference mode (so that scoring with gradients works after a setup under
        ``torch.inference_mode``)."""
        with torch.inference_mode(False):
            state = {key: tensor.clone() for key, tensor in state.items()}
        count = len(self.layers)
        self.value_pca = nn.ModuleList(
            _Buffers({"mean": state[f"vi{i}.mean"], "components": state[f"vi{i}.components"]}) for i in range(count))
        self.value_svms = nn.ModuleList(_OneClassSVM(state, f"vi{i}.") for i in range(count))
        self.classifiers = nn.ModuleList(
            _Buffers({"coef": state[f"lr{i}.coef"], "intercept": state[f"lr{i}.intercept"]}) for i in range(count))
        self.provenance_svms = nn.ModuleList(_OneClassSVM(state, f"pi{j}.") for j in range(count - 1))
        self.final_scaler = _Buffers({"center": state["final.center"], "scale": state["final.scale"]})
        self.final_svm = _OneClassSVM(state, "final.")
        self.fit_items = int(state["items"])

    # ---- scoring

    def _fitted(self) -> nn.Module:
        """The final one-class SVM; RuntimeError naming :meth:`setup` before the detector is fitted."""
        if self.final_svm is None:
            raise RuntimeError(f"{self.name} is not fitted: call setup(context) with a benign fit set (context.fit) "
                               "before scoring")
        return self.final_svm

    def invariant_values(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, 2L - 1) float64: the decision values of the L value-invariant models, then of the L - 1
        provenance-invariant models, at ``features`` ({layer: channel means (B, C_layer)}; kernel units, > 0 inside
        a model's boundary). RuntimeError before :meth:`setup`."""
        self._fitted()
        feats = [features[name].double() for name in self.layers]
        values = [svm(pca_project(f, pca.mean, pca.components))
                  for f, pca, svm in zip(feats, self.value_pca, self.value_svms, strict=True)]
        probabilities = [softmax_probabilities(f, lr.coef, lr.intercept)
                         for f, lr in zip(feats, self.classifiers, strict=True)]
        values += [svm(torch.cat([probabilities[j], probabilities[j + 1]], dim=1))
                   for j, svm in enumerate(self.provenance_svms)]
        return torch.stack(values, dim=1)

    def score_features(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B,) float64: minus the final one-class SVM's decision value at the standardised
        :meth:`invariant_values` of ``features`` ({layer: channel means (B, C_layer)}). RuntimeError before
        :meth:`setup`."""
        final = self._fitted()
        values = self.invariant_values(features)
        return -final((values - self.final_scaler.center) / self.final_scaler.scale)

    def score(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) in ``x``'s dtype: NIC's score of pixels x (B, 3, H, W) in [0, 255] (:meth:`score_features` of its
        layers' channel means); exact gradients with respect to x. ``logits`` are not used (the score needs the
        hooked activations: one forward of its own). RuntimeError before :meth:`setup`."""
        self._fitted()  # before any forward pass
        found, _ = layer_features(self.model, x, self.layers, reduce="mean")
        return self.score_features(found).to(x.dtype)

    def evasion_loss(self, x: torch.Tensor, targets: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """(B,) the detector's :meth:`score` of x, which an attacker minimises (``targets`` are not needed: the
        invariants are those of benign images of any identity); its gradients are exact, whatever ``exact``."""
        return self.score(x)

    def parameters_dict(self) -> dict[str, Any]:
        """``{"layers", "components", "nu", "fpr", "threshold" (None until calibrated), "fit"}``; ``fit``: the fit
        set's record without its file list, with ``items`` and a ``digest`` of the whole record (None before
        :meth:`setup`)."""
        return {"layers": list(self.layers), "components": self.components, "nu": self.nu, "fpr": self.fpr,
                "threshold": self.threshold, "fit": self.fit_summary()}
