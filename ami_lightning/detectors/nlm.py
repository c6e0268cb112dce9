"""Non-local means of colour images, OpenCV's ``cv2.fastNlMeansDenoisingColored``, in OpenCV or in batched torch.

:func:`non_local_means` takes (N, 3, H, W) float pixels in [0, 255] and has two backends that give the same result:

* ``"opencv"``: one ``cv2.fastNlMeansDenoisingColored`` call per image on the host (the images of a batch on a thread
  pool; OpenCV releases the GIL).
* ``"torch"``: the same computation in integer torch on the batch's device, all images at once, bit for bit equal to
  OpenCV. It follows ``modules/photo/src/denoising.cpp`` and ``fast_nlmeans_denoising_invoker*.hpp``:

  1. The 8-bit image is converted with ``cvtColor(COLOR_LBGR2Lab)`` (OpenCV's fixed-point conversion of *linear* BGR,
     no sRGB gamma) and split into L (1 channel) and a*b* (2 channels).
  2. Each part is denoised on its own by ``fastNlMeansDenoising`` with one ``h`` (L: ``h``; a*b*: ``hColor``; this
     package passes ``strength`` for both), so a and b share one weight per pair of patches.
  3. For every pixel p and every offset o of the ``search_window`` x ``search_window`` search window, the integer sum
     of squared differences over the part's channels and the ``patch_size`` x ``patch_size`` patches around p and
     p + o, ``D``, is shifted right by ``ceil(log2(patch_size**2))`` (the "almost average") and looked up in a weight
     table: ``w = cvRound(M * exp(-d / (h*h * channels)))`` with ``d = index * 2**shift / patch_size**2``, set to 0
     below ``0.001 * M``; ``M = INT_MAX // (search_window**2 * 255)`` is the fixed-point scale. The image is extended
     by ``search_window // 2 + patch_size // 2`` pixels with ``BORDER_DEFAULT`` (reflect-101, ``gfedcb|abcdefgh|
     gfedcba``, repeated for images smaller than the border) before any of this.
  4. The estimate is ``(sum_o w_o * I(p + o) + W // 2) // W`` with ``W = sum_o w_o``, in integers (int32 sums as
     OpenCV's, the rounding division unsigned), saturated to uint8.
  5. The L and a*b* results are merged and converted back with ``cvtColor(COLOR_Lab2LBGR)``.

  The two colour conversions are not re-derived: they are tables made once per process by running ``cv2.cvtColor`` on
  all 2**24 colours (:func:`lab_tables`, 48 MiB each, kept on every device used), then gathered. The conversion is
  per pixel, so the tables reproduce it exactly.

Pixels are first rounded half to even and clipped to uint8 (:func:`to_uint8`). OpenCV reads channel 0 as blue:
``channel_order="bgr"`` swaps the RGB input to BGR first and back afterwards (as OpenCV documents its input);
``channel_order="rgb"`` hands the RGB channels over unswapped, as EvadeML-Zoo's ``non_local_means_color_py`` does with
its Keras-loaded arrays, so OpenCV's conversion treats red as blue. The two differ on coloured images.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch

__all__ = ["lab_tables", "non_local_means", "to_uint8", "weight_table"]

PIXEL_MAX = 255.0
INT32_MAX = 2**31 - 1
WEIGHT_THRESHOLD = 0.001  # OpenCV: weights below this share of the fixed-point scale are set to 0
BACKENDS = ("opencv", "torch")
CHANNEL_ORDERS = ("bgr", "rgb")
# The torch backend denoises a batch in chunks of images whose extended L, a, b planes hold at most this many int32
# elements: on the CPU about 512 KiB (one 224 x 224 image; small steps stay in cache, which is faster there), elsewhere
# 64 MiB (about 100 such images; the temporaries of one step are a few times that).
CPU_STEP_ELEMENTS = 2**17
DEVICE_STEP_ELEMENTS = 2**24

Backend = Literal["opencv", "torch"]
ChannelOrder = Literal["bgr", "rgb"]


def check_images(x: torch.Tensor, what: str, channels: int | None = None) -> None:
    """Raise unless ``x`` is a floating-point (B, C, H, W) tensor (with C == ``channels`` when given), B, H, W > 0."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{what}: expected a batch of images of shape (B, C, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{what}: expected {channels} channels (B, {channels}, H, W), got shape {tuple(x.shape)}")
    if min(x.shape) == 0:
        raise ValueError(f"{what}: empty batch or image, shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{what}: expected floating-point pixels in [0, 255], got dtype {x.dtype}")


def check_int(value: int, what: str, low: int, high: int | None = None, odd: bool = False) -> None:
    """Raise ValueError unless ``value`` is an int in [low, high] (and odd when asked)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high) or (odd and value % 2 == 0):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{what} must be an {'odd ' if odd else ''}integer {bounds}, got {value}")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) float pixels -> uint8 of the same shape and device: rounded half to even (as ``np.rint``), then
    clipped to [0, 255]. Detached: no gradient flows through it."""
    return torch.round(x.detach()).clamp_(0, PIXEL_MAX).to(torch.uint8)


def fixed_point_scale(search_window: int) -> int:
    """OpenCV's fixed-point weight scale M = INT_MAX // (search_window**2 * 255): the largest weight, chosen so that
    a sum of search_window**2 weighted 8-bit pixels fits in an int32."""
    return INT32_MAX // (search_window * search_window * 255)


def distance_shift(patch_size: int) -> int:
    """The smallest p with 2**p >= patch_size**2: OpenCV divides a patch's sum of squared differences by 2**p (a
    right shift) instead of by the patch's area, and scales the weight table's distances back by 2**p / area."""
    return (patch_size * patch_size - 1).bit_length()


@functools.lru_cache(maxsize=32)
def weight_table(h: float, channels: int, patch_size: int, search_window: int) -> np.ndarray:
    """OpenCV's weight of each "almost average" distance ``D >> distance_shift(patch_size)`` (``DistSquared::
    calcWeight``), a 1-D int32 array of length ``int(255**2 * channels / (2**shift / patch_size**2) + 1)``.

    ``w[i] = cvRound(M * exp(-i * 2**shift / patch_size**2 / (h*h*channels)))`` (round half to even), 0 where it is
    below ``0.001 * M``; ``M`` is :func:`fixed_point_scale`. ``h*h*channels`` is computed in float32, the rest in
    float64, as OpenCV does (``h`` is a C float there). The weights decrease, so the table ends in zeros.
    """
    scale = fixed_point_scale(search_window)
    multiplier = (1 << distance_shift(patch_size)) / (patch_size * patch_size)
    table = np.zeros(int(255 * 255 * channels / multiplier + 1), dtype=np.int32)
    with np.errstate(over="ignore"):
        denominator = float(np.float32(h) * np.float32(h) * np.float32(channels))
    if denominator == 0.0:  # h so small that h*h underflows: exp(-0/0) is NaN, which OpenCV takes as weight 1
        table[0] = scale
        return table
    for index in range(len(table)):
        weight = round(scale * math.exp(-(index * multiplier) / denominator))
        if weight < WEIGHT_THRESHOLD * scale:
            break
        table[index] = weight
    return table


@functools.lru_cache(maxsize=1)
def _host_lab_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """(to_lab, from_lab), each (2**24, 3) uint8 on the CPU: ``cv2.cvtColor`` with ``COLOR_LBGR2Lab`` and
    ``COLOR_Lab2LBGR`` of the colour (c0, c1, c2) at row ``c0 << 16 | c1 << 8 | c2``."""
    import cv2

    levels = np.arange(256, dtype=np.uint8)
    colours = np.empty((256, 256, 256, 3), dtype=np.uint8)
    colours[..., 0] = levels[:, None, None]
    colours[..., 1] = levels[None, :, None]
    colours[..., 2] = levels[None, None, :]
    colours = colours.reshape(4096, 4096, 3)
    to_lab = cv2.cvtColor(colours, cv2.COLOR_LBGR2Lab).reshape(-1, 3)
    from_lab = cv2.cvtColor(colours, cv2.COLOR_Lab2LBGR).reshape(-1, 3)
    return torch.from_numpy(to_lab), torch.from_numpy(from_lab)


_DEVICE_LAB_TABLES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def lab_tables(device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's 8-bit ``COLOR_LBGR2Lab`` and ``COLOR_Lab2LBGR`` conversions as (2**24, 3) uint8 tables on ``device``
    (row ``c0 << 16 | c1 << 8 | c2`` holds the conversion of the pixel with channels (c0, c1, c2), channel 0 read as
    blue, resp. L). Made once per process with ``cv2.cvtColor`` (about a second), copied once to each device."""
    device = torch.device(device)
    if device not in _DEVICE_LAB_TABLES:
        _DEVICE_LAB_TABLES[device] = tuple(table.to(device) for table in _host_lab_tables())
    return _DEVICE_LAB_TABLES[device]


def _convert(pixels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Apply a (2**24, 3) colour table to (N, 3, H, W) uint8 pixels; returns (N, 3, H, W) uint8."""
    channels = pixels.to(torch.int64)
    index = (channels[:, 0] << 16) | (channels[:, 1] << 8) | channels[:, 2]
    return table[index].permute(0, 3, 1, 2)


def _reflect101_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices (int64, length n + 2 pad) that extend an axis of length n by OpenCV's BORDER_REFLECT_101
    (``gfedcb|abcdefgh|gfedcba``), reflecting again as often as needed when pad >= n (``borderInterpolate``)."""
    index = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(index)
    period = 2 * (n - 1)
    index = torch.remainder(index, period)
    return torch.where(index < n, index, period - index)


def _box_sum(x: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """Sums of ``x`` (..., height + size - 1, width + size - 1) over size x size windows: (..., height, width)."""
    rows = x[..., 0:height, :].clone()
    for k in range(1, size):
        rows += x[..., k : k + height, :]
    out = rows[..., 0:width].clone()
    for k in range(1, size):
        out += rows[..., k : k + width]
    return out


def step_elements(device: torch.device) -> int:
    """The chunk budget of the torch backend on ``device``: :data:`CPU_STEP_ELEMENTS` or
    :data:`DEVICE_STEP_ELEMENTS`."""
    return CPU_STEP_ELEMENTS if device.type == "cpu" else DEVICE_STEP_ELEMENTS


@functools.lru_cache(maxsize=32)
def _device_weight_table(h: float, channels: int, patch_size: int, search_window: int, device: torch.device):
    """:func:`weight_table` as an int32 tensor on ``device``, copied there once."""
    return torch.from_numpy(weight_table(h, channels, patch_size, search_window)).to(device)


def _denoise_part(planes: torch.Tensor, h: float, patch_size: int, search_window: int) -> torch.Tensor:
    """``fastNlMeansDenoising`` (L2 distances, one ``h``) of (N, C, H, W) uint8 planes (C = 1 or 2 here), all images
    at once; returns (N, C, H, W) uint8.

    The distance between the patches at p and p + o equals that between p + o and p, so each pair of offsets
    {o, -o} shares one map of squared differences D_o(r) = sum_c (I(r + o) - I(r))**2 and its box sums B_o: the
    weight of o at p is looked up from B_o(p), that of -o from B_o(p - o). Offset 0 has distance 0, weight M.
    """
    n, channels, height, width = planes.shape
    device = planes.device
    half_patch, half_search = patch_size // 2, search_window // 2
    border = half_patch + half_search
    rows = _reflect101_index(height, border, device)
    cols = _reflect101_index(width, border, device)
    padded = planes.to(torch.int32)[:, :, rows][:, :, :, cols]  # (N, C, H + 2 border, W + 2 border)
    table = _device_weight_table(h, channels, patch_size, search_window, device)
    shift = distance_shift(patch_size)
    scale = fixed_point_scale(search_window)

    def at(dy: int, dx: int) -> torch.Tensor:  # I(p + (dy, dx)) for all pixels p: (N, C, H, W), a view
        return padded[:, :, border + dy : border + dy + height, border + dx : border + dx + width]

    estimate = at(0, 0) * scale
    weights_sum = torch.full((n, 1, height, width), scale, dtype=torch.int32, device=device)
    pairs = [(0, dx) for dx in range(1, half_search + 1)]
    pairs += [(dy, dx) for dy in range(1, half_search + 1) for dx in range(-half_search, half_search + 1)]
    for dy, dx in pairs:
        # B_o is needed at p and p - o: rows -dy .. H - 1, columns -max(dx, 0) .. W - 1 + max(-dx, 0); D_o half a
        # patch further on each side. (top, left): where that block of D_o starts in the padded image.
        box_h, box_w = height + dy, width + abs(dx)
        top, left = border - dy - half_patch, border - max(dx, 0) - half_patch
        here = padded[:, :, top : top + box_h + 2 * half_patch, left : left + box_w + 2 * half_patch]
        there = padded[
            :, :, top + dy : top + dy + box_h + 2 * half_patch, left + dx : left + dx + box_w + 2 * half_patch
        ]
        squared = there - here
        squared *= squared
        if channels > 1:
            squared = squared.sum(dim=1, keepdim=True, dtype=torch.int32)
        distance = _box_sum(squared, patch_size, box_h, box_w)
        distance >>= shift
        weight = table.index_select(0, distance.view(-1)).view(distance.shape)  # (N, 1, H + dy, W + |dx|)
        forward = weight[:, :, dy : dy + height, max(dx, 0) : max(dx, 0) + width]  # at p, for o
        backward = weight[:, :, 0:height, max(-dx, 0) : max(-dx, 0) + width]  # at p - o, for -o
        estimate += forward * at(dy, dx)
        estimate += backward * at(-dy, -dx)
        weights_sum += forward
        weights_sum += backward
    # OpenCV divides in unsigned int: (estimate + weights_sum / 2) / weights_sum; int64 holds it exactly.
    weights_sum = weights_sum.to(torch.int64)
    out = (estimate.to(torch.int64) + weights_sum // 2) // weights_sum
    return out.clamp_(0, 255).to(torch.uint8)


def _torch_nlm(pixels: torch.Tensor, h: float, h_color: float, patch_size: int, search_window: int) -> torch.Tensor:
    """``fastNlMeansDenoisingColored`` of (N, 3, H, W) uint8 pixels in OpenCV's channel order, in torch on their
    device; returns (N, 3, H, W) uint8 in the same order. The batch goes in chunks of images whose extended planes
    hold at most :func:`step_elements` elements (on the CPU one image at a time, which keeps the steps in cache)."""
    to_lab, from_lab = lab_tables(pixels.device)
    n, _, height, width = pixels.shape
    extended = 3 * (height + search_window + patch_size) * (width + search_window + patch_size)
    chunk = max(1, step_elements(pixels.device) // extended)
    out = []
    for start in range(0, n, chunk):
        lab = _convert(pixels[start : start + chunk], to_lab)
        lightness = _denoise_part(lab[:, :1], h, patch_size, search_window)
        colour = _denoise_part(lab[:, 1:], h_color, patch_size, search_window)
        out.append(_convert(torch.cat([lightness, colour], dim=1), from_lab))
    return torch.cat(out)


def _opencv_nlm(pixels: np.ndarray, h: float, h_color: float, patch_size: int, search_window: int) -> np.ndarray:
    """``cv2.fastNlMeansDenoisingColored`` of each (H, W, 3) uint8 image of ``pixels`` (N, H, W, 3), in OpenCV's
    channel order, the images on a thread pool of up to ``os.cpu_count()`` threads; returns (N, H, W, 3) uint8."""
    import cv2

    def denoise(image: np.ndarray) -> np.ndarray:
        return cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(image), None, h, h_color, patch_size, search_window)

    workers = min(len(pixels), os.cpu_count() or 1)
    if workers <= 1:
        return np.stack([denoise(image) for image in pixels])
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return np.stack(list(pool.map(denoise, pixels)))


def default_backend(device: torch.device) -> Backend:
    """The faster backend for images on ``device``: torch on CUDA, OpenCV on the CPU (measured with
    ``scripts/bench_nlm.py``)."""
    return "torch" if device.type == "cuda" else "opencv"


def non_local_means(
    x: torch.Tensor,
    search_window: int = 11,
    patch_size: int = 3,
    strength: float = 4,
    backend: Backend | None = None,
    channel_order: ChannelOrder = "bgr",
) -> torch.Tensor:
    """Non-local means denoising of colour images exactly as OpenCV's ``cv2.fastNlMeansDenoisingColored``.

    ``x``: (N, 3, H, W) float RGB pixels in [0, 255]. Returns (N, 3, H, W), ``x``'s dtype and device, integer-valued
    pixels in [0, 255]. The pixels are made uint8 by :func:`to_uint8` (round half to even, clip), put in OpenCV's
    channel order (``channel_order="bgr"``: RGB -> BGR as OpenCV documents; ``"rgb"``: unswapped, as EvadeML-Zoo
    does), denoised with ``h = hColor = strength``, ``templateWindowSize = patch_size`` and ``searchWindowSize =
    search_window`` (both odd), and put back in RGB order. ``backend``: ``"opencv"`` (per image on the host),
    ``"torch"`` (batched on x's device, bit for bit equal) or None for :func:`default_backend` of x's device. No
    gradient flows through this function (use BPDA).
    """
    check_images(x, "non_local_means", channels=3)
    check_int(search_window, "search_window", 1, odd=True)
    check_int(patch_size, "patch_size", 1, odd=True)
    if not float(strength) > 0:
        raise ValueError(f"strength must be a positive number, got {strength!r}")
    if backend is None:
        backend = default_backend(x.device)
    if backend not in BACKENDS:
        raise ValueError(f"non_local_means: backend must be one of {BACKENDS} or None, got {backend!r}")
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"non_local_means: channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
    h = float(strength)
    order = [2, 1, 0] if channel_order == "bgr" else [0, 1, 2]  # OpenCV's channel i is x's channel order[i]
    pixels = to_uint8(x)[:, order]
    if backend == "torch":
        out = _torch_nlm(pixels, h, h, patch_size, search_window)
    else:
        host = pixels.permute(0, 2, 3, 1).cpu().numpy()
        out = torch.from_numpy(_opencv_nlm(host, h, h, patch_size, search_window)).permute(0, 3, 1, 2)
    return out[:, order].to(device=x.device, dtype=x.dtype)
