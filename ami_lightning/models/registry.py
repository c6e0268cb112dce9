"""The models by name (timm-style registry): ``@register_model("name")`` on a builder ``(weights=None) -> PixelModel``.

A builder called without weights gives a working model offline (the shipped dlib file, or random He-initialised
weights); :func:`create_model` builds one by name and :data:`MODELS` lists them. A user's own network needs no
registration: :func:`ami_lightning.models.classifiers.torch_classifier` and
:func:`~ami_lightning.models.classifiers.onnx_classifier` wrap it (``model=torch``, ``model=onnx``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ami_lightning.models.base import PixelModel

ModelBuilder = Callable[..., PixelModel]
MODELS: dict[str, ModelBuilder] = {}
"""Registered builders by name, in registration order."""
B = TypeVar("B", bound=ModelBuilder)


def register_model(name: str) -> Callable[[B], B]:
    """Decorator: register a builder ``(weights: str | Path | None = None) -> PixelModel`` under ``name``;
    ValueError if the name is taken."""

    def decorate(builder: B) -> B:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = builder
        return builder

    return decorate


def create_model(name: str, weights: str | Path | None = None) -> PixelModel:
    """Build a registered model by name (see :data:`MODELS`); KeyError listing the registered names."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(MODELS)}")
    return MODELS[name](weights)
