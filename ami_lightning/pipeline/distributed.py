"""Attack generation through a Lightning trainer's strategy: the attack stage on 1..N devices and nodes.

:class:`LightningRunner` is the :class:`~ami_lightning.pipeline.generation.Runner` of the pipeline: for each attack set,
every process of the trainer (``trainer=ddp trainer.devices=N``, several nodes under SLURM, or ``trainer=ddp_sim`` on
the CPU) runs one ``trainer.predict`` pass over its own batches
(:func:`~ami_lightning.pipeline.generation.batch_shares`; a process without any, e.g. of a set with fewer faces than
processes, runs an empty pass: it still takes part in every collective call). :class:`AttackSetModule`'s
``predict_step`` attacks a batch on the process's device and its ``on_predict_batch_end`` stores the files and appends
the rows to the process's manifest shard, so a kill loses at most the batch in flight. The first pass launches the
other processes (Lightning's launcher re-runs the command; each re-prepares its detectors from the cache) and creates
the process group that :func:`~ami_lightning.pipeline.generation.generate` then uses to wait for every rank before
rank 0 merges the shards.
"""

from __future__ import annotations

import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from torch import nn
from tqdm import tqdm

from ami_lightning.data.manifest import open_log
from ami_lightning.pipeline.generation import Output, Run


class AttackSetModule(pl.LightningModule):
    """One attack set's share as a predict pass: ``predict_step`` attacks a batch (pixels (B, 3, H, W) in
    [0, 255], labels (B,), dataset indices (B,)) and returns per sample its file name, bytes and manifest row
    (:meth:`~ami_lightning.pipeline.generation.Run.attack_batch`); ``on_predict_batch_end`` writes them to ``log`` (the
    open manifest shard) and advances ``bar``. The classifier (and the detector an adaptive attack attacks) are
    submodules, so the trainer puts them on its device. A process's share may be empty (fewer batches than
    processes, or all of its faces done): its pass then attacks nothing."""

    def __init__(self, run: Run, log: IO[str] | None, bar: tqdm) -> None:
        super().__init__()
        self.allow_zero_length_dataloader_with_multiple_devices = True  # an empty share is no error
        self.classifier = run.model
        detector = getattr(run.attacker, "detector", None)
        self.detector = detector if isinstance(detector, nn.Module) else None
        self.attack_run, self.manifest_log, self.bar = run, log, bar

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(pixels)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Output:
        pixels, labels, index = batch
        return self.attack_run.attack_batch(pixels, labels, index)

    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.manifest_log is None:
            raise RuntimeError("a batch to write without a manifest open")
        self.attack_run.write(self.manifest_log, outputs)
        self.bar.update(len(outputs))


@dataclass
class LightningRunner:
    """Attack a share's batches with ``trainer.predict`` (:class:`AttackSetModule`), images loaded by
    ``num_workers`` DataLoader workers. ``trainer`` must not run in inference mode (attacks need gradients):
    :func:`attack_trainer` builds one. With several processes every rank calls it once per set, with or without
    work (``collective``), since each predict pass synchronises them."""

    trainer: pl.Trainer
    num_workers: int = 0

    @property
    def collective(self) -> bool:
        return self.trainer.world_size > 1

    def __call__(self, run: Run, batches: list[list[int]], manifest: Path, bar: tqdm) -> None:
        device = next(run.model.parameters()).device  # the trainer's teardown moves its modules to the CPU
        with ExitStack() as stack:
            log = stack.enter_context(open_log(manifest)) if batches else None
            if not batches:  # Lightning warns of a zero-length DataLoader; an empty share is expected here
                stack.enter_context(warnings.catch_warnings())
                warnings.filterwarnings("ignore", message=r".*`DataLoader` across ranks is zero")
            self.trainer.predict(AttackSetModule(run, log, bar), dataloaders=run.loader(batches, self.num_workers),
                                 return_predictions=False)
        run.model.to(device)


def attack_trainer(trainer_cfg: Any) -> pl.Trainer:
    """The trainer of the attack stage from the run's ``trainer`` config: the same devices, nodes and strategy,
    gradients enabled (no inference mode), no logger, progress shown per set by the generator instead of
    Lightning's bar."""
    return instantiate(trainer_cfg, logger=False, inference_mode=False, enable_progress_bar=False,
                       enable_model_summary=False)
