"""Physical-style attacks that change only the pixels under a fixed mask: a square patch and eyeglass frames.

Both optimise the masked pixels with signed, L1-normalised momentum steps (the optimiser of Sharif et al. 2016's
eyeglass attack, as in MI-FGSM), in pixel units within [0, 255], towards the target class (or away from the true
class when untargeted). Pixels outside the mask are copied from the input, so they are bit-for-bit unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import Attack, AttackResult, is_success

REFERENCE_SIZE = 224


def patch_mask(height: int, width: int, top: int = 145, left: int = 145, size: int = 59) -> torch.Tensor:
    """(H, W) bool square; ``top``, ``left``, ``size`` in pixels of a 224 image (the published samples' rows and
    columns 145-203), scaled to H x W."""
    sy, sx = height / REFERENCE_SIZE, width / REFERENCE_SIZE
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[round(top * sy) : round((top + size) * sy), round(left * sx) : round((left + size) * sx)] = True
    return mask


def eyeglasses_mask(height: int, width: int, thickness: float = 7.0) -> torch.Tensor:
    """(H, W) bool eyeglass frames drawn in code: two elliptical lens rims and a bridge, over rows ~37-93 and
    columns ~12-176 of a 224 face crop (scaled to H x W); ``thickness`` in pixels of the 224 crop."""
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) * REFERENCE_SIZE / height
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) * REFERENCE_SIZE / width
    y, x = torch.meshgrid(ys, xs, indexing="ij")

    def ring(cx: float, cy: float, a: float, b: float) -> torch.Tensor:
        outer = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1
        inner = ((x - cx) / (a - thickness)) ** 2 + ((y - cy) / (b - thickness)) ** 2 <= 1
        return outer & ~inner

    bridge = (y >= 58) & (y <= 58 + thickness) & (x >= 90) & (x <= 98)
    return ring(52, 65, 40, 28) | ring(136, 65, 40, 28) | bridge


class MaskedAttack(Attack):
    """Optimise the pixels of ``mask(H, W)`` for ``steps`` momentum steps of ``lr`` pixel units each.

    A sample stops changing once it succeeds (its first successful image is kept); the loop ends early when all
    have succeeded, checked every ``check_every`` steps (the only host synchronisation).
    """

    default_target = "first"

    def __init__(self, steps: int = 200, lr: float = 4.0, momentum: float = 0.9, check_every: int = 10) -> None:
        if steps < 1 or lr <= 0:
            raise ValueError(f"steps must be >= 1 and lr > 0, got {steps}, {lr}")
        self.steps, self.lr, self.momentum, self.check_every = steps, lr, momentum, check_every

    def mask(self, height: int, width: int) -> torch.Tensor:
        raise NotImplementedError

    def start(self, images: torch.Tensor) -> torch.Tensor:
        """Starting pixels under the mask (B, 3, H, W)."""
        return images

    def run(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None
    ) -> AttackResult:
        mask = self.mask(*images.shape[-2:]).to(images.device).expand_as(images)
        adv = torch.where(mask, self.start(images), images)
        best, velocity = adv.clone(), torch.zeros_like(images)
        done = torch.zeros_like(labels, dtype=torch.bool)
        iterations = torch.full_like(labels, self.steps)
        for step in range(self.steps):
            adv.requires_grad_(True)
            logits = model(adv)
            # targeted: descend the target's cross-entropy; untargeted: ascend the true class's
            loss = F.cross_entropy(logits, targets) if targets is not None else -F.cross_entropy(logits, labels)
            (grad,) = torch.autograd.grad(loss * len(labels), adv)
            adv = adv.detach()
            success = is_success(logits.detach(), labels, targets)
            newly = success & ~done
            best = torch.where(newly.view(-1, 1, 1, 1), adv, best)
            iterations = torch.where(newly, step, iterations)
            done = done | success
            normalised = grad / grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
            velocity = self.momentum * velocity + normalised
            moving = (~done).view(-1, 1, 1, 1) & mask
            adv = torch.where(moving, (adv - self.lr * velocity.sign()).clamp(*self.bounds), adv)
            if self.check_every and (step + 1) % self.check_every == 0 and bool(done.all()):
                break
        with torch.no_grad():
            last_success = is_success(model(adv), labels, targets) & ~done
        adversarial = torch.where(done.view(-1, 1, 1, 1), best, adv)
        return AttackResult.build(adversarial, images, done | last_success, iterations)


class Patch(MaskedAttack):
    """A square patch (default: rows/columns 145-203 of a 224 image), optimised freely within [0, 255]."""

    def __init__(self, top: int = 145, left: int = 145, size: int = 59, **kwargs: float) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.top, self.left, self.size = top, left, size

    def mask(self, height: int, width: int) -> torch.Tensor:
        return patch_mask(height, width, self.top, self.left, self.size)


class Eyeglasses(MaskedAttack):
    """Eyeglass frames (Sharif et al. 2016 style), starting from a solid ``colour`` (RGB pixel values)."""

    def __init__(self, colour: tuple[float, float, float] = (128.0, 128.0, 128.0), thickness: float = 7.0,
                 **kwargs: float) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.colour, self.thickness = colour, thickness

    def mask(self, height: int, width: int) -> torch.Tensor:
        return eyeglasses_mask(height, width, self.thickness)

    def start(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.colour, dtype=images.dtype, device=images.device).view(1, 3, 1, 1).expand_as(images)
