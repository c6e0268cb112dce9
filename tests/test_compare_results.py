"""``scripts/compare_results.py``: the figures two runs report, compared leaf by leaf."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.compare_results import differences, main


def _run(folder: Path, sets: list[dict], provenance: str) -> Path:
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"model": "m", "sets": sets, "provenance": {"commit": provenance}}))
    return folder


def test_runs_with_the_same_figures_in_another_order_and_provenance_are_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = {"detector": "ami", "name": "fgsm", "n": 8, "flagged": 3, "operating_points": [{"detected": 1}]}
    b = {"detector": "feature_squeezing", "name": "fgsm", "n": 8, "flagged": 0, "operating_points": []}
    before = _run(tmp_path / "before", [a, b], "abc")
    assert main([str(before), str(_run(tmp_path / "after", [b, a], "def"))]) == 0
    assert capsys.readouterr().out == "same figures\n"
    changed = {**a, "operating_points": [{"detected": 2}]}
    assert main([str(before), str(_run(tmp_path / "changed", [b, changed], "abc"))]) == 1
    out = capsys.readouterr().out
    assert "sets.ami/fgsm.operating_points[0].detected: 1 -> 2" in out and out.endswith("1 figures differ\n")


def test_differences_names_missing_sets_and_lengths() -> None:
    before = {"sets": [{"detector": "ami", "name": "bim", "n": 8}], "extra": [1, 2]}
    after = {"sets": [], "extra": [1]}
    assert differences(before, after) == [("extra", "2 items", "1 items"),
                                          ("sets.ami/bim", {"detector": "ami", "name": "bim", "n": 8}, None)]
