"""Witness extraction (AmI step 2), batched: all mutated images of an attribute go through the model in a few
forward passes, and each hooked layer reduces its output to per-channel scores inside the hook."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ami_lightning.detectors.steering import channel_sums
from ami_lightning.models.layers import forward_hooks
from ami_lightning.witnesses.witness_set import WitnessSet


def _as_batch(images: torch.Tensor) -> torch.Tensor:
    images = images.float()
    return images.unsqueeze(0) if images.dim() == 3 else images


@torch.no_grad()
def channel_scores(
    model: nn.Module, layers: Sequence[str], base: torch.Tensor, mutated: torch.Tensor, batch_size: int = 16
) -> dict[str, torch.Tensor]:
    """Per layer, the (N, C) scores ``sum over space |activation(mutated[n]) - activation(base)|``.

    base: (3, H, W) pixels in [0, 255]; mutated: (N, 3, H, W). For a 1-D layer the score is the absolute difference.
    """
    device = next(model.parameters()).device
    base_out: dict[str, torch.Tensor] = {}
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def keep_base(name: str) -> Callable[..., None]:
        return lambda _m, _i, out: base_out.__setitem__(name, out.detach().clone())

    def score(name: str) -> Callable[..., None]:
        return lambda _m, _i, out: scores[name].append(channel_sums((out - base_out[name]).abs()).cpu())

    with forward_hooks(model, {name: keep_base(name) for name in layers}):
        model(_as_batch(base).to(device))
    mutated = _as_batch(mutated)
    with forward_hooks(model, {name: score(name) for name in layers}):
        for chunk in mutated.split(batch_size):
            model(chunk.to(device))
    return {name: torch.cat(parts) for name, parts in scores.items()}


def select_witnesses(
    substitution_scores: torch.Tensor, preservation_scores: torch.Tensor, caffe: bool = False
) -> torch.Tensor:
    """Witness channels of one layer: (C,) bool mask.

    Scores: (Ns, C) and (Np, C). A channel is kept if, for every substitution, its score is strictly above that
    image's median over channels, and for every preservation strictly below it (``<=`` with ``caffe=True``, as in the
    Caffe notebook). The median is NumPy's (mean of the two middle values for an even count).
    """
    masks = []
    if len(substitution_scores):
        median = substitution_scores.quantile(0.5, dim=1, keepdim=True, interpolation="midpoint")
        masks.append((substitution_scores > median).all(0))
    if len(preservation_scores):
        median = preservation_scores.quantile(0.5, dim=1, keepdim=True, interpolation="midpoint")
        below = preservation_scores <= median if caffe else preservation_scores < median
        masks.append(below.all(0))
    if not masks:
        raise ValueError("witness extraction needs at least one substitution or preservation image")
    return torch.stack(masks).all(0)


def extract_witnesses(
    model: nn.Module,
    layers: Sequence[str],
    base: torch.Tensor,
    substitution: torch.Tensor,
    preservation: torch.Tensor,
    caffe: bool = False,
    batch_size: int = 16,
) -> dict[str, tuple[int, ...]]:
    """Witnesses of one attribute: layer -> sorted channel indices.

    base: (3, H, W); substitution: (Ns, 3, H, W) (base face with other faces' attribute); preservation:
    (Np, 3, H, W) (other faces with the base face's attribute); all RGB pixels in [0, 255].
    """
    mutated = torch.cat([_as_batch(substitution), _as_batch(preservation)])
    scores = channel_scores(model, layers, base, mutated, batch_size)
    n_sub = len(_as_batch(substitution))
    return {
        name: tuple(select_witnesses(s[:n_sub], s[n_sub:], caffe).nonzero().flatten().tolist())
        for name, s in scores.items()
    }


def extract_witness_set(
    model: nn.Module,
    layers: Sequence[str],
    base: torch.Tensor,
    mutations: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    caffe: bool = False,
    batch_size: int = 16,
    progress: Callable[[Iterable[str]], Iterable[str]] = iter,
) -> WitnessSet:
    """Witnesses of every attribute; ``mutations[attribute] = (substitution, preservation)`` batches."""
    found = {
        attribute: extract_witnesses(model, layers, base, *mutations[attribute], caffe=caffe, batch_size=batch_size)
        for attribute in progress(mutations)
    }
    return WitnessSet.from_mapping(found, layers)
