"""The reporting of one evaluation run: tables, results files, plots, sample grid and W&B (offline) logging."""

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

from ami_lightning.reporting import (
    DIFF_GAIN,
    RunResults,
    SetResult,
    log_to_wandb,
    plot_detection_rates,
    plot_roc,
    plot_undetected,
    print_results,
    read_results,
    results_table,
    save_sample_grid,
    scalar_metrics,
    write_all,
    write_results,
)
from ami_lightning.thresholds import OperatingPoint

H = W = 32


def _points(detected: tuple[int, int]) -> list[OperatingPoint]:
    """Operating points at 5 % and 10 % benign FPR (thresholds 2.5 and 1.75, 17 and 34 of 343 benign flagged)."""
    return [OperatingPoint(0.05, 2.5, 17 / 343, detected[0]), OperatingPoint(0.1, 1.75, 34 / 343, detected[1])]


@pytest.fixture
def results() -> RunResults:
    """Benign 33/343 flagged (9.62 %), two attack sets with ROC points and one with nothing eligible; operating points
    at 5 % and 10 % benign FPR."""
    original = torch.full((4, 3, H, W), 100.0)
    adversarial = original + 5.0  # |difference| x 10 = 50
    return RunResults(
        sets=[
            SetResult("benign", False, n=400, eligible=343, flagged=33, operating_points=_points((17, 34))),
            SetResult("patch_first", True, n=100, eligible=90, flagged=81, auroc=0.9321,
                      roc_fpr=[0.0, 0.05, 0.2, 1.0], roc_tpr=[0.0, 0.7, 0.95, 1.0], operating_points=_points((71, 80))),
            SetResult("cw_l2_next", True, n=50, eligible=48, flagged=12, auroc=0.6125,
                      roc_fpr=[0.0, 0.1, 0.5, 1.0], roc_tpr=[0.0, 0.2, 0.7, 1.0], operating_points=_points((5, 9))),
            SetResult("fgsm", True, n=20, eligible=0, flagged=0, operating_points=_points((0, 0))),
        ],
        weaken=60.0,
        strengthen=(2.15, 50.0),
        model="dlib_resnet",
        extra={"accuracy": 0.9575, "skipped": {"benign": 0, "patch_first": 2}},
        samples={"patch_first": (original, adversarial), "cw_l2_next": (original[:3], adversarial[:3])},
    )


def test_rates_and_their_text(results: RunResults) -> None:
    benign, patch, _, fgsm = results.sets
    assert benign.rate == pytest.approx(33 / 343) and benign.metric == "FPR"
    assert benign.rate_text() == "9.62 % (33/343)" and benign.auroc_text() == "-"
    assert patch.rate_text() == "90.00 % (81/90)" and patch.metric == "detection"
    assert math.isnan(fgsm.rate) and fgsm.rate_text() == "n/a (0/0)"
    assert results.benign is benign and [s.name for s in results.attacks] == ["patch_first", "cw_l2_next", "fgsm"]


def test_operating_point_rates_and_undetected(results: RunResults) -> None:
    benign, patch, cw, fgsm = results.sets
    assert results.fpr_targets == [0.05, 0.1]
    assert patch.detection_at(0.05) == pytest.approx(71 / 90) and patch.detection_at_text(0.05) == "78.89 % (71/90)"
    assert patch.undetected_rate == pytest.approx(0.09) and patch.undetected_text() == "9.00 % (9/100)"
    assert patch.undetected_at(0.05) == pytest.approx(0.19) and patch.undetected_at(0.1) == pytest.approx(0.10)
    assert cw.undetected_rate == pytest.approx(36 / 50) and cw.undetected_at(0.1) == pytest.approx(39 / 50)
    assert benign.detection_at(0.05) == pytest.approx(17 / 343) and benign.detection_at_text(0.1) == "9.91 % (34/343)"
    assert math.isnan(benign.undetected_rate) and benign.undetected_text() == "-"
    assert fgsm.undetected_rate == 0.0 and fgsm.undetected_text() == "0.00 % (0/20)"
    assert math.isnan(fgsm.detection_at(0.05)) and fgsm.detection_at_text(0.05) == "n/a (0/0)"
    assert patch.point(0.2) is None and math.isnan(patch.detection_at(0.2)) and patch.detection_at_text(0.2) == "-"
    no_threshold = SetResult("x", True, n=10, eligible=4, flagged=1,
                             operating_points=[OperatingPoint(0.05, math.nan, math.nan, None)])
    assert math.isnan(no_threshold.undetected_at(0.05)) and no_threshold.detection_at_text(0.05) == "-"


def test_rich_table_has_counts_next_to_every_rate(results: RunResults) -> None:
    table = results_table(results)
    assert [c.header for c in table.columns] == ["set", "metric", "n", "eligible", "flagged", "rate", "AUROC",
                                                 "det@5%FPR", "det@10%FPR", "undetected"]
    assert table.row_count == 4
    console = Console(record=True, width=220, file=io.StringIO())
    print_results(results, console)
    text = console.export_text()
    for expected in ("9.62 % (33/343)", "90.00 % (81/90)", "25.00 % (12/48)", "n/a (0/0)", "0.932", "strengthen",
                     "78.89 % (71/90)", "88.89 % (80/90)", "4.96 % (17/343)", "9.00 % (9/100)", "72.00 % (36/50)"):
        assert expected in text
    targets = RunResults([SetResult("benign", False, 10, 10, 1, operating_points=[OperatingPoint(0.01, 3.0, 0.0, 0)])],
                         60.0, (2.15, 50.0), "m")
    assert [c.header for c in results_table(targets).columns][-2:] == ["det@1%FPR", "undetected"]


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
    assert (data["weaken"], data["strengthen"], data["model"]) == (60.0, [2.15, 50.0], "dlib_resnet")
    assert data["extra"]["skipped"] == {"benign": 0, "patch_first": 2}
    assert sets["patch_first"]["undetected"] == pytest.approx(0.09) and sets["benign"]["undetected"] is None
    assert sets["patch_first"]["operating_points"][0] == {
        "target_fpr": 0.05, "threshold": 2.5, "benign_fpr": pytest.approx(17 / 343), "detected": 71,
        "detection": pytest.approx(71 / 90), "undetected": pytest.approx(0.19)}
    fgsm_at_10 = sets["fgsm"]["operating_points"][1]
    assert fgsm_at_10["detection"] is None and fgsm_at_10["undetected"] == 0.0

    back = read_results(paths["json"])
    assert back.sets == results.sets and back.strengthen == results.strengthen and back.extra == results.extra
    assert back.sets[1].operating_points[1] == OperatingPoint(0.1, 1.75, 34 / 343, 80)


def test_old_results_json_reads_back_without_operating_points(results: RunResults, tmp_path: Path) -> None:
    path = write_results(results, tmp_path)["json"]
    data = json.loads(path.read_text())
    for s in data["sets"]:  # the format before operating points
        del s["operating_points"], s["undetected"]
    path.write_text(json.dumps(data))
    back = read_results(path)
    assert [s.operating_points for s in back.sets] == [[]] * 4 and back.fpr_targets == []
    assert [(s.name, s.n, s.eligible, s.flagged, s.auroc) for s in back.sets] == [
        (s.name, s.n, s.eligible, s.flagged, s.auroc) for s in results.sets]
    assert back.sets[1].undetected_rate == pytest.approx(0.09)
    assert [c.header for c in results_table(back).columns][-2:] == ["AUROC", "undetected"]
    metrics = scalar_metrics(back)
    assert metrics["patch_first/undetected"] == pytest.approx(0.09)
    assert not any("_at_fpr_" in key for key in metrics)
    assert _png_size(plot_undetected(back, tmp_path / "u.png"))[0] > 0


def test_missing_threshold_round_trips_as_nan(results: RunResults, tmp_path: Path) -> None:
    results.sets[2].operating_points = [OperatingPoint(0.05, math.nan, math.nan, None)]
    data = json.loads(write_results(results, tmp_path)["json"].read_text())
    assert data["sets"][2]["operating_points"] == [{"target_fpr": 0.05, "threshold": None, "benign_fpr": None,
                                                    "detected": None, "detection": None, "undetected": None}]
    (point,) = read_results(tmp_path / "results.json").sets[2].operating_points
    assert math.isnan(point.threshold) and math.isnan(point.benign_fpr) and point.detected is None


def test_json_is_safe_for_tensors_and_nan(results: RunResults, tmp_path: Path) -> None:
    results.extra = {"accuracy": torch.tensor(0.5), "per_class": torch.tensor([1.0, float("nan")]), "dir": tmp_path}
    results.sets[1].auroc = float("nan")
    data = json.loads(write_results(results, tmp_path)["json"].read_text())
    assert data["extra"] == {"accuracy": 0.5, "per_class": [1.0, None], "dir": str(tmp_path)}
    assert data["sets"][1]["auroc"] is None


def test_markdown_has_one_row_per_set_and_the_parameters(results: RunResults, tmp_path: Path) -> None:
    text = write_results(results, tmp_path)["md"].read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "9.62 %" in rows["benign"] and "(33/343)" in rows["benign"] and "FPR" in rows["benign"]
    assert "90.00 % (81/90)" in rows["patch_first"] and "0.932" in rows["patch_first"]
    assert "n/a (0/0)" in rows["fgsm"]
    assert sum(name in rows for name in ("benign", "patch_first", "cw_l2_next", "fgsm")) == 4
    assert "| det@5%FPR | det@10%FPR | undetected |" in rows["set"]
    assert rows["patch_first"].endswith("| 78.89 % (71/90) | 88.89 % (80/90) | 9.00 % (9/100) |")
    for parameter in ("| weaken | 60 |", "| strengthen (s0, s1) | (2.15, 50) |", "| accuracy | 0.9575 |"):
        assert parameter in text


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


def test_plots_are_valid_pngs(results: RunResults, tmp_path: Path) -> None:
    bars = plot_detection_rates(results, tmp_path / "rates.png")
    roc = plot_roc(results, tmp_path / "roc.png")
    width, height = _png_size(bars)
    assert 600 <= width <= 2000 and 400 <= height <= 1200
    width, height = _png_size(roc)
    assert 500 <= width <= 1200 and 500 <= height <= 1200
    benign_only = RunResults([results.sets[0]], 60.0, (2.15, 50.0), "m")  # no attack set: still a (blank) chart
    assert _png_size(plot_detection_rates(benign_only, tmp_path / "b.png"))[0] > 0
    assert _png_size(plot_roc(benign_only, tmp_path / "r.png"))[0] > 0
    assert _png_size(plot_undetected(benign_only, tmp_path / "u.png"))[0] > 0


def test_undetected_plot_has_a_bar_per_rule(results: RunResults, tmp_path: Path) -> None:
    path = plot_undetected(results, tmp_path / "undetected.png")
    assert _png_size(path) == (930, 540)  # (0.45 x 3 rules + 0.4) x 3 sets + 2.5 = 7.75 by 4.5 inches at 120 dpi
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in np.unique(pixels, axis=0)}
    for rule in ((31, 119, 180), (255, 127, 14), (44, 160, 44)):  # tab:blue, tab:orange, tab:green
        assert rule in colours
    assert (214, 39, 40) not in colours  # tab:red: no fourth rule


def test_sample_grid_has_three_rows_per_set(results: RunResults, tmp_path: Path) -> None:
    path = save_sample_grid(results.samples, tmp_path / "grid.png")
    assert _png_size(path) == (4 * (W + 2) + 2, 2 * 3 * (H + 2) + 2)
    with Image.open(path) as image:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy())

    def cell(row: int, column: int) -> torch.Tensor:
        top, left = 2 + row * (H + 2), 2 + column * (W + 2)
        return pixels[top:top + H, left:left + W]

    assert (cell(0, 0) == 100).all() and (cell(1, 0) == 105).all()  # original, adversarial
    assert (cell(2, 0) == 5 * DIFF_GAIN).all()  # |difference| amplified
    assert (cell(3, 3) == 255).all() and (cell(5, 2) == 50).all()  # cw_l2_next has 3 samples: the 4th cell is blank


def test_sample_grid_rejects_mismatched_sizes(tmp_path: Path) -> None:
    a, b = torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError, match="one size"):
        save_sample_grid({"x": (a, a), "y": (b, b)}, tmp_path / "g.png")
    with pytest.raises(ValueError, match="no sample"):
        save_sample_grid({}, tmp_path / "g.png")


class _FakeRun:
    """Records what ``log`` receives, as a wandb run would."""

    def __init__(self) -> None:
        self.logged: list[dict[str, Any]] = []

    def log(self, data: dict[str, Any]) -> None:
        self.logged.append(data)


def test_log_to_wandb_logs_every_metric_table_and_figure(results: RunResults, tmp_path: Path) -> None:
    import wandb

    files = write_all(results, tmp_path)  # no logger: files only
    assert set(files) == {"json", "md", "detection_rates", "roc", "undetected", "samples"}
    assert (tmp_path / "undetected.png").is_file() and not (tmp_path / "wandb").exists()
    run = _FakeRun()
    log_to_wandb(results, run, {k: v for k, v in files.items() if v.suffix == ".png"})
    (logged,) = run.logged
    for name in ("benign", "patch_first", "cw_l2_next", "fgsm"):
        assert {f"{name}/rate", f"{name}/flagged", f"{name}/eligible"} <= set(logged)
    assert "benign/auroc" not in logged and logged["patch_first/auroc"] == 0.9321
    assert logged["extra/accuracy"] == 0.9575 and logged["extra/skipped/patch_first"] == 2
    assert isinstance(logged["results"], wandb.Table) and len(logged["results"].data) == 4
    figures = ("detection_rates", "roc", "undetected", "samples")
    assert all(isinstance(logged[f"figures/{k}"], wandb.Image) for k in figures)
    assert logged["patch_first/undetected"] == pytest.approx(0.09) and "benign/undetected" not in logged
    assert logged["patch_first/detection_at_fpr_0.05"] == pytest.approx(71 / 90)
    assert logged["cw_l2_next/undetected_at_fpr_0.1"] == pytest.approx(39 / 50)
    assert logged["benign/threshold_at_fpr_0.05"] == 2.5 and logged["benign/achieved_fpr_at_fpr_0.1"] == 34 / 343
    assert math.isnan(logged["fgsm/detection_at_fpr_0.05"]) and logged["fgsm/undetected_at_fpr_0.05"] == 0.0
    table = logged["results"]
    assert table.columns[7:] == ["detection_at_fpr_0.05", "detection_at_fpr_0.1", "undetected",
                                 "undetected_at_fpr_0.05", "undetected_at_fpr_0.1"]
    patch_row = table.data[1]
    assert patch_row[7:] == [pytest.approx(71 / 90), pytest.approx(80 / 90), pytest.approx(0.09),
                             pytest.approx(0.19), pytest.approx(0.1)]
    assert table.data[0][9] is None  # the benign set has no undetected rate
    assert scalar_metrics(results)["benign/rate"] == pytest.approx(33 / 343)


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
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (wandb_file,) = run_dir.glob("*.wandb")
    logged: dict[str, Any] = {}  # history items, nested again (a wandb.Table or Image is logged one field per item)
    for record in _records(wandb_file):
        for item in record.history.item:
            *parents, leaf = [item.key] if item.key else item.nested_key
            node = logged
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = json.loads(item.value_json)
    assert logged["benign/rate"] == pytest.approx(33 / 343) and logged["patch_first/auroc"] == 0.9321
    assert logged["cw_l2_next/eligible"] == 48 and logged["extra/accuracy"] == 0.9575
    assert logged["results"]["_type"] == "table-file" and logged["results"]["nrows"] == 4
    assert logged["figures/samples"]["_type"] == "image-file"
    (table,) = (run_dir / "files" / "media" / "table").glob("results_*.table.json")
    rows = {row[0]: row for row in json.loads(table.read_text())["data"]}
    assert rows["benign"][2:7] == [400, 343, 33, pytest.approx(33 / 343), None] and rows["fgsm"][5] is None
    assert rows["patch_first"][7:] == [pytest.approx(71 / 90), pytest.approx(80 / 90), pytest.approx(0.09),
                                       pytest.approx(0.19), pytest.approx(0.1)]
    assert logged["patch_first/undetected_at_fpr_0.05"] == pytest.approx(0.19)
    assert len(list((run_dir / "files" / "media" / "images" / "figures").glob("*.png"))) == 4
