"""Every built-in network (the builders the model configs reach through ``_target_``): builds offline, hook layers
are activation / pool modules (and those that automatic discovery finds), pixel-space gradients."""

from __future__ import annotations

import pytest
import torch

from ami_lightning.models.dlib_resnet import load_dlib_resnet
from ami_lightning.models.layers import find_layer, hook_layer_names, layer_channels, probe
from ami_lightning.models.vgg_face import build_vgg_face
from ami_lightning.models.wrapped import hookable_layers, hookable_types

BUILDERS = {"dlib_resnet": load_dlib_resnet, "vgg_face": build_vgg_face}
"""The built-in networks' builders, called without weights (dlib's shipped file; VGG-Face with random weights)."""


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def model(request: pytest.FixtureRequest):
    return request.param, BUILDERS[request.param]()


def test_the_model_configs_build_through_these_builders() -> None:
    """The model configs name the classifiers that call these builders; no registry stands between them."""
    from omegaconf import OmegaConf

    from ami_lightning.cli import config_dir

    targets = {OmegaConf.load(f).get("_target_") for f in (config_dir() / "model").glob("*.yaml")}
    assert {"ami_lightning.models.classifiers.dlib_gallery", "ami_lightning.models.classifiers.vgg_face_classifier"} \
        <= targets


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
