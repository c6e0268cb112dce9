"""What a run does when things go wrong around its cache: a full disk names the file and the free space, temporary
folders of dead writers are removed, and a model without a witness for some attribute says what to do."""

from __future__ import annotations

import builtins
import errno
import os
import time
from pathlib import Path

import pytest
import torch

import ami_lightning.data.manifest as manifests
from ami_lightning.detectors.ami import ami as ami_factory
from ami_lightning.detectors.base import SetupContext
from ami_lightning.models.base import Normalize, PixelModel
from ami_lightning.pipeline import files
from ami_lightning.witnesses import ATTRIBUTES, WitnessSet
from ami_lightning.witnesses import stage as witness_stage
from ami_lightning.witnesses.witness_set import WitnessFormatError
from tests.toy import ToyNet

DEAD = 99_999_999  # above any pid_max: no process has it


def _toy_model() -> PixelModel:
    torch.manual_seed(0)
    net = ToyNet(32)  # untrained: only its layers matter here
    return PixelModel(net, Normalize((128.0,) * 3, (64.0,) * 3), net.hook_layers, input_size=32).eval()


def _fake_extraction(monkeypatch: pytest.MonkeyPatch, per_attribute: dict[str, list[int]]) -> list[str]:
    """Replace the witness stage's extraction by one that finds ``per_attribute[a]`` at the first layer; returns the
    list that records each extraction."""
    calls: list[str] = []

    def extract(model, layers, *_args, **_kwargs):  # noqa: ANN001, ANN202
        calls.append("extracted")
        mapping = {a: {layers[0]: per_attribute.get(a, [0, 1])} for a in ATTRIBUTES}
        return WitnessSet.from_mapping(mapping, layers), None

    monkeypatch.setattr(witness_stage, "witnesses_from_faces", extract)
    monkeypatch.setattr(witness_stage, "save_mutation_grid", lambda _m, path: Path(path).write_bytes(b"png"))
    return calls


def _entry(cache: Path, model_key: str = "toy") -> Path:
    return cache / "witnesses" / witness_stage.witness_key(model_key, False, cache)


# ---- 13a: an attribute without any witness ---------------------------------------------------------------------------
def test_an_attribute_without_witnesses_says_which_and_what_to_do(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_extraction(monkeypatch, {"nose": []})
    model = _toy_model()
    with pytest.raises(WitnessFormatError) as caught:
        witness_stage.prepare_witnesses(model, tmp_path, "toy")
    message = str(caught.value)
    assert "no witness of nose at any layer" in message
    assert "ami.attributes=[leye,reye,mouth]" in message and "ami.witnesses=" in message
    assert "allow_empty" not in message
    # the extraction is kept (it is what the model gives) and serves the run that leaves the attribute out
    detector = ami_factory(model, crop_layers=[], attributes=["leye", "reye", "mouth"])
    detector.setup(SetupContext(tmp_path / "out", tmp_path, "toy"))
    assert detector.witnesses.count() == {"leye": 2, "reye": 2, "mouth": 2} and calls == ["extracted"]
    assert sorted(p.name for p in (tmp_path / "out" / "witnesses").iterdir()) == [
        "leye_neurons.txt", "mouth_neurons.txt", "reye_neurons.txt"]


def test_no_attribute_with_witnesses_says_the_model_does_not_suit(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_extraction(monkeypatch, dict.fromkeys(ATTRIBUTES, []))
    with pytest.raises(WitnessFormatError, match=r"no witness of leye, reye, nose, mouth at any layer.*no attribute "
                                                 r"is left to select"):
        witness_stage.prepare_witnesses(_toy_model(), tmp_path, "toy")


# ---- 12: temporary folders of dead writers --------------------------------------------------------------------------
def test_temporary_folders_of_dead_writers_are_removed_when_the_entry_is_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_extraction(monkeypatch, {})
    entry = _entry(tmp_path)
    entry.parent.mkdir(parents=True)
    dead = entry.parent / f".{entry.name}.{DEAD}.0123abcd.tmp"
    old = entry.parent / f".{entry.name}.{os.getppid()}.89abcdef.tmp"  # a live pid, but untouched for 2 days
    live = entry.parent / f".{entry.name}.{os.getppid()}.01234567.tmp"  # a live writer's
    other = entry.parent / f".otherkey.{DEAD}.0123abcd.tmp"  # another entry's: its own build cleans it
    for folder in (dead, old, live, other):
        folder.mkdir()
        (folder / "leye_neurons.txt").write_text("relu1->0\n")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    witness_stage.prepare_witnesses(_toy_model(), tmp_path, "toy")
    assert not dead.exists() and not old.exists()
    assert live.is_dir() and other.is_dir()
    assert (entry / "mutations.png").is_file()
    dead.mkdir()  # left beside a finished entry (by a run before this rule): removed when the entry is next read
    witness_stage.prepare_witnesses(_toy_model(), tmp_path, "toy")
    assert not dead.exists() and live.is_dir()


def test_a_failed_build_leaves_no_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_extraction(monkeypatch, {})

    def full_disk(_mutations, path):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(witness_stage, "save_mutation_grid", full_disk)
    with pytest.raises(OSError, match=rf"No space left on device while writing {_entry(tmp_path)} \(.* free"):
        witness_stage.prepare_witnesses(_toy_model(), tmp_path, "toy")
    assert [p.name for p in (tmp_path / "witnesses").iterdir()] == [f"{_entry(tmp_path).name}.lock"]


# ---- 13c: a full disk names the file -----------------------------------------------------------------------------
def test_a_full_disk_names_the_file_and_the_free_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = builtins.open

    def full(file, mode: str = "r", *args, **kwargs):  # noqa: ANN001, ANN202
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode or "a" in mode:
            def write(_data: object) -> int:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            handle.write = write  # type: ignore[method-assign]
        return handle

    target = tmp_path / "sub" / "results.json"
    manifest = tmp_path / "manifest.jsonl"
    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", full)
        with pytest.raises(OSError) as caught:
            files.write_text(target, "{}")
        with pytest.raises(OSError) as appended, manifests.open_log(manifest) as log:
            manifests.append_row(log, {"file": "x.npy", "label": 0})
    for error, path in ((caught.value, target), (appended.value, manifest)):
        assert error.errno == errno.ENOSPC and error.filename == str(path)
        assert f"No space left on device while writing {path} (" in str(error)
        assert " free on the device of " in str(error)
    assert sorted(p.name for p in target.parent.iterdir()) == []  # no temporary file left


def test_other_write_errors_pass_unchanged(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as caught:
        files.write_text(tmp_path / "file" / "below.txt", "y")  # a file where a folder should be
    assert caught.value.errno in (errno.ENOTDIR, errno.EEXIST) and "No space" not in str(caught.value)
