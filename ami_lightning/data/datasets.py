"""Face files as datasets: benign images, and attack sets in the published layout or the generator's manifest.

Every item is ``(pixels, label, index)``: float pixels (3, H, W), RGB in [0, 255], the true identity (long) and the
item's index in the dataset (file names: ``dataset.paths[index]``).

Every file is checked when its item is read: missing, undecodable, truncated, of an image mode that cannot be
converted exactly (see :mod:`ami_lightning.data.images`), a ``.npy`` of another shape than (3, H, W), of a non-numeric
dtype, with NaN / infinite values or values outside the pixel range [0, 255], or of another size than the set's (an
explicit ``size``, else that of the set's first readable file). Such a file raises :class:`FaceFileError` (a
``ValueError``) naming it and the problem and ending with :data:`SKIP_HINT`, or, with ``on_error="skip"``, yields
label ``SKIPPED`` (-1) and zero pixels of the set's size, which the evaluation drops
and counts; the dataset records it in :attr:`FaceFiles.skipped` (path -> reason) and warns
(:class:`SkippedFileWarning`) naming the file and the reason. In DataLoader worker processes the record is made by
the main process: :class:`~ami_lightning.data.datamodule.EvalDataModule` calls :meth:`FaceFiles.note_skipped` for
each skipped item of a batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from ami_lightning.data.identities import identity_from_filename
from ami_lightning.data.images import VGG_FACE_MEAN, BadImageError, Truncated, load_image
from ami_lightning.data.manifest import read_manifest

SKIPPED = -1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
OnError = Literal["raise", "skip"]
Size = tuple[int, int]
FALLBACK_SIZE: Size = (224, 224)  # the placeholder size of a skipped file when no file of its set is readable
PIXEL_RANGE: tuple[float, float] = (0.0, 255.0)
"""Where the values of a ``.npy`` of pixels must lie (RGB, 8-bit scale)."""
SKIP_HINT = "(set data.on_error=skip to drop such files and count them)"
"""How every bad-file error of a data set read with ``on_error="raise"`` ends."""


class FaceFileError(BadImageError):
    """A face file of a data set that cannot be used: the message is ``bad face file <path>: <problem>``."""

    prefix = "bad face file "


class SkippedFileWarning(UserWarning):
    """A face file left out of the evaluation under ``on_error="skip"``; the message names it and the reason."""


def load_pixels(path: str | Path, npy_legacy: bool = False, truncated: Truncated = "error") -> torch.Tensor:
    """Float pixels (3, H, W) RGB in [0, 255] from an image file or a published ``.npy`` (float (3, H, W), RGB).

    ``npy_legacy`` reproduces the original PyTorch notebooks on ``.npy`` files: channels reversed and no mean
    subtracted before VGG-Face (returned here as reversed channels plus VGG-Face's mean, which the model's own
    preprocessing then removes). ``truncated``: see :func:`~ami_lightning.data.images.load_image` (strict by default).
    A missing file raises ``FileNotFoundError``; a bad one :class:`~ami_lightning.data.images.BadImageError` (a
    ``ValueError``) naming the file and the problem. A ``.npy`` must hold one real-valued (float or integer) array
    of shape (3, H, W), every value finite and in :data:`PIXEL_RANGE` (in the file, before ``npy_legacy``'s shift).
    """
    path = Path(path)
    if path.suffix.lower() != ".npy":
        return load_image(path, truncated).float()
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:  # a damaged or truncated .npy: ValueError, EOFError, OSError, ...
        raise BadImageError.of(path, f"cannot read .npy: {err}") from err
    if not isinstance(array, np.ndarray):
        array.close()
        raise BadImageError.of(path, "a .npz archive, expected a .npy of one array of shape (3, H, W)")
    if array.ndim != 3 or array.shape[0] != 3:
        raise BadImageError.of(path, f"expected an array of shape (3, H, W), got {array.shape}")
    if array.dtype.kind not in "fiu":
        raise BadImageError.of(path, f"an array of dtype {array.dtype}, expected float or integer pixels")
    pixels = torch.from_numpy(array.astype(np.float32))
    bad = int((~torch.isfinite(pixels)).sum())
    if bad:
        raise BadImageError.of(path, f"{bad} of its {pixels.numel()} values are NaN or infinite")
    low, high = PIXEL_RANGE
    outside = int(((pixels < low) | (pixels > high)).sum())
    if outside:
        raise BadImageError.of(path, f"{outside} of its {pixels.numel()} values outside the pixel range "
                                     f"[{low:g}, {high:g}] (min {pixels.min().item():g}, max {pixels.max().item():g})")
    if npy_legacy:
        return pixels.flip(0) + torch.tensor(VGG_FACE_MEAN).view(3, 1, 1)
    return pixels


def labels_from_filenames(paths: Sequence[Path], identities: Sequence[str]) -> list[int]:
    """Class index of each VGG Face file name in ``identities``; ``KeyError`` naming the first unknown file."""
    index = {name: i for i, name in enumerate(identities)}
    labels = []
    for path in paths:
        identity = identity_from_filename(path)
        if identity not in index:
            raise KeyError(f"{path.name}: identity {identity!r} is not one of the model's {len(index)} identities")
        labels.append(index[identity])
    return labels


class FaceFiles(Dataset):
    """Face files with their labels; items ``(pixels (3, H, W) float in [0, 255], label, index)``.

    ``size``: (H, W) in pixels that every file must have (default: that of the set's first readable file).
    ``on_error``: ``"raise"`` a :class:`FaceFileError` for a bad file, or ``"skip"`` it (see the module docstring);
    the skipped files of this process are in :attr:`skipped` (path -> reason).

    Per file, for the per-face figures of an attack set (:mod:`ami_lightning.evaluation.success`): :attr:`targets`,
    the class the attack aimed at (``-1`` when untargeted or unknown, e.g. a published folder without manifest), and
    :attr:`faces`, the name of the face it was made from (the generator's manifest ``source``, else the file's stem:
    generated and published files are named after their VGG Face source file).
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int],
        npy_legacy: bool = False,
        on_error: OnError = "raise",
        size: Size | None = None,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} files but {len(labels)} labels")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if size is not None and (len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size)):
            raise ValueError(f"size must be (H, W), two positive integers, got {size!r}")
        self.paths = [Path(p) for p in paths]
        self.labels = list(labels)
        self.npy_legacy = npy_legacy
        self.on_error = on_error
        self.size: Size | None = tuple(size) if size is not None else None  # type: ignore[assignment]
        self.skipped: dict[Path, str] = {}
        self.originals: list[Path] = []  # the unattacked faces, where a generator's manifest names them
        self.targets: list[int] = [-1] * len(self.paths)  # per file, the attack's target class (-1: none known)
        self.faces: list[str] = [p.stem for p in self.paths]  # per file, the face it was made from (file stem)
        self._reference: tuple[Size | None, str] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        try:
            pixels = self.load(index)
        except FaceFileError as err:
            if self.on_error == "raise":
                raise FaceFileError(f"{err} {SKIP_HINT}", err.path, err.problem) from err.__cause__
            if get_worker_info() is None:  # in a worker the main process records it (EvalDataModule)
                self.note_skipped(index, err.problem)
            return torch.zeros(3, *(self.expected_size or FALLBACK_SIZE)), SKIPPED, index
        return pixels, self.labels[index], index

    @property
    def expected_size(self) -> Size | None:
        """(H, W) in pixels that every file of the set must have: ``size`` if given, else that of the set's first
        readable file (in the order of :attr:`paths`; the same in every process); None when no file is readable."""
        return self._expected()[0]

    def _expected(self) -> tuple[Size | None, str]:
        if self.size is not None:
            return self.size, "the size given for the set"
        if self._reference is None:
            self._reference = None, ""
            for path in self.paths:
                try:
                    pixels = self._decode(path)
                except FaceFileError:
                    continue
                size = int(pixels.shape[1]), int(pixels.shape[2])
                self._reference = size, f"like the set's first readable file {path.name}"
                break
        return self._reference

    def _decode(self, path: Path) -> torch.Tensor:
        """The pixels of ``path`` (3, H, W), not yet checked against the set's size; ``FaceFileError`` naming it."""
        try:
            return load_pixels(path, self.npy_legacy)
        except FileNotFoundError as err:
            raise FaceFileError.of(path, "file not found") from err
        except BadImageError as err:
            raise FaceFileError.of(path, err.problem) from err
        except (OSError, ValueError) as err:
            raise FaceFileError.of(path, str(err)) from err

    def load(self, index: int) -> torch.Tensor:
        """The checked pixels (3, H, W) float in [0, 255] of file ``index``; :class:`FaceFileError` naming the file
        and the problem whatever ``on_error`` says."""
        path = self.paths[index]
        pixels = self._decode(path)
        size, source = self._expected()
        if size is not None and tuple(pixels.shape[1:]) != size:
            raise FaceFileError.of(path, f"pixels of shape {tuple(pixels.shape)}, expected {(3, *size)} ({source})")
        return pixels

    def problem(self, index: int) -> str | None:
        """Why file ``index`` cannot be used (e.g. ``"file not found"``), or None when it can."""
        try:
            self.load(index)
        except FaceFileError as err:
            return err.problem
        return None

    def note_skipped(self, index: int, reason: str | None = None) -> str:
        """Record file ``index`` as skipped in :attr:`skipped` with ``reason`` (default: the file checked again,
        e.g. for an item a DataLoader worker skipped) and warn once naming it; returns the reason."""
        path = self.paths[index]
        if path not in self.skipped:
            if reason is None:
                reason = self.problem(index) or "could not be read when loaded (it reads now)"
            self.skipped[path] = reason
            warnings.warn(f"skipped face file {path}: {reason}", SkippedFileWarning, stacklevel=2)
        return self.skipped[path]

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        identities: Sequence[str],
        npy_legacy: bool = False,
        on_error: OnError = "raise",
        size: Size | None = None,
    ) -> FaceFiles:
        """Every image or ``.npy`` file of ``folder`` (sorted), labelled by its VGG Face file name."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"face folder not found: {folder}")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (*IMAGE_SUFFIXES, ".npy"))
        if not paths:
            raise FileNotFoundError(f"no image or .npy files in {folder}")
        return cls(paths, labels_from_filenames(paths, identities), npy_legacy, on_error, size)

    @classmethod
    def from_list(
        cls,
        folder: Path,
        names: Sequence[str],
        identities: Sequence[str],
        on_error: OnError = "raise",
        size: Size | None = None,
    ) -> FaceFiles:
        """The files ``names`` (e.g. the 343 lines of the release's ``benign_list.txt``) inside ``folder``."""
        paths = [Path(folder) / name for name in names]
        missing = [p for p in paths if not p.is_file()]
        if missing and on_error == "raise":
            raise FileNotFoundError(f"{len(missing)} listed files missing in {folder}, e.g. {missing[0].name} "
                                    f"{SKIP_HINT}")
        return cls(paths, labels_from_filenames(paths, identities), on_error=on_error, size=size)

    @classmethod
    def from_manifest(cls, manifest: Path, on_error: OnError = "raise", size: Size | None = None) -> FaceFiles:
        """An attack set written by ``ami_lightning.pipeline.generation``: its ``manifest.jsonl`` (file, true label,
        ...) beside the files, read by :func:`ami_lightning.data.manifest.read_manifest` (the generator's reader: a
        torn last line is ignored, any other bad line is an error naming it; the last row of a file wins)."""
        manifest = Path(manifest)
        if not manifest.is_file():
            raise FileNotFoundError(f"attack manifest not found: {manifest}")
        rows = list(read_manifest(manifest).values())
        dataset = cls([manifest.parent / r["file"] for r in rows], [r["label"] for r in rows], on_error=on_error,
                      size=size)
        dataset.originals = [Path(r["source"]) for r in rows if "source" in r]
        dataset.targets = [int(r.get("target", -1)) for r in rows]
        dataset.faces = [Path(r["source"]).stem if "source" in r else Path(r["file"]).stem for r in rows]
        return dataset


def attack_set(
    root: Path,
    name: str,
    identities: Sequence[str],
    npy_legacy: bool = False,
    on_error: OnError = "raise",
    size: Size | None = None,
) -> FaceFiles:
    """Attack set ``name`` under ``root``: ``root/name/manifest.jsonl`` when the generator wrote it, else the
    published layout (``root/name/*.npy`` or images, labelled by file name)."""
    folder = Path(root) / name
    if (folder / "manifest.jsonl").is_file():
        return FaceFiles.from_manifest(folder / "manifest.jsonl", on_error, size)
    return FaceFiles.from_folder(folder, identities, npy_legacy, on_error, size)
