from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ami_lightning.layers import layer_channels
from ami_lightning.witnesses import ATTRIBUTES, WitnessFormatError, WitnessSet
from ami_lightning.witnesses.witness_set import caffe_to_layer, layer_to_caffe

# Channel counts of VGG-Face's hooked layers (checked against the network in test_channels_match_vgg_face).
VGG_CHANNELS: dict[str, int] = {}
for _block, _convs, _c in [(1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512)]:
    VGG_CHANNELS.update({f"relu{_block}_{i}": _c for i in range(1, _convs + 1)}, **{f"pool{_block}": _c})
VGG_CHANNELS.update(relu6=4096, relu7=4096)

def test_channels_match_vgg_face(random_vgg) -> None:
    assert layer_channels(random_vgg, random_vgg.hook_layers) == {k: VGG_CHANNELS[k] for k in random_vgg.hook_layers}


def test_vgg_face_dag_round_trip_is_byte_exact(reference: Path, tmp_path: Path) -> None:
    source = reference / "witnesses_vgg_face_dag"
    witnesses = WitnessSet.read(source, channels=VGG_CHANNELS)
    assert witnesses.attributes == ATTRIBUTES
    assert witnesses.layers[0] == "relu1_1" and witnesses.layers[-1] == "relu7" and len(witnesses.layers) == 20
    assert witnesses.witnesses["nose"]["pool2"] == (28, 102, 106)
    assert witnesses.witnesses["nose"]["relu6"] == ()
    for path in witnesses.write(tmp_path):
        assert path.read_bytes() == (source / path.name).read_bytes()
    assert WitnessSet.read(tmp_path) == witnesses


def test_caffe_round_trip(reference: Path, tmp_path: Path) -> None:
    source = reference / "witnesses_caffe"
    witnesses = WitnessSet.read(source, "caffe", channels=VGG_CHANNELS)
    assert witnesses.layers == tuple(VGG_CHANNELS)
    assert witnesses.witnesses["leye"]["pool2"] == (28, 102, 106)  # written unsorted as 106,28,102
    assert witnesses.witnesses["leye"]["relu7"] == (1213,)  # Caffe's fc7
    witnesses.write(tmp_path, "caffe")
    for attribute in ATTRIBUTES:
        ours = (tmp_path / f"{attribute}_witness.txt").read_text().splitlines()
        theirs = (source / f"{attribute}_witness.txt").read_text().splitlines()
        assert [line.split(",")[0] for line in ours] == [line.split(",")[0] for line in theirs]
        assert [sorted(line.split(",")[1:]) for line in ours] == [sorted(line.split(",")[1:]) for line in theirs]
    assert WitnessSet.read(tmp_path, "caffe", channels=VGG_CHANNELS) == witnesses
    # and across formats
    witnesses.write(tmp_path / "dag")
    assert WitnessSet.read(tmp_path / "dag", channels=VGG_CHANNELS) == witnesses


def test_caffe_names() -> None:
    assert caffe_to_layer("conv4_3") == "relu4_3" and caffe_to_layer("fc6") == "relu6"
    assert caffe_to_layer("pool3") == "pool3"
    for layer in VGG_CHANNELS:
        assert caffe_to_layer(layer_to_caffe(layer)) == layer


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("relu1_1 42", r"leye_neurons.txt:2: expected 'layer->i,j,k'"),
        ("relu1_2->4,x", r"leye_neurons.txt:2: channel indices must be integers"),
        ("relu9_9->1", r"leye_neurons.txt:2: unknown layer 'relu9_9'"),
        ("relu1_2->64", r"leye_neurons.txt:2: channel index 64 out of range for relu1_2 \(64 channels\)"),
        ("relu1_1->3", r"leye_neurons.txt:2: layer 'relu1_1' listed twice"),
        ("->3", r"leye_neurons.txt:2: bad layer name"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    (tmp_path / "leye_neurons.txt").write_text(f"relu1_1->42\n{line}\n")
    with pytest.raises(WitnessFormatError, match=message):
        WitnessSet.read(tmp_path, attributes=["leye"], channels=VGG_CHANNELS)


def test_missing_file_and_bad_format(reference: Path, tmp_path: Path) -> None:
    shutil.copy(reference / "witnesses_vgg_face_dag" / "leye_neurons.txt", tmp_path)
    with pytest.raises(FileNotFoundError, match="reye_neurons.txt"):
        WitnessSet.read(tmp_path)
    with pytest.raises(ValueError, match="unknown witness format 'onnx'"):
        WitnessSet.read(tmp_path, "onnx")  # type: ignore[arg-type]


def test_check_channels_and_queries() -> None:
    witnesses = WitnessSet.from_mapping(
        {"leye": {"pool3": [5, 1, 5]}, "nose": {"pool3": [1], "relu6": [7]}}, layers=["relu1_1", "pool3", "relu6"]
    )
    assert witnesses.witnesses["leye"] == {"relu1_1": (), "pool3": (1, 5), "relu6": ()}
    assert witnesses.at("pool3") == {"leye": (1, 5), "nose": (1,)}
    assert witnesses.steered_layers() == ("pool3", "relu6")
    assert witnesses.count() == {"leye": 2, "nose": 2}
    witnesses.check_channels({"relu1_1": 64, "pool3": 6, "relu6": 8})
    with pytest.raises(ValueError, match=r"nose: channel 7 out of range at relu6 \(4 channels\)"):
        witnesses.check_channels({"relu1_1": 64, "pool3": 6, "relu6": 4})
    with pytest.raises(ValueError, match="unknown layer 'relu6'"):
        witnesses.check_channels({"relu1_1": 64, "pool3": 6})
    with pytest.raises(ValueError, match=r"not in the layer list"):
        WitnessSet.from_mapping({"leye": {"pool9": [1]}}, layers=["pool3"])
