"""Sweeps, W&B offline logging and multi-process evaluation (slow: each runs the real entry points)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cli(command: str, *overrides: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONWARNINGS": "ignore"}
    # the installed console script: Lightning's DDP launcher re-runs sys.argv for the other ranks
    args = [str(Path(sys.executable).parent / command), *overrides]
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


SMALL = ("data.benign.limit=10", "data.attack_faces=2", "attack=[fgsm]", "trainer.enable_progress_bar=false")


@pytest.mark.slow
def test_ddp_sim_equals_single_process(tmp_path: Path) -> None:
    runs = {}
    for trainer in ("cpu", "ddp_sim"):
        _cli("ami-eval", *SMALL, f"trainer={trainer}", "logger=none", f"paths.log_dir={tmp_path / trainer}",
             f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
        (results,) = (tmp_path / trainer).glob("eval/*/results.json")
        runs[trainer] = json.loads(results.read_text())["sets"]
    counts = ("name", "n", "eligible", "flagged", "rate")
    assert [{k: s[k] for k in counts} for s in runs["cpu"]] == [{k: s[k] for k in counts} for s in runs["ddp_sim"]]
    assert runs["cpu"][1]["auroc"] == pytest.approx(runs["ddp_sim"][1]["auroc"], abs=1e-6)
    assert runs["cpu"][0]["n"] == 40


@pytest.mark.slow
def test_grid_multirun_and_wandb_offline(tmp_path: Path) -> None:
    _cli("ami-eval", "-m", *SMALL, "hparams_search=grid", "ami.weaken=60,1000", "ami.strengthen0=2.15",
         "ami.strengthen1=200", "logger=wandb", f"paths.log_dir={tmp_path}", cwd=tmp_path)
    jobs = sorted(tmp_path.glob("eval/multiruns/*/*/results.json"))
    assert len(jobs) == 2
    weakens = sorted(json.loads(p.read_text())["detectors"]["ami"]["params"]["weaken"] for p in jobs)
    assert weakens == [60.0, 1000.0]
    runs = sorted(tmp_path.glob("eval/multiruns/*/*/wandb/offline-run-*"))
    assert len(runs) == 2  # W&B offline writes no summary file; the logged table and images are there
    for run in runs:
        (table,) = run.glob("files/media/table/results_*.table.json")
        rows = json.loads(table.read_text())["data"]
        expected = [[d, name] for d in ("ami", "feature_squeezing") for name in ("benign", "fgsm", "worst_case")]
        assert [row[:2] for row in rows] == expected
        assert list(run.glob("run-*.wandb"))


@pytest.mark.slow
def test_optuna_calibration_sweep(tmp_path: Path) -> None:
    _cli("ami-eval", "-m", *SMALL, "attack=[]", "hparams_search=optuna", "hydra.sweeper.n_trials=3",
         "logger=none", f"paths.log_dir={tmp_path}", cwd=tmp_path)
    (best,) = tmp_path.glob("eval/multiruns/*/optimization_results.yaml")
    text = best.read_text()
    assert "best_params" in text and "ami.weaken" in text
    assert len(list(tmp_path.glob("eval/multiruns/*/*/results.json"))) == 3
