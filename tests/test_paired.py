"""Paired comparisons of detectors: the exact McNemar test against SciPy's binomial test, Holm's adjustment against
its definition, and the pairs the evaluation computes from per-sample verdicts."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import binomtest

from ami_lightning.evaluation.paired import LEVEL, compare_pairs, holm, mcnemar_exact


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 1), (1, 0), (3, 3), (0, 7), (7, 2), (12, 30), (50, 49), (0, 200)])
def test_mcnemar_exact_equals_scipys_binomial_test_on_the_discordant_counts(b: int, c: int) -> None:
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12, abs=1e-300)
    assert mcnemar_exact(b, c) == mcnemar_exact(c, b)


def test_mcnemar_refuses_negative_counts() -> None:
    with pytest.raises(ValueError, match="discordant counts must be >= 0"):
        mcnemar_exact(-1, 3)


def test_holm_equals_its_step_down_definition() -> None:
    g = torch.Generator().manual_seed(0)
    for m in (1, 2, 5, 10):
        p = torch.rand(m, generator=g).pow(3).tolist()
        adjusted = holm(p)
        order = sorted(range(m), key=lambda i: p[i])
        for rank, i in enumerate(order):  # max over the smaller-or-equal ranks of (m - r) p_(r), capped at 1
            expected = min(1.0, max((m - r) * p[order[r]] for r in range(rank + 1)))
            assert adjusted[i] == pytest.approx(expected, rel=1e-12)
        assert all(a >= q for a, q in zip(adjusted, p, strict=True))


def test_compare_pairs_counts_discordant_samples_and_names_the_better_detector() -> None:
    n = 40
    strong = torch.ones(n, dtype=torch.bool)
    weak = torch.zeros(n, dtype=torch.bool)
    weak[:3] = True
    same = weak.clone()
    pairs = compare_pairs("bim", {"a": strong, "b": weak, "c": same})
    assert [(p.first, p.second) for p in pairs] == list(itertools.combinations("abc", 2))
    ab, ac, bc = pairs
    assert (ab.total, ab.only_first, ab.only_second) == (n, 37, 0) and ab.set == "bim"
    assert ab.p_value == pytest.approx(binomtest(0, 37, 0.5).pvalue, rel=1e-12)
    assert ab.p_holm == pytest.approx(min(1.0, 3 * ab.p_value), rel=1e-12) and ab.better == "a"
    assert (bc.only_first, bc.only_second, bc.p_value, bc.better) == (0, 0, 1.0, None)
    assert ac.better == "a" and ac.p_holm < LEVEL
    close = compare_pairs("fgsm", {"a": torch.tensor([True, True, False]), "b": torch.tensor([False, True, True])})
    assert close[0].better is None and (close[0].only_first, close[0].only_second) == (1, 1)
    with pytest.raises(ValueError, match="different numbers of samples"):
        compare_pairs("x", {"a": strong, "b": weak[:5]})


def test_the_evaluation_compares_every_pair_on_each_set_and_the_worst_case() -> None:
    """On the toy: the module's comparisons equal compare_pairs of the detectors' own verdicts on the samples that
    fool the model (per set) and on the faces (worst case), and they reach results.json."""
    import lightning.pytorch as pl

    from ami_lightning.data.datamodule import EvalDataModule
    from ami_lightning.detectors.ami import AmIDetector
    from ami_lightning.evaluation.module import WORST_CASE, DetectorEvalModule
    from ami_lightning.evaluation.success import face_verdicts
    from tests.toy import PixelSet, toy_eval_sets

    first, sets = toy_eval_sets(32)
    second = AmIDetector(first.model, first.witnesses, 1.0, (1.5, 2.0))
    (x, y), (noisy, _), (_, wrong) = sets["benign"], sets["noise"], sets["shifted"]
    faces = [f"face_{i}" for i in range(len(y))]
    attacks = {"noise": PixelSet(noisy, y), "shifted": PixelSet(x, wrong)}
    datamodule = EvalDataModule(PixelSet(x, y), attacks, 4)
    detectors = {"strong": first, "weak": second}
    module = DetectorEvalModule(detectors, datamodule.set_names, faces={name: faces for name in attacks})
    pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               use_distributed_sampler=False).test(module, datamodule=datamodule, verbose=False)
    pixels, labels = {"noise": noisy, "shifted": x}, {"noise": y, "shifted": wrong}
    expected, fooled, flagged = [], {}, {}
    with torch.no_grad():
        for name in attacks:
            out = {d: detector(pixels[name]) for d, detector in detectors.items()}
            fooled[name] = out["strong"].logits.argmax(1) != labels[name]
            flagged[name] = {d: o.flagged for d, o in out.items()}
            expected += compare_pairs(name, {d: o.flagged[fooled[name]] for d, o in out.items()})
    verdicts = {d: torch.tensor(list(face_verdicts([faces, faces], list(fooled.values()),
                                                   [flagged[n][d] for n in attacks])[1].values()))
                for d in detectors}
    expected += compare_pairs(WORST_CASE, verdicts)
    assert module.comparisons == expected
    assert [c.set for c in module.comparisons] == ["noise", "shifted", WORST_CASE]
    assert any(c.only_first + c.only_second > 0 for c in module.comparisons)  # the two detectors differ somewhere
