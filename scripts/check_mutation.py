"""Compare our left-eye mutations with the images published in the AmI release.

For each of the 10 other faces, rebuilds ``leye_substitution`` (base face with that face's left eye) and
``leye_preservation`` (that face with the base face's left eye) from dlib landmarks and prints, per pair and kind:
the IoU of the changed regions (pixels where any channel differs from the unmutated destination by more than the
threshold, 0-255 units, no morphological cleanup) of ours and the published image, and the mean absolute
difference between ours and the published image (0-255 units).

Usage: ``python scripts/check_mutation.py [--reference DIR] [--threshold 25] [--min-iou 0.7]``
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch

from ami_lightning.data.images import load_image
from ami_lightning.faces.landmarks import LandmarkDetector
from ami_lightning.faces.mutation import agreement, preservation, substitution

KINDS = ("substitution", "preservation")
DEFAULT_REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def leye_agreement(reference: Path, threshold: int = 25) -> tuple[list[str], np.ndarray]:
    """Names of the other faces and an array (N, 2 kinds, 2) of (IoU, mean abs diff) for substitution and
    preservation of the left eye against ``reference/attribute_mutated/leye_<kind>/``."""
    names = sorted(path.name for path in (reference / "images").glob("*.jpg"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*truncated.*", category=UserWarning)
        base = load_image(reference / "base_img.jpg")
        others = torch.stack([load_image(reference / "images" / name) for name in names])
        published = {
            kind: [load_image(reference / "attribute_mutated" / f"leye_{kind}" / name) for name in names]
            for kind in KINDS
        }
    detector = LandmarkDetector()
    base_lm, others_lm = detector(base), detector.batch(list(others))
    ours = {
        "substitution": substitution(base, base_lm, others, others_lm, "leye"),
        "preservation": preservation(base, base_lm, others, others_lm, "leye"),
    }
    originals = {"substitution": [base] * len(names), "preservation": list(others)}
    figures = np.array(
        [
            [agreement(ours[kind][i], published[kind][i], originals[kind][i], threshold) for kind in KINDS]
            for i in range(len(names))
        ]
    )
    return names, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="the shared reference folder")
    parser.add_argument("--threshold", type=int, default=25, help="changed-pixel threshold, 0-255 units")
    parser.add_argument("--min-iou", type=float, default=0.7, help="IoU counted as a match in the summary")
    args = parser.parse_args()

    names, figures = leye_agreement(args.reference, args.threshold)
    print(f"{'pair':<58} {'sub IoU':>8} {'sub MAD':>8} {'pres IoU':>9} {'pres MAD':>9}")
    for name, ((sub_iou, sub_mad), (pres_iou, pres_mad)) in zip(names, figures, strict=True):
        print(f"{name:<58} {sub_iou:8.3f} {sub_mad:8.3f} {pres_iou:9.3f} {pres_mad:9.3f}")
    print("MAD: mean absolute difference ours vs published, 0-255 units")
    for k, kind in enumerate(KINDS):
        ious, mads = figures[:, k, 0], figures[:, k, 1]
        print(
            f"{kind}: IoU >= {args.min_iou} on {int((ious >= args.min_iou).sum())}/{len(names)}, "
            f"IoU median {np.median(ious):.3f} (min {ious.min():.3f}), MAD median {np.median(mads):.3f} "
            f"(max {mads.max():.3f})"
        )


if __name__ == "__main__":
    main()
