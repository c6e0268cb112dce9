"""The command-line entry points on the embedded default (real dlib weights, shipped faces)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ami_lightning.cli import calibrate
from ami_lightning.data.shipped import face_files, witness_face_files
from ami_lightning.evaluation.intervals import wilson_interval
from ami_lightning.faces.landmarks import LandmarkDetector
from ami_lightning.models.dlib_resnet import load_dlib_resnet
from ami_lightning.models.layers import layer_channels
from ami_lightning.witnesses import ATTRIBUTES, WitnessSet
from ami_lightning.witnesses.from_faces import faces_with_landmarks, save_mutation_grid, witnesses_from_faces


def test_shipped_data() -> None:
    faces = face_files()
    base, others = witness_face_files()
    assert len(faces) == 238 and len(others) == 10 and base.is_file()
    assert (faces[0].parent / "manifest.csv").is_file()
    assert (base.parent / ".." / "LICENSE-AmI").resolve().is_file()


def test_faces_without_a_face_are_left_out(tmp_path: Path) -> None:
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("RGB", (224, 224), (128, 128, 128)).save(blank)
    base, _ = witness_face_files()
    with pytest.warns(UserWarning, match="no face found in blank.png"):
        images, landmarks, kept = faces_with_landmarks([base, blank], LandmarkDetector())
    assert kept == [base] and len(images) == 1 and landmarks[0].shape == (68, 2)


@pytest.mark.slow
def test_witnesses_of_the_dlib_resnet_from_the_release_faces(tmp_path: Path) -> None:
    model = load_dlib_resnet()
    base, others = witness_face_files()
    with pytest.warns(UserWarning, match="Wentworth_Miller"):
        found, mutations = witnesses_from_faces(model, model.hook_layers, base, others)
    assert set(mutations) == set(ATTRIBUTES)
    assert all(s.shape == p.shape == (9, 3, 224, 224) for s, p in mutations.values())  # the truncated face is out
    found.write(tmp_path)
    witnesses = WitnessSet.read(tmp_path, channels=layer_channels(model, model.hook_layers))
    assert witnesses == found and witnesses.layers == model.hook_layers
    assert all(n > 5 for n in witnesses.count().values())
    save_mutation_grid(mutations, tmp_path / "mutations.png")
    assert (tmp_path / "mutations.png").stat().st_size > 100_000


@pytest.mark.slow
def test_ami_calibrate_end_to_end(tmp_path: Path) -> None:
    # the smallest budget that runs the same code as the full one: 3 grid points on the probes of 10 faces
    calibrate.main(["--out", str(tmp_path), "--device", "cpu", "--faces", "10", "--weaken", "60", "1000", "5000",
                    "--strengthen0", "2.15", "--strengthen1", "200"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["probes"]["n"] == 4 * 10 and results["probes"]["top1_accuracy"] > 0.9
    assert [p["weaken"] for p in results["calibration"]["grid"]] == [60, 1000, 5000]
    fpr = results["fpr"]
    assert set(fpr) == {"published", "caffe", "calibrated"}
    assert fpr["published"]["eligible"] == round(results["probes"]["top1_accuracy"] * 40)
    chosen = results["calibration"]["chosen_fpr_on_calibration_half"]
    assert abs(chosen - 0.0991) == min(abs(p["fpr"] - 0.0991) for p in results["calibration"]["grid"])
    (best,) = [p for p in results["calibration"]["grid"] if p["fpr"] == chosen][:1]
    assert (fpr["calibrated"]["weaken"], fpr["calibrated"]["strengthen"]) == (best["weaken"], best["strengthen"])
    assert 0 < fpr["calibrated"]["eligible"] < fpr["published"]["eligible"]  # reported on the held-out half only
    low, high = wilson_interval(fpr["calibrated"]["flagged"], fpr["calibrated"]["eligible"])
    assert f"({fpr['calibrated']['flagged']}/{fpr['calibrated']['eligible']}) [{100 * low:.1f}, {100 * high:.1f}] |" \
        in (tmp_path / "results.md").read_text()
    assert results["provenance"]["command"] and results["provenance"]["machine"]["torch_threads"] >= 1
    assert (tmp_path / "witnesses" / "mouth_neurons.txt").is_file()
