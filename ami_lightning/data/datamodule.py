"""``AmIDataModule``: one benign test set and any number of attack sets, as Lightning test dataloaders."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, Sampler


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: disjoint shares that together cover every sample exactly once (unlike
    ``DistributedSampler``, which pads with repeats), so multi-process metrics equal the single-process ones."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


class AmIDataModule(pl.LightningDataModule):
    """Test dataloaders, in order: ``benign`` then each attack set of ``attacks`` (name -> dataset)."""

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
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=ShardSampler(len(dataset), rank, world),  # type: ignore[arg-type]
            num_workers=self.num_workers,
            persistent_workers=False,
        )

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(d) for d in self.datasets.values()]
