"""Throughput of AmI detection, in one run: (a) the plain model, (b) ``AmIDetector`` batched, (c) a per-image
baseline in the style of the original release (batch 1, Python hooks that loop over channels).

(b)/(a) has a physical limit of 0.5 (the detector runs two forward passes); (b)/(c) is the speed-up over the
straightforward implementation. Usage::

    python scripts/bench_detector.py                 # random-weight VGG-Face, CPU (and CUDA when present)
    python scripts/bench_detector.py --weights vgg_face_dag.pth --device cuda --batch-size 64 --images 512
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ami_lightning.detectors.ami import AmIDetector
from ami_lightning.detectors.steering import SteeringParams
from ami_lightning.models.base import kaiming_init_
from ami_lightning.models.layers import forward_hooks
from ami_lightning.models.vgg_face import VggFace, load_vgg_face, vgg_face
from ami_lightning.witnesses import WitnessSet

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
BUNDLED = Path(__file__).resolve().parents[1] / "ami_lightning" / "assets" / "witnesses_vgg_face_dag"


def baseline_hook(lists: dict[str, tuple[int, ...]], params: SteeringParams, crop: bool) -> Callable[..., torch.Tensor]:
    """The original style: one sample, statistics in NumPy, a Python loop over channels."""
    concat = [c for channels in lists.values() for c in channels]
    witness_set = set(concat)
    s0, s1 = params.strengthen

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        if crop:
            h, w = output.shape[-2:]
            output = nn.functional.interpolate(output[..., 2:-2, 2:-2], size=(h, w), mode="bilinear")
        a = output[0].detach().cpu().numpy()
        v = a.reshape(a.shape[0], -1).sum(1)
        mean, std, low = v[concat].mean(), v[concat].std(), v[concat].min()
        factor = np.ones(a.shape[0], dtype=np.float32)
        for c in range(a.shape[0]):
            if c in witness_set:
                d = abs(v[c] - low) / std if std > 0 else 0.0
                factor[c] = (s0 - math.exp(-d / s1)) ** concat.count(c)
            else:
                d = max(0.0, (v[c] - mean) / std) if std > 0 else 0.0
                factor[c] = math.exp(-d / params.weaken)
        scaled = torch.from_numpy(factor).to(output.device).view(1, -1, *[1] * (output.dim() - 2))
        return output * scaled

    return hook


def baseline_detect(model: nn.Module, witnesses: WitnessSet, params: SteeringParams, x: torch.Tensor) -> torch.Tensor:
    """(B,) bool flags, one image at a time."""
    hooks = {
        name: baseline_hook(witnesses.at(name), params, name == "pool3") for name in witnesses.steered_layers()
    }
    flags = []
    for image in x:
        original = model(image[None]).argmax(1)
        with forward_hooks(model, hooks):
            steered = model(image[None]).argmax(1)
        flags.append(bool(original != steered))
    return torch.tensor(flags)


def images_per_second(fn: Callable[[torch.Tensor], object], x: torch.Tensor, batch: int, device: torch.device) -> float:
    fn(x[:batch])  # warm-up (allocator, cuDNN autotune)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for chunk in x.split(batch):
        fn(chunk)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(x) / (time.perf_counter() - start)


def witness_lists() -> WitnessSet:
    for folder in (BUNDLED, REFERENCE / "witnesses_vgg_face_dag"):
        if folder.is_dir():
            return WitnessSet.read(folder)
    raise FileNotFoundError("published VGG-Face witness lists not found (bundled or ../shared/reference)")


@torch.no_grad()
def run(device: torch.device, args: argparse.Namespace) -> dict[str, float]:
    model = (load_vgg_face(args.weights) if args.weights else vgg_face(kaiming_init_(VggFace()))).to(device)
    witnesses = witness_lists()
    detector = AmIDetector(model, witnesses).to(device)
    x = torch.rand(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(0)).mul(255).to(device)
    plain, batched = 0.0, 0.0
    for _ in range(args.repeats):  # interleaved, best of n: both see the same machine state
        plain = max(plain, images_per_second(model, x, args.batch_size, device))
        batched = max(batched, images_per_second(lambda pixels: detector(pixels).flagged, x, args.batch_size, device))
    n_base = min(len(x), args.baseline_images)
    base = images_per_second(lambda c: baseline_detect(model, witnesses, detector.params, c), x[:n_base], 1, device)
    return {"plain": plain, "batched": batched, "baseline": base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="vgg_face_dag.pth (default: random He-initialised weights)")
    parser.add_argument("--device", action="append", help="cpu, cuda (default: cpu and, if present, cuda)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--baseline-images", type=int, default=8, help="images for the slow per-image baseline")
    parser.add_argument("--repeats", type=int, default=3, help="best of n for (a) and (b)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    weights = f"weights {args.weights}" if args.weights else "random weights"
    print(f"VGG-Face {weights}, batch {args.batch_size}, {args.images} images, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    header = ("device", "plain img/s", "AmI img/s", "baseline img/s", "AmI/plain", "AmI/baseline")
    print(f"{header[0]:<8}{header[1]:>14}{header[2]:>12}{header[3]:>16}{header[4]:>11}{header[5]:>14}")
    for name in devices:
        r = run(torch.device(name), args)
        print(f"{name:<8}{r['plain']:>14.2f}{r['batched']:>12.2f}{r['baseline']:>16.2f}"
              f"{r['batched'] / r['plain']:>11.3f}{r['batched'] / r['baseline']:>14.2f}")
    print("AmI/plain limit: 0.5 (two forward passes per image)")


if __name__ == "__main__":
    main()
