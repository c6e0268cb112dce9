from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from ami_lightning.models.layers import find_layer, hook_layer_names
from ami_lightning.models.vgg_face import VGG_FACE_MEAN, VggFace, load_vgg_face, vgg_face


def _small_state(tmp_path: Path, state: object, name: str = "w.pth") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    net = VggFace()
    state = net.state_dict()
    return _small_state(tmp_path_factory.mktemp("vgg"), state), state


def test_module_names_match_vgg_face_dag() -> None:
    names = [n for n, _ in VggFace().named_children()]
    expected = [f"{kind}{b}_{i}" for b, n in [(1, 2), (2, 2), (3, 3), (4, 3), (5, 3)] for i in range(1, n + 1)
                for kind in ("conv", "relu")]
    assert [n for n in names if re.match(r"(conv|relu)\d_\d", n)] == expected
    assert [n for n in names if not re.match(r"(conv|relu)\d_\d", n)] == [
        "pool1", "pool2", "pool3", "pool4", "pool5", "fc6", "relu6", "dropout6", "fc7", "relu7", "dropout7", "fc8"]
    assert len(VggFace().state_dict()) == 32
    assert hook_layer_names(vgg_face()) == (
        "relu1_1", "relu1_2", "pool1", "relu2_1", "relu2_2", "pool2", "relu3_1", "relu3_2", "relu3_3", "pool3",
        "relu4_1", "relu4_2", "relu4_3", "pool4", "relu5_1", "relu5_2", "relu5_3", "pool5", "relu6", "relu7")


def test_load_round_trip_and_preprocessing(saved: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = saved
    model = load_vgg_face(path)
    assert not model.training
    x = torch.rand(2, 3, 224, 224) * 255
    plain = VggFace().eval()
    plain.load_state_dict(state)
    mean = torch.tensor(VGG_FACE_MEAN).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x - mean))
    assert model(x).shape == (2, 2622)
    assert isinstance(find_layer(model, "pool3"), torch.nn.MaxPool2d)


@pytest.mark.slow
def test_load_errors(tmp_path: Path, saved: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = saved
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_vgg_face(tmp_path / "nope.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[: 1_000_000])
    with pytest.raises(ValueError, match="truncated.pth.*not a readable PyTorch state dict"):
        load_vgg_face(truncated)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_vgg_face(_small_state(tmp_path, [torch.zeros(1)], "list.pth"))
    small = {k: v for k, v in state.items() if k != "fc8.bias"}
    with pytest.raises(ValueError, match=r"missing \['fc8.bias'\], unexpected \[\]"):
        load_vgg_face(_small_state(tmp_path, small, "missing.pth"))
    extra = dict(state, **{"fc9.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected \['fc9.weight'\]"):
        load_vgg_face(_small_state(tmp_path, extra, "extra.pth"))
    wrong = dict(state, **{"fc8.bias": torch.zeros(10)})
    with pytest.raises(ValueError, match=r"fc8.bias: \(10,\) != \(2622,\)"):
        load_vgg_face(_small_state(tmp_path, wrong, "shape.pth"))
