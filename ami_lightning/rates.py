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


def flag_rate(
    original_pred: torch.Tensor, steered_pred: torch.Tensor, labels: torch.Tensor, adversarial: bool
) -> Rate:
    """FPR (``adversarial=False``) or detection rate (``adversarial=True``) with the published eligibility rule."""
    correct = original_pred == labels
    eligible = ~correct if adversarial else correct
    flagged = eligible & (steered_pred != original_pred)
    return Rate(int(flagged.sum()), int(eligible.sum()))
