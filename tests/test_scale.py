"""Sweeps, W&B offline logging, multi-process generation and evaluation (slow: each runs the real entry points)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ami_lightning.data.datamodule import PADDING, EvalDataModule
from ami_lightning.evaluation.module import DetectorEvalModule
from ami_lightning.pipeline.generation import batch_shares
from tests.test_bad_inputs import _untrained_detector
from tests.toy import PixelSet

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
GENERATE = ("logger=none", "attacks.cw_l2_next.params.binary_search_steps=1")


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
    once, the shard manifests merged; attack_stage.json counts the processes. 10 faces at the default batch size 32,
    fewer than batch size x processes: 8 batches of 2, 2, 1, ... (:func:`batch_shares`), 5 faces for each rank, so
    batches of several faces are shared too. Before: one batch of all faces, all of rank 0's; rank 1's empty
    DataLoader was refused and the run exited 1."""
    runs, logs = {}, {}
    for trainer in ("cpu", "ddp_sim"):
        done = _cli("ami-attack", *GENERATE, "data.attack_faces=10", "attack=[fgsm,cw_l2_next]",
                    "attacks.cw_l2_next.params.steps=5", f"trainer={trainer}",
                    f"paths.log_dir={tmp_path / trainer}", f"paths.cache_dir={tmp_path / trainer / 'cache'}",
                    cwd=tmp_path)
        runs[trainer], logs[trainer] = _sets(tmp_path / trainer / "cache"), done.stderr
        (stage,) = (tmp_path / trainer).glob("attack/*/attack_stage.json")
        timing = json.loads(stage.read_text())
        assert timing["processes"] == (1 if trainer == "cpu" else 2)
        assert sorted(timing["sets"]) == ["cw_l2_next", "fgsm"]
    assert sorted(runs["cpu"]) == sorted(runs["ddp_sim"]) == ["cw_l2_next", "fgsm"]
    for name, one in runs["cpu"].items():
        two = runs["ddp_sim"][name]
        for rank in (0, 1):  # each rank's bar: its 5 faces
            assert re.search(rf"{name} \[{rank}/2\]: 100%\|[^|\n\r]*\| 5/5 ", logs["ddp_sim"]), (name, rank)
        files = sorted(p.name for p in one.glob("*.npy"))
        assert len(files) == 10 and files == sorted(p.name for p in two.glob("*.npy"))
        assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files), name
        assert _rows(one) == _rows(two) and sorted(_rows(two)) == files
        assert sorted(row["batch_size"] for row in _rows(two).values()) == [1] * 6 + [2] * 4
        assert len((two / "manifest.jsonl").read_text().splitlines()) == 10 and not list(two.glob("manifest.rank*"))


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
    # 8 faces in 8 batches of 1 (batch_shares): rank 1 takes faces 1, 3, 5 and 7, and is killed after its first
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


# ---- fewer samples than processes ------------------------------------------------------------------------------------
def _reference_batches(count: int, batch_size: int, world_size: int) -> list[list[int]]:
    """The rule of :func:`batch_shares` written out: the smallest multiple n of m (8, or the processes rounded up to
    a multiple of 8) whose batches hold at most ``batch_size`` samples, at most ``count``, cut by NumPy."""
    m = 8
    while m < world_size:
        m += 8
    n = m
    while -(-count // n) > batch_size:
        n += m
    n = min(n, count)
    return [part.tolist() for part in np.array_split(np.arange(count), n)] if n else []


def test_batch_shares_give_every_process_work_balanced_and_the_same_batches_up_to_8_processes() -> None:
    """Before: faces were cut into batches of batch_size dealt round robin, so 3 faces and batch size 32 gave all to
    rank 0 and nothing to rank 1 (whose empty DataLoader Lightning refused)."""
    assert [batch_shares(3, 32, rank, 2) for rank in (0, 1)] == [[[0], [2]], [[1]]]
    assert [batch_shares(8, 32, rank, 2) for rank in (0, 1)] == [[[0], [2], [4], [6]], [[1], [3], [5], [7]]]
    assert batch_shares(0, 32, 0, 2) == batch_shares(0, 32, 1, 2) == []
    for count in (*range(0, 70), 100, 255, 256, 257, 300, 1000):
        for batch_size in (1, 2, 3, 5, 32):
            alone = batch_shares(count, batch_size, 0, 1)
            for world in (*range(1, 11), 12, 16, 17, 20):
                shares = [batch_shares(count, batch_size, rank, world) for rank in range(world)]
                batches = sorted((b for share in shares for b in share), key=lambda b: b[0])
                case = (count, batch_size, world)
                assert batches == _reference_batches(count, batch_size, world), case
                assert [i for b in batches for i in b] == list(range(count)), case  # each sample once, in order
                assert all(0 < len(b) <= batch_size for b in batches), case
                if world <= 8:
                    assert batches == alone, case  # the same batches, hence the same files, with 1 to 8 processes
                if count >= world:
                    assert all(shares), case  # every process gets work
                totals = [sum(map(len, share)) for share in shares]
                largest = max(map(len, batches), default=0)
                assert max(totals) - min(totals) <= (1 if len(batches) % world == 0 else largest), case
    with pytest.raises(ValueError, match="batch_size >= 1"):
        batch_shares(3, 0, 0, 1)


def test_a_process_without_samples_of_a_set_gets_a_placeholder_that_counts_nowhere() -> None:
    """Before: rank 1 of 2 got a zero-length DataLoader for a set of one file, which Lightning refuses (and a rank
    that runs no batch at all would skip the epoch end, where the metrics are gathered)."""
    x, y = torch.zeros(3, 3, 8, 8), torch.arange(3)
    datamodule = EvalDataModule(PixelSet(x, y), {"one": PixelSet(x[:1], y[:1]), "none": PixelSet(x[:0], y[:0])})
    loaders = {}
    for rank in (0, 1):
        datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        loaders[rank] = [list(loader) for loader in datamodule.test_dataloader()]
    assert [[b[2].tolist() for b in loader] for loader in loaders[0]] == [[[0, 2]], [[0]], []]
    assert [[b[2].tolist() for b in loader] for loader in loaders[1]] == [[[1]], [[-1]], []]  # none: no rank pads
    (placeholder,) = loaders[1][1]
    assert placeholder[1].tolist() == [PADDING]
    module = DetectorEvalModule({"ami": _untrained_detector()}, datamodule.set_names)
    module.test_step(placeholder, 0, dataloader_idx=1)
    assert int(module.seen[1].compute()) == int(module.skipped[1].compute()) == 0
    assert module.records[0][1].value == []  # the placeholder leaves no record, so it counts in no rate


@pytest.mark.slow
def test_ddp_sim_generation_of_fewer_faces_than_processes(tmp_path: Path) -> None:
    """One face, two processes: rank 1 has nothing to attack and still takes part (empty predict pass, barriers,
    merge), then a rerun finds both shares done. Before: rank 1's empty DataLoader was refused, exit 1."""
    overrides = ("attack=[fgsm]", "data.attack_faces=1", "logger=none", "trainer=ddp_sim",
                 f"paths.cache_dir={tmp_path / 'cache'}")
    done = _cli("ami-attack", *overrides, f"paths.log_dir={tmp_path / 'first'}", cwd=tmp_path)
    assert re.search(r"fgsm \[1/2\]: 0img ", done.stderr)  # rank 1's bar: nothing to do
    (folder,) = _sets(tmp_path / "cache").values()
    files = [p.name for p in folder.glob("*.npy")]
    assert len(files) == 1 and sorted(_rows(folder)) == files and not list(folder.glob("manifest.rank*"))
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    _cli("ami-attack", *overrides, f"paths.log_dir={tmp_path / 'again'}", cwd=tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before  # nothing attacked or rewritten


def _sets_of(log_dir: Path, task: str) -> list[dict]:
    """The rows of a run's results.json (``sets``)."""
    (results,) = log_dir.glob(f"{task}/*/results.json")
    return json.loads(results.read_text())["sets"]


FIGURES = ("detector", "name", "n", "eligible", "flagged", "rate", "success")


def _same_figures(one: list[dict], two: list[dict]) -> None:
    """Counts and rates equal, AUROC equal within float32 rounding, row by row."""
    assert [{k: s.get(k) for k in FIGURES} for s in one] == [{k: s.get(k) for k in FIGURES} for s in two]
    for a, b in zip(one, two, strict=True):
        assert (a["auroc"] is None) == (b["auroc"] is None), a["name"]
        assert a["auroc"] is None or a["auroc"] == pytest.approx(b["auroc"], abs=1e-6), a["name"]


@pytest.mark.slow
def test_ami_run_under_ddp_sim_at_the_default_batch_size(tmp_path: Path) -> None:
    """ami-run with the default data config's 8 faces and batch size 32 (the fgsm set only, 10 benign faces, the
    fitted detectors on the fit variants of 12 faces).
    Before: one batch of 8, all of rank 0's; rank 1 crashed. Now it completes with one process's figures and files."""
    cache = tmp_path / "cache"
    common = ("attack=[fgsm]", "data.benign.limit=10", "data.fit.limit=12", "logger=none", f"paths.cache_dir={cache}")
    _cli("ami-run", *common, "trainer=cpu", f"paths.log_dir={tmp_path / 'cpu'}", cwd=tmp_path)
    (one,) = _sets(cache).values()
    shutil.move(one, tmp_path / "one")  # the ddp_sim run generates the set again (the witnesses stay cached)
    _cli("ami-run", *common, "trainer=ddp_sim", f"paths.log_dir={tmp_path / 'ddp_sim'}", cwd=tmp_path)
    (two,) = _sets(cache).values()
    files = sorted(p.name for p in two.glob("*.npy"))
    assert len(files) == 8 and files == sorted(p.name for p in (tmp_path / "one").glob("*.npy"))
    assert all((tmp_path / "one" / f).read_bytes() == (two / f).read_bytes() for f in files)
    _same_figures(_sets_of(tmp_path / "cpu", "run"), _sets_of(tmp_path / "ddp_sim", "run"))


@pytest.mark.slow
def test_ddp_sim_evaluation_when_a_rank_has_no_sample_or_only_skipped_ones(tmp_path: Path) -> None:
    """Two attack sets of 2 faces read from data.attacks_dir with data.on_error=skip: ``fgsm`` cut to its first
    file (rank 1 has no sample of it) and ``bim`` with its second file broken (rank 1's whole share is skipped).
    Before: Lightning refused rank 1's empty DataLoader; and without fgsm, rank 1's empty records made gloo abort
    ("Received data size doesn't match"). Now both evaluate with one process's counts, rates, AUROC and skipped
    files."""
    cache, attacks = tmp_path / "cache", tmp_path / "attacks"
    _cli("ami-attack", "attack=[fgsm,bim]", "data.attack_faces=2", "logger=none", "trainer=cpu",
         f"paths.cache_dir={cache}", f"paths.log_dir={tmp_path / 'attack'}", cwd=tmp_path)
    for name, folder in _sets(cache).items():
        shutil.copytree(folder, attacks / name)
        lines = (attacks / name / "manifest.jsonl").read_text().splitlines()
        second = attacks / name / json.loads(lines[1])["file"]
        if name == "fgsm":
            (attacks / name / "manifest.jsonl").write_text(lines[0] + "\n")
            second.unlink()
        else:
            second.write_bytes(b"not an npy file")
            broken = second
    results = {}
    for trainer in ("cpu", "ddp_sim"):
        _cli("ami-eval", "attack=[fgsm,bim]", f"data.attacks_dir={attacks}", "data.on_error=skip",
             "data.benign.limit=10", "logger=none", f"trainer={trainer}", f"paths.cache_dir={cache}",
             f"paths.log_dir={tmp_path / trainer}", cwd=tmp_path)
        (path,) = (tmp_path / trainer).glob("eval/*/results.json")
        results[trainer] = json.loads(path.read_text())
    one, two = results["cpu"], results["ddp_sim"]
    _same_figures(one["sets"], two["sets"])
    rows = {(s["detector"], s["name"]): s for s in two["sets"]}
    assert rows[("ami", "fgsm")]["n"] == 1 and rows[("ami", "bim")]["n"] == 1
    assert one["extra"] == two["extra"] and two["extra"]["skipped"]["bim"] == 1
    assert {name: list(files) for name, files in two["extra"]["skipped_files"].items()} == {"bim": [str(broken)]}
