"""Logging a run's results to Weights & Biases: the scalar metrics, the results table and the figures.

wandb is imported only when logging (:func:`log_to_wandb`), so that the rest of the reporting works without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ami_lightning.evaluation.intervals import NAN_INTERVAL
from ami_lightning.evaluation.thresholds import fpr_suffix
from ami_lightning.reporting.formatting import json_safe
from ami_lightning.reporting.matrix import matrix_rows
from ami_lightning.reporting.metrics import scalar_metrics
from ami_lightning.reporting.samples import sample_figure_caption

if TYPE_CHECKING:
    from ami_lightning.reporting.records import RunResults


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as error:
        raise ImportError("logging to W&B needs the wandb package: pip install 'ami-lightning[framework]'") from error
    return wandb


def is_wandb_logger(logger: Any) -> bool:
    """Whether ``logger`` is a Lightning ``WandbLogger`` (False when Lightning or wandb is not installed)."""
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:
        return False
    return isinstance(logger, WandbLogger)


def _with_ci(name: str) -> list[str]:
    return [name, f"{name}_ci_low", f"{name}_ci_high"]


def wandb_table_rows(results: RunResults) -> tuple[list[str], list[list[Any]]]:
    """The W&B results table, (columns, rows), a row per detector and set in the order of ``results.sets``:
    ``detector``, ``set``, ``metric``, ``n``, ``eligible``, ``flagged``, then each figure followed by its interval's
    ``_ci_low`` / ``_ci_high``: ``rate``, ``auroc``, ``detection_at_fpr_<t>`` per target, ``undetected``,
    ``undetected_at_fpr_<t>`` per target. Rates as fractions, missing values as None."""
    targets = results.fpr_targets
    columns = ["detector", "set", "metric", "n", "eligible", "flagged", *_with_ci("rate"), *_with_ci("auroc"),
               *(c for t in targets for c in _with_ci(f"detection_{fpr_suffix(t)}")), *_with_ci("undetected"),
               *(c for t in targets for c in _with_ci(f"undetected_{fpr_suffix(t)}"))]
    rows = []
    for s in results.sets:
        auroc_ci = s.auroc_ci if s.auroc_ci is not None else NAN_INTERVAL
        rows.append(json_safe([
            s.detector, s.name, s.metric, s.n, s.eligible, s.flagged, s.rate, *s.rate_ci(), s.auroc, *auroc_ci,
            *(v for t in targets for v in (s.detection_at(t), *s.detection_ci_at(t))),
            s.undetected_rate, *s.undetected_ci(),
            *(v for t in targets for v in (s.undetected_at(t), *s.undetected_ci_at(t)))]))
    return columns, rows


def log_to_wandb(results: RunResults, logger_or_run: Any, figures: dict[str, Path]) -> None:
    """Log to W&B in one ``run.log`` call: :func:`~ami_lightning.reporting.metrics.scalar_metrics`, the table as
    ``results`` (a ``wandb.Table``, :func:`wandb_table_rows`), the detector x attack matrix as ``matrix`` (a
    ``wandb.Table`` of :func:`~ami_lightning.reporting.matrix.matrix_rows`; its heatmap is the figure ``matrix``)
    and each figure as ``figures/<name>`` (a
    ``wandb.Image``; a sample figure, named ``samples/<set>``, captioned with
    :func:`~ami_lightning.reporting.samples.sample_figure_caption`).

    ``logger_or_run``: a Lightning ``WandbLogger`` (its ``.experiment`` is used) or a ``wandb`` run. Raises
    ImportError, when called, if wandb is not installed.
    """
    wandb = _import_wandb()
    run = logger_or_run.experiment if is_wandb_logger(logger_or_run) else logger_or_run
    columns, rows = wandb_table_rows(results)
    images = {}
    for name, path in figures.items():
        set_name = name.removeprefix("samples/") if name.startswith("samples/") else None
        caption = sample_figure_caption(set_name) if set_name is not None else None
        images[f"figures/{name}"] = wandb.Image(str(path), caption=caption)
    header, matrix = matrix_rows(results)
    tables = {"results": wandb.Table(columns=columns, data=rows)}
    if results.set_names:
        tables["matrix"] = wandb.Table(columns=header, data=matrix)
    run.log({**scalar_metrics(results), **tables, **images})
