"""Bad input files: every problem of a face file is one clear error naming the file, or a named, counted skip;
images of every PIL mode decode exactly or are refused; manifests are read by one reader that names bad lines."""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ami_lightning.data.datamodule import EvalDataModule
from ami_lightning.data.datasets import (
    SKIP_HINT,
    SKIPPED,
    FaceFileError,
    FaceFiles,
    SkippedFileWarning,
    attack_set,
    load_pixels,
)
from ami_lightning.data.images import BadImageError, load_image
from ami_lightning.data.manifest import ManifestError, TornManifestWarning, read_manifest, read_rows
from ami_lightning.detectors.ami import AmIDetector
from ami_lightning.evaluation.module import DetectorEvalModule
from ami_lightning.models.base import Normalize, PixelModel
from ami_lightning.witnesses import WitnessSet
from tests.toy import ToyNet


# ---- helpers --------------------------------------------------------------------------------------------------------
def _png16_rgb(values: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (PIL cannot write one) of ``values`` uint16 (H, W, 3): filter 0, one IDAT."""
    height, width, _ = values.shape
    raw = b"".join(b"\x00" + values[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _rgb(value: tuple[int, int, int], size: int = 8) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.uint8).view(3, 1, 1).expand(3, size, size)


def _save(path: Path, pixels: np.ndarray | torch.Tensor) -> Path:
    """Save uint8 pixels (3, H, W) as an image file (format from the suffix); returns ``path``."""
    array = pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels
    Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0)).astype(np.uint8)).save(path)
    return path


def _truncated_jpeg(path: Path, size: int = 64) -> Path:
    """A JPEG of random content cut after its first quarter of bytes (PIL would fill the rest of the image)."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=95)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 4])
    return path


# ---- image modes ----------------------------------------------------------------------------------------------------
def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 1000, 32896], [32767, 40000, 65278, 65535]], np.uint16)  # 32896 = 128 * 257
    Image.fromarray(values).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as image:
        assert image.mode == "I;16"
    pixels = load_image(tmp_path / "grey16.png")
    expected = torch.from_numpy(np.rint(values / 257.0).astype(np.uint8))
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 2, 4)
    assert torch.equal(pixels, expected.expand(3, 2, 4))  # round(v / 257): 0, 1, 4, 128, 127, 156, 254, 255
    Image.fromarray(np.full((16, 16), 32896, np.uint16)).save(tmp_path / "mid_grey16.png")
    assert load_image(tmp_path / "mid_grey16.png").float().mean().item() == 128.0  # was 237 (clipped to 255)


def test_16_bit_rgb_png_keeps_its_range(tmp_path: Path) -> None:
    values = np.zeros((2, 2, 3), np.uint16)
    values[...] = [1000, 32896, 65535]
    (tmp_path / "rgb16.png").write_bytes(_png16_rgb(values))
    pixels = load_image(tmp_path / "rgb16.png")
    assert pixels[:, 0, 0].tolist() == [3, 128, 255]  # PIL's high byte: within 1 of round(v / 257) = 4, 128, 255
    assert (pixels.int() - torch.tensor([4, 128, 255]).view(3, 1, 1)).abs().max() <= 1


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("grey.png", lambda: Image.new("L", (4, 4), 77), (77, 77, 77)),
        ("bilevel.png", lambda: Image.new("1", (4, 4), 1), (255, 255, 255)),
        ("opaque_grey_alpha.png", lambda: Image.new("LA", (4, 4), (77, 255)), (77, 77, 77)),
        ("opaque_rgba.png", lambda: Image.new("RGBA", (4, 4), (10, 20, 30, 255)), (10, 20, 30)),
        ("cmyk.tif", lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
    ],
)
def test_modes_convert_exactly(tmp_path: Path, name: str, make, expected: tuple[int, int, int]) -> None:
    make().save(tmp_path / name)
    assert torch.equal(load_image(tmp_path / name), _rgb(expected, 4))


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * (256 * 3 - 6))
    image.save(tmp_path / "palette.png")
    image.save(tmp_path / "unused_transparent_index.png", transparency=0)
    image.save(tmp_path / "see_through.png", transparency=1)
    assert torch.equal(load_image(tmp_path / "palette.png"), _rgb((10, 20, 30), 4))
    assert torch.equal(load_image(tmp_path / "unused_transparent_index.png"), _rgb((10, 20, 30), 4))
    with pytest.raises(BadImageError, match=r"see_through.png: mode RGBA with 16 transparent or translucent pixels"):
        load_image(tmp_path / "see_through.png")


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("translucent.png", lambda: Image.new("RGBA", (4, 4), (10, 20, 30, 128)),
         r"translucent.png: mode RGBA with 16 transparent or translucent pixels \(alpha < 255\)"),
        ("clear_grey.png", lambda: Image.new("LA", (4, 4), (77, 0)), r"clear_grey.png: mode LA with 16 transparent"),
        ("int32.tif", lambda: Image.fromarray(np.full((4, 4), 70000, np.int32)),
         r"int32.tif: 32-bit integer pixels \(mode I\) have no defined range"),
        ("float.tif", lambda: Image.fromarray(np.full((4, 4), 0.5, np.float32)),
         r"float.tif: 32-bit float pixels \(mode F\) have no defined range"),
    ],
)
def test_modes_that_cannot_be_converted_are_refused(tmp_path: Path, name: str, make, message: str) -> None:
    make().save(tmp_path / name)
    with pytest.raises(BadImageError, match=message):
        load_image(tmp_path / name)


def test_truncated_jpeg_is_an_error_for_data_sets_and_a_warning_on_request(tmp_path: Path) -> None:
    path = _truncated_jpeg(tmp_path / "Cher_1_1_2_3_4.jpg")
    with pytest.raises(BadImageError, match=r"Cher_1_1_2_3_4.jpg: truncated image file \(image file is truncated"):
        load_image(path, truncated="error")
    with pytest.raises(BadImageError, match="truncated image file"):
        load_pixels(path)  # the datasets' loader is strict
    with pytest.warns(UserWarning, match="Cher_1_1_2_3_4.jpg is truncated"):
        tolerant = load_image(path)  # the default, for the release's witness faces
    assert tolerant.shape == (3, 64, 64)
    with pytest.raises(ValueError, match="truncated must be 'error' or 'warn', got 'ignore'"):
        load_image(path, truncated="ignore")  # type: ignore[arg-type]
    with pytest.raises(FaceFileError, match=r"bad face file .*Cher_1_1_2_3_4.jpg: truncated image file"):
        FaceFiles([path], [0])[0]


# ---- .npy files ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((8, 8, 3), np.float32), r"expected an array of shape \(3, H, W\), got \(8, 8, 3\)"),
        (np.zeros((3, 8), np.float32), r"expected an array of shape \(3, H, W\), got \(3, 8\)"),
        (np.zeros((3, 8, 8), np.complex64), "an array of dtype complex64, expected float or integer pixels"),
        (np.zeros((3, 8, 8), bool), "an array of dtype bool, expected float or integer pixels"),
        (np.array([np.nan, np.inf] + [0.0] * 190, np.float32).reshape(3, 8, 8), "2 of its 192 values are NaN or inf"),
    ],
)
def test_bad_npy_names_file_and_problem(tmp_path: Path, array: np.ndarray, message: str) -> None:
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(BadImageError, match=rf"bad.npy: {message}"):
        load_pixels(tmp_path / "bad.npy")


def test_npy_that_is_not_one_array(tmp_path: Path) -> None:
    with open(tmp_path / "archive.npy", "wb") as handle:
        np.savez(handle, a=np.zeros((3, 8, 8)))
    with pytest.raises(BadImageError, match=r"archive.npy: a .npz archive, expected a .npy of one array"):
        load_pixels(tmp_path / "archive.npy")
    np.save(tmp_path / "cut.npy", np.zeros((3, 8, 8), np.float32))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:200])
    with pytest.raises(BadImageError, match=r"cut.npy: cannot read .npy"):
        load_pixels(tmp_path / "cut.npy")
    np.save(tmp_path / "bytes.npy", np.full((3, 8, 8), 200, np.uint8))
    assert torch.equal(load_pixels(tmp_path / "bytes.npy"), torch.full((3, 8, 8), 200.0))
    with pytest.raises(FileNotFoundError, match=r"file not found: .*gone.npy"):
        load_pixels(tmp_path / "gone.npy")


# ---- sizes and skipping ---------------------------------------------------------------------------------------------
def _mixed_set(folder: Path) -> tuple[list[Path], dict[str, str]]:
    """Face files of one 8 x 8 set with one of each problem; returns (paths, file name -> expected reason)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [
        _save(folder / "a_good.png", _rgb((10, 20, 30))),
        folder / "b_missing.png",
        folder / "c_garbage.jpg",
        _truncated_jpeg(folder / "d_truncated.jpg", size=8),
        _save(folder / "e_large.png", _rgb((1, 2, 3), 16)),
        folder / "f_wrong_shape.npy",
        folder / "g_good.npy",
        _save(folder / "h_translucent.png", np.full((4, 8, 8), 128, np.uint8)),
    ]
    (folder / "c_garbage.jpg").write_bytes(b"not a jpeg")
    np.save(folder / "f_wrong_shape.npy", np.zeros((8, 8, 3), np.float32))
    np.save(folder / "g_good.npy", np.full((3, 8, 8), 7.5, np.float32))
    reasons = {
        "b_missing.png": "file not found",
        "c_garbage.jpg": "cannot decode image",
        "d_truncated.jpg": "truncated image file",
        "e_large.png": "pixels of shape (3, 16, 16), expected (3, 8, 8) (like the set's first readable file "
                       "a_good.png)",
        "f_wrong_shape.npy": "expected an array of shape (3, H, W), got (8, 8, 3)",
        "h_translucent.png": "mode RGBA with 64 transparent or translucent pixels",
    }
    return paths, reasons


def test_every_problem_raises_naming_the_file(tmp_path: Path) -> None:
    paths, reasons = _mixed_set(tmp_path)
    data = FaceFiles(paths, list(range(len(paths))))
    assert data.expected_size == (8, 8)
    for index, path in enumerate(paths):
        if path.name not in reasons:
            pixels, label, i = data[index]
            assert pixels.shape == (3, 8, 8) and (label, i) == (index, index)
            continue
        with pytest.raises(FaceFileError) as caught:
            data[index]
        assert str(caught.value).startswith(f"bad face file {path}: {reasons[path.name]}")
        assert caught.value.path == path and caught.value.problem.startswith(reasons[path.name])
    assert torch.equal(data[6][0], torch.full((3, 8, 8), 7.5))
    assert data.skipped == {}


def test_skip_records_counts_and_names_every_bad_file(tmp_path: Path) -> None:
    paths, reasons = _mixed_set(tmp_path)
    data = FaceFiles(paths, list(range(len(paths))), on_error="skip")
    with pytest.warns(SkippedFileWarning) as caught:
        items = [data[i] for i in range(len(paths))]
        data[4]  # a second read of a skipped file warns no more
    assert [label for _, label, _ in items] == [0, SKIPPED, SKIPPED, SKIPPED, SKIPPED, SKIPPED, 6, SKIPPED]
    assert all(torch.equal(pixels, torch.zeros(3, 8, 8)) for pixels, label, _ in items if label == SKIPPED)
    assert torch.equal(items[0][0], _rgb((10, 20, 30)).float())
    assert sorted(p.name for p in data.skipped) == sorted(reasons)
    for path, reason in data.skipped.items():
        assert reason.startswith(reasons[path.name])
    messages = [str(w.message) for w in caught]
    assert len(messages) == len(reasons)
    assert f"skipped face file {tmp_path / 'e_large.png'}: pixels of shape (3, 16, 16)" in "\n".join(messages)


def test_size_from_first_readable_file_or_given(tmp_path: Path) -> None:
    (tmp_path / "a_broken.png").write_bytes(b"broken")
    large = _save(tmp_path / "b_large.png", _rgb((5, 5, 5), 16))
    small = _save(tmp_path / "c_small.png", _rgb((6, 6, 6)))
    data = FaceFiles([tmp_path / "a_broken.png", large, small], [0, 1, 2])
    assert data.expected_size == (16, 16)  # the first file is unreadable: the second sets the size
    with pytest.raises(FaceFileError, match=r"c_small.png: pixels of shape \(3, 8, 8\), expected \(3, 16, 16\) "
                                            r"\(like the set's first readable file b_large.png\)"):
        data[2]
    given = FaceFiles([large, small], [1, 2], size=(8, 8))
    assert torch.equal(given[1][0], _rgb((6, 6, 6)).float())
    with pytest.raises(FaceFileError, match=r"b_large.png: pixels of shape \(3, 16, 16\), expected \(3, 8, 8\) "
                                            r"\(the size given for the set\)"):
        given[0]
    with pytest.raises(ValueError, match=r"size must be \(H, W\), two positive integers, got \(8, 0\)"):
        FaceFiles([large], [0], size=(8, 0))
    skipping = FaceFiles([tmp_path / "a_broken.png"], [0], on_error="skip")
    with pytest.warns(SkippedFileWarning, match="a_broken.png: cannot decode image"):
        assert skipping[0][0].shape == (3, 224, 224) and skipping.expected_size is None  # nothing readable


def test_other_size_in_dataloader_workers_names_the_file(tmp_path: Path) -> None:
    """Before: 'Trying to resize storage that is not resizable' or 'stack expects each tensor to be equal size'."""
    paths = [_save(tmp_path / f"face_{i}.png", _rgb((i, i, i), 16 if i == 5 else 8)) for i in range(8)]
    loader = DataLoader(FaceFiles(paths, list(range(8))), batch_size=4, num_workers=2)
    with pytest.raises(FaceFileError, match=r"bad face file .*face_5.png: pixels of shape \(3, 16, 16\), expected "
                                            r"\(3, 8, 8\)"):
        list(loader)


def _untrained_detector(size: int = 8) -> AmIDetector:
    """AmI on an untrained :class:`ToyNet` for ``size`` x ``size`` inputs (cheap: no training)."""
    torch.manual_seed(0)
    net = ToyNet(size)
    model = PixelModel(net, Normalize((128.0,) * 3, (64.0,) * 3), net.hook_layers).eval()
    witnesses = WitnessSet.from_mapping({"leye": {"relu1": [0, 1, 2], "relu2": [3, 4]}}, net.hook_layers)
    return AmIDetector(model, witnesses, 5.0, (2.15, 5.0))


@pytest.mark.slow
def test_evaluation_with_workers_skips_and_names_bad_files(tmp_path: Path) -> None:
    """``trainer.test`` with 2 DataLoader workers per set: the skipped files are counted and named with reasons."""
    benign_paths, reasons = _mixed_set(tmp_path / "benign")
    (tmp_path / "fgsm").mkdir()
    attack_paths = [_save(tmp_path / "fgsm" / f"x_{i}.png", _rgb((i, 2 * i, 3 * i), 12 if i == 3 else 8))
                    for i in range(5)]
    benign = FaceFiles(benign_paths, [i % 10 for i in range(len(benign_paths))], on_error="skip")
    attacked = FaceFiles(attack_paths, [1] * 5, on_error="skip")
    datamodule = EvalDataModule(benign, {"fgsm": attacked}, batch_size=3, num_workers=2)
    module = DetectorEvalModule({"ami": _untrained_detector()}, datamodule.set_names)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    with pytest.warns(SkippedFileWarning) as caught:
        trainer.test(module, datamodule=datamodule, verbose=False)
    results = module.results["ami"]
    assert results["benign"]["skipped"] == 6 and results["benign"]["n"] == 2
    assert results["fgsm"]["skipped"] == 1 and results["fgsm"]["n"] == 4
    skipped = datamodule.skipped
    assert sorted(p.name for p in skipped["benign"]) == sorted(reasons)
    assert all(reason.startswith(reasons[path.name]) for path, reason in skipped["benign"].items())
    assert skipped["fgsm"] == {attack_paths[3]: "pixels of shape (3, 12, 12), expected (3, 8, 8) (like the set's "
                                                "first readable file x_0.png)"}
    named = [str(w.message) for w in caught if issubclass(w.category, SkippedFileWarning)]
    assert len(named) == 7 and any(m.startswith(f"skipped face file {attack_paths[3]}: pixels") for m in named)


# ---- manifests ------------------------------------------------------------------------------------------------------
def _manifest(folder: Path, lines: list[str], end: str = "\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        _save(folder / f"Cher_{i}_1_2_3_4.png", _rgb((i, i, i)))
    path = folder / "manifest.jsonl"
    path.write_text("\n".join(lines) + end)
    return path


ROWS = [json.dumps({"file": f"Cher_{i}_1_2_3_4.png", "label": i, "source": f"/faces/Cher_{i}.jpg"}) for i in range(3)]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([ROWS[0], '{"label": 1}', ROWS[2]], r"line 2: missing key 'file' \(required: file, label\)"),
        ([ROWS[0], ROWS[1], '{"file": "Cher_2_1_2_3_4.png"}'], r"line 3: missing key 'label'"),
        ([ROWS[0], '{"file": "Cher_1_1_2_3_4.png", "label": "1"}'], r"line 2: 'label' must be an integer, got '1'"),
        ([ROWS[0], '{"file": 7, "label": 1}'], r"line 2: 'file' must be a non-empty string, got 7"),
        ([ROWS[0], "[1, 2]", ROWS[2]], r"line 2: expected a JSON object, got list"),
        ([ROWS[0], '{"file": "Cher_1_1_2', ROWS[2]], r"line 2: not valid JSON"),
    ],
)
def test_bad_manifest_line_names_manifest_line_and_problem(tmp_path: Path, lines: list[str], message: str) -> None:
    path = _manifest(tmp_path / "fgsm", lines)
    with pytest.raises(ManifestError, match=rf"manifest .*fgsm/manifest.jsonl, {message}"):
        FaceFiles.from_manifest(path)
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)  # the generator's reader is the same one


def test_torn_last_line_is_ignored_by_evaluation_too(tmp_path: Path) -> None:
    path = _manifest(tmp_path / "fgsm", [ROWS[0], ROWS[1], ROWS[2][:20]], end="")  # a kill mid-append
    with pytest.warns(TornManifestWarning):
        data = attack_set(tmp_path, "fgsm", ["Cher"])
    assert [p.name for p in data.paths] == ["Cher_0_1_2_3_4.png", "Cher_1_1_2_3_4.png"] and data.labels == [0, 1]
    assert data.originals == [Path("/faces/Cher_0.jpg"), Path("/faces/Cher_1.jpg")]
    path.write_text("\n".join([ROWS[0], ROWS[1], ROWS[2]]))  # a complete last line without its newline counts
    assert [row["label"] for row in read_rows(path)] == [0, 1, 2]
    path.write_text("\n".join([ROWS[0], ROWS[1], ROWS[2][:20]]) + "\n")  # torn, then a newline: not a kill's trace
    with pytest.raises(ManifestError, match="line 3: not valid JSON"):
        read_rows(path)


def test_torn_last_line_warns_naming_the_manifest_and_line(tmp_path: Path) -> None:
    path = _manifest(tmp_path / "fgsm", [ROWS[0], ROWS[1], ROWS[2][:20]], end="")  # a kill mid-append
    with pytest.warns(TornManifestWarning, match=re.escape(f"manifest {path}, line 3 was cut short (no newline, not "
                                                           f"valid JSON: {ROWS[2][:20]}); its sample is left out")):
        data = attack_set(tmp_path, "fgsm", ["Cher"])
    assert len(data) == 2


# ---- 8: pixel values of .npy files ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_npy_pixels_outside_0_255_are_refused_or_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "fgsm"
    folder.mkdir()
    np.save(folder / "Cher_0_1_2_3_4.npy", np.full((3, 8, 8), 255.0, np.float32))  # the bounds themselves are fine
    wild = np.full((3, 8, 8), 100.0, np.float32)
    wild[0, 0, 0], wild[2, 7, 7] = -500.0, 1000.0
    np.save(folder / "Cher_1_1_2_3_4.npy", wild)
    np.save(folder / "Cher_2_1_2_3_4.npy", np.full((3, 8, 8), 300, np.int16))
    problem = "2 of its 192 values outside the pixel range [0, 255] (min -500, max 1000)"
    with pytest.raises(BadImageError, match=re.escape(f"Cher_1_1_2_3_4.npy: {problem}")):
        load_pixels(folder / "Cher_1_1_2_3_4.npy")
    with pytest.raises(BadImageError, match=re.escape("192 of its 192 values outside the pixel range [0, 255] "
                                                      "(min 300, max 300)")):
        load_pixels(folder / "Cher_2_1_2_3_4.npy", npy_legacy=True)
    data = attack_set(tmp_path, "fgsm", ["Cher"])
    with pytest.raises(FaceFileError, match=re.escape(f"bad face file {folder / 'Cher_1_1_2_3_4.npy'}: {problem}")):
        data[1]
    skipping = attack_set(tmp_path, "fgsm", ["Cher"], on_error="skip")
    with pytest.warns(SkippedFileWarning):
        labels = [skipping[i][1] for i in range(3)]
    assert labels == [0, SKIPPED, SKIPPED]
    assert skipping.skipped[folder / "Cher_1_1_2_3_4.npy"] == problem


# ---- 5b: how to go on past a bad file -------------------------------------------------------------------------------
def test_errors_under_raise_say_how_to_skip(tmp_path: Path) -> None:
    paths, reasons = _mixed_set(tmp_path)
    data = FaceFiles(paths, list(range(len(paths))))
    for index, path in enumerate(paths):
        if path.name in reasons:
            with pytest.raises(FaceFileError) as caught:
                data[index]
            assert str(caught.value).endswith(f" {SKIP_HINT}")
            assert caught.value.problem.startswith(reasons[path.name]) and SKIP_HINT not in caught.value.problem
    with pytest.raises(FileNotFoundError, match=re.escape(f"b_missing.png {SKIP_HINT}")):
        FaceFiles.from_list(tmp_path, ["a_good.png", "b_missing.png"], ["a", "b"])
    assert SKIP_HINT == "(set data.on_error=skip to drop such files and count them)"


# ---- 9: manifests name files inside their folder --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../outside/Cher_9_1_2_3_4.npy", "/tmp/Cher_9_1_2_3_4.npy",
                                  "sub/../../Cher_9_1_2_3_4.npy"])
def test_manifest_files_outside_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    np.save(outside / "Cher_9_1_2_3_4.npy", np.zeros((3, 8, 8), np.float32))
    path = _manifest(tmp_path / "attacks" / "fgsm", [ROWS[0], json.dumps({"file": name, "label": 1}), ROWS[2]])
    message = (f"manifest {path}, line 2: file {name!r} is outside the manifest's folder {path.parent}; a manifest "
               "names files in its own folder")
    for read in (read_manifest, FaceFiles.from_manifest, lambda _: attack_set(tmp_path / "attacks", "fgsm", [])):
        with pytest.raises(ManifestError) as caught:
            read(path)
        assert str(caught.value) == message


def test_manifest_files_in_sub_folders_are_fine(tmp_path: Path) -> None:
    folder = tmp_path / "fgsm"
    (folder / "sub").mkdir(parents=True)
    _save(folder / "sub" / "Cher_0_1_2_3_4.png", _rgb((1, 2, 3)))
    path = _manifest(folder, [json.dumps({"file": "sub/./Cher_0_1_2_3_4.png", "label": 0})])
    assert FaceFiles.from_manifest(path).paths == [folder / "sub" / "Cher_0_1_2_3_4.png"]
