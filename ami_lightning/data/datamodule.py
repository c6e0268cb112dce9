"""``EvalDataModule``: one benign test set and any number of attack sets, as Lightning test dataloaders."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from ami_lightning.data.datasets import SKIPPED

PADDING = -2
"""The label of :class:`Placeholder`'s item, which the evaluation neither counts nor scores."""


class Placeholder(Dataset):
    """One item ``(pixels (3, 1, 1) zeros, PADDING, -1)``: the share of a process that has no sample of a set, so
    that every process runs every set's loop (Lightning refuses a zero-length DataLoader on one rank of several)
    and reaches the same collective calls."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return torch.zeros(3, 1, 1), PADDING, -1


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: disjoint shares that together cover every sample exactly once (unlike
    ``DistributedSampler``, which pads with repeats), so multi-process metrics equal the single-process ones."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


class EvalDataModule(pl.LightningDataModule):
    """Test dataloaders, in order: ``benign`` then each attack set of ``attacks`` (name -> dataset).

    Items are ``(pixels, label, index)``; a label ``SKIPPED`` marks a file that its dataset skipped
    (``on_error="skip"``). Each process gets its :class:`ShardSampler` share of each set; a process with no sample
    of a non-empty set (fewer samples than processes) gets the :class:`Placeholder` item, label ``PADDING``,
    instead. Before each batch moves to the device (in the main process, also when DataLoader workers
    loaded it) the dataset's ``note_skipped(index)`` is called for each such item, so that :attr:`skipped` names every
    skipped file with its reason (and the dataset warns once per file).
    """

    def __init__(
        self, benign: Dataset, attacks: Mapping[str, Dataset], batch_size: int = 32, num_workers: int = 0
    ) -> None:
        super().__init__()
        self.datasets: dict[str, Dataset] = {"benign": benign, **attacks}
        self.batch_size = batch_size
        self.num_workers = num_workers

    @property
    def set_names(self) -> list[str]:
        return list(self.datasets)

    def _loader(self, dataset: Dataset) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = ShardSampler(len(dataset), rank, world)  # type: ignore[arg-type]
        if len(sampler) == 0 and len(dataset) > 0:  # type: ignore[arg-type]
            return DataLoader(Placeholder(), batch_size=1)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=False,
        )

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(d) for d in self.datasets.values()]

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record the skipped items of ``batch`` (pixels (B, 3, H, W), labels (B,), indices (B,)) with their
        dataset (see the class docstring); the batch is returned unchanged."""
        dataset = list(self.datasets.values())[dataloader_idx]
        note = getattr(dataset, "note_skipped", None)
        if note is not None and isinstance(batch, list | tuple) and len(batch) >= 3:
            labels, indices = torch.as_tensor(batch[1]), torch.as_tensor(batch[2])
            for index in indices[labels == SKIPPED].tolist():
                note(int(index))
        return batch

    @property
    def targets(self) -> dict[str, list[int]]:
        """Attack set name -> per file, the class its attack aimed at (-1: none), for the sets whose dataset says
        (:attr:`ami_lightning.data.datasets.FaceFiles.targets`)."""
        return self._per_file("targets")

    @property
    def faces(self) -> dict[str, list[str]]:
        """Attack set name -> per file, the face it was made from, for the sets whose dataset says
        (:attr:`ami_lightning.data.datasets.FaceFiles.faces`)."""
        return self._per_file("faces")

    def _per_file(self, attribute: str) -> dict[str, list[Any]]:
        return {name: list(getattr(dataset, attribute)) for name, dataset in self.datasets.items()
                if name != "benign" and hasattr(dataset, attribute)}

    @property
    def skipped(self) -> dict[str, dict[Path, str]]:
        """Set name -> {path: reason} of the files skipped so far, in the order of the set's files (empty for
        datasets that do not skip, e.g. in-memory probes). Under ``torch.distributed`` with several processes it
        gathers every process's records, so it is a collective call: every process must read it."""
        local = {name: dict(getattr(dataset, "skipped", {})) for name, dataset in self.datasets.items()}
        records: list[Any] = [local]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            records = [None] * dist.get_world_size()
            dist.all_gather_object(records, local)
        merged: dict[str, dict[Path, str]] = {}
        for name, dataset in self.datasets.items():
            files = {path: reason for part in records for path, reason in part[name].items()}
            order = {path: i for i, path in enumerate(getattr(dataset, "paths", ()))}
            merged[name] = dict(sorted(files.items(), key=lambda item: order.get(item[0], len(order))))
        return merged
