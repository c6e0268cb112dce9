"""Every detector's benign pass once: the per-sample records of the benign set, computed once and cached.

A detector's records on the benign set are, per readable sample, the row ``(index, pred, label, flagged, score)``
(:data:`COLUMNS`: the sample's index in the set, the plain classifier's top-1, the true label, the flag by the
detector's rule and its score, float32 as the evaluation keeps them). Calibration reads its scores from them and the
evaluation reads them instead of running the detector on the benign set again, so no benign image goes through a
detector twice in a run, and a warm run (same model, benign set, detector and code) runs none through any detector.

For a detector whose rule is a threshold on its score (:meth:`~ami_lightning.detectors.base.Detector.
flags_from_scores`), the flags are recomputed from the scores once it is calibrated; the cached entry holds the
scores, which do not depend on the threshold. Records are cached under ``paths.cache_dir/benign/<key>.pt`` by
:func:`records_key`: the model's identity, the benign set's identity (:func:`benign_identity`), the detector's type and
score identity (:meth:`~ami_lightning.detectors.base.Detector.score_identity`: its parameters, AmI's witnesses,
not a calibrated threshold) and a digest of the detector's code.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ami_lightning.data.datasets import SKIPPED
from ami_lightning.detectors.base import Detector
from ami_lightning.detectors.fitting import prime
from ami_lightning.pipeline.cache import STAGE_VERSIONS, cache_key, code_digest, content_identity
from ami_lightning.pipeline.files import exclusive, write_bytes

COLUMNS = ("index", "pred", "label", "flagged", "score")
"""The columns of a records tensor (N, 5) float32."""

IDENTITY_ATTRIBUTE = "cache_identity"
"""The attribute of a benign dataset that identifies its content for cache keys (:func:`benign_identity`); a dataset
without it (a test's own) is never cached."""


def benign_identity(benign_cfg: Any, on_error: str, cache_dir: str | Path) -> Any:
    """What a benign set built from the config node ``benign_cfg`` (``data.benign``) is: the node with every file or
    folder it names replaced by content digests, and the bad-file policy."""
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(benign_cfg, resolve=True) if isinstance(benign_cfg, DictConfig) else benign_cfg
    return {"benign": content_identity(plain, cache_dir), "on_error": str(on_error)}


def records_key(model_key: Any, benign: Any, detector: Detector) -> str:
    """The cache key of ``detector``'s records on the benign set identified by ``benign``."""
    return cache_key("benign", STAGE_VERSIONS["benign"], model_key, benign, detector.kind, detector.score_identity(),
                     code_digest(type(detector)))


def records_path(cache_dir: str | Path, model_key: Any, dataset: Dataset, detector: Detector) -> Path | None:
    """Where ``detector``'s records on ``dataset`` are cached; None when the dataset has no cache identity."""
    identity = getattr(dataset, IDENTITY_ATTRIBUTE, None)
    if identity is None:
        return None
    return Path(cache_dir) / "benign" / f"{records_key(model_key, identity, detector)}.pt"


def load_records(path: Path | None) -> torch.Tensor | None:
    """The records (N, 5) float32 cached at ``path``; None when absent, unreadable or of the wrong shape (a damaged
    entry is computed again, never trusted)."""
    if path is None or not path.is_file():
        return None
    try:
        rows = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any damage means: compute again
        return None
    if not isinstance(rows, torch.Tensor) or rows.dim() != 2 or rows.shape[1] != len(COLUMNS):
        return None
    return rows.to(torch.float32)


def save_records(path: Path | None, rows: torch.Tensor) -> None:
    """Cache ``rows`` (N, 5) at ``path`` (atomically, under the entry's lock); nothing for None or a read-only
    cache."""
    if path is None:
        return
    buffer = io.BytesIO()
    torch.save(rows.detach().cpu().to(torch.float32).contiguous(), buffer)
    try:
        with exclusive(path):
            write_bytes(path, buffer.getvalue())
    except PermissionError:
        pass  # a read-only cache: the records are right, only not remembered


@torch.no_grad()
@torch.no_grad()
def compute_records(
    detectors: Mapping[str, Detector], dataset: Dataset, batch_size: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Per detector, its records (N, 5) on the readable samples of ``dataset`` (items ``(pixels, label, index)``,
    as the evaluation reads them), the plain forward (with the hooked layers detectors read) computed once per batch
    for all detectors (which share one classifier). A detector that :attr:`~Detector.needs_calibration` gets flag 0
    (its flags follow from the scores once calibrated: :func:`final_flags`)."""
    model = next(iter(detectors.values())).model
    found: dict[str, list[torch.Tensor]] = {name: [] for name in detectors}
    for batch in DataLoader(dataset, batch_size=batch_size):
        pixels, labels, index = batch[0], batch[1], batch[2]
        keep = labels != SKIPPED
        pixels, labels, index = pixels[keep].to(device).float(), labels[keep].to(device), index[keep].to(device)
        if len(labels) == 0:
            continue
        logits = prime(model, pixels, detectors.values())  # with the layers detectors read, once for all
        pred = logits.argmax(1)
        for name, detector in detectors.items():
            if detector.needs_calibration:
                score, flagged = detector.score(pixels, logits), torch.zeros_like(labels, dtype=torch.bool)
            else:
                score, flagged = detector.evaluate(pixels, logits)
            columns = (index, pred, labels, flagged, score.detach())
            found[name].append(torch.stack([c.to(torch.float32) for c in columns], 1).cpu())
    return {name: torch.cat(rows) if rows else torch.zeros(0, len(COLUMNS)) for name, rows in found.items()}


def final_flags(detector: Detector, rows: torch.Tensor) -> torch.Tensor:
    """``rows`` with the flag column recomputed from the scores where the detector's rule is a threshold on its
    score (:meth:`~Detector.flags_from_scores`; it must be calibrated); unchanged otherwise."""
    flags = detector.flags_from_scores(rows[:, 4])
    if flags is None:
        return rows
    rows = rows.clone()
    rows[:, 3] = flags.to(torch.float32)
    return rows


def benign_records(
    detectors: Mapping[str, Detector], dataset: Dataset, batch_size: int, device: torch.device,
    cache_dir: str | Path, model_key: Any, compute: bool = True,
) -> dict[str, torch.Tensor]:
    """Each detector's records (N, 5) on the benign ``dataset``: read from the cache, else (``compute``) computed in
    one pass for all the detectors without an entry (:func:`compute_records`) and cached. With ``compute=False`` only
    the cached ones are returned. Flags are as :func:`compute_records` leaves them (see :func:`final_flags`)."""
    paths = {name: records_path(cache_dir, model_key, dataset, d) for name, d in detectors.items()}
    found = {name: rows for name in detectors if (rows := load_records(paths[name])) is not None}
    missing = {name: d for name, d in detectors.items() if name not in found}
    if missing and compute:
        made = compute_records(missing, dataset, batch_size, device)
        for name, rows in made.items():
            save_records(paths[name], rows)
        found.update(made)
    return {name: found[name] for name in detectors if name in found}


def scores_of_eligible(rows: torch.Tensor) -> torch.Tensor:
    """The scores (M,) of the records whose plain top-1 is the true label (the benign samples the model gets right:
    :func:`~ami_lightning.evaluation.rates.eligible_mask`)."""
    from ami_lightning.evaluation.rates import eligible_mask

    return rows[:, 4][eligible_mask(rows[:, 1].long(), rows[:, 2].long(), adversarial=False)]
