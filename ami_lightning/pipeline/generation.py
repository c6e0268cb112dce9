"""Generating whole attack sets: batched, resumable, sharded across processes, in the published formats.

:func:`generate` writes ``<out_dir>/<set>/<VGG Face file name>.npy|.png|.jpg`` (the input's file name with the
format's extension) and a JSON-lines manifest, one entry per sample: ``file``, ``source``, ``identity``, ``label``,
``target`` (-1 when untargeted; for the adaptive sets, the target the attack chose), ``original_pred``,
``adversarial_pred``, ``success``, ``l0`` / ``l2`` / ``linf`` (pixel units; L0 counts pixel positions),
``iterations``, ``seed`` (the face's random seed) and ``seconds`` (the sample's share of its batch's attack time),
then what the float results depend on (:func:`numerics_record`). Predictions, success and
distortions describe the file as stored: what an 8-bit PNG or a JPEG decodes to, not the float pixels the attack
ended with.

Formats (:mod:`ami_lightning.data.sample_files`): ``npy`` float32 (3, H, W), RGB, pixels 0-255 (the published C&W /
FGSM / BIM format); ``png`` 8-bit RGB, lossless (patch and eyeglasses); ``jpg`` 8-bit JPEG, as the release stored its
patch and eyeglass samples. Manifests are read and written by :mod:`ami_lightning.data.manifest`.

Resuming: a sample is done when it has a manifest entry and its file exists and looks whole (:func:`damage`: the
header and length of a ``.npy``, the first and last bytes of a PNG or JPEG, no decoding); those are skipped. A
logged file that looks damaged is made again, with a :class:`DamagedSampleWarning` naming it. Each file is written
through :func:`ami_lightning.pipeline.files.write_bytes` (a temporary name private to this process, synced, renamed into
place, removed on any error such as a full disk) and only then is its entry appended (flushed and synced), so a kill
at any point leaves no half-written file under a real name and no entry without its file; a torn last manifest line
is ignored by the reader (:mod:`ami_lightning.data.manifest`, shared with the datasets) and cut off when the manifest
is next appended to. At the end the manifest is rewritten with exactly one entry per file (the last one), sorted by
file name.

Concurrent runs: the work on one set (one share of it when sharded) is done holding a file lock
(:func:`ami_lightning.pipeline.files.exclusive`: ``<out_dir>/<set>.lock``, for a shard
``<set>.manifest.rank<r>.jsonl.lock``);
a second process on the same set waits, then reads the manifest again and attacks only what is still missing (after
a first process that finished: nothing). Temporary files that killed writers of the share left are removed then
(:func:`ami_lightning.pipeline.files.remove_stale_temporaries`, and the generator's former ``<name>.tmp``).
A share that is already finished, with a tidy manifest, is returned without creating, locking or opening anything
for writing, so a complete cache also works on a read-only filesystem.

Sharding: the samples are cut into a multiple of 8 consecutive batches of near-equal size, at most ``batch_size`` each
(one sample each for a set of fewer than 8), and process ``rank`` of ``world_size`` takes the batches
``rank::world_size`` (:func:`batch_shares`): every process gets work when there are at least ``world_size`` samples,
every batch holds the same faces with 1 to 8 processes, and each face's random numbers come from its own seed
(:func:`~ami_lightning.attacks.base.face_seed`), so 1 and N <= 8 processes write the same files (byte-identical for the
same torch, device, CPU instruction set and per-process thread count: :func:`numerics_record`; beyond 8 processes, see
:func:`batch_shares`). A process without a batch still takes part in every collective call. Each process logs to its own
``manifest.rank<r>.jsonl``; :func:`merge_manifests` joins the shards into ``manifest.jsonl`` (done by rank 0 after a
barrier when ``torch.distributed`` is initialised, e.g. by a Lightning trainer's strategy:
:class:`ami_lightning.pipeline.distributed.LightningRunner`; call it yourself when running ranks by hand). A face logged
in any manifest of the folder counts as done, so a rerun after a kill, with any number of processes, attacks exactly the
faces still missing (a single process also merges the shards an earlier run left).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ami_lightning.attacks.base import TARGET_MODES, distortions, face_seed, is_success, make_targets
from ami_lightning.attacks.registry import FILE_FORMATS, AttackSpec, create_attack, get_spec
from ami_lightning.data.datasets import FaceFileError
from ami_lightning.data.identities import identity_from_filename
from ami_lightning.data.manifest import (
    MANIFEST,
    Row,
    append_row,
    manifest_text,
    merge_manifests,
    merge_shards,
    open_log,
    read_manifest,
    shard_manifest,
    share_lock,
    write_manifest,
)
from ami_lightning.data.sample_files import DamagedSampleWarning, damage, decode, encode, output_name
from ami_lightning.detectors.base import Detector
from ami_lightning.pipeline.files import exclusive, remove_stale_temporaries, write_bytes

Item = tuple[torch.Tensor, int, int]


class FaceDataset(Protocol):
    """What :func:`generate` reads, e.g. :class:`ami_lightning.data.datasets.FaceFiles`: items
    ``(pixels (3, H, W) float RGB in [0, 255], label, index)``, and the source file of each index in ``paths``."""

    paths: Sequence[Path]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Item: ...


# ---- the run ------------------------------------------------------------------------------------------------------
def rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): those given, else ``torch.distributed``'s when it is initialised, else (0, 1)."""
    distributed = dist.is_available() and dist.is_initialized()
    world_size = world_size if world_size is not None else dist.get_world_size() if distributed else 1
    rank = rank if rank is not None else dist.get_rank() if distributed else 0
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
    return rank, world_size


def source_item(dataset: FaceDataset, index: int) -> Item:
    """Item ``index`` of the faces to attack; a :class:`~ami_lightning.data.datasets.FaceFileError` names the file and
    the problem (not how a data set may skip it: generation needs every face)."""
    try:
        return dataset[index]
    except FaceFileError as err:
        raise FaceFileError.of(err.path or dataset.paths[index], f"{err.problem} (attack generation needs every "
                                                                 "face it is given)") from err.__cause__


def image_shape(dataset: FaceDataset, index: int) -> tuple[int, ...]:
    """The pixel shape (3, H, W) of item ``index``, which every item of a run must share; ``ValueError`` naming the
    file if it is not (3, H, W)."""
    shape = tuple(source_item(dataset, index)[0].shape)
    if len(shape) != 3 or shape[0] != 3:
        raise ValueError(f"{dataset.paths[index]}: pixels of shape {shape}, expected (3, H, W)")
    return shape


@dataclass(frozen=True)
class CheckingCollate:
    """A DataLoader collate (picklable, for worker processes) for items (pixels, label, index) that raises
    ``ValueError`` naming the file whose pixels are not of ``shape``, or whose label is negative (a file that the
    dataset could not read and skipped); returns (pixels (B, 3, H, W) float, labels (B,), indices (B,))."""

    paths: Sequence[Path]
    shape: tuple[int, ...]

    def __call__(self, items: list[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for pixels, label, index in items:
            if tuple(pixels.shape) != self.shape:
                raise ValueError(f"{self.paths[index]}: pixels of shape {tuple(pixels.shape)}, expected {self.shape}")
            if label < 0:
                raise ValueError(f"{self.paths[index]}: the dataset could not read it (label {label})")
        pixels, labels, index = zip(*items, strict=True)
        return torch.stack(pixels).float(), torch.tensor(labels), torch.tensor(index)


def synchronise(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that wall-clock times mean something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner(Protocol):
    """How a share's batches are attacked: :class:`InProcess` here, or through a Lightning trainer's strategy
    (:class:`ami_lightning.pipeline.distributed.LightningRunner`). ``collective``: every process of the run must call
    it once per set, even with nothing to do (it synchronises the processes)."""

    collective: bool

    def __call__(self, run: Run, batches: list[list[int]], manifest: Path, bar: tqdm) -> None:
        """Attack ``batches`` (lists of dataset indices), writing each file and its row to ``manifest``; ``bar``
        advances by each batch's size."""


@dataclass(frozen=True)
class InProcess:
    """The batches attacked one after the other in this process, on ``device``, their images loaded by
    ``num_workers`` DataLoader workers."""

    device: torch.device
    num_workers: int = 0
    collective: bool = False

    def __call__(self, run: Run, batches: list[list[int]], manifest: Path, bar: tqdm) -> None:
        with open_log(manifest) as log:
            for pixels, labels, index in run.loader(batches, self.num_workers):
                run.write(log, run.attack_batch(pixels.to(self.device), labels.to(self.device), index))
                bar.update(len(index))


BATCH_MULTIPLE = 8
"""A set is cut into a multiple of this many batches (:func:`batch_shares`), so that up to this many processes
share it whatever its size, with batches that do not depend on the number of processes."""


def batch_shares(count: int, batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """Process ``rank``'s batches (lists of sample indices) of a set of ``count`` samples.

    The samples are cut into n consecutive batches of near-equal size (sizes differ by at most one, the longer ones
    first): n is the smallest multiple of m whose batches hold at most ``batch_size`` samples, or ``count`` (one
    sample each) if that is fewer, with m = :data:`BATCH_MULTIPLE` (8) for up to 8 processes, else
    ``world_size`` rounded up to a multiple of 8. Batch b goes to process b mod ``world_size``. So every process
    gets a batch when ``count >= world_size`` (n >= min(count, world_size)), and the shares differ by at most one
    batch (one sample when ``world_size`` divides n). The batches depend on ``count``, ``batch_size`` and m only:
    runs with 1 to 8 processes (or any two numbers of processes in the same block 9-16, 17-24, ...) attack the
    same batches, so batched kernels (whose float results depend on the batch) give byte-identical files.
    Examples with ``batch_size`` 32: 8 samples -> 8 batches of 1; 100 -> 8 batches of 13 or 12; 300 -> 16 batches
    of 19 or 18."""
    if count < 0 or batch_size < 1:
        raise ValueError(f"batch_shares needs count >= 0 and batch_size >= 1, got count={count}, "
                         f"batch_size={batch_size}")
    multiple = BATCH_MULTIPLE * -(-world_size // BATCH_MULTIPLE)
    n = min(count, multiple * -(-count // (multiple * batch_size)))
    size, longer = divmod(count, n) if n else (0, 0)
    starts = [b * size + min(b, longer) for b in range(n + 1)]
    batches = [list(range(starts[b], starts[b + 1])) for b in range(n)]
    return batches[rank::world_size]


def generate(
    attack_set: str | AttackSpec,
    model: nn.Module,
    dataset: FaceDataset,
    out_dir: str | Path,
    params: Mapping[str, Any] | None = None,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    num_classes: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    file_format: str | None = None,
    target_mode: str | None = None,
    jpeg_quality: int = 95,
    num_workers: int = 0,
    progress: bool = True,
    detector: Detector | None = None,
    label: str | None = None,
    seed: int = 0,
    runner: Runner | None = None,
) -> Path:
    """Attack this process's share of ``dataset`` with set ``attack_set`` and write it under ``out_dir/<set>``;
    returns that folder. See the module docstring for the files, the manifest, resuming and sharding.

    ``model``: pixels (B, 3, H, W) in [0, 255] -> logits (B, K), already on ``device`` (default: its parameters'
    device). ``dataset``: e.g. ``FaceFiles(paths, labels)`` of VGG Face file names (labels from a names list:
    ``FaceFiles.from_folder(folder, names)``). ``params``: overrides of the attack's constructor (budgets, eps).
    ``batch_size``: the most samples per batch (:func:`batch_shares` cuts the set). ``num_classes``: K for ``next``
    targets (default: from the model's logits). ``file_format``: ``npy``, ``png``
    or ``jpg`` (default: the set's :attr:`AttackSpec.file_format`); ``target_mode``: ``first``, ``next`` or
    ``untargeted`` (default: the set's). ``rank`` / ``world_size``: default from ``torch.distributed`` if
    initialised, else 0 / 1. ``detector``: the detector on ``model`` that an adaptive set attacks (required
    for them, unused by the others). ``label``: the progress bar's (default: the set's name; the pipeline gives
    the config's set name, e.g. ``adaptive_gradient_fs``). ``seed``: the run's seed, from which each face's random
    numbers are drawn (:func:`~ami_lightning.attacks.base.face_seed` of the seed, the set's name and the source
    file's name). ``runner``: how the batches are attacked (default :class:`InProcess` on ``device`` with
    ``num_workers`` loader workers).

    Bad input raises before any sample is attacked where it can be seen up front: an unknown set (``KeyError``),
    parameters the attack rejects (``TypeError``), an unknown target mode or format, a source file name that does
    not follow the VGG Face rule, two sources with one output name, a bad line in the middle of a manifest
    (:class:`~ami_lightning.data.manifest.ManifestError`), a first image that is not (3, H, W) (``ValueError``); a
    bad file (unreadable, truncated, of another size than the first: for ``FaceFiles`` a
    :class:`~ami_lightning.data.datasets.FaceFileError`) raises a ``ValueError`` naming the file when its batch is
    loaded (the samples before it are kept).

    Another process generating the same set (the same share) is waited for (file lock), and its samples are reused.
    When the share is already finished and its manifest tidy, nothing is written, locked or created.
    """
    spec = attack_set if isinstance(attack_set, AttackSpec) else get_spec(attack_set)
    label = label or spec.name
    attack = create_attack(spec, **dict(params or {}), **({"detector": detector} if spec.needs_detector else {}))
    file_format = file_format or spec.file_format
    target_mode = target_mode or spec.target_mode
    if file_format not in FILE_FORMATS:
        raise ValueError(f"unknown file format {file_format!r}; expected one of {FILE_FORMATS}")
    if target_mode not in TARGET_MODES:
        raise ValueError(f"unknown target mode {target_mode!r}; expected one of {TARGET_MODES}")
    rank, world_size = rank_and_world(rank, world_size)
    if runner is None:
        device = torch.device(device) if device is not None else next(model.parameters()).device
        runner = InProcess(device, num_workers)

    names = [output_name(p, file_format) for p in dataset.paths]
    if len(set(names)) != len(names):
        clash = next(name for name in names if names.count(name) > 1)
        raise ValueError(f"two source files give the output name {clash!r}")
    batches = batch_shares(len(dataset), batch_size, rank, world_size)
    mine = [i for batch in batches for i in batch]
    identities = {i: identity_from_filename(dataset.paths[i]) for i in mine}  # ValueError naming a bad file name
    folder = Path(out_dir) / spec.folder
    manifest = folder / (MANIFEST if world_size == 1 else shard_manifest(rank))
    share = Share(folder, manifest, [names[i] for i in mine])
    run = Run(attack, model, dataset, names, identities, folder, file_format, target_mode, jpeg_quality, num_classes,
              {i: face_seed(seed, spec.name, Path(dataset.paths[i]).name) for i in mine})
    bar = tqdm(total=len(mine), unit="img", disable=not progress,
               desc=label if world_size == 1 else f"{label} [{rank}/{world_size}]")
    with bar:
        if share.finished():  # nothing is created, locked or opened for writing
            if runner.collective:
                runner(run, [], manifest, bar)
        else:
            with exclusive(share_lock(folder, manifest)):
                folder.mkdir(parents=True, exist_ok=True)
                share.remove_stale_temporaries()
                pending = set(share.todo(warn=True))  # again: another process may have done them while this one waited
                todo = [kept for batch in batches if (kept := [i for i in batch if names[i] in pending])]
                bar.update(len(mine) - sum(map(len, todo)))
                if todo or runner.collective:
                    if todo:
                        run.check_shape(todo[0][0])
                    runner(run, todo, manifest, bar)
                share.finish()
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()
        if rank == 0 and any(folder.glob(shard_manifest("*"))):
            merge_manifests(folder)
        dist.barrier()
    return folder


@dataclass(frozen=True)
class Share:
    """The files ``names`` of one process's share of a set in ``folder``, logged to ``manifest``."""

    folder: Path
    manifest: Path
    names: list[str]

    def logged(self) -> dict[str, Row]:
        """Rows of the set's manifest and of every shard's (those of an earlier run with another number of
        processes count too); this share's win."""
        shards = sorted(self.folder.glob(shard_manifest("*")))
        return {name: row for path in (self.folder / MANIFEST, *shards, self.manifest)
                for name, row in read_manifest(path).items()}

    def sharded(self) -> bool:
        """Whether this share is one process's of several (it logs to a shard manifest)."""
        return self.manifest.name != MANIFEST

    def finished(self) -> bool:
        """Every file of the share logged and present, its manifest tidy and, for an unsharded run, no shard
        manifest left to merge."""
        if self.todo() or not self.tidy():
            return False
        return self.sharded() or not any(self.folder.glob(shard_manifest("*")))

    def finish(self) -> None:
        """Rewrite the share's manifest tidy (:meth:`tidy`); an unsharded run also merges any shard manifests left
        by an earlier run with several processes. Call it holding the share's lock."""
        if not self.sharded():
            merge_shards(self.folder)
        elif not self.tidy():
            write_manifest(self.manifest, self.finished_rows())

    def todo(self, warn: bool = False) -> list[str]:
        """The names of the share without both a manifest row and a whole file (:func:`damage`), in order; ``warn``:
        a :class:`DamagedSampleWarning` for each damaged file."""
        logged = self.logged()
        todo = []
        for name in self.names:
            path = self.folder / name
            if name not in logged or not path.is_file():
                todo.append(name)
            elif (problem := damage(path)) is not None:
                todo.append(name)
                if warn:
                    warnings.warn(f"cached attack sample {path} is damaged ({problem}); attacking its face again",
                                  DamagedSampleWarning, stacklevel=2)
        return todo

    def finished_rows(self) -> dict[str, Row]:
        """The rows of this share's manifest whose file exists (the last row per file)."""
        return {name: row for name, row in read_manifest(self.manifest).items() if (self.folder / name).is_file()}

    def remove_stale_temporaries(self) -> None:
        """Remove what killed writers of this share left behind: temporary files of the share's sample files and of
        its manifest, under :mod:`ami_lightning.pipeline.files`' private names
        (:func:`~ami_lightning.pipeline.files.remove_stale_temporaries`) or the generator's former ones
        (``<name>.tmp``). Call it holding the share's lock: then no live writer of this share owns them."""
        mine = [*self.names, self.manifest.name]
        remove_stale_temporaries(self.folder, mine)
        for name in mine:
            (self.folder / f"{name}.tmp").unlink(missing_ok=True)

    def tidy(self) -> bool:
        """Whether the share's manifest holds exactly :meth:`finished_rows`, sorted, one line each (a missing
        manifest of a share with no rows counts as tidy once the folder exists)."""
        if not self.folder.is_dir():
            return False
        text = self.manifest.read_text(encoding="utf-8") if self.manifest.is_file() else ""
        return text == manifest_text(self.finished_rows())


def numerics_record(batch_size: int, device: torch.device) -> dict[str, Any]:
    """What a sample's float results depend on besides its inputs, for its manifest row (``batch_size``: the size of the
    batch it was attacked in). On a CPU, the attack files are byte-identical for the same torch, CPU instruction set,
    intra-op thread count and batch (under any load); the thread count changes them through oneDNN's convolution
    backward, the batch size through the batched kernels (differences of ~1e-6 that an iterative attack amplifies)."""
    record: dict[str, Any] = {"batch_size": batch_size, "torch": torch.__version__}
    if device.type == "cpu":
        record |= {"torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    else:
        record["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    return record


@dataclass(frozen=True)
class BatchesOf(Dataset):
    """Item b: the batch ``batches[b]`` of ``dataset`` put together by ``collate`` (for a DataLoader with
    ``batch_size=None``, so that each batch holds exactly the samples given, in any number of worker processes)."""

    dataset: FaceDataset
    batches: list[list[int]]
    collate: CheckingCollate

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.collate([source_item(self.dataset, i) for i in self.batches[b]])


Output = list[tuple[str, bytes, Row]]  # per sample: file name, file bytes, manifest row


@dataclass
class Run:
    """What :func:`generate` attacks with and writes to: :meth:`attack_batch` attacks one batch, :meth:`write`
    stores its files and rows (a :class:`Runner` chains them)."""

    attacker: Any
    model: nn.Module
    dataset: FaceDataset
    names: list[str]
    identities: dict[int, str]
    folder: Path
    file_format: str
    target_mode: str
    jpeg_quality: int
    num_classes: int | None
    seeds: dict[int, int]
    shape: tuple[int, ...] = ()

    def check_shape(self, index: int) -> None:
        """Take the pixel shape (3, H, W) that every item must share from item ``index`` (:func:`image_shape`)."""
        self.shape = image_shape(self.dataset, index)

    def loader(self, batches: list[list[int]], num_workers: int = 0) -> DataLoader:
        """The ``batches`` (lists of dataset indices) as a DataLoader of (pixels (B, 3, H, W), labels (B,),
        indices (B,)), checked by :class:`CheckingCollate`."""
        collate = CheckingCollate(self.dataset.paths, self.shape)
        return DataLoader(BatchesOf(self.dataset, batches, collate), batch_size=None, num_workers=num_workers)

    def attack_batch(self, pixels: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> Output:
        """Attack one batch: pixels (B, 3, H, W) and labels (B,) on the model's device, ``index`` (B,) dataset
        indices. Returns, per sample, its file name, the bytes of its file and its manifest row."""
        model = self.model
        model.eval()
        with torch.no_grad():
            logits = model(pixels)
        targets = make_targets(labels, self.target_mode, self.num_classes or logits.shape[1])
        seeds = torch.tensor([self.seeds[i] for i in index.tolist()], dtype=torch.int64)
        synchronise(pixels.device)
        start = time.perf_counter()
        with torch.enable_grad():
            result = self.attacker(model, pixels, labels, targets, seeds)
        synchronise(pixels.device)
        seconds = (time.perf_counter() - start) / len(labels)
        targets = result.targets if result.targets is not None else targets
        files = [encode(adversarial, self.file_format, self.jpeg_quality) for adversarial in result.adversarial]
        stored = torch.stack([decode(data, self.file_format) for data in files]).to(pixels.device)
        with torch.no_grad():
            stored_logits = model(stored)
        columns = {
            "label": labels,
            "target": targets if targets is not None else torch.full_like(labels, -1),
            "original_pred": logits.argmax(1),
            "adversarial_pred": stored_logits.argmax(1),
            "success": is_success(stored_logits, labels, targets),
            **dict(zip(("l0", "l2", "linf"), distortions(stored, pixels), strict=True)),
            "iterations": result.iterations,
        }
        values = {key: column.tolist() for key, column in columns.items()}
        numerics = numerics_record(len(labels), pixels.device)  # the batch's own size (batch_shares)
        return [(self.names[i], files[j],
                 {"file": self.names[i], "source": str(self.dataset.paths[i]), "identity": self.identities[i],
                  **{key: column[j] for key, column in values.items()}, "seed": self.seeds[i], "seconds": seconds,
                  **numerics})
                for j, i in enumerate(index.tolist())]

    def write(self, log: IO[str], output: Output) -> None:
        """Store each sample's file (atomically, synced), then append its row to the open manifest ``log``."""
        for name, data, row in output:
            write_bytes(self.folder / name, data, durable=True)
            append_row(log, row)
