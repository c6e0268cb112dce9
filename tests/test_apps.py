"""The Hydra entry points' jobs on the embedded default, composed as the command line would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from ami_lightning.cli import apps
from ami_lightning.pipeline.validation import ConfigError
from ami_lightning.witnesses import WitnessSet
from tests.conftest import compose_config, cpu_config, reference_data


def _small(cfg, faces: int = 3):
    with open_dict(cfg):
        cfg.data.benign.limit = 12
        cfg.data.fit.limit = 12  # the fitted detectors' fit set: the same 12 faces' fit variants
        cfg.data.attack_faces = faces
    return cfg


def test_eval_with_generated_sets_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _small(cpu_config(compose_config("eval", ["attack=[fgsm,glasses_next]", "logger=csv",
                                                    "+attacks.glasses_next.params.steps=30",
                                                    "optimized_metric=objective/fpr_gap"]), tmp_path))
    objective = apps._eval(cfg)
    out = Path(cfg.paths.output_dir)
    results = json.loads((out / "results.json").read_text())
    rows = [(s["detector"], s["name"]) for s in results["sets"]]
    assert rows == [(d, name) for d in ("ami", "feature_squeezing")
                    for name in ("benign", "fgsm", "glasses_next", "worst_case")]
    assert list(results["detectors"]) == ["ami", "feature_squeezing"]
    assert results["detectors"]["feature_squeezing"]["params"]["threshold"] > 0  # calibrated on the benign set
    benign, fs_benign = results["sets"][0], results["sets"][4]
    assert benign["n"] == fs_benign["n"] == 48 and benign["auroc"] is None
    assert fs_benign["flagged"] <= 0.05 * fs_benign["eligible"]  # its own rule: 5 % FPR on this very set
    assert objective == pytest.approx(abs((benign["rate"] or 0) - 0.0991))  # of the first detector, AmI
    assert all(s["n"] == 3 for s in results["sets"] if s["name"] != "benign")
    for name in ("results.md", "detection_rates.png", "roc.png", "samples/fgsm.png", "samples/glasses_next.png"):
        assert (out / name).stat().st_size > 0
    assert WitnessSet.read(out / "witnesses").count()["leye"] > 0
    (metrics,) = (out / "csv").rglob("metrics.csv")  # the logger got the figures after the files were written
    header = metrics.read_text().splitlines()[0].split(",")
    assert {"ami/benign/rate", "feature_squeezing/fgsm/auroc"} <= set(header)
    assert "weaken: 1000.0" in next((out / "csv").rglob("hparams.yaml")).read_text()  # and the whole config
    # a second run reuses the cached witnesses and attack sets (no new files in the cache)
    cache = sorted(p for p in Path(cfg.paths.cache_dir).rglob("*") if p.is_file())
    apps._eval(cfg)
    assert sorted(p for p in Path(cfg.paths.cache_dir).rglob("*") if p.is_file()) == cache
    # ami-witness prepares the same AmI (the pipeline's detector set-up), reading the same cache entry
    witness_cfg = cpu_config(compose_config("witness", ["logger=none"]), tmp_path / "witness")
    with open_dict(witness_cfg):
        witness_cfg.paths.cache_dir = cfg.paths.cache_dir
    apps._witness(witness_cfg)
    assert sorted(p for p in Path(cfg.paths.cache_dir).rglob("*") if p.is_file()) == cache
    copied = WitnessSet.read(Path(witness_cfg.paths.output_dir) / "witnesses")
    assert copied == WitnessSet.read(out / "witnesses")
    assert f"ami: witnesses per attribute {copied.count()} at {len(copied.steered_layers())} layers" in \
        capsys.readouterr().out


@pytest.mark.slow
def test_eval_reads_the_published_layout(tmp_path: Path) -> None:
    adversarial = reference_data("adversarial")  # the release's samples
    cfg = _small(cpu_config(compose_config("eval", ["attack=[patch_first,cw_l2_first]",
                                                    f"data.attacks_dir={adversarial}"]), tmp_path))
    apps._eval(cfg)  # the release's samples are of identities among the 238 shipped ones
    sets = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())["sets"]
    assert [(s["name"], s["n"]) for s in sets if s["detector"] == "ami"][1:] == [
        ("patch_first", 3), ("cw_l2_first", 3), ("worst_case", 6)]  # .jpg, .npy; faces named by file: 6 distinct
    with open_dict(cfg):
        cfg.data.attacks_dir = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"data.attacks_dir='.*missing': no such folder"):
        apps._eval(cfg)


@pytest.mark.slow
def test_run_reads_data_attacks_dir_like_eval(tmp_path: Path) -> None:
    """One attack-set path: ``ami-run`` with ``data.attacks_dir`` reads the sets there and generates nothing."""
    made = _small(cpu_config(compose_config("attack", ["attack=[fgsm]", "logger=none"]), tmp_path / "made"), faces=2)
    apps._attack(made)
    (folder,) = (Path(made.paths.cache_dir) / "attacks").glob("*/fgsm")
    cfg = _small(cpu_config(compose_config("run", ["attack=[fgsm]", f"data.attacks_dir={folder.parent}",
                                                   "logger=none"]), tmp_path / "run"), faces=2)
    apps._eval(cfg)
    assert not (Path(cfg.paths.cache_dir) / "attacks").exists()
    sets = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())["sets"]
    assert [(s["detector"], s["name"], s["n"]) for s in sets] == [
        (d, name, n) for d in cfg.detectors for name, n in (("benign", 48), ("fgsm", 2), ("worst_case", 2))]
    assert list(cfg.detectors) == ["ami", "feature_squeezing", "mahalanobis", "lid", "nic"]  # the main job's


@pytest.mark.slow
def test_adaptive_sets_attack_the_run_detector_and_are_reported(tmp_path: Path) -> None:
    """``ami-attack`` computes the witnesses the adaptive sets need; their cache depends on the AmI parameters they
    attack (a published set's does not); ``ami-eval`` reports undetected success and calibrated operating points."""
    overrides = ["attack=[fgsm,adaptive_transfer,adaptive_gradient]", "logger=none",
                 "attacks.adaptive_transfer.params.steps=3", "attacks.adaptive_transfer.params.k_targets=2",
                 "attacks.adaptive_gradient.params.steps=3", "attacks.adaptive_gradient.params.k_targets=2"]
    cfg = _small(cpu_config(compose_config("attack", overrides), tmp_path), faces=2)
    apps._attack(cfg)
    cache = Path(cfg.paths.cache_dir) / "attacks"
    first = {p.parent.name: p.parent.parent.name for p in cache.glob("*/*/manifest.jsonl")}
    rows = [json.loads(line) for line in (cache / first["adaptive_transfer"] / "adaptive_transfer"
                                          / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["target"] >= 0 and r["target"] != r["label"] for r in rows)
    weaker = _small(cpu_config(compose_config("attack", [*overrides, "ami.weaken=500"]), tmp_path), faces=2)
    apps._attack(weaker)
    second = {}
    for p in cache.glob("*/*/manifest.jsonl"):
        second.setdefault(p.parent.name, set()).add(p.parent.parent.name)
    assert second["fgsm"] == {first["fgsm"]}  # unchanged inputs: reused
    assert len(second["adaptive_transfer"]) == len(second["adaptive_gradient"]) == 2  # a new detector: new sets

    cfg = _small(cpu_config(compose_config("eval", overrides), tmp_path), faces=2)
    apps._eval(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    for s in (s for s in results["sets"] if s["name"] != "benign"):
        assert s["undetected"] == pytest.approx((s["eligible"] - s["flagged"]) / s["n"])
        assert [p["target_fpr"] for p in s["operating_points"]] == [0.05, 0.5]
    assert (Path(cfg.paths.output_dir) / "undetected.png").stat().st_size > 0
