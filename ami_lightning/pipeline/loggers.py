"""Experiment loggers (CSV, W&B) around a run: checked before any work, fed after the results files are written.

The evaluation itself runs without a logger; once ``results.json`` and the plots are on disk, :func:`log_results`
builds the configured logger, gives it the whole composed config as hyperparameters and the run's figures, and
closes it whatever happens. A logger that hangs or fails can therefore never lose a run's results.

W&B online (``logger=wandb logger.offline=false``) is checked at start-up by :func:`check_logger`: an API key must
be configured and the W&B server must answer a TCP connection within ``probe_timeout`` seconds; otherwise the run
stops at once with a message saying so (it does not fall back to offline silently: ``logger.offline=true`` keeps the
run under the run folder for a later ``wandb sync``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from ami_lightning.reporting.results import RunResults, is_wandb_logger, log_to_wandb, scalar_metrics

WANDB_TARGET = "lightning.pytorch.loggers.WandbLogger"
DEFAULT_WANDB_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 10.0


class LoggerError(RuntimeError):
    """The configured logger cannot work (e.g. W&B online without a key or without a reachable server)."""


def uses_wandb(cfg: DictConfig) -> bool:
    """Whether the run's ``logger`` group is W&B."""
    logger = cfg.get("logger")
    return bool(logger) and logger.get("_target_") == WANDB_TARGET


def _wandb_api_key() -> str | None:
    """The W&B API key from ``WANDB_API_KEY`` or the netrc entry that ``wandb login`` writes; None without one."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    import netrc

    host = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_URL)).hostname or ""
    try:
        entry = netrc.netrc().authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def reachable(url: str, timeout: float) -> str | None:
    """None when a TCP connection to ``url``'s host and port opens within ``timeout`` seconds, else the reason."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return None
    except OSError as error:
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def check_logger(cfg: DictConfig, probe_timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail in seconds, before any stage runs, when W&B online cannot work: no API key, or the server
    (``WANDB_BASE_URL``, default api.wandb.ai) does not accept a connection within ``probe_timeout`` seconds."""
    if not uses_wandb(cfg) or cfg.logger.get("offline", False):
        return
    url = os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_URL)
    hint = "log offline with logger.offline=true (the run is kept under the run folder; `wandb sync` it later)"
    if _wandb_api_key() is None:
        raise LoggerError(f"logger=wandb with logger.offline=false needs a W&B API key (WANDB_API_KEY or "
                          f"`wandb login`); none is configured. Or {hint}.")
    reason = reachable(url, probe_timeout)
    if reason is not None:
        raise LoggerError(f"logger=wandb with logger.offline=false: the W&B server {url} cannot be reached within "
                          f"{probe_timeout:g} s ({reason}). Check the network, or {hint}.")


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def logger_from(cfg: DictConfig) -> Any:
    """The configured Lightning logger, or None for ``logger=none``. The jobs of one W&B multirun share a group
    named after the sweep folder; a single run has no group."""
    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return None
    logger_cfg = cfg.logger.copy()
    if uses_wandb(cfg) and _multirun():
        with open_dict(logger_cfg):
            logger_cfg.group = logger_cfg.get("group") or f"{cfg.task_name}-{Path(HydraConfig.get().sweep.dir).name}"
    return instantiate(logger_cfg)


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The whole composed config of the job as plain containers (Hydra's own node left out), for the logger."""
    job = cfg.copy()
    with open_dict(job):
        job.pop("hydra", None)
    return OmegaConf.to_container(job, resolve=True)  # type: ignore[return-value]


def log_results(cfg: DictConfig, results: RunResults, figures: Mapping[str, Path]) -> None:
    """Build the configured logger, log the run config, :func:`~ami_lightning.reporting.results.scalar_metrics` and
    (W&B)
    the table and figures; the logger is finalised and a W&B run finished even when logging fails."""
    logger = logger_from(cfg)
    if logger is None:
        return
    status = "failed"
    try:
        logger.log_hyperparams(run_config(cfg))
        logger.log_metrics(scalar_metrics(results))
        if is_wandb_logger(logger):
            log_to_wandb(results, logger, dict(figures))
        status = "success"
    finally:
        logger.finalize(status)
        if is_wandb_logger(logger):
            logger.experiment.finish(exit_code=0 if status == "success" else 1)
