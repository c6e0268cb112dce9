"""``scripts/gpu_check.sh --dry-run``: every command of the GPU checks resolves on a machine without a GPU (the real
run needs CUDA; CI has none)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_resolves_every_command(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    logs = {p.name for p in tmp_path.glob("*.log")}
    assert logs == {"pytest-collect.log", "bench_detector-help.log", "bench_attacks-help.log",
                    "bench_distributed-help.log", "readme_tables-help.log", "adaptive-config.log",
                    "benchmark-config.log"}
    collected = (tmp_path / "pytest-collect.log").read_text()
    assert "test_nlm.py::test_torch_backend_on_cuda_equals_opencv" in collected  # the gpu-marked tests are there
    assert "attack_faces: null" in (tmp_path / "adaptive-config.log").read_text()  # all 238 faces
    benchmark = (tmp_path / "benchmark-config.log").read_text()
    assert "attack_faces: null" in benchmark and "selective_nic:" in benchmark and "nic:" in benchmark


@pytest.mark.slow
def test_gpu_check_refuses_to_run_without_cuda_and_says_what_to_do(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the real run would start")
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "no CUDA GPU: run with --dry-run here" in done.stderr
