"""The published AmI rates as pure functions of top-1 predictions (all tensors (N,) long unless stated).

* false-positive rate: over benign images the original model classifies correctly, the fraction that AmI flags;
* detection rate: over adversarial images the original model misclassifies (the attack worked), the fraction flagged.
A sample is flagged when the original and the steered model disagree on the top-1 identity.
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
    original_pred: torch.Tensor, steered_pred: torch.Tensor, labels: torch.Tensor, adversarial: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(flagged, eligible) as 0-d long tensors on the inputs' device (no host sync)."""
    eligible = eligible_mask(original_pred, labels, adversarial)
    return (eligible & (steered_pred != original_pred)).sum(), eligible.sum()


def flag_rate(
    original_pred: torch.Tensor, steered_pred: torch.Tensor, labels: torch.Tensor, adversarial: bool
) -> Rate:
    """FPR (``adversarial=False``) or detection rate (``adversarial=True``) with the published eligibility rule."""
    flagged, eligible = flag_counts(original_pred, steered_pred, labels, adversarial)
    return Rate(int(flagged), int(eligible))
