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
"""

from __future__ import annotations

import copy
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx, nn

from ami_lightning.models.base import PixelModel, Preprocess
from ami_lightning.models.layers import probe

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


def wrap_network(net: nn.Module, preprocess: Preprocess, hook_layers: Sequence[str] | None = None) -> PixelModel:
    """``net`` (put in eval mode) behind ``preprocess`` as a :class:`PixelModel` whose ``hook_layers`` are the
    named submodules, or when None the :func:`hookable_layers` of one forward pass of a grey image
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
    return PixelModel(net, preprocess, wanted).eval()


def load_onnx(path: str | Path) -> tuple[nn.Module, tuple[int, int] | None]:
    """The ONNX graph at ``path`` as a PyTorch module (``onnx2torch``: one submodule per node, named after it) and
    the fixed (H, W) of its image input, None when H or W is dynamic.

    Raises ``FileNotFoundError`` for a missing file, ``ImportError`` naming the packages when onnx or onnx2torch is
    not installed, and ``ValueError`` naming the file for one that is not a readable ONNX model, has not exactly
    one (N, 3, H, W) input, or holds an operator onnx2torch cannot convert.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        import onnx
        from onnx2torch import convert
    except ImportError as err:
        raise ImportError("model=onnx needs the packages onnx and onnx2torch (pip install "
                          f"'ami-lightning[framework]'): {err}") from err
    try:
        graph = onnx.load(str(path))
    except Exception as err:  # protobuf's DecodeError, OSError...
        raise ValueError(f"{path} is not a readable ONNX model: {err}") from err
    constants = {init.name for init in graph.graph.initializer}
    inputs = [value for value in graph.graph.input if value.name not in constants]
    dims = [[d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
            for value in inputs]
    if len(inputs) != 1 or len(dims[0]) != 4 or dims[0][1] not in (3, None):
        shapes = ", ".join(f"{value.name} {shape}" for value, shape in zip(inputs, dims, strict=True))
        raise ValueError(f"{path}: expected one image input (N, 3, H, W), found {shapes or 'none'}")
    try:
        net = convert(graph)
    except Exception as err:  # NotImplementedError for an operator without converter, among others
        raise ValueError(f"{path}: onnx2torch cannot convert the graph: {err}") from err
    height, width = dims[0][2:]
    return net, (height, width) if height and width else None
