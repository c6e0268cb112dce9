"""Adaptive attacks on AmI (``ami_lightning.attacks.adaptive``): PGD, target choice, candidate choice,
straight-through gradients,
and the claim that matters: an attacker who knows AmI gets at least as many undetected successes as plain BIM."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ami_lightning.attacks.adaptive import (
    DetectorGradient,
    TransferFilter,
    choose_candidates,
    likeliest_targets,
    linf_pgd,
    random_start,
)
from ami_lightning.attacks.base import face_seed
from ami_lightning.attacks.gradient import BIM
from ami_lightning.attacks.registry import create_attack
from ami_lightning.data.datasets import FaceFiles
from ami_lightning.data.manifest import merge_manifests
from ami_lightning.data.shipped import face_files
from ami_lightning.detectors.ami import AmIDetector
from ami_lightning.models.layers import forward_hooks
from ami_lightning.pipeline.generation import generate
from tests.toy import NUM_CLASSES, toy_detector, toy_faces

BUDGET = {"eps": 32.0, "steps": 10, "rel_stepsize": 0.2}  # the toy needs Linf ~32-48 pixel units to be fooled


@pytest.fixture(scope="module")
def toy() -> tuple[AmIDetector, torch.Tensor, torch.Tensor]:
    images, labels = toy_faces(32)
    return toy_detector(32), images, labels


def undetected_success(detector: AmIDetector, adversarial: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: fools the plain model and AmI does not flag it."""
    with torch.no_grad():
        out = detector(adversarial)
    return (out.logits.argmax(1) != labels) & ~out.flagged


def test_likeliest_targets_against_a_sort() -> None:
    logits = torch.randn(6, 7, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 3, 6, 2, 2, 5])
    got = likeliest_targets(logits, labels, 3)
    for row, label, targets in zip(logits.tolist(), labels.tolist(), got.tolist(), strict=True):
        reference = sorted((c for c in range(7) if c != label), key=lambda c: -row[c])[:3]
        assert targets == reference
    with pytest.raises(ValueError, match=r"k_targets must lie in \[1, 6\] for 7 classes, got 7"):
        likeliest_targets(logits, labels, 7)


def test_choose_candidates_prefers_undetected_then_fooling_then_low_score() -> None:
    fools = torch.tensor([[True, True, False], [True, False, False], [False, False, False], [True, True, True]])
    flagged = torch.tensor([[True, False, False], [True, False, False], [True, True, False], [False, False, True]])
    score = torch.tensor([[0.1, 9.0, 0.0], [5.0, 0.0, 0.0], [3.0, 2.0, 7.0], [4.0, 1.0, 0.0]])
    assert choose_candidates(fools, flagged, score).tolist() == [1, 0, 1, 1]


def test_pgd_stays_in_the_ball_and_lowers_the_loss(toy) -> None:
    detector, x, y = toy
    targets = (y + 1) % NUM_CLASSES

    def loss(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(detector.model(z), t, reduction="none")

    adversarial = linf_pgd(loss, x, targets, eps=8.0, steps=5, stepsize=2.0)
    assert (adversarial - x).abs().max() <= 8.0 + 1e-4 and adversarial.min() >= 0 and adversarial.max() <= 255
    with torch.no_grad():
        assert bool((loss(adversarial, targets) < loss(x, targets)).all())


def test_straight_through_keeps_values_and_treats_factors_as_constants(toy) -> None:
    """Reference: the steered model's layers multiplied by the factors of this input, recorded and then applied as
    constants; its input gradient must equal the straight-through one, and differ from the exact one."""
    detector, x, y = toy
    x = x[:3].clone()
    recorded: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(_module, _inputs, output):
            steered = detector._hook(detector.layers.index(name), name, False)(_module, _inputs, output)
            recorded[name] = (steered / output).detach()  # the factors (outputs are > 0 where it matters)
            return steered
        return hook

    with torch.no_grad(), forward_hooks(detector.model, {name: record(name) for name in detector.layers}):
        detector.model(x)

    def fixed(name: str):
        return lambda _module, _inputs, output: output * torch.nan_to_num(recorded[name], nan=1.0)

    gradients = {}
    for mode in ("reference", "straight_through", "exact"):
        leaf = x.clone().requires_grad_()
        if mode == "reference":
            with forward_hooks(detector.model, {name: fixed(name) for name in detector.layers}):
                logits = detector.model(leaf)
        else:
            logits = detector.steered_logits(leaf, straight_through=mode == "straight_through")
        (gradients[mode],) = torch.autograd.grad(F.cross_entropy(logits, (y[:3] + 1) % NUM_CLASSES), leaf)
        gradients[mode + "_logits"] = logits.detach()
    torch.testing.assert_close(gradients["straight_through_logits"], gradients["exact_logits"])
    scale = gradients["reference"].abs().max()
    assert scale > 0
    torch.testing.assert_close(gradients["straight_through"], gradients["reference"], rtol=1e-4, atol=1e-5 * scale)
    assert (gradients["straight_through"] - gradients["exact"]).abs().max() > 1e-3 * scale


@pytest.mark.parametrize("attack_class", [TransferFilter, DetectorGradient])
def test_adaptive_attacks_evade_at_least_as_often_as_bim(toy, attack_class) -> None:
    detector, x, y = toy
    with torch.no_grad():
        assert not detector(x).flagged.any()  # no false positives on the clean faces
    bim = BIM(**BUDGET)(detector.model, x, y)
    result = attack_class(detector, k_targets=NUM_CLASSES - 1, **BUDGET)(detector.model, x, y)
    assert (result.adversarial - x).abs().amax() <= BUDGET["eps"] + 1e-4
    evaded = undetected_success(detector, result.adversarial, y)
    bim_evaded = undetected_success(detector, bim.adversarial, y)
    assert bim_evaded.sum() < len(y)  # AmI catches some of BIM: the comparison means something
    assert evaded.sum() >= bim_evaded.sum()
    # the result's fields describe what it returns: success = the plain model predicts the chosen target
    with torch.no_grad():
        predicted = detector.model(result.adversarial).argmax(1)
    assert torch.equal(result.success, predicted == result.targets)
    assert bool((result.targets != y).all()) and result.iterations.tolist() == [BUDGET["steps"]] * len(y)


def test_transfer_keeps_an_undetected_candidate_whenever_one_exists(toy) -> None:
    """Per face: if any of its K target runs gives an undetected success, the chosen sample is one."""
    detector, x, y = toy
    attack = TransferFilter(detector, k_targets=3, **BUDGET)
    result = attack(detector.model, x, y)
    with torch.no_grad():
        candidates = likeliest_targets(detector.model(x), y, 3)
    any_evades = torch.zeros(len(y), dtype=torch.bool)
    for j in range(3):
        single = attack(detector.model, x, y, candidates[:, j])
        any_evades |= single.success & undetected_success(detector, single.adversarial, y)
    assert any_evades.any()
    assert bool((undetected_success(detector, result.adversarial, y) | ~any_evades).all())


def test_adaptive_errors(toy) -> None:
    detector, x, y = toy
    with pytest.raises(ValueError, match="'adaptive_gradient' attacks a detector: pass detector="):
        create_attack("adaptive_gradient")
    with pytest.raises(ValueError, match="must be the detector's own plain model"):
        TransferFilter(detector, steps=1)(copy.deepcopy(detector.model), x[:1], y[:1])
    with pytest.raises(ValueError, match="gradient must be 'straight_through' or 'exact', got 'bpda'"):
        DetectorGradient(detector, gradient="bpda")
    with pytest.raises(TypeError, match=r"detector must be a Detector \(ami_lightning.detectors\), got Sequential"):
        TransferFilter(torch.nn.Sequential())


def test_generate_records_the_chosen_targets(toy, tmp_path: Path) -> None:
    """The generator writes adaptive sets like the others; ``target`` is the attack's choice, success is judged
    against it on the stored file."""
    detector, _, _ = toy
    model = detector.model

    class Small(FaceFiles):
        def __getitem__(self, index: int):
            pixels, label, i = super().__getitem__(index)
            return F.interpolate(pixels[None], size=(32, 32), mode="bilinear", antialias=True)[0].round(), label, i

    dataset = Small(face_files()[:4], list(range(4)))
    with pytest.raises(ValueError, match="attacks a detector: pass detector="):
        generate("adaptive_transfer", model, dataset, tmp_path, BUDGET, progress=False)
    folder = generate("adaptive_transfer", model, dataset, tmp_path, {**BUDGET, "k_targets": 2}, batch_size=3,
                      detector=detector, progress=False)
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == [f.with_suffix(".npy").name for f in face_files()[:4]]
    for row in rows:
        assert row["target"] != row["label"] and row["target"] >= 0
        assert row["success"] == (row["adversarial_pred"] == row["target"]) and row["linf"] <= BUDGET["eps"] + 1e-3


def test_random_start_depends_on_each_face_seed_alone() -> None:
    """Each face's K starting points come from its seed only: the same in any batch and at any position, uniform
    in the eps ball around the face and clipped to the pixel bounds; another seed, another start."""
    images = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 255
    seeds = torch.tensor([face_seed(0, "adaptive_transfer", f"face{i}.png") for i in range(5)])
    k, eps = 3, 16.0
    whole = random_start(images.repeat_interleave(k, 0), seeds, k, eps, (0.0, 255.0)).view(5, k, 3, 8, 8)
    picked = torch.tensor([4, 1])
    part = random_start(images[picked].repeat_interleave(k, 0), seeds[picked], k, eps, (0.0, 255.0))
    assert torch.equal(part.view(2, k, 3, 8, 8), whole[picked])
    offset = whole - images[:, None]
    assert offset.abs().max() <= eps and offset.abs().mean() > eps / 4  # uniform in [-eps, eps): mean |u| = eps/2
    assert whole.min() >= 0 and whole.max() <= 255
    assert not torch.equal(whole[:, 0], whole[:, 1])  # the K candidates start apart
    other = random_start(images.repeat_interleave(k, 0), seeds + 1, k, eps, (0.0, 255.0))
    assert not torch.equal(other.view(5, k, 3, 8, 8), whole)


def test_random_start_runs_from_the_face_seeds_and_only_then(toy) -> None:
    """With random_start the result is a function of the seeds (same seeds: identical; others: different); without
    it the seeds are not used; a value that is not a boolean is refused."""
    detector, x, y = toy
    x, y = x[:4], y[:4]
    seeds, others = torch.arange(4), torch.arange(4) + 10
    budget = {**BUDGET, "steps": 3, "k_targets": 2}
    randomised = TransferFilter(detector, **budget, random_start=True)
    first = randomised(detector.model, x, y, seeds=seeds).adversarial
    assert torch.equal(randomised(detector.model, x, y, seeds=seeds).adversarial, first)
    assert not torch.equal(randomised(detector.model, x, y, seeds=others).adversarial, first)
    plain = TransferFilter(detector, **budget)
    assert torch.equal(plain(detector.model, x, y, seeds=seeds).adversarial,
                       plain(detector.model, x, y, seeds=others).adversarial)
    with pytest.raises(ValueError, match="random_start='yes': expected true or false"):
        TransferFilter(detector, random_start="yes")


def test_random_start_sets_are_the_same_from_one_or_two_processes(toy, tmp_path: Path) -> None:
    """A randomised adaptive set written as two shards (rank 0 then rank 1, merged) equals the one written by one
    process, byte for byte, with the same rows (seconds aside); the seed in each row is the face's."""
    detector, _, _ = toy

    class Small(FaceFiles):
        def __getitem__(self, index: int):
            pixels, label, i = super().__getitem__(index)
            return F.interpolate(pixels[None], size=(32, 32), mode="bilinear", antialias=True)[0].round(), label, i

    dataset = Small(face_files()[:5], list(range(5)))
    params = {**BUDGET, "steps": 3, "k_targets": 2, "random_start": True}
    common = {"batch_size": 2, "detector": detector, "progress": False, "seed": 7}
    one = generate("adaptive_transfer", detector.model, dataset, tmp_path / "one", params, **common)
    for rank in (0, 1):
        two = generate("adaptive_transfer", detector.model, dataset, tmp_path / "two", params, rank=rank,
                       world_size=2, **common)
    merge_manifests(two)
    files = sorted(p.name for p in one.glob("*.npy"))
    assert len(files) == 5 and files == sorted(p.name for p in two.glob("*.npy"))
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)

    def rows(folder: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (folder / "manifest.jsonl").read_text().splitlines()]

    assert rows(one) == rows(two)
    assert all(r["seed"] == face_seed(7, "adaptive_transfer", Path(r["source"]).name) for r in rows(one))


@pytest.mark.gpu
@pytest.mark.parametrize("attack_class", [TransferFilter, DetectorGradient])
def test_adaptive_attacks_never_wait_for_the_gpu_per_step(toy, attack_class) -> None:
    """PGD steps through the plain and the steered model queue work without a host sync."""
    detector, x, y = toy
    on_gpu = copy.deepcopy(detector).cuda()
    x, y = x.cuda(), y.cuda()
    attack = attack_class(on_gpu, k_targets=3, **{**BUDGET, "steps": 1})
    attack(on_gpu.model, x, y)  # warm-up (library initialisation)
    with torch.no_grad():
        targets = likeliest_targets(on_gpu.model(x), y, 3).flatten()
    repeated = x.repeat_interleave(3, 0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        adversarial = linf_pgd(attack.loss, repeated, targets, BUDGET["eps"], 5, 6.4)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert (adversarial - repeated).abs().amax() <= BUDGET["eps"] + 1e-3
