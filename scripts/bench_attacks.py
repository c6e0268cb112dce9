"""Every registered attack set at a fixed budget: images/s and success rate, ours against a reference, in one run.
The adaptive sets, which attack the detector, have their own benchmark (``scripts.bench_adaptive``).

Usage (from the repository root)::

    python -m scripts.bench_attacks                      # toy face CNN of the tests, 32x32, CPU (+ CUDA if present)
    python -m scripts.bench_attacks --model dlib         # dlib's ResNet gallery (238 identities), first 8 faces

References: FGSM and BIM *are* foolbox's (``ami_lightning.attacks.gradient``), so they are compared with a plain
hand-written
PyTorch loop of the same method (``|diff|``: mean / largest pixel difference between the two results; sign
flips of near-zero gradients, from foolbox's own cross-entropy, may send single pixels different ways); C&W L2
with foolbox's ``L2CarliniWagnerAttack`` at equal budget (``scripts.bench_cw_vs_foolbox.compare_with_foolbox``);
patch, eyeglasses, C&W L0 and Linf have no counterpart in foolbox. ``ratio`` = our images/s / the reference's.
Calls shorter than half a second are repeated and averaged; C&W L2 runs once per side.

The toy CNN is trained with noise and has logit margins of 20-60, so its budgets are far larger than dlib's
(Linf 48 pixel units instead of 8, a 144-pixel patch instead of the published 59).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ami_lightning.attacks.base import make_targets
from ami_lightning.attacks.gradient import FoolboxLinfAttack
from ami_lightning.attacks.registry import ATTACK_SETS, create_attack
from scripts.bench_cw_vs_foolbox import compare_with_foolbox

Budgets = dict[str, dict[str, float]]
BUDGETS: dict[str, Budgets] = {  # per model, per family (set name prefix): constructor parameters
    "toy": {"patch": {"steps": 100, "top": 40, "left": 40, "size": 144}, "glasses": {"steps": 100},
            "cw_l0": {"steps": 20}, "cw_l2": {"binary_search_steps": 3, "steps": 100, "initial_const": 10.0},
            "cw_li": {"steps": 20},
            "fgsm": {"eps": 48.0}, "bim": {"eps": 48.0, "steps": 10}},
    "dlib": {"patch": {"steps": 100, "top": 40, "left": 60, "size": 100}, "glasses": {"steps": 60},
             "cw_l0": {"steps": 10}, "cw_l2": {"binary_search_steps": 3, "steps": 50, "initial_const": 1.0},
             "cw_li": {"steps": 10}, "fgsm": {"eps": 8.0}, "bim": {"eps": 8.0, "steps": 10}},
}


def plain_linf(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None, eps: float,
    steps: int, stepsize: float,
) -> torch.Tensor:
    """BIM written out in PyTorch (FGSM: ``steps=1``, ``stepsize=eps``): ``steps`` signed gradient steps of
    ``stepsize`` pixel units on the cross-entropy (up for the true class, down for the target), each projected onto
    the ``eps`` ball around images (B, 3, H, W) and onto [0, 255]; returns the adversarial batch."""
    adv, goal, direction = images.clone(), labels if targets is None else targets, 1.0 if targets is None else -1.0
    for _ in range(steps):
        leaf = adv.requires_grad_()
        (grad,) = torch.autograd.grad(F.cross_entropy(model(leaf), goal, reduction="sum"), leaf)
        adv = leaf.detach() + direction * stepsize * grad.sign()
        adv = torch.minimum(torch.maximum(adv, images - eps), images + eps).clamp(0, 255)
    return adv


def timed(run: Callable[[], Any], device: torch.device, min_seconds: float = 0.5) -> tuple[float, Any]:
    """(mean seconds per call, last result) of ``run()``, repeated until ``min_seconds`` have passed (at most 50
    calls), with the device's queued work finished before and after."""
    calls, total = 0, 0.0
    while calls == 0 or (total < min_seconds and calls < 50):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        total, calls = total + time.perf_counter() - start, calls + 1
    return total / calls, result


def bench_set(
    name: str, budget: dict[str, float], model: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: int
) -> dict[str, object]:
    """One table row: our images/s and success for set ``name``; the reference's, the ratio and, for FGSM / BIM,
    the pixel differences (B, 3, H, W) from the plain loop."""
    spec, device, n = ATTACK_SETS[name], images.device, len(images)
    targets = make_targets(labels, spec.target_mode, classes)
    attack = create_attack(name, **budget)
    row: dict[str, object] = {"set": name, "budget": budget, "reference": "-"}
    if name.startswith("cw_l2"):
        figures = compare_with_foolbox(model, images, labels, targets, **budget)
        row.update(ours=n / figures["time_ours"], success=figures["success_ours"], reference="foolbox C&W L2",
                   ref=n / figures["time_foolbox"], ref_success=figures["success_foolbox"])
        return row
    seconds, result = timed(lambda: attack(model, images, labels, targets), device)
    row.update(ours=n / seconds, success=float(result.success.float().mean()))
    if isinstance(attack, FoolboxLinfAttack):
        inner = attack.attack if targets is None else attack.targeted_attack
        stepsize = inner.abs_stepsize if inner.abs_stepsize is not None else inner.rel_stepsize * attack.eps
        seconds, plain = timed(lambda: plain_linf(model, images, labels, targets, attack.eps, attack.steps, stepsize),
                               device)
        with torch.no_grad():
            ref_success = (model(plain).argmax(1) != labels) if targets is None else model(plain).argmax(1) == targets
        row.update(reference="plain PyTorch loop", ref=n / seconds, ref_success=float(ref_success.float().mean()),
                   diff=(plain - result.adversarial).abs())
    return row


def load(model_name: str, size: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, int]:
    """(model, images (N, 3, S, S) float pixels, labels (N,), number of classes)."""
    if model_name == "dlib":
        from ami_lightning.data.shipped import shipped_faces
        from ami_lightning.models.classifiers import dlib_gallery

        classifier = dlib_gallery()
        faces, _ = shipped_faces(8)
        return classifier.model, faces.float(), torch.arange(8), len(classifier.identities)
    from tests.toy import NUM_CLASSES, toy_classifier, toy_faces

    images, labels = toy_faces(size)
    return toy_classifier(size), images, labels, NUM_CLASSES


def print_table(rows: list[dict[str, object]], device: torch.device) -> None:
    print(f"\n{device}: {'set':<14}{'ours img/s':>11}{'success':>9}  {'reference':<19}{'img/s':>9}{'success':>9}"
          f"{'ratio':>7}{'|diff| mean / max':>20}  budget")
    for r in rows:
        ref = (f"{r['ref']:>9.1f}{r['ref_success']:>9.0%}{r['ours'] / r['ref']:>7.2f}" if "ref" in r
               else f"{'-':>9}{'-':>9}{'-':>7}")
        diff = f"{r['diff'].mean():>11.2g} /{r['diff'].max():>7.2g}" if "diff" in r else f"{'-':>20}"
        print(f"{'':<{len(str(device)) + 2}}{r['set']:<14}{r['ours']:>11.1f}{r['success']:>9.0%}  "
              f"{r['reference']:<19}{ref}{diff}  {r['budget']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=tuple(BUDGETS), default="toy")
    parser.add_argument("--size", type=int, default=32, choices=(32, 64), help="toy face size")
    parser.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    plain_sets = [name for name, spec in ATTACK_SETS.items() if not spec.needs_detector]  # adaptive: bench_adaptive
    parser.add_argument("--sets", nargs="+", default=plain_sets, choices=plain_sets)
    args = parser.parse_args()
    model, images, labels, classes = load(args.model, args.size)
    print(f"{args.model} model, {len(images)} images of {images.shape[-1]} px, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    for device in map(torch.device, args.devices):
        on_device = copy.deepcopy(model).to(device).eval()
        x, y = images.to(device), labels.to(device)
        plain_linf(on_device, x, y, None, 1.0, 1, 1.0)  # warm-up (kernels, allocator)
        budgets = BUDGETS[args.model]
        rows = [bench_set(name, next(b for k, b in budgets.items() if name.startswith(k)), on_device, x, y, classes)
                for name in args.sets]
        print_table(rows, device)


if __name__ == "__main__":
    main()
