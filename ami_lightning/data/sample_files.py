"""The sample files of a generated attack set: their names, the bytes of each format, and a cheap check that a file
looks whole (what a resumed generation trusts without decoding it).

Formats: ``npy`` float32 (3, H, W), RGB, pixels 0-255, no mean subtracted (the published C&W / FGSM / BIM format);
``png`` 8-bit RGB, lossless (the default for patch and eyeglasses); ``jpg`` 8-bit RGB JPEG, lossy, as the release
stored its patch and eyeglass samples.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class DamagedSampleWarning(UserWarning):
    """A logged sample file of a set that does not look whole (:func:`damage`); it is made again."""


def output_name(source: str | Path, file_format: str) -> str:
    """The file name of ``source``'s adversarial version: its name with the extension of ``file_format``."""
    return f"{Path(source).stem}.{file_format}"


def encode(pixels: torch.Tensor, file_format: str, jpeg_quality: int = 95) -> bytes:
    """The bytes of a file holding float pixels (3, H, W) RGB in [0, 255]: ``npy`` float32 as they are, ``png``
    and ``jpg`` rounded to 8 bits."""
    array = pixels.detach().cpu()
    buffer = io.BytesIO()
    if file_format == "npy":
        np.save(buffer, array.numpy().astype(np.float32), allow_pickle=False)
    else:
        image = Image.fromarray(array.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
        image.save(buffer, "PNG" if file_format == "png" else "JPEG", quality=jpeg_quality)
    return buffer.getvalue()


def damage(path: Path) -> str | None:
    """Why the sample file ``path`` (written by :func:`encode`; format from its suffix) is damaged, or None when it
    looks whole. Cheap, no decoding: a ``.npy`` whose header cannot be read or whose length is not the header's
    shape and dtype; a PNG without its signature or its closing ``IEND`` chunk; a JPEG without its start or end
    marker."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            if path.suffix == ".npy":
                try:
                    read_header = _NPY_HEADERS[np.lib.format.read_magic(handle)]
                    shape, _, dtype = read_header(handle)
                except (KeyError, ValueError, OSError, EOFError, SyntaxError) as err:
                    return f"unreadable .npy header ({type(err).__name__}: {err})"
                expected = handle.tell() + int(np.prod(shape)) * dtype.itemsize
                return None if size == expected else f"{size} bytes where its header says {expected}"
            marks = {".png": (_PNG_START, _PNG_END), ".jpg": (_JPEG_START, _JPEG_END)}.get(path.suffix)
            if marks is None:
                return None  # not a format the generator writes: nothing to judge by
            start, end = marks
            head = handle.read(len(start))
            handle.seek(max(size - len(end), 0))
            tail = handle.read()
    except OSError as err:
        return f"cannot be read: {err}"
    if head != start:
        return f"not a {path.suffix[1:].upper()} file (its first bytes are {head!r})"
    return None if tail == end else f"cut short ({size} bytes, no {path.suffix[1:].upper()} end marker)"


def decode(data: bytes, file_format: str) -> torch.Tensor:
    """Float pixels (3, H, W) RGB in [0, 255] of the bytes of a file written by :func:`encode`."""
    if file_format == "npy":
        return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))
    with Image.open(io.BytesIO(data)) as image:
        return pil_to_tensor(image.convert("RGB")).float()
