"""Physical-style attacks that change only the pixels under a fixed mask: a square patch and eyeglass frames.

One optimiser serves both (:class:`MaskedAttack`): signed, L1-normalised momentum steps on the masked pixels (the
optimiser of Sharif et al. 2016's eyeglass attack, as in MI-FGSM), ``lr`` pixel units per step, kept in [0, 255],
descending the cross-entropy of the target class (or ascending that of the true class when untargeted). The
subclasses only say where the mask is (:meth:`MaskedAttack.mask`) and what the masked pixels start from
(:meth:`MaskedAttack.start`).

Locations are given in the pixel frame of a 224 x 224 face crop (the published samples' size) and scaled to the
image's own size, so the same attack serves 224 crops and small test images. Pixels outside the mask are copied from
the input (``torch.where(mask, adversarial, images)``), so they are bit-for-bit unchanged. With an integer ``lr``
and integer input pixels (decoded 8-bit images) and start colour, every masked pixel stays an integer, so an 8-bit
PNG of the result holds exactly the pixels that were evaluated.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TypedDict, Unpack

import torch
import torch.nn.functional as F
from torch import nn

from ami_lightning.attacks.base import Attack, AttackResult, TargetMode, is_success
from ami_lightning.attacks.registry import register_attack

REFERENCE_SIZE = 224  # the pixel frame in which mask locations are given

# eyeglass frame geometry in the 224 frame: lens rims (centre (row, col), semi-axes (rows, cols)) and the bridge
LENS_CENTRES = ((65.0, 50.0), (65.0, 139.5))
LENS_AXES = (31.0, 41.0)
BRIDGE_ROWS = (56.0, 63.0)
BRIDGE_COLS = (86.0, 103.0)


class MaskedSettings(TypedDict, total=False):
    """The optimiser settings that :class:`Patch` and :class:`Eyeglasses` pass on to :class:`MaskedAttack`."""

    steps: int
    lr: float
    momentum: float
    check_every: int


def reference_grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, x), each (H, W) float64: the centre of every pixel of an H x W image in the 224 frame's pixel units."""
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) * REFERENCE_SIZE / height
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) * REFERENCE_SIZE / width
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return y, x


def patch_mask(height: int, width: int, top: float = 145, left: float = 145, size: float = 59) -> torch.Tensor:
    """(H, W) bool square. ``top``, ``left``, ``size`` are pixels of a 224 crop (default: rows and columns 145-203,
    the published samples' patch), scaled to H x W and rounded to whole pixels."""
    sy, sx = height / REFERENCE_SIZE, width / REFERENCE_SIZE
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[round(top * sy) : round((top + size) * sy), round(left * sx) : round((left + size) * sx)] = True
    return mask


def ellipse_ring(
    y: torch.Tensor, x: torch.Tensor, centre: tuple[float, float], axes: tuple[float, float], thickness: float
) -> torch.Tensor:
    """Bool mask of the points (y, x) (tensors of one shape) inside the ellipse of ``centre`` (cy, cx) and
    semi-axes ``axes`` (b, a), but outside the one ``thickness`` smaller on both axes."""
    (cy, cx), (b, a) = centre, axes
    outer = ((y - cy) / b) ** 2 + ((x - cx) / a) ** 2 <= 1
    inner = ((y - cy) / (b - thickness)) ** 2 + ((x - cx) / (a - thickness)) ** 2 <= 1
    return outer & ~inner


def eyeglasses_mask(height: int, width: int, thickness: float = 7.0) -> torch.Tensor:
    """(H, W) bool eyeglass frames drawn in code: two elliptical lens rims ``thickness`` pixels wide and a bridge,
    over rows 34-95 and columns 9-179 of a 224 face crop (where the published eyeglass samples change pixels),
    scaled to H x W. About 2,900 pixels at 224 x 224 with the default thickness."""
    y, x = reference_grid(height, width)
    left, right = (ellipse_ring(y, x, centre, LENS_AXES, thickness) for centre in LENS_CENTRES)
    bridge = (y >= BRIDGE_ROWS[0]) & (y <= BRIDGE_ROWS[1]) & (x >= BRIDGE_COLS[0]) & (x <= BRIDGE_COLS[1])
    return left | right | bridge


def normalised_gradient(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The gradient (B, 3, H, W) restricted to ``mask`` (1, 1, H, W) bool and divided, per sample, by its mean
    absolute value there (the L1 normalisation of momentum methods, so that every step weighs alike)."""
    masked = grad * mask
    scale = masked.abs().flatten(1).sum(1) / (mask.sum() * grad.shape[1])
    return masked / scale.clamp_min(1e-12).view(-1, 1, 1, 1)


def loss_gradient(
    model: nn.Module, adv: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, K), gradient (B, 3, H, W)) at pixels ``adv`` of each sample's own loss: the target's
    cross-entropy (targeted) or minus the true class's (untargeted); the attack descends it."""
    with torch.enable_grad():
        leaf = adv.detach().requires_grad_()
        logits = model(leaf)
        if targets is not None:
            loss = F.cross_entropy(logits, targets, reduction="sum")
        else:
            loss = -F.cross_entropy(logits, labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, leaf)
    return logits.detach(), grad


class MaskedAttack(Attack):
    """Optimise the pixels of :meth:`mask` with at most ``steps`` signed momentum steps (``momentum``) of ``lr``
    pixel units.

    Per-sample early stop: a sample keeps the first image at which it succeeds (its ``iterations`` = the number of
    updates it took) and its pixels stop changing, by masking, not by leaving the batch; so a sample's result does
    not depend on its batch mates. The loop never waits for the device except every ``check_every`` steps, where it
    asks whether every sample is done, to end early (``check_every=0``: never; the result is the same either way,
    only the time differs).
    """

    default_target: TargetMode = "first"

    def __init__(self, steps: int = 200, lr: float = 4.0, momentum: float = 0.9, check_every: int = 10) -> None:
        if steps < 1 or lr <= 0 or not 0 <= momentum < 1 or check_every < 0:
            raise ValueError(f"need steps >= 1, lr > 0, 0 <= momentum < 1, check_every >= 0; got steps={steps}, "
                             f"lr={lr}, momentum={momentum}, check_every={check_every}")
        self.steps, self.lr, self.momentum, self.check_every = steps, lr, momentum, check_every

    @abstractmethod
    def mask(self, height: int, width: int) -> torch.Tensor:
        """(H, W) bool: the pixels the attack may change in an H x W image."""

    def start(self, images: torch.Tensor) -> torch.Tensor:
        """Starting pixels (B, 3, H, W) (only those under the mask are used): here the images themselves."""
        return images

    def run(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None,
        seeds: torch.Tensor,
    ) -> AttackResult:
        region = self.mask(*images.shape[-2:])
        if not region.any():
            raise ValueError(f"{type(self).__name__}: the mask covers no pixel of a {tuple(region.shape)} image")
        mask = region.to(images.device)[None, None]  # (1, 1, H, W)
        adv = torch.where(mask, self.start(images), images)
        best, velocity = adv.clone(), torch.zeros_like(images)
        done = torch.zeros_like(labels, dtype=torch.bool)
        iterations = torch.full_like(labels, self.steps)
        for step in range(self.steps):
            logits, grad = loss_gradient(model, adv, labels, targets)
            newly = is_success(logits, labels, targets) & ~done
            best = torch.where(newly.view(-1, 1, 1, 1), adv, best)
            iterations = torch.where(newly, step, iterations)
            done = done | newly
            velocity = self.momentum * velocity + normalised_gradient(grad, mask)
            moving = (~done).view(-1, 1, 1, 1) & mask
            adv = torch.where(moving, (adv - self.lr * velocity.sign()).clamp(*self.bounds), adv)
            if self.check_every and (step + 1) % self.check_every == 0 and bool(done.all()):
                break
        with torch.no_grad():  # the samples still running took a last update that is not evaluated yet
            last = is_success(model(adv), labels, targets) & ~done
        return AttackResult.build(torch.where(done.view(-1, 1, 1, 1), best, adv), images, done | last, iterations)


@register_attack("patch_first", target_mode="first", file_format="png")
@register_attack("patch_next", target_mode="next", file_format="png")
class Patch(MaskedAttack):
    """A square patch, optimised freely within [0, 255] from the image's own pixels; targeted (``first``) by default.

    ``top``, ``left``, ``size``: the square in pixels of a 224 crop (default rows and columns 145-203, the published
    samples' 59 x 59 patch), scaled to the image's size. Optimiser settings: see :class:`MaskedAttack`.
    """

    def __init__(
        self, top: float = 145, left: float = 145, size: float = 59, **settings: Unpack[MaskedSettings]
    ) -> None:
        super().__init__(**settings)
        self.top, self.left, self.size = top, left, size

    def mask(self, height: int, width: int) -> torch.Tensor:
        return patch_mask(height, width, self.top, self.left, self.size)


@register_attack("glasses_first", target_mode="first", file_format="png")
@register_attack("glasses_next", target_mode="next", file_format="png")
class Eyeglasses(MaskedAttack):
    """Eyeglass frames (Sharif et al. 2016 style), :func:`eyeglasses_mask`, starting from solid frames of ``colour``
    (RGB pixel values; default mid-grey); targeted (``first``) by default. ``thickness``: rim width in pixels of a
    224 crop. Optimiser settings: see :class:`MaskedAttack`.
    """

    def __init__(
        self,
        colour: tuple[float, float, float] = (128.0, 128.0, 128.0),
        thickness: float = 7.0,
        **settings: Unpack[MaskedSettings],
    ) -> None:
        super().__init__(**settings)
        self.colour, self.thickness = colour, thickness

    def mask(self, height: int, width: int) -> torch.Tensor:
        return eyeglasses_mask(height, width, self.thickness)

    def start(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.colour, dtype=images.dtype, device=images.device).view(1, 3, 1, 1).expand_as(images)
