"""Messages of runs that cannot work (issue 23, item 5): a model that gets no benign probe right stops before any
detector is prepared, naming the accuracy and the model's keys; the detectors' own calibration errors say what to
check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ami_lightning.detectors import create_detector
from ami_lightning.evaluation.thresholds import above
from ami_lightning.models.base import Normalize, PixelModel
from ami_lightning.models.classifiers import Classifier
from ami_lightning.pipeline import stages
from tests.conftest import compose_config, cpu_config
from tests.toy import NUM_CLASSES, PixelSet, ToyNet, toy_faces


class SetupReached(Exception):
    """Raised instead of preparing a detector: the run went past the accuracy check."""


def _untrained() -> PixelModel:
    """The toy network with fixed random weights (32 px), eval mode."""
    torch.manual_seed(0)
    net = ToyNet(32)
    return PixelModel(net, Normalize((128.0,) * 3, (64.0,) * 3), net.hook_layers, input_size=32).eval()


def _toy(tmp_path: Path, detectors: str, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """(cfg, classifier, probes (20, 3, 32, 32), the classifier's top-1 identity of each): the config of
    ``detectors`` on the CPU under ``tmp_path`` (batches of 16), the untrained toy network over 10 identities, the
    toy faces twice; detector set-up replaced by :class:`SetupReached`."""
    def reached(_cfg: object, _fit: object = None) -> None:
        raise SetupReached

    monkeypatch.setattr(stages, "setup_context", reached)
    cfg = cpu_config(compose_config("eval", [f"detector={detectors}"]), tmp_path)
    classifier = Classifier("toy", _untrained(), [f"id{i}" for i in range(NUM_CLASSES)])
    x = torch.cat([toy_faces(32)[0]] * 2)
    with torch.no_grad():  # in the check's batches
        predicted = torch.cat([classifier.model(x[:16]), classifier.model(x[16:])]).argmax(1)
    return cfg, classifier, x, predicted


@pytest.mark.parametrize("detectors", ["[ami]", "[feature_squeezing]", "[ami,feature_squeezing]"])
def test_a_model_that_gets_no_benign_probe_right_stops_before_any_detector_is_prepared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, detectors: str
) -> None:
    cfg, classifier, x, predicted = _toy(tmp_path, detectors, monkeypatch)
    wrong = (predicted + 1) % NUM_CLASSES  # every label wrong (as with wrong weights or names): 2 batches of 16
    with pytest.raises(stages.BenignAccuracyError) as caught:
        stages.prepare_detectors(cfg, classifier, PixelSet(x, wrong))
    message = str(caught.value)
    assert "gets none of the 20 benign probes right (top-1 accuracy 0/20 = 0 %)" in message
    assert "model._target_=ami_lightning.models.classifiers.dlib_gallery" in message
    assert f"model.weights={cfg.model.weights}" in message and "model.faces_dir=null" in message
    assert "data.benign._target_=ami_lightning.data.benign.shipped_probes" in message
    assert "10 identities (first: id0, id1, id2)" in message


def test_one_right_probe_anywhere_lets_the_run_go_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, classifier, x, predicted = _toy(tmp_path, "[ami]", monkeypatch)
    labels = (predicted + 1) % NUM_CLASSES
    labels[-1] = predicted[-1]  # only the last probe, in the second batch, right
    with pytest.raises(SetupReached):
        stages.prepare_detectors(cfg, classifier, PixelSet(x, labels))
    with pytest.raises(SetupReached):  # AmI alone without a benign set (ami-witness): nothing to check
        stages.prepare_detectors(cfg, classifier)


def test_calibration_errors_say_what_to_check() -> None:
    detector = create_detector("feature_squeezing", _untrained(), name="fs")
    with pytest.raises(ValueError, match=r"fs: cannot calibrate on an empty set of benign scores: the model gets no "
                                         r"benign image right \(top-1 accuracy 0 on the benign set\).*model.weights, "
                                         r"model.names, model.faces_dir"):
        detector.calibrate(torch.zeros(0))
    with pytest.raises(ValueError, match=r"threshold is nan: .*top-1 accuracy 0.*model.weights"):
        above(torch.zeros(3), float("nan"))
