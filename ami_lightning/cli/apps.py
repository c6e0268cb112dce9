"""Hydra entry points: ``ami-witness``, ``ami-attack``, ``ami-eval`` and ``ami-run`` (all stages chained).

Thin: each job is wrapped by :func:`task`, which checks the composed config and the logger before any work, runs
the stages of :mod:`ami_lightning.pipeline.stages` and closes whatever logger is open in ``finally``. Results go under
``logs/<task>/<timestamp>_<id>/`` (multiruns: ``logs/<task>/multiruns/<timestamp>_<id>/<job>``); a sweep optimises
the logged metric named by ``optimized_metric`` (e.g. ``objective/fpr_gap``, ``ami/fgsm/auroc``).
"""

from __future__ import annotations

import functools
import logging
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ami_lightning.cli import CONFIG_PATH
from ami_lightning.pipeline import stages as pipeline
from ami_lightning.pipeline.loggers import check_logger
from ami_lightning.pipeline.provenance import git_commit
from ami_lightning.pipeline.validation import check_config

log = logging.getLogger(__name__)

Job = Callable[[DictConfig], Mapping[str, float] | None]


def optimized_value(cfg: DictConfig, metrics: Mapping[str, float] | None) -> float | None:
    """The value of the metric ``cfg.optimized_metric`` names (None when it names none); ``KeyError`` listing the
    job's metrics when it names one the job did not produce."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if not metrics or name not in metrics:
        raise KeyError(f"optimized_metric={name!r} is not a metric of this job; it has: {sorted(metrics or {})}")
    return float(metrics[name])


def _close_open_runs(failed: bool) -> None:
    """Finish a W&B run left open by a failure (the lightning-hydra-template's safety net); only a run that started
    (``wandb.run``), never a new one. After a failure an error while finishing is logged, not raised, so that the
    job's own error is the one reported."""
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    try:
        wandb.finish(exit_code=1 if failed else 0)
    except Exception as error:
        if not failed:
            raise
        log.warning("finishing the open W&B run after the job failed failed too: %s: %s", type(error).__name__, error)


def _drop_if_empty(folder: Path) -> None:
    """Remove a run folder that holds nothing but Hydra's own files (a run refused before any work)."""
    if folder.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)


def task(job: Job) -> Callable[[DictConfig], float | None]:
    """Wrap a job: validate ``cfg`` and the logger first (a mistake fails in seconds; its empty run folder is
    removed), run it, close loggers in ``finally``; return the optimised metric for sweepers."""

    @functools.wraps(job)
    def wrapped(cfg: DictConfig) -> float | None:
        git_commit()  # the code this job runs, recorded before any of it runs
        try:
            check_config(cfg)
            check_logger(cfg)
        except Exception:
            _drop_if_empty(Path(cfg.paths.output_dir))
            raise
        failed = True
        try:
            value = optimized_value(cfg, job(cfg))
            failed = False
            return value
        finally:
            _close_open_runs(failed)

    return wrapped


@task
def _witness(cfg: DictConfig) -> None:
    """Prepare the run's detectors (``detector=[ami]`` by default: its witnesses, cached, a copy in the run
    folder) and say what AmI's witnesses are."""
    out = Path(cfg.paths.output_dir)
    for name, detector in pipeline.prepare_detectors(cfg, pipeline.classifier_from(cfg)).items():
        witnesses = getattr(detector, "witnesses", None)
        if witnesses is not None:
            print(f"{name}: witnesses per attribute {witnesses.count()} at {len(witnesses.steered_layers())} layers "
                  f"-> {out / 'witnesses'}")


@task
def _eval(cfg: DictConfig) -> dict[str, float]:
    """Detectors prepared, the attack sets (read from ``data.attacks_dir`` or generated), evaluation: the same path
    as ``ami-run``; they differ only in their default experiment."""
    classifier = pipeline.classifier_from(cfg)
    benign = pipeline.benign_set(cfg, classifier)
    detectors = pipeline.prepare_detectors(cfg, classifier, benign)
    dirs = pipeline.attack_dirs(cfg, classifier, detectors)
    return pipeline.evaluate_and_report(cfg, classifier, detectors, benign, dirs)


@task
def _attack(cfg: DictConfig) -> None:
    """Generate the selected attack sets; the detectors that adaptive sets attack are prepared first."""
    classifier = pipeline.classifier_from(cfg)
    detectors = pipeline.prepare_detectors(cfg, classifier, names=pipeline.attacked_detectors(cfg))
    for name, folder in pipeline.attack_stage(cfg, classifier, detectors).items():
        print(f"{name}: {folder}")


witness = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="witness")(_witness)
evaluate = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")(_eval)
attack = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="attack")(_attack)
run = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="run")(_eval)
