"""The JSON-lines manifest of a generated attack set (``manifest.jsonl``): the one reader, shared by the generator
(:mod:`ami_lightning.pipeline.generation`, which resumes from it) and the datasets
(:meth:`ami_lightning.data.datasets.FaceFiles.from_manifest`, which evaluates from it), and its writers: rows appended
durably (:func:`append_row` through :func:`open_log`), per-process shards (:func:`shard_manifest`) merged into one
(:func:`merge_manifests`), the whole file replaced atomically (:func:`write_manifest`).

One JSON object per line, each with at least ``file`` (the sample's file, relative to the manifest's folder and
inside it, a string) and ``label`` (its true class, an integer). The generator appends one line per sample and
syncs it, so a kill can only tear the *last* line (no newline at its end): such a line is ignored, with a
:class:`TornManifestWarning` naming the manifest and the line. Any other bad line (not JSON, not an object, a
required key missing or of the wrong type, a ``file`` outside the manifest's folder: absolute, or leaving it
through ``..`` or a link) is a :class:`ManifestError` naming the manifest, the line number and the problem.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

from ami_lightning.pipeline.files import exclusive, naming_full_disk, write_text

MANIFEST = "manifest.jsonl"
REQUIRED_KEYS: tuple[str, ...] = ("file", "label")
Row = dict[str, Any]


class ManifestError(ValueError):
    """A manifest line that cannot be used; the message names the manifest, the line number and the problem."""


class TornManifestWarning(UserWarning):
    """A manifest's last line was cut short (a kill mid-append); the message names the manifest and the line."""


def _check_row(row: Any, where: str, required: Sequence[str], folder: Path, inside: Path) -> Row:
    """``row`` checked (``where``: the manifest and line, for messages); ``folder``: the manifest's folder, ``inside``
    the same resolved."""
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in required:
        if key not in row:
            raise ManifestError(f"{where}: missing key {key!r} (required: {', '.join(required)})")
    if "file" in row and (not isinstance(row["file"], str) or not row["file"]):
        raise ManifestError(f"{where}: 'file' must be a non-empty string, got {row['file']!r}")
    if "file" in row and not (inside / row["file"]).resolve().is_relative_to(inside):
        raise ManifestError(f"{where}: file {row['file']!r} is outside the manifest's folder {folder}; a manifest "
                            "names files in its own folder")
    if "label" in row and (not isinstance(row["label"], int) or isinstance(row["label"], bool)):
        raise ManifestError(f"{where}: 'label' must be an integer, got {row['label']!r}")
    return row


def read_rows(path: str | Path, required: Sequence[str] = REQUIRED_KEYS) -> list[Row]:
    """The rows of manifest ``path`` in file order (blank lines skipped; a torn last line ignored with a
    :class:`TornManifestWarning`); each has the keys ``required`` and names a file inside ``path``'s folder.
    ``ManifestError`` naming ``path`` and the line for any other bad line; ``FileNotFoundError`` if ``path`` does not
    exist."""
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline (or is empty): a line without one was cut short
    inside = path.parent.resolve()
    rows = []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"manifest {path}, line {lineno}"
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ManifestError(f"{where}: not valid JSON ({err})") from None
        rows.append(_check_row(row, where, required, path.parent, inside))
    if torn.strip():
        where = f"manifest {path}, line {len(lines) + 1}"
        try:
            row = json.loads(torn.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):  # torn by a kill mid-append: its sample is not finished
            text = torn.decode("utf-8", errors="replace")
            warnings.warn(f"{where} was cut short (no newline, not valid JSON: {text[:40]}"
                          f"{'...' if len(text) > 40 else ''}); its sample is left out (generating the set again "
                          "makes it)", TornManifestWarning, stacklevel=2)
            return rows
        rows.append(_check_row(row, where, required, path.parent, inside))
    return rows


def read_manifest(path: str | Path, required: Sequence[str] = REQUIRED_KEYS) -> dict[str, Row]:
    """The rows of manifest ``path`` by file name (the last row of a file wins), as :func:`read_rows`; a missing
    manifest is empty."""
    path = Path(path)
    if not path.is_file():
        return {}
    return {row["file"]: row for row in read_rows(path, required)}


def manifest_text(rows: Mapping[str, Row]) -> str:
    """The canonical text of a manifest: one line per row, sorted by file name."""
    return "".join(json.dumps(rows[name]) + "\n" for name in sorted(rows))


# ---- writers ------------------------------------------------------------------------------------------------------
def write_manifest(path: Path, rows: Mapping[str, Row]) -> None:
    """Atomically replace ``path`` with ``rows``, one line each, sorted by file name (synced)."""
    write_text(path, manifest_text(rows), durable=True)


def drop_torn_line(path: Path) -> None:
    """Cut a manifest back to its last complete line (a kill mid-append leaves a line without its newline)."""
    data = path.read_bytes() if path.is_file() else b""
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def append_row(handle: IO[str], row: Row) -> None:
    """Append ``row`` to an open manifest and make it durable (flush + fsync); a full disk raises
    :class:`~ami_lightning.pipeline.files.DiskFullError` naming the manifest."""
    with naming_full_disk(handle.name):
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def shard_manifest(rank: int | str) -> str:
    """The file name of rank ``rank``'s manifest shard."""
    return f"manifest.rank{rank}.jsonl"


def share_lock(folder: Path, manifest: Path) -> Path:
    """The path whose lock (:func:`ami_lightning.pipeline.files.exclusive`, ``<path>.lock``) guards the share of set
    folder
    ``folder`` logged to ``manifest``: the folder itself for an unsharded run, ``<folder>.<shard manifest>`` beside it
    for a shard (lock files stay out of the set folder)."""
    return folder if manifest.name == MANIFEST else folder.with_name(f"{folder.name}.{manifest.name}")


def merge_manifests(folder: str | Path) -> Path:
    """Join the shards ``manifest.rank*.jsonl`` of ``folder`` (and any ``manifest.jsonl`` already there) into one
    ``manifest.jsonl`` sorted by file, one entry per file that exists; the shards are then removed. Holds the set's
    lock and each shard's (as :func:`generate` does), so it waits for runs still writing to them."""
    folder = Path(folder)
    with exclusive(folder):
        return merge_shards(folder)


def merge_shards(folder: Path) -> Path:
    """:func:`merge_manifests` for a caller that holds the set's lock already (each shard's is taken here)."""
    with ExitStack() as locks:
        shards = sorted(folder.glob(shard_manifest("*")))
        for shard in shards:
            locks.enter_context(exclusive(share_lock(folder, shard)))
        rows = read_manifest(folder / MANIFEST)
        for shard in shards:
            rows.update(read_manifest(shard))
        write_manifest(folder / MANIFEST, {name: row for name, row in rows.items() if (folder / name).is_file()})
        for shard in shards:
            shard.unlink()
    return folder / MANIFEST


@contextmanager
def open_log(manifest: Path) -> Iterator[IO[str]]:
    """``manifest`` opened for appending rows (:func:`append_row`), its torn last line cut off first."""
    drop_torn_line(manifest)
    with open(manifest, "a", encoding="utf-8") as log:
        yield log
