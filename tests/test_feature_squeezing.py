"""Feature Squeezing's squeezers and score against independent references: the NumPy bit-depth formula (``np.rint``),
``scipy.ndimage.median_filter`` (mode 'reflect'), OpenCV's ``fastNlMeansDenoisingColored`` called directly, and a
plain loop for the max-L1 score. Comparisons are exact unless a tolerance is stated.

The detector (:class:`FeatureSqueezing`) is checked on a tiny random float64 convnet (16 x 16 images, not saturated,
so scores and gradients are far from zero) against a by-hand computation of the score, the straight-through gradient
against one taken through leaf tensors standing for the squeezed images (the toy face classifier of ``tests/toy.py``
takes too long to train for these tests)."""

from __future__ import annotations

import math
import re
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from scipy import ndimage
from torch import nn

from ami_lightning.detectors.base import DetectorOutput, create_detector
from ami_lightning.detectors.feature_squeezing import (
    FeatureSqueezing,
    bit_depth,
    max_l1_score,
    median_filter,
    non_local_means,
    parse_squeezer,
    squeeze,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "detector"


def _pixels(shape: tuple[int, ...], seed: int, integer: bool = False, dtype: torch.dtype = torch.float32):
    """Random pixels in [0, 255]: uniform floats, or integer values (many ties) when ``integer``."""
    generator = torch.Generator().manual_seed(seed)
    if integer:
        return torch.randint(0, 256, shape, generator=generator).to(dtype)
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 255).to(dtype)


def _numpy_bit_depth(x: np.ndarray, bits: int) -> np.ndarray:
    """EvadeML-Zoo's ``reduce_precision_py`` on x / 255, scaled back to [0, 255] (in x's dtype)."""
    levels = 2**bits - 1
    return np.rint(x / 255 * levels) / levels * 255


# ---------------------------------------------------------------------------------------------------- bit depth


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bits", range(1, 9))
def test_bit_depth_matches_numpy(bits: int, dtype: torch.dtype) -> None:
    x = _pixels((3, 3, 7, 9), seed=bits, dtype=dtype)
    x[0, 0, 0, :4] = torch.tensor([0.0, 255.0, 127.5, 0.5], dtype=dtype)
    out = bit_depth(x, bits)
    assert out.shape == x.shape and out.dtype == dtype
    np.testing.assert_array_equal(out.numpy(), _numpy_bit_depth(x.numpy(), bits))
    # at most 2**bits distinct values, each within half a step of the input
    assert out.unique().numel() <= 2**bits
    assert (out - x).abs().max() <= 255 / (2**bits - 1) / 2 + 1e-4


@pytest.mark.parametrize("bits", range(1, 9))
def test_bit_depth_edges_and_integer_grid(bits: int) -> None:
    grid = torch.arange(256, dtype=torch.float64).view(1, 1, 16, 16)
    out = bit_depth(grid, bits)
    np.testing.assert_array_equal(out.numpy(), _numpy_bit_depth(grid.numpy(), bits))
    assert out[0, 0, 0, 0] == 0 and out[0, 0, -1, -1] == 255  # the end points are fixed
    if bits == 8:
        torch.testing.assert_close(out, grid, rtol=0, atol=1e-9)  # 8 bits keeps integer pixels


@pytest.mark.parametrize("bits", range(1, 9))
def test_bit_depth_rounds_exact_halves_to_even(bits: int) -> None:
    """Where x / 255 * (2**b - 1) is exactly k + 1/2 (checked in float64), the result is the even level, as np.rint
    gives, not the level above, as round-half-up would."""
    levels = 2**bits - 1
    k = np.arange(levels, dtype=np.float64)
    x = 255 * (k + 0.5) / levels
    exact = x / 255 * levels == k + 0.5
    if bits == 1:
        assert exact.all() and x[0] == 127.5  # 127.5 -> 0, not 255
    assert exact.sum() >= 1
    x, k = x[exact], k[exact]
    out = bit_depth(torch.from_numpy(x).view(1, 1, 1, -1), bits).view(-1).numpy()
    expected_level = np.where(k % 2 == 0, k, k + 1)
    np.testing.assert_array_equal(out, expected_level / levels * 255)
    np.testing.assert_array_equal(out, _numpy_bit_depth(x, bits))
    half_up = np.floor(x / 255 * levels + 0.5) / levels * 255
    assert (out != half_up).any()  # the test tells the two rules apart


# ---------------------------------------------------------------------------------------------------- median


@pytest.mark.parametrize("integer", [True, False], ids=["integer", "float"])
@pytest.mark.parametrize("hw", [(7, 9), (5, 5), (8, 6), (1, 1), (2, 3)])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_median_filter_matches_scipy(size: int, hw: tuple[int, int], integer: bool) -> None:
    x = _pixels((3, 3, *hw), seed=10 * size + hw[0], integer=integer)
    out = median_filter(x, size)
    assert out.shape == x.shape and out.dtype == x.dtype
    array = x.numpy()
    for b in range(array.shape[0]):
        expected = ndimage.median_filter(array[b], size=(1, size, size), mode="reflect")
        np.testing.assert_array_equal(out[b].numpy(), expected)
        for c in range(array.shape[1]):  # one channel at a time as well
            np.testing.assert_array_equal(
                out[b, c].numpy(), ndimage.median_filter(array[b, c], size=(size, size), mode="reflect")
            )


@pytest.mark.parametrize("size", [2, 3, 4])
def test_median_filter_matches_evademl_call_on_nhwc(size: int) -> None:
    """EvadeML-Zoo's ``median_filter_py``: ``ndimage.median_filter(x, size=(1, w, h, 1), mode='reflect')`` on NHWC."""
    x = _pixels((4, 3, 11, 13), seed=size, dtype=torch.float64)
    nhwc = x.permute(0, 2, 3, 1).numpy()
    expected = ndimage.median_filter(nhwc, size=(1, size, size, 1), mode="reflect")
    np.testing.assert_array_equal(median_filter(x, size).permute(0, 2, 3, 1).numpy(), expected)


def test_median_filter_even_window_alignment_and_upper_median_by_hand() -> None:
    """2 x 2 window at (i, j) covers rows i-1..i and columns j-1..j, index -1 reflects to 0, the upper median wins:
    (0,0): {0,0,0,0} -> 0; (0,1): {0,1,0,1} -> 1; (1,0): {0,0,2,2} -> 2; (1,1): {0,1,2,3} -> 2 (not 1.5, not 1)."""
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    assert median_filter(x, 2).view(2, 2).tolist() == [[0.0, 1.0], [2.0, 2.0]]
    # 4 x 4 on a ramp row: window at column j covers j-2..j+1, the median is rank 8 of 16
    ramp = torch.arange(10, dtype=torch.float64).expand(4, 10).reshape(1, 1, 4, 10)
    row = median_filter(ramp, 4)[0, 0, 0].tolist()
    reflected = [abs(j) - (j < 0) if j < 10 else 19 - j for j in range(-2, 12)]  # d c b a | a b c d, by hand
    assert row == [float(sorted(reflected[j : j + 4])[2]) for j in range(10)]


def test_median_filter_keeps_constant_and_removes_salt() -> None:
    x = torch.full((2, 3, 9, 9), 100.0)
    torch.testing.assert_close(median_filter(x, 3), x, rtol=0, atol=0)
    x[:, :, 4, 4] = 255.0
    torch.testing.assert_close(median_filter(x, 3), torch.full_like(x, 100.0), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- non-local means


def _opencv_nlm(x: torch.Tensor, search: int, patch: int, strength: float, swap: bool = True) -> np.ndarray:
    """Reference: uint8 (np.rint, clip), RGB -> BGR (``swap``; without it the RGB array goes to OpenCV as it is, as
    EvadeML-Zoo's ``non_local_means_color_py`` does), OpenCV, back; returns (B, 3, H, W) uint8."""
    rgb = np.clip(np.rint(x.permute(0, 2, 3, 1).numpy()), 0, 255).astype(np.uint8)
    order = slice(None, None, -1) if swap else slice(None)
    out = []
    for image in rgb:
        denoised = cv2.fastNlMeansDenoisingColored(
            np.ascontiguousarray(image[:, :, order]), None, h=strength, hColor=strength, templateWindowSize=patch,
            searchWindowSize=search,
        )
        out.append(denoised[:, :, order])
    return np.stack(out).transpose(0, 3, 1, 2)


def _colourful(batch: int, height: int, width: int) -> torch.Tensor:
    """Smooth, strongly coloured images (different ramps per channel) in [0, 255], float64."""
    rows = torch.linspace(0, 1, height, dtype=torch.float64).view(-1, 1)
    cols = torch.linspace(0, 1, width, dtype=torch.float64).view(1, -1)
    base = torch.stack(
        [
            40 + 170 * rows * cols.expand(height, -1),
            200 - 150 * cols.expand(height, -1),
            60 + 120 * rows.expand(-1, width),
        ]
    )
    shift = torch.linspace(-20, 20, batch, dtype=torch.float64).view(-1, 1, 1, 1)
    return base.unsqueeze(0) + shift


@pytest.mark.parametrize(("search", "patch", "strength"), [(11, 3, 4.0), (13, 3, 2.0), (5, 5, 10.0)])
def test_non_local_means_matches_opencv(search: int, patch: int, strength: float) -> None:
    generator = torch.Generator().manual_seed(search)
    x = _colourful(2, 21, 19) + 12 * torch.randn(2, 3, 21, 19, generator=generator, dtype=torch.float64)
    x[0, 0, 0, :4] = torch.tensor([-3.0, 260.0, 126.5, 0.5])  # clipped; halves round to even: 126.5 -> 126, 0.5 -> 0
    for dtype in (torch.float32, torch.float64):
        out = non_local_means(x.to(dtype), search_window=search, patch_size=patch, strength=strength)
        assert out.shape == x.shape and out.dtype == dtype
        np.testing.assert_array_equal(out.numpy(), _opencv_nlm(x.to(dtype), search, patch, strength).astype(np.float64))
    # the RGB -> BGR swap matters on coloured images: without it OpenCV gives another result
    rgb = np.clip(np.rint(x.permute(0, 2, 3, 1).numpy()), 0, 255).astype(np.uint8)
    unswapped = np.stack(
        [cv2.fastNlMeansDenoisingColored(image, None, strength, strength, patch, search) for image in rgb]
    ).transpose(0, 3, 1, 2)
    assert not np.array_equal(out.numpy(), unswapped.astype(np.float64))


def test_non_local_means_default_is_evademl_11_3_4() -> None:
    x = _colourful(1, 15, 17) + 8 * torch.randn(
        1, 3, 15, 17, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    expected = _opencv_nlm(x, search=11, patch=3, strength=4.0).astype(np.float64)
    for out in (non_local_means(x), squeeze(x, "nlm_11_3_4"), squeeze(x, "non_local_means_color_11_3_4")):
        np.testing.assert_array_equal(out.numpy(), expected)


def test_non_local_means_reduces_gaussian_noise_on_a_smooth_image() -> None:
    clean = torch.round(_colourful(2, 48, 40))
    noisy = clean + 6 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    denoised = non_local_means(noisy, 11, 3, 4)
    mse_noisy = ((noisy.round().clamp(0, 255) - clean) ** 2).mean()
    mse_denoised = ((denoised - clean) ** 2).mean()
    assert mse_denoised < 0.5 * mse_noisy, (float(mse_denoised), float(mse_noisy))


# ---------------------------------------------------------------------------------------------------- dispatch


def test_squeeze_dispatches_names() -> None:
    x = _pixels((2, 3, 9, 7), seed=3)
    np.testing.assert_array_equal(squeeze(x, "bit_depth_5").numpy(), bit_depth(x, 5).numpy())
    for name, size in [("median_2x2", 2), ("median_4x4", 4), ("median_3x3", 3), ("median_filter_2_2", 2)]:
        np.testing.assert_array_equal(squeeze(x, name).numpy(), median_filter(x, size).numpy())
    np.testing.assert_array_equal(squeeze(x, "nlm_13_3_2.5").numpy(), non_local_means(x, 13, 3, 2.5).numpy())


@pytest.mark.parametrize(
    "name",
    [
        "",
        "foo",
        "bit_depth",
        "bit_depth_",
        "bit_depth_x",
        "median_2",
        "median_2x",
        "nlm_11_3",
        "nlm_11_3_4_5",
        " bit_depth_5",
        "bit_depth_5 ",
        "BIT_DEPTH_5",
        "median_2x2_extra",
    ],
)
def test_squeeze_rejects_unknown_names_listing_forms(name: str) -> None:
    with pytest.raises(ValueError, match=r"unknown squeezer name .*bit_depth_<bits>.*median_<s>x<s>.*nlm_<search>"):
        squeeze(_pixels((1, 3, 4, 4), seed=0), name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bit_depth_0", "bits must be"),
        ("bit_depth_9", "bits must be"),
        ("median_2x3", "square"),
        ("median_0x0", "size must be"),
        ("nlm_10_3_4", "search_window must be an odd"),
        ("nlm_11_4_4", "patch_size must be an odd"),
        ("nlm_11_3_0", "strength must be a positive number"),
    ],
)
def test_squeeze_rejects_bad_parameters(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        squeeze(_pixels((1, 3, 5, 5), seed=0), name)


@pytest.mark.parametrize(
    "function",
    [lambda x: bit_depth(x, 4), lambda x: median_filter(x, 2), non_local_means],
    ids=["bit_depth", "median", "nlm"],
)
def test_squeezers_reject_bad_shapes_and_dtypes(function) -> None:
    for shape in [(3, 8, 8), (1, 1, 3, 8, 8), (0, 3, 8, 8), (1, 3, 0, 8)]:
        with pytest.raises(ValueError, match=r"\(B, C, H, W\)|empty"):
            function(torch.zeros(shape))
    with pytest.raises(TypeError, match="floating-point"):
        function(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        function(np.zeros((1, 3, 8, 8), dtype=np.float32))


def test_non_local_means_needs_three_channels() -> None:
    with pytest.raises(ValueError, match="expected 3 channels"):
        non_local_means(torch.zeros(1, 1, 8, 8))


# ---------------------------------------------------------------------------------------------------- score


@pytest.mark.parametrize("squeezers", [1, 3])
def test_max_l1_score_matches_loop(squeezers: int) -> None:
    generator = torch.Generator().manual_seed(squeezers)
    original = torch.randn(5, 7, generator=generator, dtype=torch.float64).softmax(dim=1)
    squeezed = [torch.randn(5, 7, generator=generator, dtype=torch.float64).softmax(dim=1) for _ in range(squeezers)]
    score = max_l1_score(original, squeezed)
    assert score.shape == (5,) and score.dtype == torch.float64
    expected = [
        max(sum(abs(float(original[b, k]) - float(q[b, k])) for k in range(7)) for q in squeezed) for b in range(5)
    ]
    np.testing.assert_allclose(score.numpy(), expected, rtol=0, atol=1e-12)
    assert max_l1_score(original, [original]).eq(0).all()
    assert (score >= 0).all() and (score <= 2).all()


def test_max_l1_score_rejects_bad_inputs() -> None:
    p = torch.full((4, 5), 0.2)
    with pytest.raises(ValueError, match=r"probs_original: expected a \(B, K\)"):
        max_l1_score(p.view(-1), [p.view(-1)])
    with pytest.raises(ValueError, match="non-empty list"):
        max_l1_score(p, [])
    with pytest.raises(ValueError, match="non-empty list"):
        max_l1_score(p, p)
    with pytest.raises(ValueError, match=r"probs_squeezed\[1\]: expected shape \(4, 5\)"):
        max_l1_score(p, [p, p[:, :4]])


# ---------------------------------------------------------------------------------------------------- parsing


def test_parse_squeezer_returns_the_squeezer_without_running_it() -> None:
    cases = {
        "bit_depth_5": (bit_depth, {"bits": 5}),
        "median_4x4": (median_filter, {"size": 4}),
        "median_filter_2_2": (median_filter, {"size": 2}),
        "nlm_11_3_4": (non_local_means, {"search_window": 11, "patch_size": 3, "strength": 4.0}),
        "non_local_means_color_13_5_2.5": (non_local_means, {"search_window": 13, "patch_size": 5, "strength": 2.5}),
    }
    for name, (function, keywords) in cases.items():
        squeezer = parse_squeezer(name)
        assert isinstance(squeezer, partial) and squeezer.func is function and squeezer.keywords == keywords
    with pytest.raises(ValueError, match=r"squeezer 'bit_depth_9': bits must be"):
        parse_squeezer("bit_depth_9")
    with pytest.raises(ValueError, match="unknown squeezer name 'median'"):
        parse_squeezer("median")


# ---------------------------------------------------------------------------------------------------- detector


class _Pixels(nn.Module):
    """Pixels in [0, 255] to roughly [-2, 2]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / 64 - 2


class _Counting(nn.Module):
    """A model that counts its forward calls and the images it has seen."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def _tiny_model(seed: int = 0) -> _Counting:
    """A random float64 convnet on (B, 3, 16, 16) pixels in [0, 255] -> 5 logits, scaled so that its softmax is
    neither flat nor saturated; every layer works per sample."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        _Pixels(), nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.AvgPool2d(4), nn.Flatten(), nn.Linear(96, 5)
    )
    with torch.no_grad():
        net[-1].weight.mul_(6)
    return _Counting(net.double().eval())


def _images(batch: int = 6, seed: int = 0) -> torch.Tensor:
    """Noisy coloured (B, 3, 16, 16) float64 pixels, clipped to [0, 255]."""
    noise = 15 * torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (_colourful(batch, 16, 16) + noise).clamp(0, 255)


def _squeezed_by_hand(x: torch.Tensor, name: str, channel_order: str = "rgb") -> torch.Tensor:
    """The squeezed images, from the functions tested above against NumPy / SciPy, and OpenCV called directly (with
    the RGB pixels unswapped for ``channel_order="rgb"``, the published detector)."""
    if name == "bit_depth_5":
        return bit_depth(x, 5)
    if name in ("median_2x2", "median_4x4"):
        return median_filter(x, int(name[-1]))
    assert name == "nlm_11_3_4"
    nlm = _opencv_nlm(x, 11, 3, 4.0, swap=channel_order == "bgr")
    return torch.from_numpy(nlm.astype(np.float64)).to(x.dtype)


def _score_by_hand(model: nn.Module, x: torch.Tensor, names: list[str], channel_order: str = "rgb") -> list[float]:
    """max over squeezers of the L1 distance of softmax outputs, one sample at a time, in plain Python floats."""
    with torch.no_grad():
        p = model(x).softmax(dim=1).tolist()
        qs = [model(_squeezed_by_hand(x, name, channel_order)).softmax(dim=1).tolist() for name in names]
    return [max(sum(abs(a - b) for a, b in zip(p[i], q[i], strict=True)) for q in qs) for i in range(len(p))]


DEFAULT = ["bit_depth_5", "median_2x2", "nlm_11_3_4"]
FACE = ["bit_depth_5", "median_4x4", "nlm_11_3_4"]


@pytest.mark.parametrize("names", [DEFAULT, FACE, ["nlm_11_3_4"], ["median_4x4", "bit_depth_5"]])
def test_detector_score_matches_by_hand_computation(names: list[str]) -> None:
    model, x = _tiny_model(), _images()
    detector = FeatureSqueezing(model, squeezers=names)  # the published channel order: RGB handed to OpenCV as it is
    expected = _score_by_hand(model, x, names)
    model.calls = 0
    score = detector.score(x)
    assert model.calls == len(names) + 1
    assert score.shape == (6,) and score.dtype == torch.float64
    np.testing.assert_allclose(score.detach().numpy(), expected, rtol=0, atol=1e-12)
    assert min(expected) > 1e-3 and max(expected) < 2  # not a trivial comparison
    # the plain logits, when given, are used as they are (not recomputed) and give the same score
    logits = model(x)
    model.calls = 0
    torch.testing.assert_close(detector.score(x, logits), score, rtol=0, atol=0)
    assert model.calls == len(names)


@pytest.mark.parametrize("backend", ["opencv", "torch"])
def test_detector_channel_order_is_the_published_one_unless_asked(backend: str) -> None:
    """Default: EvadeML-Zoo's unswapped RGB (its score differs from the swapped one on coloured images);
    channel_order="bgr" gives OpenCV's documented order; both NLM backends give the same scores."""
    model, x = _tiny_model(), _images()
    published = FeatureSqueezing(model, squeezers=["nlm_11_3_4"], nlm_backend=backend).score(x).detach().numpy()
    swapped = FeatureSqueezing(model, squeezers=["nlm_11_3_4"], channel_order="bgr",
                               nlm_backend=backend).score(x).detach().numpy()
    np.testing.assert_allclose(published, _score_by_hand(model, x, ["nlm_11_3_4"], "rgb"), rtol=0, atol=1e-12)
    np.testing.assert_allclose(swapped, _score_by_hand(model, x, ["nlm_11_3_4"], "bgr"), rtol=0, atol=1e-12)
    assert np.abs(published - swapped).max() > 1e-4


def test_detector_refuses_unknown_channel_order_and_backend() -> None:
    problems = FeatureSqueezing.check_params({"channel_order": "grb", "nlm_backend": "cuda"})
    assert len(problems) == 2
    assert problems[0].startswith("channel_order='grb': expected one of bgr, rgb")
    assert problems[1].startswith("nlm_backend='cuda': expected null")
    with pytest.raises(ValueError, match="channel_order='grb'"):
        FeatureSqueezing(_tiny_model(), channel_order="grb")


def test_detector_calibration_threshold_and_flags() -> None:
    model, x = _tiny_model(), _images(12)
    detector = create_detector("feature_squeezing", model)
    assert detector.needs_calibration and detector.gradient == "straight-through"
    assert detector.name == detector.kind == "feature_squeezing"
    with pytest.raises(RuntimeError, match=r"feature_squeezing is not calibrated: .*calibrate\(benign_scores\) first"):
        detector(x)
    with pytest.raises(ValueError, match="nothing to calibrate on"):
        detector.calibrate(torch.empty(0))
    assert detector.parameters_dict() == {"squeezers": DEFAULT, "fpr": 0.05, "channel_order": "rgb",
                                          "threshold": None}
    # distinct random scores: exactly floor(0.05 N) above the threshold
    for n in (1, 19, 20, 103, 1000):
        benign = torch.rand(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64) * 2
        detector.calibrate(benign)
        assert int((benign > detector.threshold).sum()) == math.floor(0.05 * n)
        detector.calibrate(benign.float())  # float32 scores compare in float64
        assert int((benign.float().double() > detector.threshold).sum()) == math.floor(0.05 * n)
    # ties: never more than floor(0.05 N) above
    tied = torch.tensor([0.5] * 30 + [0.1] * 10)
    detector.calibrate(tied)
    assert int((tied.double() > detector.threshold).sum()) == 0
    # on the detector's own scores, then flagged == score > threshold (float64) in one pass
    benign = detector.score(x).detach()
    detector.calibrate(benign)
    assert detector.threshold == float(torch.sort(benign, descending=True).values[0])  # floor(0.05 * 12) == 0
    assert not detector(x).flagged.any()
    detector = create_detector("feature_squeezing", model, fpr=0.25)
    detector.calibrate(benign)  # floor(0.25 * 12) == 3 above
    assert detector.threshold == float(torch.sort(benign, descending=True).values[3])
    logits = model(x)
    model.calls = 0
    out = detector(x, logits)
    assert isinstance(out, DetectorOutput) and out.logits is logits and model.calls == 3
    assert out.flagged.dtype == torch.bool and out.flagged.shape == (12,)
    torch.testing.assert_close(out.flagged, out.score.detach().double() > detector.threshold, rtol=0, atol=0)
    assert int(out.flagged.sum()) == 3
    score, flagged = detector.evaluate(x, logits)
    torch.testing.assert_close(score, out.score, rtol=0, atol=0)
    assert detector.parameters_dict()["threshold"] == detector.threshold
    assert isinstance(detector.parameters_dict()["threshold"], float)
    description = detector.description()
    assert description["type"] == "feature_squeezing" and "[0, 2]" in description["score"]


def test_detector_score_gradient_is_straight_through() -> None:
    """d score / d x equals the gradient of the same expression with each squeezed input a leaf tensor holding the
    squeezed image, summed over the plain input and the squeezed ones (the identity's Jacobian through each
    squeezer)."""
    model, x0 = _tiny_model(), _images(4)
    detector = FeatureSqueezing(model)
    weights = torch.tensor([1.0, -0.5, 2.0, 0.7], dtype=torch.float64)
    x = x0.clone().requires_grad_()
    (grad,) = torch.autograd.grad((detector.score(x) * weights).sum(), x)

    x_ref = x0.clone().requires_grad_()
    leaves = [_squeezed_by_hand(x0, name).requires_grad_() for name in DEFAULT]
    score_ref = max_l1_score(model(x_ref).softmax(dim=1), [model(leaf).softmax(dim=1) for leaf in leaves])
    grads = torch.autograd.grad((score_ref * weights).sum(), [x_ref, *leaves])
    expected = grads[0] + sum(grads[1:])
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)
    assert grad.abs().max() > 1e-6 and torch.isfinite(grad).all()
    # the squeezed branches alone carry a gradient when the plain logits come without one
    x = x0.clone().requires_grad_()
    with torch.no_grad():
        logits = model(x0)
    (grad_squeezed,) = torch.autograd.grad((detector.score(x, logits) * weights).sum(), x)
    torch.testing.assert_close(grad_squeezed, sum(grads[1:]), rtol=1e-10, atol=1e-14)


def test_detector_evasion_loss_matches_by_hand_and_its_gradient() -> None:
    model, x0 = _tiny_model(), _images(4)
    detector = FeatureSqueezing(model)
    targets = torch.tensor([0, 3, 1, 4])
    x = x0.clone().requires_grad_()
    loss = detector.evasion_loss(x, targets)
    assert loss.shape == (4,)
    leaves = [_squeezed_by_hand(x0, name).requires_grad_() for name in DEFAULT]
    expected = sum(F.cross_entropy(model(leaf), targets, reduction="none") for leaf in leaves) / 3
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    torch.testing.assert_close(grad, sum(torch.autograd.grad(expected.sum(), leaves)), rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="no useful exact gradient.*straight-through \\(BPDA\\)"):
        detector.evasion_loss(x, targets, exact=True)


def test_detector_evasion_loss_decreases_after_a_step_against_its_gradient_sign() -> None:
    """One signed-gradient step of 2 pixels towards the least likely class lowers the (really squeezed) loss."""
    model, images = _tiny_model(), _images(6, seed=3)
    detector = FeatureSqueezing(model, squeezers=FACE)
    with torch.no_grad():
        targets = model(images).argmin(dim=1)
    x = images.clone().requires_grad_()
    loss = detector.evasion_loss(x, targets)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(grad).all() and (grad.flatten(1).abs().amax(dim=1) > 0).all()
    stepped = (images - 2 * grad.sign()).clamp(0, 255)
    with torch.no_grad():
        after = detector.evasion_loss(stepped, targets)
    assert (after < loss.detach()).all(), (after.tolist(), loss.tolist())
    assert after.mean() < loss.detach().mean() - 0.05, (float(after.mean()), float(loss.mean()))


def test_detector_outputs_are_batch_independent() -> None:
    model, x = _tiny_model(), _images(5)
    detector = FeatureSqueezing(model, squeezers=FACE)
    targets = torch.tensor([0, 1, 2, 3, 4])
    x_batch = x.clone().requires_grad_()
    score = detector.score(x_batch)
    (grad,) = torch.autograd.grad(score.sum(), x_batch)
    loss = detector.evasion_loss(x, targets)
    ranked = torch.sort(score.detach()).values
    detector.calibrate(((ranked[2] + ranked[3]) / 2).view(1))  # a threshold between scores: flags the top two
    _, flagged = detector.evaluate(x, model(x))
    for i in range(5):
        one = x[i : i + 1].clone().requires_grad_()
        score_one = detector.score(one)
        (grad_one,) = torch.autograd.grad(score_one.sum(), one)
        torch.testing.assert_close(score_one, score[i : i + 1], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad_one, grad[i : i + 1], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(detector.evasion_loss(x[i : i + 1], targets[i : i + 1]), loss[i : i + 1])
        assert detector.evaluate(x[i : i + 1], model(x[i : i + 1]))[1].item() == flagged[i].item()
    assert int(flagged.sum()) == 2


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"squeezers": ["median_3x2"]}, r"squeezers=\['median_3x2'\]: squeezer 'median_3x2': only square"),
        ({"squeezers": ["bit_depth_5", "foo"]}, r"squeezers=\['bit_depth_5', 'foo'\]: unknown squeezer name 'foo'"),
        ({"squeezers": ["nlm_10_3_4"]}, r"squeezers=\['nlm_10_3_4'\]: .*search_window must be an odd"),
        ({"squeezers": []}, r"squeezers=\[\]: expected at least one squeezer \(bit_depth_<bits>"),
        ({"squeezers": "bit_depth_5"}, r"squeezers='bit_depth_5': expected a list of squeezer names"),
        ({"squeezers": ["bit_depth_5", "bit_depth_5"]}, r"duplicate squeezers 'bit_depth_5'; each at most once"),
        ({"squeezers": ["median_2x2", "median_filter_2_2"]}, r"'median_filter_2_2' \(same as 'median_2x2'\)"),
        ({"fpr": 0.0}, r"fpr=0.0: expected a fraction in \(0, 1\)"),
        ({"fpr": 1.0}, r"fpr=1.0: expected a fraction in \(0, 1\)"),
        ({"fpr": 5}, r"fpr=5: expected a fraction in \(0, 1\)"),
        ({"fpr": float("nan")}, r"fpr=nan: expected a fraction"),
        ({"fpr": "0.05"}, r"fpr='0.05': expected a fraction"),
        ({"fpr": True}, r"fpr=True: expected a fraction"),
    ],
)
def test_detector_rejects_bad_parameters(params: dict, message: str) -> None:
    problems = FeatureSqueezing.check_params(params)
    assert len(problems) == 1 and re.search(message, problems[0]), problems
    with pytest.raises(ValueError, match=message):
        FeatureSqueezing(_tiny_model(), **params)
    with pytest.raises(ValueError, match=message):
        create_detector("feature_squeezing", _tiny_model(), **params)


def test_detector_check_params_accepts_good_ones_and_lists_every_problem() -> None:
    for params in ({}, {"squeezers": FACE, "fpr": 0.01}, {"squeezers": ("median_filter_3_3",), "fpr": 0.5}):
        assert FeatureSqueezing.check_params(params) == []
    problems = FeatureSqueezing.check_params({"squeezers": ["foo", "bit_depth_0"], "fpr": 2, "extra": 1})
    assert len(problems) == 4 and problems[0].startswith("unknown parameters ['extra']")
    with pytest.raises(ValueError, match="foo.*bit_depth_0.*fpr=2"):
        FeatureSqueezing(_tiny_model(), squeezers=["foo", "bit_depth_0"], fpr=2)


def test_create_detector_builds_and_names_bad_keywords() -> None:
    detector = create_detector("feature_squeezing", _tiny_model(), name="fs", squeezers=["median_4x4"], fpr=0.1)
    assert isinstance(detector, FeatureSqueezing) and detector.name == "fs" and detector.kind == "feature_squeezing"
    assert detector.parameters_dict() == {"squeezers": ["median_4x4"], "fpr": 0.1, "channel_order": "rgb",
                                          "threshold": None}
    with pytest.raises(TypeError, match="detector 'feature_squeezing'.*squeezer"):
        create_detector("feature_squeezing", _tiny_model(), squeezer=["median_4x4"])


@pytest.mark.parametrize(("file", "squeezers"), [("feature_squeezing", DEFAULT), ("feature_squeezing_face", FACE)])
def test_detector_configs_load_and_construct(file: str, squeezers: list[str]) -> None:
    path = CONF / f"{file}.yaml"
    assert path.read_text().splitlines()[0] == f"# @package detectors.{file}"
    config = OmegaConf.load(path)
    assert config.type == "feature_squeezing"
    assert OmegaConf.to_container(config.params) == {"squeezers": squeezers, "fpr": 0.05, "channel_order": "rgb",
                                                     "nlm_backend": None}
    assert FeatureSqueezing.check_params(config.params) == []
    for params in (config.params, OmegaConf.to_container(config.params)):
        detector = create_detector(config.type, _tiny_model(), name=file, **params)
        assert detector.parameters_dict() == {"squeezers": squeezers, "fpr": 0.05, "channel_order": "rgb",
                                              "threshold": None}
    assert detector.score(_images(2)).shape == (2,)
