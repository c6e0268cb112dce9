"""Identity names: VGG-Face's ``names.txt`` and the VGG Face file-name rule."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

NUM_IDENTITIES = 2622
"""The identities of VGG-Face (its names.txt has one per line, in the order of its logits)."""
_FILE_SUFFIXES = {".jpg", ".jpeg", ".png", ".npy", ".bmp"}


def identity_from_filename(name: str | Path) -> str:
    """The identity of a VGG Face file ``<Name>_<idx>_<x1>_<y1>_<x2>_<y2>.<ext>``: all before the last five fields.

    Names may themselves contain ``_`` and ``.`` (``Ed_Begley_Jr._9_60.67_...png`` is ``Ed_Begley_Jr.``).
    """
    path = Path(name)
    stem = path.stem if path.suffix.lower() in _FILE_SUFFIXES else path.name
    fields = stem.split("_")
    if len(fields) < 6:
        raise ValueError(f"{name!r} does not follow <Name>_<idx>_<x1>_<y1>_<x2>_<y2>.<ext>")
    try:
        int(fields[-5])
        [float(f) for f in fields[-4:]]
    except ValueError as err:
        raise ValueError(f"{name!r}: the last five '_' fields must be an index and four box numbers") from err
    return "_".join(fields[:-5])


def load_names(path: str | Path, expected: int | None = NUM_IDENTITIES) -> list[str]:
    """Read a names list (one identity per line, e.g. VGG-Face's 2622-line ``names.txt``); index = class id."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"names list not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if expected is not None and len(names) != expected:
        raise ValueError(f"{path}: expected {expected} names, found {len(names)}")
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ValueError(f"{path}: duplicate names {duplicates[:5]}")
    return names


def label_of(filename: str | Path, names: Sequence[str]) -> int:
    """Class index of a VGG Face file name in ``names``; ``KeyError`` naming the identity if it is not listed."""
    identity = identity_from_filename(filename)
    try:
        return list(names).index(identity)
    except ValueError:
        raise KeyError(f"identity {identity!r} (from {Path(filename).name}) is not in the names list") from None
