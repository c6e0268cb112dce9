"""Adaptive attacks: attackers who know the detector (Carlini 2019, "Is AmI (Attacks Meet Interpretability)
Robust to Adversarial Examples?", arXiv 1902.02322), against any detector of :mod:`ami_lightning.detectors`.

Both attacks try ``k_targets`` target identities per face at once (one batch of B x K candidates), run targeted
L-infinity PGD from the clean face (``steps`` signed steps of ``rel_stepsize * eps`` pixel units, projected onto the
``eps`` ball and [0, 255]), and keep per face the best candidate: one that fools the plain model *and* is not flagged
by the detector (its own rule), else one that fools the plain model with the lowest detector score, else the
candidate with the lowest score. Targets: the given ones (K = 1), or, untargeted, the plain model's K likeliest
wrong identities on the clean face (the cheapest to reach).

* :class:`TransferFilter` (sets ``adaptive_transfer``, ``adaptive_transfer_fs``): Carlini's attack. PGD against the
  plain model only (eps 2.5 pixel units = 2.5/255 of the range, 100 steps); the detector only filters the
  candidates.
* :class:`DetectorGradient` (sets ``adaptive_gradient``, ``adaptive_gradient_fs``): PGD through the detector on the
  plain model's cross-entropy towards the target plus the detector's
  :meth:`~ami_lightning.detectors.base.Detector.evasion_loss` (AmI: the steered model's cross-entropy, so that both
  models agree on the target; Feature Squeezing: that of the squeezed inputs). Where the detector is not usefully
  differentiable the backward pass is straight-through (BPDA, Athalye et al. 2018): AmI's steering factors are
  treated as constants (``gradient="straight_through"``, default; ``"exact"`` differentiates through them), Feature
  Squeezing's squeezers as the identity.

Both need the detector: ``attack = DetectorGradient(detector)``; ``attack(model, images, labels)`` with ``model``
the detector's own plain model.

:class:`AdaptiveAttack` holds what every attack on a detector shares (the K targets per face in one batch, the choice
of the best candidate); its subclasses implement :meth:`AdaptiveAttack.optimise`, the targeted run on that batch:
here :class:`LossPGD` (:func:`linf_pgd` on one per-sample loss), in :mod:`ami_lightning.attacks.detector_pgd` the
selective and orthogonal PGD of Bryniarski et al. (ICLR 2022), which switch per sample between the plain model's
loss and the detector's score (sets ``selective_*``, ``orthogonal_*``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ami_lightning.attacks.base import Attack, AttackResult, TargetMode, uniform_noise
from ami_lightning.attacks.registry import register_attack
from ami_lightning.detectors.base import Detector

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Gradient = Literal["straight_through", "exact"]


def project_linf(
    x: torch.Tensor, images: torch.Tensor, eps: float, bounds: tuple[float, float] = (0.0, 255.0)
) -> torch.Tensor:
    """Pixels x (N, 3, H, W) projected onto the L-infinity ball of radius ``eps`` (pixel units) around ``images``
    (N, 3, H, W), then onto ``bounds``; a point already inside both is returned unchanged."""
    return torch.minimum(torch.maximum(x, images - eps), images + eps).clamp(*bounds)


def linf_pgd(
    loss_fn: LossFn,
    images: torch.Tensor,
    targets: torch.Tensor,
    eps: float,
    steps: int,
    stepsize: float,
    bounds: tuple[float, float] = (0.0, 255.0),
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Targeted L-infinity PGD from ``start`` (N, 3, H, W; default ``images``, no random start): ``steps`` times
    ``x <- x - stepsize * sign(grad)`` of ``loss_fn(x, targets)`` (per-sample losses (N,) to minimise), projected
    onto the ``eps`` ball around ``images`` (N, 3, H, W) and onto ``bounds``; ``eps`` and ``stepsize`` in pixel
    units. Returns the adversarial batch."""
    x = (images if start is None else start).clone()
    for _ in range(steps):
        leaf = x.requires_grad_()
        (grad,) = torch.autograd.grad(loss_fn(leaf, targets).sum(), leaf)
        x = project_linf(leaf.detach() - stepsize * grad.sign(), images, eps, bounds)
    return x


def random_start(
    repeated: torch.Tensor, seeds: torch.Tensor, k: int, eps: float, bounds: tuple[float, float]
) -> torch.Tensor:
    """Random starting points of the K candidates of each face: ``repeated`` (B*K, 3, H, W), face-major, plus noise
    uniform in [-eps, eps) (pixel units), clipped to ``bounds``; the K noises of face b come from its seed
    ``seeds[b]`` ((B,) int64) alone (:func:`~ami_lightning.attacks.base.uniform_noise`)."""
    noise = uniform_noise(seeds, (k, *repeated.shape[1:]), repeated.device).flatten(0, 1)
    return (repeated + eps * noise).clamp(*bounds)


def likeliest_targets(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) long: per sample, the ``k`` classes of highest logit (B, K) other than the label (B,), highest first;
    ``ValueError`` if fewer than ``k`` other classes exist."""
    if not 1 <= k < logits.shape[1]:
        raise ValueError(f"k_targets must lie in [1, {logits.shape[1] - 1}] for {logits.shape[1]} classes, got {k}")
    masked = logits.detach().float().scatter(1, labels[:, None], float("-inf"))
    return masked.topk(k, dim=1).indices


def choose_candidates(fools: torch.Tensor, flagged: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Per face, the index (B,) of the best of its K candidates, given (B, K) ``fools`` (the plain model predicts
    the target), ``flagged`` (the detector flags it) and the detector's ``score`` (finite): first those that fool and
    are not flagged, then those that fool, then the rest; within a group, the lowest score."""
    group = torch.where(fools & ~flagged, 0, torch.where(fools, 1, 2)).to(score.dtype)
    span = (score.max() - score.min()).clamp_min(1.0) + 1.0  # orders groups before scores
    return (group * span + score - score.min()).argmin(1)


@torch.no_grad()
def pick_best(
    detector: Detector, adversarial: torch.Tensor, candidates: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per face, the best of its K candidates (:func:`choose_candidates`): ``adversarial`` (B, K, 3, H, W) pixels
    made for the targets ``candidates`` (B, K). Returns the chosen pixels (B, 3, H, W), whether each fools the
    plain model (B,) bool, its target (B,) and its index among the K (B,) long."""
    batch, k = candidates.shape
    out = detector(adversarial.flatten(0, 1))
    fools = (out.logits.argmax(1) == candidates.flatten()).view(batch, k)
    best = choose_candidates(fools, out.flagged.view(batch, k), out.score.view(batch, k))
    rows = torch.arange(batch, device=candidates.device)
    return adversarial[rows, best], fools[rows, best], candidates[rows, best], best


class AdaptiveAttack(Attack):
    """Targeted attack over ``k_targets`` candidate targets per face against a ``detector``, keeping the best
    candidate (module docstring). Subclasses implement :meth:`optimise`, the run on the batch of candidates.

    ``eps`` (pixel units), ``steps``, ``rel_stepsize`` (step = ``rel_stepsize * eps``). :class:`AttackResult`
    ``targets`` holds the target each face ended with; ``success``: the plain model predicts it; ``iterations``: the
    steps the chosen candidate used (:meth:`optimise`). ``random_start``: each candidate starts at a uniform random
    point of the ``eps`` ball (clipped to the bounds) drawn from its face's seed (:func:`random_start`), as in
    Madry et al.'s PGD; off by default, as in the published attacks (then the attack is deterministic).
    """

    default_target: TargetMode = "untargeted"

    def __init__(
        self, detector: Detector, eps: float = 2.5, steps: int = 100, rel_stepsize: float = 0.1, k_targets: int = 8,
        random_start: bool = False,
    ) -> None:
        if eps <= 0 or rel_stepsize <= 0:
            raise ValueError(f"eps and rel_stepsize must be positive, got {eps}, {rel_stepsize}")
        if steps < 1 or k_targets < 1:
            raise ValueError(f"steps and k_targets must be >= 1, got {steps}, {k_targets}")
        if not isinstance(detector, Detector):
            raise TypeError(f"detector must be a Detector (ami_lightning.detectors), got {type(detector).__name__}")
        self.detector, self.eps, self.steps, self.k_targets = detector, eps, steps, k_targets
        if problems := AdaptiveAttack.check_params({"random_start": random_start}):
            raise ValueError("; ".join(problems))
        self.stepsize = rel_stepsize * eps
        self.random_start = random_start

    @staticmethod
    def check_params(params: dict[str, Any]) -> list[str]:
        """The problems of the parameters ``params`` (as a config gives them), one line each naming the key: here
        ``random_start``, true or false. Empty when they are fine."""
        start = params.get("random_start", False)
        return [] if isinstance(start, bool) else [f"random_start={start!r}: expected true or false"]

    @abstractmethod
    def optimise(
        self, images: torch.Tensor, targets: torch.Tensor, start: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The targeted attack on pixels ``images`` (N, 3, H, W) towards ``targets`` (N,) long, from ``start``
        (N, 3, H, W), within ``eps`` (pixel units) of the images and in :attr:`bounds`; gradients enabled. Returns the
        adversarial pixels (N, 3, H, W) and the steps each sample used (N,) long."""

    def run(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None,
        seeds: torch.Tensor,
    ) -> AttackResult:
        if model is not self.detector.model:
            raise ValueError("the attacked model must be the detector's own plain model (detector.model)")
        if targets is None:
            with torch.no_grad():
                candidates = likeliest_targets(model(images), labels, self.k_targets)  # (B, K)
        else:
            candidates = targets[:, None]
        batch, k = candidates.shape
        repeated = images.repeat_interleave(k, 0)  # (B*K, 3, H, W), face-major
        start = random_start(repeated, seeds, k, self.eps, self.bounds) if self.random_start else repeated
        with torch.enable_grad():
            adversarial, iterations = self.optimise(repeated, candidates.flatten(), start)
        chosen, fools, chosen_targets, best = pick_best(self.detector, adversarial.view(batch, k, *images.shape[1:]),
                                                        candidates)
        used = iterations.view(batch, k).gather(1, best[:, None])[:, 0]
        return AttackResult.build(chosen, images, fools, used, targets=chosen_targets)


class LossPGD(AdaptiveAttack):
    """:meth:`optimise` is :func:`linf_pgd` on a per-sample :meth:`loss`, all ``steps`` steps for every sample."""

    @abstractmethod
    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-sample loss (N,) of pixels x (N, 3, H, W) towards targets (N,); lower is closer to the goal."""

    def optimise(
        self, images: torch.Tensor, targets: torch.Tensor, start: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        adversarial = linf_pgd(self.loss, images, targets, self.eps, self.steps, self.stepsize, self.bounds, start)
        return adversarial, torch.full_like(targets, self.steps)


@register_attack("adaptive_transfer")
class TransferFilter(LossPGD):
    """Carlini's transfer-and-filter attack: PGD on the plain model's cross-entropy towards each candidate target;
    the detector only picks among the results (defaults: eps 2.5 pixel units, 100 steps, 8 targets)."""

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.detector.model(x), targets, reduction="none")


@register_attack("adaptive_gradient")
class DetectorGradient(LossPGD):
    """PGD through the detector: the plain model's cross-entropy towards the target plus the detector's
    :meth:`~ami_lightning.detectors.base.Detector.evasion_loss`, straight-through where the detector has no useful
    gradient (``gradient="straight_through"``, default) or differentiated exactly (``"exact"``, where the detector
    allows it)."""

    def __init__(self, detector: Detector, gradient: Gradient = "straight_through", **kwargs: Any) -> None:
        if gradient not in ("straight_through", "exact"):
            raise ValueError(f"gradient must be 'straight_through' or 'exact', got {gradient!r}")
        super().__init__(detector, **kwargs)
        self.exact = gradient == "exact"

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        plain = F.cross_entropy(self.detector.model(x), targets, reduction="none")
        return plain + self.detector.evasion_loss(x, targets, exact=self.exact)
