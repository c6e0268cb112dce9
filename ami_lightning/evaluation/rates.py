"""The published rates of a detector as pure functions of its flags and the top-1 predictions (tensors (N,)).

* false-positive rate: over benign images the original model classifies correctly, the fraction the detector flags;
* detection rate: over adversarial images the original model misclassifies (the attack worked), the fraction flagged.
Which samples a detector flags is its own rule (:attr:`ami_lightning.detectors.base.Detector.rule`); which samples a
rate counts is the rule of :func:`eligible_mask`, the same for every detector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rate:
    """``flagged`` of ``eligible`` samples; ``value`` is their ratio (nan when nothing is eligible)."""

    flagged: int
    eligible: int

    @property
    def value(self) -> float:
        return self.flagged / self.eligible if self.eligible else float("nan")

    def __str__(self) -> str:
        return f"{100 * self.value:.2f} % ({self.flagged}/{self.eligible})"


def eligible_mask(original_pred: torch.Tensor, labels: torch.Tensor, adversarial: bool) -> torch.Tensor:
    """(N,) bool: samples a rate counts: benign ones the model gets right, adversarial ones that fool it."""
    correct = original_pred == labels
    return ~correct if adversarial else correct


def flag_counts(
    flagged: torch.Tensor, original_pred: torch.Tensor, labels: torch.Tensor, adversarial: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(flagged eligible, eligible) as 0-d long tensors on the inputs' device (no host sync); ``flagged`` (N,) bool
    by the detector's rule, ``original_pred`` (N,) the plain model's top-1, ``labels`` (N,) the true identities."""
    eligible = eligible_mask(original_pred, labels, adversarial)
    return (eligible & flagged).sum(), eligible.sum()


def flag_rate(flagged: torch.Tensor, original_pred: torch.Tensor, labels: torch.Tensor, adversarial: bool) -> Rate:
    """FPR (``adversarial=False``) or detection rate (``adversarial=True``) with the published eligibility rule."""
    count, eligible = flag_counts(flagged, original_pred, labels, adversarial)
    return Rate(int(count), int(eligible))
