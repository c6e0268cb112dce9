"""Wall time of the README's first command and of the smoke run, from an empty cache and with the cache warm.

Usage (from the repository root, alone on the machine: another job beside it slows every figure)::

    python -m scripts.bench_main_job --out logs/bench_main_job
    python -m scripts.readme_tables main-job logs/bench_main_job

Runs, each as the installed console script in a fresh process with its own empty cache folder: ``ami-run`` (the main
job) cold, then again warm (same cache: every stage reused, only the evaluation runs), then ``ami-run
experiment=smoke`` cold. Each run's stages are read back from its run folder (``attack_stage.json``: the wall time
of every attack set). ``--out DIR`` writes the figures with their provenance (command, commit, machine) to
``DIR/results.json`` and keeps the runs under ``DIR/logs<k>/`` (the cold main job's folder holds the results the
README's main tables are written from) and their caches under ``DIR/cache<k>/``. ``--extra`` passes overrides to
every run (e.g. ``--extra trainer=gpu``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ami_lightning.pipeline.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
RUNS: tuple[tuple[str, list[str], bool], ...] = (
    ("main job, cold", [], True),
    ("main job, warm", [], False),
    ("smoke, cold", ["experiment=smoke"], True),
)
"""(label, overrides, fresh cache) of each timed run, in order; a warm run reuses the cache of the run before."""


def ami_run(overrides: list[str], log_dir: Path, cache_dir: Path) -> dict[str, Any]:
    """Run ``ami-run`` with ``overrides`` under ``log_dir`` with ``paths.cache_dir=cache_dir``; its wall time (s),
    the attack stage's seconds and its run folder. SystemExit with the end of its output when it fails."""
    command = [str(Path(sys.executable).parent / "ami-run"), *overrides, f"paths.log_dir={log_dir}",
               f"paths.cache_dir={cache_dir}", "logger=none", "trainer.enable_progress_bar=false"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    runs = sorted(p for p in (log_dir / "run").iterdir() if p.is_dir() and (p / "results.json").is_file())
    stage = runs[-1] / "attack_stage.json"
    attack_seconds = (sum(s["seconds"] for s in json.loads(stage.read_text())["sets"].values())
                      if stage.is_file() else 0.0)
    return {"seconds": round(seconds, 1), "attack_seconds": round(attack_seconds, 1), "run": runs[-1].name}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the figures to DIR/results.json (for readme_tables)")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides passed to every run")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    if args.dry_run:
        for label, overrides, fresh in RUNS:
            print(f"{label}: ami-run {' '.join([*overrides, *args.extra])} ({'empty' if fresh else 'warm'} cache)")
        return 0
    figures: dict[str, Any] = {"runs": {}, "extra": args.extra}
    with tempfile.TemporaryDirectory(prefix="bench_main_job_") as tmp:
        work, cache = (args.out if args.out is not None else Path(tmp)), None
        for k, (label, overrides, fresh) in enumerate(RUNS):
            cache = work / f"cache{k}" if fresh or cache is None else cache
            if fresh and cache.exists():
                raise SystemExit(f"{cache} exists: a cold run needs an empty cache; use a new --out folder")
            figures["runs"][label] = {"command": " ".join(["ami-run", *overrides, *args.extra]),
                                      **ami_run([*overrides, *args.extra], work / f"logs{k}", cache)}
            print(f"{label}: {figures['runs'][label]['seconds']:.1f} s", flush=True)
    figures["provenance"] = provenance()
    print(main_job_markdown(figures))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    return 0


def minutes(seconds: float) -> str:
    """``"5 min 03 s"`` (or ``"42 s"`` under a minute)."""
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60:02d} s" if whole >= 60 else f"{whole} s"


def main_job_markdown(figures: dict[str, Any]) -> str:
    """The table of a :func:`main` run's figures (its ``results.json``)."""
    lines = ["| run | command | cache | wall time | of it, attack generation |", "| --- | --- | --- | ---: | ---: |"]
    for label, run in figures["runs"].items():
        what, cache = label.split(", ")
        lines.append(f"| {what} | `{run['command']}` | {'empty' if cache == 'cold' else 'warm'} | "
                     f"{minutes(run['seconds'])} | {minutes(run['attack_seconds'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
