"""Attribute steering of one layer's output (pure tensor functions, batched over samples).

For a layer output ``x`` of shape (B, C, H, W) (or (B, C) for fully connected layers) and the concatenation ``W`` of
the attributes' witness lists at that layer (a channel listed by k attributes appears k times):

* ``v[b, c]`` is the spatial sum of channel c (the value itself for 1-D layers); ``mean``, ``std`` (population) and
  ``min`` of ``v[b, W]`` are taken per sample, duplicates included.
* a channel in no list is multiplied by ``exp(-d / weaken)`` with ``d = max(0, (v - mean) / std)``;
* a channel in k lists is multiplied by ``(s0 - exp(-d / s1)) ** k`` with ``d = |v - min| / std``;
* where ``std == 0``, ``d = 0`` (weaken factor 1, strengthen factor ``s0 - 1`` per list).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SteeringParams:
    """AmI's steering parameters: ``weaken`` (w), ``strengthen`` = (s0, s1); both dimensionless."""

    weaken: float = 60.0
    strengthen: tuple[float, float] = (2.15, 50.0)

    def __post_init__(self) -> None:
        if self.weaken <= 0 or self.strengthen[1] <= 0:
            raise ValueError(f"weaken and strengthen[1] must be positive, got {self.weaken}, {self.strengthen}")


PRESETS: dict[str, SteeringParams] = {
    "published": SteeringParams(60.0, (2.15, 50.0)),  # the PyTorch AmI release
    "caffe": SteeringParams(100.0, (2.15, 60.0)),  # the original Caffe AmI
}


def channel_sums(x: torch.Tensor) -> torch.Tensor:
    """Per-sample channel activation sums: (B, C, ...) -> (B, C)."""
    return x.flatten(2).sum(-1) if x.dim() > 2 else x


def steering_factors(v: torch.Tensor, witnesses: torch.Tensor, params: SteeringParams) -> torch.Tensor:
    """Multiplicative factor per sample and channel.

    v: (B, C) channel sums; witnesses: (W,) long, the concatenated witness lists (non-empty). Returns (B, C).
    """
    vw = v.index_select(1, witnesses)
    std, mean = torch.std_mean(vw, dim=1, correction=0, keepdim=True)
    low, high = vw.amin(1, keepdim=True), vw.amax(1, keepdim=True)  # aminmax has no derivative in torch < 2.12
    # std == 0 exactly when all witness sums are equal; floating-point std of equal values can be a tiny positive
    # number (the mean rounds), which would turn d into noise-sized denominators, so test equality instead: 1 / std
    # where the sums differ, 0 (d = 0) where they do not. Few, fused-friendly ops: each is a kernel launch per layer.
    inv_std = torch.where(high > low, std.reciprocal(), 0.0)
    d_weak = ((v - mean) * inv_std).clamp_min(0)
    d_strong = (v - low) * inv_std  # >= 0 on the witnesses, the only channels it is used for
    # index_add_ rather than bincount, which waits for the device to size its output
    multiplicity = v.new_zeros(v.shape[1]).index_add_(0, witnesses, torch.ones_like(witnesses, dtype=v.dtype))
    s0, s1 = params.strengthen
    weak = torch.exp(d_weak * (-1.0 / params.weaken))
    strong = (s0 - torch.exp(d_strong * (-1.0 / s1))).pow(multiplicity)
    return torch.where(multiplicity > 0, strong, weak)


@functools.lru_cache(maxsize=64)
def bilinear_matrix(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n_out, n_in) matrix of 1-D bilinear resizing with ``align_corners=False`` (PyTorch's rule: source
    coordinate ``max(0, (i + 0.5) * n_in / n_out - 0.5)``, its two neighbours weighted linearly, the last index
    repeated at the edge), so that ``A @ v`` resizes a vector v of length n_in."""
    source = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    low = source.floor().long().clamp_max(n_in - 1)
    high = (low + 1).clamp_max(n_in - 1)
    frac = source - low
    matrix = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    matrix.index_put_((rows, low), 1 - frac, accumulate=True)
    matrix.index_put_((rows, high), frac, accumulate=True)
    return matrix.to(device=device, dtype=dtype)


def crop_resize(x: torch.Tensor, border: int = 2) -> torch.Tensor:
    """Crop ``border`` pixels from every side of (B, C, H, W) and resize back bilinearly (align_corners=False).

    Equal to ``F.interpolate(crop, size=(H, W), mode="bilinear", align_corners=False)`` up to float rounding, as
    two small matrix products (bilinear resizing is separable), which GPUs run far faster than PyTorch's bilinear
    kernel on many channels of a small image.
    """
    h, w = x.shape[-2:]
    crop = x[..., border : h - border, border : w - border]
    rows = bilinear_matrix(h - 2 * border, h, x.device, x.dtype)
    columns = bilinear_matrix(w - 2 * border, w, x.device, x.dtype)
    return rows @ crop @ columns.T


def steer(
    x: torch.Tensor, witnesses: torch.Tensor, params: SteeringParams, crop: int = 0, straight_through: bool = False
) -> torch.Tensor:
    """Steer one layer output (B, C, ...) given the concatenated witness indices (W,); optionally crop first.

    ``straight_through``: the same output, but gradients treat the factors as constants (``x * f`` with ``f``
    detached), bypassing the statistics (mean, std, min of the witness sums) whose gradients vanish or explode.
    """
    if crop:
        x = crop_resize(x, crop)
    factors = steering_factors(channel_sums(x), witnesses, params)
    if straight_through:
        factors = factors.detach()
    return x * factors.view(*factors.shape, *([1] * (x.dim() - 2)))


def detection_score(original_logits: torch.Tensor, steered_logits: torch.Tensor) -> torch.Tensor:
    """Continuous AmI score (B,): ``-log p`` of the original model's top-1 class under the steered model (nats).

    >= 0; larger means more suspicious (the steered model abandons the original's answer). In the log domain so
    that confident disagreements do not all saturate at one value (ties would make ROC curves depend on float
    noise). Logits: (B, K).
    """
    top1 = original_logits.argmax(1, keepdim=True)
    return -steered_logits.log_softmax(1).gather(1, top1).squeeze(1)
