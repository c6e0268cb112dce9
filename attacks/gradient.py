"""FGSM and BIM through foolbox 3, with ``eps`` in pixel units (the models take pixels in [0, 255]).

Both are untargeted by default (the published ``fgsm`` and ``bim`` sets are single untargeted sets); given targets,
they step towards them (foolbox's ``TargetedMisclassification``). Default ``eps`` = 8 pixel units (8/255 of the
range, the usual budget for 8-bit images).
"""

from __future__ import annotations

import foolbox as fb
import torch
from torch import nn

from ami_lightning.attacks.base import Attack, AttackResult, TargetMode
from ami_lightning.attacks.registry import register_attack


class FoolboxLinfAttack(Attack):
    """A foolbox L-infinity attack run at one ``eps`` (pixel units) on ``fb.PyTorchModel(model, bounds=(0, 255))``.

    ``attack`` runs untargeted, ``targeted_attack`` (default: ``attack``) with targets. ``iterations`` of every
    sample is ``steps`` (foolbox's gradient attacks do not stop early); ``success`` is foolbox's, judged on the
    returned images, clipped to ``eps`` and the bounds (top-1 differs from the label, or equals the target).
    """

    default_target: TargetMode = "untargeted"

    def __init__(
        self,
        eps: float,
        attack: fb.attacks.base.Attack,
        steps: int,
        targeted_attack: fb.attacks.base.Attack | None = None,
    ) -> None:
        if eps <= 0:
            raise ValueError(f"eps must be positive (pixel units), got {eps}")
        self.eps, self.attack, self.steps = eps, attack, steps
        self.targeted_attack = targeted_attack or attack

    def run(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None,
        seeds: torch.Tensor,
    ) -> AttackResult:
        # device: foolbox would otherwise move the caller's model to cuda:0 whenever CUDA is present
        fmodel = fb.PyTorchModel(model, bounds=self.bounds, device=images.device)
        if targets is None:
            attack, criterion = self.attack, fb.criteria.Misclassification(labels)
        else:
            attack, criterion = self.targeted_attack, fb.criteria.TargetedMisclassification(targets)
        with torch.enable_grad():
            _, clipped, success = attack(fmodel, images, criterion, epsilons=self.eps)
        return AttackResult.build(clipped.detach(), images, success, torch.full_like(labels, self.steps))


@register_attack("fgsm")
class FGSM(FoolboxLinfAttack):
    """Fast gradient sign method (Goodfellow et al. 2015): one signed step of ``eps`` pixel units (default 8).

    Untargeted: foolbox's ``LinfFastGradientAttack``. It refuses targets, so targeted FGSM runs foolbox's one-step
    ``LinfBasicIterativeAttack`` with step ``eps``: the same gradient step (both are foolbox's
    ``LinfBaseGradientDescent`` with ``rel_stepsize=1``, ``steps=1``), towards the target.
    """

    def __init__(self, eps: float = 8.0) -> None:
        one_step = fb.attacks.LinfBasicIterativeAttack(rel_stepsize=1.0, steps=1, random_start=False)
        super().__init__(eps, fb.attacks.LinfFastGradientAttack(random_start=False), steps=1, targeted_attack=one_step)


@register_attack("bim")
class BIM(FoolboxLinfAttack):
    """Basic iterative method (Kurakin et al. 2017): ``steps`` signed steps (default 10), each ``abs_stepsize``
    pixel units if given, else ``rel_stepsize * eps`` (default 0.2 x 8 = 1.6), projected onto the ``eps`` ball
    (default 8 pixel units) and the bounds; no random start."""

    def __init__(
        self, eps: float = 8.0, steps: int = 10, rel_stepsize: float = 0.2, abs_stepsize: float | None = None
    ) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        attack = fb.attacks.LinfBasicIterativeAttack(rel_stepsize=rel_stepsize, abs_stepsize=abs_stepsize, steps=steps)
        super().__init__(eps, attack, steps)
