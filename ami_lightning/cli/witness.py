"""``ami-witness``: attribute mutation + witness extraction for all four attributes; writes ``layer->i,j,k`` files.

Default: dlib's face-recognition ResNet and the release's base face and 10 other faces shipped with the package.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from ami_lightning.cli import make_run_dir, pick_device
from ami_lightning.embedded import witness_face_files
from ami_lightning.models import MODELS, PixelModel, create_model
from ami_lightning.witnesses import WitnessSet
from ami_lightning.witnesses.from_faces import Mutations, witnesses_from_faces


def save_mutation_grid(mutations: Mutations, path: Path) -> None:
    """One row per attribute and kind (substitution, preservation), one column per other face."""
    rows = [images for pair in mutations.values() for images in pair]
    grid = make_grid(torch.cat(rows).float() / 255, nrow=len(rows[0]), padding=2)
    save_image(grid, path)


def extract(model: PixelModel, base: Path, others: list[Path], out: Path, caffe: bool = False) -> WitnessSet:
    """Extract, write ``<attr>_neurons.txt`` and ``mutations.png`` under ``out``; returns the witnesses."""
    witnesses, mutations = witnesses_from_faces(
        model, model.hook_layers, base, others, caffe=caffe, progress=lambda a: tqdm(a, desc="witnesses", unit="attr")
    )
    witnesses.write(out / "witnesses")
    save_mutation_grid(mutations, out / "mutations.png")
    return witnesses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=sorted(MODELS), default="dlib_resnet")
    parser.add_argument("--weights", type=Path, help="weights file (VGG-Face: vgg_face_dag.pth)")
    parser.add_argument("--base", type=Path, help="base face (default: the release's base_img.jpg, shipped)")
    parser.add_argument("--others", type=Path, nargs="+", help="other faces (default: the release's 10, shipped)")
    parser.add_argument("--caffe", action="store_true", help="Caffe variant: preservation keeps <= median")
    parser.add_argument("--out", type=Path, help="output folder (default logs/witness/<timestamp>)")
    parser.add_argument("--device")
    args = parser.parse_args(argv)
    if args.model == "vgg_face" and args.weights is None:
        parser.error("--model vgg_face needs --weights vgg_face_dag.pth")
    base, others = witness_face_files()
    out = make_run_dir("witness", args.out)
    model = create_model(args.model, args.weights).to(pick_device(args.device))
    witnesses = extract(model, args.base or base, args.others or others, out, args.caffe)
    print(f"witnesses per attribute: {witnesses.count()} at {len(witnesses.steered_layers())} layers")
    print(f"written to {out / 'witnesses'} (and {out / 'mutations.png'})")


if __name__ == "__main__":
    main()
