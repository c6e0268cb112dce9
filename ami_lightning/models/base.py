"""A network together with its preprocessing, so that callers (attacks, AmI) work in pixel space."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import torch
from torch import nn
from torchvision.transforms.functional import InterpolationMode, resize

PIXEL_BOUNDS: tuple[float, float] = (0.0, 255.0)
M = TypeVar("M", bound=nn.Module)
ChannelOrder = Literal["rgb", "bgr"]
CHANNEL_ORDERS: tuple[str, ...] = get_args(ChannelOrder)


class Normalize(nn.Module):
    """(x - mean) / std per channel; x: (B, 3, H, W) RGB pixels in [0, 255]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def preprocessing_problems(
    input_size: Any = None, channel_order: Any = "rgb", pixel_scale: Any = 1.0, mean: Any = (0.0, 0.0, 0.0),
    std: Any = (1.0, 1.0, 1.0),
) -> list[str]:
    """One line ``key=value: expected ...`` per bad preprocessing value (:class:`Preprocess`'s parameters); [] if
    all are good. Pure: the model configs are checked with it before anything is built."""
    problems = []
    size = [input_size] if isinstance(input_size, int) and not isinstance(input_size, bool) else input_size
    if size is not None and not (isinstance(size, Sequence) and len(size) in (1, 2)
                                 and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        problems.append(f"input_size={input_size!r}: expected null (keep the size), a side in pixels or [H, W]")
    if channel_order not in CHANNEL_ORDERS:
        problems.append(f"channel_order={channel_order!r}: expected one of {', '.join(CHANNEL_ORDERS)}")
    if not (_is_number(pixel_scale) and pixel_scale > 0):
        problems.append(f"pixel_scale={pixel_scale!r}: expected a number > 0 (1/255 maps pixels to [0, 1])")
    for key, values, positive in (("mean", mean, False), ("std", std, True)):
        if not (isinstance(values, Sequence) and len(values) == 3
                and all(_is_number(v) and (v > 0 or not positive) for v in values)):
            problems.append(f"{key}={values!r}: expected three numbers{' > 0' if positive else ''}, one per channel "
                            "of the network's input, in scaled units")
    return problems


class Preprocess(nn.Module):
    """Pixels (B, 3, H, W), RGB in [0, 255] -> a network's input: resized to ``input_size`` (a side, or (H, W))
    when given and different (bilinear, antialiased), channels in ``channel_order`` (``bgr``: reversed), multiplied
    by ``pixel_scale``, then ``(x - mean) / std`` per channel (mean and std in scaled units). Differentiable.

    ValueError listing every bad value (:func:`preprocessing_problems`).
    """

    def __init__(
        self,
        input_size: int | Sequence[int] | None = None,
        channel_order: ChannelOrder = "rgb",
        pixel_scale: float = 1.0,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        problems = preprocessing_problems(input_size, channel_order, pixel_scale, mean, std)
        if problems:
            raise ValueError("bad preprocessing: " + "; ".join(problems))
        sides = [input_size] if isinstance(input_size, int) else input_size
        self.size: tuple[int, int] | None = None if sides is None else (sides[0], sides[-1])
        self.channel_order = channel_order
        self.pixel_scale = float(pixel_scale)
        self.normalize = Normalize(mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = resize(x, list(self.size), interpolation=InterpolationMode.BILINEAR, antialias=True)
        if self.channel_order == "bgr":
            x = x.flip(1)
        if self.pixel_scale != 1.0:
            x = x * self.pixel_scale
        return self.normalize(x)


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


def load_state_dict_file(net: M, path: str | Path, what: str, expected: str = "a state dict file") -> M:
    """Load the state dict saved at ``path`` (``torch.load(..., weights_only=True)``: tensors only, no pickled code)
    into ``net`` (``what`` names it in messages; ``expected``: what the file should be) and return ``net``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not a readable state dict
    (truncated, pickled object, wrong type), for missing or unexpected keys and for wrong tensor shapes; each message
    names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found: {path} (expected {expected})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError... for bad files
        raise ValueError(f"{path} is not a readable PyTorch state dict (truncated or wrong format): {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (got {type(state).__name__})")
    wanted = net.state_dict()
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    if missing or unexpected:
        raise ValueError(f"{path}: state dict keys do not match {what}: missing {missing}, unexpected {unexpected}")
    wrong = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in wanted.items()
             if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{path}: wrong tensor shapes for {what}: {'; '.join(wrong)}")
    net.load_state_dict(state)
    return net
