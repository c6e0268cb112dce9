"""Choosing AmI's steering parameters for a model: the false-positive rate over a grid, closest to a target."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ami_lightning.detectors.ami import AmIDetector
from ami_lightning.detectors.steering import SteeringParams
from ami_lightning.evaluation.rates import Rate, flag_rate
from ami_lightning.witnesses import WitnessSet


@torch.no_grad()
def predictions(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Top-1 predictions (N,) on the CPU of a logits function over pixels x (N, 3, H, W), in batches on ``device``."""
    return torch.cat([fn(chunk.to(device).float()).argmax(1).cpu() for chunk in x.split(batch_size)])


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
    original = predictions(model, x, batch_size, device)
    points = []
    for params in progress(list(grid)):
        detector = AmIDetector(model, witnesses, params.weaken, params.strengthen, crop_layers)
        steered = predictions(detector.steered_logits, x, batch_size, device)
        points.append((params, flag_rate(original, steered, labels, adversarial=False)))
    return Calibration(target, tuple(points))
