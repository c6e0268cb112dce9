"""The five detectors of the framework in one run on the embedded default (dlib's ResNet, the shipped faces): each
with its benign and attack rows, the fitted ones with the record of their fit set, which shares no image with what is
evaluated, and every pair compared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from ami_lightning.cli import apps
from ami_lightning.data.probes import VARIANTS
from tests.conftest import compose_config, cpu_config

FIVE = ["ami", "feature_squeezing", "mahalanobis", "lid", "nic"]
FITTED = ["mahalanobis", "lid", "nic"]


@pytest.mark.slow
def test_ami_eval_of_the_five_detectors_writes_each_with_its_fit_set(tmp_path: Path) -> None:
    cfg = cpu_config(compose_config("eval", [f"detector=[{','.join(FIVE)}]", "attack=[fgsm]", "logger=none",
                                             "data.attack_faces=4"]), tmp_path)
    with open_dict(cfg):  # a cut for the test: 12 faces' probes evaluated, 12 faces' fit variants
        cfg.data.benign.limit = 12
        cfg.data.fit.limit = 12
    apps._eval(cfg)
    out = Path(cfg.paths.output_dir)
    results = json.loads((out / "results.json").read_text())
    assert list(results["detectors"]) == FIVE
    rows = [(s["detector"], s["name"]) for s in results["sets"]]
    assert rows == [(d, name) for d in FIVE for name in ("benign", "fgsm", "worst_case")]
    for name in FITTED:
        described = results["detectors"][name]
        fit = described["fit_set"]
        assert fit["variants"] == ["brighter", "darker", "shift_back", "jpeg_50"] and len(fit["files"]) == 48
        assert not {f.split("#")[1] for f in fit["files"]} & set(VARIANTS)  # no evaluated probe's variant
        assert described["params"]["threshold"] is not None and described["gradient"] == "exact"
    assert "fit_set" not in results["detectors"]["ami"] and "fit_set" not in results["detectors"]["feature_squeezing"]
    assert all(s["n"] == 4 for s in results["sets"] if s["name"] == "fgsm")
    pairs = {(c["set"], c["first"], c["second"]) for c in results["comparisons"]}
    assert len(pairs) == 2 * 10 and ("fgsm", "ami", "nic") in pairs and ("worst_case", "lid", "nic") in pairs
    assert (out / "matrix.png").stat().st_size > 0
    assert "## Detector x attack matrix" in (out / "results.md").read_text()
    # the fitted state is cached: a second run fits nothing again
    fitted = {p: p.stat().st_mtime_ns for p in (Path(cfg.paths.cache_dir) / "fitted").glob("*.pt")}
    assert len(fitted) == 3
    apps._eval(cfg)
    assert {p: p.stat().st_mtime_ns for p in (Path(cfg.paths.cache_dir) / "fitted").glob("*.pt")} == fitted
