"""Wall time of the README's test command (every test) and of the fast subset, on a clean clone of this commit.

Usage (from the repository root, alone on the machine: another job beside it slows every figure)::

    python -m scripts.bench_tests --out logs/bench_tests
    python -m scripts.readme_tables test-time logs/bench_tests

Clones the checkout's HEAD into ``DIR/clone`` (uncommitted changes would not be measured, so a checkout with any is
refused), installs it there from scratch (``scripts/install.sh``: its own ``.venv``), then runs in the clone, each
timed as a whole process: ``ruff check .``, ``python -m pytest -m ""`` (every test; with the install, what
``.ci/run`` runs) and ``python -m pytest`` (the fast subset, the tests not marked ``slow``). The clone reads the
reference data of this checkout (``AMI_REFERENCE``, :data:`tests.conftest.REFERENCE`). Writes ``DIR/results.json``:
each step's command, wall time, target and pytest's counts, with the provenance (command, commit, machine). Exits 1,
with the end of its output, when a step fails: a time of failing tests is no figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ami_lightning.pipeline.provenance import provenance
from scripts.bench_main_job import minutes

ROOT = Path(__file__).resolve().parents[1]
STEPS: tuple[tuple[str, list[str], float | None], ...] = (
    ("install", ["bash", "scripts/install.sh"], None),
    ("lint", [".venv/bin/ruff", "check", "."], None),
    ("every test", [".venv/bin/python", "-m", "pytest", "-m", ""], 8 * 60),
    ("fast subset", [".venv/bin/python", "-m", "pytest"], 2 * 60),
)
"""(label, command run in the clone, target wall time in seconds or None) of each timed step, in order."""
COUNTS = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)\b")
"""One of pytest's closing counts: the number and the kind."""


def pytest_counts(output: str) -> dict[str, int]:
    """pytest's closing counts (``{"passed": 826, "skipped": 15, "xfailed": 1}``) from the last line of ``output``
    that holds any; warnings are not counted. Empty when no line does."""
    for line in reversed(output.splitlines()):
        found = COUNTS.findall(line)
        if found:
            return {kind: int(n) for n, kind in found}
    return {}


def run_step(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """Run ``command`` in ``cwd``; its wall time (s) and its output (stdout and stderr). SystemExit with the end of
    the output when it fails."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed in {cwd} (exit {done.returncode}):\n{done.stdout[-4000:]}")
    return seconds, done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="a new folder: the clone, each step's log and results.json")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    if args.dry_run:
        for label, command, _ in STEPS:
            print(f"{label}: {shlex.join(command)}")
        return 0
    if args.out is None:
        parser.error("--out DIR is required (a new folder)")
    from tests.conftest import REFERENCE

    if subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip():
        raise SystemExit(f"{ROOT} has uncommitted changes: commit them first (the clone measures HEAD only)")
    clone = args.out / "clone"
    if clone.exists():
        raise SystemExit(f"{clone} exists: a clean clone needs a new --out folder")
    args.out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    env = {**os.environ, "AMI_REFERENCE": str(REFERENCE)}
    figures: dict[str, Any] = {"steps": {}}
    for label, command, target in STEPS:
        seconds, output = run_step(command, clone, env)
        (args.out / f"{label.replace(' ', '_')}.log").write_text(output, encoding="utf-8")
        figures["steps"][label] = {"command": shlex.join(command),
                                   "seconds": round(seconds, 1), "target": target, "counts": pytest_counts(output)
                                   if "pytest" in command else {}}
        print(f"{label}: {seconds:.1f} s", flush=True)
    figures["provenance"] = provenance()
    print(tests_markdown(figures))
    (args.out / "results.json").write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(clone / ".venv", ignore_errors=True)  # a few GB; the logs and results stay
    return 0


def tests_markdown(figures: dict[str, Any]) -> str:
    """The table of a :func:`main` run's figures (its ``results.json``): each step's wall time against its target,
    and pytest's counts."""
    lines = ["| step | command (in the clone) | wall time | target | tests |", "| --- | --- | ---: | ---: | --- |"]
    for label, step in figures["steps"].items():
        target = f"at most {minutes(step['target'])}" if step.get("target") else ""
        counts = ", ".join(f"{n} {kind}" for kind, n in step.get("counts", {}).items())
        lines.append(f"| {label} | `{step['command']}` | {minutes(step['seconds'])} | {target} | {counts} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
