"""Face classifiers the Hydra configs instantiate (``model`` group): a pixel-space network with its identity names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ami_lightning.data.benign import shipped_faces
from ami_lightning.data.identities import identity_from_filename, load_names
from ami_lightning.data.images import load_image
from ami_lightning.models import create_model
from ami_lightning.models.gallery import FaceGallery


@dataclass
class Classifier:
    """A pixel-space classifier (B, 3, H, W) in [0, 255] -> (B, K) logits, with its K identity names."""

    name: str
    model: nn.Module
    identities: list[str]


def dlib_gallery(faces_dir: str | None = None, batch_size: int = 64, weights: str | None = None) -> Classifier:
    """dlib's ResNet (``weights``: a ``.dat`` file, default the one of ``face_recognition_models``) as a gallery
    classifier enrolling one identity per face file of ``faces_dir`` (default: the 238 shipped faces), identities
    from the VGG Face file names."""
    if faces_dir is None:
        faces, files = shipped_faces()
    else:
        files = sorted(p for p in Path(faces_dir).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not files:
            raise FileNotFoundError(f"no face images in {faces_dir}")
        faces = torch.stack([load_image(f) for f in files])
    identities = [identity_from_filename(f) for f in files]
    gallery = FaceGallery(create_model("dlib_resnet", weights), identities, batch_size=batch_size)
    gallery.enrol(faces.float(), torch.arange(len(files)))
    return Classifier("dlib_resnet", gallery, identities)


def vgg_face_classifier(weights: str | None, names: str | None) -> Classifier:
    """VGG-Face from ``vgg_face_dag.pth`` with its 2622-name ``names.txt``; a clear error naming each missing path."""
    missing = [f"{key} ({value})" for key, value in (("paths.vgg_face_weights", weights), ("paths.vgg_names", names))
               if value is None or not Path(value).is_file()]
    if missing:
        raise FileNotFoundError(f"VGG-Face needs these files, which are missing: {', '.join(missing)}")
    return Classifier("vgg_face", create_model("vgg_face", weights), load_names(names))
