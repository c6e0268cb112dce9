from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from ami_lightning.data.shipped import VGG_FACE_WITNESSES
from ami_lightning.models.layers import layer_channels
from ami_lightning.witnesses import ATTRIBUTES, WitnessFormatError, WitnessSet
from ami_lightning.witnesses.witness_set import caffe_to_layer, layer_to_caffe

# Channel counts of VGG-Face's hooked layers (checked against the network in test_channels_match_vgg_face).
VGG_CHANNELS: dict[str, int] = {}
for _block, _convs, _c in [(1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512)]:
    VGG_CHANNELS.update({f"relu{_block}_{i}": _c for i in range(1, _convs + 1)}, **{f"pool{_block}": _c})
VGG_CHANNELS.update(relu6=4096, relu7=4096)

def test_channels_match_vgg_face(random_vgg) -> None:
    assert layer_channels(random_vgg, random_vgg.hook_layers) == {k: VGG_CHANNELS[k] for k in random_vgg.hook_layers}


def test_vgg_face_dag_round_trip_is_byte_exact(tmp_path: Path) -> None:
    source = VGG_FACE_WITNESSES  # the release's lists, shipped byte for byte
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


def test_missing_file_and_bad_format(tmp_path: Path) -> None:
    shutil.copy(VGG_FACE_WITNESSES / "leye_neurons.txt", tmp_path)
    with pytest.raises(FileNotFoundError, match="reye_neurons.txt"):
        WitnessSet.read(tmp_path)
    with pytest.raises(ValueError, match="unknown witness format 'onnx'"):
        WitnessSet.read(tmp_path, "onnx")  # type: ignore[arg-type]


def test_validate_and_queries() -> None:
    witnesses = WitnessSet.from_mapping(
        {"leye": {"pool3": [5, 1, 5]}, "nose": {"pool3": [1], "relu6": [7]}}, layers=["relu1_1", "pool3", "relu6"]
    )
    assert witnesses.witnesses["leye"] == {"relu1_1": (), "pool3": (1, 5), "relu6": ()}
    assert witnesses.at("pool3") == {"leye": (1, 5), "nose": (1,)}
    assert witnesses.steered_layers() == ("pool3", "relu6")
    assert witnesses.count() == {"leye": 2, "nose": 2}
    assert witnesses.sources == {} and witnesses.where("nose", "relu6") == "(built in memory)"
    witnesses.validate({"relu1_1": 64, "pool3": 6, "relu6": 8})
    with pytest.raises(WitnessFormatError, match=r"^\(built in memory\): attribute 'nose': channel 7 out of range at "
                                                 r"layer 'relu6': allowed 0..3 \(4 channels\)$"):
        witnesses.validate({"relu1_1": 64, "pool3": 6, "relu6": 4})
    with pytest.raises(WitnessFormatError, match=r"attribute 'nose': unknown layer 'relu6'; the model's layers are "
                                                 r"\['relu1_1', 'pool3'\]"):
        witnesses.validate({"relu1_1": 64, "pool3": 6})
    witnesses.validate({"pool3": 6, "relu6": 8})  # relu1_1 holds no witness of a set built in memory: not checked
    with pytest.raises(ValueError, match=r"not in the layer list"):
        WitnessSet.from_mapping({"leye": {"pool9": [1]}}, layers=["pool3"])


def _write_set(folder: Path, lines: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for attribute in ATTRIBUTES:
        (folder / f"{attribute}_neurons.txt").write_text(lines.get(attribute, "relu1->0\nrelu2->1,2\n"))
    return folder


TOY_CHANNELS = {"relu1": 16, "pool1": 16, "relu2": 32, "pool2": 32}  # tests/toy.py's ToyNet


def test_read_remembers_file_and_line_and_validate_names_them(tmp_path: Path) -> None:
    folder = _write_set(tmp_path, {"nose": "relu1->0\n\nrelu2->3,40\n", "mouth": "relu1->1\nrelu7->2\n"})
    witnesses = WitnessSet.read(folder)  # no channels: read as written
    assert witnesses.sources[("nose", "relu2")] == (folder / "nose_neurons.txt", 3)
    assert witnesses.where("mouth", "relu7") == f"{folder / 'mouth_neurons.txt'}:2"
    with pytest.raises(WitnessFormatError, match=r"nose_neurons.txt:3: attribute 'nose': channel 40 out of range at "
                                                 r"layer 'relu2': allowed 0..31 \(32 channels\)"):
        witnesses.validate(TOY_CHANNELS)
    with pytest.raises(WitnessFormatError, match=r"mouth_neurons.txt:2: attribute 'mouth': unknown layer 'relu7'; the "
                                                 r"model's layers are \['relu1', 'pool1', 'relu2', 'pool2'\]"):
        witnesses.validate({**TOY_CHANNELS, "relu2": 41})
    fine = WitnessSet.read(_write_set(tmp_path / "fine", {}))
    fine.validate(TOY_CHANNELS)
    assert fine == WitnessSet.from_mapping({a: {"relu1": [0], "relu2": [1, 2]} for a in ATTRIBUTES})  # sources aside


def test_validate_against_the_toy_model(tmp_path: Path) -> None:
    """The call for a pipeline: the model's own layer names and channel counts."""
    from tests.toy import ToyNet

    net = ToyNet(32)
    channels = layer_channels(net, net.hook_layers, 32)
    assert channels == TOY_CHANNELS
    witnesses = WitnessSet.read(_write_set(tmp_path, {"reye": "relu1->16\n"}))
    with pytest.raises(WitnessFormatError, match=r"reye_neurons.txt:1: attribute 'reye': channel 16 out of range at "
                                                 r"layer 'relu1': allowed 0..15"):
        witnesses.validate(channels)


def test_negative_channel_is_a_parse_error(tmp_path: Path) -> None:
    _write_set(tmp_path, {"leye": "relu1->0\nrelu2->3,-1\n"})
    with pytest.raises(WitnessFormatError, match=r"leye_neurons.txt:2: negative channel index -1 at layer 'relu2'"):
        WitnessSet.read(tmp_path)
    (tmp_path / "leye_witness.txt").write_text("conv1_1,-4\n")
    with pytest.raises(WitnessFormatError, match=r"leye_witness.txt:1: negative channel index -4 at layer 'relu1_1'"):
        WitnessSet.read(tmp_path, "caffe", attributes=["leye"])


@pytest.mark.parametrize(("text", "note"), [("", " (the file is empty)"), ("relu1->\nrelu2->\n", "")])
def test_attribute_without_witnesses_is_an_error_unless_allowed(tmp_path: Path, text: str, note: str) -> None:
    _write_set(tmp_path, {"mouth": text})
    with pytest.raises(WitnessFormatError, match=rf"mouth_neurons.txt{re.escape(note)}: no witness of mouth at any "
                                                 r"layer: AmI would strengthen nothing for it, so this model may not "
                                                 r"suit AmI .*; leave it out with ami.attributes=\[leye,reye,nose\], "
                                                 r"or list witnesses in that file$"):
        WitnessSet.read(tmp_path)
    witnesses = WitnessSet.read(tmp_path, allow_empty=True)
    assert witnesses.count() == {"leye": 3, "reye": 3, "nose": 3, "mouth": 0} and witnesses.empty() == ("mouth",)
    chosen = WitnessSet.read(tmp_path, attributes=["nose", "leye", "reye"])  # the empty one left out
    assert chosen.attributes == ("nose", "leye", "reye") and chosen == witnesses.select(["nose", "leye", "reye"])
    assert set(chosen.sources) == {key for key in witnesses.sources if key[0] != "mouth"}


def test_every_attribute_without_witnesses_is_named(tmp_path: Path) -> None:
    _write_set(tmp_path, {"nose": "", "mouth": "relu1->\n"})
    with pytest.raises(WitnessFormatError, match=r"nose_neurons.txt \(the file is empty\); .*mouth_neurons.txt: no "
                                                 r"witness of nose, mouth at any layer: AmI would strengthen nothing "
                                                 r"for them, .*; leave them out with ami.attributes=\[leye,reye\], or "
                                                 r"list witnesses in those files$"):
        WitnessSet.read(tmp_path)
    with pytest.raises(KeyError, match="no witnesses of ears in this set; it has leye, reye, nose, mouth"):
        WitnessSet.read(tmp_path, allow_empty=True).select(["leye", "ears"])
