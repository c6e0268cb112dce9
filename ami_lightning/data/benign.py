"""Benign test sets the Hydra configs instantiate (``data.benign``): probes of the shipped faces or a folder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

from ami_lightning.checks import existing, expect, is_int
from ami_lightning.data.datasets import IMAGE_SUFFIXES, FaceFiles
from ami_lightning.data.identities import identity_from_filename
from ami_lightning.data.probes import FIT_VARIANTS, VARIANTS, benign_variants
from ami_lightning.data.shipped import shipped_face_count, shipped_faces


class HasIdentities(Protocol):
    """What a benign set needs of the run's classifier (:class:`ami_lightning.models.classifiers.Classifier`): its
    identity names, in the order of its logits (the labels of the benign images)."""

    identities: list[str]


FIT_RECORD = "fit_record"
"""The attribute of a fit set holding what ``results.json`` records of it (JSON-able: its rule and files)."""


class ProbeSet(Dataset):
    """Benign probes: deterministic light variants of enrolled faces; items (pixels float (3, H, W), label, index).
    ``files``: per item, ``"<source file name>#<variant>"``."""

    def __init__(self, faces: torch.Tensor, labels: torch.Tensor, variants: list[str] | tuple[str, ...] = VARIANTS,
                 names: list[str] | None = None):
        self.probes, source = benign_variants(faces, variants)
        self.labels = labels[source]
        names = names or [str(i) for i in range(len(faces))]
        self.files = [f"{names[i]}#{v}" for v in variants for i in range(len(faces))]

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
    return ProbeSet(faces, torch.tensor([index[identity_from_filename(f)] for f in files]), tuple(variants),
                    [f.name for f in files])


def shipped_fit_set(
    classifier: HasIdentities, limit: int | None = None, variants: tuple[str, ...] = FIT_VARIANTS
) -> ProbeSet:
    """The benign fit set of the embedded default: the :data:`~ami_lightning.data.probes.FIT_VARIANTS` (brighter,
    darker, shifted the other way, JPEG at quality 50) of the shipped faces (the first ``limit``), labelled by the
    classifier's identities. None of its images is an evaluated benign probe (other variants) or an attacked image
    (attacks start from the unaltered faces). Its ``fit_record`` names the rule and every item."""
    fit = shipped_probes(classifier, limit, tuple(variants))
    setattr(fit, FIT_RECORD, {"rule": "variants of the shipped faces that no evaluated probe uses",
                              "variants": list(variants), "files": fit.files})
    return fit


def _shipped_fit_problems(params: Mapping[str, Any]) -> list[str]:
    faces = shipped_face_count()
    return [*expect(params, "limit", lambda v: v is None or (is_int(v) and 1 <= v <= faces),
                    f"null (all {faces} shipped faces) or an integer in [1, {faces}]"),
            *expect(params, "variants",
                    lambda v: isinstance(v, list) and len(v) > 0 and all(x in FIT_VARIANTS for x in v),
                    f"a non-empty list of {', '.join(FIT_VARIANTS)} (never an evaluated probe's variant)")]


shipped_fit_set.check_params = _shipped_fit_problems  # type: ignore[attr-defined]

def _shipped_probes_problems(params: Mapping[str, Any]) -> list[str]:
    faces = shipped_face_count()
    return [*expect(params, "limit", lambda v: v is None or (is_int(v) and 1 <= v <= faces),
                    f"null (all {faces} shipped faces) or an integer in [1, {faces}]"),
            *expect(params, "variants", lambda v: isinstance(v, list) and len(v) > 0 and all(x in VARIANTS for x in v),
                    f"a non-empty list of {', '.join(VARIANTS)}")]


shipped_probes.check_params = _shipped_probes_problems  # type: ignore[attr-defined]  # what the config check calls


def split_names(names: list[str], fit_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(evaluated, fit): a seeded random ``fit_fraction`` of ``names`` (rounded down) is the fit set, the rest is
    evaluated; both keep the order of ``names``. The same names, fraction and seed give the same split anywhere."""
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(names), generator=generator).tolist()
    fit = set(order[: int(len(names) * fit_fraction)])
    return [n for i, n in enumerate(names) if i not in fit], [n for i, n in enumerate(names) if i in fit]


def _folder_names(benign_dir: str | None, benign_list: str | None) -> list[str]:
    """The benign file names: the lines of ``benign_list`` or every image of ``benign_dir``, sorted."""
    if benign_dir is None or not Path(benign_dir).is_dir():
        raise FileNotFoundError(f"paths.benign_dir is missing: {benign_dir}")
    if benign_list is not None:
        return [n.strip() for n in Path(benign_list).read_text().splitlines() if n.strip()]
    names = sorted(p.name for p in Path(benign_dir).iterdir() if p.suffix.lower() in (*IMAGE_SUFFIXES, ".npy"))
    if not names:
        raise FileNotFoundError(f"no image or .npy files in {benign_dir}")
    return names


def benign_folder(classifier: HasIdentities, benign_dir: str | None, benign_list: str | None = None,
                  on_error: str = "raise", fit_fraction: float = 0.0, fit_seed: int = 0) -> FaceFiles:
    """Benign faces of a folder (optionally only the files named in ``benign_list``, one per line), less the
    ``fit_fraction`` of them that :func:`benign_folder_fit` gives the detectors that need fitting
    (:func:`split_names` with ``fit_seed``)."""
    names, _ = split_names(_folder_names(benign_dir, benign_list), fit_fraction, fit_seed)
    return FaceFiles.from_list(Path(benign_dir), names, classifier.identities, on_error)  # type: ignore[arg-type]


def benign_folder_fit(classifier: HasIdentities, benign_dir: str | None, benign_list: str | None = None,
                      on_error: str = "raise", fit_fraction: float = 0.2, fit_seed: int = 0) -> FaceFiles:
    """The fit set of the published protocol: the seeded ``fit_fraction`` of the benign folder that
    :func:`benign_folder` leaves out of the evaluation (:func:`split_names`); its ``fit_record`` holds the rule,
    the fraction, the seed and the files."""
    _, names = split_names(_folder_names(benign_dir, benign_list), fit_fraction, fit_seed)
    if not names:
        raise ValueError(f"data.fit.fit_fraction={fit_fraction}: leaves no benign file to fit on; a detector that "
                         "needs fitting needs a fraction in (0, 1) of the benign folder")
    fit = FaceFiles.from_list(Path(benign_dir), names, classifier.identities, on_error)  # type: ignore[arg-type]
    setattr(fit, FIT_RECORD, {"rule": "seeded split of the benign folder", "fit_fraction": fit_fraction,
                              "seed": fit_seed, "files": names})
    return fit


def _benign_folder_problems(params: Mapping[str, Any]) -> list[str]:
    return [*existing(params, "benign_dir", "folder", "the benign images", required=True),
            *existing(params, "benign_list", "file", "the list of benign file names to use"),
            *expect(params, "fit_fraction", lambda v: isinstance(v, int | float) and not isinstance(v, bool)
                    and 0 <= v < 1, "a fraction in [0, 1) of the benign files kept out of the evaluation to fit on"),
            *expect(params, "fit_seed", is_int, "an integer seed of the fit split")]


benign_folder.check_params = _benign_folder_problems  # type: ignore[attr-defined]
benign_folder_fit.check_params = _benign_folder_problems  # type: ignore[attr-defined]
