"""The LID detector (Ma, Li, Wang, Erfani, Wijewickrema, Schoenebeck, Song, Houle and Bailey, "Characterizing
Adversarial Subspaces Using Local Intrinsic Dimensionality", ICLR 2018), fitted on benign data only.

Reference code: github.com/xingjunm/lid_adversarial_subspace_detection (``util.py``: ``mle_batch`` estimates the
LID of a batch's activations against a minibatch of normal ones, ``get_lids_random_batch`` does it per layer).

The local intrinsic dimensionality of a point, estimated by maximum likelihood from the distances r_1 <= ... <= r_k
to its k nearest neighbours, is ``-1 / ((1/k) sum_i log(r_i / r_k))`` (:func:`lid_mle`; the reference's
``-k / np.sum(np.log(v / v[-1]))``). Adversarial examples lie in regions of higher LID than benign ones.

At each hooked layer the features of an image are its whole activation flattened (``(B, C, H, W)`` ->
``(B, C*H*W)``), as the reference's ``X_act.reshape((n, -1))``. Departures from the reference, all so that the
detector is fitted on benign data only and a sample's score never depends on its batch:

* Neighbours come from a FIXED pool of benign activations, those of the fit set (all of it, or a seeded subsample of
  ``pool_size`` images), never from the other samples of the evaluated batch (the reference draws them from a random
  minibatch of 100 normal test images, which also holds the scored image's own benign counterpart).
* The reference trains a logistic regression on the per-layer LIDs of normal, noisy and adversarial examples of the
  evaluated attack. Here each layer's LID is standardised by the mean and standard deviation of the LIDs of the fit
  set (each pool image scored leave-one-out against the rest of the pool, :func:`lid_mle` with ``exclude_self``;
  other fit images against the whole pool) and the standardised LIDs are summed; the flag rule is the shared
  threshold at ``fpr`` benign false positives.

Memory (the dlib ResNet at 150 x 150, its last 4 hook layers flattening to at most ~6400 values, a pool of ~952
images): the pool is kept as float32 buffers (~25 MB per layer at 6400 values) and cached; a batch of B images
materialises (B, M) float64 distances per layer, from the expansion ``|q|^2 + |p|^2 - 2 q.p`` (no (B, M, D)
tensor) on activations centred on the pool's mean (the pool is kept centred, with its mean and squared norms, and
converted to float64 per batch: a transient (M, D) float64 copy). Float64 keeps a score independent of its batch to
float32 precision (float32 matrix products round differently with the batch's size).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ami_lightning.checks import expect, is_int, unknown_keys
from ami_lightning.detectors.base import SetupContext, register_detector
from ami_lightning.detectors.fitting import fit_features, fitted_state, layer_features
from ami_lightning.detectors.layered import LayerDetector, layers_problems, model_device
from ami_lightning.detectors.mahalanobis import standardiser
from ami_lightning.detectors.thresholded import fpr_problems

__all__ = ["MIN_LOG_SUM", "MIN_SQUARED_DISTANCE", "LIDDetector", "lid_from_squared", "lid_mle", "squared_distances"]

MIN_SQUARED_DISTANCE = 1e-20
"""Squared distances (feature units squared) below this count as this: a query that coincides with a pool point has
a finite LID and finite gradients instead of ``log(0)``."""

MIN_LOG_SUM = 1e-12
"""``sum_i log(r_k / r_i)`` below this (all k neighbours at one distance: the MLE diverges) counts as this, so the
LID is at most ``k / MIN_LOG_SUM`` instead of infinite."""


def squared_distances(
    queries: torch.Tensor, pool: torch.Tensor, pool_norms: torch.Tensor | None = None
) -> torch.Tensor:
    """(N, M) squared Euclidean distances between the rows of ``queries`` (N, D) and ``pool`` (M, D), in their
    promoted dtype, from the expansion ``|q|^2 + |p|^2 - 2 q.p`` (no (N, M, D) tensor), clamped below at
    :data:`MIN_SQUARED_DISTANCE` (finite logs and gradients where a query is a pool point). ``pool_norms`` (M,):
    ``|p|^2`` when already known. The expansion loses precision where the norms dwarf the distances: centre both on
    the pool's mean first and compute in float64 (as :func:`lid_mle` and :class:`LIDDetector` do)."""
    if pool_norms is None:
        pool_norms = torch.einsum("md,md->m", pool, pool)
    query_norms = torch.einsum("nd,nd->n", queries, queries)
    squared = query_norms[:, None] + pool_norms[None, :].to(query_norms.dtype) - 2 * queries @ pool.T
    return squared.clamp_min(MIN_SQUARED_DISTANCE)


def lid_from_squared(squared: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) float64 maximum-likelihood LID of each row of ``squared`` (N, M) distances (squared, > 0; +inf for a pool
    point that is not a neighbour) from its ``k`` smallest: ``k / sum_i log(r_k / r_i)``, the sum clamped below at
    :data:`MIN_LOG_SUM`. ``k`` <= M."""
    nearest = squared.topk(k, dim=1, largest=False, sorted=True).values.double()  # (N, k) ascending, r_i^2
    logs = nearest.log()  # 2 log r_i
    log_sum = (logs[:, -1:] - logs).sum(dim=1) / 2  # sum_i log(r_k / r_i) >= 0
    return k / log_sum.clamp_min(MIN_LOG_SUM)


def lid_mle(queries: torch.Tensor, pool: torch.Tensor, k: int = 20, exclude_self: bool = False) -> torch.Tensor:
    """The maximum-likelihood LID estimate (N,) of each row of ``queries`` (N, D) from its ``k`` nearest rows of
    ``pool`` (M, D) by Euclidean distance: ``-k / sum_{i<=k} log(r_i / r_k)``, r_1 <= ... <= r_k the distances to
    them (r_k the k-th smallest). ``exclude_self``: the queries are the pool itself (N = M) and row i is not its own
    neighbour (leave-one-out; at most M - 1 neighbours). As the reference's ``mle_batch``, ``k`` is clamped to the
    neighbours there are (``min(k, M)``, or ``M - 1``; with the reference's self-including batch and
    ``exclude_self`` the two agree: its ``[:, 1:k+1]`` skips the point itself).

    Distances: :func:`squared_distances` in float64, after centring both on the pool's mean (the expansion's
    rounding then relative to the centred norms), clamped at :data:`MIN_SQUARED_DISTANCE`; the denominator clamped
    at :data:`MIN_LOG_SUM`. Returned in the promoted floating dtype of the inputs. Differentiable with finite
    gradients. Unitless, >= 0. ValueError for bad shapes, k < 1 or no neighbour.
    """
    if queries.dim() != 2 or pool.dim() != 2 or queries.shape[1] != pool.shape[1]:
        raise ValueError(f"lid_mle: expected queries (N, D) and pool (M, D), got {tuple(queries.shape)} and "
                         f"{tuple(pool.shape)}")
    if exclude_self and len(queries) != len(pool):
        raise ValueError(f"lid_mle: exclude_self needs the queries to be the pool, got {len(queries)} queries and a "
                         f"pool of {len(pool)}")
    if not is_int(k) or k < 1:
        raise ValueError(f"lid_mle: k={k!r}: expected an integer >= 1")
    k = min(k, len(pool) - int(exclude_self))
    if k < 1:
        raise ValueError(f"lid_mle: a pool of {len(pool)} leaves no neighbour")
    dtype = torch.promote_types(queries.dtype, pool.dtype)
    dtype = dtype if dtype.is_floating_point else torch.float32
    center = pool.double().mean(dim=0).detach()
    squared = squared_distances(queries.double() - center, pool.double() - center)
    if exclude_self:
        squared = squared.masked_fill(torch.eye(len(queries), dtype=torch.bool, device=squared.device), float("inf"))
    return lid_from_squared(squared, k).to(dtype)


@register_detector("lid")
class LIDDetector(LayerDetector):
    """The LID detector (Ma et al., ICLR 2018) on ``model`` (pixels (B, 3, H, W) in [0, 255] -> logits), fitted by
    :meth:`setup` on the context's benign fit set.

    ``layers``: hook layer names (None: the last 4, :func:`~ami_lightning.detectors.mahalanobis.default_layers`);
    ``k``: neighbours of the MLE (20, the paper's); ``pool_size``: the number of fit images the neighbours come from
    (None: all of them; else a subsample seeded by ``pool_seed``); ``fpr``: the benign false-positive rate of the
    threshold. Score: the sum over the layers of the LID of the flattened activation against the pool, each
    standardised by its mean and std on the fit set (see the module docstring). ValueError for bad parameters.
    """

    score_unit = (
        "sum over the layers of the maximum-likelihood local intrinsic dimensionality of the flattened activation "
        "among its k nearest activations of the benign fit set's pool, each standardised by the mean and standard "
        "deviation of that layer's LIDs on the fit set (leave-one-out); unitless, any real (larger = more suspicious)"
    )
    rule = (
        "flagged when the score is above the threshold that gives `fpr` (5 %) FPR on the benign images the model "
        "classifies correctly; the per-layer LIDs are summed after standardisation on the fit set instead of the "
        "paper's logistic regression trained on adversarial examples"
    )

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        k: int = 20,
        pool_size: int | None = None,
        pool_seed: int = 0,
        fpr: float = 0.05,
    ) -> None:
        problems = self.check_params({"layers": layers, "k": k, "pool_size": pool_size, "pool_seed": pool_seed,
                                      "fpr": fpr})
        if problems:
            raise ValueError(f"lid: bad parameters: {'; '.join(problems)}")
        super().__init__(model, layers, fpr)
        self.k = int(k)
        self.pool_size = None if pool_size is None else int(pool_size)
        self.pool_seed = int(pool_seed)

    @staticmethod
    def check_params(params: Mapping[str, Any]) -> list[str]:
        """Problems of ``params`` (any of ``layers``, ``k``, ``pool_size``, ``pool_seed``, ``fpr``), one
        ``"<key>=<value>: expected ..."`` line each; [] when fine."""
        problems = [
            *unknown_keys(params, ("layers", "k", "pool_size", "pool_seed", "fpr")),
            *layers_problems(params),
            *expect(params, "k", lambda v: is_int(v) and v >= 1, "an integer >= 1: the neighbours of the LID "
                    "estimate (20 in the paper)"),
            *expect(params, "pool_size", lambda v: v is None or (is_int(v) and v >= 2),
                    "null (the whole fit set) or an integer >= 2: the fit images the neighbours come from"),
            *expect(params, "pool_seed", is_int, "an integer seed of the pool's subsample"),
            *fpr_problems(params),
        ]
        k, size = params.get("k"), params.get("pool_size")
        if is_int(k) and is_int(size) and k >= 1 and size >= 2 and size <= k:
            problems.append(f"pool_size={size}: expected more than k={k} images (each pool image's own LID is "
                            "estimated from the k others)")
        return problems

    # ---- fitting

    def setup(self, context: SetupContext) -> None:
        """Keep the pool's flattened activations per layer and the per-layer standardisation of the fit set's LIDs,
        computed on ``context.fit`` (:func:`~ami_lightning.detectors.fitting.fit_features`) or read from the cache
        (:func:`~ami_lightning.detectors.fitting.fitted_state`, keyed by the model, the fit record, ``layers``,
        ``k``, ``pool_size``, ``pool_seed`` and this module's code). The tensors become non-persistent buffers on the
        model's device. RuntimeError when the context has no fit set; ValueError when it has k images or fewer."""
        identity = {"layers": list(self.layers), "k": self.k, "pool_size": self.pool_size,
                    "pool_seed": self.pool_seed}
        state = fitted_state(context, self.kind, identity, type(self), lambda: self._fit(context.fit))
        device = model_device(self.model)
        for i in range(len(self.layers)):
            for part in ("pool", "pool_mean", "pool_norms"):
                self.register_buffer(f"{part}_{i}", state[f"{part}_{i}"].to(device), persistent=False)
        self.register_buffer("center", state["center"].to(device), persistent=False)
        self.register_buffer("scale", state["scale"].to(device), persistent=False)
        self.fit_items = int(state["items"])
        self.fit_record = dict(context.fit.record)

    def _fit(self, fit: Any) -> dict[str, torch.Tensor]:
        """The fitted tensors: per layer i the pool's activations centred on their mean, ``pool_<i>`` (M, D_i), the
        mean ``pool_mean_<i>`` (D_i,) float64 and the centred squared norms ``pool_norms_<i>`` (M,) float64 (of the
        float32 centred pool); ``center`` and
        ``scale`` (L,) of the fit set's per-layer LIDs, ``items`` () the number of fit images, ``pool_index`` (M,)
        the pool's positions among them."""
        features, labels, _ = fit_features(self.model, fit, self.layers, reduce="flatten")
        device = torch.device(fit.device)  # the pool's own LIDs: (M, M) products, on the fit set's device
        n = len(labels)
        if n <= self.k:
            raise ValueError(f"lid: k={self.k}: the fit set ({fit.record.get('rule', 'benign fit set')}) has {n} "
                             f"readable images; expected more than k")
        if self.pool_size is None or self.pool_size >= n:
            index = torch.arange(n)
        else:
            generator = torch.Generator().manual_seed(self.pool_seed)
            index = torch.randperm(n, generator=generator)[: self.pool_size].sort().values
        rest = torch.ones(n, dtype=torch.bool)
        rest[index] = False
        state: dict[str, torch.Tensor] = {"pool_index": index, "items": torch.tensor(n)}
        columns = []
        for i, name in enumerate(self.layers):
            pool = features[name][index].to(device).float().contiguous()
            mean = pool.double().mean(dim=0)
            centred = (pool.double() - mean).float()
            state[f"pool_{i}"], state[f"pool_mean_{i}"] = centred, mean
            state[f"pool_norms_{i}"] = torch.einsum("md,md->m", centred.double(), centred.double())
            lids = [lid_mle(pool, pool, self.k, exclude_self=True)]
            if rest.any():
                lids.append(lid_mle(features[name][rest].to(device), pool, self.k))
            columns.append(torch.cat(lids).double())
        state["center"], state["scale"] = standardiser(torch.stack(columns, dim=1))
        return state

    # ---- scoring

    def layer_lids(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L) float64: the LID of each image's flattened activation at each layer against the fixed pool (as
        :func:`lid_mle`, with the pool's centring and norms computed once), for pixels x (B, 3, H, W) in [0, 255].
        RuntimeError before :meth:`setup`."""
        if self.fit_record is None:
            raise RuntimeError(f"{self.name} is not fitted: call setup(context) with a benign fit set (context.fit) "
                               "before scoring")
        found, _ = layer_features(self.model, x, self.layers, reduce="flatten")
        columns = []
        for i, name in enumerate(self.layers):
            pool = getattr(self, f"pool_{i}")
            queries = found[name].double() - getattr(self, f"pool_mean_{i}")
            squared = squared_distances(queries, pool.double(), getattr(self, f"pool_norms_{i}"))
            columns.append(lid_from_squared(squared, min(self.k, len(pool))))
        return torch.stack(columns, dim=1)

    def score(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) in ``x``'s dtype: the sum over the layers of ``(LID_i - center_i) / scale_i`` of pixels x
        (B, 3, H, W) in [0, 255], each image against the fixed pool only (independent of its batch); exact gradients
        with respect to x. ``logits`` are not used (one forward of its own for the hooked activations). RuntimeError
        before :meth:`setup`."""
        return ((self.layer_lids(x) - self.center) / self.scale).sum(dim=1).to(x.dtype)

    def evasion_loss(self, x: torch.Tensor, targets: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """(B,) the detector's :meth:`score` of x, which an attacker minimises (``targets`` are not needed); its
        gradients are exact, whatever ``exact``."""
        return self.score(x)

    def parameters_dict(self) -> dict[str, Any]:
        """``{"layers", "k", "pool_size", "pool_seed", "fpr", "threshold" (None until calibrated), "fit"}``; ``fit``:
        the fit set's summary (:func:`~ami_lightning.detectors.mahalanobis.fit_summary`; None before :meth:`setup`)."""
        return {"layers": list(self.layers), "k": self.k, "pool_size": self.pool_size, "pool_seed": self.pool_seed,
                "fpr": self.fpr, "threshold": self.threshold, "fit": self.fit_summary()}
