"""The shared shape of every attack (in the spirit of foolbox 3): explicit pixel bounds, a uniform, batched
``__call__(model, images, labels, targets=None, seeds=None) -> AttackResult``, and per-sample distortion measures.

Randomness is per sample: an attack that draws random numbers (e.g. a random start) draws those of sample i from its
own generator seeded with ``seeds[i]`` (:func:`uniform_noise`). The generator of attack sets gives each face the seed
:func:`face_seed` (the run's seed, the set and the face's file name), so a face's adversarial file does not depend
on which process, batch or batch position it was attacked in.

Images are float pixels (B, 3, H, W) in ``bounds`` = [0, 255] (RGB); models are any ``nn.Module`` mapping such
pixels to logits (B, K) (the model wrappers do their own preprocessing).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ami_lightning.evaluation.success import attack_success

TargetMode = Literal["first", "next", "untargeted"]
TARGET_MODES: tuple[str, ...] = ("first", "next", "untargeted")
SEED_BITS = 63  # seeds are non-negative int64 values


def face_seed(seed: int, attack_set: str, face: str) -> int:
    """The random seed of one face in one attack set: the first 63 bits of SHA-256 of (the run's ``seed``, the set's
    name, the face's file name); independent of the process, the batch and the position in it."""
    digest = hashlib.sha256(f"{seed}\0{attack_set}\0{face}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


def random_seeds(count: int) -> torch.Tensor:
    """``count`` seeds (count,) int64 drawn from torch's global generator: the default of an attack called without
    ``seeds`` (so ``torch.manual_seed`` makes such a call reproducible)."""
    return torch.randint(0, 2**62, (count,), dtype=torch.int64)


def uniform_noise(seeds: torch.Tensor, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    """Noise (N, *shape) uniform in [-1, 1): row i from a CPU generator seeded with ``seeds[i]`` (N,), so each row
    depends on its seed alone (not on N, the row's position or the device), then moved to ``device``."""
    rows = [torch.rand(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds.tolist()]
    noise = torch.stack(rows) if rows else torch.zeros(0, *shape)
    return (noise * 2 - 1).to(device)


def make_targets(labels: torch.Tensor, mode: str, num_classes: int) -> torch.Tensor | None:
    """Target classes (B,) for ``mode``: ``first`` = class 0 (class 1 where the true label is 0), ``next`` =
    (label + 1) mod K; ``untargeted`` gives None."""
    if mode not in TARGET_MODES:
        raise ValueError(f"unknown target mode {mode!r}; expected one of {TARGET_MODES}")
    if mode == "untargeted":
        return None
    if mode == "first":
        return (labels == 0).long()
    return (labels + 1) % num_classes


def distortions(adversarial: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (L0, L2, Linf) of ``adversarial - images`` (B, 3, H, W), in pixel units (0-255); L0 counts pixel
    positions (H x W) where any channel changed."""
    delta = (adversarial - images).flatten(2)  # (B, 3, H*W)
    l0 = (delta.abs().amax(1) > 0).sum(1)
    l2 = delta.flatten(1).norm(dim=1)
    linf = delta.flatten(1).abs().amax(1)
    return l0, l2, linf


@dataclass
class AttackResult:
    """Adversarial batch (B, 3, H, W) in bounds, per-sample success (B,) bool, distortions (B,) in pixel units
    (L0 as a count of pixel positions), the iterations each sample used (B,) long, and, for attacks that choose
    their own targets (:mod:`ami_lightning.attacks.adaptive`), the target (B,) long each sample ended with (else
    None)."""

    adversarial: torch.Tensor
    success: torch.Tensor
    l0: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    iterations: torch.Tensor
    targets: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        adversarial: torch.Tensor,
        images: torch.Tensor,
        success: torch.Tensor,
        iterations: torch.Tensor,
        targets: torch.Tensor | None = None,
    ) -> AttackResult:
        return cls(adversarial, success, *distortions(adversarial, images), iterations, targets)


def is_success(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """(B,) bool: top-1 of ``logits`` (B, K) equals the target (targeted) or differs from the label (untargeted,
    ``targets`` None): the rule of :func:`~ami_lightning.evaluation.success.attack_success`."""
    untargeted = torch.full_like(labels, -1)
    return attack_success(logits.argmax(1), labels, untargeted if targets is None else targets)


class Attack(ABC):
    """Base class: subclasses implement :meth:`run`; ``__call__`` checks inputs and puts the model in eval mode."""

    bounds: tuple[float, float] = (0.0, 255.0)
    default_target: TargetMode = "next"

    @staticmethod
    def check_params(params: Mapping[str, Any]) -> list[str]:
        """Problems with the value of ``params`` (a config's ``attacks.<set>.params``, resolved), one line each,
        ``"<param>=<value>: what is expected"``; [] when fine. The config check calls it before any work (unknown
        and missing keys it finds itself from the constructor's signature). Default: none."""
        return []

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None,
        seeds: torch.Tensor | None = None,
    ) -> AttackResult:
        """Attack ``images`` (B, 3, H, W) of true ``labels`` (B,) towards ``targets`` (B,) (None: untargeted); the
        random numbers of sample i come from ``seeds[i]`` ((B,) int64; default :func:`random_seeds`)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        low, high = self.bounds
        if images.min() < low or images.max() > high:
            raise ValueError(f"images must lie in the bounds [{low}, {high}] (pixel units)")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
        seeds = random_seeds(len(labels)) if seeds is None else torch.as_tensor(seeds, dtype=torch.int64).cpu()
        if seeds.shape != labels.shape:
            raise ValueError(f"seeds must be ({images.shape[0]},), got {tuple(seeds.shape)}")
        model.eval()
        return self.run(model, images.float(), labels, targets, seeds)

    @abstractmethod
    def run(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None,
        seeds: torch.Tensor,
    ) -> AttackResult:
        """The attack proper; images float (B, 3, H, W) in bounds; targets (B,) or None (untargeted); seeds (B,)
        int64 on the CPU, one per sample, for any random numbers the attack draws (:func:`uniform_noise`)."""
