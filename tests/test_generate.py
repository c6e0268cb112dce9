"""Generating attack sets: published formats, the manifest, resuming after a kill, sharding, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ami_lightning.attacks.generate as gen
from ami_lightning.attacks.generate import generate, merge_manifests, read_manifest
from ami_lightning.attacks.masked import patch_mask
from ami_lightning.attacks.registry import get_spec
from ami_lightning.data.datasets import FaceFiles
from ami_lightning.images import load_image
from tests.toy import toy_classifier, toy_faces

IDENTITIES = [f"Person_{chr(65 + i)}" for i in range(10)]  # the toy's class names, e.g. Person_A
FIELDS = {"file", "source", "identity", "label", "target", "original_pred", "adversarial_pred", "success", "l0", "l2",
          "linf", "iterations", "seconds"}
FGSM = {"eps": 48.0}
WRITE_ATOMIC = gen.write_atomic


def _source_name(i: int) -> str:
    return f"{IDENTITIES[i]}_{i}_1.0_2.0_3.0_4.0.png"  # the VGG Face rule: <Name>_<idx>_<x1>_<y1>_<x2>_<y2>


def _save_png(pixels: torch.Tensor, path: Path) -> None:
    Image.fromarray(pixels.permute(1, 2, 0).to(torch.uint8).numpy()).save(path)


@pytest.fixture
def faces(tmp_path: Path) -> FaceFiles:
    """The toy's 10 faces as 32 x 32 PNG files with VGG Face names, labelled through the names list."""
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, image in enumerate(toy_faces(32)[0]):
        _save_png(image, folder / _source_name(i))
    return FaceFiles.from_folder(folder, IDENTITIES)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return toy_classifier(32)


def _check_rows_describe_files(model: torch.nn.Module, folder: Path, rows: dict) -> None:
    for name, row in rows.items():
        path = folder / name
        pixels = torch.from_numpy(np.load(path)) if path.suffix == ".npy" else load_image(path).float()
        with torch.no_grad():
            assert model(pixels[None]).argmax(1).item() == row["adversarial_pred"], name
        source = load_image(row["source"]).float()
        assert row["linf"] == pytest.approx((pixels - source).abs().max().item(), abs=1e-4)


def test_npy_format_and_manifest(model, faces: FaceFiles, tmp_path: Path) -> None:
    assert faces.labels == list(range(10))
    folder = generate("fgsm", model, faces, tmp_path / "out", FGSM, batch_size=4)
    assert folder == tmp_path / "out" / "fgsm"
    rows = read_manifest(folder / "manifest.jsonl")
    assert sorted(rows) == [_source_name(i).replace(".png", ".npy") for i in range(10)]
    array = np.load(folder / _source_name(3).replace(".png", ".npy"))
    assert array.dtype == np.float32 and array.shape == (3, 32, 32)
    # RGB and raw pixels 0-255: every channel within eps of the same channel of the source
    source = np.asarray(Image.open(faces.paths[3]), dtype=np.float32).transpose(2, 0, 1)
    assert np.abs(array - source).max(axis=(1, 2)) == pytest.approx([48.0, 48.0, 48.0], abs=1e-4)
    row = rows[_source_name(3).replace(".png", ".npy")]
    assert set(row) == FIELDS and row["identity"] == "Person_D" and row["label"] == 3 and row["target"] == -1
    assert row["original_pred"] == 3 and row["iterations"] == 1 and row["seconds"] > 0
    assert row["success"] == (row["adversarial_pred"] != 3) and row["linf"] <= 48.0001
    print(f"FGSM eps 48 on the toy: {sum(r['success'] for r in rows.values())}/10 untargeted")
    _check_rows_describe_files(model, folder, rows)


@pytest.mark.parametrize("file_format", ["png", "jpg"])
def test_image_formats(model, faces: FaceFiles, tmp_path: Path, file_format: str) -> None:
    params = {"top": 40, "left": 40, "size": 144, "steps": 20}
    folder = generate(get_spec("patch_next"), model, faces, tmp_path, params, batch_size=4, file_format=file_format)
    rows = read_manifest(folder / "manifest.jsonl")
    name = _source_name(0).replace(".png", f".{file_format}")
    with Image.open(folder / name) as image:
        assert image.size == (32, 32) and image.mode == "RGB" and image.format == ("PNG" if file_format == "png"
                                                                                   else "JPEG")
    assert rows[name]["target"] == 1 and rows[name]["success"] == (rows[name]["adversarial_pred"] == 1)
    _check_rows_describe_files(model, folder, rows)  # predictions of the stored (8-bit, JPEG-decoded) pixels
    if file_format == "png":  # lossless: outside the patch, the source bit for bit
        adversarial, source = load_image(folder / name), load_image(faces.paths[0])
        outside = ~patch_mask(32, 32, 40, 40, 144).expand_as(source)
        assert torch.equal(adversarial[outside], source[outside])


def _kill_after(monkeypatch: pytest.MonkeyPatch, count: int, written: list[str]) -> None:
    """Make :func:`gen.write_atomic` record every sample file it writes and raise ``KeyboardInterrupt`` (a kill)
    when asked for the file after the first ``count`` (``count`` < 0: never)."""
    def write(path: Path, data: bytes) -> None:
        if path.suffix != ".jsonl":
            if len(written) == count:
                raise KeyboardInterrupt
            written.append(path.name)
        WRITE_ATOMIC(path, data)

    monkeypatch.setattr(gen, "write_atomic", write)


def test_resumes_after_a_kill(model, faces: FaceFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first: list[str] = []
    _kill_after(monkeypatch, 5, first)  # killed in the middle of the second batch of 4
    with pytest.raises(KeyboardInterrupt):
        generate("fgsm", model, faces, tmp_path, FGSM, batch_size=4)
    folder = tmp_path / "fgsm"
    assert sorted(read_manifest(folder / "manifest.jsonl")) == sorted(first) and len(first) == 5
    assert sorted(p.name for p in folder.glob("*.npy")) == sorted(first)
    assert all(np.load(folder / name).shape == (3, 32, 32) for name in first)
    # worse than a clean kill: a torn manifest line, a stale temporary file, a file whose entry never got written
    with open(folder / "manifest.jsonl", "a") as log:
        log.write('{"file": "Person_J_9_1.0')
    (folder / "Person_J_9_1.0_2.0_3.0_4.0.npy.tmp").write_bytes(b"half")
    orphan = _source_name(6).replace(".png", ".npy")
    np.save(folder / orphan, np.zeros((3, 32, 32), np.float32))
    before = {name: (folder / name).read_bytes() for name in first}

    second: list[str] = []
    _kill_after(monkeypatch, -1, second)
    generate("fgsm", model, faces, tmp_path, FGSM, batch_size=4)
    assert sorted(second) == sorted({f"{Path(p).stem}.npy" for p in faces.paths} - set(first))  # orphan redone
    assert orphan in second and all((folder / name).read_bytes() == before[name] for name in first)
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 10 and len({json.loads(line)["file"] for line in lines}) == 10
    assert not list(folder.glob("*.tmp"))
    generate("fgsm", model, faces, tmp_path, FGSM, batch_size=4)  # all done: nothing recomputed
    assert len(second) == 5 and (folder / "manifest.jsonl").read_text().splitlines() == lines


def test_sharded_ranks_then_merge(model, faces: FaceFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for rank in (0, 1):  # rank 1 loads its images in two worker processes
        generate("fgsm", model, faces, tmp_path, FGSM, batch_size=4, rank=rank, world_size=2, num_workers=2 * rank)
    folder = tmp_path / "fgsm"
    shards = [read_manifest(folder / f"manifest.rank{r}.jsonl") for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5 and not set(shards[0]) & set(shards[1])
    assert sorted(shards[0]) == sorted(f"{Path(faces.paths[i]).stem}.npy" for i in range(0, 10, 2))
    merged = merge_manifests(folder)
    lines = [json.loads(line)["file"] for line in merged.read_text().splitlines()]
    assert lines == sorted(lines) and len(lines) == 10 and not list(folder.glob("manifest.rank*"))
    written: list[str] = []
    _kill_after(monkeypatch, -1, written)
    generate("fgsm", model, faces, tmp_path, FGSM, rank=1, world_size=2)  # finished according to the merged one
    assert written == []


def test_bad_input_names_the_culprit(model, faces: FaceFiles, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown attack set 'fgsm_next'"):
        generate("fgsm_next", model, faces, tmp_path)
    with pytest.raises(ValueError, match="unknown target mode 'last'"):
        generate("fgsm", model, faces, tmp_path, target_mode="last")
    with pytest.raises(ValueError, match="unknown file format 'tiff'"):
        generate("fgsm", model, faces, tmp_path, file_format="tiff")
    with pytest.raises(TypeError, match="attack set 'bim': bad parameters"):
        generate("bim", model, faces, tmp_path, {"epsilon": 3})
    with pytest.raises(ValueError, match=r"rank must lie in \[0, world_size=2\)"):
        generate("fgsm", model, faces, tmp_path, rank=2, world_size=2)
    folder = faces.paths[0].parent
    odd = folder / "not_a_vgg_face_name.png"
    _save_png(torch.zeros(3, 32, 32), odd)
    with pytest.raises(ValueError, match="not_a_vgg_face_name.png"):
        generate("fgsm", model, FaceFiles([*faces.paths, odd], [*faces.labels, 0]), tmp_path)
    broken = folder / "Person_K_0_1.0_2.0_3.0_4.0.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="unreadable face file .*Person_K_0_1.0_2.0_3.0_4.0.png"):
        generate("fgsm", model, FaceFiles([*faces.paths, broken], [*faces.labels, 0]), tmp_path, FGSM)
    small = folder / "Person_L_0_1.0_2.0_3.0_4.0.png"
    _save_png(torch.zeros(3, 16, 16), small)
    with pytest.raises(ValueError, match=r"Person_L_0_1.0_2.0_3.0_4.0.png: pixels of shape \(3, 16, 16\), expected "
                                         r"\(3, 32, 32\)"):
        generate("fgsm", model, FaceFiles([*faces.paths, small], [*faces.labels, 0]), tmp_path / "small", FGSM,
                 batch_size=5)
    assert len(read_manifest(tmp_path / "small" / "fgsm" / "manifest.jsonl")) == 10  # the batches before it are kept
