"""The sweep summary (``ami_lightning.reporting.sweeps``): reading fabricated sweep folders (one detector per job,
two detectors per job, files of the single-detector format), the tables, the Pareto fronts per detector, the plot,
the Hydra callback, and (slow) a real multirun of ``ami-eval``."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from ami_lightning.reporting.results import RunResults, SetResult, write_results
from ami_lightning.reporting.sweeps import (
    FILES,
    SweepSummary,
    collect_jobs,
    pareto_front,
    parse_overrides,
    plot_tradeoff,
    summary_csv,
    summary_markdown,
    write_summary,
)
from tests.conftest import compose_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COMMON = ["attack=[fgsm,bim]", "data.benign.limit=4"]
# job -> (weaken, benign (eligible, flagged), fgsm (n, eligible, flagged), bim (n, eligible, flagged))
JOBS = {
    0: (500, (100, 10), (10, 10, 8), (10, 5, 5)),  # FPR 10 %, detection 80 / 100 -> 90 %, undetected 20 / 0 -> 10 %
    1: (1000, (100, 5), (10, 10, 6), (10, 8, 4)),  # FPR 5 %, detection 60 / 50 -> 55 %, undetected 40 / 40 -> 40 %
    2: (2000, (100, 20), (10, 10, 7), (10, 10, 7)),  # FPR 20 %, 70 %, 30 %: dominated by job 0 on both fronts
}
FAILED_JOB = 10  # only its overrides (a crashed job); numbered 10 to check the numeric order


def _write_overrides(folder: Path, overrides: list[str]) -> None:
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides), encoding="utf-8")


def _sets(detector: str, benign: tuple[int, int], *attacks: tuple[str, tuple[int, int, int]]) -> list[SetResult]:
    """A detector's benign set (eligible, flagged; n = eligible + 3) and attack sets (n, eligible, flagged)."""
    sets = [SetResult(detector, "benign", adversarial=False, n=benign[0] + 3, eligible=benign[0], flagged=benign[1])]
    return sets + [SetResult(detector, name, adversarial=True, n=n, eligible=eligible, flagged=flagged, auroc=0.9)
                   for name, (n, eligible, flagged) in attacks]


def _ami(weaken: float) -> dict[str, Any]:
    return {"type": "ami", "params": {"weaken": weaken, "strengthen": [2.15, 200.0]}, "score": "nats",
            "rule": "top-1 disagreement", "gradient": "exact"}


def _results(weaken: float, benign: tuple[int, int], *attacks: tuple[str, tuple[int, int, int]]) -> RunResults:
    """One detector, AmI."""
    return RunResults(sets=_sets("ami", benign, *attacks), model="toy", detectors={"ami": _ami(weaken)})


def _sweep(root: Path) -> Path:
    """A sweep folder as Hydra's basic sweeper leaves it: three finished jobs and one failed."""
    sweep = root / "sweep"
    for job, (weaken, benign, fgsm, bim) in JOBS.items():
        write_results(_results(weaken, benign, ("fgsm", fgsm), ("bim", bim)), sweep / str(job))
        _write_overrides(sweep / str(job), [f"ami.weaken={weaken}", *COMMON])
    _write_overrides(sweep / str(FAILED_JOB), ["ami.weaken=4000", *COMMON])
    (sweep / "multirun.yaml").write_text("hydra: {}\n", encoding="utf-8")
    (sweep / "notes").mkdir()  # not a job folder: ignored
    return sweep


def _md_rows(text: str) -> list[list[str]]:
    """The cells of the Markdown table's rows (header first, the rule left out)."""
    lines = [line.strip() for line in text.splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line[1:-1])] for line in lines]
    return [row for row in rows if not all(re.fullmatch(r"-+:?", c) for c in row)]


# ---- reading --------------------------------------------------------------------------------------------------------
def test_collect_jobs_reads_every_job_and_keeps_the_failed_one(tmp_path: Path) -> None:
    jobs = collect_jobs(_sweep(tmp_path))
    assert [j.job for j in jobs] == [0, 1, 2, FAILED_JOB]
    assert [j.status for j in jobs] == ["ok", "ok", "ok", "failed"]
    assert [j.detector for j in jobs] == ["ami", "ami", "ami", ""]
    assert jobs[0].overrides == {"ami.weaken": "500", "attack": "[fgsm,bim]", "data.benign.limit": "4"}
    assert jobs[0].benign_fpr == pytest.approx(0.10)
    assert (jobs[0].benign_flagged, jobs[0].benign_eligible) == (10, 100)
    assert jobs[0].detection == pytest.approx({"fgsm": 0.8, "bim": 1.0})
    assert jobs[0].undetected == pytest.approx({"fgsm": 0.2, "bim": 0.0})
    assert jobs[0].mean_detection == pytest.approx(0.9)
    assert jobs[0].mean_undetected == pytest.approx(0.1)
    assert jobs[1].mean_detection == pytest.approx(0.55)
    assert jobs[1].mean_undetected == pytest.approx(0.4)
    failed = jobs[3]
    assert failed.overrides["ami.weaken"] == "4000"
    assert failed.reason == "no results.json"
    assert math.isnan(failed.benign_fpr) and math.isnan(failed.mean_detection) and not failed.detection


def test_collect_jobs_tolerates_extra_missing_and_broken_files(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # the single-detector format (AmI's parameters at the top, sets without "detector"), extra keys and no derived
    # rates: read as the detector ami, the rates from the counts
    sets = [{"name": "benign", "adversarial": False, "n": 8, "eligible": 8, "flagged": 2, "rate_ci": [0.1, 0.5]},
            {"name": "fgsm", "adversarial": True, "n": 4, "eligible": 2, "flagged": 1, "auroc_ci": None,
             "undetected_ci": [0, 1]},
            {"name": "none_eligible", "adversarial": True, "n": 4, "eligible": 0, "flagged": 0, "rate": None,
             "undetected": 0.0}]
    old = {"model": "toy", "weaken": 60.0, "strengthen": [2.15, 50.0], "sets": sets, "extra": {}, "new_key": 1}
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "results.json").write_text(json.dumps(old), encoding="utf-8")
    (sweep / "1").mkdir()
    (sweep / "1" / "results.json").write_text("{not json", encoding="utf-8")
    _write_overrides(sweep / "1", ["ami.weaken=7"])
    (sweep / "2" / ".hydra").mkdir(parents=True)
    (sweep / "2" / ".hydra" / "overrides.yaml").write_text("a: [unclosed", encoding="utf-8")
    write_results(_results(60, (10, 1), ("fgsm", (4, 4, 4))), sweep / "2")
    jobs = collect_jobs(sweep)
    assert [j.status for j in jobs] == ["ok", "failed", "ok"]
    assert [j.detector for j in jobs] == ["ami", "", "ami"]
    assert jobs[0].overrides == {} and (jobs[0].benign_flagged, jobs[0].benign_eligible) == (2, 8)
    assert jobs[0].benign_fpr == pytest.approx(0.25)
    assert jobs[0].detection["fgsm"] == pytest.approx(0.5) and jobs[0].undetected["fgsm"] == pytest.approx(0.25)
    assert math.isnan(jobs[0].detection["none_eligible"])
    assert jobs[0].mean_detection == pytest.approx(0.5)  # the undefined rate is left out of the mean
    assert jobs[0].mean_undetected == pytest.approx(0.125)
    assert jobs[1].reason.startswith("unreadable results.json") and jobs[1].overrides == {"ami.weaken": "7"}
    assert jobs[2].benign_fpr == pytest.approx(0.1) and "unreadable .hydra/overrides.yaml" in jobs[2].reason
    assert collect_jobs(tmp_path / "missing") == []


def test_parse_overrides_splits_at_the_first_equals_sign() -> None:
    assert parse_overrides(["a.b=1", "+c=x=y", "~d", "e=[1,2]"]) == {"a.b": "1", "+c": "x=y", "~d": "", "e": "[1,2]"}


# ---- Pareto fronts --------------------------------------------------------------------------------------------------
def _dominated_brute(points: list[tuple[float, float]], senses: tuple[str, str]) -> list[bool]:
    """O(n^2) reference: on the front when finite and no other finite point is at least as good on both axes and
    strictly better on one."""
    sign = [1 if s == "min" else -1 for s in senses]

    def better_or_equal(a: float, b: float, axis: int) -> bool:
        return sign[axis] * a <= sign[axis] * b

    finite = [math.isfinite(x) and math.isfinite(y) for x, y in points]
    front = []
    for i, p in enumerate(points):
        dominated = any(
            finite[j] and j != i and better_or_equal(q[0], p[0], 0) and better_or_equal(q[1], p[1], 1)
            and (q[0] != p[0] or q[1] != p[1])
            for j, q in enumerate(points)
        )
        front.append(finite[i] and not dominated)
    return front


@pytest.mark.parametrize("senses", [("min", "max"), ("min", "min"), ("max", "max"), ("max", "min")])
def test_pareto_front_matches_brute_force_on_random_points(senses: tuple[str, str]) -> None:
    rng = random.Random(0)
    for trial in range(300):
        n = rng.randint(0, 25)
        if trial % 2:  # few distinct values: many ties on one axis or both
            points = [(float(rng.randint(0, 4)), float(rng.randint(0, 4))) for _ in range(n)]
        else:
            points = [(rng.random(), rng.random()) for _ in range(n)]
        for k in range(n):
            if rng.random() < 0.05:
                points[k] = (math.nan, points[k][1]) if rng.random() < 0.5 else (points[k][0], math.inf)
        assert pareto_front(points, senses) == _dominated_brute(points, senses), (senses, points)


def test_pareto_front_ties() -> None:
    # min x, max y: duplicates of a front point are all on it; same x -> only the best y; same y -> only the least x
    points = [(0.1, 0.9), (0.1, 0.9), (0.1, 0.5), (0.2, 0.9), (0.05, 0.3), (0.05, 0.3), (0.3, 0.95), (math.nan, 1.0)]
    assert pareto_front(points) == [True, True, False, False, True, True, True, False]
    assert pareto_front(points, ("min", "min")) == [False, False, False, False, True, True, False, False]
    assert pareto_front([]) == []
    with pytest.raises(ValueError, match="senses"):
        pareto_front([(0.0, 0.0)], ("min", "up"))  # type: ignore[arg-type]


# ---- tables and plot ------------------------------------------------------------------------------------------------
def test_summary_csv_rows_numbers_and_fronts(tmp_path: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(summary_csv(collect_jobs(_sweep(tmp_path))))))
    assert [r["job"] for r in rows] == ["0", "1", "2", str(FAILED_JOB)]
    assert [r["detector"] for r in rows] == ["ami", "ami", "ami", ""]
    assert [r["ami.weaken"] for r in rows] == ["500", "1000", "2000", "4000"]
    assert {r["attack"] for r in rows} == {"[fgsm,bim]"}
    assert [float(r["benign_fpr"]) for r in rows[:3]] == pytest.approx([0.10, 0.05, 0.20])
    assert [float(r["mean_detection"]) for r in rows[:3]] == pytest.approx([0.9, 0.55, 0.7])
    assert [float(r["mean_undetected"]) for r in rows[:3]] == pytest.approx([0.1, 0.4, 0.3])
    assert [float(r["detection:fgsm"]) for r in rows[:3]] == pytest.approx([0.8, 0.6, 0.7])
    assert [float(r["undetected:bim"]) for r in rows[:3]] == pytest.approx([0.0, 0.4, 0.3])
    assert [(r["benign_flagged"], r["benign_eligible"]) for r in rows] == [("10", "100"), ("5", "100"),
                                                                           ("20", "100"), ("", "")]
    assert [r["front_detection"] for r in rows] == ["true", "true", "false", "false"]
    assert [r["front_undetected"] for r in rows] == ["true", "true", "false", "false"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed"]
    failed = rows[3]
    assert failed["reason"] == "no results.json"
    assert failed["benign_fpr"] == failed["mean_detection"] == failed["detection:fgsm"] == ""


def test_summary_markdown_rows(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    text = summary_markdown(collect_jobs(sweep), sweep)
    assert "4 jobs, 3 ok, 1 failed." in text
    assert "Overrides of every job: `attack=[fgsm,bim]`, `data.benign.limit=4`" in text
    header, *rows = _md_rows(text)
    assert header == ["job", "detector", "ami.weaken", "benign FPR", "mean detection", "mean undetected",
                      "front (detection)", "front (undetected)", "fgsm detection", "bim detection", "status"]
    assert rows[0] == ["0", "ami", "500", "10.00 % (10/100)", "90.00 %", "10.00 %", "yes", "yes", "80.00 %",
                       "100.00 %", "ok"]
    assert rows[1][:6] == ["1", "ami", "1000", "5.00 % (5/100)", "55.00 %", "40.00 %"]
    assert rows[2][6:8] == ["", ""]
    assert rows[3] == [str(FAILED_JOB), "-", "4000", "-", "-", "-", "", "", "-", "-", "failed: no results.json"]
    assert "lowest benign FPR and highest mean detection: ami: jobs 0, 1." in text
    assert "lowest benign FPR and lowest mean undetected success: ami: jobs 0, 1." in text


def test_plot_tradeoff_writes_a_png(tmp_path: Path) -> None:
    jobs = collect_jobs(_sweep(tmp_path))
    path = plot_tradeoff(jobs, tmp_path / "tradeoff.png", title="sweep")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (11 * 120, int(4.8 * 120))
    assert plot_tradeoff([], tmp_path / "empty.png").read_bytes()[:8] == PNG_MAGIC  # nothing to show: still a PNG
    assert not list(tmp_path.glob(".*.tmp"))


# job -> feature_squeezing's (benign (eligible, flagged), fgsm (n, eligible, flagged), bim (n, eligible, flagged)), in
# the same jobs as JOBS' AmI: on its own fronts every job is (FPR 2 / 8 / 1 %, mean detection 45 / 95 / 30 %, mean
# undetected 40 / 5 / 70 %), and its job 1 (8 %, 95 %) dominates AmI's job 0 (10 %, 90 %), which stays on AmI's front
FS_JOBS = {
    0: ((100, 2), (10, 10, 5), (10, 5, 2)),
    1: ((100, 8), (10, 10, 9), (10, 8, 8)),
    2: ((100, 1), (10, 10, 3), (10, 10, 3)),
}


def _two_detector_sweep(root: Path) -> Path:
    """A sweep of three jobs each evaluating AmI and Feature Squeezing, and one failed job."""
    sweep = root / "sweep"
    for job, (weaken, benign, fgsm, bim) in JOBS.items():
        fs_benign, fs_fgsm, fs_bim = FS_JOBS[job]
        sets = [*_sets("ami", benign, ("fgsm", fgsm), ("bim", bim)),
                *_sets("feature_squeezing", fs_benign, ("fgsm", fs_fgsm), ("bim", fs_bim))]
        detectors = {"ami": _ami(weaken), "feature_squeezing": {"type": "feature_squeezing", "params": {}}}
        write_results(RunResults(sets=sets, model="toy", detectors=detectors), sweep / str(job))
        _write_overrides(sweep / str(job), [f"ami.weaken={weaken}", *COMMON])
    _write_overrides(sweep / str(FAILED_JOB), ["ami.weaken=4000", *COMMON])
    return sweep


def test_two_detectors_give_a_row_per_job_and_detector_and_fronts_per_detector(tmp_path: Path) -> None:
    sweep = _two_detector_sweep(tmp_path)
    jobs = collect_jobs(sweep)
    assert [(j.job, j.detector) for j in jobs] == [(0, "ami"), (0, "feature_squeezing"), (1, "ami"),
                                                   (1, "feature_squeezing"), (2, "ami"), (2, "feature_squeezing"),
                                                   (FAILED_JOB, "")]
    fs = [j for j in jobs if j.detector == "feature_squeezing"]
    assert [j.benign_fpr for j in fs] == pytest.approx([0.02, 0.08, 0.01])
    assert [(j.benign_flagged, j.benign_eligible) for j in fs] == [(2, 100), (8, 100), (1, 100)]
    assert [j.mean_detection for j in fs] == pytest.approx([0.45, 0.95, 0.30])
    assert [j.mean_undetected for j in fs] == pytest.approx([0.40, 0.05, 0.70])
    assert fs[0].detection == pytest.approx({"fgsm": 0.5, "bim": 0.4})
    assert jobs[0].detection == pytest.approx({"fgsm": 0.8, "bim": 1.0})  # AmI's figures are its own

    rows = list(csv.DictReader(io.StringIO(summary_csv(jobs))))
    assert [(r["job"], r["detector"]) for r in rows] == [(str(j.job), j.detector) for j in jobs]
    assert [r["ami.weaken"] for r in rows] == ["500", "500", "1000", "1000", "2000", "2000", "4000"]
    assert [float(r["benign_fpr"]) for r in rows[:6]] == pytest.approx([0.10, 0.02, 0.05, 0.08, 0.20, 0.01])
    assert [float(r["detection:fgsm"]) for r in rows[:6]] == pytest.approx([0.8, 0.5, 0.6, 0.9, 0.7, 0.3])
    assert [r["front_detection"] for r in rows] == ["true", "true", "true", "true", "false", "true", "false"]
    assert [r["front_undetected"] for r in rows] == ["true", "true", "true", "true", "false", "true", "false"]

    text = summary_markdown(jobs, sweep)
    assert "4 jobs, 3 ok, 1 failed." in text  # a job counted once, whatever its detectors
    header, *table = _md_rows(text)
    assert header[:4] == ["job", "detector", "ami.weaken", "benign FPR"]
    assert table[1] == ["0", "feature_squeezing", "500", "2.00 % (2/100)", "45.00 %", "40.00 %", "yes", "yes",
                        "50.00 %", "40.00 %", "ok"]
    assert [row[1] for row in table] == ["ami", "feature_squeezing"] * 3 + ["-"]
    assert ("lowest benign FPR and highest mean detection: ami: jobs 0, 1; feature_squeezing: jobs 0, 1, 2."
            in text)
    assert ("lowest benign FPR and lowest mean undetected success: ami: jobs 0, 1; feature_squeezing: jobs 0, 1, 2."
            in text)

    written = write_summary(sweep)
    assert set(written) == {"md", "csv", "png"} and (sweep / "summary.md").read_text() == text
    with Image.open(written["png"]) as image:
        assert image.size == (11 * 120, int(4.8 * 120))
        pixels = {tuple(int(c) for c in p) for p in np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)}
    assert {(31, 119, 180), (255, 127, 14)} <= pixels  # tab:blue and tab:orange: a colour per detector


def test_write_summary_writes_all_three_files(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    written = write_summary(sweep)
    assert written == {key: sweep / name for key, name in FILES.items()}
    assert (sweep / "summary.md").read_text().startswith("# Sweep summary")
    assert len((sweep / "summary.csv").read_text().splitlines()) == 5
    assert (sweep / "tradeoff.png").read_bytes()[:8] == PNG_MAGIC


def test_write_summary_without_jobs_warns_and_writes_what_it_can(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="no job folder"):
        written = write_summary(tmp_path)
    assert set(written) == {"md", "csv", "png"}
    assert "0 jobs, 0 ok, 0 failed." in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "summary.csv").read_text() == "job,detector,benign_fpr,benign_flagged,benign_eligible," \
        "mean_detection,mean_undetected,front_detection,front_undetected,status,reason\n"


# ---- the Hydra callback ---------------------------------------------------------------------------------------------
def test_callback_is_registered_in_the_hydra_config() -> None:
    cfg = compose_config("eval")
    callback = instantiate(cfg.hydra.callbacks.sweep_summary)
    assert isinstance(callback, SweepSummary)
    assert callback.tasks == ["eval", "run"]


def test_callback_on_multirun_end_writes_and_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _sweep(tmp_path)
    SweepSummary(tasks=["eval"]).on_multirun_end(OmegaConf.create({"task_name": "eval",
                                                                    "hydra": {"sweep": {"dir": str(sweep)}}}))
    assert all((sweep / name).is_file() for name in FILES.values())
    out = capsys.readouterr().out
    assert str(sweep / "summary.md") in out and str(sweep / "tradeoff.png") in out


def test_callback_skips_other_tasks_and_run_mode(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    SweepSummary(tasks=["eval"]).on_multirun_end(OmegaConf.create({"task_name": "witness",
                                                                    "hydra": {"sweep": {"dir": str(sweep)}}}))
    job = {"task_name": "eval", "hydra": {"mode": RunMode.RUN, "runtime": {"output_dir": str(sweep / "2")},
                                          "sweep": {"dir": "elsewhere", "subdir": "2"}}}
    SweepSummary().on_job_end(OmegaConf.create(job), job_return=None)
    assert not any((sweep / name).exists() for name in FILES.values())


def test_callback_on_job_end_refreshes_the_summary(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    # the job's own output folder locates the sweep (hydra.sweep.dir may resolve differently in a job's process)
    job = {"task_name": "eval", "hydra": {"mode": RunMode.MULTIRUN, "runtime": {"output_dir": str(sweep / "2")},
                                          "sweep": {"dir": str(tmp_path / "elsewhere"), "subdir": "2"}}}
    SweepSummary(plot=False).on_job_end(OmegaConf.create(job), job_return=None)
    assert (sweep / "summary.csv").is_file() and (sweep / "summary.md").is_file()
    assert not (sweep / "tradeoff.png").exists() and not (tmp_path / "elsewhere").exists()


def test_callback_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(blocker / "sweep")}}}))
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {}}))  # no sweep folder at all
        SweepSummary().on_job_end(OmegaConf.create({}), job_return=None)
    messages = [str(w.message) for w in caught]
    assert sum("cannot write" in m for m in messages) == 3
    assert any("sweep summary failed" in m for m in messages)


# ---- a real multirun ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_multirun_writes_the_summary(tmp_path: Path) -> None:
    command = [str(Path(sys.executable).parent / "ami-eval"), "-m", "attack=[]", "ami.weaken=500,1000",
               "data.benign.limit=4", "logger=none", "trainer.enable_progress_bar=false",
               f"paths.log_dir={tmp_path / 'logs'}"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "eval" / "multiruns").iterdir()
    assert f"{sweep.absolute() / 'summary.md'}" in done.stdout
    text = (sweep / "summary.md").read_text()
    header, *rows = _md_rows(text)
    assert header[:4] == ["job", "detector", "ami.weaken", "benign FPR"]
    ami = [row for row in rows if row[1] == "ami"]
    assert [[row[0], row[2]] for row in ami] == [["0", "500"], ["1", "1000"]]
    assert all(row[-1] == "ok" and re.fullmatch(r"\d+\.\d\d % \(\d+/\d+\)", row[3]) for row in rows)
    table = list(csv.DictReader(io.StringIO((sweep / "summary.csv").read_text())))
    assert [r["ami.weaken"] for r in table if r["detector"] == "ami"] == ["500", "1000"]
    assert (sweep / "tradeoff.png").read_bytes()[:8] == PNG_MAGIC


# ---- column names, plot labels and fronts (issue 23, item 6) --------------------------------------------------------
def _grid_sweep(root: Path, jobs: dict[int, tuple[str, str, str, tuple[int, int]]]) -> Path:
    """Jobs of a grid over the detector group, ``ami.weaken`` and ``ami.strengthen0``: job -> (detector override,
    weaken, strengthen0, AmI's benign (eligible, flagged)); one attack set, fgsm (10, 10, 8)."""
    sweep = root / "grid"
    for job, (detector, weaken, strengthen0, benign) in jobs.items():
        write_results(_results(float(weaken), benign, ("fgsm", (10, 10, 8))), sweep / str(job))
        _write_overrides(sweep / str(job), [f"detector={detector}", f"ami.weaken={weaken}",
                                            f"ami.strengthen0={strengthen0}", "attack=[fgsm]"])
    return sweep


def test_an_override_named_like_a_column_gets_its_own_column(tmp_path: Path) -> None:
    sweep = _grid_sweep(tmp_path, {0: ("[ami]", "500", "2", (100, 10)), 1: ("[ami,feature_squeezing]", "500", "2",
                                                                           (100, 20))})
    jobs = collect_jobs(sweep)
    header, *rows = list(csv.reader(io.StringIO(summary_csv(jobs))))
    assert len(header) == len(set(header))
    assert header[:4] == ["job", "detector", "override:detector", "ami.weaken"]
    table = [dict(zip(header, row, strict=True)) for row in rows]
    assert [(r["detector"], r["override:detector"]) for r in table] == [("ami", "[ami]"),
                                                                         ("ami", "[ami,feature_squeezing]")]
    md_header, *md_rows = _md_rows(summary_markdown(jobs, sweep))
    assert len(md_header) == len(set(md_header)) and md_header[:3] == ["job", "detector", "override:detector"]
    assert [row[:3] for row in md_rows] == [["0", "ami", "[ami]"], ["1", "ami", "[ami,feature_squeezing]"]]


def _front_artists(ax: Any) -> list[Any]:
    return [line for line in ax.get_lines() if "Pareto front" in line.get_label()]


def test_tradeoff_points_are_labelled_by_their_swept_values(tmp_path: Path) -> None:
    from ami_lightning.reporting.sweeps import job_labels, tradeoff_figure

    sweep = _grid_sweep(tmp_path, {0: ("[ami]", "500", "2", (100, 10)), 1: ("[ami]", "1000", "2", (100, 5)),
                                   2: ("[ami]", "500", "3", (100, 5))})  # jobs 1 and 2 at the same point
    jobs = collect_jobs(sweep)
    assert job_labels(jobs) == {0: "weaken=500, strengthen0=2", 1: "weaken=1000, strengthen0=2",
                                2: "weaken=500, strengthen0=3"}
    fig = tradeoff_figure(jobs, title="grid")
    for ax in fig.axes:
        texts = sorted(t.get_text() for t in ax.texts)
        assert texts == ["weaken=1000, strengthen0=2\nweaken=500, strengthen0=3", "weaken=500, strengthen0=2"]
    assert fig.get_suptitle() == "grid: 3 jobs"
    # a key whose last part clashes with another's keeps its whole name; a sweep over nothing: job numbers
    jobs[0].overrides["other.weaken"] = "1"
    assert job_labels(jobs)[0] == "ami.weaken=500, strengthen0=2, other.weaken=1"
    assert job_labels(jobs[:1]) == {0: "job 0"}


def test_a_pareto_front_is_drawn_as_its_legend_shows_it(tmp_path: Path) -> None:
    from matplotlib.lines import Line2D

    from ami_lightning.reporting.sweeps import tradeoff_figure

    # jobs 0 and 2: FPR 5 %, detection 4 / 5, undetected 1 / 10; job 1: FPR 10 %, detection 9 / 10, undetected 1 / 10:
    # all three on the detection front (two distinct points), only jobs 0 and 2 (one point) on the undetected one
    sweep = _grid_sweep(tmp_path, {0: ("[ami]", "500", "2", (100, 5)), 1: ("[ami]", "1000", "2", (100, 10)),
                                   2: ("[ami]", "500", "3", (100, 5))})
    for job in (0, 2):
        write_results(_results(500.0, (100, 5), ("fgsm", (10, 5, 4))), sweep / str(job))
    write_results(_results(1000.0, (100, 10), ("fgsm", (10, 10, 9))), sweep / "1")
    for ax, (points, distinct) in zip(tradeoff_figure(collect_jobs(sweep)).axes, [(3, 2), (2, 1)], strict=True):
        (front,) = _front_artists(ax)
        assert len(front.get_xdata()) == points and len(set(front.get_xdata())) == distinct
        assert front.get_marker() == "o" and front.get_linestyle() == ("-" if distinct > 1 else "None")
        (handle,) = [h for h, label in zip(*ax.get_legend_handles_labels(), strict=True) if "Pareto front" in label]
        legend = next(h for h, t in zip(ax.get_legend().legend_handles, ax.get_legend().get_texts(), strict=True)
                      if "Pareto front" in t.get_text())
        assert handle is front and isinstance(legend, Line2D)
        assert (legend.get_linestyle(), legend.get_marker()) == (front.get_linestyle(), front.get_marker())


# ---- failed jobs (issue 23, item 10) --------------------------------------------------------------------------------
def _job_end(sweep: Path, job: int, overrides: list[str], error: Exception | None) -> None:
    """What Hydra calls after a job of a multirun: ``on_job_end`` with its JobReturn (failed with ``error``)."""
    from hydra.core.utils import JobReturn, JobStatus

    config = OmegaConf.create({"task_name": "eval", "hydra": {
        "mode": RunMode.MULTIRUN, "runtime": {"output_dir": str(sweep / str(job))}, "job": {"num": job},
        "sweep": {"dir": str(sweep), "subdir": str(job)}}})
    ret = JobReturn(overrides=overrides, status=JobStatus.FAILED if error else JobStatus.COMPLETED)
    ret.return_value = error
    SweepSummary(plot=False).on_job_end(config, job_return=ret)


def test_a_job_refused_by_validation_is_summarised_with_its_error(tmp_path: Path) -> None:
    from ami_lightning.pipeline.validation import ConfigError

    sweep = tmp_path / "sweep"
    # job 0 was refused: its folder removed by the task wrapper before Hydra's on_job_end
    _job_end(sweep, 0, ["ami.weaken=-1", *COMMON], ConfigError(["ami.weaken=-1: expected a finite number > 0"]))
    assert json.loads((sweep / "0" / "error.json").read_text())["error"]["type"] == "ConfigError"
    write_results(_results(500, (100, 10), ("fgsm", (10, 10, 8))), sweep / "1")
    _write_overrides(sweep / "1", ["ami.weaken=500", *COMMON])
    _job_end(sweep, 1, ["ami.weaken=500", *COMMON], None)
    text = (sweep / "summary.md").read_text()
    assert "2 jobs, 1 ok, 1 failed." in text
    _, *rows = _md_rows(text)
    assert rows[0][:3] == ["0", "-", "-1"]
    assert rows[0][-1] == ("failed: ConfigError: invalid configuration (1 problem): ami.weaken=-1: expected a finite "
                           "number > 0")
    table = list(csv.DictReader(io.StringIO((sweep / "summary.csv").read_text())))
    assert [(r["job"], r["ami.weaken"], r["status"]) for r in table] == [("0", "-1", "failed"), ("1", "500", "ok")]
    assert table[0]["reason"].startswith("ConfigError: invalid configuration (1 problem): ami.weaken=-1")


def test_a_job_that_fails_after_its_results_keeps_its_figures_and_counts_as_failed(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    _job_end(sweep, 2, ["ami.weaken=2000", *COMMON], RuntimeError("W&B could not start\nsecond line"))
    _job_end(sweep, FAILED_JOB, ["ami.weaken=4000", *COMMON], MemoryError("out of memory" + " x" * 300))
    jobs = collect_jobs(sweep)
    assert [(j.job, j.status, j.has_results) for j in jobs] == [(0, "ok", True), (1, "ok", True), (2, "failed", True),
                                                               (FAILED_JOB, "failed", False)]
    assert jobs[2].reason == "RuntimeError: W&B could not start second line"
    assert jobs[2].benign_fpr == pytest.approx(0.20)  # its results.json was written before it failed
    assert jobs[3].reason.startswith("MemoryError: out of memory x x") and len(jobs[3].reason) <= 400
    assert jobs[3].reason.endswith("...")
    assert "4 jobs, 2 ok, 2 failed." in summary_markdown(jobs)
    from ami_lightning.reporting.sweeps import tradeoff_figure

    assert tradeoff_figure(jobs).get_suptitle() == "4 jobs, 2 failed, 1 without results (not shown)"
    # a refused job whose folder is named otherwise (hydra.sweep.subdir) is found by the number in its record
    other = tmp_path / "other"
    _job_end(other, 3, ["ami.weaken=-1"], ValueError("refused"))
    (other / "3").rename(other / "weaken_-1")
    (job,) = collect_jobs(other)
    assert (job.job, job.overrides, job.reason) == (3, {"ami.weaken": "-1"}, "ValueError: refused")


@pytest.mark.slow
def test_real_multirun_lists_a_job_refused_by_validation(tmp_path: Path) -> None:
    command = [str(Path(sys.executable).parent / "ami-eval"), "-m", "attack=[]", "detector=[ami]", "ami.weaken=-1,500",
               "data.benign.limit=2", "logger=none", "trainer.enable_progress_bar=false",
               f"paths.log_dir={tmp_path / 'logs'}"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1 and "ami.weaken=-1" in done.stderr, done.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "eval" / "multiruns").iterdir()
    assert sorted(p.name for p in (sweep / "0").iterdir()) == ["error.json"]  # the refused job's record only
    text = (sweep / "summary.md").read_text()
    assert "2 jobs, 1 ok, 1 failed." in text
    _, *rows = _md_rows(text)
    assert [row[:3] for row in rows] == [["0", "-", "-1"], ["1", "ami", "500"]]
    assert rows[0][-1].startswith("failed: ConfigError: invalid configuration (1 problem): ami.weaken=-1")
    assert rows[1][-1] == "ok"
