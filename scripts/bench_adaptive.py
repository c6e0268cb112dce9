"""The adaptive attacks batched over targets against the straightforward loop (one PGD run per target), in one run.

Usage (from the repository root)::

    python -m scripts.bench_adaptive                                    # toy CNN of the tests, 32 px, CPU (+ CUDA)
    python -m scripts.bench_adaptive --model dlib --witnesses logs/run/<timestamp>/witnesses --faces 8

``ours``: :class:`ami_lightning.attacks.adaptive.TransferFilter` /
:class:`~ami_lightning.attacks.adaptive.DetectorGradient` with ``k_targets``
candidates per face in one batch of faces x K; ``loop``: the same attack called once per target (K calls on the
faces' batch, the candidate chosen the same way). Reported: images/s of each, the ratio, and the undetected success
rate (fools the plain model, AmI does not flag it) of each, which must agree up to float noise. The dlib model needs
the witnesses of a run (its ``witnesses/`` folder, written by ``ami-run`` or ``ami-witness``).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from ami_lightning.attacks.adaptive import (
    AdaptiveAttack,
    DetectorGradient,
    TransferFilter,
    likeliest_targets,
    pick_best,
)
from ami_lightning.detectors.ami import AmIDetector
from ami_lightning.witnesses import WitnessSet
from scripts.bench_attacks import timed


def loop_over_targets(attack: AdaptiveAttack, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The straightforward version: one targeted run per candidate target, then the same choice per face; returns
    the chosen adversarial batch (B, 3, H, W)."""
    model = attack.detector.model
    with torch.no_grad():
        candidates = likeliest_targets(model(images), labels, attack.k_targets)
    runs = [attack(model, images, labels, candidates[:, j]).adversarial for j in range(candidates.shape[1])]
    return pick_best(attack.detector, torch.stack(runs, 1), candidates)[0]


@torch.no_grad()
def undetected(detector: AmIDetector, adversarial: torch.Tensor, labels: torch.Tensor) -> float:
    out = detector(adversarial)
    return float(((out.logits.argmax(1) != labels) & ~out.flagged).float().mean())


def load(args: argparse.Namespace) -> tuple[AmIDetector, torch.Tensor, torch.Tensor, dict[str, float]]:
    """(detector, images (N, 3, S, S) pixels, labels (N,), attack budget) of the chosen model."""
    if args.model == "dlib":
        from ami_lightning.data.shipped import shipped_faces
        from ami_lightning.models.classifiers import dlib_gallery

        if args.witnesses is None:
            raise SystemExit("--model dlib needs --witnesses (the witnesses/ folder of an ami-run or ami-witness run)")
        classifier = dlib_gallery()
        faces, _ = shipped_faces(args.faces)
        detector = AmIDetector(classifier.model, WitnessSet.read(args.witnesses), 1000.0, (2.15, 200.0))
        return detector, faces.float(), torch.arange(len(faces)), {"eps": 2.5, "steps": args.steps}
    from tests.toy import toy_detector, toy_faces

    images, labels = toy_faces(32)
    return toy_detector(32), images, labels, {"eps": 32.0, "steps": args.steps, "rel_stepsize": 0.2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("toy", "dlib"), default="toy")
    parser.add_argument("--witnesses", type=Path, help="witness folder (dlib)")
    parser.add_argument("--faces", type=int, default=8, help="shipped faces (dlib)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--k-targets", type=int, default=8)
    parser.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    args = parser.parse_args()
    detector, images, labels, budget = load(args)
    print(f"{args.model}: {len(images)} faces of {images.shape[-1]} px, K = {args.k_targets} targets, {budget}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'device':<8}{'attack':<20}{'ours img/s':>11}{'loop img/s':>11}{'ratio':>7}"
          f"{'undetected ours':>17}{'loop':>7}")
    for device in map(torch.device, args.devices):
        on_device = copy.deepcopy(detector).to(device).eval()
        x, y = images.to(device), labels.to(device)
        for cls in (TransferFilter, DetectorGradient):
            print(row(cls(on_device, k_targets=args.k_targets, **budget), x, y, device))


def row(attack: AdaptiveAttack, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> str:
    """One table line: images/s batched and looped, their ratio, and each one's undetected success rate."""
    ours_s, ours = timed(lambda: attack(attack.detector.model, x, y), device)
    loop_s, loop = timed(lambda: loop_over_targets(attack, x, y), device)
    return (f"{device.type:<8}{type(attack).__name__:<20}{len(x) / ours_s:>11.2f}{len(x) / loop_s:>11.2f}"
            f"{loop_s / ours_s:>7.2f}{undetected(attack.detector, ours.adversarial, y):>17.0%}"
            f"{undetected(attack.detector, loop, y):>7.0%}")

if __name__ == "__main__":
    main()
