from __future__ import annotations

from pathlib import Path

import pytest

from ami_lightning.data.identities import identity_from_filename, label_of, load_names
from ami_lightning.data.shipped import face_files


@pytest.mark.parametrize(
    ("name", "identity"),
    [
        ("Ed_Begley_Jr._9_60.67_121.01_331.87_392.21.png", "Ed_Begley_Jr."),
        ("Dove_Cameron_2_169.90_-41.22_548.92_337.79.png", "Dove_Cameron"),
        ("Cher_3_162.01_97.34_307.19_242.51.jpg", "Cher"),
        ("Christopher_Mintz-Plasse_2_277.58_69.65_433.20_225.26.npy", "Christopher_Mintz-Plasse"),
        ("A_B_C_1_1_2_3_4", "A_B_C"),
    ],
)
def test_identity_from_filename(name: str, identity: str) -> None:
    assert identity_from_filename(name) == identity


@pytest.mark.parametrize("bad", ["Cher.png", "Cher_x_1_2_3_4.png", "Cher_1_2_3_a_4.png"])
def test_identity_from_filename_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="Cher"):
        identity_from_filename(bad)


def test_reference_faces_have_distinct_identities() -> None:
    files = face_files()  # the release's faces, shipped with the package
    identities = [identity_from_filename(f) for f in files]
    assert len(files) == 238 and len(set(identities)) == 238
    manifest = (files[0].parent / "manifest.csv").read_text().splitlines()[1:]
    assert {row.split(",")[1] for row in manifest} == set(identities)


def test_load_names(tmp_path: Path) -> None:
    path = tmp_path / "names.txt"
    path.write_text("Alice\nBob\n\nCarol\n")
    names = load_names(path, expected=3)
    assert names == ["Alice", "Bob", "Carol"]
    assert label_of("Bob_1_1_2_3_4.jpg", names) == 1
    with pytest.raises(KeyError, match="'Dave'"):
        label_of("Dave_1_1_2_3_4.jpg", names)
    with pytest.raises(ValueError, match="expected 2622 names, found 3"):
        load_names(path)
    path.write_text("Alice\nBob\nAlice\n")
    with pytest.raises(ValueError, match=r"duplicate names \['Alice'\]"):
        load_names(path, expected=None)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_names(tmp_path / "missing.txt")
