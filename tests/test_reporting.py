"""The reporting of one evaluation run of one or more detectors: tables, results files with intervals, plots, sample
figures and W&B (offline) logging. Wilson intervals are checked against SciPy's."""

from __future__ import annotations

import io
import json
import math
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from scipy.stats import binomtest

from ami_lightning.evaluation.thresholds import OperatingPoint
from ami_lightning.reporting.matrix import matrix_rows
from ami_lightning.reporting.plots import error_bars, plot_detection_rates, plot_roc, plot_undetected
from ami_lightning.reporting.results import (
    LEGACY_DETECTOR,
    RunResults,
    SampleBatch,
    SetResult,
    interval_methods,
    print_results,
    read_results,
    scalar_metrics,
    write_all,
    write_results,
)
from ami_lightning.reporting.samples import (
    DIFF_GAIN,
    FLAG_COLOURS,
    SAMPLE_ROWS,
    THUMBNAIL,
    sample_caption,
    sample_cell_box,
    sample_figure_caption,
    sample_figure_size,
    save_sample_figure,
    save_sample_figures,
    thumbnail_rows,
)
from ami_lightning.reporting.tables import results_markdown, results_table
from ami_lightning.reporting.wandb_logging import log_to_wandb, wandb_table_rows

H = W = 32
PATCH_AUROC_CI = (0.9012, 0.9771)  # a bootstrap interval as the evaluation module would give it
AMI = {"type": "ami", "params": {"weaken": 60.0, "strengthen": [2.15, 50.0]},
       "score": "-log p of the original top-1 under the steered model (nats, >= 0)",
       "rule": "flagged when the original and the steered model disagree on the top-1 identity", "gradient": "exact"}
FS = {"type": "feature_squeezing", "params": {"squeezers": ["bit_depth_5", "median_2x2"], "target_fpr": 0.05},
      "score": "largest L1 distance between the softmax outputs on the input and on a squeezed input (in [0, 2])",
      "rule": "flagged when the score is above the threshold at 5 % benign FPR", "gradient": "straight-through"}
ATTACK_SETS = {"patch_first": {"attack": "patch", "detector": None},
               "cw_l2_next": {"attack": "cw_l2", "detector": None}, "fgsm": {"attack": "fgsm", "detector": None}}


def _wilson(k: int, n: int) -> tuple[float, float]:
    """SciPy's 95 % Wilson score interval of k of n (the independent reference)."""
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _brackets(k: int, n: int) -> str:
    """`` [low, high]`` in % with one decimal, from SciPy's interval."""
    low, high = _wilson(k, n)
    return f" [{100 * low:.1f}, {100 * high:.1f}]"


def _batch(k: int, size: int = H, value: float = 100.0, step: float = 5.0,
           detectors: tuple[str, ...] = ("ami",)) -> SampleBatch:
    """k uniform grey samples (original ``value``, adversarial ``value + step``); the first detector flags the even
    columns, the others the odd ones."""
    flagged = {d: [(i % 2 == 0) == (j == 0) for i in range(k)] for j, d in enumerate(detectors)}
    original = torch.full((k, 3, size, size), value)
    return SampleBatch(original, original + step, [f"Person_{i}" for i in range(k)],
                       [f"Other_{i}" for i in range(k)], flagged)


def _points(detected: tuple[int, int], evaded: tuple[int, int] | None = None) -> list[OperatingPoint]:
    """Operating points at 5 % and 10 % benign FPR (thresholds 2.5 and 1.75, 17 and 34 of 343 benign flagged);
    ``evaded``: SR@N's numerators (attack sets)."""
    first, second = evaded or (None, None)
    return [OperatingPoint(0.05, 2.5, 17 / 343, detected[0], first),
            OperatingPoint(0.1, 1.75, 34 / 343, detected[1], second)]


def _ami_sets() -> list[SetResult]:
    """AmI: benign 33/343 flagged (9.62 %), two attack sets with ROC points and one with nothing eligible."""
    return [
        SetResult("ami", "benign", False, n=400, eligible=343, flagged=33, operating_points=_points((17, 34))),
        SetResult("ami", "patch_first", True, n=100, eligible=90, flagged=81, auroc=0.9321, auroc_ci=PATCH_AUROC_CI,
                  roc_fpr=[0.0, 0.05, 0.2, 1.0], roc_tpr=[0.0, 0.7, 0.95, 1.0],
                  operating_points=_points((71, 80), (15, 6)), success=85),
        SetResult("ami", "cw_l2_next", True, n=50, eligible=48, flagged=12, auroc=0.6125,
                  roc_fpr=[0.0, 0.1, 0.5, 1.0], roc_tpr=[0.0, 0.2, 0.7, 1.0], operating_points=_points((5, 9))),
        SetResult("ami", "fgsm", True, n=20, eligible=0, flagged=0, operating_points=_points((0, 0))),
    ]


def _fs_sets() -> list[SetResult]:
    """Feature Squeezing on the same sets (benign 17/343 flagged, 4.96 %) and an adaptive set attacking it."""
    return [
        SetResult("feature_squeezing", "benign", False, n=400, eligible=343, flagged=17,
                  operating_points=_points((17, 34))),
        SetResult("feature_squeezing", "patch_first", True, n=100, eligible=90, flagged=60, auroc=0.81,
                  auroc_ci=(0.75, 0.86), roc_fpr=[0.0, 0.3, 1.0], roc_tpr=[0.0, 0.8, 1.0],
                  operating_points=_points((60, 70))),
        SetResult("feature_squeezing", "cw_l2_next", True, n=50, eligible=48, flagged=30, auroc=0.7,
                  roc_fpr=[0.0, 0.4, 1.0], roc_tpr=[0.0, 0.6, 1.0], operating_points=_points((30, 33))),
        SetResult("feature_squeezing", "fgsm", True, n=20, eligible=0, flagged=0, operating_points=_points((0, 0))),
        SetResult("feature_squeezing", "adaptive_fs", True, n=10, eligible=9, flagged=2, auroc=0.55,
                  roc_fpr=[0.0, 1.0], roc_tpr=[0.0, 1.0], operating_points=_points((1, 2))),
    ]


@pytest.fixture
def results() -> RunResults:
    """One detector (AmI): benign 33/343 flagged (9.62 %), two attack sets with ROC points and one with nothing
    eligible; operating points at 5 % and 10 % benign FPR."""
    return RunResults(
        sets=_ami_sets(),
        model="dlib_resnet",
        detectors={"ami": AMI},
        attack_sets=ATTACK_SETS,
        extra={"accuracy": 0.9575, "skipped": {"benign": 0, "patch_first": 2}},
        samples={"patch_first": _batch(4), "cw_l2_next": _batch(3)},  # |difference| x 10 = 50
        bootstrap={"resamples": 1000, "seed": 0},
    )


@pytest.fixture
def two() -> RunResults:
    """AmI and Feature Squeezing on the same sets; Feature Squeezing also on ``adaptive_fs``, which attacked it."""
    return RunResults(
        sets=[*_ami_sets(), *_fs_sets()],
        model="dlib_resnet",
        detectors={"ami": AMI, "feature_squeezing": FS},
        attack_sets={**ATTACK_SETS, "adaptive_fs": {"attack": "adaptive_gradient", "detector": "feature_squeezing"}},
        extra={"accuracy": 0.9575},
        samples={"patch_first": _batch(4, detectors=("ami", "feature_squeezing"))},
        bootstrap={"resamples": 200, "seed": 3},
    )


def test_rates_and_their_text(results: RunResults) -> None:
    benign, patch, _, fgsm = results.sets
    assert benign.rate == pytest.approx(33 / 343) and benign.metric == "FPR"
    assert benign.rate_text() == "9.62 % (33/343)" + _brackets(33, 343) and benign.auroc_text() == "-"
    assert benign.rate_text(ci=False) == "9.62 % (33/343)"
    assert patch.rate_text() == "90.00 % (81/90)" + _brackets(81, 90) and patch.metric == "detection"
    assert patch.auroc_text() == "0.932 [0.901, 0.977]" and patch.auroc_text(ci=False) == "0.932"
    assert math.isnan(fgsm.rate) and fgsm.rate_text() == "n/a (0/0)"
    assert SetResult("ami", "x", True, 8, 8, 7).rate_text() == "87.50 % (7/8)" + _brackets(7, 8)
    assert SetResult("ami", "x", True, 8, 8, 7, auroc=0.9).auroc_text() == "0.900"  # no interval: the value alone
    assert results.benign_of("ami") is benign and [s.name for s in results.attacks_of("ami")] == [
        "patch_first", "cw_l2_next", "fgsm"]
    assert results.detector_names == ["ami"] and results.title() == "ami on dlib_resnet"


def test_operating_point_rates_and_undetected(results: RunResults) -> None:
    benign, patch, cw, fgsm = results.sets
    assert results.fpr_targets == [0.05, 0.1]
    assert patch.detection_at(0.05) == pytest.approx(71 / 90)
    assert patch.detection_at_text(0.05) == "78.89 % (71/90)" + _brackets(71, 90)
    assert patch.undetected_rate == pytest.approx(0.09)
    assert patch.undetected_text() == "9.00 % (9/100)" + _brackets(9, 100)
    assert patch.undetected_at(0.05) == pytest.approx(0.19) and patch.undetected_at(0.1) == pytest.approx(0.10)
    assert cw.undetected_rate == pytest.approx(36 / 50) and cw.undetected_at(0.1) == pytest.approx(39 / 50)
    assert benign.detection_at(0.05) == pytest.approx(17 / 343) and benign.detection_at_text(0.1) == "9.91 % (34/343)"
    assert math.isnan(benign.undetected_rate) and benign.undetected_text() == "-"
    assert fgsm.undetected_rate == 0.0 and fgsm.undetected_text() == "0.00 % (0/20)" + _brackets(0, 20)
    assert math.isnan(fgsm.detection_at(0.05)) and fgsm.detection_at_text(0.05) == "n/a (0/0)"
    assert patch.point(0.2) is None and math.isnan(patch.detection_at(0.2)) and patch.detection_at_text(0.2) == "-"
    no_threshold = SetResult("ami", "x", True, n=10, eligible=4, flagged=1,
                             operating_points=[OperatingPoint(0.05, math.nan, math.nan, None)])
    assert math.isnan(no_threshold.undetected_at(0.05)) and no_threshold.detection_at_text(0.05) == "-"


def test_wilson_intervals_follow_from_the_counts(results: RunResults) -> None:
    benign, patch, cw, fgsm = results.sets
    assert benign.rate_ci() == pytest.approx(_wilson(33, 343), rel=1e-12)
    assert patch.rate_ci() == pytest.approx(_wilson(81, 90), rel=1e-12)
    assert patch.undetected_ci() == pytest.approx(_wilson(90 - 81, 100), rel=1e-12)
    assert patch.detection_ci_at(0.05) == pytest.approx(_wilson(71, 90), rel=1e-12)
    assert cw.undetected_ci_at(0.1) == pytest.approx(_wilson(48 - 9, 50), rel=1e-12)
    assert fgsm.undetected_ci() == pytest.approx(_wilson(0, 20), rel=1e-12) and fgsm.undetected_ci()[0] == 0.0
    for interval in (fgsm.rate_ci(), fgsm.detection_ci_at(0.05), benign.undetected_ci(), benign.detection_ci_at(0.05),
                     benign.undetected_ci_at(0.05), patch.detection_ci_at(0.2), patch.undetected_ci_at(0.2)):
        assert all(math.isnan(bound) for bound in interval)  # undefined: nothing eligible, benign, no threshold
    for s in (patch, cw):  # each interval holds its rate
        for (low, high), value in ((s.rate_ci(), s.rate), (s.undetected_ci(), s.undetected_rate),
                                   (s.detection_ci_at(0.1), s.detection_at(0.1))):
            assert low <= value <= high
    assert results.intervals() == interval_methods({"resamples": 1000, "seed": 0}) == {
        "rates": "Wilson score, 95 %", "auroc": "stratified bootstrap, percentile, 95 %, 1000 resamples, seed 0",
        "calibrated": interval_methods(None)["calibrated"]}
    assert interval_methods(None)["auroc"] == "stratified bootstrap, percentile, 95 % (resamples and seed not recorded)"
    assert interval_methods({"resamples": 200, "seed": 7}, 0.9)["auroc"].endswith("90 %, 200 resamples, seed 7")


def test_rich_table_has_counts_next_to_every_rate(results: RunResults) -> None:
    table = results_table(results)
    assert [c.header for c in table.columns] == ["detector", "set", "metric", "n", "eligible", "flagged", "rate",
                                                 "AUROC", "det@5%FPR", "det@10%FPR", "SR@5%", "SR@10%", "undetected"]
    assert table.row_count == 4 and table.title == "ami on dlib_resnet"
    assert list(table.columns[0].cells) == ["ami"] * 4
    assert list(table.columns[1].cells) == ["benign", "patch_first", "cw_l2_next", "fgsm"]
    console = Console(record=True, width=360, file=io.StringIO())
    print_results(results, console)
    text = console.export_text()
    for expected in ("9.62 % (33/343)" + _brackets(33, 343), "90.00 % (81/90)" + _brackets(81, 90),
                     "25.00 % (12/48)" + _brackets(12, 48), "n/a (0/0)", "0.932 [0.901, 0.977]", "ami on dlib_resnet",
                     "78.89 % (71/90)" + _brackets(71, 90), "88.89 % (80/90)" + _brackets(80, 90),
                     "4.96 % (17/343) ", "9.00 % (9/100)" + _brackets(9, 100), "72.00 % (36/50)" + _brackets(36, 50)):
        assert expected in text
    caption = " ".join(text.split())  # the caption under the table, wrapped to its width
    assert "Intervals in brackets: rates (in %): Wilson score, 95 %" in caption
    assert "AUROC: stratified bootstrap, percentile, 95 %, 1000 resamples, seed 0." in caption
    assert "4.96 % (17/343) [" not in text  # the benign set's achieved FPR carries no interval
    targets = RunResults([SetResult("ami", "benign", False, 10, 10, 1,
                                    operating_points=[OperatingPoint(0.01, 3.0, 0.0, 0)])], "m", {"ami": AMI})
    assert [c.header for c in results_table(targets).columns][-3:] == ["det@1%FPR", "SR@1%", "undetected"]


def _interval(value: list[float] | None) -> tuple[float, float] | None:
    return None if value is None else (value[0], value[1])


def test_json_round_trips_the_numbers(results: RunResults, tmp_path: Path) -> None:
    paths = write_results(results, tmp_path / "out")
    assert set(paths) == {"json", "md"} and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "results.json", "results.md"]  # no temporary file left behind

    def no_constants(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    data = json.loads(paths["json"].read_text(), parse_constant=no_constants)
    sets = {s["name"]: s for s in data["sets"]}
    assert sets["benign"]["rate"] == pytest.approx(33 / 343) and sets["benign"]["auroc"] is None
    assert (sets["benign"]["eligible"], sets["benign"]["flagged"], sets["benign"]["n"]) == (343, 33, 400)
    assert sets["patch_first"]["auroc"] == 0.9321 and sets["patch_first"]["roc_tpr"] == [0.0, 0.7, 0.95, 1.0]
    assert sets["fgsm"]["rate"] is None and sets["fgsm"]["metric"] == "detection"
    assert list(data) == ["model", "detectors", "attack_sets", "intervals", "bootstrap", "sets", "worst_case",
                          "comparisons", "extra", "provenance"]
    assert data["worst_case"] == {}  # no worst-case row in these results
    assert data["model"] == "dlib_resnet" and data["detectors"] == {"ami": AMI} and data["attack_sets"] == ATTACK_SETS
    assert [list(s)[:2] for s in data["sets"]] == [["detector", "name"]] * 4
    assert {s["detector"] for s in data["sets"]} == {"ami"}
    assert data["extra"]["skipped"] == {"benign": 0, "patch_first": 2}
    assert sets["patch_first"]["undetected"] == pytest.approx(0.09) and sets["benign"]["undetected"] is None
    assert sets["patch_first"]["operating_points"][0] == {
        "target_fpr": 0.05, "threshold": 2.5, "benign_fpr": pytest.approx(17 / 343), "detected": 71, "evaded": 15,
        "detection": pytest.approx(71 / 90), "undetected": pytest.approx(0.19),
        "detection_ci": pytest.approx(list(_wilson(71, 90)), rel=1e-12),
        "undetected_ci": pytest.approx(list(_wilson(19, 100)), rel=1e-12), "success_rate": pytest.approx(0.15),
        "success_rate_ci": pytest.approx(list(_wilson(15, 100)), rel=1e-12)}
    assert sets["patch_first"]["success"] == 85 and sets["benign"]["success"] is None
    assert sets["fgsm"]["operating_points"][0]["success_rate"] is None  # no evaded count recorded
    fgsm_at_10 = sets["fgsm"]["operating_points"][1]
    assert fgsm_at_10["detection"] is None and fgsm_at_10["undetected"] == 0.0
    assert fgsm_at_10["detection_ci"] is None
    assert _interval(fgsm_at_10["undetected_ci"]) == pytest.approx(_wilson(0, 20))
    assert [(p["detection_ci"], p["undetected_ci"]) for p in sets["benign"]["operating_points"]] == [(None, None)] * 2
    # the intervals: two bounds under *_ci, None where undefined, and the methods at the top
    assert _interval(sets["benign"]["rate_ci"]) == pytest.approx(_wilson(33, 343), rel=1e-12)
    assert _interval(sets["patch_first"]["undetected_ci"]) == pytest.approx(_wilson(9, 100), rel=1e-12)
    assert sets["patch_first"]["auroc_ci"] == list(PATCH_AUROC_CI) and sets["fgsm"]["auroc_ci"] is None
    assert sets["fgsm"]["rate_ci"] is None and sets["benign"]["undetected_ci"] is None
    assert data["intervals"]["rates"] == "Wilson score, 95 %"
    assert data["intervals"]["auroc"] == "stratified bootstrap, percentile, 95 %, 1000 resamples, seed 0"
    assert data["bootstrap"] == {"resamples": 1000, "seed": 0}

    back = read_results(paths["json"])
    assert back.sets == results.sets and back.extra == results.extra
    assert back.detectors == results.detectors and back.attack_sets == results.attack_sets
    assert back.sets[1].operating_points[1] == OperatingPoint(0.1, 1.75, 34 / 343, 80, 6)
    assert back.sets[1].auroc_ci == PATCH_AUROC_CI and back.bootstrap == results.bootstrap


def test_old_results_json_reads_back_without_operating_points(results: RunResults, tmp_path: Path) -> None:
    path = write_results(results, tmp_path)["json"]
    data = json.loads(path.read_text())
    del data["intervals"], data["bootstrap"], data["detectors"], data["attack_sets"]
    data["weaken"], data["strengthen"] = 60.0, [2.15, 50.0]
    for s in data["sets"]:  # the format before several detectors, operating points and intervals
        del s["detector"], s["operating_points"], s["undetected"], s["rate_ci"], s["undetected_ci"], s["auroc_ci"]
    path.write_text(json.dumps(data))
    back = read_results(path)
    assert [s.operating_points for s in back.sets] == [[]] * 4 and back.fpr_targets == []
    assert [(s.detector, s.name, s.n, s.eligible, s.flagged, s.auroc) for s in back.sets] == [
        (s.detector, s.name, s.n, s.eligible, s.flagged, s.auroc) for s in results.sets]
    assert back.detectors["ami"]["params"] == AMI["params"] and back.attack_sets == {}
    assert back.sets[1].undetected_rate == pytest.approx(0.09)
    assert [c.header for c in results_table(back).columns][-2:] == ["AUROC", "undetected"]
    metrics = scalar_metrics(back)
    assert metrics["ami/patch_first/undetected"] == pytest.approx(0.09)
    assert not any("_at_fpr_" in key for key in metrics)
    assert _png_size(plot_undetected(back, tmp_path / "u.png"))[0] > 0


# results.json as the evaluation wrote it before intervals existed (operating points, no *_ci keys, no "intervals")
# and before runs had several detectors (AmI's "weaken" and "strengthen" at the top, no "detector" in the sets)
OLD_RESULTS_JSON = """{
  "model": "dlib_resnet", "weaken": 1000.0, "strengthen": [2.15, 200.0],
  "sets": [
    {"name": "benign", "adversarial": false, "n": 952, "eligible": 933, "flagged": 97, "auroc": null,
     "roc_fpr": [], "roc_tpr": [], "metric": "FPR", "rate": 0.10396570203644159, "undetected": null,
     "operating_points": [{"target_fpr": 0.05, "threshold": 3.1, "benign_fpr": 0.04930332261521972, "detected": 46,
                           "detection": 0.04930332261521972, "undetected": null}]},
    {"name": "glasses_next", "adversarial": true, "n": 8, "eligible": 8, "flagged": 7, "auroc": 0.933,
     "roc_fpr": [0.0, 1.0], "roc_tpr": [0.0, 1.0], "metric": "detection", "rate": 0.875, "undetected": 0.125,
     "operating_points": [{"target_fpr": 0.05, "threshold": 3.1, "benign_fpr": 0.04930332261521972, "detected": 5,
                           "detection": 0.625, "undetected": 0.375}]}
  ],
  "extra": {"skipped": {"benign": 0, "glasses_next": 0}}
}"""


def test_a_results_file_from_before_intervals_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(OLD_RESULTS_JSON)
    back = read_results(path)
    benign, glasses = back.sets
    from ami_lightning.detectors.ami import AmIDetector

    assert back.detectors == {"ami": {  # described as the AmI detector describes itself (straight-through gradients)
        "type": "ami", "params": {"weaken": 1000.0, "strengthen": [2.15, 200.0]}, "score": AmIDetector.score_unit,
        "rule": AmIDetector.rule, "gradient": "straight-through"}}
    assert LEGACY_DETECTOR == "ami" and [(s.detector, s.name) for s in back.sets] == [
        ("ami", "benign"), ("ami", "glasses_next")]
    assert back.attack_sets == {} and back.model == "dlib_resnet" and back.title() == "ami on dlib_resnet"
    assert (benign.n, benign.eligible, benign.flagged, glasses.n, glasses.eligible, glasses.flagged) == (
        952, 933, 97, 8, 8, 7)
    assert benign.operating_points == [OperatingPoint(0.05, 3.1, 0.04930332261521972, 46)]
    assert back.bootstrap is None and glasses.auroc_ci is None and glasses.auroc == 0.933
    assert glasses.rate_ci() == pytest.approx(_wilson(7, 8), rel=1e-12)  # derived from the counts
    assert glasses.detection_ci_at(0.05) == pytest.approx(_wilson(5, 8), rel=1e-12)
    assert glasses.auroc_text() == "0.933" and glasses.rate_text() == "87.50 % (7/8)" + _brackets(7, 8)
    assert back.intervals()["auroc"].endswith("(resamples and seed not recorded)")
    metrics = scalar_metrics(back)
    assert "ami/glasses_next/auroc_ci_low" not in metrics and metrics["ami/glasses_next/auroc"] == 0.933
    assert metrics["ami/glasses_next/rate_ci_high"] == pytest.approx(_wilson(7, 8)[1], rel=1e-12)
    again = write_results(back, tmp_path / "again")["json"]  # and is written again in the new format
    data = json.loads(again.read_text())
    assert data["sets"][1]["auroc_ci"] is None and data["bootstrap"] is None
    assert data["sets"][1]["rate_ci"] == pytest.approx(list(_wilson(7, 8)), rel=1e-12)
    assert "weaken" not in data and data["detectors"] == back.detectors and data["sets"][1]["detector"] == "ami"
    assert read_results(again).sets == back.sets and read_results(again).detectors == back.detectors


def test_missing_threshold_round_trips_as_nan(results: RunResults, tmp_path: Path) -> None:
    results.sets[2].operating_points = [OperatingPoint(0.05, math.nan, math.nan, None)]
    data = json.loads(write_results(results, tmp_path)["json"].read_text())
    assert data["sets"][2]["operating_points"] == [{"target_fpr": 0.05, "threshold": None, "benign_fpr": None,
                                                    "detected": None, "evaded": None, "detection": None,
                                                    "undetected": None, "detection_ci": None, "undetected_ci": None,
                                                    "success_rate": None, "success_rate_ci": None}]
    (point,) = read_results(tmp_path / "results.json").sets[2].operating_points
    assert math.isnan(point.threshold) and math.isnan(point.benign_fpr) and point.detected is None


def test_json_is_safe_for_tensors_and_nan(results: RunResults, tmp_path: Path) -> None:
    results.extra = {"accuracy": torch.tensor(0.5), "per_class": torch.tensor([1.0, float("nan")]), "dir": tmp_path}
    results.sets[1].auroc = float("nan")
    results.sets[2].auroc_ci = (math.nan, math.nan)
    data = json.loads(write_results(results, tmp_path)["json"].read_text())
    assert data["extra"] == {"accuracy": 0.5, "per_class": [1.0, None], "dir": str(tmp_path)}
    assert data["sets"][1]["auroc"] is None and data["sets"][2]["auroc_ci"] is None
    assert read_results(tmp_path / "results.json").sets[2].auroc_ci is None


def _md_tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables of ``text``, each as its rows of cells (header first, the rule under it left out)."""
    tables: list[list[list[str]]] = []
    previous = ""
    for line in text.splitlines():
        if line.startswith("|") and not previous.startswith("|"):
            tables.append([])
        if line.startswith("|") and not set(line) <= set("|-: "):
            tables[-1].append([c.strip() for c in line[1:-1].split(" | ")])
        previous = line
    return tables


def test_markdown_has_one_row_per_set_and_the_parameters(results: RunResults, tmp_path: Path) -> None:
    text = write_results(results, tmp_path)["md"].read_text()
    assert text.startswith("# ami on dlib_resnet\n")
    run, ami, attack_sets, matrix, table = _md_tables(text)
    low, high = _wilson(9, 100)
    assert matrix == [["detector", "patch_first", "cw_l2_next", "fgsm"],
                      ["ami", f"9/100 9 % [{100 * low:.0f}, {100 * high:.0f}]; SR@5 15/100", matrix[1][2],
                       matrix[1][3]]]
    assert matrix[1][2].startswith("36/50 72 % [") and "SR@5" not in matrix[1][2]  # no SR without evaded counts
    assert matrix[1][3].startswith("0/20 0 % [0, ")  # nothing fools the model: nothing gets through
    assert text.index("## Detector x attack matrix") < text.index("## Results")
    assert run == [["parameter", "value"], ["model", "dlib_resnet"], ["accuracy", "0.9575"],
                   ["skipped", '{"benign": 0, "patch_first": 2}']]
    assert ami == [["parameter", "value"], ["name", "ami"], ["type", "ami"], ["params.weaken", "60.0"],
                   ["params.strengthen", "[2.15, 50.0]"], ["score", AMI["score"]], ["rule", AMI["rule"]],
                   ["gradient", "exact"]]
    assert attack_sets == [["set", "attack", "attacked detector"], ["patch_first", "patch", "-"],
                           ["cw_l2_next", "cw_l2", "-"], ["fgsm", "fgsm", "-"]]
    header, *rows = table
    assert header == ["detector", "set", "metric", "n", "eligible", "flagged", "rate", "AUROC", "det@5%FPR",
                      "det@10%FPR", "SR@5%", "SR@10%", "undetected"]
    by_set = {row[1]: row for row in rows}
    assert [row[:2] for row in rows] == [["ami", "benign"], ["ami", "patch_first"], ["ami", "cw_l2_next"],
                                         ["ami", "fgsm"]]
    assert by_set["benign"][2:7] == ["FPR", "400", "343", "33", "9.62 % (33/343)" + _brackets(33, 343)]
    assert by_set["patch_first"][6:] == ["90.00 % (81/90)" + _brackets(81, 90), "0.932 [0.901, 0.977]",
                                         "78.89 % (71/90)" + _brackets(71, 90), "88.89 % (80/90)" + _brackets(80, 90),
                                         "15.00 % (15/100)" + _brackets(15, 100), "6.00 % (6/100)" + _brackets(6, 100),
                                         "9.00 % (9/100)" + _brackets(9, 100)]
    assert by_set["cw_l2_next"][10:12] == ["-", "-"]  # no SR@N without the evaded counts
    assert by_set["fgsm"][6] == "n/a (0/0)"
    assert "Wilson score, 95 %" in text and "stratified bootstrap, percentile, 95 %, 1000 resamples, seed 0" in text


def test_two_detectors_rows_are_grouped_and_named(two: RunResults, tmp_path: Path) -> None:
    assert two.detector_names == ["ami", "feature_squeezing"]
    assert two.title() == "ami, feature_squeezing on dlib_resnet"
    assert two.set_names == ["patch_first", "cw_l2_next", "fgsm", "adaptive_fs"]
    assert [s.name for s in two.attacks_of("ami")] == ["patch_first", "cw_l2_next", "fgsm"]
    assert two.benign_of("feature_squeezing").flagged == 17 and two.benign_of("nothing") is None
    assert two.attacked_detector("adaptive_fs") == "feature_squeezing" and two.attacked_detector("fgsm") is None
    # the rich table: a detector column, rows grouped by detector
    table = results_table(two)
    assert table.title == "ami, feature_squeezing on dlib_resnet" and table.row_count == 9
    assert list(table.columns[0].cells) == ["ami"] * 4 + ["feature_squeezing"] * 5
    assert list(table.columns[1].cells) == ["benign", "patch_first", "cw_l2_next", "fgsm"] * 2 + ["adaptive_fs"]
    assert list(table.columns[6].cells)[4:6] == ["4.96 % (17/343)" + _brackets(17, 343),
                                                 "66.67 % (60/90)" + _brackets(60, 90)]
    # results.md: a parameter table per detector, the attack sets with the attacked detector, the grouped results
    text = results_markdown(two)
    assert "## Detector `ami`" in text and "## Detector `feature_squeezing`" in text
    run, ami, fs, attack_sets, matrix, results = _md_tables(text)
    assert matrix[0] == ["detector", "patch_first", "cw_l2_next", "fgsm", "adaptive_fs (vs feature_squeezing)"]
    assert [row[0] for row in matrix[1:]] == ["ami", "feature_squeezing"] and matrix[1][4] == "-"
    assert matrix[2][4].startswith("7/10 70 % [")
    assert ami[1:4] == [["name", "ami"], ["type", "ami"], ["params.weaken", "60.0"]]
    assert fs[1:] == [["name", "feature_squeezing"], ["type", "feature_squeezing"],
                      ["params.squeezers", '["bit_depth_5", "median_2x2"]'], ["params.target_fpr", "0.05"],
                      ["score", FS["score"]], ["rule", FS["rule"]], ["gradient", "straight-through"]]
    assert attack_sets[-1] == ["adaptive_fs", "adaptive_gradient", "feature_squeezing"]
    assert attack_sets[1] == ["patch_first", "patch", "-"]
    rows = {(row[0], row[1]): row for row in results[1:]}
    assert [key for key in rows] == [(d, s) for d in ("ami", "feature_squeezing") for s in
                                     ("benign", "patch_first", "cw_l2_next", "fgsm")] + [
        ("feature_squeezing", "adaptive_fs")]
    assert rows["ami", "benign"][5] == "33" and rows["feature_squeezing", "benign"][5] == "17"
    assert rows["feature_squeezing", "adaptive_fs"][6:] == [
        "22.22 % (2/9)" + _brackets(2, 9), "0.550", "11.11 % (1/9)" + _brackets(1, 9),
        "22.22 % (2/9)" + _brackets(2, 9), "-", "-", "70.00 % (7/10)" + _brackets(7, 10)]
    with pytest.raises(ValueError, match="detector 'ami' has the set 'fgsm' twice"):
        RunResults([*_ami_sets(), SetResult("ami", "fgsm", True, 1, 1, 1)], "m", {"ami": AMI})
    # a detector of the sets that is not described comes after the described ones
    undescribed = RunResults(_fs_sets()[:2] + _ami_sets()[:1], "m", {"ami": AMI})
    assert undescribed.detector_names == ["ami", "feature_squeezing"]
    assert "## Detector `feature_squeezing`" in results_markdown(undescribed)


def test_matrix_heatmap_and_comparisons(two: RunResults, tmp_path: Path, figures: list[Any]) -> None:
    from matplotlib.patches import Rectangle

    from ami_lightning.evaluation.paired import compare_pairs
    from ami_lightning.reporting.matrix import comparison_sentences, matrix_columns, plot_matrix

    assert matrix_columns(two) == [("published", "patch_first"), ("published", "cw_l2_next"), ("published", "fgsm"),
                                   ("vs feature_squeezing", "adaptive_fs")]
    plot_matrix(two, tmp_path / "matrix.png")
    (fig,) = figures
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["ami", "feature_squeezing"]
    assert [t.get_text() for t in ax.get_xticklabels()][-1] == "adaptive_fs\n(vs feature_squeezing)"
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 7 and "7/10" in texts  # one per existing cell: ami has no adaptive_fs
    outlined = [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]
    assert [(p.get_x(), p.get_y()) for p in outlined] == [pytest.approx((3.04, 1.04))]  # fs's own adaptive column
    caught = {"ami": torch.ones(30, dtype=torch.bool), "feature_squeezing": torch.zeros(30, dtype=torch.bool)}
    two.comparisons = compare_pairs("patch_first", caught) + compare_pairs(
        "fgsm", {"ami": caught["ami"][:2], "feature_squeezing": caught["feature_squeezing"][:2]})
    (patch, fgsm) = comparison_sentences(two)
    assert patch.startswith("`patch_first` (30 samples that fool the model): ami > feature_squeezing (Holm p = ")
    assert fgsm == "`fgsm` (2 samples that fool the model): no pair distinguishable."
    text = results_markdown(two)
    assert "; > feature_squeezing |" in text and f"- {patch}" in text
    data = json.loads(write_results(two, tmp_path)["json"].read_text())
    assert data["comparisons"][0] == {"set": "patch_first", "first": "ami", "second": "feature_squeezing",
                                      "total": 30, "only_first": 30, "only_second": 0,
                                      "p_value": pytest.approx(2 / 2**30), "p_holm": pytest.approx(2 / 2**30),
                                      "better": "ami"}
    assert read_results(tmp_path / "results.json").comparisons == two.comparisons


def test_two_detectors_round_trip_through_json(two: RunResults, tmp_path: Path) -> None:
    data = json.loads(write_results(two, tmp_path)["json"].read_text())
    assert list(data["detectors"]) == ["ami", "feature_squeezing"] and data["detectors"]["feature_squeezing"] == FS
    assert data["attack_sets"]["adaptive_fs"] == {"attack": "adaptive_gradient", "detector": "feature_squeezing"}
    assert [(s["detector"], s["name"]) for s in data["sets"]][3:6] == [
        ("ami", "fgsm"), ("feature_squeezing", "benign"), ("feature_squeezing", "patch_first")]
    assert data["sets"][5]["rate"] == pytest.approx(60 / 90) and data["sets"][5]["auroc_ci"] == [0.75, 0.86]
    assert data["bootstrap"] == {"resamples": 200, "seed": 3}
    back = read_results(tmp_path / "results.json")
    assert back.sets == two.sets and back.detectors == two.detectors and back.attack_sets == two.attack_sets
    assert (back.model, back.extra, back.bootstrap, back.samples) == (two.model, two.extra, two.bootstrap, {})


def test_metric_keys_carry_the_detector(two: RunResults) -> None:
    metrics = scalar_metrics(two)
    assert metrics["ami/fgsm/rate"] != metrics["ami/fgsm/rate"]  # nan: nothing eligible
    assert metrics["ami/patch_first/rate"] == pytest.approx(81 / 90)
    assert metrics["feature_squeezing/patch_first/rate"] == pytest.approx(60 / 90)
    assert metrics["feature_squeezing/benign/threshold_at_fpr_0.05"] == 2.5
    assert (metrics["ami/patch_first/auroc_ci_low"], metrics["ami/patch_first/auroc_ci_high"]) == PATCH_AUROC_CI
    assert metrics["feature_squeezing/adaptive_fs/undetected"] == pytest.approx(0.7)
    assert (metrics["feature_squeezing/adaptive_fs/undetected_at_fpr_0.1_ci_low"],
            metrics["feature_squeezing/adaptive_fs/undetected_at_fpr_0.1_ci_high"]) == pytest.approx(
        _wilson(9 - 2, 10), rel=1e-12)
    assert metrics["extra/accuracy"] == 0.9575
    assert "ami/adaptive_fs/rate" not in metrics and not any(key.startswith("patch_first/") for key in metrics)
    assert {key.split("/")[0] for key in metrics} == {"ami", "feature_squeezing", "extra"}
    per_set = len([key for key in metrics if key.startswith("ami/patch_first/")])
    # rate, flagged, eligible, n, auroc, undetected, detection, undetected and SR at 2 targets; 9 intervals x 2 bounds
    assert per_set == len([key for key in metrics if key.startswith("feature_squeezing/patch_first/")]) == 30
    assert metrics["ami/patch_first/success_rate_at_fpr_0.05"] == pytest.approx(0.15)
    assert (metrics["ami/patch_first/success_rate_at_fpr_0.1_ci_low"],
            metrics["ami/patch_first/success_rate_at_fpr_0.1_ci_high"]) == pytest.approx(_wilson(6, 100), rel=1e-12)
    columns, rows = wandb_table_rows(two)
    assert columns[:3] == ["detector", "set", "metric"] and len(rows) == 9
    assert [row[:2] for row in rows][3:5] == [["ami", "fgsm"], ["feature_squeezing", "benign"]]


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The matplotlib figures the plots save, in order (recorded as they are saved)."""
    from ami_lightning.reporting import plots

    saved: list[Any] = []
    original = plots.save_figure

    def recording(fig: Any, path: Any, *args: Any, **kwargs: Any) -> Path:
        saved.append(fig)
        return original(fig, path, *args, **kwargs)

    monkeypatch.setattr(plots, "save_figure", recording)
    return saved


def _panels(fig: Any) -> list[Any]:
    """The figure's data panels (axes with a title or data), not legends or blank fillers."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.axison]


def _bar_colours(fig: Any) -> set[tuple[float, ...]]:
    """The face colours (RGB) of every bar drawn on the figure."""
    from matplotlib.patches import Rectangle

    return {tuple(round(c, 3) for c in patch.get_facecolor()[:3]) for ax in fig.axes for container in ax.containers
            for patch in container if isinstance(patch, Rectangle)}


def _tab(name: str) -> tuple[float, ...]:
    from matplotlib.colors import to_rgb

    return tuple(round(c, 3) for c in to_rgb(f"tab:{name}"))


def test_plots_are_valid_pngs(results: RunResults, tmp_path: Path, figures: list[Any]) -> None:
    bars = plot_detection_rates(results, tmp_path / "rates.png")
    roc = plot_roc(results, tmp_path / "roc.png")
    assert _png_size(bars)[0] > 0 and _png_size(roc)[0] > 0
    bar_figure, roc_figure = figures
    assert [ax.get_title().split(":")[0] for ax in _panels(roc_figure)] == ["ami"]  # one panel, of its detector
    assert _bar_colours(bar_figure) == {_tab("blue")}  # one detector, one colour
    assert [t.get_text() for t in bar_figure.axes[0].get_xticklabels()] == results.set_names
    benign_only = RunResults([results.sets[0]], "m", {"ami": AMI})  # no attack set: still a (blank) chart
    assert _png_size(plot_detection_rates(benign_only, tmp_path / "b.png"))[0] > 0
    assert _png_size(plot_roc(benign_only, tmp_path / "r.png"))[0] > 0
    assert _png_size(plot_undetected(benign_only, tmp_path / "u.png"))[0] > 0
    nothing = RunResults([], "m", {})  # no detector at all: one blank panel each
    assert nothing.title() == "no detector on m"
    for plot in (plot_detection_rates, plot_roc, plot_undetected):
        assert _png_size(plot(nothing, tmp_path / f"{plot.__name__}.png"))[0] > 0


def test_plots_of_two_detectors(two: RunResults, tmp_path: Path, figures: list[Any]) -> None:
    plot_detection_rates(two, tmp_path / "rates.png")
    plot_roc(two, tmp_path / "roc.png")
    plot_undetected(two, tmp_path / "undetected.png")
    bars, roc, undetected = figures
    assert _bar_colours(bars) == {_tab("blue"), _tab("orange")}  # a colour per detector
    assert [ax.get_title().split(":")[0] for ax in _panels(roc)] == ["ami", "feature_squeezing"]  # a panel each
    assert len({round(ax.get_position().y0, 3) for ax in _panels(roc)}) == 1  # side by side
    assert [ax.get_title().split(":")[0] for ax in _panels(undetected)] == ["ami", "feature_squeezing"]
    assert _bar_colours(undetected) == {_tab("blue"), _tab("orange"), _tab("green")}  # a colour per rule
    many = RunResults([SetResult(f"d{i}", "benign", False, 10, 10, 1) for i in range(4)], "m", {})
    plot_roc(many, tmp_path / "many.png")
    panels = _panels(figures[-1])
    assert [ax.get_title().split(":")[0] for ax in panels] == ["d0", "d1", "d2", "d3"]
    rows = sorted({round(ax.get_position().y0, 3) for ax in panels}, reverse=True)
    assert len(rows) == 2 and [round(ax.get_position().y0, 3) for ax in panels] == [rows[0]] * 3 + [rows[1]]


def test_detection_bars_and_benign_lines_per_detector(
    two: RunResults, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.axes import Axes

    bars: list[tuple[Any, dict[str, Any]]] = []
    lines: list[tuple[float, dict[str, Any]]] = []
    original_bar, original_axhline = Axes.bar, Axes.axhline

    def recording_bar(self: Axes, x: Any, *args: Any, **kwargs: Any) -> Any:
        bars.append((list(x), kwargs))
        return original_bar(self, x, *args, **kwargs)

    def recording_axhline(self: Axes, y: float = 0, *args: Any, **kwargs: Any) -> Any:
        lines.append((y, kwargs))
        return original_axhline(self, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "bar", recording_bar)
    monkeypatch.setattr(Axes, "axhline", recording_axhline)
    plot_detection_rates(two, tmp_path / "rates.png")
    (ami_x, ami), (fs_x, fs) = bars
    assert ami["label"] == "ami: detection rate" and fs["label"] == "feature_squeezing: detection rate"
    assert ami_x == pytest.approx([-0.2, 0.8, 1.8]) and fs_x == pytest.approx([0.2, 1.2, 2.2, 3.2])  # no ami bar
    assert ami["color"] != fs["color"]
    assert np.allclose(fs["yerr"], error_bars([s.rate for s in two.attacks_of("feature_squeezing")],
                                              [s.rate_ci() for s in two.attacks_of("feature_squeezing")]))
    (ami_y, ami_line), (fs_y, fs_line) = lines
    assert (ami_y, fs_y) == pytest.approx((100 * 33 / 343, 100 * 17 / 343))
    assert ami_line["color"] == ami["color"] and fs_line["color"] == fs["color"] and fs_line["linestyle"] == "--"
    assert fs_line["label"] == "feature_squeezing: benign FPR " + two.benign_of("feature_squeezing").rate_text()


def test_undetected_plot_has_a_bar_per_rule(results: RunResults, tmp_path: Path, figures: list[Any]) -> None:
    plot_undetected(results, tmp_path / "undetected.png")
    (fig,) = figures
    assert _bar_colours(fig) == {_tab("blue"), _tab("orange"), _tab("green")}  # three rules, no fourth
    (panel,) = _panels(fig)
    assert [t.get_text() for t in panel.get_xticklabels()] == results.set_names


def test_error_bars_reach_the_wilson_bounds(
    results: RunResults, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    below, above = error_bars([0.9, math.nan, 0.5], [_wilson(81, 90), (0.1, 0.2), (math.nan, math.nan)])
    low, high = _wilson(81, 90)
    assert below == pytest.approx([100 * (0.9 - low), 0.0, 0.0]) and above == pytest.approx([100 * (high - 0.9), 0, 0])
    from matplotlib.axes import Axes

    drawn: list[dict[str, Any]] = []
    original_bar = Axes.bar

    def recording_bar(self: Axes, *args: Any, **kwargs: Any) -> Any:
        drawn.append(kwargs)
        return original_bar(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "bar", recording_bar)
    plot_detection_rates(results, tmp_path / "rates.png")
    (rates,) = drawn
    attacks = results.attacks_of("ami")
    expected = error_bars([s.rate for s in attacks], [_wilson(s.flagged, s.eligible) if s.eligible else (math.nan,) * 2
                                                      for s in attacks])
    assert np.allclose(rates["yerr"], expected) and rates["yerr"][0][0] > 0 and rates["yerr"][1][0] > 0
    drawn.clear()
    plot_undetected(results, tmp_path / "undetected.png")
    top1, at5, _ = drawn  # one bar series per rule
    assert np.allclose(top1["yerr"], error_bars([s.undetected_rate for s in attacks],
                                                [_wilson(s.eligible - s.flagged, s.n) for s in attacks]))
    assert np.allclose(at5["yerr"], error_bars([s.undetected_at(0.05) for s in attacks],
                                               [_wilson(s.eligible - s.detected_at(0.05), s.n) for s in attacks]))


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def _centre(pixels: np.ndarray, row: int, column: int) -> tuple[int, ...]:
    left, top, right, bottom = sample_cell_box(row, column)
    return tuple(pixels[(top + bottom) // 2, (left + right) // 2])


def _near(pixels: np.ndarray, colour: str, tolerance: int = 40) -> bool:
    from matplotlib.colors import to_rgb

    target = np.array([round(255 * c) for c in to_rgb(colour)])
    return bool((np.abs(pixels - target).max(-1) <= tolerance).any())


def test_one_labelled_sample_figure_per_set(results: RunResults, tmp_path: Path) -> None:
    paths = save_sample_figures(results, tmp_path)
    assert list(paths) == ["samples/patch_first", "samples/cw_l2_next"]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["cw_l2_next.png", "patch_first.png"]
    for name, k in (("patch_first", 4), ("cw_l2_next", 3)):
        path = paths[f"samples/{name}"]
        assert path == tmp_path / "samples" / f"{name}.png" and path.stat().st_size < 2_000_000
        assert _png_size(path) == sample_figure_size(k, ["ami"])
        pixels = _pixels(path)
        for column in range(k):  # rows: original, adversarial, |difference| x 10; drawn one to one
            assert _centre(pixels, 0, column) == (100, 100, 100) and _centre(pixels, 1, column) == (105, 105, 105)
            assert _centre(pixels, 2, column) == (5 * DIFF_GAIN,) * 3
        left, _, right, bottom = sample_cell_box(2, 0)
        captions = pixels[bottom:]
        assert _near(captions[:, left:right], FLAG_COLOURS[True]) and not _near(captions[:, left:right], "tab:red")
        left, _, right, _ = sample_cell_box(2, 1)
        assert _near(captions[:, left:right], FLAG_COLOURS[False])  # column 1 is not flagged
        assert not _near(pixels[:sample_cell_box(0, 0)[1]], "tab:green")  # the title is black
    widths = [sample_figure_size(k, ["ami"])[0] for k in (1, 2, 3, 8)]
    assert widths[2] - widths[1] == widths[1] - widths[0] > THUMBNAIL and widths[3] == widths[0] + 7 * (
        widths[1] - widths[0])  # one column per sample, the height fixed
    assert len({sample_figure_size(k, ["ami"])[1] for k in (1, 2, 3, 8)}) == 1


def _rows_of(pixels: np.ndarray, colour: str, tolerance: int = 40) -> np.ndarray:
    """The row indices of ``pixels`` holding ``colour``."""
    from matplotlib.colors import to_rgb

    target = np.array([round(255 * c) for c in to_rgb(colour)])
    return np.flatnonzero((np.abs(pixels - target).max(-1) <= tolerance).any(-1))


def test_sample_figure_captions_each_detectors_verdict(two: RunResults, tmp_path: Path) -> None:
    (path,) = save_sample_figures(two, tmp_path).values()
    detectors = ["ami", "feature_squeezing"]
    one_line, two_lines = sample_figure_size(4, ["ami"]), sample_figure_size(4, detectors)
    assert _png_size(path) == two_lines and two_lines[0] == one_line[0]
    assert two_lines[1] - one_line[1] == 25  # two more caption lines of 7 pt: "feature_squeezing:" / "NOT flagged"
    assert sample_figure_size(4, ["ami", "x"])[1] - one_line[1] == 12  # a short name: one line more
    pixels = _pixels(path)
    bottom = sample_cell_box(2, 0)[3]
    for column, first, second in ((0, "tab:green", "tab:red"), (1, "tab:red", "tab:green")):
        left, _, right, _ = sample_cell_box(2, column)
        caption = pixels[bottom:, left:right]
        assert _rows_of(caption, first).max() < _rows_of(caption, second).min()  # ami's verdict, then the other
    assert _centre(pixels, 2, 3) == (5 * DIFF_GAIN,) * 3  # the cells where they were


def test_sample_figure_of_large_noisy_images_stays_small(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    original = torch.rand((8, 3, 224, 224), generator=generator) * 255  # incompressible: the worst case for PNG
    adversarial = (original + 8 * torch.randn(original.shape, generator=generator)).clamp(0, 255)
    batch = SampleBatch(original, adversarial, ["Nikolaj_Coster-Waldau"] * 8, ["Ed_Begley_Jr."] * 8,
                        {"ami": [False] * 8, "feature_squeezing": [True] * 8})
    path = save_sample_figure(batch, tmp_path / "big.png", "fgsm: " + "a long detector title " * 6)
    assert path.stat().st_size < 2_000_000 and _png_size(path) == sample_figure_size(8, list(batch.flagged))
    cells = thumbnail_rows(batch)
    assert cells.shape == (3, 8, 3, THUMBNAIL, THUMBNAIL)  # area-downsampled: the mean of each 2 x 2 block
    torch.testing.assert_close(cells[0], torch.nn.functional.avg_pool2d(original, 2) / 255)
    difference = ((adversarial - original).abs() * DIFF_GAIN).clamp(0, 255)
    torch.testing.assert_close(cells[2], torch.nn.functional.avg_pool2d(difference, 2) / 255)
    small = thumbnail_rows(_batch(2, size=32, value=100, step=30))  # smaller images are left as they are
    assert small.shape == (3, 2, 3, 32, 32) and (small[1] == 130 / 255).all()
    assert (small[2] == 1).all()  # |difference| x 10 = 300, clipped at 255


def test_sample_captions() -> None:
    assert sample_caption("Aaron_Tveit", "Cher", {"ami": True}) == (
        "true: Aaron_Tveit", "model: Cher", ["ami: flagged"])
    assert sample_caption("Cher", "Cher", {"ami": False, "feature_squeezing": True}) == (
        "true: Cher", "model: Cher (not fooled)", ["ami: NOT flagged", "feature_squeezing: flagged"])
    assert FLAG_COLOURS == {True: "tab:green", False: "tab:red"}
    caption = sample_figure_caption("cw_l2_next")
    assert caption.startswith("cw_l2_next: rows original / adversarial / |difference| x 10")
    assert "identity the model gives the adversarial image" in caption
    assert caption.endswith("and whether each detector flags it")
    assert [row.format(gain=DIFF_GAIN) for row in SAMPLE_ROWS] == ["original", "adversarial", "|difference| x 10"]


def test_sample_batches_are_checked(results: RunResults, tmp_path: Path) -> None:
    a, b = torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"original \(2, 3, 8, 8\) and adversarial \(2, 3, 16, 16\) pixels differ"):
        SampleBatch(a, b, ["x", "y"], ["y", "x"], {"ami": [True, False]})
    with pytest.raises(ValueError, match=r"2 samples but \{'flagged\[feature_squeezing\]': 1\} entries"):
        SampleBatch(a, a, ["x", "y"], ["y", "x"], {"ami": [True, False], "feature_squeezing": [True]})
    with pytest.raises(ValueError, match=r"2 samples but \{'true_identity': 1\} entries"):
        SampleBatch(a, a, ["x"], ["y", "x"], {"ami": [True, False]})
    with pytest.raises(TypeError, match="flagged must map each detector's name to its k flags, got list"):
        SampleBatch(a, a, ["x", "y"], ["y", "x"], [True, False])  # type: ignore[arg-type]  # the former form
    with pytest.raises(ValueError, match=r"must be \(k, 3, H, W\) RGB"):
        SampleBatch(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), ["x", "y"], ["y", "x"], {"ami": [True, False]})
    batch = _batch(2)
    batch.adversarial = b  # changed after construction: caught when drawn
    with pytest.raises(ValueError, match="differ in shape"):
        save_sample_figure(batch, tmp_path / "s.png", "t")
    results.samples = {"fgsm": (a, a)}  # the former (original, adversarial) pair
    with pytest.raises(TypeError, match=r"samples\['fgsm'\] must be a SampleBatch"):
        write_all(results, tmp_path)


class _FakeRun:
    """Records what ``log`` receives, as a wandb run would."""

    def __init__(self) -> None:
        self.logged: list[dict[str, Any]] = []

    def log(self, data: dict[str, Any]) -> None:
        self.logged.append(data)


def test_log_to_wandb_logs_every_metric_table_and_figure(results: RunResults, tmp_path: Path) -> None:
    import wandb

    files = write_all(results, tmp_path)  # no logger: files only
    assert set(files) == {"json", "md", "detection_rates", "roc", "undetected", "matrix", "samples/patch_first",
                          "samples/cw_l2_next"}
    assert (tmp_path / "undetected.png").is_file() and not (tmp_path / "wandb").exists()
    assert not (tmp_path / "samples.png").exists() and files["samples/cw_l2_next"].parent == tmp_path / "samples"
    run = _FakeRun()
    log_to_wandb(results, run, {k: v for k, v in files.items() if v.suffix == ".png"})
    (logged,) = run.logged
    for name in ("benign", "patch_first", "cw_l2_next", "fgsm"):
        assert {f"ami/{name}/rate", f"ami/{name}/flagged", f"ami/{name}/eligible"} <= set(logged)
    assert "ami/benign/auroc" not in logged and logged["ami/patch_first/auroc"] == 0.9321
    assert logged["extra/accuracy"] == 0.9575 and logged["extra/skipped/patch_first"] == 2
    assert isinstance(logged["results"], wandb.Table) and len(logged["results"].data) == 4
    figures = ("detection_rates", "roc", "undetected", "matrix", "samples/patch_first", "samples/cw_l2_next")
    assert isinstance(logged["matrix"], wandb.Table) and logged["matrix"].columns == matrix_rows(results)[0]
    assert all(isinstance(logged[f"figures/{k}"], wandb.Image) for k in figures)
    assert logged["figures/samples/cw_l2_next"]._caption == sample_figure_caption("cw_l2_next")
    assert logged["figures/roc"]._caption is None
    assert logged["ami/patch_first/undetected"] == pytest.approx(0.09) and "ami/benign/undetected" not in logged
    assert logged["ami/patch_first/detection_at_fpr_0.05"] == pytest.approx(71 / 90)
    assert logged["ami/cw_l2_next/undetected_at_fpr_0.1"] == pytest.approx(39 / 50)
    assert logged["ami/benign/threshold_at_fpr_0.05"] == 2.5
    assert logged["ami/benign/achieved_fpr_at_fpr_0.1"] == 34 / 343
    assert math.isnan(logged["ami/fgsm/detection_at_fpr_0.05"]) and logged["ami/fgsm/undetected_at_fpr_0.05"] == 0.0
    # every interval's bounds as <detector>/<set>/<figure>_ci_low / _ci_high
    assert (logged["ami/benign/rate_ci_low"], logged["ami/benign/rate_ci_high"]) == pytest.approx(
        _wilson(33, 343), rel=1e-12)
    assert (logged["ami/patch_first/auroc_ci_low"], logged["ami/patch_first/auroc_ci_high"]) == PATCH_AUROC_CI
    assert "ami/benign/auroc_ci_low" not in logged and "ami/fgsm/auroc_ci_low" not in logged
    assert (logged["ami/cw_l2_next/undetected_ci_low"], logged["ami/cw_l2_next/undetected_ci_high"]) == pytest.approx(
        _wilson(36, 50), rel=1e-12)
    assert (logged["ami/patch_first/detection_at_fpr_0.05_ci_low"],
            logged["ami/patch_first/detection_at_fpr_0.05_ci_high"]) == pytest.approx(_wilson(71, 90), rel=1e-12)
    assert (logged["ami/cw_l2_next/undetected_at_fpr_0.1_ci_low"],
            logged["ami/cw_l2_next/undetected_at_fpr_0.1_ci_high"]) == pytest.approx(_wilson(39, 50), rel=1e-12)
    assert math.isnan(logged["ami/fgsm/rate_ci_low"]) and "ami/benign/detection_at_fpr_0.05_ci_low" not in logged
    table = logged["results"]
    assert table.columns == wandb_table_rows(results)[0]
    assert table.columns[:6] == ["detector", "set", "metric", "n", "eligible", "flagged"]
    assert table.columns[6:] == ["rate", "rate_ci_low", "rate_ci_high", "auroc", "auroc_ci_low", "auroc_ci_high",
                                 "detection_at_fpr_0.05", "detection_at_fpr_0.05_ci_low",
                                 "detection_at_fpr_0.05_ci_high", "detection_at_fpr_0.1",
                                 "detection_at_fpr_0.1_ci_low", "detection_at_fpr_0.1_ci_high", "undetected",
                                 "undetected_ci_low", "undetected_ci_high", "undetected_at_fpr_0.05",
                                 "undetected_at_fpr_0.05_ci_low", "undetected_at_fpr_0.05_ci_high",
                                 "undetected_at_fpr_0.1", "undetected_at_fpr_0.1_ci_low",
                                 "undetected_at_fpr_0.1_ci_high"]
    rows = {row[1]: dict(zip(table.columns, row, strict=True)) for row in table.data}
    assert {row[0] for row in table.data} == {"ami"}
    patch = rows["patch_first"]
    assert [patch[c] for c in ("detection_at_fpr_0.05", "detection_at_fpr_0.1", "undetected", "undetected_at_fpr_0.05",
                               "undetected_at_fpr_0.1")] == [pytest.approx(71 / 90), pytest.approx(80 / 90),
                                                             pytest.approx(0.09), pytest.approx(0.19),
                                                             pytest.approx(0.1)]
    assert (patch["auroc_ci_low"], patch["auroc_ci_high"]) == PATCH_AUROC_CI
    assert [patch["undetected_at_fpr_0.05_ci_low"], patch["undetected_at_fpr_0.05_ci_high"]] == pytest.approx(
        list(_wilson(19, 100)), rel=1e-12)
    assert rows["benign"]["undetected"] is None and rows["benign"]["undetected_ci_low"] is None
    assert rows["benign"]["auroc_ci_low"] is None and rows["fgsm"]["rate_ci_high"] is None
    assert scalar_metrics(results)["ami/benign/rate"] == pytest.approx(33 / 343)


def test_log_to_wandb_needs_wandb_only_when_called(results: RunResults, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(ImportError, match="needs the wandb package"):
        log_to_wandb(results, _FakeRun(), {})


def _records(wandb_file: Path) -> list[Any]:
    """The protobuf records of an offline run's ``.wandb`` file.

    wandb 0.31 ships no Python reader (``wandb.sdk.internal.datastore`` is gone), so this reads the format its core
    writes: a 7-byte header (``:W&B``, magic, version), then LevelDB-log records in 32 KiB blocks, each with a
    7-byte header (crc32, little-endian length, type 1 full / 2 first / 3 middle / 4 last).
    """
    from wandb.proto import wandb_internal_pb2

    data, block = wandb_file.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, chunk, pos = [], b"", 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer: padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(chunk))
            chunk = b""
    return records


def test_write_all_logs_offline_to_a_wandb_logger(
    results: RunResults, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing written under ~
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
    logger = WandbLogger(offline=True, save_dir=tmp_path, project="test")
    try:
        write_all(results, tmp_path / "out", logger)
    finally:
        logger.experiment.finish()
        wandb.teardown()  # wandb's service may still hold the end of the .wandb file after finish(); this closes it
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (wandb_file,) = run_dir.glob("*.wandb")
    records = _records(wandb_file)
    kinds = [record.WhichOneof("record_type") for record in records]
    assert kinds[-1] == "exit" and "history" in kinds, kinds
    logged: dict[str, Any] = {}  # history items, nested again (a wandb.Table or Image is logged one field per item)
    for record in records:
        for item in record.history.item:
            *parents, leaf = [item.key] if item.key else item.nested_key
            node = logged
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = json.loads(item.value_json)
    assert logged["ami/benign/rate"] == pytest.approx(33 / 343) and logged["ami/patch_first/auroc"] == 0.9321
    assert logged["ami/cw_l2_next/eligible"] == 48 and logged["extra/accuracy"] == 0.9575
    assert logged["results"]["_type"] == "table-file" and logged["results"]["nrows"] == 4
    for name in ("patch_first", "cw_l2_next"):
        assert logged[f"figures/samples/{name}"]["_type"] == "image-file"
        assert logged[f"figures/samples/{name}"]["caption"] == sample_figure_caption(name)
    (table,) = (run_dir / "files" / "media" / "table").glob("results_*.table.json")
    content = json.loads(table.read_text())
    rows = {row[1]: dict(zip(content["columns"], row, strict=True)) for row in content["data"]}
    assert content["columns"][:2] == ["detector", "set"] and {row[0] for row in content["data"]} == {"ami"}
    assert [rows["benign"][c] for c in ("n", "eligible", "flagged", "rate", "auroc")] == [
        400, 343, 33, pytest.approx(33 / 343), None] and rows["fgsm"]["rate"] is None
    assert [rows["benign"]["rate_ci_low"], rows["benign"]["rate_ci_high"]] == pytest.approx(list(_wilson(33, 343)))
    assert [rows["patch_first"][c] for c in ("detection_at_fpr_0.05", "detection_at_fpr_0.1", "undetected",
                                             "undetected_at_fpr_0.05", "undetected_at_fpr_0.1")] == [
        pytest.approx(71 / 90), pytest.approx(80 / 90), pytest.approx(0.09), pytest.approx(0.19), pytest.approx(0.1)]
    assert (rows["patch_first"]["auroc_ci_low"], rows["patch_first"]["auroc_ci_high"]) == PATCH_AUROC_CI
    assert logged["ami/patch_first/undetected_at_fpr_0.05"] == pytest.approx(0.19)
    assert logged["ami/patch_first/auroc_ci_high"] == PATCH_AUROC_CI[1]
    assert len(list((run_dir / "files" / "media" / "images" / "figures").rglob("*.png"))) == 6
    assert logged["matrix"]["_type"] == "table-file"
