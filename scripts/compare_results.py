"""Whether two runs report the same figures: every set's counts, rates, AUROC, operating points and intervals, the
worst case and the detectors' descriptions, from their ``results.json`` (provenance and wall times left out).

Usage (repository root)::

    python -m scripts.compare_results logs/run/<before> logs/run/<after>

Prints ``same figures`` and exits 0, or lists each figure that differs (detector, set, key, before, after) and exits 1.
For checking that a refactor changed no result (same machine, same torch: the attack files depend on both).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

IGNORED = frozenset({"provenance"})
"""Top-level keys of results.json that say how and where a run ran, not what it found."""


def _load(run: Path) -> dict[str, Any]:
    path = run / "results.json" if run.is_dir() else run
    data: dict[str, Any] = json.loads(path.read_text())
    return {key: value for key, value in data.items() if key not in IGNORED}


def differences(before: dict[str, Any], after: dict[str, Any], where: str = "") -> list[tuple[str, Any, Any]]:
    """(path, before, after) of every leaf that differs between two JSON values; lists of sets are matched by
    (detector, name)."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after)):
            found += differences(before.get(key), after.get(key), f"{where}.{key}" if where else key)
        return found
    if isinstance(before, list) and isinstance(after, list):
        if all(isinstance(x, dict) and "detector" in x and "name" in x for x in before + after):
            keyed = [{f"{x['detector']}/{x['name']}": x for x in side} for side in (before, after)]
            return differences(keyed[0], keyed[1], where)
        if len(before) != len(after):
            return [(where, f"{len(before)} items", f"{len(after)} items")]
        found = []
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            found += differences(b, a, f"{where}[{i}]")
        return found
    return [] if before == after else [(where, before, after)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path, help="a run folder (or its results.json)")
    parser.add_argument("after", type=Path, help="a run folder (or its results.json)")
    args = parser.parse_args(argv)
    found = differences(_load(args.before), _load(args.after))
    if not found:
        print("same figures")
        return 0
    for path, before, after in found:
        print(f"{path}: {before!r} -> {after!r}")
    print(f"{len(found)} figures differ")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
