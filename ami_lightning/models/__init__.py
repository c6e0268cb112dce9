"""Face-recognition networks wrapped for pixel-space use (:class:`PixelModel`), and a registry of them by name
(:mod:`ami_lightning.models.registry`; importing this package registers the built-in models)."""

from __future__ import annotations

from ami_lightning.models import dlib_resnet, vgg_face  # noqa: F401 - register the built-in models
from ami_lightning.models.base import Normalize, PixelModel
from ami_lightning.models.registry import MODELS, create_model, register_model

__all__ = ["MODELS", "Normalize", "PixelModel", "create_model", "register_model"]
