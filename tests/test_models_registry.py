"""Every registered model: builds offline, hook layers are ReLU / pool modules, pixel-space gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ami_lightning.models import MODELS, create_model
from ami_lightning.models.layers import find_layer, hook_layer_names, layer_channels

OUTPUTS = {"vgg_face": 2622, "dlib_resnet": 128}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request: pytest.FixtureRequest):
    return request.param, create_model(request.param)


def test_registry_covers_expected_models() -> None:
    assert set(MODELS) == set(OUTPUTS)
    with pytest.raises(KeyError, match="unknown model 'resnet50'"):
        create_model("resnet50")


def test_model_contract(model) -> None:
    name, net = model
    assert not net.training and net.bounds == (0.0, 255.0)
    names = hook_layer_names(net)
    assert len(names) == len(set(names)) > 10
    for layer in names:
        assert isinstance(find_layer(net, layer), nn.ReLU | nn.MaxPool2d | nn.AvgPool2d | nn.AdaptiveAvgPool2d)
    channels = layer_channels(net, names)
    assert all(c > 0 for c in channels.values())
    x = (torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 255).requires_grad_(True)
    out = net(x)
    assert out.shape == (2, OUTPUTS[name]) and torch.isfinite(out).all()
    out[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
