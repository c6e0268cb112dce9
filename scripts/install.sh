#!/usr/bin/env bash
# Create .venv and install ami-lightning with everything it needs, torch first (one pinned pair, so that nothing
# later pulls a second torch). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e ".[framework,dev]"
.venv/bin/python - <<'PY'
import importlib.metadata as md
import torch, torchvision
torchs = [d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower() in ("torch", "torch-cpu")]
assert torchs == ["torch"] and torch.__version__.startswith("2.14.1"), (torchs, torch.__version__)
print(f"installed: torch {torch.__version__}, torchvision {torchvision.__version__}")
PY
