"""``ami-calibrate``: AmI's benign false-positive rate on the embedded default, and its calibration, offline.

dlib's face-recognition ResNet (real weights, from the ``face_recognition_models`` package) as a 238-identity
gallery classifier over the shipped faces; witnesses of all four attributes from the release's base face and other
faces (dlib landmarks, attribute mutation); benign probes = light variants of the enrolled faces (flip, shift,
zoom, JPEG). Reports top-1 accuracy and AmI's false-positive rate with the published parameters, the Caffe ones,
and parameters calibrated on half of the identities to a target FPR (reported on the other half). Writes
``results.json``, ``results.md``, the witnesses and ``mutations.png`` under ``logs/calibrate/<timestamp>/``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from tqdm import tqdm

from ami_lightning.cli import make_run_dir, pick_device
from ami_lightning.data.probes import VARIANTS, benign_variants
from ami_lightning.data.shipped import shipped_faces, witness_face_files
from ami_lightning.detectors.ami import AmIDetector
from ami_lightning.detectors.ami_calibration import benign_fpr, calibrate, logits_of, steering_grid
from ami_lightning.detectors.steering import PRESETS, SteeringParams
from ami_lightning.evaluation.intervals import wilson_interval
from ami_lightning.models.classifiers import dlib_gallery
from ami_lightning.pipeline.files import write_text
from ami_lightning.pipeline.provenance import git_commit, provenance
from ami_lightning.witnesses.from_faces import save_mutation_grid, witnesses_from_faces

PUBLISHED_FPR = 0.0991
GRID = {
    "weaken": (60.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0),
    "strengthen0": (2.0, 2.15),
    "strengthen1": (50.0, 200.0),
}


CALIBRATION_COLUMNS = ("parameters", "weaken", "strengthen", "benign probes (correctly classified)",
                       "FPR [95 % Wilson]")


def calibration_markdown(results: dict[str, Any]) -> str:
    """The figures of an ``ami-calibrate`` results.json: top-1 accuracy on the probes, witness counts, and the FPR
    table, one row per parameter set, the FPR with its counts and 95 % Wilson interval (the calibrated row over the
    held-out identities)."""
    probes, witnesses = results["probes"], results["witnesses"]
    accuracy = ", ".join(f"{v} {100 * a:.1f} %" for v, a in probes["top1_accuracy_per_variant"].items())
    lines = [f"Top-1 accuracy on the {probes['n']} benign probes: {100 * probes['top1_accuracy']:.2f} % ({accuracy}). "
             f"Witnesses per attribute: {', '.join(f'{a} {c}' for a, c in witnesses.items())}, at "
             f"{len(results['steered_layers'])} layers.", "",
             "| " + " | ".join(CALIBRATION_COLUMNS) + " |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, r in results["fpr"].items():
        scope = "held-out half" if name == "calibrated" else "all"  # of the probes the model gets right
        low, high = wilson_interval(r["flagged"], r["eligible"])
        cells = (name, f"{r['weaken']:g}", f"({r['strengthen'][0]:g}, {r['strengthen'][1]:g})",
                 f"{scope}, {r['eligible']}",
                 f"{100 * r['fpr']:.2f} % ({r['flagged']}/{r['eligible']}) [{100 * low:.1f}, {100 * high:.1f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="run folder (default logs/calibrate/<timestamp>)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--target-fpr", type=float, default=PUBLISHED_FPR, help="calibration target (0.0991)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--faces", type=int, help="probes of the first N shipped faces only (default: all 238; the "
                        "gallery always enrols all), e.g. for a quick check")
    for name, values in GRID.items():
        parser.add_argument(f"--{name}", type=float, nargs="+", default=list(values),
                            help=f"calibration grid values of {name} (default: {' '.join(f'{v:g}' for v in values)})")
    args = parser.parse_args(argv)
    if args.faces is not None and args.faces < 2:
        parser.error(f"--faces {args.faces}: needs at least 2 faces (one per half of the identities)")
    git_commit()  # the code this run uses, recorded before it runs
    console = Console()
    out = make_run_dir("calibrate", args.out)
    device = pick_device(args.device)

    faces, _ = shipped_faces(args.faces)
    gallery = dlib_gallery(batch_size=args.batch_size).model.to(device)  # enrols the same shipped faces, in order
    embedder = gallery.embedder

    base, others = witness_face_files()
    witnesses, mutations = witnesses_from_faces(embedder, embedder.hook_layers, base, others)
    witnesses.write(out / "witnesses")
    save_mutation_grid(mutations, out / "mutations.png")

    probes, labels = benign_variants(faces)
    logits = logits_of(gallery, probes, args.batch_size, device)
    correct = logits.argmax(1) == labels
    accuracy = {v: float(c.float().mean()) for v, c in zip(VARIANTS, correct.chunk(len(VARIANTS)), strict=True)}
    held_out = labels % 2 == 1  # identities with odd index; calibration uses the even ones

    def fpr(params: SteeringParams, mask: torch.Tensor) -> dict[str, float | int]:
        detector = AmIDetector(gallery, witnesses, params.weaken, params.strengthen)
        rate = benign_fpr(detector, probes[mask], logits[mask], labels[mask], args.batch_size, device)
        return {"fpr": rate.value, "flagged": rate.flagged, "eligible": rate.eligible}

    rows = {name: (params, fpr(params, torch.ones_like(held_out))) for name, params in PRESETS.items()}
    grid = steering_grid(*(getattr(args, name) for name in GRID))
    calibration = calibrate(
        gallery, witnesses, probes[~held_out], labels[~held_out], grid, args.target_fpr, args.batch_size,
        progress=lambda points: tqdm(points, desc="calibration", unit="point"),
    )
    best, best_rate = calibration.best
    rows["calibrated"] = (best, fpr(best, held_out))

    results = {
        "model": "dlib_resnet (dlib_face_recognition_resnet_model_v1) + 238-identity gallery",
        "probes": {"n": len(probes), "variants": list(VARIANTS), "top1_accuracy": float(correct.float().mean()),
                   "top1_accuracy_per_variant": accuracy},
        "witnesses": witnesses.count(),
        "steered_layers": list(witnesses.steered_layers()),
        "fpr": {name: {"weaken": p.weaken, "strengthen": list(p.strengthen), **r} for name, (p, r) in rows.items()},
        "calibration": {"target": args.target_fpr, "on": "even-index identities", "reported_on": "odd-index identities",
                        "chosen_fpr_on_calibration_half": best_rate.value,
                        "grid": [{"weaken": p.weaken, "strengthen": list(p.strengthen), "fpr": r.value}
                                 for p, r in calibration.points]},
        "provenance": provenance(device=device),
    }
    write_text(out / "results.json", json.dumps(results, indent=2) + "\n")

    markdown = calibration_markdown(results)
    console.print(markdown)
    write_text(out / "results.md", f"# AmI on the embedded default\n\n{markdown}\n")
    console.print(f"results in {out}")


if __name__ == "__main__":
    main()
