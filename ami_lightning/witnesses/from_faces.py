"""The whole of AmI's witness step from face images: landmarks, attribute mutation, batched extraction."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.utils import make_grid, save_image

from ami_lightning.data.images import load_image
from ami_lightning.faces.landmarks import LandmarkDetector
from ami_lightning.faces.mutation import preservation, substitution
from ami_lightning.witnesses.extraction import extract_witness_set
from ami_lightning.witnesses.witness_set import ATTRIBUTES, WitnessSet

Mutations = dict[str, tuple[torch.Tensor, torch.Tensor]]


def faces_with_landmarks(
    paths: Sequence[Path], detector: LandmarkDetector
) -> tuple[list[torch.Tensor], list[np.ndarray], list[Path]]:
    """Load images and find their landmarks, dropping (with a warning) those where dlib finds no face.

    Returns (uint8 images (3, H, W), landmarks (68, 2), the paths kept).
    """
    images, landmarks, kept = [], [], []
    for path in paths:
        image = load_image(path)
        box = detector.detect(image.permute(1, 2, 0).contiguous().numpy())
        if box is None:
            warnings.warn(f"no face found in {path.name}; it is left out of witness extraction", stacklevel=2)
            continue
        images.append(image)
        landmarks.append(detector.landmarks(image, box))
        kept.append(path)
    return images, landmarks, kept


def mutate_all(
    base: torch.Tensor,
    base_landmarks: np.ndarray,
    others: Sequence[torch.Tensor],
    others_landmarks: Sequence[np.ndarray],
    attributes: Iterable[str] = ATTRIBUTES,
) -> Mutations:
    """``{attribute: (substitution (N, 3, H, W), preservation (N, 3, H, W))}``, uint8."""
    return {
        a: (
            substitution(base, base_landmarks, others, others_landmarks, a),
            preservation(base, base_landmarks, others, others_landmarks, a),
        )
        for a in attributes
    }


def witnesses_from_faces(
    model: nn.Module,
    layers: Sequence[str],
    base_path: Path,
    other_paths: Sequence[Path],
    attributes: Iterable[str] = ATTRIBUTES,
    caffe: bool = False,
    progress: Callable[[Iterable[str]], Iterable[str]] = iter,
) -> tuple[WitnessSet, Mutations]:
    """Witnesses of ``model`` at ``layers`` from a base face and other faces (image files); also the mutations."""
    detector = LandmarkDetector()
    base, base_lm, kept = faces_with_landmarks([base_path], detector)
    if not kept:
        raise ValueError(f"no face found in the base image {base_path}")
    others, others_lm, kept = faces_with_landmarks(other_paths, detector)
    if not kept:
        raise ValueError("no face found in any of the other images")
    mutations = mutate_all(base[0], base_lm[0], others, others_lm, attributes)
    witnesses = extract_witness_set(model, layers, base[0], mutations, caffe=caffe, progress=progress)
    return witnesses, mutations


def save_mutation_grid(mutations: Mutations, path: Path) -> None:
    """A PNG with one row per attribute and kind (substitution, preservation), one column per other face."""
    rows = [images for pair in mutations.values() for images in pair]
    save_image(make_grid(torch.cat(rows).float() / 255, nrow=len(rows[0]), padding=2), path)
