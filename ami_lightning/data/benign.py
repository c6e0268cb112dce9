"""Benign test sets the Hydra configs instantiate (``data.benign``): probes of the shipped faces or a folder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

from ami_lightning.checks import existing, expect, is_int
from ami_lightning.data.datasets import FaceFiles
from ami_lightning.data.identities import identity_from_filename
from ami_lightning.data.probes import VARIANTS, benign_variants
from ami_lightning.data.shipped import shipped_face_count, shipped_faces


class HasIdentities(Protocol):
    """What a benign set needs of the run's classifier (:class:`ami_lightning.models.classifiers.Classifier`): its
    identity names, in the order of its logits (the labels of the benign images)."""

    identities: list[str]


class ProbeSet(Dataset):
    """Benign probes: deterministic light variants of enrolled faces; items (pixels float (3, H, W), label, index)."""

    def __init__(self, faces: torch.Tensor, labels: torch.Tensor, variants: list[str] | tuple[str, ...] = VARIANTS):
        self.probes, source = benign_variants(faces, variants)
        self.labels = labels[source]

    def __len__(self) -> int:
        return len(self.probes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return self.probes[index].float(), int(self.labels[index]), index


def shipped_probes(
    classifier: HasIdentities, limit: int | None = None, variants: tuple[str, ...] = VARIANTS
) -> ProbeSet:
    """Probes of the shipped faces (the first ``limit``), labelled by the classifier's identity list."""
    faces, files = shipped_faces(limit)
    index = {name: i for i, name in enumerate(classifier.identities)}
    return ProbeSet(faces, torch.tensor([index[identity_from_filename(f)] for f in files]), tuple(variants))


def _shipped_probes_problems(params: Mapping[str, Any]) -> list[str]:
    faces = shipped_face_count()
    return [*expect(params, "limit", lambda v: v is None or (is_int(v) and 1 <= v <= faces),
                    f"null (all {faces} shipped faces) or an integer in [1, {faces}]"),
            *expect(params, "variants", lambda v: isinstance(v, list) and len(v) > 0 and all(x in VARIANTS for x in v),
                    f"a non-empty list of {', '.join(VARIANTS)}")]


shipped_probes.check_params = _shipped_probes_problems  # type: ignore[attr-defined]  # what the config check calls


def benign_folder(classifier: HasIdentities, benign_dir: str | None, benign_list: str | None = None,
                  on_error: str = "raise") -> FaceFiles:
    """Benign faces of a folder (optionally only the files named in ``benign_list``, one per line)."""
    if benign_dir is None or not Path(benign_dir).is_dir():
        raise FileNotFoundError(f"paths.benign_dir is missing: {benign_dir}")
    if benign_list is not None:
        names = [n.strip() for n in Path(benign_list).read_text().splitlines() if n.strip()]
        return FaceFiles.from_list(Path(benign_dir), names, classifier.identities, on_error)  # type: ignore[arg-type]
    return FaceFiles.from_folder(Path(benign_dir), classifier.identities, on_error=on_error)  # type: ignore[arg-type]


def _benign_folder_problems(params: Mapping[str, Any]) -> list[str]:
    return [*existing(params, "benign_dir", "folder", "the benign images", required=True),
            *existing(params, "benign_list", "file", "the list of benign file names to use")]


benign_folder.check_params = _benign_folder_problems  # type: ignore[attr-defined]
