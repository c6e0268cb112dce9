"""VGG-Face (Parkhi et al. 2015) with the module names of ``vgg_face_dag.pth`` (Albanie's PyTorch port).

The state dict of ``vgg_face_dag.pth`` loads as is. :func:`load_vgg_face` returns the network wrapped in a
:class:`~ami_lightning.models.base.PixelModel`: input (B, 3, 224, 224) RGB pixels in [0, 255], output (B, 2622)
identity logits.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ami_lightning.data.identities import NUM_IDENTITIES
from ami_lightning.data.images import VGG_FACE_MEAN
from ami_lightning.models.base import Normalize, PixelModel, kaiming_init_, load_state_dict_file

# (block, number of convolutions, channels)
_BLOCKS: tuple[tuple[int, int, int], ...] = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


class VggFace(nn.Module):
    """The VGG-Face network; input (B, 3, 224, 224), mean-subtracted RGB in pixel units; output (B, 2622)."""

    def __init__(self, num_classes: int = NUM_IDENTITIES) -> None:
        super().__init__()
        in_channels = 3
        names: list[str] = []
        features: list[str] = []
        for block, convs, channels in _BLOCKS:
            for i in range(1, convs + 1):
                self.add_module(f"conv{block}_{i}", nn.Conv2d(in_channels, channels, 3, padding=1))
                self.add_module(f"relu{block}_{i}", nn.ReLU(inplace=True))
                names.append(f"relu{block}_{i}")
                features += [f"conv{block}_{i}", f"relu{block}_{i}"]
                in_channels = channels
            self.add_module(f"pool{block}", nn.MaxPool2d(2, 2))
            names.append(f"pool{block}")
            features.append(f"pool{block}")
        self.fc6 = nn.Linear(512 * 7 * 7, 4096)
        self.relu6 = nn.ReLU(inplace=True)
        self.dropout6 = nn.Dropout(0.5)
        self.fc7 = nn.Linear(4096, 4096)
        self.relu7 = nn.ReLU(inplace=True)
        self.dropout7 = nn.Dropout(0.5)
        self.fc8 = nn.Linear(4096, num_classes)
        self.hook_layers: tuple[str, ...] = (*names, "relu6", "relu7")
        self._feature_names: tuple[str, ...] = tuple(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._feature_names:
            x = getattr(self, name)(x)
        x = self.dropout6(self.relu6(self.fc6(x.flatten(1))))
        x = self.dropout7(self.relu7(self.fc7(x)))
        return self.fc8(x)


def vgg_face(net: VggFace | None = None) -> PixelModel:
    """Wrap a (random-weight by default) :class:`VggFace` for pixel-space input in [0, 255]."""
    net = VggFace() if net is None else net
    return PixelModel(net, Normalize(VGG_FACE_MEAN), net.hook_layers).eval()


def load_vgg_face(path: str | Path) -> PixelModel:
    """Load ``vgg_face_dag.pth`` (a plain state dict) into :class:`VggFace`, wrapped by :func:`vgg_face`; the errors of
    :func:`~ami_lightning.models.base.load_state_dict_file`, each naming the file."""
    return vgg_face(load_state_dict_file(VggFace(), path, "VGG-Face", "vgg_face_dag.pth"))


def build_vgg_face(weights: str | Path | None = None) -> PixelModel:
    """VGG-Face from ``vgg_face_dag.pth``, or with random He-initialised weights when ``weights`` is None."""
    return load_vgg_face(weights) if weights is not None else vgg_face(kaiming_init_(VggFace()))
