"""A user's own face network (``model=onnx``, ``model=torch``): preprocessing inside the model, hook layers found by
one forward pass, an embedding network as a gallery; dlib's network exported to ONNX and loaded back behaves as the
PyTorch port; a random He-initialised ResNet-18 goes through the whole run."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from omegaconf import open_dict
from torch import nn

from ami_lightning.cli import apps
from ami_lightning.data.benign import shipped_faces
from ami_lightning.detectors.base import registered_detectors
from ami_lightning.models import create_model
from ami_lightning.models.base import Preprocess
from ami_lightning.models.classifiers import onnx_classifier, torch_classifier
from ami_lightning.models.gallery import FaceGallery
from ami_lightning.models.layers import find_layer, forward_hooks, layer_channels
from ami_lightning.models.wrapped import load_onnx, wrap_network
from ami_lightning.pipeline.validation import ConfigError, check_config
from ami_lightning.witnesses import WitnessSet
from tests.conftest import compose_config, cpu_config
from tests.toy import ToyNet

RESNET18 = {"_target_": "torchvision.models.resnet18", "num_classes": 16}


# ---- preprocessing --------------------------------------------------------------------------------------------------
def test_preprocess_resizes_reorders_scales_and_normalises() -> None:
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0)) * 255
    y = Preprocess(4, "bgr", 1 / 255, (0.5, 0.25, 0.0), (0.5, 0.5, 2.0))(x)
    resized = F.interpolate(x, size=(4, 4), mode="bilinear", antialias=True, align_corners=False)
    mean, std = torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1), torch.tensor([0.5, 0.5, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(y, (resized.flip(1) / 255 - mean) / std)
    assert Preprocess((4, 5))(x).shape == (2, 3, 4, 5)
    assert torch.equal(Preprocess()(x), x)  # the defaults change nothing
    with pytest.raises(ValueError, match=r"channel_order='rgbx': expected one of rgb, bgr; std=\(1, 0, 1\): expected "
                                         r"three numbers > 0"):
        Preprocess(channel_order="rgbx", std=(1, 0, 1))  # type: ignore[arg-type]


# ---- hook layers ----------------------------------------------------------------------------------------------------
def test_repeated_activations_are_split_into_one_module_per_call() -> None:
    """torchvision's ResNet applies one ``relu`` twice per block: each call gets its own module (torch.fx), the
    outputs are unchanged and every hook layer fires once per forward pass, in forward order."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=16).eval()
    model = wrap_network(net, Preprocess(64))
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert model.hook_layers == ("relu", "maxpool", *(f"{b}.{r}" for b in blocks for r in ("relu", "relu_1")),
                                 "avgpool")
    assert find_layer(model, "relu") is model.net.relu  # the stem's, not layer1.0.relu
    x = torch.rand(2, 3, 80, 80) * 255
    fired: list[str] = []
    with torch.no_grad(), forward_hooks(model, {n: lambda *_, n=n: fired.append(n) for n in model.hook_layers}):
        out = model(x)
    assert fired == list(model.hook_layers)
    with torch.no_grad():
        torch.testing.assert_close(out, net(Preprocess(64)(x)), rtol=0, atol=0)


class Functional(nn.Module):
    """Convolutions with functional activations only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).flatten(1))


class SharedUntraceable(nn.Module):
    """One ReLU applied twice, and control flow on values (torch.fx cannot trace it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(x))
        return self.relu(x - 1).flatten(1) if x.sum() > 0 else x.flatten(1)


def test_hook_layer_errors_list_what_can_be_hooked() -> None:
    with pytest.raises(ValueError, match=r"hook_layers: 'relu9' is not a submodule that ToyNet calls in its forward "
                                         r"pass; hookable modules \(activation and pooling, in forward order\): "
                                         r"relu1, pool1, relu2, pool2$"):
        wrap_network(ToyNet(32), Preprocess(32), ["relu1", "relu9"])
    assert wrap_network(ToyNet(32), Preprocess(32), ["conv2", "relu1"]).hook_layers == ("conv2", "relu1")
    with pytest.raises(ValueError, match=r"Functional has no activation or pooling module in its forward pass .* "
                                         r"nothing for AmI to hook"):
        wrap_network(Functional(), Preprocess())
    assert wrap_network(Functional(), Preprocess(), ["conv"]).hook_layers == ("conv",)
    with pytest.raises(ValueError, match=r"called more than once per forward pass: relu: .*torch.fx cannot trace "
                                         r"SharedUntraceable"):
        wrap_network(SharedUntraceable(), Preprocess(16))
    assert wrap_network(SharedUntraceable(), Preprocess(16), ["conv"]).hook_layers == ("conv",)


# ---- model=torch ----------------------------------------------------------------------------------------------------
def test_torch_network_with_logits_weights_and_seed(tmp_path: Path) -> None:
    """A network built from its Hydra node is the same for the same seed; a state dict file replaces its weights
    (a wrong one names the file); logits get the names of the names file, one per logit."""
    names = tmp_path / "names.txt"
    names.write_text("".join(f"person{i}\n" for i in range(16)))
    x = torch.rand(2, 3, 64, 64) * 255

    def build(**kwargs: object):
        return torch_classifier(RESNET18, output="logits", names=str(names), input_size=48, **kwargs)

    first, second, other = build(), build(), build(seed=1)
    assert first.identities == [f"person{i}" for i in range(16)] and first.name == "ResNet"
    with torch.no_grad():
        assert torch.equal(first.model(x), second.model(x)) and not torch.equal(first.model(x), other.model(x))
        weights = tmp_path / "weights.pt"
        net = torchvision.models.resnet18(num_classes=16)
        torch.save(net.state_dict(), weights)
        loaded = build(weights=str(weights))
        torch.testing.assert_close(loaded.model(x), net.eval()(Preprocess(48)(x)))
    torch.save({"fc.weight": torch.zeros(1)}, weights)
    with pytest.raises(ValueError, match=r"weights.pt: state dict keys do not match the network ResNet: missing"):
        build(weights=str(weights))
    names.write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"names.txt: expected 16 names, found 2"):
        build()
    with pytest.raises(ValueError, match=r"model=torch: output='scores': expected one of embedding, logits$"):
        torch_classifier(RESNET18, output="scores")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"model=torch: names='.*names.txt': only read with output=logits"):
        torch_classifier(RESNET18, names=str(names))


def test_gallery_takes_its_dimension_from_the_embedder_and_may_normalise() -> None:
    embedder = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())  # (B, 12)
    images = torch.rand(3, 3, 8, 8) * 255
    gallery = FaceGallery(embedder, ["a", "b", "c"], normalize=True)
    gallery.enrol(images, torch.arange(3))
    assert gallery.centroids.shape == (3, 12)
    torch.testing.assert_close(gallery.centroids.norm(dim=1), torch.ones(3))
    unit = F.normalize(embedder(images), dim=1)
    torch.testing.assert_close(gallery(images), -10.0 * torch.cdist(unit, unit))
    with pytest.raises(ValueError, match=r"outputs of shape \(1, 3, 2, 2\) for one image; a gallery needs \(1, D\)"):
        FaceGallery(nn.AdaptiveAvgPool2d(2), ["a"])


# ---- configuration ---------------------------------------------------------------------------------------------------
def _problems(overrides: list[str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        check_config(compose_config("run", ["attack=[]", *overrides]))
    return list(caught.value.problems)


def test_own_model_configs_name_missing_paths_and_bad_values(tmp_path: Path) -> None:
    assert _problems(["model=onnx"]) == ["model.path=???: no value given"]
    assert _problems(["model=torch"]) == ["model.net._target_=???: no value given"]
    gone = tmp_path / "gone"
    assert _problems(["model=onnx", f"model.path={gone}.onnx", "model.output=logits", "model.mean=[1,2]"]) == [
        f"model.path='{gone}.onnx': no such file; the run needs the ONNX file of the face network there",
        "model.mean=[1, 2]: expected three numbers, one per channel of the network's input, in scaled units",
        "model.names=null: a network with output=logits needs the file of its identity names, one per line in the "
        "order of its logits"]
    assert _problems(["model=torch", "model.net._target_=torchvision.models.resnet18", f"model.weights={gone}.pt",
                      "model.channel_order=BGR", "model.hook_layers=relu"]) == [
        f"model.weights='{gone}.pt': no such file; the run needs the network's state dict "
        "(torch.save(net.state_dict())) there",
        "model.channel_order='BGR': expected one of rgb, bgr",
        "model.hook_layers='relu': expected null (found automatically) or a list of module names"]
    assert _problems(["model=torch", "model.net._target_=tests.toy.ToyNet", "+model.net.sise=3"]) == [
        "model.net.sise=3: not a parameter of tests.toy.ToyNet (did you mean size?); it takes: size"]
    check_config(compose_config("run", ["model=torch", "model.net._target_=torchvision.models.resnet18",
                                        "+model.net.num_classes=128", "model.input_size=[112,112]"]))
    with pytest.raises(FileNotFoundError, match=f"ONNX model not found: {gone}.onnx"):
        onnx_classifier(f"{gone}.onnx")


# ---- dlib's network through ONNX ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dlib_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dlib's network with its normalisation (not its resize), exported to ONNX at a fixed 150x150 input."""
    port = create_model("dlib_resnet")
    path = tmp_path_factory.mktemp("onnx") / "dlib_resnet.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer warnings
        warnings.simplefilter("ignore")
        torch.onnx.export(nn.Sequential(port.preprocess.normalize, port.net), (torch.zeros(1, 3, 150, 150),),
                          str(path), dynamo=False, opset_version=17, input_names=["image"],
                          dynamic_axes={"image": {0: "batch"}})
    return path


def test_dlib_exported_to_onnx_gives_the_same_descriptors_and_hook_layers(dlib_onnx: Path) -> None:
    port = create_model("dlib_resnet")
    net, size = load_onnx(dlib_onnx)
    assert size == (150, 150)
    loaded = wrap_network(net, Preprocess(size))  # model=onnx's defaults: resize to the graph's size, nothing else
    faces = shipped_faces(6)[0].float()
    with torch.no_grad():
        torch.testing.assert_close(loaded(faces), port(faces), rtol=0, atol=1e-5)
    # one per dlib hook layer, in the same order: the export names each node after its module (1/relu1/Relu...)
    assert [name.split("/")[1] for name in loaded.hook_layers] == list(port.hook_layers)
    assert list(layer_channels(loaded, loaded.hook_layers).values()) == list(
        layer_channels(port, port.hook_layers).values())


def _dlib_name(layer: str) -> str:
    return layer.split("/")[1] if "/" in layer else layer


@pytest.mark.slow
def test_dlib_through_onnx_gives_the_same_witnesses_and_detections(dlib_onnx: Path, tmp_path: Path) -> None:
    """``ami-run model=onnx model.path=FILE`` (with dlib's gallery rule, raw descriptors) and ``ami-run`` on the
    PyTorch port: the same witnesses, the same detection counts on a few faces. Both score the FGSM files the port's
    run made: FGSM's gradient sign flips on pixels where the two graphs' gradients differ in the last bits, so files
    made on each would differ on some machines, and the counts would measure that, not the model."""
    runs, attacks_dir = {}, None
    for name, overrides in (("port", []), ("onnx", ["model=onnx", f"model.path={dlib_onnx}", "model.normalize=false"])):
        given = [] if attacks_dir is None else [f"data.attacks_dir={attacks_dir}"]
        cfg = cpu_config(compose_config("run", [*overrides, *given, "attack=[fgsm]", "logger=none"]), tmp_path / name)
        with open_dict(cfg):
            cfg.data.benign.limit = 3
            cfg.data.attack_faces = 2
        apps._eval(cfg)
        if attacks_dir is None:
            (attacks_dir,) = (folder.parent for folder in (Path(cfg.paths.cache_dir) / "attacks").glob("*/fgsm"))
        out = Path(cfg.paths.output_dir)
        witnesses = WitnessSet.read(out / "witnesses")
        runs[name] = ({attribute: {_dlib_name(layer): channels for layer, channels in per_layer.items()}
                       for attribute, per_layer in witnesses.witnesses.items()},
                      [(s["detector"], s["name"], s["n"], s["eligible"], s["flagged"])
                       for s in json.loads((out / "results.json").read_text())["sets"]])
    assert not (Path(cfg.paths.cache_dir) / "attacks").exists()  # the ONNX run made no attack files of its own
    assert runs["onnx"][0] == runs["port"][0]
    assert runs["onnx"][1] == runs["port"][1]
    assert {row[1] for row in runs["port"][1]} == {"benign", "fgsm", "worst_case"}


# ---- a random ResNet-18 through the whole run -----------------------------------------------------------------------
@pytest.mark.slow
def test_random_resnet18_gallery_runs_witnesses_an_attack_and_every_detector(tmp_path: Path) -> None:
    """``ami-run model=torch model.net._target_=torchvision.models.resnet18``: He-initialised random weights,
    128-D embeddings, a gallery over the shipped faces; witnesses, BIM on two faces, every registered detector."""
    detectors = registered_detectors()
    cfg = cpu_config(compose_config("run", [
        "model=torch", "model.net._target_=torchvision.models.resnet18", "+model.net.num_classes=128",
        "model.input_size=112", f"detector=[{','.join(detectors)}]", "attack=[bim]", "attacks.bim.params.steps=5",
        "logger=none"]), tmp_path)
    with open_dict(cfg):
        cfg.data.benign.limit = 4
        cfg.data.attack_faces = 2
    apps._eval(cfg)
    out = Path(cfg.paths.output_dir)
    results = json.loads((out / "results.json").read_text())
    assert [(s["detector"], s["name"]) for s in results["sets"]] == [
        (d, name) for d in detectors for name in ("benign", "bim", "worst_case")]
    benign = {s["detector"]: s for s in results["sets"] if s["name"] == "benign"}
    attacked = {s["detector"]: s for s in results["sets"] if s["name"] == "bim"}
    assert all(s["n"] == 16 and s["eligible"] >= 12 for s in benign.values())  # random features still match faces
    assert all(s["n"] == 2 and s["eligible"] >= 1 for s in attacked.values())  # BIM fools the random network
    witnesses = WitnessSet.read(out / "witnesses")
    assert witnesses.layers[:2] == ("relu", "maxpool") and "layer4.1.relu_1" in witnesses.layers
    assert all(count > 0 for count in witnesses.count().values())
