"""Every registered model: builds offline, hook layers are activation / pool modules (and those that automatic
discovery finds), pixel-space gradients. Registering a model adds it here: there is no table to edit."""

from __future__ import annotations

import pytest
import torch

from ami_lightning.models import MODELS, create_model, register_model
from ami_lightning.models.layers import find_layer, hook_layer_names, layer_channels, probe
from ami_lightning.models.wrapped import hookable_layers, hookable_types


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request: pytest.FixtureRequest):
    return request.param, create_model(request.param)


def test_registry_by_decorator(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"vgg_face", "dlib_resnet"} <= set(MODELS)
    with pytest.raises(KeyError, match=r"unknown model 'resnet50'; registered: \[.*'dlib_resnet'"):
        create_model("resnet50")
    monkeypatch.setattr("ami_lightning.models.registry.MODELS", dict(MODELS))
    from ami_lightning.models import registry

    register_model("another")(MODELS["dlib_resnet"])
    assert registry.MODELS["another"] is MODELS["dlib_resnet"] and "another" not in MODELS
    with pytest.raises(ValueError, match="model 'dlib_resnet' is already registered"):
        register_model("dlib_resnet")(MODELS["dlib_resnet"])


def test_model_contract(model) -> None:
    _, net = model
    assert not net.training and net.bounds == (0.0, 255.0)
    names = hook_layer_names(net)
    assert len(names) == len(set(names)) > 10
    activations, pools = hookable_types()
    for layer in names:
        assert isinstance(find_layer(net, layer), activations + pools)
    # the hand-written list is what automatic discovery finds (dlib's shortcut pools left out)
    assert hookable_layers(net.net, net.preprocess(probe(net))) == names
    channels = layer_channels(net, names)
    assert all(c > 0 for c in channels.values())
    x = (torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 255).requires_grad_(True)
    out = net(x)
    assert out.ndim == 2 and out.shape[0] == 2 and out.shape[1] > 1 and torch.isfinite(out).all()
    out[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
