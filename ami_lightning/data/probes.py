"""Deterministic light variants of enrolled faces: benign probes that are not the enrolment images themselves."""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.transforms.v2.functional import center_crop, horizontal_flip, resize

VARIANTS: tuple[str, ...] = ("flip", "shift", "scale", "jpeg")
"""The variants of the evaluated benign probes."""
FIT_VARIANTS: tuple[str, ...] = ("brighter", "darker", "shift_back", "jpeg_50")
"""The variants of the benign fit set of detectors that need fitting: none of them is an evaluated probe's variant
(:data:`VARIANTS`), and none is the unaltered face that attacks start from."""


def shift(images: torch.Tensor, dx: int = 6, dy: int = -4) -> torch.Tensor:
    """Translate (N, 3, H, W) by (dx, dy) pixels (right, down), repeating the edge pixels into the gap."""
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))  # left, right, top, bottom
    h, w = images.shape[-2:]
    padded = F.pad(images.float(), pad, mode="replicate")
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top : top + h, left : left + w].to(images.dtype)


def zoom(images: torch.Tensor, factor: float = 1.06) -> torch.Tensor:
    """Enlarge (N, 3, H, W) by ``factor`` (bilinear, antialiased) and crop the centre back to H x W."""
    h, w = images.shape[-2:]
    big = resize(images, [round(h * factor), round(w * factor)], antialias=True)
    return center_crop(big, [h, w])


def jpeg(images: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """Re-encode each uint8 (3, H, W) image of the batch as JPEG at ``quality`` and decode it again."""
    out = []
    for image in images:
        buffer = io.BytesIO()
        to_pil_image(image).save(buffer, format="JPEG", quality=quality)
        out.append(pil_to_tensor(Image.open(buffer).convert("RGB")))
    return torch.stack(out)


def brightness(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale the pixel values of uint8 (N, 3, H, W) by ``factor``, rounded and clipped to [0, 255]."""
    return (images.float() * factor).round().clamp(0, 255).to(images.dtype)


_MAKERS = {"flip": horizontal_flip, "shift": shift, "scale": zoom, "jpeg": jpeg,
           "brighter": lambda x: brightness(x, 1.12), "darker": lambda x: brightness(x, 0.88),
           "shift_back": lambda x: shift(x, dx=-5, dy=5), "jpeg_50": lambda x: jpeg(x, quality=50)}


def benign_variants(images: torch.Tensor, variants: Sequence[str] = VARIANTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Light variants of uint8 faces (N, 3, H, W).

    Returns (probes (N * V, 3, H, W) uint8, source index (N * V,)), variant-major: rows ``v * N + i`` are variant
    ``variants[v]`` of face i.
    """
    unknown = [v for v in variants if v not in _MAKERS]
    if unknown:
        raise ValueError(f"unknown probe variants {unknown}; choose from {list(_MAKERS)}")
    if images.dtype != torch.uint8:
        raise TypeError(f"benign_variants expects uint8 images, got {images.dtype}")
    probes = torch.cat([_MAKERS[v](images) for v in variants])
    return probes, torch.arange(len(images)).repeat(len(variants))
