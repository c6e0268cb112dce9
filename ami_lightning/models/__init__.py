"""Face-recognition networks wrapped for pixel-space use (see :class:`PixelModel`)."""

from ami_lightning.models.base import Normalize, PixelModel

__all__ = ["Normalize", "PixelModel"]
