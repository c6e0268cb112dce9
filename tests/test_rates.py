from __future__ import annotations

import math

import torch

from ami_lightning.evaluation.rates import Rate, flag_rate
from tests.conftest import random_predictions


def _reference(flagged, original, labels, adversarial):
    eligible = [i for i in range(len(labels)) if (original[i] != labels[i]) == adversarial]
    return len([i for i in eligible if flagged[i]]), len(eligible)


def test_flag_rate_matches_plain_reference() -> None:
    labels, original, steered = random_predictions(200, 4, seed=0, p_correct=0.7, p_agree=0.8)
    for adversarial in (False, True):
        flagged = steered != original  # AmI's rule, as one example of a detector's flags
        rate = flag_rate(flagged, original, labels, adversarial)
        assert (rate.flagged, rate.eligible) == _reference(flagged.tolist(), original.tolist(), labels.tolist(),
                                                           adversarial)
        assert 0 < rate.value < 1


def test_rate_value_and_text() -> None:
    assert Rate(33, 343).value == 33 / 343 and str(Rate(33, 343)) == "9.62 % (33/343)"
    assert math.isnan(Rate(0, 0).value)
    labels = torch.tensor([0, 1, 2])
    assert flag_rate(torch.ones(3, dtype=torch.bool), labels, labels, adversarial=True) == Rate(0, 0)
