"""Objects the Hydra configs instantiate: classifiers with their identity lists, and benign test sets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ami_lightning.data.datasets import FaceFiles
from ami_lightning.embedded import face_files
from ami_lightning.identities import identity_from_filename, load_names
from ami_lightning.images import load_image
from ami_lightning.models import create_model
from ami_lightning.models.gallery import FaceGallery
from ami_lightning.probes import VARIANTS, benign_variants


@dataclass
class Classifier:
    """A pixel-space classifier (B, 3, H, W) in [0, 255] -> (B, K) logits, with its K identity names."""

    name: str
    model: nn.Module
    identities: list[str]


def shipped_faces(limit: int | None = None) -> tuple[torch.Tensor, list[Path]]:
    """The shipped faces (first ``limit`` by file name) as uint8 (N, 3, 224, 224), and their paths."""
    files = face_files()[:limit]
    return torch.stack([load_image(f) for f in files]), files


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


class ProbeSet(Dataset):
    """Benign probes: deterministic light variants of enrolled faces; items (pixels float (3, H, W), label, index)."""

    def __init__(self, faces: torch.Tensor, labels: torch.Tensor, variants: list[str] | tuple[str, ...] = VARIANTS):
        self.probes, source = benign_variants(faces, variants)
        self.labels = labels[source]

    def __len__(self) -> int:
        return len(self.probes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return self.probes[index].float(), int(self.labels[index]), index


def shipped_probes(classifier: Classifier, limit: int | None = None, variants: tuple[str, ...] = VARIANTS) -> ProbeSet:
    """Probes of the shipped faces (the first ``limit``), labelled by the classifier's identity list."""
    faces, files = shipped_faces(limit)
    index = {name: i for i, name in enumerate(classifier.identities)}
    return ProbeSet(faces, torch.tensor([index[identity_from_filename(f)] for f in files]), tuple(variants))


def benign_folder(classifier: Classifier, benign_dir: str | None, benign_list: str | None = None,
                  on_error: str = "raise") -> FaceFiles:
    """Benign faces of a folder (optionally only the files named in ``benign_list``, one per line)."""
    if benign_dir is None or not Path(benign_dir).is_dir():
        raise FileNotFoundError(f"paths.benign_dir is missing: {benign_dir}")
    if benign_list is not None:
        names = [n.strip() for n in Path(benign_list).read_text().splitlines() if n.strip()]
        return FaceFiles.from_list(Path(benign_dir), names, classifier.identities, on_error)  # type: ignore[arg-type]
    return FaceFiles.from_folder(Path(benign_dir), classifier.identities, on_error=on_error)  # type: ignore[arg-type]
