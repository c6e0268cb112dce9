"""A network together with its preprocessing, so that callers (attacks, AmI) work in pixel space."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

PIXEL_BOUNDS: tuple[float, float] = (0.0, 255.0)


class Normalize(nn.Module):
    """(x - mean) / std per channel; x: (B, 3, H, W) RGB pixels in [0, 255]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PixelModel(nn.Module):
    """``net(preprocess(x))`` for x of shape (B, 3, H, W), RGB, float pixels in ``bounds`` = [0, 255].

    ``hook_layers`` names the modules of ``net`` whose outputs AmI may observe and steer (ReLU and pool outputs),
    in forward order. Preprocessing is differentiable, so gradients reach the pixels. ``input_size``: the side in
    pixels of the square input the network needs (None: any size works), used to probe its layers
    (:func:`ami_lightning.models.layers.layer_channels`).
    """

    bounds: tuple[float, float] = PIXEL_BOUNDS

    def __init__(
        self, net: nn.Module, preprocess: nn.Module, hook_layers: Sequence[str], input_size: int | None = None
    ) -> None:
        super().__init__()
        self.net = net
        self.preprocess = preprocess
        self.hook_layers: tuple[str, ...] = tuple(hook_layers)
        self.input_size = input_size
        for name in self.hook_layers:
            net.get_submodule(name)  # fail early on a misspelt layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(x))


@torch.no_grad()
def kaiming_init_(net: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise conv and linear layers (He normal, zero bias) so that a random-weight network keeps activation
    scale through depth and gives input-dependent predictions (PyTorch's default init collapses deep nets to one
    class). Used for tests and benchmarks without trained weights."""
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            if module.bias is not None:
                module.bias.zero_()
    return net
