"""Carlini & Wagner attacks (L2, Linf, L0), batched with every per-sample quantity kept as a tensor.

Carlini and Wagner, "Towards evaluating the robustness of neural networks", IEEE S&P 2017, and their reference
code (``nn_robust_attacks``). All three minimise ``const * max(f(x'), 0) + penalty(x' - x)`` with Adam in the tanh
change of variables ``x' = 127.5 * tanh(w) + 127.5`` (always inside the pixel bounds [0, 255]), where ``f`` is the
logit margin (:func:`margin`) and the penalty is measured in Carlini's [0, 1] units (pixels / 255), so that his
constants (initial ``const``, ``tau``) keep their meaning. The model sees pixels [0, 255] and does its own
preprocessing.

Batching: each sample has its own constant, Adam state, running flag and best result; a sample that is done keeps
its result and its updates are masked, so a sample's result does not depend on its batch mates (for models
without cross-sample coupling, e.g. eval mode). The Linf and L0 attacks run their rounds (tighten the constraint,
warm-start, escalate the constant) per sample inside one loop, so a batch shrinks at different rates without
waiting for its slowest member. One iteration (:meth:`CarliniWagnerAttack.step`) never synchronises with the host;
the loop around it asks ``running.any()`` once every ``sync_every`` iterations, only to stop once every sample is
done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from ami_lightning.attacks.registry import register_attack

from .base import Attack, AttackResult

Tensor = torch.Tensor

TANH_SHRINK = 0.999999  # keeps atanh finite at the bounds (Carlini's 1.999999 / 2)
PIXEL_SCALE = 255.0  # pixels per [0, 1] unit
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
STALL_FACTOR = 0.9999  # Carlini's abort-early test: stop when loss > 0.9999 * loss at the previous check
REPEAT_CONST_CAP = 1e10  # Carlini's L2: with >= 10 binary steps the last one retries the upper bound (capped)


# --- the maths, shared by the three attacks -------------------------------------------------------------------


def to_tanh_space(pixels: Tensor, bounds: tuple[float, float]) -> Tensor:
    """w with ``from_tanh_space(w) ~= pixels`` (within ~1e-4 pixel); pixels (B, 3, H, W) in ``bounds``."""
    low, high = bounds
    half = (high - low) / 2
    return torch.atanh((pixels - (low + half)) / half * TANH_SHRINK)


def from_tanh_space(w: Tensor, bounds: tuple[float, float]) -> Tensor:
    """Pixels in ``bounds`` (closed) from unconstrained w, same shape."""
    low, high = bounds
    half = (high - low) / 2
    return torch.tanh(w) * half + (low + half)


def margin(logits: Tensor, labels: Tensor, targets: Tensor | None, confidence: float) -> Tensor:
    """Carlini's f before its clamp at 0, (B,): best other logit - target logit + confidence (targeted), or true
    logit - best other logit + confidence (untargeted). The sample is adversarial (with that confidence) where it is
    negative. logits (B, K); labels, targets (B,) long."""
    chosen = labels if targets is None else targets
    own = logits.gather(1, chosen[:, None]).squeeze(1)
    other = logits.scatter(1, chosen[:, None], -torch.inf).amax(1)
    return (other - own if targets is not None else own - other) + confidence


def squared_l2(delta: Tensor) -> Tensor:
    """(B,) sum of squares of delta (B, 3, H, W) ([0, 1] units): the L2 and L0 penalty."""
    return delta.square().flatten(1).sum(1)


def linf_excess(delta: Tensor, tau: Tensor) -> Tensor:
    """(B,) sum of ``relu(|delta| - tau)``: Carlini's Linf penalty; delta (B, 3, H, W), tau (B,), [0, 1] units."""
    return (delta.abs() - tau.view(-1, 1, 1, 1)).clamp(min=0).flatten(1).sum(1)


def linf_within(delta: Tensor, tau: Tensor) -> Tensor:
    """(B,) bool: max |delta| <= tau, i.e. :func:`linf_excess` is zero."""
    return delta.flatten(1).abs().amax(1) <= tau


def adam_step(
    grad: Tensor, m: Tensor, v: Tensor, t: Tensor, active: Tensor, lr: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One Adam step (bias-corrected, as in Carlini's TF code and foolbox) for the active samples only.

    grad, m, v (B, 3, H, W); t (B,) float, the per-sample step count; active (B,) bool. Returns (update, m, v, t),
    with update zero and m, v, t unchanged where inactive; the caller subtracts the update.
    """
    beta1, beta2 = ADAM_BETAS
    mask = active.view(-1, 1, 1, 1)
    t = t + active.to(t.dtype)
    m = torch.where(mask, beta1 * m + (1 - beta1) * grad, m)
    v = torch.where(mask, beta2 * v + (1 - beta2) * grad.square(), v)
    steps = t.clamp(min=1).view(-1, 1, 1, 1)
    update = lr * (m / (1 - beta1**steps)) / ((v / (1 - beta2**steps)).sqrt() + ADAM_EPS)
    return torch.where(mask, update, 0.0), m, v, t


def binary_search_update(
    const: Tensor, lower: Tensor, upper: Tensor, found: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Carlini's per-sample search over the constant, all (B,): where an adversarial was found with ``const`` it
    becomes the upper bound, elsewhere the lower one; the next constant is the midpoint, or ``10 * const`` while no
    upper bound is known. Returns (const, lower, upper)."""
    upper = torch.where(found, torch.minimum(upper, const), upper)
    lower = torch.where(found, lower, torch.maximum(lower, const))
    const = torch.where(torch.isinf(upper), const * 10, (lower + upper) / 2)
    return const, lower, upper


def freeze_pixels(allowed: Tensor, delta: Tensor, grad: Tensor, fraction: float, negligible: float) -> Tensor:
    """The L0 attack's shrinking rule: the next allowed set (B, 1, H, W) bool after a success.

    Every allowed pixel position whose change is negligible (max over channels of |delta| <= ``negligible``) is
    frozen, and of the n changed ones the ``max(1, ceil(fraction * n))`` with the least importance, sum_c |delta| *
    sum_c |grad| (Carlini's score: the first-order share of the pixel in the margin), are frozen too. delta: the
    successful perturbation (B, 3, H, W), pixel units; grad: the gradient of :func:`margin` there (B, 3, H, W).
    """
    change = delta.abs()
    changed = allowed & (change.amax(1, keepdim=True) > negligible)
    importance = change.sum(1, keepdim=True) * grad.abs().sum(1, keepdim=True)
    importance = importance.masked_fill(~changed, torch.inf).flatten(1)
    count = (fraction * changed.flatten(1).sum(1)).ceil().clamp(min=1)
    order = importance.argsort(dim=1, stable=True)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)  # each pixel's place in the ascending order
    frozen = (rank < count[:, None]).view_as(changed)
    return changed & ~frozen


# --- the solver, shared by the three attacks ------------------------------------------------------------------


@dataclass(frozen=True)
class Solver:
    """Settings of the Adam optimisation.

    ``steps``: Adam steps per value of the constant. L2 (``rounds`` False): every sample runs ``steps`` steps and
    keeps its smallest-penalty success; ``abort_on_stall`` is Carlini's abort-early, per sample, every
    ``steps // 10`` steps. Linf, L0 (``rounds`` True): a success ends the sample's round; the attack tightens the
    sample's constraint and the optimisation restarts from the success (warm start, fresh Adam, same constant);
    after ``steps`` steps without success the constant is multiplied by ``const_factor`` and the sample gives up
    once it reaches ``max_const``. ``sync_every``: how often the loop asks whether every sample is done.
    """

    steps: int
    lr: float
    confidence: float = 0.0
    rounds: bool = False
    abort_on_stall: bool = False
    const_factor: float = 2.0
    max_const: float = math.inf
    sync_every: int = 10

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.sync_every < 1 or self.confidence < 0 or self.const_factor <= 1:
            raise ValueError(f"invalid solver settings {self}")


@dataclass(frozen=True)
class Task:
    """The batch under attack: images (B, 3, H, W) pixels in bounds, labels (B,), targets (B,) or None."""

    model: nn.Module
    images: Tensor
    labels: Tensor
    targets: Tensor | None


@dataclass(frozen=True)
class SolverState:
    """Everything per sample, as tensors.

    w_start (B, 3, H, W): the (warm) start in tanh space; allowed (B, 1, H, W) bool: pixel positions that may change
    (the others stay exactly the original); tau (B,): Linf bound in [0, 1] units (inf: none); modifier, adam_m,
    adam_v (B, 3, H, W) and adam_t (B,): the variable added to w_start and its Adam state; const (B,) and
    const_steps (B,) long, steps under it in the current round; running, found (B,) bool; adversarial
    (B, 3, H, W) pixels, the kept success (the original where none), and score (B,), its penalty (inf: none);
    checked_loss (B,): the loss at the last stall check; iterations (B,) long: gradient evaluations.
    """

    w_start: Tensor
    allowed: Tensor
    tau: Tensor
    modifier: Tensor
    adam_m: Tensor
    adam_v: Tensor
    adam_t: Tensor
    const: Tensor
    const_steps: Tensor
    running: Tensor
    found: Tensor
    adversarial: Tensor
    score: Tensor
    checked_loss: Tensor
    iterations: Tensor

    @classmethod
    def initial(cls, images: Tensor, bounds: tuple[float, float], const: Tensor, tau: float) -> SolverState:
        """Start at the images (B, 3, H, W), every pixel allowed, constants (B,), the same tau for all."""
        batch = images.shape[0]
        zeros = torch.zeros_like(images)
        counts = torch.zeros(batch, dtype=torch.long, device=images.device)
        return cls(
            w_start=to_tanh_space(images, bounds),
            allowed=torch.ones_like(images[:, :1], dtype=torch.bool),
            tau=images.new_full((batch,), tau),
            modifier=zeros,
            adam_m=zeros,
            adam_v=zeros,
            adam_t=images.new_zeros(batch),
            const=const.to(images),
            const_steps=counts,
            running=torch.ones(batch, dtype=torch.bool, device=images.device),
            found=torch.zeros(batch, dtype=torch.bool, device=images.device),
            adversarial=images.clone(),
            score=images.new_full((batch,), torch.inf),
            checked_loss=images.new_full((batch,), torch.inf),
            iterations=counts,
        )


class CarliniWagnerAttack(Attack):
    """The optimisation shared by the three C&W attacks: subclasses set ``solver``, may override :meth:`penalty`,
    and (rounds attacks) implement :meth:`advance`."""

    solver: Solver

    def penalty(self, delta: Tensor, state: SolverState) -> Tensor:
        """(B,) distance term of the loss for delta (B, 3, H, W) in [0, 1] units; here the squared L2."""
        return squared_l2(delta)

    def advance(
        self, state: SolverState, success: Tensor, delta: Tensor, margin_grad: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Rounds attacks: (tau (B,), allowed (B, 1, H, W), finished (B,) bool) after the samples in ``success``
        (B,) succeeded with delta (B, 3, H, W) pixels, where the margin has gradient margin_grad (B, 3, H, W)."""
        raise NotImplementedError(f"{type(self).__name__} has no rounds")

    def step(self, task: Task, state: SolverState, stall_check: bool) -> SolverState:
        """One iteration for the whole batch, without host synchronisation: evaluate the loss at the current point,
        keep the point where it is a success (the smaller-penalty one for L2), then take an Adam step for the
        samples still running (rounds attacks: restart the samples that succeeded, escalate stuck constants).

        ``stall_check``: this iteration is one of Carlini's abort-early checks (a Python bool from the loop index).
        """
        solver = self.solver
        modifier = state.modifier.detach().requires_grad_()
        with torch.enable_grad():
            pixels = torch.where(state.allowed, from_tanh_space(state.w_start + modifier, self.bounds), task.images)
            # one backward pass through the model, each sample's margin weighted by its constant where the clamp
            # max(f, 0) is open and by 1 elsewhere, gives both the loss gradient and the margin gradient (for L0)
            leaf = pixels.detach().requires_grad_()
            f = margin(task.model(leaf), task.labels, task.targets, solver.confidence)
            open_ = f.detach() >= 0
            weight = torch.where(open_, state.const, 1.0)
            (weighted_grad,) = torch.autograd.grad((weight * f).sum(), leaf)
            penalty = self.penalty((pixels - task.images) / PIXEL_SCALE, state)
            outer = torch.where(open_.view(-1, 1, 1, 1), weighted_grad, 0.0)
            (grad,) = torch.autograd.grad((outer * pixels).sum() + penalty.sum(), modifier)
        pixels, f, penalty = pixels.detach(), f.detach(), penalty.detach()
        delta = pixels - task.images
        loss = state.const * f.clamp(min=0) + penalty

        running, checked_loss = state.running, state.checked_loss
        if stall_check:
            running = running & (loss <= STALL_FACTOR * checked_loss)
            checked_loss = torch.where(running, loss, checked_loss)
        success = running & (f < 0) & linf_within(delta / PIXEL_SCALE, state.tau)
        keep = success if solver.rounds else success & (penalty < state.score)
        moving = running & ~success if solver.rounds else running
        update, adam_m, adam_v, adam_t = adam_step(grad, state.adam_m, state.adam_v, state.adam_t, moving, solver.lr)
        state = replace(
            state,
            modifier=state.modifier - update,
            adam_m=adam_m,
            adam_v=adam_v,
            adam_t=adam_t,
            running=running,
            found=state.found | success,
            adversarial=torch.where(keep.view(-1, 1, 1, 1), pixels, state.adversarial),
            score=torch.where(keep, penalty, state.score),
            checked_loss=checked_loss,
            iterations=state.iterations + state.running.long(),
        )
        if not solver.rounds:
            return state
        return self.next_round(state, success, pixels, delta, weighted_grad / weight.view(-1, 1, 1, 1))

    def next_round(
        self, state: SolverState, success: Tensor, pixels: Tensor, delta: Tensor, margin_grad: Tensor
    ) -> SolverState:
        """Rounds attacks, after a step: the samples in ``success`` (B,) tighten their constraint (:meth:`advance`)
        and restart from their success, ``pixels`` = images + ``delta`` (B, 3, H, W), with a fresh Adam; the others
        count the step and multiply their constant after ``steps`` steps; samples finish (constraint exhausted) or
        give up (constant at ``max_const``)."""
        solver = self.solver
        tau, allowed, finished = self.advance(state, success, delta, margin_grad)
        restart = success.view(-1, 1, 1, 1)
        const_steps = torch.where(success, 0, state.const_steps + state.running.long())
        exhausted = const_steps >= solver.steps
        const = torch.where(exhausted, state.const * solver.const_factor, state.const)
        return replace(
            state,
            w_start=torch.where(restart, to_tanh_space(pixels, self.bounds), state.w_start),
            allowed=allowed,
            tau=tau,
            modifier=torch.where(restart, 0.0, state.modifier),
            adam_m=torch.where(restart, 0.0, state.adam_m),
            adam_v=torch.where(restart, 0.0, state.adam_v),
            adam_t=torch.where(success, 0.0, state.adam_t),
            const=const,
            const_steps=torch.where(exhausted, 0, const_steps),
            running=state.running & ~finished & (const < solver.max_const),
        )

    def solve(self, task: Task, state: SolverState, max_iterations: int) -> SolverState:
        """Run :meth:`step` for at most ``max_iterations`` iterations, stopping early once no sample runs (asked
        every ``sync_every`` iterations: the only host synchronisation)."""
        check_every = max(1, self.solver.steps // 10)
        for index in range(max_iterations):
            state = self.step(task, state, self.solver.abort_on_stall and index % check_every == 0)
            if (index + 1) % self.solver.sync_every == 0 and not bool(state.running.any()):
                break
        return state


def const_values(initial: float, factor: float, largest: float) -> int:
    """How many constants ``initial * factor**k < largest`` a sample may try (at least 1)."""
    return max(1, math.ceil(math.log(largest / initial) / math.log(factor)))


# --- the attacks ----------------------------------------------------------------------------------------------


@register_attack("cw_l2_first", target_mode="first")
@register_attack("cw_l2_next", target_mode="next")
class CarliniWagnerL2(CarliniWagnerAttack):
    """C&W L2 with a per-sample binary search over the constant; keeps each sample's smallest-L2 success across
    binary steps. Defaults are Carlini's; ``abort_early`` stops a sample's Adam run when its loss stalls. The
    constant weighs the squared L2 in [0, 1] units (foolbox, measuring it in pixels, needs ``const * 255**2``)."""

    def __init__(
        self,
        binary_search_steps: int = 9,
        steps: int = 10_000,
        lr: float = 1e-2,
        initial_const: float = 1e-3,
        confidence: float = 0.0,
        abort_early: bool = True,
        sync_every: int = 10,
    ) -> None:
        if binary_search_steps < 1 or initial_const <= 0:
            raise ValueError("binary_search_steps must be >= 1 and initial_const > 0")
        self.binary_search_steps = binary_search_steps
        self.initial_const = initial_const
        self.solver = Solver(steps, lr, confidence, abort_on_stall=abort_early, sync_every=sync_every)

    def run(
        self, model: nn.Module, images: Tensor, labels: Tensor, targets: Tensor | None, seeds: Tensor
    ) -> AttackResult:
        task = Task(model, images, labels, targets)
        batch = images.shape[0]
        const = images.new_full((batch,), self.initial_const)
        lower, upper = images.new_zeros(batch), images.new_full((batch,), torch.inf)
        best, best_score = images.clone(), images.new_full((batch,), torch.inf)
        iterations = torch.zeros(batch, dtype=torch.long, device=images.device)
        for step in range(self.binary_search_steps):
            if self.binary_search_steps >= 10 and step == self.binary_search_steps - 1:
                const = upper.clamp(max=REPEAT_CONST_CAP)
            state = self.solve(task, SolverState.initial(images, self.bounds, const, torch.inf), self.solver.steps)
            better = state.score < best_score
            best = torch.where(better.view(-1, 1, 1, 1), state.adversarial, best)
            best_score = torch.where(better, state.score, best_score)
            iterations = iterations + state.iterations
            const, lower, upper = binary_search_update(const, lower, upper, state.found)
        return AttackResult.build(best, images, torch.isfinite(best_score), iterations)


@register_attack("cw_li_first", target_mode="first")
@register_attack("cw_li_next", target_mode="next")
class CarliniWagnerLinf(CarliniWagnerAttack):
    """C&W Linf: minimise ``const * max(f, 0) + sum(relu(|delta| - tau))`` ([0, 1] units), tau from 1.

    Each round warm-starts from the sample's last success and ends at the first adversarial point with
    max |delta| <= tau, after which ``tau = tau_decrease * min(tau, max |delta|)``; after ``steps`` steps without
    success the constant doubles (it is kept across rounds). A sample stops when its constant reaches
    ``max_const`` or once tau <= ``min_tau``; the result is its last success (the original where none).
    """

    def __init__(
        self,
        steps: int = 1000,
        lr: float = 5e-3,
        initial_const: float = 1e-5,
        max_const: float = 20.0,
        const_factor: float = 2.0,
        tau_decrease: float = 0.9,
        min_tau: float = 1 / 256,
        confidence: float = 0.0,
        sync_every: int = 10,
    ) -> None:
        if not (0 < initial_const < max_const and 0 < tau_decrease < 1 and 0 < min_tau < 1):
            raise ValueError("need 0 < initial_const < max_const, and tau_decrease and min_tau in (0, 1)")
        self.initial_const = initial_const
        self.tau_decrease = tau_decrease
        self.min_tau = min_tau
        self.solver = Solver(
            steps, lr, confidence, rounds=True, const_factor=const_factor, max_const=max_const, sync_every=sync_every
        )

    def penalty(self, delta: Tensor, state: SolverState) -> Tensor:
        return linf_excess(delta, state.tau)

    def advance(
        self, state: SolverState, success: Tensor, delta: Tensor, margin_grad: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        reached = delta.flatten(1).abs().amax(1) / PIXEL_SCALE
        tau = torch.where(success, self.tau_decrease * torch.minimum(state.tau, reached), state.tau)
        return tau, state.allowed, success & (tau <= self.min_tau)

    def run(
        self, model: nn.Module, images: Tensor, labels: Tensor, targets: Tensor | None, seeds: Tensor
    ) -> AttackResult:
        rounds = math.ceil(math.log(self.min_tau) / math.log(self.tau_decrease))
        consts = const_values(self.initial_const, self.solver.const_factor, self.solver.max_const)
        const = images.new_full((images.shape[0],), self.initial_const)
        state = SolverState.initial(images, self.bounds, const, 1.0)
        state = self.solve(Task(model, images, labels, targets), state, self.solver.steps * (rounds + consts))
        return AttackResult.build(state.adversarial, images, state.found, state.iterations)


@register_attack("cw_l0_first", target_mode="first")
@register_attack("cw_l0_next", target_mode="next")
class CarliniWagnerL0(CarliniWagnerAttack):
    """C&W L0: the L2 problem restricted to a per-sample allowed set of pixel positions (all channels of a pixel
    together). Each round warm-starts from the sample's last success and ends at the first adversarial point, after
    which :func:`freeze_pixels` shrinks the allowed set; after ``steps`` steps without success the constant doubles
    (it is kept across rounds). A sample stops when its constant reaches ``max_const`` or nothing is left to change;
    the result is its last success (the fewest changed pixels; the original where none).

    ``shrink``: the fraction of the changed pixels frozen after a success; ``negligible``: a change (pixel units)
    at or below which a pixel counts as unchanged and is frozen for free.
    """

    def __init__(
        self,
        steps: int = 1000,
        lr: float = 1e-2,
        initial_const: float = 1e-3,
        max_const: float = 2e6,
        const_factor: float = 2.0,
        shrink: float = 0.3,
        negligible: float = 0.5,
        confidence: float = 0.0,
        sync_every: int = 10,
    ) -> None:
        if not (0 < initial_const < max_const and 0 < shrink < 1 and negligible >= 0):
            raise ValueError("need 0 < initial_const < max_const, 0 < shrink < 1 and negligible >= 0")
        self.initial_const = initial_const
        self.shrink = shrink
        self.negligible = negligible
        self.solver = Solver(
            steps, lr, confidence, rounds=True, const_factor=const_factor, max_const=max_const, sync_every=sync_every
        )

    def advance(
        self, state: SolverState, success: Tensor, delta: Tensor, margin_grad: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        shrunk = freeze_pixels(state.allowed, delta, margin_grad, self.shrink, self.negligible)
        allowed = torch.where(success.view(-1, 1, 1, 1), shrunk, state.allowed)
        return state.tau, allowed, success & ~allowed.flatten(1).any(1)

    def run(
        self, model: nn.Module, images: Tensor, labels: Tensor, targets: Tensor | None, seeds: Tensor
    ) -> AttackResult:
        rounds = images.shape[-2] * images.shape[-1]  # each success freezes at least one pixel position
        consts = const_values(self.initial_const, self.solver.const_factor, self.solver.max_const)
        const = images.new_full((images.shape[0],), self.initial_const)
        state = SolverState.initial(images, self.bounds, const, torch.inf)
        state = self.solve(Task(model, images, labels, targets), state, self.solver.steps * (rounds + consts))
        return AttackResult.build(state.adversarial, images, state.found, state.iterations)
