"""Attack success, SR@N and the worst case over attacks (``ami_lightning.evaluation.success``): the kernels against
plain-Python references, the evaluation module against a direct computation, and their reporting."""

from __future__ import annotations

import json
import random
from pathlib import Path
from unittest.mock import patch

import lightning.pytorch as pl
import pytest
import torch
from matplotlib.axes import Axes

from ami_lightning.data.datamodule import EvalDataModule
from ami_lightning.data.datasets import attack_set
from ami_lightning.evaluation.intervals import wilson_interval
from ami_lightning.evaluation.module import WORST_CASE, DetectorEvalModule
from ami_lightning.evaluation.success import WorstCase, attack_success, worst_case
from ami_lightning.evaluation.thresholds import OperatingPoint
from ami_lightning.reporting.plots import plot_undetected
from ami_lightning.reporting.results import RunResults, SetResult, read_results, write_results
from ami_lightning.reporting.tables import results_markdown
from tests.toy import NUM_CLASSES, PixelSet, toy_eval_sets


def test_attack_success_against_a_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    pred, labels = torch.randint(0, 4, (200,), generator=gen), torch.randint(0, 4, (200,), generator=gen)
    targets = torch.randint(-1, 4, (200,), generator=gen)
    expected = [p == t if t >= 0 else p != y for p, y, t in zip(pred.tolist(), labels.tolist(), targets.tolist(),
                                                                strict=True)]
    assert attack_success(pred, labels, targets).tolist() == expected
    assert 0 < sum(expected) < 200 and (targets == -1).any() and (targets >= 0).any()


def _reference(faces, fooled, flagged) -> tuple[int, int, int]:
    """(faces, fooled, caught) by a per-face dictionary of the verdicts of its fooling versions."""
    verdicts: dict[str, list[bool]] = {}
    for names, fool, flag in zip(faces, fooled, flagged, strict=True):
        for name, f, g in zip(names, fool, flag, strict=True):
            verdicts.setdefault(name, [])
            if f:
                verdicts[name].append(bool(g))
    fooled_faces = [v for v in verdicts.values() if v]
    return len(verdicts), len(fooled_faces), sum(all(v) for v in fooled_faces)


@pytest.mark.parametrize("seed", range(5))
def test_worst_case_against_a_reference(seed: int) -> None:
    rng = random.Random(seed)
    pool = [f"face_{i}" for i in range(12)]
    faces = [[rng.choice(pool) for _ in range(rng.randint(0, 10))] for _ in range(4)]  # a face may repeat in a set
    fooled = [torch.tensor([rng.random() < 0.6 for _ in names], dtype=torch.bool) for names in faces]
    flagged = [torch.tensor([rng.random() < 0.5 for _ in names], dtype=torch.bool) for names in faces]
    got = worst_case(faces, fooled, flagged)
    assert (got.faces, got.fooled, got.caught) == _reference(faces, [f.tolist() for f in fooled],
                                                             [f.tolist() for f in flagged])
    assert got.through == got.fooled - got.caught


def test_worst_case_small_case_and_errors() -> None:
    # face a: fooled by both sets, flagged once -> through; b: fooled once, flagged -> caught; c: never fooled
    faces = [["a", "b", "c"], ["a", "c"]]
    fooled = [torch.tensor([True, True, False]), torch.tensor([True, False])]
    flagged = [torch.tensor([True, True, True]), torch.tensor([False, False])]
    assert worst_case(faces, fooled, flagged) == WorstCase(faces=3, fooled=2, caught=1)
    assert worst_case([], [], []) == WorstCase(0, 0, 0)
    with pytest.raises(ValueError, match="2 face lists, 1 fooled and 2 flagged masks"):
        worst_case(faces, fooled[:1], flagged)
    with pytest.raises(ValueError, match="3 faces but 2 fooled and 3 flagged values"):
        worst_case([faces[0]], [fooled[1]], [flagged[0]])


def test_eval_module_reports_success_rates_and_the_worst_case() -> None:
    """On the toy: SR@N and the worst case equal a direct computation from the detector's outputs."""
    detector, sets = toy_eval_sets(32)
    (x, y), (noisy, _), (_, wrong) = sets["benign"], sets["noise"], sets["shifted"]
    faces = [f"face_{i}" for i in range(len(y))]
    targets = {"noise": [-1] * len(y), "shifted": [int(t) for t in (y + 2) % NUM_CLASSES]}
    attacks = {"noise": PixelSet(noisy, y), "shifted": PixelSet(x, wrong)}
    datamodule = EvalDataModule(PixelSet(x, y), attacks, 4)
    module = DetectorEvalModule({"ami": detector}, datamodule.set_names, fpr_targets=[0.1, 0.5], targets=targets,
                                faces={name: faces for name in attacks})
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, use_distributed_sampler=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    with torch.no_grad():
        out = {name: detector(pixels) for name, pixels in (("benign", x), ("noise", noisy), ("shifted", x))}
    labels = {"noise": y, "shifted": wrong}
    fooled_by, flagged_by = {}, {}
    for name in attacks:
        row, o = module.results["ami"][name], out[name]
        pred = o.logits.argmax(1)
        success = attack_success(pred, labels[name], torch.tensor(targets[name]))
        assert row["success"] == int(success.sum())
        for point in row["operating_points"]:
            assert point.evaded == int((success & (o.score.double() <= point.threshold)).sum())
        fooled_by[name], flagged_by[name] = pred != labels[name], o.flagged
    # 'shifted' is the clean pixels with wrong labels (all fooled, targets none reached); noise: untargeted
    assert module.results["ami"]["shifted"]["success"] == 0 and module.results["ami"]["noise"]["success"] > 0
    worst = module.worst_case["ami"]
    reference = worst_case([faces, faces], list(fooled_by.values()), list(flagged_by.values()))
    assert (worst["n"], worst["eligible"], worst["flagged"]) == (reference.faces, reference.fooled, reference.caught)
    assert worst["sets"] == ["noise", "shifted"] and worst["n"] == len(y)
    benign_points = module.results["ami"]["benign"]["operating_points"]
    for point, benign in zip(worst["operating_points"], benign_points, strict=True):
        at = worst_case([faces, faces], list(fooled_by.values()),
                        [out[name].score.double() > benign.threshold for name in attacks])
        assert (point.threshold, point.detected, point.evaded) == (benign.threshold, at.caught, at.through)
    assert worst["rate"] == pytest.approx(reference.caught / reference.fooled)
    with pytest.raises(ValueError, match=r"targets or faces given for \['nope'\], which are not attack sets"):
        DetectorEvalModule({"ami": detector}, ["benign", "noise"], targets={"nope": [1]})


def test_worst_case_row_in_tables_and_json(tmp_path: Path) -> None:
    points = [OperatingPoint(0.05, 2.5, 0.05, 4, 6), OperatingPoint(0.5, 1.0, 0.5, 7, 3)]
    sets = [SetResult("ami", "benign", False, n=20, eligible=20, flagged=2, operating_points=[
                OperatingPoint(0.05, 2.5, 0.05, 1), OperatingPoint(0.5, 1.0, 0.5, 10)]),
            SetResult("ami", "bim", True, n=10, eligible=8, flagged=3, success=8,
                      operating_points=[OperatingPoint(0.05, 2.5, 0.05, 3, 5), OperatingPoint(0.5, 1.0, 0.5, 6, 2)]),
            SetResult("ami", WORST_CASE, True, n=10, eligible=9, flagged=4, operating_points=points, worst_case=True)]
    results = RunResults(sets, "toy", {"ami": {"type": "ami"}})
    assert results.set_names == ["bim"] and [s.name for s in results.attacks_of("ami")] == ["bim"]
    assert results.worst_case_of("ami") is sets[2] and results.worst_case_of("other") is None
    data = json.loads(write_results(results, tmp_path)["json"].read_text())
    worst = data["worst_case"]["ami"]
    assert (worst["faces"], worst["fooled"], worst["caught"]) == (10, 9, 4)
    assert worst["detection"] == pytest.approx(4 / 9) and worst["undetected"] == pytest.approx(0.5)
    assert worst["detection_ci"] == pytest.approx(list(wilson_interval(4, 9)))
    assert worst["undetected_ci"] == pytest.approx(list(wilson_interval(5, 10)))
    assert [(p["caught"], p["detection"], p["undetected"]) for p in worst["operating_points"]] == [
        (4, pytest.approx(4 / 9), pytest.approx(0.6)), (7, pytest.approx(7 / 9), pytest.approx(0.3))]
    assert read_results(tmp_path / "results.json").sets == sets
    rows = [line.split(" | ") for line in results_markdown(results).splitlines() if line.startswith("| ami | ")]
    worst_row = next(r for r in rows if r[1] == WORST_CASE)
    assert worst_row[2] == "worst-case detection" and worst_row[3:6] == ["10", "9", "4"]
    assert worst_row[10].startswith("60.00 % (6/10)") and worst_row[11].startswith("30.00 % (3/10)")
    bim_row = next(r for r in rows if r[1] == "bim")
    assert bim_row[10].startswith("50.00 % (5/10)") and bim_row[11].startswith("20.00 % (2/10)")
    labels: list[str] = []
    with patch.object(Axes, "set_xticks", lambda ax, ticks, names, **kw: labels.extend(names)):
        plot_undetected(results, tmp_path / "undetected.png")
    assert labels == ["bim", WORST_CASE]  # the worst case is a group of the undetected-success plot


def test_manifest_gives_targets_and_faces(tmp_path: Path) -> None:
    folder = tmp_path / "adaptive"
    folder.mkdir()
    rows = [{"file": "Cher_0001.npy", "label": 1, "source": "/faces/Cher_0001.png", "target": 3},
            {"file": "Aaron_Tveit_0002.npy", "label": 0}]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = attack_set(tmp_path, "adaptive", ["Aaron_Tveit", "Cher"])
    assert data.targets == [3, -1] and data.faces == ["Cher_0001", "Aaron_Tveit_0002"]  # source stem, else file's
    datamodule = EvalDataModule(PixelSet(torch.zeros(1, 3, 4, 4), torch.zeros(1, dtype=torch.long)), {"a": data})
    assert datamodule.targets == {"a": [3, -1]} and datamodule.faces == {"a": ["Cher_0001", "Aaron_Tveit_0002"]}
