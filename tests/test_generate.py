"""Generating attack sets: published formats, the manifest, resuming after a kill, sharding, bad input, a full disk,
read-only caches and concurrent runs."""

from __future__ import annotations

import builtins
import errno
import io
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
import pytest
import torch
from PIL import Image

import ami_lightning.pipeline.generation as gen
from ami_lightning.attacks.base import face_seed
from ami_lightning.attacks.masked import patch_mask
from ami_lightning.attacks.registry import get_spec
from ami_lightning.data.datasets import FaceFiles, load_pixels
from ami_lightning.data.images import load_image
from ami_lightning.data.manifest import ManifestError, TornManifestWarning, merge_manifests, read_manifest
from ami_lightning.pipeline import files
from ami_lightning.pipeline.generation import generate
from tests.toy import toy_classifier, toy_faces

IDENTITIES = [f"Person_{chr(65 + i)}" for i in range(10)]  # the toy's class names, e.g. Person_A
NUMERICS = ("batch_size", "torch", "torch_threads", "cpu_capability")
FIELDS = {"file", "source", "identity", "label", "target", "original_pred", "adversarial_pred", "success", "l0", "l2",
          "linf", "iterations", "seed", "seconds", *NUMERICS}
FGSM = {"eps": 48.0}
WRITE_BYTES = gen.write_bytes


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
    assert row["seed"] == face_seed(0, "fgsm", Path(faces.paths[3]).name)
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
    """Make the generator's :func:`ami_lightning.pipeline.files.write_bytes` record every sample file it writes and
    raise
    ``KeyboardInterrupt`` (a kill) when asked for the file after the first ``count`` (``count`` < 0: never)."""
    def write(path: Path, data: bytes, durable: bool = False) -> Path:
        if path.suffix != ".jsonl":
            if len(written) == count:
                raise KeyboardInterrupt
            written.append(path.name)
        return WRITE_BYTES(path, data, durable)

    monkeypatch.setattr(gen, "write_bytes", write)


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
    with pytest.warns(TornManifestWarning, match="line 6 was cut short"):
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
    # 10 faces in 8 batches (2, 2, 1, 1, 1, 1, 1, 1): rank 0 takes batches 0, 2, 4, 6, rank 1 batches 1, 3, 5, 7
    assert sorted(shards[0]) == sorted(f"{Path(faces.paths[i]).stem}.npy" for i in (0, 1, 4, 6, 8))
    assert sorted(shards[1]) == sorted(f"{Path(faces.paths[i]).stem}.npy" for i in (2, 3, 5, 7, 9))
    assert {row["batch_size"] for row in shards[0].values()} == {row["batch_size"] for row in shards[1].values()} \
        == {1, 2}
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
    with pytest.raises(ValueError, match="bad face file .*Person_K_0_1.0_2.0_3.0_4.0.png: cannot decode image"):
        generate("fgsm", model, FaceFiles([*faces.paths, broken], [*faces.labels, 0]), tmp_path, FGSM)
    small = folder / "Person_L_0_1.0_2.0_3.0_4.0.png"
    _save_png(torch.zeros(3, 16, 16), small)
    with pytest.raises(ValueError, match=r"Person_L_0_1.0_2.0_3.0_4.0.png: pixels of shape \(3, 16, 16\), expected "
                                         r"\(3, 32, 32\)"):
        generate("fgsm", model, FaceFiles([*faces.paths, small], [*faces.labels, 0]), tmp_path / "small", FGSM,
                 batch_size=5)
    assert len(read_manifest(tmp_path / "small" / "fgsm" / "manifest.jsonl")) == 10  # the batches before it are kept


# ---- reliability: full disk, bad manifests, read-only caches, concurrent runs ---------------------------------------
class _FullDisk:
    """A file opened for writing that takes half of what it is given, then fails as a full disk does."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    def write(self, data: bytes) -> int:
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_leaves_no_temporary_file(model, faces: FaceFiles, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = builtins.open

    def open_on_a_full_disk(file, mode: str = "r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return _FullDisk(handle) if "w" in mode and str(file).endswith(".tmp") else handle

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", open_on_a_full_disk)
        with pytest.raises(OSError, match="No space left on device"):
            generate("fgsm", model, faces, tmp_path, FGSM, batch_size=4)
    folder = tmp_path / "fgsm"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.jsonl"]  # no half-written file, no *.tmp
    assert read_manifest(folder / "manifest.jsonl") == {}
    generate("fgsm", model, faces, tmp_path, FGSM, batch_size=4)  # with space again: done, nothing left over
    assert len(read_manifest(folder / "manifest.jsonl")) == 10 and not [p for p in folder.iterdir()
                                                                          if p.name.endswith(".tmp")]


def test_stale_temporaries_of_killed_writers_are_removed(model, faces: FaceFiles, tmp_path: Path) -> None:
    folder = tmp_path / "fgsm"
    folder.mkdir()
    name = _source_name(2).replace(".png", ".npy")
    dead = 99_999_999  # above any pid_max: no process has it
    stale = [folder / f".{name}.{dead}.0123abcd.tmp", folder / f"{name}.tmp",
             folder / f".manifest.jsonl.{dead}.89abcdef.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    foreign = folder / f".somebody_else.npy.{dead}.0123abcd.tmp"  # not a file of this set
    in_flight = folder / f".{_source_name(3).replace('.png', '.npy')}.{os.getppid()}.0123abcd.tmp"  # a live writer's
    for path in (foreign, in_flight):
        path.write_bytes(b"theirs")
    generate("fgsm", model, faces, tmp_path, FGSM, batch_size=4)
    assert not any(path.exists() for path in stale)
    assert foreign.read_bytes() == in_flight.read_bytes() == b"theirs"  # left alone


def test_bad_manifest_line_stops_the_generator(model, faces: FaceFiles, tmp_path: Path) -> None:
    folder = tmp_path / "fgsm"
    folder.mkdir()
    rows = ['{"file": "a.npy", "label": 1}', '{"label": 2}', '{"file": "c.npy", "label": 3}']
    (folder / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(ManifestError, match=r"manifest .*fgsm/manifest.jsonl, line 2: missing key 'file'"):
        generate("fgsm", model, faces, tmp_path, FGSM)


@contextmanager
def _read_only_filesystem(monkeypatch: pytest.MonkeyPatch, *folders: Path) -> Iterator[None]:
    """Make every way of writing fail, as on a read-only filesystem (tests run as root, where chmod does not stop
    writes): opening a file to write, creating, renaming, removing, truncating, and the file lock."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EROFS, "read-only filesystem (test)", str(args[0]) if args else "")

    real_open, real_os_open = builtins.open, os.open

    def open_to_read(file, mode: str = "r", *args, **kwargs):
        if set(mode) & set("wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open_to_read(path, flags: int, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    modes = {folder: folder.stat().st_mode for folder in folders}
    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", open_to_read)
        patch.setattr(io, "open", open_to_read)
        patch.setattr(os, "open", os_open_to_read)
        for name in ("replace", "rename", "mkdir", "makedirs", "unlink", "remove", "rmdir", "truncate"):
            patch.setattr(os, name, refuse)
        patch.setattr(files, "FileLock", refuse)
        for folder in folders:
            folder.chmod(0o555)
        try:
            yield
        finally:
            for folder, mode in modes.items():
                folder.chmod(mode)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_finished_cache_works_read_only(model, faces: FaceFiles, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the manifest was opened for appending (and the folder created) even with nothing left to do."""
    folder = generate("fgsm", model, faces, tmp_path / "one", FGSM, batch_size=4)
    for rank in (0, 1):
        generate("fgsm", model, faces, tmp_path / "two", FGSM, batch_size=4, rank=rank, world_size=2)
    merge_manifests(tmp_path / "two" / "fgsm")
    before = _snapshot(tmp_path)
    with _read_only_filesystem(monkeypatch, folder, folder.parent):
        assert generate("fgsm", model, faces, tmp_path / "one", FGSM, batch_size=4) == folder
        for rank in (0, 1):
            generate("fgsm", model, faces, tmp_path / "two", FGSM, batch_size=4, rank=rank, world_size=2)
        assert len(FaceFiles.from_manifest(folder / "manifest.jsonl")) == 10
        with pytest.raises(PermissionError, match="read-only filesystem"):  # the guard works: work would fail
            generate("fgsm", model, FaceFiles(faces.paths, faces.labels), tmp_path / "cold", FGSM)
    assert _snapshot(tmp_path) == before


def _generate_concurrently(role: str, model: torch.nn.Module, faces: FaceFiles, out: Path, ready, holding) -> None:
    """One of two processes generating the same set (spawned): ``first`` waits until ``second`` is ready, then
    generates slowly (0.3 s per file); ``second`` starts once ``first`` holds the lock and has written a file. Each
    writes ``<out>/<role>.json``: the sample files it wrote and the manifest rows it saw before it started."""
    written: list[str] = []

    def write(path: Path, data: bytes, durable: bool = False) -> Path:
        written.append(path.name)
        if role == "first":
            holding.set()
            time.sleep(0.3)
        return WRITE_BYTES(path, data, durable)

    gen.write_bytes = write
    seen = -1
    if role == "first":
        ready.wait(300)
    else:
        ready.set()
        if not holding.wait(300):
            raise RuntimeError("the first process never started writing")
        seen = len(read_manifest(out / "fgsm" / "manifest.jsonl"))  # possibly with a torn last line
    generate("fgsm", model, faces, out, FGSM, batch_size=4, progress=False)
    (out / f"{role}.json").write_text(json.dumps({"written": written, "seen": seen}))


@pytest.mark.slow
def test_two_processes_on_a_cold_cache_attack_each_face_once(model, faces: FaceFiles, tmp_path: Path) -> None:
    """Before: both processes attacked every face (no lock, no work sharing)."""
    context = multiprocessing.get_context("spawn")
    ready, holding = context.Event(), context.Event()
    processes = [context.Process(target=_generate_concurrently, args=(role, model, faces, tmp_path, ready, holding))
                 for role in ("first", "second")]
    for process in processes:
        process.start()
    for process in processes:
        process.join(600)
    assert [process.exitcode for process in processes] == [0, 0]
    first, second = (json.loads((tmp_path / f"{role}.json").read_text()) for role in ("first", "second"))
    names = sorted(f"{Path(p).stem}.npy" for p in faces.paths)
    assert sorted(first["written"]) == names  # every face written once, by the first process
    assert second["seen"] < 10 and second["written"] == []  # the second came mid-run, waited, attacked none
    folder = tmp_path / "fgsm"
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["file"] for line in lines] == names
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_manifest_rows_record_what_the_float_results_depend_on(model, faces: FaceFiles, tmp_path: Path) -> None:
    """Thread count, batch size, torch and CPU instruction set are recorded with each sample: on a CPU the attack
    files depend on them (README: which figures depend on the machine)."""
    folder = generate("fgsm", model, faces, tmp_path / "out", FGSM, batch_size=3)
    # 10 faces, at most 3 per batch, a multiple of 8 batches: 2 batches of 2 (faces 0-3) then 6 of 1
    sizes = {f"{Path(path).stem}.npy": 2 if i < 4 else 1 for i, path in enumerate(faces.paths)}
    for name, row in read_manifest(folder / "manifest.jsonl").items():
        assert {key: row[key] for key in NUMERICS} == {
            "batch_size": sizes[name], "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@pytest.mark.parametrize("file_format", ["npy", "png"])
def test_damaged_cached_samples_are_made_again(model, faces: FaceFiles, tmp_path: Path, file_format: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a logged sample whose file was cut short (or overwritten with garbage) counted as done forever, and
    the evaluation stopped on it at every run."""
    folder = generate("fgsm", model, faces, tmp_path, FGSM, batch_size=4, file_format=file_format)
    names = sorted(read_manifest(folder / "manifest.jsonl"))
    before = {name: (folder / name).read_bytes() for name in names}
    cut, garbage = folder / names[2], folder / names[7]
    cut.write_bytes(before[names[2]][: len(before[names[2]]) // 2])
    garbage.write_bytes(b"\0" * len(before[names[7]]))
    written: list[str] = []
    _kill_after(monkeypatch, -1, written)
    with pytest.warns(gen.DamagedSampleWarning) as caught:
        generate("fgsm", model, faces, tmp_path, FGSM, batch_size=4, file_format=file_format)
    assert sorted(written) == sorted([cut.name, garbage.name])
    assert all((folder / name).read_bytes() == before[name] for name in names if name not in written)
    assert all(load_pixels(folder / name).shape == (3, 32, 32) for name in written)  # readable again
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2 and messages[0].startswith(f"cached attack sample {cut} is damaged (")
    assert messages[0].endswith("); attacking its face again")
    assert len(FaceFiles.from_manifest(folder / "manifest.jsonl")) == 10
