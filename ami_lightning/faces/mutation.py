"""Attribute mutation of the original AmI release: paste one face's eye, nose or mouth onto another face.

An attribute's region in a face is its landmark polygon (the bounding box of its points for the eyes, their convex
hull for nose and mouth), filled, plus a 12-px-thick round-capped outline around it: every pixel within 6 px of the
filled polygon. Four corner points per attribute (``attribute_corners``) define a perspective transform from the
source face to the destination face. The source image, masked to its attribute region, is warped into the
destination frame (bilinear, zero outside) and pasted onto the destination wherever the warped pixel's grey value
(ITU-R 601 luma, 0-255) exceeds 10.

Substitution puts another face's attribute onto the base face; preservation puts the base face's attribute onto
another face. Images are uint8 RGB tensors of shape (3, H, W); landmarks are dlib's 68 points, arrays of shape
(68, 2) holding ``(x, y)`` pixel coordinates (see ``ami_lightning.faces.landmarks``). Pixel centres sit at integer
coordinates throughout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ami_lightning.faces.landmarks import N_LANDMARKS
from ami_lightning.witnesses.witness_set import ATTRIBUTES

ATTRIBUTE_POINTS: dict[str, tuple[int, ...]] = {
    "leye": tuple(range(36, 42)),
    "reye": tuple(range(42, 48)),
    "nose": tuple(range(27, 36)),
    "mouth": tuple(range(48, 68)),
}
BOX_ATTRIBUTES = frozenset({"leye", "reye"})
OUTLINE_THICKNESS = 12
PASTE_GREY_THRESHOLD = 10

# Fixed-point ITU-R 601 luma weights (R, G, B) / 2**14, rounding to nearest.
_LUMA_WEIGHTS = (4899, 9617, 1868)
_LUMA_SHIFT = 14


def _check_attribute(attribute: str) -> None:
    if attribute not in ATTRIBUTE_POINTS:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {ATTRIBUTES}")


def _as_landmarks(landmarks: np.ndarray | torch.Tensor) -> np.ndarray:
    """Landmarks as a float64 array of shape (68, 2), checked."""
    array = np.asarray(landmarks.detach().cpu() if isinstance(landmarks, torch.Tensor) else landmarks, dtype=np.float64)
    if array.shape != (N_LANDMARKS, 2):
        raise ValueError(f"expected landmarks of shape ({N_LANDMARKS}, 2), got {array.shape}")
    return array


def _check_image(image: torch.Tensor, name: str) -> None:
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
        raise ValueError(f"{name}: expected a uint8 tensor of shape (3, H, W), got {shape}")


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull of points of shape (N, 2), counter-clockwise in (x, y) without repeated end point: shape (M, 2)."""
    unique = sorted({(float(x), float(y)) for x, y in points})
    if len(unique) < 3:
        return np.array(unique, dtype=np.float64)

    def half(sequence: list[tuple[float, float]]) -> list[tuple[float, float]]:
        chain: list[tuple[float, float]] = []
        for p in sequence:
            while len(chain) >= 2:
                (ax, ay), (bx, by) = chain[-2], chain[-1]
                if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) > 0:
                    break
                chain.pop()
            chain.append(p)
        return chain

    return np.array(half(unique)[:-1] + half(unique[::-1])[:-1], dtype=np.float64)


def attribute_polygon(landmarks: np.ndarray | torch.Tensor, attribute: str) -> np.ndarray:
    """The attribute's landmark polygon, vertices of shape (M, 2) in (x, y) pixels: bounding box of its points for
    the eyes (4 vertices), their convex hull for nose and mouth."""
    _check_attribute(attribute)
    points = _as_landmarks(landmarks)[list(ATTRIBUTE_POINTS[attribute])]
    if attribute in BOX_ATTRIBUTES:
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
        return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=np.float64)
    return convex_hull(points)


def polygon_region(polygon: np.ndarray, height: int, width: int, thickness: int = OUTLINE_THICKNESS) -> np.ndarray:
    """Pixels covered by a filled convex polygon plus a ``thickness``-px round-capped outline along its edges.

    ``polygon``: vertices of shape (M, 2), (x, y) pixels, in order around the polygon. Returns a bool mask of shape
    (height, width): pixel centres inside the polygon or within ``thickness / 2`` px of one of its edges.
    """
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    radius_sq = (thickness / 2) ** 2
    starts, ends = polygon, np.roll(polygon, -1, axis=0)
    near_edge = np.zeros((height, width), dtype=bool)
    signs = []
    for (ax, ay), (bx, by) in zip(starts, ends, strict=True):
        dx, dy = bx - ax, by - ay
        t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
        near_edge |= (xs - ax - t * dx) ** 2 + (ys - ay - t * dy) ** 2 <= radius_sq
        signs.append(np.sign(dx * (ys - ay) - dy * (xs - ax)))
    x, y = polygon.T
    if abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) < 1e-12:  # collinear: only the outline
        return near_edge
    cross = np.stack(signs)
    inside = np.all(cross >= 0, axis=0) | np.all(cross <= 0, axis=0)
    return near_edge | inside


def attribute_region(landmarks: np.ndarray | torch.Tensor, attribute: str, height: int, width: int) -> np.ndarray:
    """Bool mask of shape (height, width) of the attribute's region: its polygon, filled, plus a 12-px outline."""
    return polygon_region(attribute_polygon(landmarks, attribute), height, width)


def attribute_corners(landmarks: np.ndarray | torch.Tensor, attribute: str) -> np.ndarray:
    """The attribute's four corner points, shape (4, 2), (x, y) pixels: top-left, top-right, bottom-left,
    bottom-right as the original AmI release defines them from dlib's 0-based point indices."""
    _check_attribute(attribute)
    x, y = _as_landmarks(landmarks).T
    if attribute in BOX_ATTRIBUTES:
        a = ATTRIBUTE_POINTS[attribute][0]  # eye corner on the image's left; a + 3 the one on its right
        left, right = x[a], x[a + 3]
        top, bottom = min(y[a + 1], y[a + 2]), max(y[a + 4], y[a + 5])
    elif attribute == "nose":
        return np.array([(x[32], y[27]), (x[34], y[27]), (x[31], y[33]), (x[35], y[33])], dtype=np.float64)
    else:
        left, right = x[48], x[64]
        top, bottom = min(y[50], y[52]), y[57]
    return np.array([(left, top), (right, top), (left, bottom), (right, bottom)], dtype=np.float64)


def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 perspective matrix (float64, ``[2, 2] == 1``) mapping four (x, y) points ``src`` (4, 2) onto ``dst``.

    Raises ``ValueError`` where three of the points are collinear (no unique transform).
    """
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    if src.shape != (4, 2) or dst.shape != (4, 2):
        raise ValueError(f"expected two point sets of shape (4, 2), got {src.shape} and {dst.shape}")
    system = np.zeros((8, 8))
    rhs = np.zeros(8)
    for k, ((x, y), (u, v)) in enumerate(zip(src, dst, strict=True)):
        system[2 * k] = (x, y, 1, 0, 0, 0, -u * x, -u * y)
        system[2 * k + 1] = (0, 0, 0, x, y, 1, -v * x, -v * y)
        rhs[2 * k], rhs[2 * k + 1] = u, v
    try:
        solution = np.linalg.solve(system, rhs)
    except np.linalg.LinAlgError as err:
        raise ValueError(f"degenerate corners, no perspective transform: {src.tolist()} -> {dst.tolist()}") from err
    return np.append(solution, 1.0).reshape(3, 3)


def warp_perspective(image: torch.Tensor, matrix: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Warp a uint8 image (C, H, W) by the perspective ``matrix`` (source -> output pixel coordinates) into a
    (C, height, width) uint8 image; bilinear sampling, zeros where the source lies outside (or behind) the image."""
    inverse = torch.from_numpy(np.linalg.inv(matrix))
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    mapped = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1) @ inverse.T
    depth = mapped[..., 2]
    valid = depth > 1e-12
    safe_depth = torch.where(valid, depth, torch.ones_like(depth))
    src_h, src_w = image.shape[-2:]
    grid_x = torch.where(valid, 2 * mapped[..., 0] / safe_depth / max(src_w - 1, 1) - 1, -2.0)
    grid_y = torch.where(valid, 2 * mapped[..., 1] / safe_depth / max(src_h - 1, 1) - 1, -2.0)
    grid = torch.stack([grid_x, grid_y], dim=-1)[None]
    warped = F.grid_sample(image[None].double(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return warped[0].round().clamp(0, 255).to(torch.uint8)


def grey(image: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of a uint8 RGB image (3, H, W) as int32 (H, W), 0-255, rounded to nearest."""
    r, g, b = image.to(torch.int32)
    wr, wg, wb = _LUMA_WEIGHTS
    return (wr * r + wg * g + wb * b + (1 << (_LUMA_SHIFT - 1))) >> _LUMA_SHIFT


def mutate(
    dst_img: torch.Tensor,
    dst_landmarks: np.ndarray | torch.Tensor,
    src_img: torch.Tensor,
    src_landmarks: np.ndarray | torch.Tensor,
    attribute: str,
) -> torch.Tensor:
    """Paste ``src_img``'s attribute onto ``dst_img``; returns a new uint8 image of ``dst_img``'s shape (3, H, W).

    Images: uint8 RGB (3, H, W), sizes may differ; landmarks: (68, 2) (x, y) pixels of the respective image.
    """
    _check_attribute(attribute)
    _check_image(dst_img, "dst_img")
    _check_image(src_img, "src_img")
    region = torch.from_numpy(attribute_region(src_landmarks, attribute, *src_img.shape[1:]))
    cut = src_img * region
    matrix = homography(attribute_corners(src_landmarks, attribute), attribute_corners(dst_landmarks, attribute))
    warped = warp_perspective(cut, matrix, *dst_img.shape[1:])
    return torch.where(grey(warped) > PASTE_GREY_THRESHOLD, warped, dst_img)


def _check_batch(
    base: torch.Tensor,
    others: Sequence[torch.Tensor] | torch.Tensor,
    others_landmarks: Sequence[np.ndarray] | np.ndarray | torch.Tensor,
    attribute: str,
) -> None:
    _check_attribute(attribute)
    _check_image(base, "base")
    if len(others) != len(others_landmarks):
        raise ValueError(f"{len(others)} images but {len(others_landmarks)} landmark sets")


def substitution(
    base: torch.Tensor,
    base_landmarks: np.ndarray | torch.Tensor,
    others: Sequence[torch.Tensor] | torch.Tensor,
    others_landmarks: Sequence[np.ndarray] | np.ndarray | torch.Tensor,
    attribute: str,
) -> torch.Tensor:
    """The base face with each other face's attribute: uint8 (N, 3, H, W), H and W of ``base``.

    ``others``: N uint8 images (3, H_i, W_i) (a list or an (N, 3, H, W) tensor); ``others_landmarks``: N (68, 2).
    """
    _check_batch(base, others, others_landmarks, attribute)
    if len(others) == 0:
        return torch.zeros((0, *base.shape), dtype=torch.uint8)
    pairs = zip(others, others_landmarks, strict=True)
    return torch.stack([mutate(base, base_landmarks, other, lm, attribute) for other, lm in pairs])


def preservation(
    base: torch.Tensor,
    base_landmarks: np.ndarray | torch.Tensor,
    others: Sequence[torch.Tensor] | torch.Tensor,
    others_landmarks: Sequence[np.ndarray] | np.ndarray | torch.Tensor,
    attribute: str,
) -> torch.Tensor:
    """Each other face with the base face's attribute: uint8 (N, 3, H, W); the others must share one size.

    Arguments as for ``substitution``.
    """
    _check_batch(base, others, others_landmarks, attribute)
    if len(others) == 0:
        return torch.zeros((0, *base.shape), dtype=torch.uint8)
    if len({tuple(o.shape) for o in others}) > 1:
        raise ValueError(f"other images differ in size: {sorted({tuple(o.shape) for o in others})}")
    pairs = zip(others, others_landmarks, strict=True)
    return torch.stack([mutate(other, lm, base, base_landmarks, attribute) for other, lm in pairs])


def changed_region(image: torch.Tensor, original: torch.Tensor, threshold: int = 25) -> torch.Tensor:
    """Bool mask (H, W) of pixels where any channel of two uint8 (3, H, W) images differs by more than
    ``threshold`` (0-255 units; 25 clears JPEG noise at the quality of the published images)."""
    return (image.to(torch.int16) - original.to(torch.int16)).abs().amax(dim=0) > threshold


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Intersection over union of two bool masks of the same shape (1.0 where both are empty)."""
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def agreement(
    ours: torch.Tensor, published: torch.Tensor, original: torch.Tensor, threshold: int = 25
) -> tuple[float, float]:
    """How well a mutated image matches a published one, all uint8 (3, H, W) with ``original`` the unmutated
    destination: (IoU of the two changed regions w.r.t. ``original``, mean absolute difference ours vs published
    in 0-255 units)."""
    iou = mask_iou(changed_region(ours, original, threshold), changed_region(published, original, threshold))
    return iou, float((ours.float() - published.float()).abs().mean())
