"""Feature Squeezing (Xu, Evans and Qi, NDSS 2018): the squeezers, the detection score and the detector.

The detector compares the classifier's softmax output on an image with its outputs on "squeezed" copies of it
(reduced colour depth, median smoothing, non-local means); the score is the largest L1 distance between them, in
[0, 2], and an image is flagged when its score is above a threshold calibrated to a benign false-positive rate.
The published ImageNet detector (EvadeML-Zoo) uses bit depth 5, a 2 x 2 median and NLM 11-3-4, with the threshold at
5 % FPR on the benign images the model classifies correctly (calibrated on the evaluated benign set itself, as the
paper does): ``conf/detector/feature_squeezing.yaml``. The AmI paper (Tao et al., NeurIPS 2018) compares AmI with
Feature Squeezing on VGG-Face faces; the face variant ``conf/detector/feature_squeezing_face.yaml`` uses a 4 x 4
median instead of 2 x 2 (larger faces, smoother images). For the dlib gallery classifier the "softmax" is the
softmax of the gallery's logits (-10 x the distance to each identity's centroid); the detector only ever applies
``softmax`` to the logits the model returns.

Images are batched tensors ``x`` of shape (B, C, H, W) (C = 3, RGB, for the models of this package), floating point,
pixels in [0, 255]; every squeezer returns a tensor of the same shape, dtype and device, and works on each image on
its own (a sample's result never depends on its batch mates). The semantics follow the authors' code, EvadeML-Zoo
(``utils/squeeze.py`` and ``detections/feature_squeezing.py``), which works on [0, 1]:

* :func:`bit_depth` is ``reduce_precision_py``: ``np.rint(v * (2**bits - 1)) / (2**bits - 1)`` on ``v = x / 255``,
  rounding half to even (``torch.round`` rounds as ``np.rint`` does), then scaled back by 255.
* :func:`median_filter` is ``median_filter_py``: ``scipy.ndimage.median_filter(x, size=(1, s, s, 1), mode='reflect')``,
  with SciPy's window alignment, its 'reflect' boundary and its choice of the upper median for even sizes.
* :func:`non_local_means` is ``non_local_means_color_py``: OpenCV's ``fastNlMeansDenoisingColored`` on uint8 images
  (:mod:`ami_lightning.detectors.nlm`: OpenCV itself or its bit-exact batched torch form). EvadeML-Zoo hands its RGB
  arrays to OpenCV unswapped, so OpenCV's colour conversion reads red as blue; :class:`FeatureSqueezing` does the same
  by default (``channel_order="rgb"``, the published detector) and swaps to OpenCV's documented BGR order with
  ``channel_order="bgr"``.
* :func:`max_l1_score` is ``FeatureSqueezingDetector.get_distance`` with ``distance_measure=l1``: the largest L1
  distance between the softmax output on the input and on each squeezed input.

Squeezers are named as in the configs (:data:`SQUEEZER_FORMS`); :func:`parse_squeezer` validates a name and returns
the squeezer without running it, :func:`squeeze` applies one.

None of the squeezers is usefully differentiable (bit depth and the median have zero or sparse gradients, NLM works
on uint8 and breaks the graph), so :class:`FeatureSqueezing` differentiates through them by BPDA
(straight-through): the squeezed input has the squeezed image's value and the identity's gradient with respect to x.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ami_lightning.checks import unknown_keys
from ami_lightning.detectors.base import register_detector
from ami_lightning.detectors.nlm import (
    BACKENDS,
    CHANNEL_ORDERS,
    PIXEL_MAX,
    ChannelOrder,
    check_images,
    check_int,
    non_local_means,
)
from ami_lightning.detectors.thresholded import ThresholdDetector, fpr_problems

__all__ = [
    "SQUEEZER_FORMS",
    "FeatureSqueezing",
    "bit_depth",
    "max_l1_score",
    "median_filter",
    "non_local_means",
    "parse_squeezer",
    "squeeze",
]


def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Reduce colour depth to ``bits`` bits per channel.

    ``x``: (B, C, H, W) float pixels in [0, 255]. Returns the same shape, dtype and device, pixels in [0, 255]:
    ``round(x / 255 * (2**bits - 1)) / (2**bits - 1) * 255``, evaluated in that order in ``x``'s dtype, which is
    EvadeML-Zoo's ``reduce_precision_py`` on ``x / 255`` scaled back by 255. ``torch.round`` rounds half to even,
    exactly as the reference's ``np.rint`` (e.g. with 1 bit, 127.5 -> 0). Values outside
    [0, 255] are not clipped (nor are they in the reference). The gradient is zero almost everywhere: use BPDA.
    """
    check_images(x, "bit_depth")
    check_int(bits, "bits", 1, 8)
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
    check_images(x, "median_filter")
    check_int(size, "size", 1)
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


def parse_squeezer(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The squeezer called ``name`` as a function of x, validated but not run (a :func:`functools.partial` of
    :func:`bit_depth`, :func:`median_filter` or :func:`non_local_means` with its parameters as keywords).

    Names (EvadeML-Zoo's spellings also accepted): ``"bit_depth_5"`` -> ``bit_depth(x, bits=5)``; ``"median_2x2"`` or
    ``"median_filter_2_2"`` -> ``median_filter(x, size=2)``; ``"nlm_11_3_4"`` or ``"non_local_means_color_11_3_4"``
    -> ``non_local_means(x, search_window=11, patch_size=3, strength=4.0)``. Raises ValueError for an unknown name
    (listing :data:`SQUEEZER_FORMS`) or parameters the squeezer does not take (e.g. 9 bits, a 2 x 3 median, an even
    NLM window), naming the squeezer.
    """
    for pattern, kind in _FORMS:
        match = pattern.fullmatch(name) if isinstance(name, str) else None
        if match is None:
            continue
        try:
            if kind == "bit_depth":
                bits = int(match[1])
                check_int(bits, "bits", 1, 8)
                return partial(bit_depth, bits=bits)
            if kind == "median":
                if match[1] != match[2]:
                    raise ValueError("only square median windows are supported")
                size = int(match[1])
                check_int(size, "size", 1)
                return partial(median_filter, size=size)
            search_window, patch_size, strength = int(match[1]), int(match[2]), float(match[3])
            check_int(search_window, "search_window", 1, odd=True)
            check_int(patch_size, "patch_size", 1, odd=True)
            if not strength > 0:
                raise ValueError(f"strength must be a positive number, got {match[3]!r}")
            return partial(non_local_means, search_window=search_window, patch_size=patch_size, strength=strength)
        except ValueError as err:
            raise ValueError(f"squeezer {name!r}: {err}") from None
    raise ValueError(f"unknown squeezer name {name!r}; accepted forms: {'; '.join(SQUEEZER_FORMS)}")


def squeeze(x: torch.Tensor, name: str) -> torch.Tensor:
    """Apply the squeezer called ``name`` (:func:`parse_squeezer`) to ``x`` ((B, C, H, W) float pixels in [0, 255];
    3 channels for NLM). Raises ValueError for a name :func:`parse_squeezer` rejects."""
    return parse_squeezer(name)(x)


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


def _squeezer_key(squeezer: partial) -> tuple[Any, ...]:
    """What identifies a parsed squeezer whatever its spelling (``median_2x2`` == ``median_filter_2_2``)."""
    return squeezer.func.__name__, tuple(sorted(squeezer.keywords.items()))


def _with_nlm_options(
    squeezer: partial, channel_order: ChannelOrder, backend: str | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``squeezer`` with the detector's channel order and backend when it is :func:`non_local_means` (unchanged
    otherwise). The backend never changes the result (both are OpenCV's computation, bit for bit)."""
    if squeezer.func is not non_local_means:
        return squeezer
    return partial(squeezer, channel_order=channel_order, backend=backend)


def _straight_through(x: torch.Tensor, squeezer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """BPDA around ``squeezer``: a tensor with the value of ``squeezer(x)`` (exactly) and the gradient of the identity
    with respect to ``x`` (as ``x + (squeezer(x) - x).detach()``, without its rounding). The squeezer runs under
    ``torch.no_grad()``; without a graph on ``x`` the squeezed image is returned as it is."""
    with torch.no_grad():
        squeezed = squeezer(x.detach())
    if not x.requires_grad:
        return squeezed
    return squeezed + (x - x.detach())  # value: squeezed + 0; d/dx: identity


@register_detector("feature_squeezing")
class FeatureSqueezing(ThresholdDetector):
    """Feature Squeezing (Xu et al., NDSS 2018) on ``model`` (pixels (B, 3, H, W) in [0, 255] -> logits (B, K)).

    ``squeezers``: names (:data:`SQUEEZER_FORMS`, distinct, at least one); the published ImageNet detector's are the
    default. ``fpr``: the benign false-positive rate (fraction in (0, 1)) the threshold is calibrated to.
    ``channel_order``: how NLM hands the RGB pixels to OpenCV's colour conversion (``"rgb"``: unswapped, as the
    published EvadeML-Zoo code; ``"bgr"``: swapped first, as OpenCV documents); ``nlm_backend``: ``"opencv"``,
    ``"torch"`` or None (the faster on the images' device; the result is the same). The score of
    an image is ``max_j |softmax(model(x)) - softmax(model(squeeze_j(x)))|_1``; it is flagged when the score is above
    the threshold :meth:`calibrate` sets (:func:`~ami_lightning.evaluation.thresholds.above`). Gradients go through
    the squeezers straight-through (BPDA). Raises ValueError for bad parameters (:meth:`check_params`).
    """

    score_unit = (
        "the largest L1 distance between the softmax of the classifier's logits on the input and on each squeezed "
        "input; in [0, 2]"
    )
    rule = (
        "flagged when the score is above the threshold that gives `fpr` (5 %) FPR on the benign images the model "
        "classifies correctly (calibrated on the evaluated benign set, as the paper does)"
    )
    gradient = "straight-through"

    def __init__(
        self,
        model: nn.Module,
        squeezers: Sequence[str] = ("bit_depth_5", "median_2x2", "nlm_11_3_4"),
        fpr: float = 0.05,
        channel_order: ChannelOrder = "rgb",
        nlm_backend: str | None = None,
    ) -> None:
        problems = self.check_params({"squeezers": squeezers, "fpr": fpr, "channel_order": channel_order,
                                      "nlm_backend": nlm_backend})
        if problems:
            raise ValueError(f"feature_squeezing: bad parameters: {'; '.join(problems)}")
        super().__init__(model, fpr)
        self.squeezers: tuple[str, ...] = tuple(squeezers)
        self.channel_order: ChannelOrder = channel_order
        self.nlm_backend = nlm_backend
        self._squeeze = [_with_nlm_options(parse_squeezer(name), channel_order, nlm_backend)
                         for name in self.squeezers]

    @staticmethod
    def check_params(params: Mapping[str, Any]) -> list[str]:
        """The problems (strings naming key, value and what is allowed; empty when none) of the parameters
        ``params`` (any of ``squeezers``, ``fpr``; missing keys take their defaults)."""
        problems = unknown_keys(params, ("squeezers", "fpr", "channel_order", "nlm_backend"))
        if params.get("channel_order", "rgb") not in CHANNEL_ORDERS:
            problems.append(f"channel_order={params['channel_order']!r}: expected one of {', '.join(CHANNEL_ORDERS)} "
                            "(rgb: the RGB pixels handed to OpenCV unswapped, as EvadeML-Zoo does; bgr: swapped to "
                            "OpenCV's documented order)")
        if params.get("nlm_backend") not in (None, *BACKENDS):
            problems.append(f"nlm_backend={params['nlm_backend']!r}: expected null (the faster on the images' "
                            f"device) or one of {', '.join(BACKENDS)}")
        if "squeezers" in params:
            names, forms = params["squeezers"], "; ".join(SQUEEZER_FORMS)
            if isinstance(names, str | bytes) or not isinstance(names, Sequence):
                problems.append(f"squeezers={names!r}: expected a list of squeezer names ({forms})")
            elif len(names) == 0:
                problems.append(f"squeezers={list(names)!r}: expected at least one squeezer ({forms})")
            else:
                shown, seen, duplicates = list(names), {}, []
                for name in names:
                    try:
                        key = _squeezer_key(parse_squeezer(name))
                    except ValueError as err:
                        problems.append(f"squeezers={shown!r}: {err}")
                        continue
                    if key in seen:
                        duplicates.append(f"{name!r} (same as {seen[key]!r})" if seen[key] != name else repr(name))
                    else:
                        seen[key] = name
                if duplicates:
                    repeated = ", ".join(duplicates)
                    problems.append(f"squeezers={shown!r}: duplicate squeezers {repeated}; each at most once")
        return [*problems, *fpr_problems(params)]

    def _squeezed_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The straight-through squeezed copies of x, one per squeezer."""
        return [_straight_through(x, squeezer) for squeezer in self._squeeze]

    def score(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) max L1 distance (in [0, 2]) between ``softmax(logits)`` (``logits`` = ``model(x)``, computed when not
        given) and the softmax of the model on each squeezed x; differentiable with respect to x (straight-through
        through the squeezers, and through ``logits`` when they carry a graph)."""
        if logits is None:
            logits = self.model(x)
        probs = logits.softmax(dim=1)
        return max_l1_score(probs, [self.model(s).softmax(dim=1) for s in self._squeezed_inputs(x)])

    def evasion_loss(self, x: torch.Tensor, targets: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """(B,) mean over the squeezers of the model's cross-entropy on the squeezed x towards ``targets`` (B,) long,
        differentiated straight-through (BPDA). ``exact=True`` raises ValueError: the squeezers have no useful
        gradient."""
        if exact:
            raise ValueError(
                f"{self.name}: the squeezers (bit depth, median, NLM) have no useful exact gradient; "
                "use the straight-through (BPDA) loss, exact=False"
            )
        losses = [F.cross_entropy(self.model(s), targets, reduction="none") for s in self._squeezed_inputs(x)]
        return torch.stack(losses).mean(dim=0)

    def parameters_dict(self) -> dict[str, Any]:
        """``{"squeezers": [...], "fpr": float, "channel_order": "rgb" | "bgr", "threshold": float or None (not
        calibrated)}``; the NLM backend is left out (it never changes a result)."""
        return {"squeezers": list(self.squeezers), "fpr": self.fpr, "channel_order": self.channel_order,
                "threshold": self.threshold}
