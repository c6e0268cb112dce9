"""Attack throughput and success at a fixed step budget, every registered set, in one run; plus C&W L2 against
foolbox's at equal budget (ratios). Usage: ``python -m scripts.bench_attacks [--size 64] [--device cuda]``.

Model: dlib's ResNet gallery (238 shipped identities) on the first 8 shipped faces, with the budgets of the default
experiment; ``--model toy`` uses the small CNN of the tests instead (it needs far larger perturbations).
"""

from __future__ import annotations

import argparse
import time

import torch

from attacks.base import make_targets
from attacks.registry import ATTACK_SETS, create_attack
from scripts.bench_cw_vs_foolbox import compare_with_foolbox

BUDGETS = {"patch": {"steps": 100, "lr": 4.0}, "glasses": {"steps": 60, "lr": 4.0},
           "cw_l0": {"steps": 10, "initial_const": 1.0, "max_const": 64.0, "shrink": 0.5},
           "cw_l2": {"binary_search_steps": 4, "steps": 50, "initial_const": 1.0},
           "cw_li": {"steps": 10, "initial_const": 0.1, "tau_decrease": 0.7, "min_tau": 0.0156},
           "fgsm": {"eps": 8.0}, "bim": {"eps": 8.0, "steps": 10}}


def _model(name: str, size: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, int]:
    if name == "dlib":
        from ami_lightning.builders import dlib_gallery, shipped_faces

        classifier = dlib_gallery()
        faces, _ = shipped_faces(8)
        return classifier.model, faces.float(), torch.arange(8), len(classifier.identities)
    from tests.toy import NUM_CLASSES, toy_classifier, toy_faces

    images, labels = toy_faces(size)
    return toy_classifier(size), images, labels, NUM_CLASSES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=("toy", "dlib"), default="dlib")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    model, images, labels, classes = _model(args.model, args.size)
    model, images, labels = model.to(device), images.to(device), labels.to(device)
    print(f"{args.model} model, {len(images)} images of {images.shape[-1]} px, {device}, torch {torch.__version__}")
    print(f"{'attack set':<14}{'img/s':>8}{'success':>9}  budget")
    for name, spec in ATTACK_SETS.items():
        budget = next(v for k, v in BUDGETS.items() if name.startswith(k))
        attack = create_attack(name, **budget)
        start = time.perf_counter()
        result = attack(model, images, labels, make_targets(labels, spec.target, classes))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rate = len(images) / (time.perf_counter() - start)
        print(f"{name:<14}{rate:>8.2f}{100 * result.success.float().mean():>8.0f}%  {budget}")
    r = compare_with_foolbox(model, images, labels, make_targets(labels, "next", classes), binary_search_steps=4,
                             steps=50, initial_const=1.0)
    print(f"C&W L2 next, 4 x 50 steps: ours vs foolbox: success {r['success_ours']:.2f} / {r['success_foolbox']:.2f}, "
          f"median L2 {r['median_l2_ours']:.1f} / {r['median_l2_foolbox']:.1f} px, time ratio {r['time_ratio']:.2f}")


if __name__ == "__main__":
    main()
