"""Face files as datasets: benign images, and attack sets in the published layout or the generator's manifest.

Every item is ``(pixels, label, index)``: float pixels (3, H, W), RGB in [0, 255], the true identity (long) and the
item's index in the dataset (file names: ``dataset.paths[index]``). A file that cannot be read raises ``ValueError``
naming it, or, with ``on_error="skip"``, yields label ``SKIPPED`` (-1) and zero pixels, which the evaluation drops
and counts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from ami_lightning.identities import identity_from_filename
from ami_lightning.images import load_image
from ami_lightning.models.vgg_face import VGG_FACE_MEAN

SKIPPED = -1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
OnError = Literal["raise", "skip"]


def load_pixels(path: Path, npy_legacy: bool = False) -> torch.Tensor:
    """Float pixels (3, H, W) RGB in [0, 255] from an image file or a published ``.npy`` (float32 (3, H, W), RGB).

    ``npy_legacy`` reproduces the original PyTorch notebooks on ``.npy`` files: channels reversed and no mean
    subtracted before VGG-Face (returned here as reversed channels plus VGG-Face's mean, which the model's own
    preprocessing then removes).
    """
    if path.suffix.lower() != ".npy":
        return load_image(path).float()
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    if array.ndim != 3 or array.shape[0] != 3:
        raise ValueError(f"{path}: expected an array of shape (3, H, W), got {array.shape}")
    pixels = torch.from_numpy(array.astype(np.float32))
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
    """Face files with their labels; items ``(pixels (3, H, W) float in [0, 255], label, index)``."""

    def __init__(
        self, paths: Sequence[Path], labels: Sequence[int], npy_legacy: bool = False, on_error: OnError = "raise"
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} files but {len(labels)} labels")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.paths = [Path(p) for p in paths]
        self.labels = list(labels)
        self.npy_legacy = npy_legacy
        self.on_error = on_error
        self._shape: tuple[int, ...] | None = None
        self.originals: list[Path] = []  # the unattacked faces, where a generator's manifest names them

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        try:
            pixels = load_pixels(self.paths[index], self.npy_legacy)
        except (OSError, ValueError) as err:
            if self.on_error == "raise":
                raise ValueError(f"unreadable face file {self.paths[index]}: {err}") from err
            return torch.zeros(self._item_shape()), SKIPPED, index
        self._shape = tuple(pixels.shape)
        return pixels, self.labels[index], index

    def _item_shape(self) -> tuple[int, ...]:
        """The pixel shape of this set's readable files (for the zero placeholder of a skipped one)."""
        for path in self.paths if self._shape is None else ():
            try:
                self._shape = tuple(load_pixels(path, self.npy_legacy).shape)
                break
            except (OSError, ValueError):
                continue
        return self._shape or (3, 224, 224)

    @classmethod
    def from_folder(
        cls, folder: Path, identities: Sequence[str], npy_legacy: bool = False, on_error: OnError = "raise"
    ) -> FaceFiles:
        """Every image or ``.npy`` file of ``folder`` (sorted), labelled by its VGG Face file name."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"face folder not found: {folder}")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (*IMAGE_SUFFIXES, ".npy"))
        if not paths:
            raise FileNotFoundError(f"no image or .npy files in {folder}")
        return cls(paths, labels_from_filenames(paths, identities), npy_legacy, on_error)

    @classmethod
    def from_list(
        cls, folder: Path, names: Sequence[str], identities: Sequence[str], on_error: OnError = "raise"
    ) -> FaceFiles:
        """The files ``names`` (e.g. the 343 lines of the release's ``benign_list.txt``) inside ``folder``."""
        paths = [Path(folder) / name for name in names]
        missing = [p for p in paths if not p.is_file()]
        if missing and on_error == "raise":
            raise FileNotFoundError(f"{len(missing)} listed files missing in {folder}, e.g. {missing[0].name}")
        return cls(paths, labels_from_filenames(paths, identities), on_error=on_error)

    @classmethod
    def from_manifest(cls, manifest: Path, on_error: OnError = "raise") -> FaceFiles:
        """An attack set written by ``ami_lightning.attacks.generate``: its ``manifest.jsonl`` (file, true label,
        ...) beside the files."""
        manifest = Path(manifest)
        if not manifest.is_file():
            raise FileNotFoundError(f"attack manifest not found: {manifest}")
        rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
        dataset = cls([manifest.parent / r["file"] for r in rows], [int(r["label"]) for r in rows], on_error=on_error)
        dataset.originals = [Path(r["source"]) for r in rows if "source" in r]
        return dataset


def attack_set(
    root: Path, name: str, identities: Sequence[str], npy_legacy: bool = False, on_error: OnError = "raise"
) -> FaceFiles:
    """Attack set ``name`` under ``root``: ``root/name/manifest.jsonl`` when the generator wrote it, else the
    published layout (``root/name/*.npy`` or images, labelled by file name)."""
    folder = Path(root) / name
    if (folder / "manifest.jsonl").is_file():
        return FaceFiles.from_manifest(folder / "manifest.jsonl", on_error)
    return FaceFiles.from_folder(folder, identities, npy_legacy, on_error)
