"""Paths of the data shipped inside the package for the embedded default (see ``assets/PROVENANCE.md``)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ami_lightning.data.images import load_image

ASSETS = Path(__file__).resolve().parent.parent / "assets"
FACES = ASSETS / "faces"
WITNESS_FACES = ASSETS / "witness_faces"
VGG_FACE_WITNESSES = ASSETS / "witnesses_vgg_face_dag"


def face_files() -> list[Path]:
    """The 238 shipped faces (224x224 JPEG, one identity each), sorted by file name."""
    files = sorted(FACES.glob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"no shipped faces under {FACES}; reinstall ami-lightning")
    return files


@functools.cache
def shipped_face_count() -> int:
    """How many faces ship with the package (0 when they are missing): what ``data.attack_faces`` and
    ``data.benign.limit`` can take."""
    try:
        return len(face_files())
    except FileNotFoundError:
        return 0


def shipped_faces(limit: int | None = None) -> tuple[torch.Tensor, list[Path]]:
    """The shipped faces (first ``limit`` by file name) as uint8 (N, 3, 224, 224), and their paths."""
    files = face_files()[:limit]
    return torch.stack([load_image(f) for f in files]), files


def witness_face_files() -> tuple[Path, list[Path]]:
    """(base face, the 10 other faces) used for witness extraction, as in the AmI release."""
    base = WITNESS_FACES / "base_img.jpg"
    others = sorted((WITNESS_FACES / "images").glob("*.jpg"))
    if not base.is_file() or not others:
        raise FileNotFoundError(f"witness-extraction faces missing under {WITNESS_FACES}; reinstall ami-lightning")
    return base, others
