"""The rule shared by the detectors whose verdict is a threshold on their score (Feature Squeezing, Mahalanobis,
LID, NIC): flagged when the score is above the threshold that gives ``fpr`` false positives on the benign images the
model classifies correctly, calibrated on the evaluated benign set (as Feature Squeezing's paper does)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from ami_lightning.detectors.base import Detector
from ami_lightning.evaluation.thresholds import above, threshold_at_fpr


def fpr_problems(params: Mapping[str, Any]) -> list[str]:
    """``["fpr=<value>: expected ..."]`` when ``params`` has an ``fpr`` that is not a fraction in (0, 1), else []."""
    if "fpr" not in params:
        return []
    fpr = params["fpr"]
    number = isinstance(fpr, int | float | np.integer | np.floating) and not isinstance(fpr, bool)
    if not number or not 0.0 < float(fpr) < 1.0:  # also rejects nan
        return [f"fpr={fpr!r}: expected a fraction in (0, 1), e.g. 0.05 for 5 % benign FPR"]
    return []


class ThresholdDetector(Detector):
    """A detector flagged by ``score > threshold``, the threshold set by :meth:`calibrate` at benign FPR ``fpr``.
    Subclasses implement :meth:`~Detector.score` and set ``self.fpr`` (:meth:`__init__` does)."""

    needs_calibration: ClassVar[bool] = True

    def __init__(self, model: torch.nn.Module, fpr: float = 0.05) -> None:
        super().__init__(model)
        self.fpr = float(fpr)
        self.threshold: float | None = None

    def evaluate(self, x: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(score (B,), flagged (B,) bool): flagged when the score is above the calibrated threshold (compared in
        float64). RuntimeError before :meth:`calibrate`."""
        if self.threshold is None:
            raise self._not_calibrated()
        score = self.score(x, logits)
        return score, self.flags_from_scores(score)

    def flags_from_scores(self, score: torch.Tensor) -> torch.Tensor:
        """(B,) bool: ``score`` (B,) above the calibrated threshold (compared in float64). RuntimeError before
        :meth:`calibrate`."""
        if self.threshold is None:
            raise self._not_calibrated()
        return above(score, self.threshold)

    def _not_calibrated(self) -> RuntimeError:
        return RuntimeError(f"{self.name} is not calibrated: its rule needs a threshold at {self.fpr:g} benign FPR; "
                            "call calibrate(benign_scores) first")

    def calibrate(self, benign_scores: torch.Tensor) -> None:
        """Set the threshold so that at most ``fpr`` of ``benign_scores`` (N,) (the scores of the benign images the
        model gets right) are above it (:func:`~ami_lightning.evaluation.thresholds.threshold_at_fpr`). ValueError
        for no scores or a nan score."""
        scores = torch.as_tensor(benign_scores).detach()
        if scores.numel() == 0:
            raise ValueError(
                f"{self.name}: cannot calibrate on an empty set of benign scores: the model gets no benign image "
                "right (top-1 accuracy 0 on the benign set), or the set has none: nothing to calibrate on. Check "
                "that the model's weights and identity names or gallery match the benign set (model.weights, "
                "model.names, model.faces_dir, model.path) and data.benign"
            )
        self.threshold = threshold_at_fpr(scores, self.fpr)

    def score_identity(self) -> Any:
        """:meth:`~Detector.identity` without ``fpr`` and ``threshold`` (the scores depend on neither)."""
        identity = self.identity()
        if isinstance(identity, dict):
            return {k: v for k, v in identity.items() if k not in ("fpr", "threshold")}
        return identity
