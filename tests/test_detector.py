"""AmIDetector against a per-sample, per-channel reference written from the rules of the method."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ami_lightning.data.shipped import VGG_FACE_WITNESSES
from ami_lightning.detectors.ami import AmIDetector
from ami_lightning.detectors.steering import (
    PRESETS,
    SteeringParams,
    bilinear_matrix,
    crop_resize,
    detection_score,
    steer,
)
from ami_lightning.models.base import Normalize, PixelModel, kaiming_init_
from ami_lightning.models.layers import find_layer
from ami_lightning.witnesses import WitnessSet


def reference_steer_one(h: torch.Tensor, lists: dict[str, tuple[int, ...]], params: SteeringParams) -> torch.Tensor:
    """One sample's layer output (C, ...) steered with loops over attributes and channels, in float64."""
    a = h.double().numpy()
    v = a.reshape(a.shape[0], -1).sum(1)
    concat = [c for channels in lists.values() for c in channels]
    mean, std, low = v[concat].mean(), v[concat].std(), v[concat].min()
    w, (s0, s1) = params.weaken, params.strengthen
    factor = np.ones(a.shape[0])
    for c in range(a.shape[0]):
        if c not in concat:
            d = max(0.0, (v[c] - mean) / std) if std > 0 else 0.0
            factor[c] = math.exp(-d / w)
    for channels in lists.values():
        for c in channels:
            d = abs(v[c] - low) / std if std > 0 else 0.0
            factor[c] *= s0 - math.exp(-d / s1)
    return torch.from_numpy(a * factor.reshape(-1, *[1] * (a.ndim - 1))).float()


def reference_steered_logits(
    model: PixelModel, witnesses: WitnessSet, params: SteeringParams, x: torch.Tensor, crop_layers=("pool3",)
) -> torch.Tensor:
    """Steered logits, one sample at a time, walking the network's children in order (no hooks)."""
    rows = []
    for sample in x:
        h = model.preprocess(sample[None])
        for name, layer in model.net.named_children():
            if isinstance(layer, nn.Linear) and h.dim() > 2:
                h = h.flatten(1)
            h = layer(h)
            lists = witnesses.at(name) if name in witnesses.layers else {}
            if any(lists.values()):
                if name in crop_layers:
                    size = h.shape[-2:]
                    h = F.interpolate(h[..., 2:-2, 2:-2], size=size, mode="bilinear", align_corners=False)
                h = reference_steer_one(h[0], lists, params)[None]
        rows.append(h[0])
    return torch.stack(rows)


class TinyNet(nn.Module):
    """A small CNN with VGG-style names (pool3 included) and a 1-D hooked layer; input 32x32."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool3 = nn.MaxPool2d(2)
        self.fc6 = nn.Linear(16 * 8 * 8, 32)
        self.relu6 = nn.ReLU()
        self.fc8 = nn.Linear(32, 5)
        self.hook_layers = ("relu1", "pool1", "relu2", "pool3", "relu6")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool3(self.relu2(self.conv2(x)))
        return self.fc8(self.relu6(self.fc6(x.flatten(1))))


@pytest.fixture(scope="module")
def tiny() -> PixelModel:
    torch.manual_seed(0)
    net = kaiming_init_(TinyNet(), seed=1)
    return PixelModel(net, Normalize((120.0, 110.0, 100.0), (60.0, 60.0, 60.0)), net.hook_layers).eval()


@pytest.fixture(scope="module")
def tiny_x() -> torch.Tensor:
    return torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 255


def _assert_rel_close(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    err = (ours - ref).abs().max() / ref.abs().max()
    assert err <= rel, f"max relative error {err:.2e}"


def _set(mapping, layers) -> WitnessSet:
    return WitnessSet.from_mapping(mapping, layers)


@pytest.fixture(scope="module")
def published() -> WitnessSet:
    return WitnessSet.read(VGG_FACE_WITNESSES)  # the release's lists for VGG-Face, shipped byte for byte


@pytest.mark.parametrize(("start", "batch"), [(0, 1), (1, 7), pytest.param(8, 16, marks=pytest.mark.slow)])
def test_batched_equals_reference_on_vgg_face(random_vgg, published, faces, start: int, batch: int) -> None:
    x = faces[start : start + batch]
    detector = AmIDetector(random_vgg, published)
    with torch.no_grad():
        original, steered = detector.model(x), detector.steered_logits(x)
        ref = reference_steered_logits(random_vgg, published, PRESETS["published"], x)
        torch.testing.assert_close(original, random_vgg(x))
    assert steered.shape == (batch, 2622)
    _assert_rel_close(steered, ref)
    assert torch.equal(steered.argmax(1), ref.argmax(1))
    assert not torch.allclose(steered, original)  # steering does something


@pytest.mark.parametrize(
    "mapping",
    [
        pytest.param({"leye": {"relu2": [1, 3]}, "nose": {"relu2": [3, 7]}}, id="duplicate-channel"),
        pytest.param({"leye": {"relu1": [2]}}, id="single-witness-zero-std"),
        pytest.param({"leye": {"pool3": [0, 5, 9]}, "mouth": {"pool3": [5]}}, id="pool3-crop"),
        pytest.param({"leye": {"relu6": [0, 4, 31]}, "reye": {"relu6": [4]}}, id="1d-layer"),
        pytest.param({"leye": {"pool1": [1], "relu2": [], "relu6": [2, 3]}}, id="empty-layer"),
        pytest.param(
            {"leye": dict.fromkeys(TinyNet().hook_layers, [1, 2]), "nose": {"pool3": [2, 3]}}, id="all-layers"
        ),
    ],
)
def test_rules_on_tiny_net(tiny, tiny_x, mapping) -> None:
    witnesses = _set(mapping, tiny.hook_layers)
    params = SteeringParams(60.0, (2.15, 50.0))
    with torch.no_grad():
        steered = AmIDetector(tiny, witnesses).steered_logits(tiny_x)
        ref = reference_steered_logits(tiny, witnesses, params, tiny_x)
    _assert_rel_close(steered, ref)


def test_zero_std_factors() -> None:
    x = torch.ones(2, 4, 3, 3)  # every channel sums to 9: std over witnesses is 0
    out = steer(x, torch.tensor([1, 2, 2]), SteeringParams(60.0, (2.15, 50.0)))
    factors = out[:, :, 0, 0]
    expected = torch.tensor([1.0, 1.15, 1.15**2, 1.0]).expand(2, 4)
    torch.testing.assert_close(factors, expected)


def test_batch_independence_on_dlib_with_a_thrice_listed_channel(faces) -> None:
    """dlib's ResNet with one channel listed by three attributes at relu2 (as extracted from the release's faces):
    the witness sums are equal, so std is 0; a float std of ~1e-7 (reduction order depends on the batch) once made
    a sample's steered output depend on its batch size."""
    from ami_lightning.models.dlib_resnet import load_dlib_resnet

    model = load_dlib_resnet()
    witnesses = WitnessSet.from_mapping({"leye": {"relu2": [10], "relu1": [4, 30]}, "nose": {"relu2": [10]},
                                         "mouth": {"relu2": [10], "relu1": [4, 30]}}, model.hook_layers)
    detector = AmIDetector(model, witnesses, 1000.0, (2.15, 200.0))
    x = faces[:8]
    with torch.no_grad():
        together = detector.steered_logits(x)
        alone = torch.cat([detector.steered_logits(x[i : i + 1]) for i in range(8)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)


def test_crop_only_on_steered_crop_layers(tiny, tiny_x) -> None:
    """pool3 without witnesses is neither cropped nor steered; with crop_layers=() it is steered without crop."""
    empty = _set({"leye": {"relu1": [1, 2]}}, tiny.hook_layers)
    only_relu1 = AmIDetector(tiny, empty)
    with torch.no_grad():
        _assert_rel_close(only_relu1.steered_logits(tiny_x), reference_steered_logits(
            tiny, empty, only_relu1.params, tiny_x))
        at_pool3 = _set({"leye": {"pool3": [1, 2, 3]}}, tiny.hook_layers)
        no_crop = AmIDetector(tiny, at_pool3, crop_layers=()).steered_logits(tiny_x)
        ref = reference_steered_logits(tiny, at_pool3, only_relu1.params, tiny_x, crop_layers=())
        _assert_rel_close(no_crop, ref)
        cropped = AmIDetector(tiny, at_pool3).steered_logits(tiny_x)
        assert not torch.allclose(cropped, no_crop)
        nothing = AmIDetector(tiny, _set({"leye": {}}, tiny.hook_layers))
        assert nothing.layers == ()
        torch.testing.assert_close(nothing.steered_logits(tiny_x), tiny(tiny_x))


def test_sample_does_not_depend_on_batch_mates(random_vgg, published, faces) -> None:
    detector = AmIDetector(random_vgg, published)
    with torch.no_grad():
        together = detector.steered_logits(faces[:4])
        alone = torch.cat([detector.steered_logits(faces[i : i + 1]) for i in range(4)])
        mixed = detector.steered_logits(torch.cat([faces[:1], faces[40:43]]))
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(mixed[0], together[0], rtol=1e-4, atol=1e-3)


def test_hooks_do_not_leak_and_detectors_do_not_interfere(tiny, tiny_x) -> None:
    with torch.no_grad():
        before = tiny(tiny_x)
        first = AmIDetector(tiny, _set({"leye": {"relu1": [1, 2], "relu6": [3]}}, tiny.hook_layers))
        second = AmIDetector(tiny, _set({"nose": {"pool3": [4, 5, 6]}}, tiny.hook_layers), weaken=100.0)
        a_alone, b_alone = first.steered_logits(tiny_x), second.steered_logits(tiny_x)
        a_again = first.steered_logits(tiny_x)
        b_again = second.steered_logits(tiny_x)
        assert torch.equal(second(tiny_x).logits, before)  # the full forward leaves the plain model plain
        after = tiny(tiny_x)
    torch.testing.assert_close(a_alone, a_again)
    torch.testing.assert_close(b_alone, b_again)
    torch.testing.assert_close(before, after)
    assert not torch.allclose(a_alone, b_alone)
    for name in tiny.hook_layers:
        assert not find_layer(tiny, name)._forward_hooks


def test_detection_outputs(tiny, tiny_x) -> None:
    detector = AmIDetector(tiny, _set({"leye": {"relu1": [0, 1, 2], "relu6": [1, 5]}}, tiny.hook_layers),
                           weaken=1.0, strengthen=(3.0, 1.0))
    with torch.no_grad():
        out = detector(tiny_x)
        flags, scores = out.flagged, out.score
        original, steered = detector.model(tiny_x), detector.steered_logits(tiny_x)
    assert torch.equal(out.logits, original) and torch.equal(detector.score(tiny_x, original), scores)
    assert flags.shape == scores.shape == (6,) and flags.dtype == torch.bool
    assert torch.equal(flags, original.argmax(1) != steered.argmax(1))
    top = original.argmax(1)
    expected = torch.tensor([-torch.log(steered[i].double().softmax(0)[top[i]]).item() for i in range(6)])
    torch.testing.assert_close(scores, expected.float(), rtol=1e-4, atol=1e-5)
    assert scores.min() >= 0
    certain = torch.full((2, 3), -50.0).scatter(1, torch.tensor([[1], [2]]), 50.0)
    torch.testing.assert_close(detection_score(certain, certain), torch.zeros(2))
    torch.testing.assert_close(detection_score(certain, certain.flip(0)), torch.full((2,), 100.0))  # no saturation


def test_gradients_reach_pixels_through_steering(tiny, tiny_x) -> None:
    detector = AmIDetector(tiny, _set({"leye": {"relu1": [0, 1], "pool3": [2, 3]}}, tiny.hook_layers))
    x = tiny_x[:2].clone().requires_grad_(True)
    detector.steered_logits(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_errors(tiny) -> None:
    with pytest.raises(KeyError, match="relu9"):
        AmIDetector(tiny, _set({"leye": {"relu9": [1]}}, ["relu9"]))
    with pytest.raises(ValueError, match="must be positive"):
        AmIDetector(tiny, _set({"leye": {"relu1": [1]}}, tiny.hook_layers), weaken=0.0)


def test_presets() -> None:
    assert PRESETS["published"] == SteeringParams(60.0, (2.15, 50.0))
    assert PRESETS["caffe"] == SteeringParams(100.0, (2.15, 60.0))


@pytest.mark.gpu
def test_cuda_matches_cpu(tiny, tiny_x) -> None:
    witnesses = _set({"leye": {"relu1": [0, 1], "pool3": [2, 3], "relu6": [4]}}, tiny.hook_layers)
    cpu = AmIDetector(tiny, witnesses)
    with torch.no_grad():
        expected = cpu.steered_logits(tiny_x)
        gpu = AmIDetector(tiny, witnesses).cuda()
        got = gpu.steered_logits(tiny_x.cuda()).cpu()
    cpu.cpu()
    _assert_rel_close(got, expected, 1e-3)


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (4, 64, 14, 14), (1, 5, 13, 9), (3, 2, 7, 7)])
def test_crop_resize_equals_torch_bilinear_interpolation(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(x[..., 2:-2, 2:-2], size=shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(crop_resize(x, 2), expected, rtol=0, atol=1e-12)
    matrix = bilinear_matrix(shape[-1] - 4, shape[-1], torch.device("cpu"), torch.float64)
    torch.testing.assert_close(matrix.sum(1), torch.ones(shape[-1], dtype=torch.float64))  # weights sum to one
