"""Non-local means (ami_lightning.detectors.nlm): the torch backend equals OpenCV's fastNlMeansDenoisingColored bit
for bit, the OpenCV backend's thread pool equals a per-image loop, and the input contract (uint8 rounding, channel
order) is that of feature_squeezing.non_local_means."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ami_lightning.data.images import load_image
from ami_lightning.data.shipped import face_files
from ami_lightning.detectors.nlm import _reflect101_index, lab_tables, non_local_means, to_uint8

PARAMETERS = [(11, 3, 4.0), (7, 5, 10.0)]  # (search window, patch, strength): EvadeML-Zoo's 11-3-4 and another set


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The torch backend runs many small integer ops; on a busy 2-core machine one intra-op thread is far faster."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def opencv_reference(x: torch.Tensor, search: int, patch: int, strength: float, swap: bool = True) -> np.ndarray:
    """Independent reference: np.rint and clip to uint8, RGB -> BGR when ``swap``, cv2 per image, back; (N, 3, H, W)
    uint8."""
    rgb = np.clip(np.rint(x.permute(0, 2, 3, 1).numpy()), 0, 255).astype(np.uint8)
    order = [2, 1, 0] if swap else [0, 1, 2]
    out = [
        cv2.fastNlMeansDenoisingColored(
            np.ascontiguousarray(image[:, :, order]), None, strength, strength, patch, search
        )[:, :, order]
        for image in rgb
    ]
    return np.stack(out).transpose(0, 3, 1, 2)


def assert_backends_equal_opencv(x: torch.Tensor, search: int, patch: int, strength: float) -> None:
    expected = opencv_reference(x, search, patch, strength)
    for backend in ("torch", "opencv"):
        out = non_local_means(x, search, patch, strength, backend=backend)
        assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
        differing = (out.numpy() != expected).mean()
        assert differing == 0, (
            f"{backend}: {differing:.4%} of the values differ, by {abs(out.numpy() - expected).max()}"
        )


def faces(count: int) -> torch.Tensor:
    """The first ``count`` shipped faces, (count, 3, 224, 224) float64 in [0, 255]."""
    return torch.stack([load_image(path) for path in face_files()[:count]]).double()


# ---------------------------------------------------------------------------------------------------- equal to OpenCV


@pytest.mark.parametrize(("search", "patch", "strength"), PARAMETERS)
def test_torch_equals_opencv_on_shipped_faces(search: int, patch: int, strength: float) -> None:
    x = faces(2)
    assert_backends_equal_opencv(x, search, patch, strength)  # at their size, 224 x 224
    # resized (bilinear, antialiased): non-integer pixels, and another (non-square) size
    assert_backends_equal_opencv(
        F.interpolate(x, size=(97, 130), mode="bilinear", antialias=True), search, patch, strength
    )


@pytest.mark.parametrize(("search", "patch", "strength"), [*PARAMETERS, (5, 1, 2.5), (3, 7, 33.3), (21, 3, 0.7)])
def test_torch_equals_opencv_on_random_images_of_any_size(search: int, patch: int, strength: float) -> None:
    """Small and non-square images: the border (reflect-101, reflected again where it is wider than the image)
    decides most pixels."""
    generator = torch.Generator().manual_seed(search * 100 + patch)
    for height, width in [(7, 9), (1, 1), (1, 6), (5, 1), (2, 3), (16, 16), (31, 20)]:
        x = torch.randint(0, 256, (2, 3, height, width), generator=generator).double()
        assert_backends_equal_opencv(x, search, patch, strength)


@pytest.mark.parametrize(("search", "patch", "strength"), PARAMETERS)
def test_torch_equals_opencv_on_adversarial_floats(search: int, patch: int, strength: float) -> None:
    """Non-integer pixels (a face plus small perturbations, out of range and exact halves included) go through the
    same uint8 rounding (half to even) and clipping in both backends."""
    generator = torch.Generator().manual_seed(7)
    x = F.interpolate(faces(1), size=(48, 40), mode="bilinear", antialias=True)
    x = x + 6 * torch.rand(2, *x.shape[1:], generator=generator, dtype=torch.float64) - 3
    x[0, 0, 0, :6] = torch.tensor([-3.0, 260.0, 126.5, 127.5, 0.5, 254.5])
    for dtype in (torch.float32, torch.float64):
        assert_backends_equal_opencv(x.to(dtype), search, patch, strength)


@pytest.mark.slow
@pytest.mark.parametrize(("search", "patch", "strength"), [*PARAMETERS, (13, 3, 2.0), (9, 7, 6.0)])
def test_torch_equals_opencv_on_many_faces_and_sizes(search: int, patch: int, strength: float) -> None:
    x = faces(24)
    assert_backends_equal_opencv(x, search, patch, strength)
    for size in [(150, 150), (224, 160), (33, 47)]:
        assert_backends_equal_opencv(
            F.interpolate(x[:8], size=size, mode="bilinear", antialias=True), search, patch, strength
        )
    generator = torch.Generator().manual_seed(search)
    for height, width in [(3, 3), (4, 11), (12, 5), (64, 48), (101, 77)]:
        assert_backends_equal_opencv(
            torch.rand(3, 3, height, width, generator=generator).double() * 270 - 7, search, patch, strength
        )


@pytest.mark.gpu
def test_torch_backend_on_cuda_equals_opencv() -> None:
    x = faces(4)
    generator = torch.Generator().manual_seed(0)
    for images in [
        x,
        F.interpolate(x, size=(150, 120), mode="bilinear", antialias=True),
        torch.randint(0, 256, (4, 3, 7, 9), generator=generator).double(),
    ]:
        images = images.float()  # the reference rounds the same float32 values
        for search, patch, strength in PARAMETERS:
            out = non_local_means(images.cuda(), search, patch, strength)  # CUDA: the torch backend by default
            assert out.device.type == "cuda" and out.dtype == torch.float32
            np.testing.assert_array_equal(out.cpu().numpy(), opencv_reference(images, search, patch, strength))


# ---------------------------------------------------------------------------------------------------- the pieces


def test_reflect101_index_matches_copy_make_border() -> None:
    for n in [1, 2, 3, 7]:
        for pad in [0, 1, 3, 6, 15]:
            line = np.arange(n, dtype=np.uint8).reshape(1, n)
            expected = cv2.copyMakeBorder(line, 0, 0, pad, pad, cv2.BORDER_DEFAULT)[0]
            np.testing.assert_array_equal(_reflect101_index(n, pad, torch.device("cpu")).numpy(), expected)


def test_lab_tables_equal_cvtcolor() -> None:
    to_lab, from_lab = lab_tables()
    assert to_lab.shape == from_lab.shape == (2**24, 3) and to_lab.dtype == torch.uint8
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    channels = image.astype(np.int64)
    index = torch.from_numpy((channels[..., 0] << 16) | (channels[..., 1] << 8) | channels[..., 2])
    np.testing.assert_array_equal(to_lab[index].numpy(), cv2.cvtColor(image, cv2.COLOR_LBGR2Lab))
    np.testing.assert_array_equal(from_lab[index].numpy(), cv2.cvtColor(image, cv2.COLOR_Lab2LBGR))


def test_to_uint8_rounds_half_to_even_and_clips() -> None:
    x = torch.tensor([[-0.6, 0.5, 1.5, 2.5, 126.5, 254.4, 254.5, 255.5, 300.0]], requires_grad=True)
    out = to_uint8(x)
    assert out.dtype == torch.uint8 and not out.requires_grad
    np.testing.assert_array_equal(out.numpy(), np.clip(np.rint(x.detach().numpy()), 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------------- the contract


def test_opencv_backend_thread_pool_equals_per_image_loop() -> None:
    generator = torch.Generator().manual_seed(3)
    x = F.interpolate(faces(3), size=(40, 36), mode="bilinear", antialias=True)
    x = torch.cat([x, torch.rand(3, 3, 40, 36, generator=generator, dtype=torch.float64) * 255])
    for swap, order in [(True, "bgr"), (False, "rgb")]:
        out = non_local_means(x, 11, 3, 4.0, backend="opencv", channel_order=order)
        loop = np.concatenate([opencv_reference(image[None], 11, 3, 4.0, swap=swap) for image in x])
        np.testing.assert_array_equal(out.numpy(), loop)


def test_channel_order_rgb_hands_rgb_to_opencv_unswapped() -> None:
    x = F.interpolate(faces(2), size=(30, 26), mode="bilinear", antialias=True)
    bgr = non_local_means(x, backend="torch")  # today's default: swapped, as OpenCV documents
    rgb = non_local_means(x, backend="torch", channel_order="rgb")
    np.testing.assert_array_equal(bgr.numpy(), opencv_reference(x, 11, 3, 4.0, swap=True))
    np.testing.assert_array_equal(rgb.numpy(), opencv_reference(x, 11, 3, 4.0, swap=False))
    assert not torch.equal(bgr, rgb)  # the Lab conversion is not symmetric in R and B


def test_defaults_are_evademl_11_3_4_with_the_bgr_swap() -> None:
    """Defaults: search 11, patch 3, strength 4, channel_order "bgr" (feature_squeezing's behaviour today), the
    OpenCV backend on the CPU; x's dtype is kept."""
    x = F.interpolate(faces(2), size=(25, 31), mode="bilinear", antialias=True).float()
    out = non_local_means(x)
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), opencv_reference(x, 11, 3, 4.0, swap=True))


def test_output_has_no_gradient() -> None:
    x = (torch.rand(1, 3, 8, 8, dtype=torch.float64) * 255).requires_grad_()
    for backend in ("torch", "opencv"):
        assert not non_local_means(x, backend=backend).requires_grad


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"backend": "cuda"}, ValueError, r"backend must be one of \('opencv', 'torch'\) or None, got 'cuda'"),
        ({"channel_order": "RGB"}, ValueError, r"channel_order must be one of \('bgr', 'rgb'\), got 'RGB'"),
        ({"search_window": 10}, ValueError, "search_window must be an odd"),
        ({"patch_size": 0}, ValueError, "patch_size must be an odd"),
        ({"strength": 0}, ValueError, "strength must be a positive number"),
    ],
)
def test_bad_arguments_fail_naming_them(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        non_local_means(torch.zeros(1, 3, 8, 8), **kwargs)


def test_bad_images_fail() -> None:
    with pytest.raises(ValueError, match="expected 3 channels"):
        non_local_means(torch.zeros(1, 1, 8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        non_local_means(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
