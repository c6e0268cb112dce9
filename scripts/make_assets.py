"""Rebuild ``ami_lightning/assets/`` (the embedded default's data) from the AmI release's reference data.

Copies what the default needs at run time, and nothing more: the 238 faces (PNG -> JPEG quality 95, about 4 MB),
the base face and the 10 other faces used for witness extraction, the published VGG-Face witness lists, the
release's MIT licence (``PROVENANCE.md`` beside them is kept by hand).
Usage: ``python scripts/make_assets.py [--reference ../shared/reference]``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "ami_lightning" / "assets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reference", type=Path, default=ROOT.parent / "shared" / "reference")
    ref = parser.parse_args().reference
    if not (ref / "faces" / "manifest.csv").is_file():
        raise SystemExit(f"reference data not found at {ref}")
    faces = ASSETS / "faces"
    shutil.rmtree(faces, ignore_errors=True)
    faces.mkdir(parents=True)
    for png in sorted((ref / "faces").glob("*.png")):
        Image.open(png).convert("RGB").save(faces / f"{png.stem}.jpg", quality=95)
    shutil.copy(ref / "faces" / "manifest.csv", faces / "manifest.csv")
    witness_faces = ASSETS / "witness_faces"
    shutil.rmtree(witness_faces, ignore_errors=True)
    shutil.copytree(ref / "images", witness_faces / "images")
    shutil.copy(ref / "base_img.jpg", witness_faces / "base_img.jpg")
    shutil.rmtree(ASSETS / "witnesses_vgg_face_dag", ignore_errors=True)
    shutil.copytree(ref / "witnesses_vgg_face_dag", ASSETS / "witnesses_vgg_face_dag")
    shutil.copy(ref / "LICENSE", ASSETS / "LICENSE-AmI")
    size = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    print(f"wrote {ASSETS} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
