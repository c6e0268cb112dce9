"""FGSM and BIM through foolbox 3, with eps in pixel units (the models take pixels in [0, 255])."""

from __future__ import annotations

import foolbox as fb
import torch
from torch import nn

from attacks.base import Attack, AttackResult, is_success


class FoolboxLinfAttack(Attack):
    """A foolbox L-infinity attack run at one ``eps`` (pixel units); untargeted unless targets are given."""

    default_target = "untargeted"

    def __init__(self, eps: float, attack: fb.attacks.base.Attack, steps: int) -> None:
        if eps <= 0:
            raise ValueError(f"eps must be positive (pixel units), got {eps}")
        self.eps, self.attack, self.steps = eps, attack, steps

    def run(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None
    ) -> AttackResult:
        fmodel = fb.PyTorchModel(model, bounds=self.bounds)
        criterion = fb.criteria.TargetedMisclassification(targets) if targets is not None else labels
        _, clipped, _ = self.attack(fmodel, images, criterion, epsilons=self.eps)
        with torch.no_grad():
            success = is_success(model(clipped), labels, targets)
        return AttackResult.build(clipped.detach(), images, success, torch.full_like(labels, self.steps))


class FGSM(FoolboxLinfAttack):
    """Fast gradient sign method (Goodfellow et al.): one step of size ``eps`` (default 8 pixel units = 8/255)."""

    def __init__(self, eps: float = 8.0) -> None:
        super().__init__(eps, fb.attacks.LinfFastGradientAttack(random_start=False), steps=1)


class BIM(FoolboxLinfAttack):
    """Basic iterative method (Kurakin et al.): ``steps`` signed steps of ``rel_stepsize * eps``, within ``eps``."""

    def __init__(self, eps: float = 8.0, steps: int = 10, rel_stepsize: float = 0.2) -> None:
        super().__init__(eps, fb.attacks.LinfBasicIterativeAttack(rel_stepsize=rel_stepsize, steps=steps), steps)
