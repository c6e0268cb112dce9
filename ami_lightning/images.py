"""Image decoding through PIL and torchvision, tolerant of the truncated JPEG in the AmI release.

(torchvision 0.29 deprecates its own decoders in favour of torchcodec; PIL plus ``pil_to_tensor`` is the
stable path and also lets damaged files be read partially.)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from PIL import Image, ImageFile
from torchvision.transforms.functional import pil_to_tensor


def _decode(path: Path) -> torch.Tensor:
    with Image.open(path) as img:
        img.load()
        return pil_to_tensor(img.convert("RGB"))


def load_image(path: str | Path) -> torch.Tensor:
    """Decode an image file to a uint8 tensor of shape (3, H, W), RGB.

    A truncated file is decoded as far as it goes (PIL fills the rest) with a ``UserWarning``; a missing file raises
    ``FileNotFoundError`` and an undecodable one ``ValueError``, both naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        return _decode(path)
    except OSError as err:
        if "truncated" not in str(err):
            raise ValueError(f"cannot decode image {path}: {err}") from err
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        image = _decode(path)
    except OSError as err:
        raise ValueError(f"cannot decode image {path}: {err}") from err
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    warnings.warn(f"{path} is truncated; decoded the readable part only", UserWarning, stacklevel=2)
    return image
