"""Looking up hookable layers by the short names that witness files use (``relu4_3``, ``pool3``)."""

from __future__ import annotations

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
    """The unique submodule whose qualified name is ``name`` or ends with ``.name``.

    Wrappers (preprocessing, galleries) add prefixes such as ``net.``; witness files name layers without them.
    """
    hits = [m for qual, m in model.named_modules() if qual == name or qual.endswith("." + name)]
    if not hits:
        raise KeyError(f"layer {name!r} not found in {type(model).__name__}")
    if len({id(m) for m in hits}) > 1:
        raise KeyError(f"layer name {name!r} is ambiguous in {type(model).__name__} ({len(hits)} modules)")
    return hits[0]
