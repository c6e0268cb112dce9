from __future__ import annotations

import pytest
import torch

from ami_lightning.detectors.ami import AmIDetector
from ami_lightning.detectors.ami_calibration import benign_fpr, calibrate, logits_of, steering_grid
from ami_lightning.detectors.steering import SteeringParams
from ami_lightning.evaluation.rates import flag_rate
from ami_lightning.models.base import Normalize, PixelModel, kaiming_init_
from ami_lightning.witnesses import WitnessSet
from tests.test_detector import TinyNet


@pytest.fixture(scope="module")
def setup():
    net = kaiming_init_(TinyNet(), seed=2)
    model = PixelModel(net, Normalize((120.0,) * 3, (60.0,) * 3), net.hook_layers).eval()
    x = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 255
    labels = logits_of(model, x, 16, torch.device("cpu")).argmax(1)  # benign: the model is right on all of them
    witnesses = WitnessSet.from_mapping({"leye": {"relu1": [0, 1, 2], "relu2": [3, 4], "relu6": [5, 6, 7]}},
                                        net.hook_layers)
    return model, witnesses, x, labels


def test_grid_is_the_product() -> None:
    grid = steering_grid([1.0, 2.0], [2.15], [5.0, 50.0])
    assert grid == [SteeringParams(1.0, (2.15, 5.0)), SteeringParams(1.0, (2.15, 50.0)),
                    SteeringParams(2.0, (2.15, 5.0)), SteeringParams(2.0, (2.15, 50.0))]


def test_calibration_points_and_choice(setup) -> None:
    model, witnesses, x, labels = setup
    grid = steering_grid([0.05, 1.0, 1e4], [1.2, 2.15], [50.0])
    result = calibrate(model, witnesses, x, labels, grid, target=0.25, batch_size=16)
    assert [p for p, _ in result.points] == grid
    for params, rate in result.points:
        detector = AmIDetector(model, witnesses, params.weaken, params.strengthen)
        with torch.no_grad():
            steered = detector.steered_logits(x).argmax(1)
        assert rate == flag_rate(steered != labels, labels, labels, adversarial=False)  # AmI's rule, independently
        assert rate == benign_fpr(detector, x, logits_of(model, x, 7, torch.device("cpu")), labels, 7,
                                  torch.device("cpu"))
        assert rate.eligible == 40
    values = [r.value for _, r in result.points]
    assert max(values) > min(values)  # the parameters matter on this model
    best, best_rate = result.best
    assert abs(best_rate.value - 0.25) == min(abs(v - 0.25) for v in values)
