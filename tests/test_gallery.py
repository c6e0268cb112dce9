from __future__ import annotations

import pytest
import torch
from torch import nn

from ami_lightning.models.base import PixelModel
from ami_lightning.models.dlib_resnet import SAME_PERSON_DISTANCE, load_dlib_resnet
from ami_lightning.models.gallery import FaceGallery
from ami_lightning.models.layers import find_layer, hook_layer_names


@pytest.fixture(scope="module")
def dlib_model() -> PixelModel:
    return load_dlib_resnet()  # a hard dependency: missing means a broken install


@pytest.fixture(scope="module")
def enrolled(dlib_model: PixelModel, faces: torch.Tensor) -> tuple[FaceGallery, torch.Tensor]:
    """A gallery of the first five shipped faces, one image each, and those faces (5, 3, 224, 224)."""
    gallery = FaceGallery(dlib_model, [f"person{i}" for i in range(5)])
    gallery.enrol(faces[:5], torch.arange(5))
    return gallery, faces[:5]


def test_enrolled_faces_classify_as_themselves(enrolled: tuple[FaceGallery, torch.Tensor]) -> None:
    gallery, faces = enrolled
    with torch.no_grad():
        logits = gallery(faces)
    assert logits.shape == (5, 5)
    assert logits.diagonal().abs().max() < 1e-4
    off_diagonal = logits[~torch.eye(5, dtype=torch.bool)]
    assert off_diagonal.max() < -3.0  # other people: distance > 0.3 at scale 10
    assert torch.equal(logits.argmax(1), torch.arange(5))


def test_flipped_faces_still_recognised(enrolled: tuple[FaceGallery, torch.Tensor]) -> None:
    gallery, faces = enrolled
    with torch.no_grad():
        logits = gallery(faces.flip(-1))
    assert (logits.argmax(1) == torch.arange(5)).sum() >= 4
    assert (logits.diagonal() > -gallery.scale * SAME_PERSON_DISTANCE).all()  # dlib would call them the same person
    assert (logits.diagonal() < -1.0).all()  # but not identical to the enrolled image


def test_gradient_flows_to_pixels(enrolled: tuple[FaceGallery, torch.Tensor]) -> None:
    gallery, faces = enrolled
    target = (torch.arange(5) + 1) % 5
    x = faces.clone().requires_grad_(True)
    gallery(x).gather(1, target[:, None]).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and (x.grad.flatten(1).abs().sum(1) > 0).all()
    with torch.no_grad():
        before = gallery(faces).gather(1, target[:, None])
        after = gallery((faces + 2.0 * x.grad.sign()).clamp(*gallery.bounds)).gather(1, target[:, None])
    assert (after > before).all()


def test_hook_layers_and_bounds(enrolled: tuple[FaceGallery, torch.Tensor], dlib_model: PixelModel) -> None:
    gallery, _ = enrolled
    assert hook_layer_names(gallery) == dlib_model.hook_layers
    assert find_layer(gallery, "relu29") is dlib_model.net.relu29
    assert gallery.bounds == (0.0, 255.0)
    assert gallery.centroids.shape == (5, 128) and bool(gallery.enrolled.all())


def test_mean_embedding_and_partial_enrolment() -> None:
    gallery = FaceGallery(nn.Flatten(), ["a", "b", "c"], scale=2.0, dim=6, batch_size=2)
    images = torch.arange(5 * 6, dtype=torch.float32).view(5, 3, 1, 2)
    gallery.enrol(images[:3], torch.tensor([0, 1, 0]))
    torch.testing.assert_close(gallery.centroids[0], images[[0, 2]].flatten(1).mean(0))
    torch.testing.assert_close(gallery.centroids[1], images[1].flatten())
    with pytest.raises(RuntimeError, match=r"not enrolled.*\['c'\]"):
        gallery(images)
    gallery.enrol(images[3:4], torch.tensor([2]))  # a later call enrols c and leaves a and b as they were
    torch.testing.assert_close(gallery.centroids[0], images[[0, 2]].flatten(1).mean(0))
    logits = gallery(images[4:])
    distances = (images[4].flatten() - gallery.centroids).norm(dim=1)
    torch.testing.assert_close(logits, -2.0 * distances[None])


def test_enrol_errors() -> None:
    gallery = FaceGallery(nn.Flatten(), ["a", "b"], dim=6)
    images = torch.zeros(2, 3, 1, 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\), got \[0, 2\]"):
        gallery.enrol(images, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="labels must be N = 2 integers"):
        gallery.enrol(images, torch.tensor([0]))
    with pytest.raises(ValueError, match="labels must be N = 2 integers"):
        gallery.enrol(images, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="6-D embeddings, the gallery has dim 128"):
        FaceGallery(nn.Flatten(), ["a", "b"], dim=128).enrol(images, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least one identity"):
        FaceGallery(nn.Flatten(), [])
    assert not bool(gallery.enrolled.any())


def test_state_dict_restores_a_gallery_that_classifies() -> None:
    """A gallery saved after enrolment and loaded into a fresh one classifies like the original (the host-side
    enrolment flag follows the loaded buffer); a partial gallery stays refused after loading."""
    embedder = nn.Flatten()
    images = torch.arange(4 * 6, dtype=torch.float32).view(4, 3, 1, 2)
    saved = FaceGallery(embedder, ["a", "b", "c"], dim=6)
    saved.enrol(images[:3], torch.tensor([0, 1, 2]))
    restored = FaceGallery(embedder, ["a", "b", "c"], dim=6)
    assert restored.load_state_dict(saved.state_dict()) is not None
    torch.testing.assert_close(restored(images), saved(images))
    partial = FaceGallery(embedder, ["a", "b", "c"], dim=6)
    partial.enrol(images[:1], torch.tensor([0]))
    restored.load_state_dict(partial.state_dict())
    with pytest.raises(RuntimeError, match=r"not enrolled.*\['b', 'c'\]"):
        restored(images)
