"""Experiment loggers (CSV, W&B) around a run: checked before any work, fed after the results files are written.

The evaluation itself runs without a logger; once ``results.json`` and the plots are on disk, :func:`log_results`
builds the configured logger, starts it, gives it the whole composed config as hyperparameters and the run's
figures, and closes it whatever happens. A logger that hangs or fails can therefore never lose a run's results. A
logger that fails to start is never closed (closing a Lightning ``WandbLogger`` that has no run would start W&B a
second time), and an error while closing after a failure is logged, not raised: the first error is the one reported.

W&B online (``logger=wandb logger.offline=false``) is checked at start-up by :func:`check_logger`: an API key must
be configured (``WANDB_API_KEY`` or the netrc file that ``wandb login`` writes), in the format wandb accepts, and the
W&B server must answer an HTTP request within ``probe_timeout`` seconds (a server that accepts the connection and
never answers fails too); otherwise the run stops at once with a message saying so (it does not fall back to offline
silently: ``logger.offline=true`` keeps the run under the run folder for a later ``wandb sync``).
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from ami_lightning.reporting.results import RunResults, is_wandb_logger, log_to_wandb, scalar_metrics

log = logging.getLogger(__name__)

WANDB_TARGET = "lightning.pytorch.loggers.WandbLogger"
DEFAULT_WANDB_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 10.0
OFFLINE_HINT = "log offline with logger.offline=true (the run is kept under the run folder; `wandb sync` it later)"


class LoggerError(RuntimeError):
    """The configured logger cannot work (e.g. W&B online without a key or without a reachable server)."""


def uses_wandb(cfg: DictConfig) -> bool:
    """Whether the run's ``logger`` group is W&B."""
    logger = cfg.get("logger")
    return bool(logger) and logger.get("_target_") == WANDB_TARGET


def _netrc_path() -> Path:
    """The netrc file wandb reads: ``NETRC`` when set, else ``~/.netrc`` (``~/_netrc`` where only that exists)."""
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    home = Path("~/.netrc").expanduser()
    windows = Path("~/_netrc").expanduser()
    return windows if not home.exists() and windows.exists() else home


def wandb_api_key(url: str) -> tuple[str, str] | None:
    """The W&B API key wandb would use for the server ``url`` and where it comes from: ``WANDB_API_KEY``, else the
    password of the netrc entry of the server's host (what ``wandb login`` writes), the source then
    ``"<netrc file> (machine <host>)"``; None without one."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"], "WANDB_API_KEY"
    import netrc

    path = _netrc_path()
    host = urlparse(url).hostname or ""
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return (entry[2], f"{path} (machine {host})") if entry and entry[2] else None


def api_key_problem(key: str) -> str | None:
    """What wandb finds wrong with the format of the API ``key`` (wandb's own check: 40+ letters, digits or
    underscores, after an optional ``<prefix>-`` of a self-hosted server's key), None when it accepts it. Without
    that check (an older wandb) the same rule, on the part after the first ``-``."""
    try:
        from wandb.sdk.lib.wbauth import check_api_key
    except ImportError:
        secret = key.split("-", 1)[-1]
        return None if len(secret) >= 40 else f"API key must have 40+ characters, has {len(secret)}."
    return check_api_key(key)


def answers(url: str, timeout: float) -> str | None:
    """None when the server at ``url`` answers an HTTP ``HEAD /`` (any status) within ``timeout`` seconds from the
    start of the connection, else the reason: no TCP connection (refused, unreachable, timed out), or a connection
    accepted and then no answer (TLS handshake or HTTP). Only whether it answers is checked: no credentials are sent
    and TLS certificates are not verified."""
    parsed = urlparse(url)
    https = parsed.scheme == "https"
    host, port = parsed.hostname or "", parsed.port or (443 if https else 80)
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as error:
        return f"no connection ({_error_text(error)})"
    connection = http.client.HTTPConnection(host, port)
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))  # the whole probe within ``timeout``
        if https:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            sock = context.wrap_socket(sock, server_hostname=host)
        connection.sock = sock  # http.client sends on a socket it is given
        connection.request("HEAD", "/")
        connection.getresponse().close()
        return None
    except (OSError, http.client.HTTPException) as error:
        return f"it accepted the connection but sent no answer ({_error_text(error)})"
    finally:
        connection.close()
        sock.close()


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def check_logger(cfg: DictConfig, probe_timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail in seconds, before any stage runs, when W&B online cannot work: no API key, a key whose format wandb
    refuses (:func:`api_key_problem`; the message names where the key comes from), or a server (``WANDB_BASE_URL``,
    default api.wandb.ai) that does not answer an HTTP request within ``probe_timeout`` seconds (:func:`answers`)."""
    if not uses_wandb(cfg) or cfg.logger.get("offline", False):
        return
    url = os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_URL)
    found = wandb_api_key(url)
    if found is None:
        raise LoggerError(f"logger=wandb with logger.offline=false needs a W&B API key (WANDB_API_KEY or "
                          f"`wandb login`); none is configured. Or {OFFLINE_HINT}.")
    key, source = found
    problem = api_key_problem(key)
    if problem is not None:
        raise LoggerError(f"logger=wandb with logger.offline=false: the W&B API key from {source} is malformed: "
                          f"{problem} Set the key shown at https://wandb.ai/authorize (or your server's) in "
                          f"WANDB_API_KEY or with `wandb login --relogin`, or {OFFLINE_HINT}.")
    reason = answers(url, probe_timeout)
    if reason is not None:
        raise LoggerError(f"logger=wandb with logger.offline=false: the W&B server {url} does not answer within "
                          f"{probe_timeout:g} s: {reason}. Check the network and WANDB_BASE_URL, or {OFFLINE_HINT}.")


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def logger_from(cfg: DictConfig) -> Any:
    """The configured Lightning logger, or None for ``logger=none``. The jobs of one W&B multirun share a group
    named after the sweep folder; a single run has no group. A W&B run is online or offline as ``logger.offline``
    says, whatever ``WANDB_MODE`` an earlier logger of the process left behind."""
    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return None
    logger_cfg = cfg.logger.copy()
    if uses_wandb(cfg):
        with open_dict(logger_cfg):
            # Lightning's offline logger sets WANDB_MODE=dryrun for the whole process, which would turn every later
            # run of the process (a Hydra multirun's next job) offline; the config's choice is passed to wandb.init.
            logger_cfg.mode = "offline" if logger_cfg.get("offline", False) else "online"
            if _multirun():
                logger_cfg.group = (logger_cfg.get("group")
                                    or f"{cfg.task_name}-{Path(HydraConfig.get().sweep.dir).name}")
    return instantiate(logger_cfg)


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The whole composed config of the job as plain containers (Hydra's own node left out), for the logger."""
    job = cfg.copy()
    with open_dict(job):
        job.pop("hydra", None)
    return OmegaConf.to_container(job, resolve=True)  # type: ignore[return-value]


def start_logger(logger: Any) -> None:
    """Start the logger's experiment now (W&B: ``wandb.init``, bounded by wandb's ``init_timeout``). A failure is a
    :class:`LoggerError` naming the error; the logger is then left alone: it has nothing to close, and closing a
    Lightning logger whose experiment never started would start it again."""
    try:
        logger.experiment  # noqa: B018 - Lightning loggers start their experiment on first access
    except Exception as error:
        hint = f" Or {OFFLINE_HINT}." if is_wandb_logger(logger) else ""
        raise LoggerError(f"the {type(logger).__name__} could not start ({type(error).__name__}: {error}); the "
                          f"run's results files are written.{hint}") from error


def close_logger(logger: Any, status: str) -> None:
    """Finalise a started logger with ``status`` (``"success"`` / ``"failed"``) and finish its W&B run."""
    logger.finalize(status)
    if is_wandb_logger(logger):
        logger.experiment.finish(exit_code=0 if status == "success" else 1)


def log_results(cfg: DictConfig, results: RunResults, figures: Mapping[str, Path]) -> None:
    """Build and start (:func:`start_logger`) the configured logger, log the run config,
    :func:`~ami_lightning.reporting.results.scalar_metrics` and (W&B) the table and figures, and close it
    (:func:`close_logger`) whether logging succeeds or fails. A logger that does not start is not closed; when
    logging fails, an error while closing is logged and the logging error raised."""
    logger = logger_from(cfg)
    if logger is None:
        return
    start_logger(logger)
    try:
        logger.log_hyperparams(run_config(cfg))
        logger.log_metrics(scalar_metrics(results))
        if is_wandb_logger(logger):
            log_to_wandb(results, logger, dict(figures))
    except BaseException:
        try:
            close_logger(logger, "failed")
        except Exception as error:  # the logging error is the one to report
            log.warning("closing the logger after a failure failed too: %s: %s", type(error).__name__, error)
        raise
    close_logger(logger, "success")
