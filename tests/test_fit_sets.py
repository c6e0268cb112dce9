"""The benign fit sets of the detectors that need fitting: never an evaluated benign probe or an attacked image (by
name and by pixels), the seeded split of a benign folder, their records, the config's checks and the pipeline's
hand-over to the detectors' setup."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from ami_lightning.data.benign import (
    FIT_RECORD,
    benign_folder,
    benign_folder_fit,
    shipped_fit_set,
    shipped_probes,
    split_names,
)
from ami_lightning.data.identities import identity_from_filename
from ami_lightning.data.probes import FIT_VARIANTS, VARIANTS
from ami_lightning.data.shipped import face_files, shipped_faces
from ami_lightning.pipeline.validation import ConfigError, check_config
from tests.conftest import compose_config, cpu_config


@pytest.fixture(scope="module")
def identities() -> SimpleNamespace:
    """A stand-in classifier: the shipped identities in file order."""
    return SimpleNamespace(identities=[identity_from_filename(f) for f in face_files()])


def test_the_shipped_fit_set_shares_no_image_with_the_evaluated_probes_or_the_attacked_faces(identities) -> None:
    faces = 6
    fit = shipped_fit_set(identities, limit=faces)
    probes = shipped_probes(identities, limit=faces)
    record = getattr(fit, FIT_RECORD)
    assert record["variants"] == list(FIT_VARIANTS) and record["files"] == fit.files and len(fit) == 4 * faces
    assert not set(FIT_VARIANTS) & set(VARIANTS)
    assert not set(fit.files) & set(probes.files)  # by name: other variants of the same faces
    originals, _ = shipped_faces(faces)  # what attacks start from
    for image in fit.probes:  # by pixels: no fit image is an evaluated probe or an unaltered face
        assert not any(torch.equal(image, other) for other in (*probes.probes, *originals))
    assert fit.labels.tolist() == probes.labels.tolist()  # the same identities, so every class has fit images
    assert fit[0][0].dtype == torch.float32 and fit[0][1] == probes[0][1]


def test_split_names_is_seeded_disjoint_and_complete() -> None:
    names = [f"face_{i}.jpg" for i in range(23)]
    evaluated, fit = split_names(names, 0.2, seed=3)
    assert len(fit) == 4 and not set(evaluated) & set(fit) and sorted(evaluated + fit) == sorted(names)
    assert split_names(names, 0.2, seed=3) == (evaluated, fit) and split_names(names, 0.2, seed=4)[1] != fit
    assert evaluated == [n for n in names if n in evaluated]  # order kept
    assert split_names(names, 0.0, seed=3) == (names, [])


def test_the_benign_folder_leaves_out_exactly_the_fit_split(tmp_path: Path, identities) -> None:
    files = face_files()[:10]
    for f in files:
        Image.open(f).save(tmp_path / f.name)
    evaluated = benign_folder(identities, str(tmp_path), fit_fraction=0.3, fit_seed=1)
    fit = benign_folder_fit(identities, str(tmp_path), fit_fraction=0.3, fit_seed=1)
    record = getattr(fit, FIT_RECORD)
    assert len(fit) == 3 and len(evaluated) == 7 and record["seed"] == 1 and record["fit_fraction"] == 0.3
    assert not {p.name for p in evaluated.paths} & set(record["files"])
    assert {p.name for p in evaluated.paths} | set(record["files"]) == {f.name for f in files}
    assert len(benign_folder(identities, str(tmp_path))) == 10  # no fraction: every file evaluated
    with pytest.raises(ValueError, match=r"data.fit.fit_fraction=0.0: leaves no benign file to fit on"):
        benign_folder_fit(identities, str(tmp_path), fit_fraction=0.0)


def test_the_config_check_names_a_bad_fit_set(tmp_path: Path) -> None:
    cfg = cpu_config(compose_config("eval", ["data.fit.variants=[flip]", "data.fit.limit=0"]), tmp_path)
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    text = str(err.value)
    assert "data.fit.variants=['flip']: expected a non-empty list of brighter, darker, shift_back, jpeg_50" in text
    assert "data.fit.limit=0: expected null (all" in text
