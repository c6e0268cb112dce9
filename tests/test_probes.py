from __future__ import annotations

import pytest
import torch

from ami_lightning.data.probes import VARIANTS, benign_variants, jpeg, shift, zoom


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    x = torch.linspace(0, 255, 32).round().to(torch.uint8)
    return torch.stack([x.view(1, 1, 32).expand(3, 32, 32), x.view(1, 32, 1).expand(3, 32, 32)]).contiguous()


def test_shift_moves_pixels_and_repeats_edges(images: torch.Tensor) -> None:
    moved = shift(images, dx=3, dy=-2)
    assert torch.equal(moved[..., 0:30, 3:], images[..., 2:32, :29])
    assert torch.equal(moved[..., :, 0], moved[..., :, 3])  # left gap filled with the edge column
    assert torch.equal(moved[1, :, 30:, :], images[1, :, 31:, :].expand(3, 2, 32))  # bottom gap: last row repeated
    assert torch.equal(shift(images, 0, 0), images)


def test_variants_are_deterministic_and_light(images: torch.Tensor) -> None:
    probes, index = benign_variants(images)
    again, _ = benign_variants(images)
    assert probes.shape == (len(VARIANTS) * 2, 3, 32, 32) and probes.dtype == torch.uint8
    assert torch.equal(probes, again)
    assert index.tolist() == [0, 1] * len(VARIANTS)
    assert torch.equal(probes[0], images[0].flip(-1))
    zoomed = zoom(images).float()
    assert (zoomed - images.float()).abs().mean() < 8  # a 6 % zoom of smooth ramps
    assert torch.equal(zoom(images, 1.0), images)
    assert (jpeg(images).float() - images.float()).abs().mean() < 3
    for k in range(len(VARIANTS)):
        assert not torch.equal(probes[2 * k : 2 * k + 2], images) or VARIANTS[k] == "jpeg"


def test_errors(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"unknown probe variants \['rotate'\]"):
        benign_variants(images, ["flip", "rotate"])
    with pytest.raises(TypeError, match="uint8"):
        benign_variants(images.float())
