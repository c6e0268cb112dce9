"""Cache keys of the stages: exactly what changes a stage's output, nothing that does not.

A key holds the stage's code version (:data:`STAGE_VERSIONS`: bump it in the commit that changes what the stage
produces), the model's identity (its config without run-time knobs such as ``batch_size``, every file or folder it
names replaced by a digest of its content) and the stage's own inputs (attack parameters, faces, seed, witness rule,
the detector an adaptive set attacks). Batch size, workers, device and logger are never part of a key.

File digests (SHA-256) are remembered in ``<cache_dir>/digests.json`` by path, size and modification time, so a
580 MB weights file is read once, not at every run; a file replaced at the same path gets a new digest.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ami_lightning.pipeline.files import write_text

STAGE_VERSIONS: dict[str, int] = {
    "witnesses": 2,  # 2: key with content digests of the weights and the landmark models
    "attacks": 4,  # 2: key with content digests, without batch size; 3: rows carry the face seed; 4: orthogonal PGD
    # projects at any gradient scale (it skipped the projection where a norm underflowed in float32)
    "benign": 1,  # a detector's records on the benign set (ami_lightning/pipeline/benign.py)
}
"""Version of each cached stage's code: bump in the commit that changes what the stage writes."""

RUNTIME_KEYS: frozenset[str] = frozenset({"batch_size", "num_workers", "device"})
"""Model-config keys that change how fast a model runs, never what it computes."""

_DIGESTS = "digests.json"


def cache_key(*parts: Any) -> str:
    """A short stable hash (12 hex) of JSON-able parts (configs as containers)."""
    blob = json.dumps([OmegaConf.to_container(p, resolve=True) if isinstance(p, DictConfig) else p for p in parts],
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def code_digest(obj: Any) -> str:
    """SHA-256 (16 hex) of the source of the code that defines ``obj`` (a class, function or module): every ``.py``
    file of the folder of the module that defines it (its sibling modules, which it may import: AmI's steering,
    Feature Squeezing's NLM). Editing any of them changes the digest; editing code elsewhere does not."""
    try:
        source = inspect.getsourcefile(obj)
    except TypeError:
        source = None
    if source is None:
        raise ValueError(f"no source file for {obj!r}: its cache entries cannot follow its code")
    digest = hashlib.sha256()
    for path in sorted(Path(source).resolve().parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """SHA-256 (hex) of a file's content; remembered under ``cache_dir`` by (resolved path, size, mtime) when
    given. A read-only cache folder is used for reading only."""
    path = Path(path).resolve()
    stat = path.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    store = Path(cache_dir) / _DIGESTS if cache_dir is not None else None
    known: dict[str, Any] = {}
    if store is not None and store.is_file():
        try:
            known = json.loads(store.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            known = {}  # a damaged memo is rebuilt, never trusted
    entry = known.get(str(path))
    if entry and {k: entry.get(k) for k in stamp} == stamp:
        return str(entry["sha256"])
    digest = _sha256(path)
    if store is not None:
        known[str(path)] = {**stamp, "sha256": digest}
        try:
            write_text(store, json.dumps(known, indent=1, sort_keys=True) + "\n")
        except OSError:
            pass  # read-only cache: the digest is still right, only not remembered
    return digest


def content_identity(value: Any, cache_dir: str | Path | None = None) -> Any:
    """``value`` (containers of config values) with every string that names an existing file replaced by
    ``{"sha256": digest}`` and every existing folder by the sorted digests of its files, recursively."""
    if isinstance(value, Mapping):
        return {str(k): content_identity(v, cache_dir) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [content_identity(v, cache_dir) for v in value]
    if isinstance(value, str) and value and not value.startswith(("http:", "https:")):
        path = Path(value)
        if path.is_file():
            return {"sha256": file_digest(path, cache_dir)}
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            return {"files": {str(p.relative_to(path)): file_digest(p, cache_dir) for p in files}}
    return value


def model_identity(model_cfg: DictConfig | Mapping[str, Any], cache_dir: str | Path | None = None) -> Any:
    """The model config without :data:`RUNTIME_KEYS` (at any depth), its files and folders as content digests."""

    def strip(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: strip(v) for k, v in value.items() if k not in RUNTIME_KEYS}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    plain = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else model_cfg
    return content_identity(strip(plain), cache_dir)
