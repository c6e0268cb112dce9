"""A user's face network as a pixel-space model: its preprocessing inside, the layers AmI hooks found by running it.

:func:`wrap_network` puts a :class:`~ami_lightning.models.base.Preprocess` in front of any ``nn.Module`` (a PyTorch
network, or an ONNX graph converted by ``onnx2torch``, which makes a module of every node) and gives the
:class:`~ami_lightning.models.base.PixelModel` its ``hook_layers``: those the user names, or those that
:func:`hookable_layers` finds in one forward pass of a grey image, namely every activation and pooling module
(:data:`ACTIVATIONS`, :data:`POOLS`) in the order the network calls them, but

* a pooling module that reads the same tensor as another module (a pool on one branch of a fork, such as the
  shortcut pools of dlib's ResNet): it only subsamples an activation that the other branch reads as it is;
* anything outside the network (the preprocessing).

A module called more than once in a forward pass (torchvision's ResNet blocks apply one ``relu`` twice) would be
hooked at every call at once, so the network is first traced with ``torch.fx`` and each later call given its own
copy of the module, named ``<name>_1``, ``<name>_2``... (:func:`split_calls`).

An ONNX file becomes such a network in :func:`load_onnx`: :func:`prepare_onnx` simplifies the graph (``onnxslim``),
brings a newer opset down to the one ``onnx2torch`` converts and drops empty optional inputs, then ``onnx2torch``
converts it; a node it cannot convert is named in the error (:func:`conversion_error`). A graph with a fixed batch
size of 1 runs one image at a time (:class:`OneImageAtATime`).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import sys
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import fx, nn

from ami_lightning.models.base import PixelModel, Preprocess
from ami_lightning.models.layers import probe

if TYPE_CHECKING:
    import onnx

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.PReLU, nn.RReLU, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus,
)
"""Activation modules AmI may hook (``onnx2torch``'s ``OnnxPReLU`` and ``OnnxHardSigmoid`` too)."""
POOLS: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.LPPool2d,
)
"""Pooling modules AmI may hook (``onnx2torch``'s global average pools too)."""
_ONNX2TORCH_ACTIVATIONS = ("OnnxPReLU", "OnnxHardSigmoid")
_ONNX2TORCH_POOLS = ("OnnxGlobalAveragePool", "OnnxGlobalAveragePoolWithKnownInputShape")


def hookable_types() -> tuple[tuple[type[nn.Module], ...], tuple[type[nn.Module], ...]]:
    """(activation types, pooling types): :data:`ACTIVATIONS` and :data:`POOLS`, with ``onnx2torch``'s own once it
    is imported (a converted graph can only hold them then)."""
    converters = sys.modules.get("onnx2torch.node_converters")

    def own(names: tuple[str, ...]) -> tuple[type[nn.Module], ...]:
        return tuple(t for t in (getattr(converters, n, None) for n in names) if t is not None) if converters else ()

    return (*ACTIVATIONS, *own(_ONNX2TORCH_ACTIVATIONS)), (*POOLS, *own(_ONNX2TORCH_POOLS))


@dataclass(frozen=True)
class Call:
    """One call of a submodule during a forward pass: its qualified ``name``, the ``module``, its first input
    (None when not a tensor) and that input's version counter when the call began (in-place operations bump it:
    an in-place ReLU returns its input, changed), and whether it is a ``leaf`` (a module without children)."""

    name: str
    module: nn.Module
    input: torch.Tensor | None
    version: int
    leaf: bool

    def reads(self) -> tuple[int, int] | None:
        """What the call read: (tensor identity, version), None when its input is not a tensor."""
        return None if self.input is None else (id(self.input), self.version)


@torch.no_grad()
def module_calls(net: nn.Module, x: torch.Tensor) -> list[Call]:
    """Every call of a submodule of ``net`` during ``net(x)``, in the order the calls begin. The inputs are kept, so
    that two calls read the same tensor exactly when their inputs are the same object at the same version."""
    calls: list[Call] = []

    def record(name: str, leaf: bool):  # noqa: ANN202 - a forward pre-hook
        def hook(module: nn.Module, inputs: tuple) -> None:
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            calls.append(Call(name, module, first, 0 if first is None else first._version, leaf))

        return hook

    handles = [module.register_forward_pre_hook(record(name, next(module.children(), None) is None))
               for name, module in net.named_modules() if name]
    try:
        net(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls


@dataclass(frozen=True)
class Survey:
    """What one forward pass shows of a network: the ``hookable`` modules (:func:`hookable_layers`), those of them
    ``repeated`` (called more than once) and every submodule ``called``."""

    hookable: tuple[str, ...]
    repeated: tuple[str, ...]
    called: frozenset[str]


def survey(net: nn.Module, x: torch.Tensor) -> Survey:
    """The :class:`Survey` of ``net(x)``."""
    calls = module_calls(net, x)
    counts = Counter(call.name for call in calls)
    readers: dict[tuple[int, int] | None, set[str]] = defaultdict(set)
    for call in calls:
        if call.leaf and call.reads() is not None:
            readers[call.reads()].add(call.name)
    activations, pools = hookable_types()
    found: dict[str, None] = {}
    for call in calls:
        on_fork = call.reads() is not None and len(readers[call.reads()]) > 1
        if isinstance(call.module, activations) or (isinstance(call.module, pools) and not on_fork):
            found[call.name] = None
    return Survey(tuple(found), tuple(name for name in found if counts[name] > 1), frozenset(counts))


def hookable_layers(net: nn.Module, x: torch.Tensor) -> tuple[str, ...]:
    """The activation and pooling modules of ``net`` in the order ``net(x)`` first calls them, pools on one branch
    of a fork left out (module docstring)."""
    return survey(net, x).hookable


def split_calls(net: nn.Module, names: Sequence[str]) -> fx.GraphModule:
    """``net`` traced by ``torch.fx``, with each call of the modules ``names`` after the first made to a copy of
    its own (``<name>_1``, ``<name>_2``...), so that each call can be hooked alone. Same outputs; parameters of a
    copied module are copied, so this is for inference. ``ValueError`` when ``net`` cannot be traced."""
    try:
        traced = fx.symbolic_trace(net)
    except Exception as err:  # fx raises TraceError, TypeError... on data-dependent control flow
        raise ValueError(
            f"modules called more than once per forward pass: {', '.join(names)}: AmI hooks each call apart, and "
            f"torch.fx cannot trace {type(net).__name__} to give each call its own module ({type(err).__name__}: "
            f"{err}); give each call its own module, name hook_layers without them, or export the network to ONNX "
            "(model=onnx)") from err
    seen: Counter[str] = Counter()
    taken = {name for name, _ in traced.named_modules()}
    for node in traced.graph.nodes:
        if node.op != "call_module" or node.target not in names:
            continue
        seen[node.target] += 1
        if seen[node.target] == 1:
            continue
        k = seen[node.target] - 1
        while (copy_name := f"{node.target}_{k}") in taken:
            k += 1
        traced.add_submodule(copy_name, copy.deepcopy(traced.get_submodule(node.target)))
        taken.add(copy_name)
        node.target = copy_name
    traced.recompile()
    return traced


def wrap_network(
    net: nn.Module, preprocess: Preprocess, hook_layers: Sequence[str] | None = None, one_at_a_time: bool = False
) -> PixelModel:
    """``net`` (put in eval mode) behind ``preprocess`` as a :class:`PixelModel` (:class:`OneImageAtATime` when
    ``one_at_a_time``: a network that takes one image per call) whose ``hook_layers`` are the named submodules, or
    when None the :func:`hookable_layers` of one forward pass of a grey image
    (:func:`~ami_lightning.models.layers.probe`, 224x224 before preprocessing). Modules called more than once that
    would be hooked are split first (:func:`split_calls`).

    ValueError listing the hookable modules when a name is not a submodule the network calls, or when nothing can
    be hooked (a network with functional activations only).
    """
    net.eval()
    x = preprocess(probe(net))
    found = survey(net, x)
    if to_split := [name for name in found.repeated if hook_layers is None or name in hook_layers]:
        net = split_calls(net, to_split)
        found = survey(net, x)
    if hook_layers is None and not found.hookable:
        raise ValueError(
            f"{type(net).__name__} has no activation or pooling module in its forward pass (it applies functional "
            "activations such as F.relu or torch.relu only): nothing for AmI to hook; give it activation modules "
            "(nn.ReLU...), name the modules to hook with hook_layers, or export it to ONNX (model=onnx: onnx2torch "
            "makes a module of every activation)")
    wanted = found.hookable if hook_layers is None else tuple(hook_layers)
    listing = f"hookable modules (activation and pooling, in forward order): {', '.join(found.hookable) or 'none'}"
    if unknown := [name for name in wanted if name not in found.called]:
        raise ValueError(f"hook_layers: {', '.join(map(repr, unknown))} "
                         f"{'is not a submodule' if len(unknown) == 1 else 'are not submodules'} that "
                         f"{type(net).__name__} calls in its forward pass; {listing}")
    if not wanted or len(set(wanted)) != len(wanted):
        raise ValueError(f"hook_layers={list(wanted)}: expected distinct module names, at least one; {listing}")
    return (OneImageAtATime if one_at_a_time else PixelModel)(net, preprocess, wanted).eval()


class OneImageAtATime(PixelModel):
    """A :class:`PixelModel` whose network takes one image per call, such as an ONNX graph exported with a fixed
    batch size of 1 (the exporter may bake that batch into a ``Reshape``): pixels (B, 3, H, W) go through it one
    image at a time and the B outputs are concatenated, so the hooks of its layers fire once per image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one = super().forward
        return one(x) if x.shape[0] <= 1 else torch.cat([one(image) for image in x.split(1)])


# ---- ONNX files ------------------------------------------------------------------------------------------------------
ONNX2TORCH_OPSET = 17
"""The opset a newer graph is converted down to before ``onnx2torch`` reads it: the highest whose operators
onnx2torch 1.5.15 converts (not the since-versions 18 to 21 of Reshape, Identity, Shape, Cast, Pad, Resize, the
Reduce* family... that ``torch.onnx.export``'s default opset brings)."""


ONNXSLIM_PASSES: tuple[str, ...] = ("constant_folding", "dead_node_elimination")
"""The passes of onnxslim that :func:`prepare_onnx` runs (its others fuse or merge nodes: names would change)."""


@dataclass(frozen=True)
class OnnxNetwork:
    """An ONNX graph as a PyTorch module: ``net`` (eval mode), the fixed (H, W) ``size`` of its image input (None
    when H or W is dynamic) and its fixed ``batch`` size (1, or None when dynamic)."""

    net: nn.Module
    size: tuple[int, int] | None
    batch: int | None

    def wrap(self, preprocess: Preprocess, hook_layers: Sequence[str] | None = None) -> PixelModel:
        """:func:`wrap_network` of ``net``: one image at a time when ``batch`` is 1."""
        return wrap_network(self.net, preprocess, hook_layers, one_at_a_time=self.batch == 1)


def load_onnx(path: str | Path) -> OnnxNetwork:
    """The ONNX graph at ``path`` as a PyTorch module (``onnx2torch``: one submodule per node, named after it) once
    :func:`prepare_onnx` has simplified it, with the fixed (H, W) and batch size of its image input.

    Raises ``FileNotFoundError`` for a missing file, ``ImportError`` naming the packages when onnx, onnxslim or
    onnx2torch is not installed, and ``ValueError`` naming the file for one that is not a readable ONNX model, has
    not exactly one (N, 3, H, W) input, has a fixed batch size other than 1, or holds a node onnx2torch cannot convert
    (the message names the node and what to do).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        import onnx
        import onnxslim  # noqa: F401 - prepare_onnx's
        from onnx2torch import convert
    except ImportError as err:
        raise ImportError("model=onnx needs the packages onnx, onnxslim and onnx2torch (pip install "
                          f"'ami-lightning[framework]'): {err}") from err
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf's DecodeError, OSError...
        raise ValueError(f"{path} is not a readable ONNX model: {err}") from err
    constants = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in constants]
    dims = [[d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
            for value in inputs]
    if len(inputs) != 1 or len(dims[0]) != 4 or dims[0][1] not in (3, None):
        shapes = ", ".join(f"{value.name} {shape}" for value, shape in zip(inputs, dims, strict=True))
        raise ValueError(f"{path}: expected one image input (N, 3, H, W), found {shapes or 'none'}")
    batch, _, height, width = dims[0]
    if batch not in (None, 1):
        raise ValueError(
            f"{path}: the input {inputs[0].name!r} has a fixed batch size of {batch}; model=onnx runs a graph with a "
            "fixed batch size only when it is 1 (one image at a time). Export it again with a dynamic batch axis "
            f"(torch.onnx.export(..., dynamic_axes={{{inputs[0].name!r}: {{0: 'batch'}}}})) or with a batch of 1")
    model = prepare_onnx(model, str(path))
    try:
        net = convert(model)
    except Exception as err:  # NotImplementedError for an operator without converter, KeyError, ValueError...
        raise ValueError(conversion_error(model, str(path), err)) from err
    return OnnxNetwork(net.eval(), (height, width) if height and width else None, batch)


def prepare_onnx(model: onnx.ModelProto, name: str = "the ONNX model") -> onnx.ModelProto:
    """``model`` (changed in place) made ready for ``onnx2torch``, each step leaving the graph's function unchanged:

    1. simplified by ``onnxslim`` (:func:`onnxslim.slim`), its passes :data:`ONNXSLIM_PASSES` only: constants
       folded (``Constant`` nodes become initializers) and dead nodes removed (the ``Identity`` nodes the exporter
       writes for shared initializers, such as the zero biases of convolutions whose batch norm it folded); no
       operator fusion, so every node that stays keeps its name and operation (the hook layers their names), and no
       shape inference (onnxslim 0.1.98's symbolic shape inference replaces the values it computes with constants,
       and computes a reversing ``Slice`` wrongly: dlib's network exported to ONNX then pads its shortcuts'
       channels on the wrong side);
    2. converted down to :data:`ONNX2TORCH_OPSET` by ``onnx.version_converter`` when its opset is newer;
    3. empty optional inputs at the end of a node's inputs dropped (``Clip(x, min, "")`` -> ``Clip(x, min)``,
       the same node by the ONNX rules; onnx2torch reads an empty name as a tensor it cannot find).

    A step that fails leaves the graph as it was, with a warning naming ``name`` and the error (conversion then
    names the node it cannot convert).
    """
    import onnxslim
    from onnx import version_converter
    from onnxslim.core.optimization import OptimizationSettings

    skipped = [step for step in OptimizationSettings.keys() if step not in ONNXSLIM_PASSES]
    try:
        model = onnxslim.slim(model, skip_optimizations=skipped, no_shape_infer=True)
    except Exception as err:  # onnxslim raises whatever its passes meet
        warnings.warn(f"{name}: onnxslim could not simplify the graph ({type(err).__name__}: {err}); converting it "
                      "as it is", stacklevel=2)
    opset = _default_opset(model)
    if opset > ONNX2TORCH_OPSET:
        try:
            model = version_converter.convert_version(model, ONNX2TORCH_OPSET)
        except Exception as err:  # the converter's RuntimeError / ConvertError for an operator without adapter
            warnings.warn(f"{name}: onnx cannot convert the graph from opset {opset} to {ONNX2TORCH_OPSET} "
                          f"({type(err).__name__}: {err}); converting it at opset {opset}", stacklevel=2)
    for node in model.graph.node:
        while node.input and not node.input[-1]:
            node.input.pop()
    return model


def _default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ONNX operator set that ``model`` imports (0 when none)."""
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)


def conversion_error(model: onnx.ModelProto, name: str, err: Exception) -> str:
    """The message for ``onnx2torch.convert(model)`` failing with ``err``: the first node of ``model`` (in graph
    order, as onnx2torch converts them) that onnx2torch has no converter for or whose converter fails, and what to
    do about it; ``name`` names the file."""
    from onnx.shape_inference import infer_shapes
    from onnx2torch.node_converters import get_converter
    from onnx2torch.onnx_graph import OnnxGraph

    release = f"onnx2torch {importlib.metadata.version('onnx2torch')}"
    versions = {entry.domain: entry.version for entry in model.opset_import}
    with contextlib.suppress(Exception):  # onnx2torch infers shapes first: some converters read them
        model = infer_shapes(model)
    graph = OnnxGraph(model.graph)
    for node in graph.nodes.values():
        opset = versions.get(node.domain, 0)
        domain = f" of {node.domain}" if node.domain else ""
        where = f"node {node.name!r} ({node.operation_type}, opset {opset}{domain})"
        try:
            converter = get_converter(domain=node.domain, operation_type=node.operation_type, version=opset)
        except NotImplementedError:
            return (f"{name}: {release} has no converter for {where}; replace the operation in the network by "
                    f"operations of ONNX opset {ONNX2TORCH_OPSET} or older that onnx2torch converts, and export it "
                    "again")
        try:
            converter(node, graph)
        except Exception as failure:  # the converter's NotImplementedError, KeyError, ValueError...
            return (f"{name}: {release} cannot convert {where}: {type(failure).__name__}: {failure}; onnx2torch "
                    "converts this operation only in the forms it implements, with its parameters as constants: "
                    "give them as numbers or replace the operation in the network, and export it again")
    return f"{name}: {release} cannot convert the graph: {type(err).__name__}: {err}"
