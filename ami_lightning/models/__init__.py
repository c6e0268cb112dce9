"""Face-recognition networks wrapped for pixel-space use (:class:`PixelModel`). The built-in networks are built by
their functions (:func:`~ami_lightning.models.dlib_resnet.load_dlib_resnet`,
:func:`~ami_lightning.models.vgg_face.build_vgg_face`), which the model configs reach through Hydra's ``_target_``
(``conf/model/``): one way to name a model, for the built-in ones and a researcher's own (``model=torch``,
``model=onnx``)."""

from __future__ import annotations

from ami_lightning.models.base import Normalize, PixelModel

__all__ = ["Normalize", "PixelModel"]
