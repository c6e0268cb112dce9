"""Attribute mutation: geometry units, pasting behaviour, and agreement with the published AmI images."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ami_lightning.data.images import load_image
from ami_lightning.data.shipped import witness_face_files
from ami_lightning.faces.landmarks import LandmarkDetector
from ami_lightning.faces.mutation import (
    ATTRIBUTES,
    agreement,
    attribute_corners,
    attribute_polygon,
    attribute_region,
    convex_hull,
    grey,
    homography,
    mutate,
    polygon_region,
    preservation,
    substitution,
    warp_perspective,
)
from tests.conftest import reference_data


def synthetic_landmarks(dx: float = 0.0, dy: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """A plausible 68-point layout for a 112x112 face, shifted by (dx, dy) and scaled about (56, 56): (68, 2)."""

    def ellipse(cx: float, cy: float, rx: float, ry: float, degrees: list[float]) -> list[tuple[float, float]]:
        return [(cx + rx * np.cos(np.radians(a)), cy - ry * np.sin(np.radians(a))) for a in degrees]

    eye_angles = [180, 120, 60, 0, 300, 240]  # dlib order: outer corner, two upper, inner corner, two lower
    points = (
        [(10 + 92 * i / 16, 50 + 50 * np.sin(np.pi * i / 16)) for i in range(17)]  # jaw 0-16
        + [(20 + 6 * i, 30) for i in range(5)]  # left brow 17-21
        + [(64 + 6 * i, 30) for i in range(5)]  # right brow 22-26
        + [(56, 40 + 5 * i) for i in range(4)]  # nose bridge 27-30
        + [(48 + 4 * i, 62 + (2 if i in (1, 3) else 0) + (3 if i == 2 else 0)) for i in range(5)]  # nostrils 31-35
        + ellipse(36, 44, 9, 4, eye_angles)  # left eye 36-41
        + ellipse(76, 44, 9, 4, eye_angles)  # right eye 42-47
        + ellipse(56, 80, 16, 7, list(range(180, -180, -30)))  # outer lips 48-59
        + ellipse(56, 80, 10, 3, list(range(180, -180, -45)))  # inner lips 60-67
    )
    array = np.round(np.array(points, dtype=np.float64))
    return (np.round((array - 56) * scale + 56) + (dx, dy)).astype(np.int64)


@pytest.fixture(scope="module")
def textured() -> torch.Tensor:
    """A bright random image (grey value > 10 everywhere), uint8 (3, 112, 112)."""
    return torch.randint(60, 256, (3, 112, 112), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_grey_luma() -> None:
    pixels = torch.tensor([[[0, 255, 255, 0, 0]], [[0, 255, 0, 255, 0]], [[0, 255, 0, 0, 255]]], dtype=torch.uint8)
    assert grey(pixels).tolist() == [[0, 255, 76, 150, 29]]


def test_convex_hull_and_polygons() -> None:
    hull = convex_hull(np.array([(0, 0), (4, 0), (4, 4), (0, 4), (2, 2), (2, 0)]))
    assert sorted(map(tuple, hull.tolist())) == [(0, 0), (0, 4), (4, 0), (4, 4)]
    lm = synthetic_landmarks()
    np.testing.assert_array_equal(attribute_polygon(lm, "leye"), [(27, 41), (45, 41), (45, 47), (27, 47)])
    assert len(attribute_polygon(lm, "mouth")) >= 8  # hull of the outer lips


def test_polygon_region_is_polygon_plus_6px() -> None:
    square = np.array([(20, 20), (30, 20), (30, 30), (20, 30)], dtype=np.float64)
    region = polygon_region(square, 50, 50)
    assert region[25, 25] and region[25, 14] and not region[25, 13]  # 6 px left of the edge in, 7 out
    assert region[36, 30] and not region[37, 30]
    assert region[20 - 4, 20 - 4] and not region[20 - 5, 20 - 5]  # rounded corners: 4*sqrt(2) in, 5*sqrt(2) out
    # 23x23 square (outline included) minus four corners of 6x6 pixels less the 22 within 6 px of the vertex.
    assert int(region.sum()) == 23 * 23 - 4 * (36 - 22)


def test_attribute_corners() -> None:
    lm = synthetic_landmarks()
    # leye: x36, x39; top min(y37, y38); bottom max(y40, y41)
    np.testing.assert_array_equal(attribute_corners(lm, "leye"), [(27, 41), (45, 41), (27, 47), (45, 47)])
    np.testing.assert_array_equal(attribute_corners(lm, "reye"), [(67, 41), (85, 41), (67, 47), (85, 47)])
    # nose: (x32, y27), (x34, y27), (x31, y33), (x35, y33); mouth: x48, x64, min(y50, y52), y57
    np.testing.assert_array_equal(attribute_corners(lm, "nose"), [(52, 40), (60, 40), (48, 65), (64, 65)])
    np.testing.assert_array_equal(attribute_corners(lm, "mouth"), [(40, 74), (66, 74), (40, 87), (66, 87)])


def test_homography_maps_corners() -> None:
    src = np.array([(10, 20), (40, 22), (12, 50), (45, 55)], dtype=np.float64)
    dst = np.array([(0, 0), (30, 0), (0, 30), (30, 30)], dtype=np.float64)
    matrix = homography(src, dst)
    mapped = np.c_[src, np.ones(4)] @ matrix.T
    np.testing.assert_allclose(mapped[:, :2] / mapped[:, 2:], dst, atol=1e-9)
    with pytest.raises(ValueError, match="degenerate"):
        homography(np.array([(0, 0), (1, 0), (2, 0), (3, 0)]), dst)


def test_warp_translation_is_exact(textured: torch.Tensor) -> None:
    shift = np.array([[1, 0, 5], [0, 1, -3], [0, 0, 1]], dtype=np.float64)
    warped = warp_perspective(textured, shift, 112, 112)
    assert torch.equal(warped[:, 0:109, 5:], textured[:, 3:112, 0:107])
    assert (warped[:, :, :5] == 0).all() and (warped[:, 109:, :] == 0).all()


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_identity_mutation_changes_nothing(textured: torch.Tensor, attribute: str) -> None:
    lm = synthetic_landmarks()
    assert torch.equal(mutate(textured, lm, textured, lm, attribute), textured)


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_translated_attribute_lands_in_place(textured: torch.Tensor, attribute: str) -> None:
    """A destination face shifted by (7, 5): the source region arrives shifted, every other pixel is untouched."""
    src_lm, dst_lm = synthetic_landmarks(), synthetic_landmarks(dx=7, dy=5)
    dst = torch.zeros_like(textured)
    out = mutate(dst, dst_lm, textured, src_lm, attribute)
    region = torch.from_numpy(attribute_region(dst_lm, attribute, 112, 112))
    assert torch.equal(out[:, ~region], dst[:, ~region])
    expected = torch.zeros_like(textured)
    expected[:, 5:, 7:] = textured[:, :-5, :-7]
    assert torch.equal(out[:, region], expected[:, region])
    assert int(region.sum()) > 300


def test_scaled_mutation_changes_only_the_warped_region(textured: torch.Tensor) -> None:
    """Destination face 1.3x larger: pixels change only where the warped source region reaches, about 1.3**2 times
    the source region's area."""
    src_lm, dst_lm = synthetic_landmarks(), synthetic_landmarks(scale=1.3)
    dst = torch.zeros_like(textured)
    out = mutate(dst, dst_lm, textured, src_lm, "nose")
    changed = (out != 0).any(dim=0)
    region = torch.from_numpy(attribute_region(src_lm, "nose", 112, 112))
    matrix = homography(attribute_corners(src_lm, "nose"), attribute_corners(dst_lm, "nose"))
    footprint = warp_perspective(region[None].to(torch.uint8) * 255, matrix, 112, 112)[0] > 0
    assert not (changed & ~footprint).any()
    assert 0.95 < changed.sum().item() / footprint.sum().item() <= 1.0
    assert 1.3**2 * 0.85 < changed.sum().item() / region.sum().item() < 1.3**2 * 1.15


def test_batches_shapes_and_dtypes(textured: torch.Tensor) -> None:
    others = torch.stack([textured.flip(-1), textured.flip(-2), textured // 2])
    others_lm = np.stack([synthetic_landmarks(dx=d) for d in (-3, 0, 4)])
    lm = synthetic_landmarks()
    for batch in (
        substitution(textured, lm, others, others_lm, "mouth"),
        preservation(textured, lm, others, others_lm, "mouth"),
    ):
        assert batch.shape == (3, 3, 112, 112) and batch.dtype == torch.uint8
    single = mutate(textured[:, :100, :90].contiguous(), lm, others[0], others_lm[0], "reye")
    assert single.shape == (3, 100, 90) and single.dtype == torch.uint8
    assert substitution(textured, lm, [], [], "leye").shape == (0, 3, 112, 112)
    with pytest.raises(ValueError, match="differ in size"):
        preservation(textured, lm, [textured, textured[:, :100]], [lm, lm], "leye")


def test_input_errors(textured: torch.Tensor) -> None:
    lm = synthetic_landmarks()
    with pytest.raises(ValueError, match="unknown attribute 'eyebrow'"):
        mutate(textured, lm, textured, lm, "eyebrow")
    with pytest.raises(ValueError, match="unknown attribute"):
        substitution(textured, lm, [textured], [lm], "leyes")
    with pytest.raises(ValueError, match=r"landmarks of shape \(68, 2\)"):
        mutate(textured, lm[:5], textured, lm, "nose")
    with pytest.raises(ValueError, match=r"landmarks of shape \(68, 2\)"):
        attribute_corners(lm.T, "leye")
    with pytest.raises(ValueError, match="uint8 tensor"):
        mutate(textured.float(), lm, textured, lm, "nose")
    with pytest.raises(ValueError, match="landmark sets"):
        preservation(textured, lm, [textured, textured], [lm], "nose")


@pytest.fixture(scope="module")
def witness_faces() -> dict[str, list]:
    """The release's base face and 10 other faces (shipped with the package), their file names and dlib landmarks."""
    base, others = witness_face_files()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the truncated JPEG and its whole-image fallback
        data: dict[str, list] = {
            "names": [path.name for path in others],
            "base": [load_image(base)],
            "others": [load_image(path) for path in others],
        }
        detector = LandmarkDetector()
        data["base_lm"] = [detector(data["base"][0])]
        data["others_lm"] = list(detector.batch(data["others"]))
    return data


@pytest.fixture(scope="module")
def published(witness_faces: dict[str, list]) -> dict[str, list]:
    """``witness_faces`` and the release's published leye mutations of them (not shipped)."""
    folder = reference_data("attribute_mutated")
    data = dict(witness_faces)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # mutations of the truncated JPEG
        for kind in ("substitution", "preservation"):
            data[kind] = [load_image(folder / f"leye_{kind}" / name) for name in witness_faces["names"]]
    return data


@pytest.mark.parametrize("kind", ["substitution", "preservation"])
def test_matches_published_leye_images(published: dict[str, list], kind: str) -> None:
    base, base_lm = published["base"][0], published["base_lm"][0]
    others, others_lm = published["others"], published["others_lm"]
    function = substitution if kind == "substitution" else preservation
    ours = function(base, base_lm, others, others_lm, "leye")
    originals = [base] * len(others) if kind == "substitution" else others
    figures = np.array([agreement(o, p, d) for o, p, d in zip(ours, published[kind], originals, strict=True)])
    ious, mean_abs_diffs = figures[:, 0], figures[:, 1]
    assert len(ious) == 10
    assert (ious >= 0.7).sum() >= 8, ious.round(3)
    assert np.median(ious) >= 0.9, ious.round(3)
    assert (mean_abs_diffs < 1.0).sum() >= 8, mean_abs_diffs.round(3)


def test_all_attributes_on_reference_faces(witness_faces: dict[str, list]) -> None:
    base, base_lm = witness_faces["base"][0], witness_faces["base_lm"][0]
    others, others_lm = witness_faces["others"][:3], witness_faces["others_lm"][:3]
    for attribute in ATTRIBUTES:
        for batch, originals in (
            (substitution(base, base_lm, others, others_lm, attribute), [base] * 3),
            (preservation(base, base_lm, others, others_lm, attribute), others),
        ):
            changed = [(b != o).any(dim=0).float().mean().item() for b, o in zip(batch, originals, strict=True)]
            assert all(0.002 < fraction < 0.1 for fraction in changed), (attribute, changed)
