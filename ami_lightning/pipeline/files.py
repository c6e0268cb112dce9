"""The one place for how ami-lightning writes files that others may read: atomically, safe under concurrent runs.

* :func:`atomic_path` / :func:`write_bytes` / :func:`write_text`: a file is only ever absent, old or complete. The
  content goes to a temporary name private to this process and call (``.<name>.<pid>.<random>.tmp`` beside it),
  is flushed (and, when ``durable``, synced to disk), then renamed over the target in one step; on any error the
  temporary file is removed, so a full disk or a kill leaves no ``*.tmp`` behind a finished file's name.
* :func:`private_dir` / :func:`publish_dir`: the same for a folder (a cache entry): build it under a private
  temporary name, then rename it into place; a process that loses the race to another drops its copy and uses the
  winner's.
* :func:`exclusive`: a file lock (``filelock``) around work that two processes must not do twice, e.g. generating
  one attack set: the second process waits, then finds the first one's result.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock


def _private_name(path: Path) -> Path:
    """A sibling of ``path`` that no other process or call uses: ``.<name>.<pid>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a private temporary path beside ``path``; when the block succeeds it replaces ``path`` in one step
    (the parent folder is created); when it fails the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _private_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`); ``durable``: fsync before the rename, so the file
    survives a power cut as well as a kill."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        if durable:
            os.fsync(handle.fileno())
    return path


def write_text(path: str | Path, text: str, durable: bool = False) -> Path:
    """:func:`write_bytes` of ``text`` in UTF-8."""
    return write_bytes(path, text.encode("utf-8"), durable)


def private_dir(final: str | Path) -> Path:
    """A new, empty folder beside ``final`` under a name private to this process, to be filled and then published
    with :func:`publish_dir`."""
    tmp = _private_name(Path(final))
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: str | Path, final: str | Path) -> bool:
    """Rename the filled folder ``tmp`` to ``final`` in one step. If another process published ``final`` first,
    ``tmp`` is removed and False returned (the caller uses the winner's folder); True when ours was published."""
    tmp, final = Path(tmp), Path(final)
    try:
        os.rename(tmp, final)  # fails if final exists and is not empty (POSIX): the race is lost, not corrupted
        return True
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False


@contextmanager
def exclusive(path: str | Path, timeout: float = -1) -> Iterator[None]:
    """Hold the lock file ``<path>.lock`` for the block (``timeout`` seconds at most, -1: wait as long as it takes;
    ``filelock.Timeout`` past it). Another process entering the same block waits until this one leaves."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(path.name + ".lock")), timeout=timeout):
        yield
