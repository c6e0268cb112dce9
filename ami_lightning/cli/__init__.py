"""Command-line entry points (thin: they compose the library's functions and write results)."""

from __future__ import annotations

import functools
import importlib.resources
import uuid
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ami_lightning.data.shipped import ASSETS
from ami_lightning.models.dlib_files import dlib_model_path

CONFIG_MODULE = "ami_lightning.conf"
"""The configs' package: the repository's top-level ``conf/``, installed as ``ami_lightning.conf``."""
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
"""Hydra's primary config path, the same in a checkout, an editable install and a wheel; a user adds folders of
their own with ``--config-dir`` or ``hydra.searchpath``."""


def config_dir() -> Path:
    """The folder holding the installed configs (``conf/`` of the checkout for an editable install)."""
    return Path(str(importlib.resources.files(CONFIG_MODULE)))


@functools.cache
def run_stamp() -> str:
    """This process's run-folder name: ``YYYY-MM-DD_HH-MM-SS_<6 hex>``, fixed at its first call. The random suffix
    keeps runs started in the same second (on one machine or on several sharing a file system) apart."""
    return f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{uuid.uuid4().hex[:6]}"


OmegaConf.register_new_resolver("asset", lambda name: str(ASSETS / name), replace=True)
OmegaConf.register_new_resolver("run_stamp", run_stamp, replace=True)
OmegaConf.register_new_resolver("dlib_model", lambda name: str(dlib_model_path(name)), replace=True)


def make_run_dir(task: str, out: str | Path | None = None, root: str | Path = "logs") -> Path:
    """``out`` if given, else ``<root>/<task>/<run_stamp()>/``; created."""
    path = Path(out) if out is not None else Path(root) / task / run_stamp()
    path.mkdir(parents=True, exist_ok=True)
    return path


def pick_device(name: str | None) -> torch.device:
    """``name`` (cpu, cuda, cuda:1), or CUDA when available, else CPU; a clear error for CUDA without a GPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"device {name!r} requested but no CUDA GPU is available")
    return device
