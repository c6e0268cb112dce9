"""Looking up hookable layers by the short names that witness files use (``relu4_3``, ``pool3``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def hook_layer_names(model: nn.Module) -> tuple[str, ...]:
    """The hookable layer names of ``model``: those of the first module in its tree with a ``hook_layers`` tuple."""
    for module in model.modules():
        names = getattr(module, "hook_layers", None)
        if isinstance(names, tuple):
            return names
    raise ValueError(
        f"{type(model).__name__} declares no hook_layers; wrap its network in ami_lightning.models.PixelModel"
    )


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule whose qualified name is ``name`` or ends with ``.name``; of several, the one with the shortest
    qualified name if it is the only one that short.

    Wrappers (preprocessing, galleries) add prefixes such as ``net.``; witness files name layers without them. A
    name may also end a deeper one: torchvision's ResNet has ``relu`` (the stem's) and ``layer1.0.relu``, and
    ``relu`` is the stem's (``net.relu``, not ``net.layer1.0.relu``).
    """
    hits = {qual: m for qual, m in model.named_modules() if qual == name or qual.endswith("." + name)}
    if not hits:
        raise KeyError(f"layer {name!r} not found in {type(model).__name__}")
    shortest = min(map(len, hits))
    closest = {id(m): m for qual, m in hits.items() if len(qual) == shortest}
    if len(closest) > 1:
        raise KeyError(f"layer name {name!r} is ambiguous in {type(model).__name__} ({len(closest)} modules)")
    return next(iter(closest.values()))


@contextmanager
def forward_hooks(model: nn.Module, hooks: Mapping[str, Callable[..., Any]]) -> Iterator[None]:
    """Register ``hooks`` (layer name -> forward hook) for the duration of the ``with`` block, then remove them."""
    handles = [find_layer(model, name).register_forward_hook(hook) for name, hook in hooks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


PROBE_SIZE = 224  # px: the side of the probe image for models that accept any input size


def input_size(model: nn.Module) -> int:
    """The square input side (px) the model needs: the first ``input_size`` set in its module tree, else
    :data:`PROBE_SIZE`."""
    for module in model.modules():
        size = getattr(module, "input_size", None)
        if isinstance(size, int):
            return size
    return PROBE_SIZE


def probe(model: nn.Module, size: int | None = None) -> torch.Tensor:
    """A (1, 3, size, size) grey image (pixel value 128) on the model's device (``size`` default:
    :func:`input_size`), for forward passes that find out the shapes of a model's outputs."""
    size = input_size(model) if size is None else size
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return torch.full((1, 3, size, size), 128.0, device=device)


@torch.no_grad()
def layer_channels(model: nn.Module, names: Sequence[str], size: int | None = None) -> dict[str, int]:
    """Channel count of each named layer's output, from one forward pass of a :func:`probe` image."""
    channels: dict[str, int] = {}

    def record(name: str) -> Callable[..., None]:
        return lambda _module, _inputs, output: channels.__setitem__(name, int(output.shape[1]))

    with forward_hooks(model, {name: record(name) for name in names}):
        model(probe(model, size))
    return {name: channels[name] for name in names}
