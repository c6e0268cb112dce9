"""A small face classifier trained in seconds, for attack tests: 10 shipped identities at 32x32 or 64x64 pixels,
and an AmI detector on it."""

from __future__ import annotations

import copy
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from ami_lightning.data.images import load_image
from ami_lightning.data.probes import shift
from ami_lightning.data.shipped import face_files
from ami_lightning.detectors.ami import AmIDetector
from ami_lightning.models.base import Normalize, PixelModel
from ami_lightning.models.layers import hook_layer_names, layer_channels
from ami_lightning.witnesses import ATTRIBUTES, WitnessSet

NUM_CLASSES = 10


class ToyNet(nn.Module):
    """conv-relu-pool x2, fc; input (B, 3, S, S) normalised; output (B, 10) logits."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * (size // 4) ** 2, NUM_CLASSES)
        self.hook_layers = ("relu1", "pool1", "relu2", "pool2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(x.flatten(1))


@lru_cache(maxsize=4)
def toy_faces(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 10 shipped faces at size x size: float pixels (10, 3, S, S) in [0, 255], labels 0..9."""
    faces = torch.stack([load_image(f) for f in face_files()[:NUM_CLASSES]]).float()
    small = F.interpolate(faces, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return small.round().clamp(0, 255), torch.arange(NUM_CLASSES)


@lru_cache(maxsize=4)
def toy_classifier(size: int = 32, seed: int = 0, steps: int = 150) -> PixelModel:
    """ToyNet trained on shifted, flipped and noisy copies of :func:`toy_faces`; eval mode, 100 % on the clean faces."""
    torch.manual_seed(seed)
    images, labels = toy_faces(size)
    net = ToyNet(size)
    model = PixelModel(net, Normalize((128.0,) * 3, (64.0,) * 3), net.hook_layers, input_size=size)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    augmented = torch.cat([images, images.flip(-1)] + [shift(images, dx, dy) for dx, dy in ((2, 1), (-2, -1))])
    targets = labels.repeat(4)
    for _ in range(steps):
        noisy = (augmented + 8 * torch.randn_like(augmented)).clamp(0, 255)
        loss = F.cross_entropy(model(noisy), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        assert bool((model(images).argmax(1) == labels).all()), "toy classifier failed to fit its faces"
    return model


@lru_cache(maxsize=4)
def tempered_toy_classifier(size: int = 32, temperature: float = 10.0) -> PixelModel:
    """:func:`toy_classifier` with its logits divided by ``temperature`` (its last layer's weight and bias scaled):
    the same predictions and hooked activations, but a softmax that is not saturated. The toy's top softmax
    probability is 1.0 in float32 on every clean face (logit margins 18-55), so gradients through it underflow
    (norms of 1e-20 and below); at temperature 10 it is 0.84-0.98. For tests that compare attacks' strength."""
    model = copy.deepcopy(toy_classifier(size))
    with torch.no_grad():
        model.net.fc.weight /= temperature
        model.net.fc.bias /= temperature
    return model.eval()


@lru_cache(maxsize=4)
def toy_witnesses(size: int = 32, fraction: float = 0.25, seed: int = 0) -> WitnessSet:
    """A fixed random ``fraction`` of the channels of each hooked layer of :func:`toy_classifier` as the witnesses
    of each of the four attributes (the toy has no landmarks to mutate); the same set for a given seed."""
    model = toy_classifier(size)
    layers = hook_layer_names(model)
    generator = torch.Generator().manual_seed(seed)
    channels = layer_channels(model, layers, size)
    return WitnessSet.from_mapping(
        {a: {layer: torch.randperm(c, generator=generator)[: max(1, int(c * fraction))].tolist()
             for layer, c in channels.items()} for a in ATTRIBUTES},
        layers,
    )


def toy_detector(size: int = 32, model: PixelModel | None = None) -> AmIDetector:
    """AmI with the published steering parameters (60, (2.15, 50)), no crop, on ``model`` (default
    :func:`toy_classifier`; :func:`tempered_toy_classifier` has the same layers) with :func:`toy_witnesses`: it flags
    none of the 10 clean faces."""
    return AmIDetector(toy_classifier(size) if model is None else model, toy_witnesses(size), 60.0, (2.15, 50.0),
                       crop_layers=())


class PixelSet(torch.utils.data.Dataset):
    """Pixels (N, 3, S, S) and labels (N,) as a dataset of items ``(pixels, label, index)``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return self.x[i], int(self.y[i]), i


def toy_eval_sets(size: int = 32) -> tuple[AmIDetector, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """A small AmI detector on :func:`toy_classifier` (leye witnesses at relu1 and relu2, weaken 5, strengthen
    (2.15, 5)) and three sets of (pixels, labels): ``benign`` (the clean faces), ``noise`` (heavy noise that fools
    the toy on some faces) and ``shifted`` (the clean pixels with wrong labels: the model is 'fooled' on all)."""
    model = toy_classifier(size)
    x, y = toy_faces(size)
    witnesses = WitnessSet.from_mapping({"leye": {"relu1": [0, 1, 2], "relu2": [3, 4, 5]}}, model.hook_layers)
    noisy = (x + 200 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 255)
    return AmIDetector(model, witnesses, 5.0, (2.15, 5.0)), {"benign": (x, y), "noise": (noisy, y),
                                                             "shifted": (x, (y + 1) % NUM_CLASSES)}
