"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) read into PyTorch.

The ``.dat`` file is parsed in pure Python/numpy (dlib is not needed at run time). :func:`load_dlib_resnet` returns
the network as a :class:`~ami_lightning.models.base.PixelModel`: input (B, 3, H, W) RGB pixels in [0, 255]
(resized to 150x150, bilinear with antialiasing, unless already that size), output (B, 128) face descriptors whose
Euclidean distances dlib compares with 0.6 (same person below).

The network is the ``anet_type`` of dlib's ``dnn_face_recognition_ex.cpp``: a 7x7/2 stem convolution and a 3x3/2
max pool, 14 residual units (3 of 32 channels, 4 of 64, 3 of 128, 4 of 256; the first unit of each width after
32 downsamples with a stride-2 convolution and a 2x2/2 average pool on the skip path), a global average pool and a
256 -> 128 fully connected layer without bias. Every convolution is followed by a per-channel affine layer (batch
norm folded by dlib). Strided convolutions and pools have no padding (dlib's default), and a residual sum takes
the larger size of its two inputs in each of C, H and W, zero-padding the smaller one at the end.

File layout (dlib's ``serialize``): integers are a control byte (low nibble: byte count, bit 0x80: negative)
followed by that many little-endian bytes; a float is an integer mantissa and an integer exponent,
``ldexp(m, e)``; a string is its length and its bytes; a bool is the character ``'0'`` or ``'1'``; a tensor is
version 2, (n, k, nr, nc) and n*k*nr*nc little-endian float32. The loss layer comes first, then the version of
every layer from the outermost (the fc layer) down to the input layer (2: a layer; 1: a tag or skip, which store
nothing else; 3: the layer on the input), then the input layer and the details of each layer from the innermost
(the stem convolution) out, each followed by three bools and three (empty) tensors of training state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ami_lightning.models.base import PixelModel, Preprocess
from ami_lightning.models.dlib_files import FACE_RECOGNITION_RESNET, dlib_model_path

INPUT_SIZE = 150
DESCRIPTOR_SIZE = 128
SAME_PERSON_DISTANCE = 0.6  # dlib's threshold on the Euclidean distance between two descriptors
INPUT_SCALE = 256.0  # dlib's input layer: (pixel - mean) / 256
# (channels, downsampling) of the 14 residual units in forward order
UNITS: tuple[tuple[int, bool], ...] = (
    *[(32, False)] * 3,
    (64, True), *[(64, False)] * 3,
    (128, True), *[(128, False)] * 2,
    (256, True), *[(256, False)] * 2,
    (256, True),
)
_STEM_CHANNELS = 32
_CONV_MODE = 0  # dlib's layer_mode of a per-channel affine layer
_FC_NO_BIAS = 1  # dlib's fc_bias_mode of fc_no_bias


# ---------------------------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True)
class DlibLayer:
    """One layer of the file. ``kind``: ``con``, ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``add_prev``,
    ``fc`` or ``tag/skip``. ``config``: con (filters, nr, nc, stride_y, stride_x, pad_y, pad_x); pools
    (nr, nc, stride_y, stride_x, pad_y, pad_x), nr = nc = 0 meaning the whole input; affine (mode,).
    ``arrays``: con (weight (O, I, kh, kw), bias (O,)); affine (gamma (C,), beta (C,)); fc (weight (out, in),)."""

    kind: str
    config: tuple[int, ...] = ()
    arrays: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class DlibNet:
    """A parsed file: the input layer's per-channel RGB mean (pixel units) and size, and the layers in forward
    order (input layer excluded)."""

    mean: tuple[float, float, float]
    size: tuple[int, int]
    layers: tuple[DlibLayer, ...]


class _Reader:
    """Sequential reader of dlib's serialization format over the bytes of ``path``."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.path = path
        self.pos = 0

    def error(self, what: str) -> ValueError:
        return ValueError(
            f"{self.path}: {what} at byte {self.pos} of {len(self.data)} "
            f"(not an intact {FACE_RECOGNITION_RESNET}: truncated or wrong format)"
        )

    def take(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise self.error(f"unexpected end of file reading {count} bytes")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def integer(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            raise self.error(f"invalid integer control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def integers(self, count: int) -> tuple[int, ...]:
        return tuple(self.integer() for _ in range(count))

    def real(self) -> float:
        mantissa, exponent = self.integer(), self.integer()
        try:
            return math.ldexp(mantissa, exponent)
        except OverflowError as err:
            raise self.error(f"float out of range (mantissa {mantissa}, exponent {exponent})") from err

    def text(self) -> str:
        raw = self.take(self.integer())
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError as err:
            raise self.error(f"non-ASCII string {raw[:20]!r}") from err

    def flag(self) -> bool:
        raw = self.take(1)
        if raw not in (b"0", b"1"):
            raise self.error(f"invalid bool {raw!r}")
        return raw == b"1"

    def version(self, *expected: int) -> int:
        version = self.integer()
        if version not in expected:
            raise self.error(f"unexpected version {version} (expected {' or '.join(map(str, expected))})")
        return version

    def expect(self, text: str) -> None:
        found = self.text()
        if found != text:
            raise self.error(f"found {found!r} where {text!r} was expected")

    def tensor(self) -> np.ndarray:
        """A tensor, as a float32 array of shape (n, k, nr, nc)."""
        self.version(2)
        shape = self.integers(4)
        if min(shape) < 0:
            raise self.error(f"negative tensor shape {shape}")
        count = math.prod(shape)
        return np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32).reshape(shape)

    def alias_shape(self) -> tuple[int, ...]:
        """The shape (n, k, nr, nc) of an alias_tensor (a view into a layer's parameter tensor)."""
        self.version(1)
        return self.integers(4)


def _split(reader: _Reader, params: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> tuple[np.ndarray, ...]:
    """Cut the flat ``params`` into consecutive arrays of ``shapes``; they must use it up exactly."""
    sizes = [math.prod(s) for s in shapes]
    if sum(sizes) != params.size:
        raise reader.error(f"parameter tensor of {params.size} values does not hold views {list(shapes)}")
    flat = params.reshape(-1)
    offsets = np.cumsum([0, *sizes])
    return tuple(flat[a:b].reshape(s) for a, b, s in zip(offsets[:-1], offsets[1:], shapes, strict=True))


def _read_details(reader: _Reader) -> DlibLayer:
    """The details of one layer (its type string and parameters) and the layer's training state (ignored)."""
    name = reader.text()
    if name == "con_4":
        params = reader.tensor()
        config = reader.integers(7)
        weight, bias = _split(reader, params, [reader.alias_shape(), reader.alias_shape()])
        _multipliers = [reader.real() for _ in range(4)]  # learning-rate and weight-decay multipliers
        layer = DlibLayer("con", config, (weight, bias.reshape(-1)))
    elif name == "affine_":
        params = reader.tensor()
        gamma, beta = _split(reader, params, [reader.alias_shape(), reader.alias_shape()])
        layer = DlibLayer("affine", (reader.integer(),), (gamma.reshape(-1), beta.reshape(-1)))
    elif name in ("max_pool_2", "avg_pool_2"):
        layer = DlibLayer(name.removesuffix("_2"), reader.integers(6))
    elif name in ("relu_", "add_prev_"):
        layer = DlibLayer(name.removesuffix("_"))
    elif name == "fc_2":
        outputs, inputs = reader.integers(2)
        params = reader.tensor()
        weight, _bias = _split(reader, params, [reader.alias_shape(), reader.alias_shape()])
        bias_mode = reader.integer()
        _multipliers = [reader.real() for _ in range(4)]
        if weight.size != inputs * outputs:
            raise reader.error(f"fc weights of {weight.size} values for {inputs} inputs and {outputs} outputs")
        layer = DlibLayer("fc", (outputs, inputs, bias_mode), (weight.reshape(inputs, outputs).T.copy(),))
    else:
        raise reader.error(f"unknown layer type {name!r}")
    _training_state = (reader.flag(), reader.flag(), reader.flag(), reader.tensor(), reader.tensor(), reader.tensor())
    return layer


def parse_dlib_resnet(path: str | Path) -> DlibNet:
    """Parse a dlib network file of the layer types of ``dlib_face_recognition_resnet_model_v1.dat``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (naming the file and the byte where parsing
    stopped) for a truncated file or one of another format. The architecture is checked by :func:`dlib_resnet_from`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dlib face-recognition model not found: {path} (expected {FACE_RECOGNITION_RESNET})")
    reader = _Reader(path.read_bytes(), path)
    reader.version(1)
    reader.expect("loss_metric_2")
    _margin, _threshold = reader.real(), reader.real()
    versions: list[int] = []
    while not versions or versions[-1] != 3:
        versions.append(reader.version(1, 2, 3))
    reader.expect("input_rgb_image_sized")
    mean = (reader.real(), reader.real(), reader.real())
    size = (reader.integer(), reader.integer())
    layers = [_read_details(reader)]  # the layer on the input (version 3) also stores its sample expansion factor
    if (expansion := reader.integer()) != 1:
        raise reader.error(f"sample expansion factor {expansion} (expected 1)")
    layers += [DlibLayer("tag/skip") if v == 1 else _read_details(reader) for v in reversed(versions[:-1])]
    if reader.pos != len(reader.data):
        raise reader.error(f"{len(reader.data) - reader.pos} bytes left after the last layer")
    return DlibNet(mean, size, tuple(layers))


# ---------------------------------------------------------------------------------------------------------------
# The network


def _padding(kernel: int, stride: int) -> int:
    """dlib's default padding of convolutions and pools: none when strided, else half the kernel."""
    return 0 if stride != 1 else kernel // 2


def _con(channels: int, kernel: int, stride: int) -> tuple[str, tuple[int, ...]]:
    pad = _padding(kernel, stride)
    return "con", (channels, kernel, kernel, stride, stride, pad, pad)


def expected_layers() -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(kind, config) of each layer of the file in forward order, as :class:`DlibLayer` lists them."""
    affine, relu = ("affine", (_CONV_MODE,)), ("relu", ())
    layers = [_con(_STEM_CHANNELS, 7, 2), affine, relu, ("max_pool", (3, 3, 2, 2, 0, 0))]
    for channels, down in UNITS:
        layers += [("tag/skip", ()), _con(channels, 3, 2 if down else 1), affine, relu, _con(channels, 3, 1), affine]
        if down:
            layers += [("tag/skip", ()), ("tag/skip", ()), ("avg_pool", (2, 2, 2, 2, 0, 0))]
        layers += [("add_prev", ()), relu]
    return (*layers, ("avg_pool", (0, 0, 1, 1, 0, 0)), ("fc", (DESCRIPTOR_SIZE, UNITS[-1][0], _FC_NO_BIAS)))


class Affine(nn.Module):
    """dlib's affine layer: ``x * weight[c] + bias[c]`` per channel c of x (B, C, H, W) (a folded batch norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: a + b for (B, C, H, W) tensors of possibly different C, H, W; the result takes the
    larger size in each and the smaller operand is zero-padded at the end (bottom, right, last channels)."""
    size = [max(p, q) for p, q in zip(a.shape[1:], b.shape[1:], strict=True)]

    def pad(t: torch.Tensor) -> torch.Tensor:
        c, h, w = t.shape[1:]
        return F.pad(t, (0, size[2] - w, 0, size[1] - h, 0, size[0] - c)) if [c, h, w] != size else t

    return pad(a) + pad(b)


@dataclass(frozen=True)
class _Unit:
    """Module names of one residual unit: conv_a, affine_a, relu_a, conv_b, affine_b, the skip path's average
    pool (downsampling units only) and the ReLU after the sum."""

    conv_a: str
    affine_a: str
    relu_a: str
    conv_b: str
    affine_b: str
    skip_pool: str | None
    relu_out: str


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet. Input (B, 3, 150, 150) RGB, ``(pixel - mean) / 256``; output (B, 128).

    Modules have flat names in forward order: ``conv1``/``affine1``/``relu1`` (stem), ``maxpool``; residual unit
    u = 1..14 has ``conv{2u}``, ``affine{2u}``, ``relu{2u}``, ``conv{2u+1}``, ``affine{2u+1}``, on the skip path of
    the four downsampling units ``skippool1``..``skippool4``, and ``relu{2u+1}`` after the sum; then ``avgpool``
    (global) and ``fc``. ``hook_layers``: ``relu1``, ``maxpool``, ``relu2``..``relu29``, ``avgpool``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, _STEM_CHANNELS, 7, stride=2, padding=_padding(7, 2))
        self.affine1 = Affine(_STEM_CHANNELS)
        self.relu1 = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=_padding(3, 2))
        units: list[_Unit] = []
        in_channels, pools = _STEM_CHANNELS, 0
        for u, (channels, down) in enumerate(UNITS, start=1):
            a, b = 2 * u, 2 * u + 1
            stride = 2 if down else 1
            self.add_module(f"conv{a}", nn.Conv2d(in_channels, channels, 3, stride, padding=_padding(3, stride)))
            self.add_module(f"affine{a}", Affine(channels))
            self.add_module(f"relu{a}", nn.ReLU())
            self.add_module(f"conv{b}", nn.Conv2d(channels, channels, 3, padding=_padding(3, 1)))
            self.add_module(f"affine{b}", Affine(channels))
            skip_pool = None
            if down:
                pools += 1
                skip_pool = f"skippool{pools}"
                self.add_module(skip_pool, nn.AvgPool2d(2, stride=2, padding=_padding(2, 2)))
            self.add_module(f"relu{b}", nn.ReLU())
            units.append(_Unit(f"conv{a}", f"affine{a}", f"relu{a}", f"conv{b}", f"affine{b}", skip_pool, f"relu{b}"))
            in_channels = channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, DESCRIPTOR_SIZE, bias=False)
        self._units: tuple[_Unit, ...] = tuple(units)
        relus = [name for unit in units for name in (unit.relu_a, unit.relu_out)]
        self.hook_layers: tuple[str, ...] = ("relu1", "maxpool", *relus, "avgpool")

    def _residual(self, unit: _Unit, x: torch.Tensor) -> torch.Tensor:
        """One residual unit on x (B, C, H, W): relu(add_prev(affine(conv(relu(affine(conv(x))))), skip(x)))."""

        def apply(name: str, t: torch.Tensor) -> torch.Tensor:
            return getattr(self, name)(t)

        y = apply(unit.relu_a, apply(unit.affine_a, apply(unit.conv_a, x)))
        y = apply(unit.affine_b, apply(unit.conv_b, y))
        skip = x if unit.skip_pool is None else apply(unit.skip_pool, x)
        return apply(unit.relu_out, add_prev(y, skip))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu1(self.affine1(self.conv1(x))))
        for unit in self._units:
            x = self._residual(unit, x)
        return self.fc(self.avgpool(x).flatten(1))


def _state_dict(net: DlibNet) -> dict[str, torch.Tensor]:
    """The parsed parameters under :class:`DlibResNet`'s names (convolutions and affine layers numbered in order)."""
    state: dict[str, torch.Tensor] = {}
    convs = [layer for layer in net.layers if layer.kind == "con"]
    affines = [layer for layer in net.layers if layer.kind == "affine"]
    for i, (con, affine) in enumerate(zip(convs, affines, strict=True), start=1):
        state[f"conv{i}.weight"], state[f"conv{i}.bias"] = map(torch.from_numpy, con.arrays)
        state[f"affine{i}.weight"], state[f"affine{i}.bias"] = map(torch.from_numpy, affine.arrays)
    (fc,) = [layer for layer in net.layers if layer.kind == "fc"]
    state["fc.weight"] = torch.from_numpy(fc.arrays[0])
    return state


def dlib_resnet_from(net: DlibNet, path: Path) -> DlibResNet:
    """A :class:`DlibResNet` with the parameters of ``net`` (parsed from ``path``), after checking that its layers
    are those of :func:`expected_layers`; ``ValueError`` naming ``path`` otherwise."""
    found = [(layer.kind, layer.config) for layer in net.layers]
    expected = list(expected_layers())
    if found != expected:
        i = next((i for i, (f, e) in enumerate(zip(found, expected, strict=False)) if f != e),
                 min(len(found), len(expected)))
        got = found[i] if i < len(found) else "end of network"
        want = expected[i] if i < len(expected) else "end of network"
        raise ValueError(f"{path}: not dlib's face-recognition ResNet: layer {i} is {got}, expected {want}")
    if net.size != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"{path}: input size {net.size}, expected {(INPUT_SIZE, INPUT_SIZE)}")
    model = DlibResNet()
    state = _state_dict(net)
    wrong = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in model.state_dict().items()
             if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{path}: wrong parameter shapes for dlib's face-recognition ResNet: {'; '.join(wrong)}")
    model.load_state_dict(state)
    return model.eval()


def load_dlib_resnet(path: str | Path | None = None) -> PixelModel:
    """dlib's face-recognition ResNet from ``path`` (default: the file in ``face_recognition_models``), in eval mode,
    as a :class:`PixelModel`: (B, 3, H, W) RGB pixels in [0, 255] -> (B, 128) descriptors.

    Its input layer (:class:`~ami_lightning.models.base.Preprocess`): ``(x - mean) / 256``, inputs of another size
    than 150x150 resized first (bilinear, antialiased): the shipped 224x224 VGG-Face crops resized to 150x150 give
    usable descriptors (different people at distance 0.65 on average); fed at 224x224 the descriptors collapse (0.37
    on average, below dlib's same-person threshold of 0.6).

    Raises ``FileNotFoundError`` for a missing file, ``ValueError`` naming the file for a truncated or malformed one.
    """
    path = dlib_model_path(FACE_RECOGNITION_RESNET) if path is None else Path(path)
    parsed = parse_dlib_resnet(path)
    net = dlib_resnet_from(parsed, path)
    return PixelModel(net, Preprocess(INPUT_SIZE, mean=parsed.mean, std=(INPUT_SCALE,) * 3), net.hook_layers).eval()
