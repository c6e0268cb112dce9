"""Feature Squeezing (Xu, Evans and Qi, NDSS 2018): the squeezers and the detection score, as pure functions.

Images are batched tensors ``x`` of shape (B, C, H, W) (C = 3, RGB, for the models of this package), floating point,
pixels in [0, 255]; every squeezer returns a tensor of the same shape, dtype and device. The semantics follow the
authors' code, EvadeML-Zoo (``utils/squeeze.py`` and ``detections/feature_squeezing.py``), which works on [0, 1]:

* :func:`bit_depth` is ``reduce_precision_py``: ``np.rint(v * (2**bits - 1)) / (2**bits - 1)`` on ``v = x / 255``,
  rounding half to even (``torch.round`` rounds as ``np.rint`` does), then scaled back by 255.
* :func:`median_filter` is ``median_filter_py``: ``scipy.ndimage.median_filter(x, size=(1, s, s, 1), mode='reflect')``,
  with SciPy's window alignment, its 'reflect' boundary and its choice of the upper median for even sizes.
* :func:`non_local_means` is ``non_local_means_color_py``: OpenCV's ``fastNlMeansDenoisingColored`` on uint8 images.
* :func:`max_l1_score` is ``FeatureSqueezingDetector.get_distance`` with ``distance_measure=l1``: the largest L1
  distance between the softmax output on the input and on each squeezed input.

None of the squeezers is usefully differentiable (bit depth and the median have zero or sparse gradients, NLM runs
in OpenCV on uint8 and breaks the graph); an adaptive attack needs BPDA (straight-through) around them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["SQUEEZER_FORMS", "bit_depth", "max_l1_score", "median_filter", "non_local_means", "squeeze"]

PIXEL_MAX = 255.0


def _check_images(x: torch.Tensor, what: str, channels: int | None = None) -> None:
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


def _check_int(value: int, what: str, low: int, high: int | None = None, odd: bool = False) -> None:
    """Raise ValueError unless ``value`` is an int in [low, high] (and odd when asked)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high) or (odd and value % 2 == 0):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{what} must be an {'odd ' if odd else ''}integer {bounds}, got {value}")


def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Reduce colour depth to ``bits`` bits per channel.

    ``x``: (B, C, H, W) float pixels in [0, 255]. Returns the same shape, dtype and device, pixels in [0, 255]:
    ``round(x / 255 * (2**bits - 1)) / (2**bits - 1) * 255``, evaluated in that order in ``x``'s dtype, which is
    EvadeML-Zoo's ``reduce_precision_py`` on ``x / 255`` scaled back by 255. ``torch.round`` rounds half to even,
    exactly as the reference's ``np.rint`` (e.g. with 1 bit, 127.5 -> 0). Values outside
    [0, 255] are not clipped (nor are they in the reference). The gradient is zero almost everywhere: use BPDA.
    """
    _check_images(x, "bit_depth")
    _check_int(bits, "bits", 1, 8)
    levels = float(2**bits - 1)
    return torch.round(x / PIXEL_MAX * levels) / levels * PIXEL_MAX


def _reflect_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices (int64, length before + n + after) into an axis of length ``n`` that extend it by SciPy's 'reflect'
    mode, i.e. NumPy's 'symmetric' (``d c b a | a b c d | d c b a``, the edge sample repeated), for any pad width."""
    index = torch.arange(-before, n + after, device=device) % (2 * n)
    return torch.where(index < n, index, 2 * n - 1 - index)


def median_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Median over a ``size`` x ``size`` window, per image and channel, exactly as ``scipy.ndimage.median_filter(x,
    size=(1, 1, size, size), mode='reflect')`` (EvadeML-Zoo's ``median_filter_py`` on NHWC arrays).

    ``x``: (B, C, H, W) float pixels. Returns the same shape, dtype and device; each output is one of the input values.

    * Alignment (SciPy, ``origin=0``): the window at index i covers i - size // 2 .. i - size // 2 + size - 1 on each
      axis; for odd sizes it is centred, for even sizes it reaches one further back than forward (2 x 2: i - 1 .. i;
      4 x 4: i - 2 .. i + 1).
    * Boundary (SciPy 'reflect' = NumPy 'symmetric', not torch's 'reflect'): the edge sample is repeated,
      ``d c b a | a b c d | d c b a``. The padding is built by indexing (any width, also wider than the image).
    * Rank: the element of 0-based rank ``size * size // 2`` of the sorted window, as SciPy's ``median_filter``
      picks; for even sizes that is the upper of the two middle values, not their mean.

    Memory: the windows are materialised, B * C * H * W * size**2 elements.
    """
    _check_images(x, "median_filter")
    _check_int(size, "size", 1)
    if size == 1:
        return x.clone()
    height, width = x.shape[-2:]
    before, after = size // 2, size - 1 - size // 2
    rows = _reflect_index(height, before, after, x.device)
    cols = _reflect_index(width, before, after, x.device)
    padded = x[:, :, rows][:, :, :, cols]  # (B, C, H + size - 1, W + size - 1)
    windows = padded.unfold(2, size, 1).unfold(3, size, 1)  # (B, C, H, W, size, size), a view
    windows = windows.reshape(*x.shape, size * size)
    return windows.kthvalue(size * size // 2 + 1, dim=-1).values  # kthvalue counts from 1


def non_local_means(x: torch.Tensor, search_window: int = 11, patch_size: int = 3, strength: float = 4) -> torch.Tensor:
    """Non-local means denoising of colour images by OpenCV (``cv2.fastNlMeansDenoisingColored``), per image.

    ``x``: (B, 3, H, W) float RGB pixels in [0, 255]. Returns (B, 3, H, W), ``x``'s dtype and device, integer-valued
    pixels in [0, 255]. The pixels are rounded half to even (as the reference's ``np.rint``) and clipped to uint8,
    converted RGB -> BGR (OpenCV's colour order: the function converts BGR to CIELAB and denoises L and a*b* with
    ``h`` and ``hColor``), denoised with ``h=hColor=strength``, ``templateWindowSize=patch_size``,
    ``searchWindowSize=search_window``, and converted back to RGB.

    EvadeML-Zoo's squeezer "non_local_means_color_11_3_4" is ``non_local_means_color_py(imgs, search_window=11,
    block_size=3, photo_render=4)``, i.e. these defaults (search window, patch, strength, in that order). Note that it
    hands its RGB arrays (Keras ``load_img``) to OpenCV without swapping the channels, so OpenCV's colour conversion
    treats its R as B; here the order is swapped as OpenCV documents, so results differ from that code on coloured
    images (on three of the packaged 224 x 224 faces: 60% of the values, by 0.96 on average and 18 at most). No
    gradient flows through this function (use BPDA).
    """
    import cv2  # OpenCV is only needed here; importing it lazily keeps the other squeezers free of it

    _check_images(x, "non_local_means", channels=3)
    _check_int(search_window, "search_window", 1, odd=True)
    _check_int(patch_size, "patch_size", 1, odd=True)
    if not float(strength) > 0:
        raise ValueError(f"strength must be a positive number, got {strength!r}")
    h = float(strength)
    pixels = torch.round(x.detach()).clamp_(0, PIXEL_MAX).to(torch.uint8)
    rgb = pixels.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3) uint8
    out = np.empty_like(rgb)
    for i, image in enumerate(rgb):
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        denoised = cv2.fastNlMeansDenoisingColored(bgr, None, h, h, patch_size, search_window)
        out[i] = denoised[:, :, ::-1]
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype)


_NUMBER = r"\d+(?:\.\d+)?"
_FORMS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"bit_depth_(\d+)"), "bit_depth"),
    (re.compile(r"median_(\d+)x(\d+)"), "median"),
    (re.compile(r"median_filter_(\d+)_(\d+)"), "median"),  # EvadeML-Zoo's spelling
    (re.compile(rf"nlm_(\d+)_(\d+)_({_NUMBER})"), "nlm"),
    (re.compile(rf"non_local_means_color_(\d+)_(\d+)_({_NUMBER})"), "nlm"),  # EvadeML-Zoo's spelling
)
SQUEEZER_FORMS: tuple[str, ...] = (
    "bit_depth_<bits> (1..8)",
    "median_<s>x<s> or median_filter_<s>_<s> (square windows, s >= 1)",
    "nlm_<search>_<patch>_<strength> or non_local_means_color_<search>_<patch>_<strength> (odd search and patch)",
)


def squeeze(x: torch.Tensor, name: str) -> torch.Tensor:
    """Apply the squeezer called ``name`` to ``x`` ((B, C, H, W) float pixels in [0, 255]; 3 channels for NLM).

    Names (EvadeML-Zoo's spellings also accepted): ``"bit_depth_5"`` -> ``bit_depth(x, 5)``; ``"median_2x2"`` or
    ``"median_filter_2_2"`` -> ``median_filter(x, 2)``; ``"nlm_11_3_4"`` or ``"non_local_means_color_11_3_4"`` ->
    ``non_local_means(x, search_window=11, patch_size=3, strength=4)``. Raises ValueError for any other name.
    """
    for pattern, kind in _FORMS:
        match = pattern.fullmatch(name) if isinstance(name, str) else None
        if match is None:
            continue
        if kind == "bit_depth":
            return bit_depth(x, int(match[1]))
        if kind == "median":
            if match[1] != match[2]:
                raise ValueError(f"squeezer {name!r}: only square median windows are supported")
            return median_filter(x, int(match[1]))
        return non_local_means(x, search_window=int(match[1]), patch_size=int(match[2]), strength=float(match[3]))
    raise ValueError(f"unknown squeezer name {name!r}; accepted forms: {'; '.join(SQUEEZER_FORMS)}")


def max_l1_score(probs_original: torch.Tensor, probs_squeezed: Sequence[torch.Tensor]) -> torch.Tensor:
    """Feature Squeezing's detection score: ``max_j sum_k |p[b, k] - q_j[b, k]|``.

    ``probs_original``: (B, K) softmax output of the model on the inputs; ``probs_squeezed``: one (B, K) softmax output
    per squeezer, on the squeezed inputs. Returns (B,), in the dtype of the inputs, values in [0, 2] for probability
    vectors; larger means more likely adversarial (EvadeML-Zoo's ``calculate_distance_max`` with the L1 metric).
    """
    if not isinstance(probs_original, torch.Tensor) or probs_original.dim() != 2:
        shape = tuple(probs_original.shape) if isinstance(probs_original, torch.Tensor) else type(probs_original)
        raise ValueError(f"probs_original: expected a (B, K) tensor, got {shape}")
    if isinstance(probs_squeezed, torch.Tensor) or len(probs_squeezed) == 0:
        raise ValueError("probs_squeezed: expected a non-empty list of (B, K) tensors, one per squeezer")
    for j, probs in enumerate(probs_squeezed):
        if not isinstance(probs, torch.Tensor) or probs.shape != probs_original.shape:
            shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs)
            raise ValueError(f"probs_squeezed[{j}]: expected shape {tuple(probs_original.shape)}, got {shape}")
    distances = torch.stack([(probs_original - probs).abs().sum(dim=1) for probs in probs_squeezed])  # (J, B)
    return distances.amax(dim=0)
