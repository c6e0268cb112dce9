"""The shared shape of every attack (in the spirit of foolbox 3): explicit pixel bounds, a uniform, batched
``__call__(model, images, labels, targets=None) -> AttackResult``, and per-sample distortion measures.

Images are float pixels (B, 3, H, W) in ``bounds`` = [0, 255] (RGB); models are any ``nn.Module`` mapping such
pixels to logits (B, K) (the model wrappers do their own preprocessing).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ami_lightning.evaluation.success import attack_success

TargetMode = Literal["first", "next", "untargeted"]
TARGET_MODES: tuple[str, ...] = ("first", "next", "untargeted")


def make_targets(labels: torch.Tensor, mode: str, num_classes: int) -> torch.Tensor | None:
    """Target classes (B,) for ``mode``: ``first`` = class 0 (class 1 where the true label is 0), ``next`` =
    (label + 1) mod K; ``untargeted`` gives None."""
    if mode not in TARGET_MODES:
        raise ValueError(f"unknown target mode {mode!r}; expected one of {TARGET_MODES}")
    if mode == "untargeted":
        return None
    if mode == "first":
        return (labels == 0).long()
    return (labels + 1) % num_classes


def distortions(adversarial: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (L0, L2, Linf) of ``adversarial - images`` (B, 3, H, W), in pixel units (0-255); L0 counts pixel
    positions (H x W) where any channel changed."""
    delta = (adversarial - images).flatten(2)  # (B, 3, H*W)
    l0 = (delta.abs().amax(1) > 0).sum(1)
    l2 = delta.flatten(1).norm(dim=1)
    linf = delta.flatten(1).abs().amax(1)
    return l0, l2, linf


@dataclass
class AttackResult:
    """Adversarial batch (B, 3, H, W) in bounds, per-sample success (B,) bool, distortions (B,) in pixel units
    (L0 as a count of pixel positions), the iterations each sample used (B,) long, and, for attacks that choose
    their own targets (:mod:`ami_lightning.attacks.adaptive`), the target (B,) long each sample ended with (else
    None)."""

    adversarial: torch.Tensor
    success: torch.Tensor
    l0: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    iterations: torch.Tensor
    targets: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        adversarial: torch.Tensor,
        images: torch.Tensor,
        success: torch.Tensor,
        iterations: torch.Tensor,
        targets: torch.Tensor | None = None,
    ) -> AttackResult:
        return cls(adversarial, success, *distortions(adversarial, images), iterations, targets)


def is_success(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """(B,) bool: top-1 of ``logits`` (B, K) equals the target (targeted) or differs from the label (untargeted,
    ``targets`` None): the rule of :func:`~ami_lightning.evaluation.success.attack_success`."""
    untargeted = torch.full_like(labels, -1)
    return attack_success(logits.argmax(1), labels, untargeted if targets is None else targets)


class Attack(ABC):
    """Base class: subclasses implement :meth:`run`; ``__call__`` checks inputs and puts the model in eval mode."""

    bounds: tuple[float, float] = (0.0, 255.0)
    default_target: TargetMode = "next"

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None
    ) -> AttackResult:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        low, high = self.bounds
        if images.min() < low or images.max() > high:
            raise ValueError(f"images must lie in the bounds [{low}, {high}] (pixel units)")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
        model.eval()
        return self.run(model, images.float(), labels, targets)

    @abstractmethod
    def run(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None
    ) -> AttackResult:
        """The attack proper; images float (B, 3, H, W) in bounds; targets (B,) or None (untargeted)."""
