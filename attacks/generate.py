"""Generating whole attack sets: batched, resumable, sharded across processes, in the published formats.

``generate`` writes ``<out_dir>/<set>/<VGG Face file name>.npy|.png`` and a JSON-lines manifest (one entry per
sample: file, source, identity, label, target, original and adversarial prediction, success, L0 / L2 / Linf,
iterations, seconds). Killed at any point and restarted, it skips the samples that have both a manifest entry and
their file; files are written to a temporary name and renamed, then the entry is appended and synced, so no
half-written file is ever taken as done.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ami_lightning.data.datasets import FaceFiles
from ami_lightning.identities import identity_from_filename
from attacks.base import make_targets
from attacks.registry import get_spec

MANIFEST = "manifest.jsonl"


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """Entries by file name (the last one wins); a torn last line (a kill mid-write) is ignored."""
    entries: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            entries[row["file"]] = row
    return entries


def _write_rows(path: Path, rows: Mapping[str, dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(rows[k]) + "\n" for k in sorted(rows)), encoding="utf-8")
    os.replace(tmp, path)


def merge_manifests(folder: Path) -> Path:
    """Merge ``manifest.rank*.jsonl`` shards (and any existing ``manifest.jsonl``) into one sorted manifest."""
    rows: dict[str, dict[str, Any]] = read_manifest(folder / MANIFEST)
    shards = sorted(folder.glob("manifest.rank*.jsonl"))
    for shard in shards:
        rows.update(read_manifest(shard))
    _write_rows(folder / MANIFEST, rows)
    for shard in shards:
        shard.unlink()
    return folder / MANIFEST


def _save(pixels: torch.Tensor, path: Path, file_format: str) -> None:
    """Atomically write float pixels (3, H, W) in [0, 255]: ``npy`` float32 RGB, or an 8-bit ``png``."""
    tmp = path.with_name(path.name + ".tmp")
    array = pixels.detach().cpu()
    with open(tmp, "wb") as handle:
        if file_format == "npy":
            np.save(handle, array.numpy().astype(np.float32))
        else:
            Image.fromarray(array.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()).save(handle, "PNG")
    os.replace(tmp, path)


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def generate(
    attack_set: str,
    model: nn.Module,
    dataset: FaceFiles,
    out_dir: Path,
    params: Mapping[str, Any] | None = None,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    num_classes: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> Path:
    """Attack every face of ``dataset`` (this process's share ``rank::world_size``) and write set ``attack_set``
    under ``out_dir``; returns the set's folder. ``params`` go to the attack's constructor (budgets, eps)."""
    spec = get_spec(attack_set)
    attack = spec.factory(**dict(params or {}))
    rank, world_size = _rank_world(rank, world_size)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    folder = Path(out_dir) / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / (MANIFEST if world_size == 1 else f"manifest.rank{rank}.jsonl")
    done = {f for f in read_manifest(manifest) if (folder / f).is_file()}
    out_names = [f"{Path(p).stem}.{spec.file_format}" for p in dataset.paths]
    todo = [i for i in range(rank, len(dataset), world_size) if out_names[i] not in done]
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(model(dataset[0][0][None].to(device)).shape[1])
    loader = DataLoader(Subset(dataset, todo), batch_size=batch_size, shuffle=False)
    with open(manifest, "a", encoding="utf-8") as log:
        for pixels, labels, index in tqdm(loader, desc=spec.name, unit="batch", disable=not todo):
            pixels, labels = pixels.to(device), labels.to(device)
            targets = make_targets(labels, spec.target, num_classes)
            start = time.perf_counter()
            result = attack(model, pixels, labels, targets)
            with torch.no_grad():
                original_pred, adversarial_pred = model(pixels).argmax(1), model(result.adversarial).argmax(1)
            seconds = (time.perf_counter() - start) / len(labels)
            columns = {"label": labels, "target": targets if targets is not None else torch.full_like(labels, -1),
                       "original_pred": original_pred, "adversarial_pred": adversarial_pred,
                       "success": result.success, "l0": result.l0, "l2": result.l2, "linf": result.linf,
                       "iterations": result.iterations}
            values = {k: v.tolist() for k, v in columns.items()}
            for j, i in enumerate(index.tolist()):
                _save(result.adversarial[j], folder / out_names[i], spec.file_format)
                row = {"file": out_names[i], "source": str(dataset.paths[i]),
                       "identity": identity_from_filename(dataset.paths[i]), **{k: v[j] for k, v in values.items()},
                       "seconds": seconds}
                log.write(json.dumps(row) + "\n")
                log.flush()
                os.fsync(log.fileno())
    if world_size == 1:
        rows = read_manifest(manifest)
        _write_rows(manifest, {f: r for f, r in rows.items() if (folder / f).is_file()})
    return folder
