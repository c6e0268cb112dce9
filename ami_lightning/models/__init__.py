"""Face-recognition networks wrapped for pixel-space use (:class:`PixelModel`), and a registry of them by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ami_lightning.models.base import Normalize, PixelModel, kaiming_init_
from ami_lightning.models.dlib_resnet import load_dlib_resnet
from ami_lightning.models.vgg_face import VggFace, load_vgg_face, vgg_face


def build_vgg_face(weights: str | Path | None = None) -> PixelModel:
    """VGG-Face from ``vgg_face_dag.pth``, or with random He-initialised weights when ``weights`` is None."""
    return load_vgg_face(weights) if weights is not None else vgg_face(kaiming_init_(VggFace()))


def build_dlib_resnet(weights: str | Path | None = None) -> PixelModel:
    """dlib's face-recognition ResNet (128-D descriptors), by default from the ``face_recognition_models`` package."""
    return load_dlib_resnet(weights)


MODELS: dict[str, Callable[..., PixelModel]] = {"vgg_face": build_vgg_face, "dlib_resnet": build_dlib_resnet}


def create_model(name: str, weights: str | Path | None = None) -> PixelModel:
    """Build a registered model by name (see :data:`MODELS`)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(MODELS)}")
    return MODELS[name](weights)


__all__ = ["MODELS", "Normalize", "PixelModel", "create_model"]
