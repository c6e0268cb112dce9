"""dlib landmarks: plausible points on the base face, whole-image fallback, truncated JPEG."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ami_lightning.data.images import load_image
from ami_lightning.data.shipped import witness_face_files
from ami_lightning.faces.landmarks import N_LANDMARKS, LandmarkDetector, to_hwc_uint8

TRUNCATED = "Wentworth_Miller_6_52.86_131.66_288.91_367.70.jpg"


@pytest.fixture(scope="module")
def detector() -> LandmarkDetector:
    return LandmarkDetector()


@pytest.fixture(scope="module")
def base() -> torch.Tensor:
    return load_image(witness_face_files()[0])  # the release's base face, shipped with the package


def test_base_face_landmarks(detector: LandmarkDetector, base: torch.Tensor) -> None:
    points = detector(base)
    assert points.shape == (N_LANDMARKS, 2)
    assert points.dtype == np.int64
    height, width = base.shape[1:]
    assert (points >= 0).all() and (points[:, 0] < width).all() and (points[:, 1] < height).all()
    bridge_x = points[27:31, 0].mean()
    leye, reye = points[36:42], points[42:48]
    assert (leye[:, 1] < height / 2).all() and (leye[:, 0] < bridge_x).all()
    assert (reye[:, 1] < height / 2).all() and (reye[:, 0] > bridge_x).all()
    # The base face's left eye spans about x 83-111, y 64-72 (dlib 20); its centre should not move by 3 px.
    np.testing.assert_allclose(leye.mean(axis=0), [97.2, 68.7], atol=3.0)
    assert (points[48:68, 1] > points[33, 1]).all()  # mouth below the nose tip


def test_tensor_and_hwc_array_agree(detector: LandmarkDetector, base: torch.Tensor) -> None:
    np.testing.assert_array_equal(detector(base), detector(base.permute(1, 2, 0).numpy()))


def test_batch(detector: LandmarkDetector, base: torch.Tensor) -> None:
    flipped = base.flip(-1)
    points = detector.batch([base, flipped])
    assert points.shape == (2, N_LANDMARKS, 2)
    np.testing.assert_array_equal(points[0], detector(base))
    # Mirroring the face mirrors the eye positions: the image-left eye of the mirror is the base face's right eye.
    mirrored_reye_x = base.shape[2] - 1 - points[0, 42:48, 0].mean()
    assert abs(points[1, 36:42, 0].mean() - mirrored_reye_x) < 4.0
    assert detector.batch([]).shape == (0, N_LANDMARKS, 2)


def test_blank_image_falls_back_to_whole_image(detector: LandmarkDetector) -> None:
    blank = torch.full((3, 120, 100), 128, dtype=torch.uint8)
    with pytest.warns(UserWarning, match="no face detected"):
        points = detector(blank)
    assert points.shape == (N_LANDMARKS, 2)
    # The predictor places its mean face in the box: the points stay roughly inside the image.
    assert (points[:, 0] > -10).all() and (points[:, 0] < 110).all()
    assert (points[:, 1] > -10).all() and (points[:, 1] < 130).all()


def test_truncated_jpeg_does_not_crash(detector: LandmarkDetector) -> None:
    with pytest.warns(UserWarning, match="truncated"):
        image = load_image({p.name: p for p in witness_face_files()[1]}[TRUNCATED])  # shipped byte for byte
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # may fall back to the whole image
        points = detector(image)
    assert points.shape == (N_LANDMARKS, 2)
    assert np.isfinite(points).all()


def test_input_validation() -> None:
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        to_hwc_uint8(torch.zeros((1, 8, 8), dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        to_hwc_uint8(np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        to_hwc_uint8(torch.zeros((3, 8, 8), dtype=torch.float32))
    array = to_hwc_uint8(torch.arange(3 * 2 * 4, dtype=torch.uint8).reshape(3, 2, 4))
    assert array.shape == (2, 4, 3) and array.flags.c_contiguous and array[1, 2, 1] == 8 + 6
