"""Where a result comes from: the command, the code's commit and the machine, recorded in every ``results.json``.

The README's tables are written from these records (``scripts/readme_tables.py``), so each table states the command,
commit and machine of the run that produced it.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ami_lightning import __file__ as _package_file

CODE_PATHS: tuple[str, ...] = (":/ami_lightning", ":/attacks", ":/conf", ":/pyproject.toml")
"""What decides a result, as git pathspecs from the repository's root."""


@functools.cache
def git_commit(folder: str | Path = Path(_package_file).parent) -> dict[str, Any] | None:
    """``{"commit": <40 hex>, "dirty": bool}`` of the git checkout holding ``folder`` (the package's source by
    default); ``dirty``: uncommitted changes to the code or configs (:data:`CODE_PATHS`; an edited README does not
    count). None for an installed copy outside any checkout or without git. Read once per process: the entry
    points call it when a job starts, so a results file names the code that ran, not an edit made meanwhile."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True,
                                timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS], cwd=folder,
                                capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | str | None = None) -> dict[str, Any]:
    """The machine a result depends on: CPU model and usable cores, torch's intra-op threads, torch and Python
    versions, and the GPU's name when ``device`` is a CUDA device."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.machine()}",
    }
    if device is not None and torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def provenance(command: list[str] | None = None, device: torch.device | str | None = None) -> dict[str, Any]:
    """``{"command", "git", "machine", "date"}`` for a results file; ``command`` defaults to this process's command
    line (program name and arguments)."""
    argv = command if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]]
    return {
        "command": " ".join(argv),
        "git": git_commit(),
        "machine": machine(device),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def describe(record: dict[str, Any]) -> str:
    """One line for a README: command, commit (marked ``+changes`` when the tree was dirty) and machine."""
    git = record.get("git") or {}
    commit = git.get("commit", "unknown")[:7] + (" +uncommitted changes" if git.get("dirty") else "")
    m = record.get("machine", {})
    where = m.get("gpu") or f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores"
    return (f"`{record.get('command', '?')}` at commit `{commit}` on {where} (torch {m.get('torch', '?')}, "
            f"{m.get('torch_threads', '?')} threads), {record.get('date', '?')}")
