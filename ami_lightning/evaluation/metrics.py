"""torchmetrics wrappers of the published rates (stateful, DDP-safe: states are sums or concatenations)."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from ami_lightning.evaluation.rates import flag_counts


class FlagRate(Metric):
    """Benign false-positive rate (``adversarial=False``) or detection rate (``adversarial=True``).

    ``update(flagged, original_pred, labels)`` with the detector's (N,) bool flags, the (N,) long top-1
    predictions of the plain model and the true labels; ``compute()``
    returns ``{"rate": flagged / eligible (nan when nothing was eligible), "flagged": ..., "eligible": ...}`` as 0-d
    tensors, summed over processes.
    """

    full_state_update = False
    higher_is_better = None
    flagged: torch.Tensor
    eligible: torch.Tensor

    def __init__(self, adversarial: bool, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.adversarial = adversarial
        self.add_state("flagged", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("eligible", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, flagged: torch.Tensor, original_pred: torch.Tensor, labels: torch.Tensor) -> None:
        count, eligible = flag_counts(flagged, original_pred, labels, self.adversarial)
        self.flagged += count
        self.eligible += eligible

    def compute(self) -> dict[str, torch.Tensor]:
        rate = self.flagged.float() / self.eligible.float() if self.eligible > 0 else torch.tensor(float("nan"))
        return {"rate": rate, "flagged": self.flagged, "eligible": self.eligible}
