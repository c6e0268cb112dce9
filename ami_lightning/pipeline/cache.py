"""Cache keys of the stages: exactly what changes a stage's output, nothing that does not.

A key holds the stage's code version (:data:`STAGE_VERSIONS`: bump it in the commit that changes what the stage's own
writer produces), a digest of the components' code (:func:`code_digest`: an attack's, a detector's), the model's
identity (its config without run-time knobs such as ``batch_size``, every file or folder it
names replaced by a digest of its content) and the stage's own inputs (attack parameters, faces, seed, witness rule,
the detector an adaptive set attacks). Batch size, workers, device and logger are never part of a key.

File digests (SHA-256) are remembered in ``<cache_dir>/digests.json`` by path, size and modification time, so a
580 MB weights file is read once, not at every run; a file replaced at the same path gets a new digest.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ami_lightning.pipeline.files import write_text

STAGE_VERSIONS: dict[str, int] = {
    "witnesses": 2,  # 2: key with content digests of the weights and the landmark models
    # the writer of the sets (pipeline/generation.py, data/sample_files.py, data/manifest.py); the attacks' and the
    # detectors' own code is in each set's key by digest (stages.attack_set_key). 2: key with content digests, without
    # batch size; 3: rows carry the face seed; 4: orthogonal PGD's projection fix (now covered by the digest)
    "attacks": 4,
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


def _read_source(path: Path) -> bytes:
    """The bytes of a source file (one seam: tests hand in an edited copy)."""
    return path.read_bytes()


def _module_of(name: str) -> ModuleType | None:
    """The imported module ``name``, or None when there is no such module (an attribute, a missing optional)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _source_file(module: ModuleType) -> Path | None:
    """The ``.py`` file of a module (None for a namespace, a built-in or an extension)."""
    file = getattr(module, "__file__", None)
    return Path(file).resolve() if file and file.endswith(".py") else None


def _imported(module: ModuleType, roots: frozenset[str]) -> set[str]:
    """The modules under ``roots`` (top-level package names) that ``module``'s source imports anywhere (at the top or
    inside functions). ``from package import name`` counts the module that defines ``name`` (a package's
    ``__init__`` re-exports are looked through, not counted: a facade that imports every attack would otherwise
    tie every attack to every other)."""
    path = _source_file(module)
    if path is None:
        return set()
    found: set[str] = set()
    for node in ast.walk(ast.parse(_read_source(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = (importlib.util.resolve_name("." * node.level + (node.module or ""), module.__package__)
                    if node.level else node.module or "")
            parent = _module_of(base) if base.split(".")[0] in roots else None
            if parent is None:
                continue
            if not hasattr(parent, "__path__"):  # a plain module: the names are its own
                found.add(base)
                continue
            for alias in node.names:  # a package: each name's submodule, or the module(s) holding the object
                value = getattr(parent, alias.name, None)
                if isinstance(value, ModuleType):
                    found.add(value.__name__)
                elif isinstance(getattr(value, "__module__", None), str):  # a class or function: where it is defined
                    found.add(value.__module__)
                elif _module_of(f"{base}.{alias.name}") is not None:
                    found.add(f"{base}.{alias.name}")
                else:  # a constant re-exported by the package: every submodule that holds that very object
                    holders = {name for name, held in list(sys.modules.items()) if name.startswith(f"{base}.")
                               and getattr(held, alias.name, None) is value}
                    found |= holders or {base}
    return {name for name in found if name.split(".")[0] in roots}


def code_digest(obj: Any) -> str:
    """SHA-256 (16 hex) of the source of the code behind ``obj`` (a class, function or module): the ``.py`` file of
    the module that defines it and of every module of its own top-level package or of ``ami_lightning`` that it
    imports, transitively (packages' ``__init__`` re-exports looked through, see :func:`_imported`). Editing any of
    them changes the digest; editing a module it does not reach does not (Feature Squeezing's digest does not move
    when AmI's module is edited, an attack's when another attack's is)."""
    module = obj if isinstance(obj, ModuleType) else inspect.getmodule(obj)
    if module is None or _source_file(module) is None:
        raise ValueError(f"no source file for {obj!r}: its cache entries cannot follow its code")
    roots = frozenset({module.__name__.split(".")[0], "ami_lightning"})
    seen: dict[str, Path] = {}
    pending = [module.__name__]
    while pending:
        name = pending.pop()
        imported = sys.modules.get(name) or _module_of(name)
        path = _source_file(imported) if imported is not None else None
        if name in seen or path is None:
            continue
        seen[name] = path
        pending += sorted(_imported(imported, roots) - seen.keys())
    digest = hashlib.sha256()
    for name in sorted(seen):
        digest.update(name.encode() + b"\0" + _read_source(seen[name]) + b"\0")
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
