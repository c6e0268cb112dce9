"""Choosing AmI's steering parameters for a model: the false-positive rate over a grid, closest to a target."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ami_lightning.detectors.ami import AmIDetector
from ami_lightning.detectors.base import Detector
from ami_lightning.detectors.steering import SteeringParams
from ami_lightning.evaluation.rates import Rate, flag_rate
from ami_lightning.witnesses import WitnessSet


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits (N, K) on the CPU of ``model`` over pixels x (N, 3, H, W), in batches on ``device``."""
    return torch.cat([model(chunk.to(device).float()).cpu() for chunk in x.split(batch_size)])


@torch.no_grad()
def benign_fpr(
    detector: Detector, x: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, batch_size: int,
    device: torch.device
) -> Rate:
    """The detector's FPR on benign pixels x (N, 3, H, W) with true labels (N,), given the plain model's logits
    (N, K) (:func:`logits_of`, computed once for every detector), in batches on ``device``."""
    flagged = torch.cat([detector(chunk.to(device).float(), chunk_logits.to(device)).flagged.cpu()
                         for chunk, chunk_logits in zip(x.split(batch_size), logits.split(batch_size), strict=True)])
    return flag_rate(flagged, logits.argmax(1), labels, adversarial=False)


def steering_grid(
    weaken: Sequence[float], strengthen0: Sequence[float], strengthen1: Sequence[float]
) -> list[SteeringParams]:
    """The Cartesian product of the three parameter lists."""
    return [SteeringParams(w, (s0, s1)) for w, s0, s1 in itertools.product(weaken, strengthen0, strengthen1)]


@dataclass(frozen=True)
class Calibration:
    """Benign FPR at each grid point, and the chosen point (closest to ``target``; ties: strongest steering)."""

    target: float
    points: tuple[tuple[SteeringParams, Rate], ...]

    @property
    def best(self) -> tuple[SteeringParams, Rate]:
        return min(self.points, key=lambda p: (abs(p[1].value - self.target), p[0].weaken))


def calibrate(
    model: nn.Module,
    witnesses: WitnessSet,
    x: torch.Tensor,
    labels: torch.Tensor,
    grid: Iterable[SteeringParams],
    target: float,
    batch_size: int = 64,
    crop_layers: Sequence[str] = ("pool3",),
    progress: Callable[[list[SteeringParams]], Iterable[SteeringParams]] = iter,
) -> Calibration:
    """FPR on benign pixels x (N, 3, H, W) with true labels (N,) at each grid point; the original model runs once."""
    device = next(model.parameters()).device
    logits = logits_of(model, x, batch_size, device)
    points = []
    for params in progress(list(grid)):
        detector = AmIDetector(model, witnesses, params.weaken, params.strengthen, crop_layers)
        points.append((params, benign_fpr(detector, x, logits, labels, batch_size, device)))
    return Calibration(target, tuple(points))
