"""Carlini & Wagner attacks (L2, Linf, L0) on the toy face classifier at 32x32, with small budgets."""

from __future__ import annotations

import copy
import importlib.util
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn

from ami_lightning.attacks.base import AttackResult, distortions, make_targets
from ami_lightning.attacks.cw import (
    CarliniWagnerAttack,
    CarliniWagnerL0,
    CarliniWagnerL2,
    CarliniWagnerLinf,
    SolverState,
    Task,
    binary_search_update,
    freeze_pixels,
    from_tanh_space,
    to_tanh_space,
)
from tests.toy import NUM_CLASSES, toy_classifier, toy_faces

SIZE = 32
BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench_cw_vs_foolbox.py"
ATTACKS: dict[str, Callable[[], CarliniWagnerAttack]] = {
    "l2": lambda: CarliniWagnerL2(binary_search_steps=5, steps=100),
    "linf": lambda: CarliniWagnerLinf(steps=50, initial_const=1e-2),
    "l0": lambda: CarliniWagnerL0(steps=50, initial_const=1.0),
}
SYNCING = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__")


class PerSample(nn.Module):
    """Runs the model one sample at a time: logits bit-identical whatever the batch (batched convolutions differ
    in the last bits, which the attacks' discrete decisions would amplify)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model(x[i : i + 1]) for i in range(len(x))])


@contextmanager
def count_host_syncs(raise_on_sync: bool = False) -> Iterator[list[str]]:
    """Patch the Python-level tensor methods that synchronise with the host; yields the list of calls."""
    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def spy(name: str) -> Callable[..., object]:
        def method(self: torch.Tensor, *args: object, **kwargs: object) -> object:
            calls.append(name)
            if raise_on_sync:
                raise AssertionError(f"host sync: Tensor.{name}")
            return originals[name](self, *args, **kwargs)

        return method

    for name in SYNCING:
        setattr(torch.Tensor, name, spy(name))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@pytest.fixture(scope="module")
def toy() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    images, labels = toy_faces(SIZE)
    return toy_classifier(SIZE), images, labels, make_targets(labels, "next", NUM_CLASSES)


@pytest.fixture(scope="module")
def results(toy) -> dict[str, AttackResult]:
    model, images, labels, targets = toy
    return {name: make()(model, images, labels, targets) for name, make in ATTACKS.items()}


def test_tanh_space_round_trip() -> None:
    pixels = torch.tensor([0.0, 1.0, 127.5, 254.0, 255.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    back = from_tanh_space(to_tanh_space(pixels, (0, 255)), (0, 255))
    assert torch.allclose(back, pixels, atol=1e-3)
    extreme = from_tanh_space(torch.tensor([-50.0, 50.0]), (0, 255))
    assert extreme.tolist() == [0.0, 255.0]


def test_binary_search_update_is_per_sample() -> None:
    const = torch.tensor([1.0, 1.0, 4.0])
    lower, upper = torch.tensor([0.0, 0.0, 2.0]), torch.tensor([math.inf, math.inf, 8.0])
    found = torch.tensor([True, False, False])
    const, lower, upper = binary_search_update(const, lower, upper, found)
    assert upper.tolist() == [1.0, math.inf, 8.0]
    assert lower.tolist() == [0.0, 1.0, 4.0]
    assert const.tolist() == [0.5, 10.0, 6.0]


def test_freeze_pixels_rule() -> None:
    allowed = torch.ones(2, 1, 2, 5, dtype=torch.bool)
    allowed[1, 0, 1] = False  # sample 1: 5 pixel positions left
    delta = torch.zeros(2, 3, 2, 5)
    delta[:, 0, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])  # the first row changes, the second does not
    grad = torch.ones(2, 3, 2, 5)
    new = freeze_pixels(allowed, delta, grad, fraction=0.4, negligible=0.5)
    # unchanged pixels are frozen, then ceil(0.4 * 5) = 2 of the 5 changed ones, the least important first
    expected = torch.tensor([[False, False, True, True, True], [False] * 5])
    assert torch.equal(new[0, 0], expected) and torch.equal(new[1, 0], expected)
    assert freeze_pixels(allowed, delta, grad, fraction=0.01, negligible=0.5)[0, 0, 0].tolist() == [False] + [True] * 4


@pytest.mark.parametrize("name", list(ATTACKS))
def test_reaches_targets_in_bounds(toy, results, name: str) -> None:
    model, images, labels, targets = toy
    result = results[name]
    batch = len(images)
    assert int(result.success.sum()) >= 8
    assert result.adversarial.shape == images.shape and result.adversarial.dtype == torch.float32
    assert result.success.shape == (batch,) and result.success.dtype == torch.bool
    assert result.iterations.shape == (batch,) and result.iterations.dtype == torch.long
    assert bool((result.iterations > 0).all())
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 255
    with torch.no_grad():
        predicted = model(result.adversarial).argmax(1)
    assert torch.equal(predicted[result.success], targets[result.success])
    assert torch.equal(result.adversarial[~result.success], images[~result.success])
    l0, l2, linf = distortions(result.adversarial, images)
    assert torch.equal(result.l0, l0) and torch.equal(result.l2, l2) and torch.equal(result.linf, linf)
    assert result.l0.shape == result.l2.shape == result.linf.shape == (batch,)


def test_linf_is_small_and_below_l2s(results) -> None:
    linf, l2 = results["linf"], results["l2"]
    both = linf.success & l2.success
    # tau starts at 1 ([0, 1] units, i.e. 255 pixel levels); the toy model needs 28-64 levels (LinfPGD)
    assert bool((linf.linf[linf.success] < 0.4 * 255).all())
    assert float(linf.linf[linf.success].median()) < 48
    assert float(linf.linf[both].mean()) < 0.75 * float(l2.linf[both].mean())


def test_l0_changes_fewer_pixels_than_l2(results) -> None:
    l0, l2 = results["l0"], results["l2"]
    assert float(l0.l0[l0.success].float().mean()) < 0.25 * float(l2.l0[l2.success].float().mean())
    assert int(l0.l0[l0.success].max()) < SIZE * SIZE // 2


def test_untargeted_l2(toy) -> None:
    model, images, labels, _ = toy
    result = CarliniWagnerL2(binary_search_steps=5, steps=100)(model, images, labels, None)
    assert int(result.success.sum()) >= 8
    with torch.no_grad():
        predicted = model(result.adversarial).argmax(1)
    assert bool((predicted[result.success] != labels[result.success]).all())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ATTACKS))
def test_batch_independence(toy, name: str) -> None:
    model, images, labels, targets = toy
    model = PerSample(model)
    picked = [0, 4, 9]
    attack = ATTACKS[name]()
    batch = attack(model, images[picked], labels[picked], targets[picked])
    for row, i in enumerate(picked):
        alone = attack(model, images[i : i + 1], labels[i : i + 1], targets[i : i + 1])
        assert torch.allclose(alone.adversarial[0], batch.adversarial[row], atol=1e-3)
        assert bool(alone.success[0] == batch.success[row])
        assert int(alone.iterations[0]) == int(batch.iterations[row])


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_cw_vs_foolbox", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_l2_no_worse_than_foolbox(toy, bench) -> None:
    model, images, labels, targets = toy
    figures = bench.compare_with_foolbox(model, images, labels, targets, binary_search_steps=5, steps=100)
    print("C&W L2 vs foolbox:", {key: round(value, 3) for key, value in figures.items()})
    assert figures["success_ours"] >= figures["success_foolbox"] - 0.1
    assert figures["median_l2_ours"] <= 1.1 * figures["median_l2_foolbox"]


@pytest.mark.slow
def test_l2_matches_foolbox_run_per_sample(toy, bench) -> None:
    """With per-sample abort-early, ours is foolbox run one sample at a time (targets "first": most samples share a
    target, where foolbox batched differs most, its abort-early looking at the batch's summed loss)."""
    model, images, labels, _ = toy
    targets = make_targets(labels, "first", NUM_CLASSES)
    figures = bench.compare_with_foolbox(
        model, images, labels, targets, binary_search_steps=5, steps=100, per_sample=True
    )
    print("C&W L2 vs foolbox, target first:", {key: round(value, 3) for key, value in figures.items()})
    assert figures["success_ours"] == figures["success_foolbox_per_sample"]
    assert figures["median_l2_ours"] == pytest.approx(figures["median_l2_foolbox_per_sample"], rel=0.02)


def _start(attack: CarliniWagnerAttack, toy, device: torch.device) -> tuple[Task, SolverState]:
    model, images, labels, targets = toy
    images, labels, targets = images.to(device), labels.to(device), targets.to(device)
    l2 = isinstance(attack, CarliniWagnerL2)
    const = images.new_full((len(images),), 10.0 if l2 else attack.initial_const)  # L2: a constant that succeeds
    tau = 1.0 if isinstance(attack, CarliniWagnerLinf) else math.inf
    model = copy.deepcopy(model).to(device)  # the toy model is cached and shared: move a copy
    return Task(model, images, labels, targets), SolverState.initial(images, attack.bounds, const, tau)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_step_never_syncs_with_the_host(toy, name: str) -> None:
    attack = ATTACKS[name]()
    task, state = _start(attack, toy, torch.device("cpu"))
    with count_host_syncs(raise_on_sync=True):
        for index in range(60):  # long enough for rounds to end (Linf, L0) and for stall checks (L2)
            state = attack.step(task, state, stall_check=index % 10 == 0)
    assert int(state.found.sum()) > 0


@pytest.mark.parametrize("name", list(ATTACKS))
def test_run_syncs_only_at_the_done_checks(toy, name: str) -> None:
    """The only host syncs of a run are the every-``sync_every``-iterations checks whether all samples are done."""
    model, images, labels, targets = toy
    attack = ATTACKS[name]()
    with count_host_syncs() as calls:
        result = attack.run(model, images[:3], labels[:3], targets[:3], torch.arange(3))
    every = attack.solver.sync_every
    if isinstance(attack, CarliniWagnerL2):
        assert len(calls) <= attack.binary_search_steps * math.ceil(attack.solver.steps / every)
    else:  # one loop, as long as its slowest sample
        assert len(calls) <= math.ceil(int(result.iterations.max()) / every)
    assert set(calls) == {"__bool__"}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(ATTACKS))
def test_step_never_syncs_on_cuda(toy, name: str) -> None:
    attack = ATTACKS[name]()
    task, state = _start(attack, toy, torch.device("cuda"))
    state = attack.step(task, state, stall_check=True)  # warm-up (library initialisation)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for index in range(60):
            state = attack.step(task, state, stall_check=index % 10 == 0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(state.found.sum()) > 0
