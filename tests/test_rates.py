from __future__ import annotations

import math

import torch

from ami_lightning.rates import Rate, flag_rate


def _reference(original, steered, labels, adversarial):
    eligible = [i for i in range(len(labels)) if (original[i] != labels[i]) == adversarial]
    flagged = [i for i in eligible if steered[i] != original[i]]
    return len(flagged), len(eligible)


def test_flag_rate_matches_plain_reference() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (200,), generator=g)
    original = torch.where(torch.rand(200, generator=g) < 0.7, labels, torch.randint(0, 4, (200,), generator=g))
    steered = torch.where(torch.rand(200, generator=g) < 0.8, original, torch.randint(0, 4, (200,), generator=g))
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
