from __future__ import annotations

import math

import torch

from ami_lightning.evaluation.rates import Rate, flag_rate
from tests.conftest import random_predictions


def _reference(original, steered, labels, adversarial):
    eligible = [i for i in range(len(labels)) if (original[i] != labels[i]) == adversarial]
    flagged = [i for i in eligible if steered[i] != original[i]]
    return len(flagged), len(eligible)


def test_flag_rate_matches_plain_reference() -> None:
    labels, original, steered = random_predictions(200, 4, seed=0, p_correct=0.7, p_agree=0.8)
    for adversarial in (False, True):
        rate = flag_rate(original, steered, labels, adversarial)
        assert (rate.flagged, rate.eligible) == _reference(original.tolist(), steered.tolist(), labels.tolist(),
                                                           adversarial)
        assert 0 < rate.value < 1


def test_rate_value_and_text() -> None:
    assert Rate(33, 343).value == 33 / 343 and str(Rate(33, 343)) == "9.62 % (33/343)"
    assert math.isnan(Rate(0, 0).value)
    labels = torch.tensor([0, 1, 2])
    assert flag_rate(labels, labels, labels, adversarial=True) == Rate(0, 0)
