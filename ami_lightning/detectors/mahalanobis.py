"""The Mahalanobis detector (Lee, Lee, Lee and Shin, "A Simple Unified Framework for Detecting Out-of-Distribution
Samples and Adversarial Attacks", NeurIPS 2018), fitted on benign data only.

Reference code: github.com/pokaxpoka/deep_Mahalanobis_detector (``lib_generation.py``: ``sample_estimator`` fits the
class means and the shared precision, ``get_Mahalanobis_score`` scores with input pre-processing).

At each hooked layer the features of an image are the channel means of the layer's activation (``(B, C, H, W)`` ->
``(B, C)``; a 2-D output as it is), as the reference's ``intermediate_forward`` followed by ``torch.mean`` over the
spatial axes. On the benign fit set the detector estimates per layer a Gaussian per class with one covariance shared
by all classes (:func:`class_gaussians`, exactly ``sample_estimator``: class means, scikit-learn's
``EmpiricalCovariance`` on the class-centred features, its ``precision_`` a pseudo-inverse); the layer's score of an
image is its smallest squared Mahalanobis distance to a class mean (:func:`mahalanobis_score`; the reference's
confidence is ``-0.5`` times it, larger meaning more benign, so ours is larger when more suspicious).

Input pre-processing (``eps`` > 0, in pixel units; the paper's noise magnitude): before a layer is scored, the image
moves one signed-gradient step ``x - eps * sign(d score_layer / dx)`` that lowers that layer's distance, each layer
with its own step, as the reference does (its step is taken in the normalised input space and divided by the
normalisation's std, ours directly on the [0, 255] pixels; no clipping, as in the reference). ``eps`` is a fixed
parameter, never tuned on attacks (default 0: no pre-processing).

Departure from the paper: the paper combines the per-layer scores with a logistic regression trained on adversarial
examples of the evaluated attack (or, in its attack-agnostic variant, of FGSM). This detector sees no adversarial data:
each layer's score is standardised by the mean and standard deviation of that layer's scores on the fit set and the
standardised scores are summed. Those fit-set scores are out-of-fold (5 seeded folds, :data:`STANDARDISATION_FOLDS`:
each image scored against Gaussians fitted on the other folds; the Gaussians used at test time are fitted on the
whole set): in-sample distances degenerate when the fit set has fewer degrees of freedom (N images - K classes) than
features (D): every one then equals the covariance's rank, their standard deviation is 0 and the layer would swamp
the sum (e.g. VGG-Face's 4096-wide ``relu6`` and ``relu7`` on a fit set of 952 images of 238 identities). The flag
rule is then the shared threshold at ``fpr`` benign false positives
(:class:`~ami_lightning.detectors.thresholded.ThresholdDetector`).

Classes absent from the fit set: means are estimated for the classes present only, and the score is the minimum over
those (the reference would take the mean of an empty set, nan). An image of an identity the fit set lacks is scored
against its nearest present class.

Memory: per layer the fitted state is K means (K, C) and a (C, C) precision (float64); scoring materialises (B, K, C).

The choice of layers, the fit-set summary and the base class it shares with LID and NIC are in
:mod:`ami_lightning.detectors.layered`; :func:`standardiser` serves LID too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ami_lightning.checks import expect, is_number, unknown_keys
from ami_lightning.detectors.base import SetupContext, register_detector
from ami_lightning.detectors.fitting import fit_features, fitted_state, layer_features
from ami_lightning.detectors.layered import LayerDetector, layers_problems, model_device
from ami_lightning.detectors.thresholded import fpr_problems

__all__ = [
    "MahalanobisDetector",
    "class_gaussians",
    "STANDARDISATION_FOLDS",
    "fold_assignment",
    "mahalanobis_score",
    "standardiser",
]

STANDARDISATION_FOLDS = 5
"""The per-layer standardisation of the Mahalanobis detector uses out-of-fold distances: the fit set split into this
many seeded folds (:func:`fold_assignment`), each fold's images scored against Gaussians fitted on the others."""


# ---------------------------------------------------------------------------------------------------- kernels


def class_gaussians(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None, shrinkage: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means and the shared precision of ``features`` (N, D) with ``labels`` (N,) (integers), as the reference's
    ``sample_estimator``.

    Returns ``(means (K, D), precision (D, D))`` in ``features``' floating dtype (computed in float64): ``means[j]``
    the mean of the features of the j-th smallest label present (K = the number of distinct labels; classes absent
    from ``labels`` get no mean); ``precision`` the pseudo-inverse (``torch.linalg.pinv``, hermitian, its default
    cut-off ``max(N, D) * eps`` of the largest eigenvalue, as SciPy's ``pinvh`` that scikit-learn uses) of the
    biased (1 / N) covariance of the class-centred features (``features - means[class]``), i.e. scikit-learn's
    ``EmpiricalCovariance().fit(centred).covariance_`` (which centres once more on their overall mean, zero).

    ``shrinkage`` s in [0, 1]: the covariance becomes ``(1 - s) * cov + s * trace(cov) / D * I`` (Ledoit-Wolf's
    target with a fixed weight); 0 (default) is the reference, 1 an isotropic covariance. ``num_classes``: when
    given, labels must lie in [0, num_classes) (it sets no row count). ValueError for mismatched shapes, no sample,
    a label out of range or a shrinkage outside [0, 1].
    """
    if features.dim() != 2 or labels.dim() != 1 or len(features) != len(labels) or len(features) == 0:
        raise ValueError(f"class_gaussians: expected features (N, D) and labels (N,) with N >= 1, got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"class_gaussians: shrinkage={shrinkage!r}: expected a number in [0, 1]")
    if num_classes is not None and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"class_gaussians: labels in [{int(labels.min())}, {int(labels.max())}], expected "
                         f"[0, {num_classes})")
    dtype = features.dtype if features.is_floating_point() else torch.float32
    x = features.double()
    classes, index = torch.unique(labels, sorted=True, return_inverse=True)
    sums = torch.zeros(len(classes), x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, index, x)
    counts = torch.bincount(index, minlength=len(classes)).to(x.dtype)
    means = sums / counts[:, None]
    centred = x - means[index]
    centred = centred - centred.mean(dim=0)  # zero up to rounding; as EmpiricalCovariance(assume_centered=False)
    covariance = centred.T @ centred / len(x)
    if shrinkage > 0:
        dim = covariance.shape[0]
        identity = torch.eye(dim, dtype=x.dtype, device=x.device)
        covariance = (1 - shrinkage) * covariance + shrinkage * covariance.trace() / dim * identity
    precision = torch.linalg.pinv(covariance, hermitian=True)
    return means.to(dtype), precision.to(dtype)


def mahalanobis_score(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """The smallest squared Mahalanobis distance of each row of ``features`` (N, D) to a row of ``means`` (K, D) under
    ``precision`` (D, D, symmetric): ``min_k (f - m_k)^T P (f - m_k)``, shape (N,), in the promoted dtype of the
    inputs, in squared feature units. Differentiable (the gradient of the minimum is the nearest class's). Memory
    (N, K, D)."""
    if features.dim() != 2 or means.dim() != 2 or precision.shape != (means.shape[1], means.shape[1]) \
            or features.shape[1] != means.shape[1] or len(means) == 0:
        raise ValueError(f"mahalanobis_score: expected features (N, D), means (K >= 1, D), precision (D, D), got "
                         f"{tuple(features.shape)}, {tuple(means.shape)}, {tuple(precision.shape)}")
    diff = features[:, None, :] - means[None, :, :]  # (N, K, D)
    weighted = (features @ precision)[:, None, :] - (means @ precision)[None, :, :]  # (f - m) P, (N, K, D)
    return (diff * weighted).sum(dim=-1).amin(dim=1)


# ---------------------------------------------------------------------------------------------------- shared helpers


def standardiser(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(center (L,), scale (L,)) of per-layer fit-set scores (N, L): their mean and population standard deviation,
    a scale that is zero or not finite (one image, identical scores) replaced by 1."""
    center = scores.mean(dim=0)
    scale = scores.std(dim=0, correction=0)
    scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
    return center, scale


def fold_assignment(n: int, folds: int, seed: int = 0) -> torch.Tensor:
    """(n,) long: the fold (0 .. min(folds, n) - 1) of each of n items, a seeded random split into folds of sizes
    differing by at most one."""
    folds = max(1, min(folds, n))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    assignment = torch.empty(n, dtype=torch.long)
    assignment[order] = torch.arange(n) % folds
    return assignment


def _number_in(low: float, high: float) -> Any:
    return lambda v: is_number(v) and math.isfinite(v) and low <= v <= high


# ---------------------------------------------------------------------------------------------------- detector


@register_detector("mahalanobis")
class MahalanobisDetector(LayerDetector):
    """The Mahalanobis detector (Lee et al., NeurIPS 2018) on ``model`` (pixels (B, 3, H, W) in [0, 255] -> logits),
    fitted by :meth:`setup` on the context's benign fit set.

    ``layers``: hook layer names (None: :func:`default_layers`, the last 4); ``fpr``: the benign false-positive rate
    of the threshold; ``shrinkage``: of the shared covariance (:func:`class_gaussians`; 0: the reference);
    ``eps``: the input pre-processing step in pixel units (0: none). Score: the sum over the layers of the smallest
    squared Mahalanobis distance of the layer's channel means to a fit-set class mean, each standardised by its
    mean and std on the fit set (see the module docstring). ValueError for bad parameters (:meth:`check_params`).
    """

    score_unit = (
        "sum over the layers of the smallest squared Mahalanobis distance of the layer's channel means to a class "
        "mean of the benign fit set, each standardised by the mean and standard deviation of that layer's distances "
        "on the fit set; unitless, any real (larger = farther from the benign classes)"
    )
    rule = (
        "flagged when the score is above the threshold that gives `fpr` (5 %) FPR on the benign images the model "
        "classifies correctly; the per-layer scores are summed after standardisation on the fit set instead of the "
        "paper's logistic regression trained on adversarial examples"
    )

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        fpr: float = 0.05,
        shrinkage: float = 0.0,
        eps: float = 0.0,
    ) -> None:
        problems = self.check_params({"layers": layers, "fpr": fpr, "shrinkage": shrinkage, "eps": eps})
        if problems:
            raise ValueError(f"mahalanobis: bad parameters: {'; '.join(problems)}")
        super().__init__(model, layers, fpr)
        self.shrinkage = float(shrinkage)
        self.eps = float(eps)

    @staticmethod
    def check_params(params: Mapping[str, Any]) -> list[str]:
        """Problems of ``params`` (any of ``layers``, ``fpr``, ``shrinkage``, ``eps``), one
        ``"<key>=<value>: expected ..."`` line each; [] when fine."""
        return [
            *unknown_keys(params, ("layers", "fpr", "shrinkage", "eps")),
            *layers_problems(params),
            *fpr_problems(params),
            *expect(params, "shrinkage", _number_in(0.0, 1.0),
                    "a number in [0, 1]: the weight of trace(cov)/D * I in the shared covariance (0: the reference)"),
            *expect(params, "eps", _number_in(0.0, 255.0),
                    "a number of pixels in [0, 255]: the input pre-processing step (0: none)"),
        ]

    # ---- fitting

    def setup(self, context: SetupContext) -> None:
        """Fit the class means, shared precisions and per-layer standardisation on ``context.fit`` (the features of
        its readable images, :func:`~ami_lightning.detectors.fitting.fit_features`), or read them from the cache
        (:func:`~ami_lightning.detectors.fitting.fitted_state`, keyed by the model, the fit record, ``layers``,
        ``shrinkage``, ``eps`` and this module's code). The tensors become non-persistent buffers on the model's
        device. RuntimeError when the context has no fit set."""
        identity = {"layers": list(self.layers), "shrinkage": self.shrinkage, "eps": self.eps}
        state = fitted_state(context, self.kind, identity, type(self), lambda: self._fit(context.fit))
        device = model_device(self.model)
        for i in range(len(self.layers)):
            self.register_buffer(f"means_{i}", state[f"means_{i}"].to(device), persistent=False)
            self.register_buffer(f"precision_{i}", state[f"precision_{i}"].to(device), persistent=False)
        self.register_buffer("center", state["center"].to(device), persistent=False)
        self.register_buffer("scale", state["scale"].to(device), persistent=False)
        self.fit_items = int(state["items"])
        self.fit_record = dict(context.fit.record)

    def _fit(self, fit: Any) -> dict[str, torch.Tensor]:
        """The fitted tensors: ``means_<i>`` (K, C_i), ``precision_<i>`` (C_i, C_i) float64 per layer i (on the
        whole fit set), ``center`` and ``scale`` (L,) of the out-of-fold per-layer fit-set distances
        (:data:`STANDARDISATION_FOLDS`), ``items`` () the number of images."""
        features, labels, _ = fit_features(self.model, fit, self.layers)
        device = torch.device(fit.device)
        features = {name: f.to(device).double() for name, f in features.items()}
        labels = labels.to(device)
        n, count = len(labels), len(self.layers)
        state: dict[str, torch.Tensor] = {"items": torch.tensor(n)}
        for i, name in enumerate(self.layers):
            state[f"means_{i}"], state[f"precision_{i}"] = class_gaussians(features[name], labels,
                                                                           shrinkage=self.shrinkage)
        folds = fold_assignment(n, STANDARDISATION_FOLDS).to(device)
        scores = torch.empty(n, count, dtype=torch.float64, device=device)
        by_fold: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        for f in range(int(folds.max()) + 1):
            held = folds == f
            train = ~held if n > 1 else held  # one image: scored in-sample (its scale is then 1)
            gaussians = [class_gaussians(features[name][train], labels[train], shrinkage=self.shrinkage)
                         for name in self.layers]
            by_fold.append(gaussians)
            if self.eps == 0:
                for i, name in enumerate(self.layers):
                    scores[held, i] = mahalanobis_score(features[name][held], *gaussians[i])
        if self.eps > 0:  # the same pre-processed distances as at test time, batch by batch with gradients
            offset = 0
            for batch in DataLoader(fit.dataset, batch_size=fit.batch_size):
                pixels = batch[0][batch[1] >= 0].to(device).float()
                fold = folds[offset:offset + len(pixels)]
                for f in fold.unique().tolist():
                    mask = fold == f
                    scores[offset:offset + len(pixels)][mask] = self._layer_scores(pixels[mask], by_fold[f]).detach()
                offset += len(pixels)
        state["center"], state["scale"] = standardiser(scores)
        return state

    # ---- scoring

    def _gaussians(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.fit_record is None:
            raise RuntimeError(f"{self.name} is not fitted: call setup(context) with a benign fit set (context.fit) "
                               "before scoring")
        return [(getattr(self, f"means_{i}"), getattr(self, f"precision_{i}")) for i in range(len(self.layers))]

    def _distances(self, x: torch.Tensor, gaussians: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """(B, L) per-layer smallest squared Mahalanobis distances of pixels x (B, 3, H, W), no pre-processing."""
        found, _ = layer_features(self.model, x, self.layers, reduce="mean")
        return torch.stack([mahalanobis_score(found[n].to(g[0].dtype), *g)
                            for n, g in zip(self.layers, gaussians, strict=True)], dim=1)

    def _layer_scores(self, x: torch.Tensor, gaussians: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """(B, L) float64 per-layer distances of pixels x (B, 3, H, W) in [0, 255], layer i scored on
        ``x - eps * sign(grad_x distance_i)`` when ``eps`` > 0 (the sign is constant: the gradient with respect to x
        is the distance's at the moved image)."""
        if self.eps == 0:
            return self._distances(x, gaussians)
        with torch.inference_mode(False), torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(True)
            distances = self._distances(leaf, gaussians)
            steps = [torch.autograd.grad(distances[:, i].sum(), leaf, retain_graph=i < len(gaussians) - 1)[0].sign()
                     for i in range(len(gaussians))]
        columns = []
        for i, (name, g) in enumerate(zip(self.layers, gaussians, strict=True)):
            found, _ = layer_features(self.model, x - self.eps * steps[i].to(x.dtype), [name], reduce="mean")
            columns.append(mahalanobis_score(found[name].to(g[0].dtype), *g))
        return torch.stack(columns, dim=1)

    def score(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) in ``x``'s dtype: the sum over the layers of ``(distance_i - center_i) / scale_i`` of pixels x
        (B, 3, H, W) in [0, 255]; exact gradients with respect to x. ``logits`` are not used (the score needs the
        hooked activations: one forward of its own, 1 + 2L with pre-processing). RuntimeError before :meth:`setup`."""
        scores = self._layer_scores(x, self._gaussians())
        return ((scores - self.center) / self.scale).sum(dim=1).to(x.dtype)

    def evasion_loss(self, x: torch.Tensor, targets: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """(B,) the detector's :meth:`score` of x, which an attacker minimises (``targets`` are not needed: the score
        is the distance to the nearest benign class whatever it is); its gradients are exact, whatever ``exact``."""
        return self.score(x)

    def parameters_dict(self) -> dict[str, Any]:
        """``{"layers", "fpr", "shrinkage", "eps", "threshold" (None until calibrated), "fit"}``; ``fit``: the fit
        set's summary (:func:`fit_summary`; None before :meth:`setup`)."""
        return {"layers": list(self.layers), "fpr": self.fpr, "shrinkage": self.shrinkage, "eps": self.eps,
                "threshold": self.threshold, "fit": self.fit_summary()}
