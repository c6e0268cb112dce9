"""Shared fixtures: the reference data of the AmI release (``../shared/reference``) and a random-weight VGG-Face.

Everything runs on CPU with small batches; tests that need CUDA are marked ``gpu`` and skipped without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ami_lightning.images import load_image
from ami_lightning.models.base import PixelModel, kaiming_init_
from ami_lightning.models.vgg_face import VggFace, vgg_face

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _cpu_threads() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def reference() -> Path:
    if not (REFERENCE / "README.md").is_file():
        pytest.skip(f"reference data of the AmI release not found at {REFERENCE}")
    return REFERENCE


@pytest.fixture(scope="session")
def random_vgg() -> PixelModel:
    """VGG-Face with He-initialised random weights (input-dependent predictions), in eval mode."""
    return vgg_face(kaiming_init_(VggFace(), seed=0))


@pytest.fixture(scope="session")
def faces(reference: Path) -> torch.Tensor:
    """The first 48 shipped reference faces, (48, 3, 224, 224) float pixels in [0, 255]."""
    paths = sorted((reference / "faces").glob("*.png"))[:48]
    return torch.stack([load_image(p) for p in paths]).float()
