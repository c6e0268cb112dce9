"""The one place for how ami-lightning writes files that others may read: atomically, safe under concurrent runs.

* :func:`atomic_path` / :func:`write_bytes` / :func:`write_text`: a file is only ever absent, old or complete. The
  content goes to a temporary name private to this process and call (``.<name>.<pid>.<random>.tmp`` beside it),
  is flushed (and, when ``durable``, synced to disk), then renamed over the target in one step; on any error the
  temporary file is removed, so a full disk or a kill leaves no ``*.tmp`` behind a finished file's name.
* :func:`building_dir`: the same for a folder (a cache entry): built under a private temporary name, then renamed
  into place (:func:`publish_dir`: a process that loses the race to another drops its copy and uses the winner's);
  removed when the build fails.
* :func:`exclusive`: a file lock (``filelock``) around work that two processes must not do twice, e.g. generating
  one attack set: the second process waits, then finds the first one's result.
* :func:`stale_temporaries` / :func:`remove_stale_temporaries`: what a killed writer left (a kill -9 or a power
  cut runs no clean-up): the private temporaries of some targets whose writer is gone, i.e. whose process id (in the
  name) runs no process on this machine, or that nobody touched for :data:`STALE_AFTER_S` (a process id reused
  since, or a writer on another machine sharing the folder). Remove them holding the lock that guards the targets:
  their live writers hold it too.
* A full disk (``ENOSPC``) while writing raises :class:`DiskFullError` naming the file (or cache entry) being
  written and the space left on its device (:func:`naming_full_disk`).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

STALE_AFTER_S = 24 * 3600
"""A private temporary untouched this long (seconds) is stale even if a process of its id runs here."""
_PRIVATE = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")  # :func:`_private_name`'s names


class DiskFullError(OSError):
    """``ENOSPC`` while writing ``filename``; the message names it and the free space left on its device."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        anchor = next(p for p in (path, *path.parents) if p.exists())
        free = shutil.disk_usage(anchor).free
        super().__init__(errno.ENOSPC, f"No space left on device while writing {path} ({_bytes(free)} free on the "
                                       f"device of {anchor}); free some space, or point paths.log_dir / "
                                       "paths.cache_dir to a larger disk, and run again", str(path))

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[type[DiskFullError], tuple[str]]:
        return type(self), (str(self.filename),)


def _bytes(count: int) -> str:
    """A byte count for people: ``512 B``, ``3.1 MB``, ``12.0 GB`` (powers of 1000, up to TB)."""
    power = min(len(str(max(count, 1))) - 1, 12) // 3
    return f"{count} B" if power == 0 else f"{count / 1000 ** power:.1f} {('kB', 'MB', 'GB', 'TB')[power - 1]}"


@contextmanager
def naming_full_disk(path: str | Path) -> Iterator[None]:
    """Turn an ``ENOSPC`` ``OSError`` of the block into a :class:`DiskFullError` naming ``path`` (one raised by an
    inner block, naming its own file, passes unchanged)."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise DiskFullError(path) from err


def _private_name(path: Path) -> Path:
    """A sibling of ``path`` that no other process or call uses: ``.<name>.<pid>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _running(pid: int) -> bool:
    """Whether another process ``pid`` runs on this machine (this process's own temporaries count as stale)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; a number no process can have
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_temporaries(folder: str | Path, targets: Iterable[str], stale_after: float = STALE_AFTER_S) -> list[Path]:
    """The private temporaries (files or folders ``.<target>.<pid>.<random>.tmp``) of the entries ``targets`` of
    ``folder`` whose writer is gone: no process ``pid`` runs on this machine, or untouched for ``stale_after``
    seconds. Reads only."""
    folder, targets = Path(folder), set(targets)
    stale = []
    for entry in folder.iterdir() if folder.is_dir() else ():
        match = _PRIVATE.fullmatch(entry.name)
        if match is None or match["target"] not in targets:
            continue
        try:
            age = time.time() - entry.lstat().st_mtime
        except FileNotFoundError:
            continue
        if not _running(int(match["pid"])) or age >= stale_after:
            stale.append(entry)
    return stale


def remove_stale_temporaries(folder: str | Path, targets: Iterable[str], stale_after: float = STALE_AFTER_S
                             ) -> list[Path]:
    """Remove :func:`stale_temporaries`; call it holding the lock that guards the targets. Returns what it
    removed."""
    stale = stale_temporaries(folder, targets, stale_after)
    for entry in stale:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return stale


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a private temporary path beside ``path``; when the block succeeds it replaces ``path`` in one step
    (the parent folder is created); when it fails the temporary file is removed and ``path`` is left as it was. A
    full disk raises :class:`DiskFullError` naming ``path``."""
    path = Path(path)
    tmp = _private_name(path)
    try:
        with naming_full_disk(path):
            path.parent.mkdir(parents=True, exist_ok=True)
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


@contextmanager
def building_dir(final: str | Path) -> Iterator[Path]:
    """Yield a new, empty folder beside ``final`` under a name private to this process and call; when the block
    succeeds it is published as ``final`` (:func:`publish_dir`), when it fails it is removed. A full disk raises
    :class:`DiskFullError` naming ``final`` (or the file of the block being written)."""
    final = Path(final)
    tmp = _private_name(final)
    try:
        with naming_full_disk(final):
            tmp.mkdir(parents=True)
            yield tmp
            publish_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once published


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
