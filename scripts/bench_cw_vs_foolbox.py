"""C&W L2 of ``ami_lightning.attacks.cw`` against foolbox's ``L2CarliniWagnerAttack`` at equal budget: success
rate, median L2
(pixel units, over each attack's successful samples) and wall time. Usage (from the repository root)::

    python -m scripts.bench_cw_vs_foolbox                          # toy face classifier, 32x32, CPU
    python -m scripts.bench_cw_vs_foolbox --size 64 --binary-steps 9 --steps 1000 --device cuda

Equal budget: the same binary search steps, Adam steps, learning rate, confidence and initial constant. Our
constant weighs the L2 penalty in Carlini's [0, 1] units, foolbox's in the model's pixel units (0-255), so
foolbox gets ``initial_const * 255**2``: the two losses are then proportional and Adam follows the same path. One
difference remains: our abort-early is per sample, foolbox's looks at the loss summed over the batch, so with a
small budget foolbox batched may run a stalled sample longer (and find a smaller L2) thanks to its batch mates;
foolbox run one sample at a time (``foolbox_per_sample``) has our semantics.
"""

from __future__ import annotations

import argparse
import time

import foolbox as fb
import torch
from torch import nn

from ami_lightning.attacks.base import make_targets
from ami_lightning.attacks.cw import PIXEL_SCALE, CarliniWagnerL2


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_l2(adversarial: torch.Tensor, images: torch.Tensor, success: torch.Tensor) -> float:
    l2 = (adversarial - images).flatten(1).norm(dim=1)[success]
    return float(l2.median()) if len(l2) else float("nan")


def _foolbox(
    attack: fb.attacks.L2CarliniWagnerAttack,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(adversarial (B, 3, H, W), success (B,)) of a foolbox attack on one batch."""
    criterion = (
        fb.criteria.Misclassification(labels) if targets is None else fb.criteria.TargetedMisclassification(targets)
    )
    fmodel = fb.PyTorchModel(model, bounds=(0, 255), device=images.device)  # not cuda:0 whenever CUDA is present
    _, adversarial, success = attack(fmodel, images, criterion, epsilons=None)
    return adversarial, success


def compare_with_foolbox(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor | None,
    *,
    binary_search_steps: int = 5,
    steps: int = 100,
    lr: float = 1e-2,
    initial_const: float = 1e-3,
    confidence: float = 0.0,
    per_sample: bool = False,
) -> dict[str, float]:
    """Run both C&W L2 attacks on one batch (images (B, 3, H, W) pixels [0, 255], labels (B,), targets (B,) or None
    for untargeted). Returns ``success_*`` rates, ``median_l2_*`` over each attack's successes (pixel units),
    ``time_*`` wall times (s) and ``time_ratio`` = ours / foolbox, for ``ours`` and ``foolbox`` (batched).

    Foolbox's abort-early looks at the loss summed over the batch, so its result for a sample depends on its batch
    mates; ``per_sample`` also runs foolbox one sample at a time (``*_foolbox_per_sample``), the semantics of ours.
    """
    model.eval()
    device = images.device
    ours = CarliniWagnerL2(binary_search_steps, steps, lr, initial_const, confidence)
    theirs = fb.attacks.L2CarliniWagnerAttack(
        binary_search_steps, steps, lr, confidence, initial_const * PIXEL_SCALE**2, abort_early=True
    )

    def run_ours() -> tuple[torch.Tensor, torch.Tensor]:
        result = ours(model, images, labels, targets)
        return result.adversarial, result.success

    def run_foolbox() -> tuple[torch.Tensor, torch.Tensor]:
        return _foolbox(theirs, model, images, labels, targets)

    def run_foolbox_per_sample() -> tuple[torch.Tensor, torch.Tensor]:
        runs = [
            _foolbox(theirs, model, images[one], labels[one], None if targets is None else targets[one])
            for one in (slice(i, i + 1) for i in range(len(images)))
        ]
        return torch.cat([adversarial for adversarial, _ in runs]), torch.cat([success for _, success in runs])

    contenders = {"ours": run_ours, "foolbox": run_foolbox}
    if per_sample:
        contenders["foolbox_per_sample"] = run_foolbox_per_sample
    figures: dict[str, float] = {}
    for name, attack in contenders.items():
        _synchronise(device)
        start = time.perf_counter()
        adversarial, success = attack()
        _synchronise(device)
        figures["time_" + name] = time.perf_counter() - start
        figures["success_" + name] = float(success.float().mean())
        figures["median_l2_" + name] = _median_l2(adversarial, images, success)
    figures["time_ratio"] = figures["time_ours"] / figures["time_foolbox"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=32, choices=(32, 64), help="toy face size")
    parser.add_argument("--binary-steps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--initial-const", type=float, default=1e-3, help="in Carlini's [0, 1] units")
    parser.add_argument("--target", default="next", choices=("first", "next", "untargeted"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from tests.toy import NUM_CLASSES, toy_classifier, toy_faces

    device = torch.device(args.device)
    model = toy_classifier(args.size).to(device)
    images, labels = (t.to(device) for t in toy_faces(args.size))
    targets = make_targets(labels, args.target, NUM_CLASSES)
    figures = compare_with_foolbox(
        model, images, labels, targets, binary_search_steps=args.binary_steps, steps=args.steps, lr=args.lr,
        initial_const=args.initial_const, per_sample=True,
    )
    print(f"toy faces {args.size}x{args.size}, {len(images)} images, target {args.target}, "
          f"{args.binary_steps} binary steps x {args.steps} steps, {device}")
    for name in ("ours", "foolbox", "foolbox_per_sample"):
        print(f"  {name:18s} success {figures['success_' + name]:.2f}  median L2 {figures['median_l2_' + name]:.1f}"
              f"  time {figures['time_' + name]:.2f} s")
    print(f"  wall-time ratio ours / foolbox: {figures['time_ratio']:.2f}")


if __name__ == "__main__":
    main()
