"""Feature Squeezing's squeezers and score against independent references: the NumPy bit-depth formula (``np.rint``),
``scipy.ndimage.median_filter`` (mode 'reflect'), OpenCV's ``fastNlMeansDenoisingColored`` called directly, and a
plain loop for the max-L1 score. Comparisons are exact unless a tolerance is stated."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage

from ami_lightning.detectors.feature_squeezing import (
    bit_depth,
    max_l1_score,
    median_filter,
    non_local_means,
    squeeze,
)


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


def _opencv_nlm(x: torch.Tensor, search: int, patch: int, strength: float) -> np.ndarray:
    """Reference: uint8 (np.rint, clip), RGB -> BGR, OpenCV, BGR -> RGB; returns (B, 3, H, W) uint8."""
    rgb = np.clip(np.rint(x.permute(0, 2, 3, 1).numpy()), 0, 255).astype(np.uint8)
    out = []
    for image in rgb:
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        denoised = cv2.fastNlMeansDenoisingColored(
            bgr, None, h=strength, hColor=strength, templateWindowSize=patch, searchWindowSize=search
        )
        out.append(denoised[:, :, ::-1])
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
