"""Batched witness extraction against a straightforward per-image implementation (NumPy median, batch size 1)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ami_lightning.data.images import load_image
from ami_lightning.data.shipped import witness_face_files
from ami_lightning.faces.landmarks import LandmarkDetector
from ami_lightning.models.layers import find_layer
from ami_lightning.witnesses.extraction import extract_witness_set, extract_witnesses, select_witnesses
from ami_lightning.witnesses.from_faces import mutate_all
from tests.conftest import reference_data


def _activations(model, layers, image) -> dict[str, np.ndarray]:
    out = {}
    handles = [
        find_layer(model, name).register_forward_hook(lambda m, i, o, name=name: out.__setitem__(name, o[0].clone()))
        for name in layers
    ]
    with torch.no_grad():
        model(image[None].float())
    for handle in handles:
        handle.remove()
    return {k: v.numpy().astype(np.float64) for k, v in out.items()}


def reference_extract(model, layers, base, substitution, preservation, caffe=False) -> dict[str, set[int]]:
    """The published procedure, one image at a time."""
    base_act = _activations(model, layers, base)
    keep = {name: set(range(base_act[name].shape[0])) for name in layers}
    for images, above in ((substitution, True), (preservation, False)):
        for image in images:
            act = _activations(model, layers, image)
            for name in layers:
                diff = np.abs(act[name] - base_act[name])
                score = diff.reshape(diff.shape[0], -1).sum(1) if diff.ndim > 1 else diff
                median = np.median(score)
                if above:
                    chosen = score > median
                else:
                    chosen = score <= median if caffe else score < median
                keep[name] &= set(np.flatnonzero(chosen).tolist())
    return keep


@pytest.fixture(scope="module")
def published_leye() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shipped base face and the release's published leye substitutions and preservations (not shipped)."""
    folder = reference_data("attribute_mutated")

    def stack(kind: str) -> torch.Tensor:
        return torch.stack([load_image(p) for p in sorted((folder / f"leye_{kind}").glob("*.jpg"))])

    return load_image(witness_face_files()[0]), stack("substitution"), stack("preservation")


@pytest.fixture(scope="module")
def shipped_leye() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shipped base face and leye substitutions and preservations made here from the 10 shipped other faces."""
    base_path, other_paths = witness_face_files()
    detector = LandmarkDetector()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the truncated JPEG and its whole-image fallback
        base, others = load_image(base_path), [load_image(p) for p in other_paths]
        others_lm = list(detector.batch(others))
    substitution, preservation = mutate_all(base, detector(base), others, others_lm, ["leye"])["leye"]
    return base, substitution, preservation


@pytest.mark.slow
@pytest.mark.parametrize(("source", "caffe"), [("published_leye", True), ("shipped_leye", False)])  # each data, rule
def test_matches_per_image_reference_on_leye_mutations(random_vgg, request, source: str, caffe: bool) -> None:
    base, substitution, preservation = request.getfixturevalue(source)
    assert substitution.shape == preservation.shape == (10, 3, 224, 224)
    layers = random_vgg.hook_layers
    ours = extract_witnesses(random_vgg, layers, base, substitution, preservation, caffe=caffe, batch_size=8)
    expected = reference_extract(random_vgg, layers, base, substitution, preservation, caffe=caffe)
    assert {k: set(v) for k, v in ours.items()} == expected
    assert sum(map(len, ours.values())) > 5  # the rule does select channels on this data
    assert all(list(v) == sorted(v) for v in ours.values())


def test_median_is_numpys_midpoint() -> None:
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    # median 2.5: channel 1 (score 2) is below it; torch.median's lower middle (2) would drop it
    assert select_witnesses(scores[:0], scores).tolist() == [True, True, False, False]
    assert select_witnesses(scores, scores[:0]).tolist() == [False, False, True, True]
    odd = torch.tensor([[1.0, 2.0, 3.0]])
    assert select_witnesses(odd[:0], odd).tolist() == [True, False, False]
    assert select_witnesses(odd[:0], odd, caffe=True).tolist() == [True, True, False]
    # intersection over images and rules
    sub = torch.tensor([[5.0, 1.0, 4.0, 0.0], [5.0, 4.0, 1.0, 0.0]])
    pres = torch.tensor([[0.0, 9.0, 9.0, 0.0]])
    assert select_witnesses(sub, pres).tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="at least one"):
        select_witnesses(sub[:0], pres[:0])


@pytest.mark.slow
def test_witness_set_over_attributes(random_vgg, shipped_leye) -> None:
    base, substitution, preservation = shipped_leye
    layers = ("pool3", "relu6")
    mutations = {"leye": (substitution[:4], preservation[:4]), "nose": (substitution[4:], preservation[4:])}
    witnesses = extract_witness_set(random_vgg, layers, base, mutations)
    assert witnesses.layers == layers and witnesses.attributes == ("leye", "nose")
    direct = extract_witnesses(random_vgg, layers, base, substitution[4:], preservation[4:])
    assert witnesses.witnesses["nose"] == direct
