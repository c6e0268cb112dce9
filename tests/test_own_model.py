"""A user's own face network (``model=onnx``, ``model=torch``): preprocessing inside the model, hook layers found by
one forward pass, an embedding network as a gallery; dlib's network exported to ONNX and loaded back behaves as the
PyTorch port; a random He-initialised ResNet-18 goes through the whole run."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
import torchvision
from omegaconf import open_dict
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ami_lightning.cli import apps
from ami_lightning.data.shipped import shipped_faces
from ami_lightning.detectors.base import registered_detectors
from ami_lightning.models.base import PixelModel, Preprocess, kaiming_init_
from ami_lightning.models.classifiers import onnx_classifier, torch_classifier
from ami_lightning.models.dlib_resnet import load_dlib_resnet
from ami_lightning.models.gallery import FaceGallery
from ami_lightning.models.layers import find_layer, forward_hooks, layer_channels
from ami_lightning.models.wrapped import OneImageAtATime, load_onnx, wrap_network
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
    port = load_dlib_resnet()
    path = tmp_path_factory.mktemp("onnx") / "dlib_resnet.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer warnings
        warnings.simplefilter("ignore")
        torch.onnx.export(nn.Sequential(port.preprocess.normalize, port.net), (torch.zeros(1, 3, 150, 150),),
                          str(path), dynamo=False, opset_version=17, input_names=["image"],
                          dynamic_axes={"image": {0: "batch"}})
    return path


def test_dlib_exported_to_onnx_gives_the_same_descriptors_and_hook_layers(dlib_onnx: Path) -> None:
    port = load_dlib_resnet()
    network = load_onnx(dlib_onnx)
    assert network.size == (150, 150) and network.batch is None
    loaded = network.wrap(Preprocess(network.size))  # model=onnx's defaults: resize to the graph's size, nothing else
    assert type(loaded) is PixelModel  # a dynamic batch: batches go through whole
    faces = shipped_faces(6)[0].float()
    with torch.no_grad():
        torch.testing.assert_close(loaded(faces), port(faces), rtol=0, atol=1e-5)
    # one per dlib hook layer, in the same order: the export names each node after its module (1/relu1/Relu...)
    assert [name.split("/")[1] for name in loaded.hook_layers] == list(port.hook_layers)
    assert list(layer_channels(loaded, loaded.hook_layers).values()) == list(
        layer_channels(port, port.hook_layers).values())


Run = tuple[tuple[str, ...], dict[str, dict[str, tuple[int, ...]]], list[tuple[str, str, int, int, int]]]
"""What a run shows of a model: its hook layers, its witnesses (attribute -> layer -> channels), and per detector and
set its (detector, set, n, eligible, flagged) row."""


def _run_both(reference: list[str], onnx: list[str], tmp_path: Path) -> tuple[Run, Run]:
    """``ami-run attack=[fgsm]`` (3 faces' benign probes, 2 attacked faces) with the ``reference`` overrides, then
    with the ``onnx`` ones. Both score the FGSM files the first run made: FGSM's gradient sign flips on pixels where
    the two graphs' gradients differ in the last bits, so files made on each would differ on some machines, and the
    counts would measure that, not the model."""
    runs, attacks_dir = [], None
    for name, overrides in (("reference", reference), ("onnx", onnx)):
        given = [] if attacks_dir is None else [f"data.attacks_dir={attacks_dir}"]
        cfg = cpu_config(compose_config("run", [*overrides, *given, "attack=[fgsm]", "logger=none"]), tmp_path / name)
        with open_dict(cfg):
            cfg.data.benign.limit = 3
            cfg.data.fit.limit = 12  # the fitted detectors on the fit variants of 12 faces
            cfg.data.attack_faces = 2
        apps._eval(cfg)
        if attacks_dir is None:
            (attacks_dir,) = (folder.parent for folder in (Path(cfg.paths.cache_dir) / "attacks").glob("*/fgsm"))
        out = Path(cfg.paths.output_dir)
        witnesses = WitnessSet.read(out / "witnesses")
        runs.append((witnesses.layers, {attribute: dict(per_layer) for attribute, per_layer in
                                        witnesses.witnesses.items()},
                     [(s["detector"], s["name"], s["n"], s["eligible"], s["flagged"])
                      for s in json.loads((out / "results.json").read_text())["sets"]]))
    assert not (Path(cfg.paths.cache_dir) / "attacks").exists()  # the ONNX run made no attack files of its own
    assert {row[1] for row in runs[0][2]} == {"benign", "fgsm", "worst_case"}
    return runs[0], runs[1]


def _assert_same_run(reference: Run, onnx: Run, names: dict[str, str]) -> None:
    """The same witnesses and counts, the ONNX run's layers named as the reference's by ``names``."""
    assert [names[layer] for layer in onnx[0]] == list(reference[0])
    assert {attribute: {names[layer]: channels for layer, channels in per_layer.items()}
            for attribute, per_layer in onnx[1].items()} == reference[1]
    assert onnx[2] == reference[2]


@pytest.mark.slow
def test_dlib_through_onnx_gives_the_same_witnesses_and_detections(dlib_onnx: Path, tmp_path: Path) -> None:
    """``ami-run model=onnx model.path=FILE`` (with dlib's gallery rule, raw descriptors) and ``ami-run`` on the
    PyTorch port: the same witnesses, the same detection counts on a few faces."""
    port, onnx = _run_both([], ["model=onnx", f"model.path={dlib_onnx}", "model.normalize=false"], tmp_path)
    _assert_same_run(port, onnx, {layer: layer.split("/")[1] for layer in onnx[0]})  # 1/relu1/Relu -> relu1


# ---- FaceNet's InceptionResnetV1 as torch.onnx.export writes it -----------------------------------------------------
class BasicConv2d(nn.Module):
    """FaceNet's unit: convolution without bias, batch norm, ReLU (exported: the norm folded into the convolution,
    whose biases are then all zero, one initializer the exporter shares through Identity nodes)."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(channels_out, eps=0.001)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Block35(nn.Module):
    """FaceNet's residual Inception block, two branches."""

    def __init__(self, channels: int, scale: float = 0.17) -> None:
        super().__init__()
        self.scale = scale
        half = channels // 2
        self.branch0 = BasicConv2d(channels, half, 1)
        self.branch1 = nn.Sequential(BasicConv2d(channels, half, 1), BasicConv2d(half, half, 3, padding=1))
        self.conv2d = nn.Conv2d(2 * half, channels, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d(torch.cat((self.branch0(x), self.branch1(x)), 1))
        return self.relu(out * self.scale + x)


class FaceNetLike(nn.Module):
    """A small InceptionResnetV1 (facenet-pytorch) with He-initialised random weights: exported at a fixed batch of
    1 by the TorchScript exporter, its graph holds FaceNet's three obstacles to onnx2torch: Identity nodes for the
    convolutions' zero biases, ``F.normalize``'s ``Clip`` with an empty optional input (max), and
    ``x.view(x.shape[0], -1)`` as a ``Reshape`` to the constant shape (1, -1)."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 128, 3, stride=2)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.repeat_1 = nn.Sequential(Block35(128), Block35(128))
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.6)
        self.last_linear = nn.Linear(128, dim, bias=False)
        self.last_bn = nn.BatchNorm1d(dim, eps=0.001)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool_1a(self.repeat_1(self.maxpool_3a(self.conv2d_2a(self.conv2d_1a(x)))))
        x = self.last_bn(self.last_linear(self.dropout(x).view(x.shape[0], -1)))
        return F.normalize(x, p=2, dim=1)


def _export_facenet(path: Path, opset: int) -> Path:
    """:class:`FaceNetLike` exported by ``torch.onnx.export`` (TorchScript exporter) at a fixed 1x3x160x160."""
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer warnings
        warnings.simplefilter("ignore")
        torch.onnx.export(FaceNetLike().eval(), (torch.zeros(1, 3, 160, 160),), str(path), dynamo=False,
                          opset_version=opset)
    return path


def _facenet_obstacles(path: Path) -> list[str]:
    """Which of FaceNet's three obstacles the graph at ``path`` holds."""
    graph = onnx.load(str(path)).graph
    producer = {output: node for node in graph.node for output in node.output}
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    constants.update({node.output[0]: numpy_helper.to_array(node.attribute[0].t) for node in graph.node
                      if node.op_type == "Constant"})
    found = []
    if any(node.op_type == "Conv" and len(node.input) == 3 and node.input[2] in producer
           and producer[node.input[2]].op_type == "Identity" for node in graph.node):
        found.append("Identity bias")
    if any(node.op_type == "Clip" and "" in node.input for node in graph.node):
        found.append("Clip with an empty input")
    if any(node.op_type == "Reshape" and constants.get(node.input[1], [0])[0] == 1 for node in graph.node):
        found.append("Reshape to batch 1")
    return found


@pytest.mark.parametrize("opset", [17, 20])  # 17 as FaceNet's users export it; 20: torch.onnx.export's default
def test_facenet_style_graph_loads_and_equals_its_pytorch_form(opset: int, tmp_path: Path) -> None:
    """The exported graph with its three obstacles loads (simplified by onnxslim, opset 20 converted down to 17),
    runs one image at a time (its batch of 1 is baked into a Reshape), and gives the PyTorch network's embeddings
    and hook layers, in the same order."""
    path = _export_facenet(tmp_path / "facenet.onnx", opset)
    assert _facenet_obstacles(path) == ["Identity bias", "Clip with an empty input", "Reshape to batch 1"]
    network = load_onnx(path)
    assert network.size == (160, 160) and network.batch == 1
    loaded = network.wrap(Preprocess(network.size))
    assert isinstance(loaded, OneImageAtATime)
    reference = wrap_network(FaceNetLike(), Preprocess(160))
    assert len(loaded.hook_layers) == len(reference.hook_layers) == 12
    # conv2d_1a/relu/Relu <-> conv2d_1a.relu, repeat_1/repeat_1/0/branch0/relu/Relu <-> repeat_1.0.branch0.relu...
    assert [name.split("/")[-2] for name in loaded.hook_layers] == [
        name.split(".")[-1] for name in reference.hook_layers]
    faces = shipped_faces(5)[0].float()
    fired: list[str] = []
    with torch.no_grad(), forward_hooks(loaded, {loaded.hook_layers[0]: lambda *_: fired.append("relu")}):
        torch.testing.assert_close(loaded(faces), reference(faces), rtol=0, atol=1e-6)
    assert fired == ["relu"] * 5  # once per image


@pytest.mark.slow
def test_facenet_style_graph_gives_the_same_witnesses_and_detections(tmp_path: Path) -> None:
    """``ami-run model=onnx`` on the exported FaceNet-style graph and ``ami-run model=torch`` on the network it was
    exported from: the same hook layers, witnesses and detection counts."""
    path = _export_facenet(tmp_path / "facenet.onnx", 17)
    torch_run, onnx_run = _run_both(
        ["model=torch", "model.net._target_=tests.test_own_model.FaceNetLike", "model.input_size=160"],
        ["model=onnx", f"model.path={path}"], tmp_path)
    names = dict(zip(onnx_run[0], torch_run[0], strict=True))
    assert all(onnx_name.split("/")[-2] == torch_name.split(".")[-1] for onnx_name, torch_name in names.items())
    _assert_same_run(torch_run, onnx_run, names)
    assert any(channels for per_layer in torch_run[1].values() for channels in per_layer.values())
    assert all(row[3] > 0 for row in torch_run[2] if row[1] == "benign")  # the random embeddings still match faces


# ---- what model=onnx cannot take, and says so ---------------------------------------------------------------------
def _graph(path: Path, nodes: list, shape: list, output_shape: list, opset: int = 17, domains: tuple = ()) -> Path:
    """A one-input ONNX model of ``nodes`` from ``image`` (float, ``shape``) to ``out`` (``output_shape``)."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, output_shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    *(helper.make_opsetid(d, 1) for d in domains)])
    onnx.save(model, str(path))
    return path


def test_unconvertible_nodes_are_named_with_what_to_do(tmp_path: Path) -> None:
    custom = _graph(tmp_path / "custom.onnx", [helper.make_node("Relu", ["image"], ["r"], name="relu"),
                                               helper.make_node("FaceAlign", ["r"], ["out"], name="align",
                                                                domain="com.example")],
                    [1, 3, 8, 8], [1, 3, 8, 8], domains=("com.example",))
    with pytest.raises(ValueError, match=r"custom.onnx: onnx2torch 1.5.15 has no converter for node 'align' "
                                         r"\(FaceAlign, opset 1 of com.example\); replace the operation in the network "
                                         r"by operations of ONNX opset 17 or older"):
        load_onnx(custom)
    dynamic = _graph(tmp_path / "dynamic.onnx", [
        helper.make_node("ReduceMin", ["image"], ["low"], name="low", keepdims=0),
        helper.make_node("Clip", ["image", "low"], ["out"], name="clip")], [1, 3, 8, 8], [1, 3, 8, 8])
    with pytest.raises(ValueError, match=r"dynamic.onnx: onnx2torch 1.5.15 cannot convert node 'clip' \(Clip, "
                                         r"opset 17\): NotImplementedError: Dynamic value of min/max is not "
                                         r"implemented; .* give them as numbers or replace the operation"):
        load_onnx(dynamic)


def test_a_fixed_batch_other_than_one_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = _graph(tmp_path / "batch2.onnx", [helper.make_node("Relu", ["image"], ["out"])], [2, 3, 8, 8],
                  [2, 3, 8, 8])
    with pytest.raises(ValueError, match=r"batch2.onnx: the input 'image' has a fixed batch size of 2; .* Export it "
                                         r"again with a dynamic batch axis \(torch.onnx.export\(..., "
                                         r"dynamic_axes=\{'image': \{0: 'batch'\}\}\)\) or with a batch of 1"):
        load_onnx(path)


def test_a_graph_of_any_size_without_input_size_warns(tmp_path: Path) -> None:
    """A graph without fixed height and width takes the images at their own size: said, naming model.input_size."""
    path = _graph(tmp_path / "any_size.onnx", [helper.make_node("Relu", ["image"], ["r"], name="relu"),
                                               helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
                                               helper.make_node("Flatten", ["p"], ["out"], name="flat")],
                  ["N", 3, "H", "W"], ["N", 3])
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    with pytest.warns(UserWarning, match=r"any_size.onnx has no fixed input height and width and model.input_size "
                                         r"is not set: .* set model.input_size to the size it was trained at"):
        classifier = onnx_classifier(str(path), output="logits", names=str(names))
    assert classifier.model.hook_layers == ("relu", "pool")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        onnx_classifier(str(path), output="logits", names=str(names), input_size=112)


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
        cfg.data.fit.limit = 12  # the fitted detectors on the fit variants of 12 faces
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
