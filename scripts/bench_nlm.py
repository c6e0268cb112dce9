"""Per-image time of OpenCV's colour non-local means (``cv2.fastNlMeansDenoisingColored``) and of its batched torch
twin (:mod:`ami_lightning.detectors.nlm`) on this machine's CPU (and CUDA when present), at 150 x 150 and 224 x 224.

Rows: OpenCV per image in a plain loop, with OpenCV's own threads and with ``cv2.setNumThreads(1)``; the ``opencv``
backend (the images on a thread pool); the ``torch`` backend with torch's threads and with one torch thread (and on
CUDA). Each row gives the wall time per image, the process's CPU time per image, and the OpenCV loop's wall time over
the row's (> 1: faster than the loop). The script also checks that the two backends give equal outputs. Usage::

    python scripts/bench_nlm.py                      # 16 noisy colour ramps per size, search 11, patch 3, h 4
    python scripts/bench_nlm.py --images 64 --repeats 3 --sizes 224
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import cv2
import numpy as np
import torch

from ami_lightning.detectors.nlm import lab_tables, non_local_means, to_uint8


def per_image_seconds(
    run: Callable[[], object], images: int, repeats: int, sync: Callable[[], None]
) -> tuple[float, float]:
    """(wall, CPU) seconds per image: the best of ``repeats`` runs of ``run()`` after one warm-up call, divided by
    ``images``. The CPU time is this process's, all its threads together (spinning threads included); on a shared
    machine it is steadier than the wall time."""
    run()
    sync()
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        sync()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best[0] / images, best[1] / images


def opencv_loop(bgr: np.ndarray, threads: int | None, args: argparse.Namespace) -> list[np.ndarray]:
    """OpenCV on each (H, W, 3) uint8 BGR image of ``bgr`` in a plain loop, with OpenCV's threads or ``threads``."""
    previous = cv2.getNumThreads()
    if threads is not None:
        cv2.setNumThreads(threads)
    try:
        return [cv2.fastNlMeansDenoisingColored(im, None, args.h, args.h, args.patch, args.search) for im in bgr]
    finally:
        cv2.setNumThreads(previous)


def backend_run(x: torch.Tensor, backend: str, threads: int | None, args: argparse.Namespace) -> torch.Tensor:
    """:func:`non_local_means` of ``x`` with ``backend``, under ``torch.set_num_threads(threads)`` (None: as is)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return non_local_means(x, args.search, args.patch, args.h, backend=backend)
    finally:
        torch.set_num_threads(previous)


def noisy_ramps(images: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(images, 3, size, size) float pixels: smooth colour ramps plus Gaussian noise (sigma 20), clipped to [0, 255]."""
    ramp = torch.linspace(0, 255, size)
    across, down = ramp.view(1, -1).expand(size, -1), ramp.view(-1, 1).expand(-1, size)
    base = torch.stack([across, down, 255 - across])
    return (base + 20 * torch.randn(images, 3, size, size, generator=generator)).clamp(0, 255)


def bench_size(size: int, args: argparse.Namespace, generator: torch.Generator) -> None:
    """Print the rows for one image size."""
    x = noisy_ramps(args.images, size, generator)
    bgr = to_uint8(x)[:, [2, 1, 0]].permute(0, 2, 3, 1).contiguous().numpy()
    same = torch.equal(backend_run(x, "opencv", None, args), backend_run(x, "torch", None, args))
    print(f"\n{size} x {size}: torch backend equals OpenCV: {same}")
    runs: list[tuple[str, Callable[[], object], Callable[[], None]]] = [
        ("opencv loop, cv2 threads", partial(opencv_loop, bgr, None, args), lambda: None),
        ("opencv loop, 1 cv2 thread", partial(opencv_loop, bgr, 1, args), lambda: None),
        ("opencv backend (thread pool)", partial(backend_run, x, "opencv", None, args), lambda: None),
        ("torch backend, torch threads", partial(backend_run, x, "torch", None, args), lambda: None),
        ("torch backend, 1 torch thread", partial(backend_run, x, "torch", 1, args), lambda: None),
    ]
    if torch.cuda.is_available():
        runs.append(
            ("torch backend, CUDA", partial(backend_run, x.cuda(), "torch", None, args), torch.cuda.synchronize)
        )
    reference = None
    for name, run, sync in runs:
        wall, cpu = per_image_seconds(run, args.images, args.repeats, sync)
        reference = reference or wall
        print(f"  {name:30s} {wall * 1e3:8.2f} ms/image (CPU {cpu * 1e3:8.2f} ms)   x{reference / wall:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="images per batch (default 16)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per row, the best counts (default 2)")
    parser.add_argument("--search", type=int, default=11, help="search window (default 11)")
    parser.add_argument("--patch", type=int, default=3, help="patch size (default 3)")
    parser.add_argument("--h", type=float, default=4.0, help="strength h = hColor (default 4)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[150, 224], help="image sizes (default 150 224)")
    args = parser.parse_args()
    lab_tables()  # made once per process, outside the timings
    print(
        f"OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); {args.images} images per batch, search {args.search}, "
        f"patch {args.patch}, h {args.h}; ms per image, and the OpenCV loop's time over the row's"
    )
    generator = torch.Generator().manual_seed(0)
    for size in args.sizes:
        bench_size(size, args, generator)


if __name__ == "__main__":
    main()
