"""Every benign score once: calibration and evaluation share each detector's benign records, a warm run scores no
benign image, and the figures equal those of the evaluation that scores everything itself."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from ami_lightning.detectors.ami import AmIDetector
from ami_lightning.detectors.feature_squeezing import FeatureSqueezing
from ami_lightning.models.classifiers import Classifier
from ami_lightning.pipeline import benign as benign_module
from ami_lightning.pipeline import stages
from ami_lightning.pipeline.validation import check_config
from tests.conftest import compose_config, cpu_config
from tests.toy import NUM_CLASSES, PixelSet, toy_classifier, toy_faces, toy_witnesses


class CountingSet(PixelSet):
    """The toy faces as a benign set with a cache identity, as :func:`~stages.benign_set` gives one."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, identity: str | None) -> None:
        super().__init__(x, y)
        if identity is not None:
            setattr(self, benign_module.IDENTITY_ATTRIBUTE, identity)


@pytest.fixture
def setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(cfg, classifier, counts): AmI and Feature Squeezing on the toy classifier; ``counts`` counts the benign
    samples each detector is run on (AmI: ``evaluate``, Feature Squeezing: ``score``)."""
    toy_witnesses(32).write(tmp_path / "witnesses")
    overrides = ["detector=[ami,feature_squeezing]", f"ami.witnesses={tmp_path / 'witnesses'}", "attack=[]",
                 "logger=none"]
    cfg = cpu_config(compose_config("eval", overrides), tmp_path)
    check_config(cfg)
    classifier = Classifier("toy", toy_classifier(32), [str(i) for i in range(NUM_CLASSES)])
    counts: Counter[str] = Counter()
    ami_evaluate, fs_score = AmIDetector.evaluate, FeatureSqueezing.score

    def counting_evaluate(self, x, logits):
        counts["ami"] += len(x)
        return ami_evaluate(self, x, logits)

    def counting_score(self, x, logits=None):
        counts["feature_squeezing"] += len(x)
        return fs_score(self, x, logits)

    monkeypatch.setattr(AmIDetector, "evaluate", counting_evaluate)
    monkeypatch.setattr(FeatureSqueezing, "score", counting_score)
    return cfg, classifier, counts


def _run(cfg, classifier, benign) -> dict:
    detectors = stages.prepare_detectors(cfg, classifier, benign)
    module, _ = stages.eval_stage(cfg, classifier, detectors, benign, {})
    return module.results


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for detector in a:
        for key in ("n", "eligible", "flagged", "rate", "operating_points"):
            assert a[detector]["benign"][key] == b[detector]["benign"][key], (detector, key)


def test_each_benign_image_goes_through_each_detector_once_and_a_warm_run_through_none(setting) -> None:
    cfg, classifier, counts = setting
    x, y = toy_faces(32)
    benign = CountingSet(x, y, identity="toy faces")
    cold = _run(cfg, classifier, benign)
    assert counts == {"ami": len(x), "feature_squeezing": len(x)}  # was 2 x for Feature Squeezing (calibration)
    assert len(list((Path(cfg.paths.cache_dir) / "benign").glob("*.pt"))) == 2
    counts.clear()
    warm = _run(cfg, classifier, CountingSet(x, y, identity="toy faces"))
    assert counts == {}
    _same(cold, warm)
    # the same figures as an evaluation that runs every detector itself (a set without identity is never cached)
    counts.clear()
    fresh = _run(cfg, classifier, CountingSet(x, y, identity=None))
    assert counts == {"ami": len(x), "feature_squeezing": 2 * len(x)}
    _same(cold, fresh)
    assert cold["feature_squeezing"]["benign"]["eligible"] > 0 and cold["ami"]["benign"]["eligible"] > 0


def test_records_follow_the_benign_set_the_detector_and_a_damaged_entry_is_made_again(setting) -> None:
    cfg, classifier, counts = setting
    x, y = toy_faces(32)
    _run(cfg, classifier, CountingSet(x, y, identity="toy faces"))
    counts.clear()
    _run(cfg, classifier, CountingSet(x, y, identity="other faces"))  # another set: computed again
    assert counts == {"ami": len(x), "feature_squeezing": len(x)}
    for entry in (Path(cfg.paths.cache_dir) / "benign").glob("*.pt"):
        entry.write_bytes(b"torn")
    counts.clear()
    _run(cfg, classifier, CountingSet(x, y, identity="other faces"))
    assert counts == {"ami": len(x), "feature_squeezing": len(x)}


def test_records_that_do_not_match_the_set_are_refused(setting) -> None:
    cfg, classifier, _ = setting
    x, y = toy_faces(32)
    _run(cfg, classifier, CountingSet(x, y, identity="toy faces"))
    relabelled = y.clone()
    relabelled[0] = (y[0] + 1) % NUM_CLASSES
    with pytest.raises(RuntimeError, match="benign records of 'ami' do not match the benign set"):
        _run(cfg, classifier, CountingSet(x, relabelled, identity="toy faces"))


def test_the_records_key_follows_the_detector_parameters_and_code(tmp_path: Path) -> None:
    model = toy_classifier(32)
    fs = FeatureSqueezing(model)
    key = benign_module.records_key("model", "set", fs)
    assert benign_module.records_key("model", "set", FeatureSqueezing(model)) == key
    assert benign_module.records_key("model", "set", FeatureSqueezing(model, channel_order="bgr")) != key
    assert benign_module.records_key("model", "other set", fs) != key
    # the code digest follows the detector's imports: tests/test_code_keys.py
