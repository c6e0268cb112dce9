"""Image decoding through PIL to RGB uint8 tensors: every PIL mode handled explicitly (converted exactly or refused
with a message naming the file), truncated files an error or, for the AmI release's own faces, a warning.

(torchvision 0.29 deprecates its own decoders in favour of torchcodec; PIL plus ``pil_to_tensor`` is the
stable path and also lets damaged files be read partially.)

Modes: ``RGB`` as is; ``L`` and ``1`` (grey, bilevel) copied to the three channels; ``I;16`` / ``I;16L`` /
``I;16B`` / ``I;16N`` (16-bit grey) and ``I`` from a PNG (16-bit grey in older Pillow) scaled from 0..65535 to
0..255 by round(v / 257); ``P`` (palette), ``CMYK``, ``YCbCr``, ``RGBX`` converted by PIL; ``RGBA``, ``LA``,
``PA``, ``La``, ``RGBa`` and a palette with transparency: the alpha channel is dropped when every pixel is opaque,
refused otherwise (what shows through transparent pixels is undefined). 16-bit RGB(A) PNGs arrive from PIL as
8-bit ``RGB(A)`` holding the high byte of each sample, i.e. floor(v / 256), within 1 of round(v / 257). Refused:
``I`` from other formats and ``F`` (32-bit integer / float pixels of no defined range) and any other mode.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import ClassVar, Literal, Self

import numpy as np
import torch
from PIL import Image, ImageFile
from torchvision.transforms.functional import pil_to_tensor

Truncated = Literal["error", "warn"]
GREY16_MODES: tuple[str, ...] = ("I;16", "I;16L", "I;16B", "I;16N")
VGG_FACE_MEAN: tuple[float, float, float] = (129.186279296875, 104.76238250732422, 93.59396362304688)
"""VGG-Face's per-channel pixel mean (RGB, 0-255): its input normalisation, and what the release's legacy ``.npy``
samples had subtracted (:func:`ami_lightning.data.datasets.load_pixels` with ``npy_legacy``)."""
ALPHA_MODES: tuple[str, ...] = ("RGBA", "LA", "PA", "La", "RGBa")
CONVERTED_MODES: tuple[str, ...] = ("P", "CMYK", "YCbCr", "RGBX")


class BadImageError(ValueError):
    """A file whose pixels cannot be used. ``path`` and ``problem`` (the message without the path) when known; the
    message is ``<prefix><path>: <problem>``. (One positional message also works, as DataLoader workers re-raise
    it.)"""

    prefix: ClassVar[str] = ""

    def __init__(self, message: str, path: Path | None = None, problem: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.problem = problem if problem is not None else message

    @classmethod
    def of(cls, path: str | Path, problem: str) -> Self:
        """The error for ``path`` with ``problem``; message ``<prefix><path>: <problem>``."""
        return cls(f"{cls.prefix}{path}: {problem}", Path(path), problem)


def _grey_to_rgb(grey: np.ndarray) -> torch.Tensor:
    """uint8 grey (H, W) -> uint8 (3, H, W)."""
    return torch.from_numpy(np.array(grey, dtype=np.uint8)).expand(3, -1, -1).contiguous()  # a writable copy


def _scale16(values: np.ndarray) -> np.ndarray:
    """Samples 0..65535 -> uint8 0..255 by round(v / 257) (exact for 8-bit values stored as v * 257)."""
    return np.rint(values.astype(np.float64) / 257.0).astype(np.uint8)


def to_rgb(image: Image.Image, path: str | Path) -> torch.Tensor:
    """uint8 RGB pixels (3, H, W) of a loaded PIL image, by the rules of the module docstring; ``BadImageError``
    naming ``path`` for a mode that cannot be converted exactly."""
    mode = image.mode
    if mode == "RGB":
        return pil_to_tensor(image)
    if mode in ("L", "1"):
        return _grey_to_rgb(np.asarray(image.convert("L")))
    if mode in GREY16_MODES or (mode == "I" and image.format == "PNG"):
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise BadImageError.of(path, f"{mode} pixels outside 0..65535 (min {values.min()}, max {values.max()})")
        return _grey_to_rgb(_scale16(values))
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        see_through = int((alpha < 255).sum())
        if see_through:
            raise BadImageError.of(path, f"mode {mode} with {see_through} transparent or translucent pixels "
                                         "(alpha < 255); flatten it onto a background first")
        return pil_to_tensor(rgba.convert("RGB"))
    if mode in CONVERTED_MODES:
        return pil_to_tensor(image.convert("RGB"))
    if mode in ("I", "F"):
        kind = "32-bit integer" if mode == "I" else "32-bit float"
        raise BadImageError.of(path, f"{kind} pixels (mode {mode}) have no defined range; save the image as 8-bit "
                                     "(or 16-bit PNG), or the pixels as a .npy in [0, 255]")
    raise BadImageError.of(path, f"unsupported image mode {mode!r}")


def _decode(path: Path) -> torch.Tensor:
    with Image.open(path) as img:
        img.load()
        return to_rgb(img, path)


def _is_truncation(err: BaseException) -> bool:
    return isinstance(err, OSError) and "truncated" in str(err).lower()


def load_image(path: str | Path, truncated: Truncated = "warn") -> torch.Tensor:
    """Decode an image file to a uint8 tensor of shape (3, H, W), RGB (modes: see the module docstring).

    ``truncated``: what a file cut short does. ``"warn"`` (the default, for the AmI release's witness faces, one of
    which is truncated): decode it as far as it goes (PIL fills the rest) with a ``UserWarning``. ``"error"`` (for
    data sets, where a face whose lower part is fill would be scored as if it were real): raise ``BadImageError``.
    A missing file raises ``FileNotFoundError``; an undecodable one, or one of a mode that cannot be converted,
    ``BadImageError`` (a ``ValueError``); each names the file.
    """
    if truncated not in ("error", "warn"):
        raise ValueError(f"truncated must be 'error' or 'warn', got {truncated!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        return _decode(path)
    except BadImageError:
        raise
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ... for damaged files
        if not _is_truncation(err):
            raise BadImageError.of(path, f"cannot decode image: {err}") from err
        if truncated == "error":
            raise BadImageError.of(path, f"truncated image file ({err})") from err
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        image = _decode(path)
    except BadImageError:
        raise
    except Exception as err:
        raise BadImageError.of(path, f"cannot decode image: {err}") from err
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    warnings.warn(f"{path} is truncated; decoded the readable part only", UserWarning, stacklevel=2)
    return image
