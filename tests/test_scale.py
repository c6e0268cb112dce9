"""Sweeps, W&B offline logging, multi-process generation and evaluation (slow: each runs the real entry points)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# one intra-op thread per process: a CPU's attack files are byte-identical for the same thread count only
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONWARNINGS": "ignore",
       "OMP_NUM_THREADS": "1"}


def _command(command: str, *overrides: str) -> list[str]:
    # the installed console script: Lightning's DDP launcher re-runs sys.argv for the other ranks
    return [str(Path(sys.executable).parent / command), *overrides]


def _cli(command: str, *overrides: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(_command(command, *overrides), cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
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


# ---- distributed generation ------------------------------------------------------------------------------------------
GENERATE = ("data.batch_size=2", "logger=none", "attacks.cw_l2_next.params.binary_search_steps=1")


def _sets(cache: Path) -> dict[str, Path]:
    """The attack set folders under a cache, by set name."""
    return {folder.name: folder for folder in cache.glob("attacks/*/*") if folder.is_dir()}


def _rows(folder: Path) -> dict[str, dict]:
    """The merged manifest's rows by file, without the wall time."""
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    return {row["file"]: {k: v for k, v in row.items() if k != "seconds"} for row in rows}


@pytest.mark.slow
def test_ddp_sim_generation_equals_single_process(tmp_path: Path) -> None:
    """ami-attack on 2 gloo processes writes the same files, byte for byte, and the same rows as on one; each face
    once, the shard manifests merged; attack_stage.json counts the processes."""
    runs = {}
    for trainer in ("cpu", "ddp_sim"):
        _cli("ami-attack", *GENERATE, "data.attack_faces=6", "attack=[fgsm,cw_l2_next]",
             "attacks.cw_l2_next.params.steps=5", f"trainer={trainer}",
             f"paths.log_dir={tmp_path / trainer}", f"paths.cache_dir={tmp_path / trainer / 'cache'}", cwd=tmp_path)
        runs[trainer] = _sets(tmp_path / trainer / "cache")
        (stage,) = (tmp_path / trainer).glob("attack/*/attack_stage.json")
        timing = json.loads(stage.read_text())
        assert timing["processes"] == (1 if trainer == "cpu" else 2)
        assert sorted(timing["sets"]) == ["cw_l2_next", "fgsm"]
    assert sorted(runs["cpu"]) == sorted(runs["ddp_sim"]) == ["cw_l2_next", "fgsm"]
    for name, one in runs["cpu"].items():
        two = runs["ddp_sim"][name]
        files = sorted(p.name for p in one.glob("*.npy"))
        assert len(files) == 6 and files == sorted(p.name for p in two.glob("*.npy"))
        assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files), name
        assert _rows(one) == _rows(two) and sorted(_rows(two)) == files
        assert not list(two.glob("manifest.rank*"))


def _rank_process(parent: int, rank: int) -> int | None:
    """The pid of the child of ``parent`` that Lightning's launcher started as local rank ``rank``, if any."""
    for task in Path(f"/proc/{parent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"LOCAL_RANK={rank}".encode() in environ:
                return int(pid)
    return None


def _logged(folder: Path) -> dict[str, tuple[bytes, int]]:
    """The files of a set folder logged in any of its manifests, with their bytes and modification time."""
    names = {json.loads(line)["file"] for manifest in folder.glob("manifest*.jsonl")
             for line in manifest.read_text().splitlines() if line.endswith("}")}
    return {name: ((folder / name).read_bytes(), (folder / name).stat().st_mtime_ns)
            for name in names if (folder / name).is_file()}


@pytest.mark.slow
def test_kill_of_one_rank_then_rerun_completes_exactly_the_rest(tmp_path: Path) -> None:
    """Rank 1 of a 2-process ami-attack is killed once it has written a C&W file; the rerun (one process) attacks
    exactly the faces not yet logged: the earlier files are left as they were, every face is there once."""
    cache = tmp_path / "cache"
    # 8 faces in batches of 2: rank 1 takes batches 1 and 3, and is killed after its first
    overrides = (*GENERATE, "data.attack_faces=8", "attack=[cw_l2_next]", "attacks.cw_l2_next.params.steps=60",
                 f"paths.cache_dir={cache}")
    process = subprocess.Popen(_command("ami-attack", *overrides, "trainer=ddp_sim", f"paths.log_dir={tmp_path}"),
                               cwd=tmp_path, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline, killed = time.monotonic() + 300, None
        while killed is None:
            assert process.poll() is None and time.monotonic() < deadline, "no shard file before the deadline"
            folder = _sets(cache).get("cw_l2_next")
            shard = None if folder is None else folder / "manifest.rank1.jsonl"
            if shard is not None and shard.is_file() and shard.read_text().endswith("}\n"):
                if (rank1 := _rank_process(process.pid, 1)) is not None:
                    os.kill(rank1, signal.SIGKILL)
                    killed = rank1
            time.sleep(0.1)
        try:
            process.wait(timeout=120)  # rank 0 fails at the next collective call
        except subprocess.TimeoutExpired:
            pass
    finally:
        with contextlib.suppress(ProcessLookupError):  # the whole group may have exited already
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    before = _logged(folder)
    assert 0 < len(before) < 8 and not (folder / "manifest.jsonl").exists()
    _cli("ami-attack", *overrides, "trainer=cpu", f"paths.log_dir={tmp_path / 'rerun'}", cwd=tmp_path)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.glob("*.npy")}
    assert len(after) == 8 and sorted(_rows(folder)) == sorted(after)
    assert {name: after[name] for name in before} == before  # the logged faces were not attacked again
    assert not list(folder.glob("manifest.rank*")) and not list(folder.glob("*.tmp"))
