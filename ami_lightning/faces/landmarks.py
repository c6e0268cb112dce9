"""68-point facial landmarks with dlib, as the AmI attribute extraction uses them.

Face box: dlib's HOG frontal detector (upsampled once); where it finds nothing, dlib's CNN (MMOD) detector; where
that finds nothing too, the whole image with a ``UserWarning``. Landmarks: dlib's 68-point shape predictor
(iBUG 300-W numbering, 0-based: jaw 0-16, brows 17-26, nose 27-35, eyes 36-41 / 42-47 on the image's left / right,
mouth 48-67). Points are ``(x, y)`` pixel coordinates (column, row) and may fall slightly outside the image.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import dlib
import numpy as np
import torch

from ami_lightning.models.dlib_files import CNN_FACE_DETECTOR, SHAPE_PREDICTOR_68, dlib_model_path

N_LANDMARKS = 68


def to_hwc_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """An RGB image as a C-contiguous uint8 array of shape (H, W, 3), the layout dlib takes.

    ``image``: uint8 tensor of shape (3, H, W), or uint8 array of shape (H, W, 3).
    """
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image tensor of shape (3, H, W), got {tuple(image.shape)}")
        array = image.detach().cpu().permute(1, 2, 0).numpy()
    else:
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"expected an image array of shape (H, W, 3), got {array.shape}")
    if array.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {array.dtype}")
    return np.ascontiguousarray(array)


class LandmarkDetector:
    """Face box plus 68 landmarks per image; loads dlib's models once (about 100 MB, a second or so)."""

    def __init__(self, upsample: int = 1) -> None:
        """``upsample``: how many times both detectors double the image before searching (1 finds faces of about
        40 px and up)."""
        self.upsample = upsample
        self._hog = dlib.get_frontal_face_detector()
        self._cnn = dlib.cnn_face_detection_model_v1(str(dlib_model_path(CNN_FACE_DETECTOR)))
        self._predictor = dlib.shape_predictor(str(dlib_model_path(SHAPE_PREDICTOR_68)))

    def detect(self, image: np.ndarray) -> dlib.rectangle | None:
        """The face box of an (H, W, 3) uint8 image: the best-scoring HOG detection, else the best-scoring CNN
        detection, else ``None``."""
        boxes = self._hog(image, self.upsample)
        if len(boxes) > 0:
            return boxes[0]
        cnn_boxes = self._cnn(image, self.upsample)
        if len(cnn_boxes) > 0:
            return max(cnn_boxes, key=lambda det: det.confidence).rect
        return None

    def face_box(self, image: np.ndarray) -> dlib.rectangle:
        """:meth:`detect`, falling back to the whole image (with a ``UserWarning``) where no face is found."""
        box = self.detect(image)
        if box is not None:
            return box
        height, width = image.shape[:2]
        warnings.warn("no face detected; using the whole image as the face box", UserWarning, stacklevel=3)
        return dlib.rectangle(0, 0, width - 1, height - 1)

    def landmarks(self, image: torch.Tensor | np.ndarray, box: dlib.rectangle) -> np.ndarray:
        """The 68 landmarks inside ``box``: int64 array (68, 2) of ``(x, y)`` pixel coordinates."""
        shape = self._predictor(to_hwc_uint8(image), box)
        return np.array([(shape.part(i).x, shape.part(i).y) for i in range(N_LANDMARKS)], dtype=np.int64)

    def __call__(self, image: torch.Tensor | np.ndarray) -> np.ndarray:
        """Landmarks of one face image.

        ``image``: uint8 RGB, tensor (3, H, W) or array (H, W, 3). Returns an int64 array of shape (68, 2) holding
        ``(x, y)`` pixel coordinates.
        """
        array = to_hwc_uint8(image)
        return self.landmarks(array, self.face_box(array))

    def batch(self, images: Sequence[torch.Tensor | np.ndarray]) -> np.ndarray:
        """Landmarks of several images (sizes may differ): int64 array of shape (N, 68, 2)."""
        if len(images) == 0:
            return np.zeros((0, N_LANDMARKS, 2), dtype=np.int64)
        return np.stack([self(image) for image in images])
