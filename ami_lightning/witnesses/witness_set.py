"""``WitnessSet``: attribute -> layer -> sorted channel indices, in the two published file formats.

* ``vgg_face_dag`` (``<attr>_neurons.txt``): one line per hooked layer, ``layer->i,j,k``; an empty list is allowed.
* ``caffe`` (``<attr>_witness.txt``): one line per non-empty layer, ``layer,i,j,k``, with Caffe blob names
  (``conv4_3`` is the in-place ReLU output, i.e. ``relu4_3``; ``fc6``/``fc7`` are ``relu6``/``relu7``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ami_lightning.pipeline.files import write_text

ATTRIBUTES: tuple[str, ...] = ("leye", "reye", "nose", "mouth")
Format = Literal["vgg_face_dag", "caffe"]
Source = tuple[Path, int]  # (file, line number from 1) where an (attribute, layer) entry was read
_FILE_SUFFIX: dict[str, str] = {"vgg_face_dag": "_neurons.txt", "caffe": "_witness.txt"}
_CAFFE_CONV = re.compile(r"^conv(\d+_\d+)$")
_CAFFE_FC = re.compile(r"^fc(\d+)$")
_OURS_RELU_CONV = re.compile(r"^relu(\d+_\d+)$")
_OURS_RELU_FC = re.compile(r"^relu(\d+)$")
_LAYER_NAME = re.compile(r"[^\s,]+")  # a module's qualified name: relu4_3, layer1.0.relu, 1/relu1/Relu (onnx2torch)


class WitnessFormatError(ValueError):
    """A malformed or inconsistent witness file; the message names the file and line."""


def no_witness_error(where: str, empty: Sequence[str], selected: Sequence[str], remedy: str) -> WitnessFormatError:
    """The error for attributes ``empty`` of those ``selected`` that have no witness at any layer (``where``: whose
    witnesses, e.g. a file): which they are, that the model may not suit AmI, the ``ami.attributes`` value that
    leaves them out, and ``remedy``, the other way out."""
    rest = [attribute for attribute in selected if attribute not in empty]
    them = "it" if len(empty) == 1 else "them"
    way_out = f"leave {them} out with ami.attributes=[{','.join(rest)}]" if rest else "no attribute is left to select"
    return WitnessFormatError(
        f"{where}: no witness of {', '.join(empty)} at any layer: AmI would strengthen nothing for {them}, so this "
        f"model may not suit AmI (no channel of its layers singles out that face part); {way_out}, or {remedy}"
    )


def caffe_to_layer(name: str) -> str:
    """Caffe blob name -> hooked layer name (``conv4_3`` -> ``relu4_3``, ``fc7`` -> ``relu7``, pools unchanged)."""
    if m := _CAFFE_CONV.match(name):
        return f"relu{m.group(1)}"
    if m := _CAFFE_FC.match(name):
        return f"relu{m.group(1)}"
    return name


def layer_to_caffe(name: str) -> str:
    """Inverse of :func:`caffe_to_layer`."""
    if m := _OURS_RELU_CONV.match(name):
        return f"conv{m.group(1)}"
    if m := _OURS_RELU_FC.match(name):
        return f"fc{m.group(1)}"
    return name


@dataclass
class WitnessSet:
    """Witness channels of each attribute: ``witnesses[attribute][layer]`` is a sorted tuple of channel indices.

    ``layers`` is the ordered tuple of layers the set covers (forward order); a layer with no witnesses for an
    attribute maps to ``()``. Build one with :meth:`from_mapping`, :meth:`read` or the extraction functions.
    ``sources[(attribute, layer)]`` is the (file, line) an entry was read from (:meth:`read`); entries built in memory
    have none. Sources do not take part in equality.
    """

    layers: tuple[str, ...]
    witnesses: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    sources: dict[tuple[str, str], Source] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_mapping(
        cls, mapping: Mapping[str, Mapping[str, Iterable[int]]], layers: Iterable[str] | None = None
    ) -> WitnessSet:
        """From ``{attribute: {layer: channels}}``; ``layers`` fixes the order (default: first-seen order)."""
        seen = [layer for per_layer in mapping.values() for layer in per_layer]
        order = list(layers) if layers is not None else list(dict.fromkeys(seen))
        unknown = set(seen) - set(order)
        if unknown:
            raise ValueError(f"witness layers {sorted(unknown)} are not in the layer list {order}")
        return cls(
            tuple(order),
            {a: {layer: tuple(sorted(set(map(int, m.get(layer, ()))))) for layer in order} for a, m in mapping.items()},
        )

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(self.witnesses)

    def at(self, layer: str) -> dict[str, tuple[int, ...]]:
        """``{attribute: channels}`` at one layer."""
        return {a: per_layer.get(layer, ()) for a, per_layer in self.witnesses.items()}

    def steered_layers(self) -> tuple[str, ...]:
        """Layers where at least one attribute has a witness (the only layers AmI touches), in order."""
        return tuple(layer for layer in self.layers if any(self.at(layer).values()))

    def count(self) -> dict[str, int]:
        """Number of witnesses per attribute (summed over layers)."""
        return {a: sum(map(len, per_layer.values())) for a, per_layer in self.witnesses.items()}

    def empty(self) -> tuple[str, ...]:
        """The attributes without any witness at any layer, in order."""
        return tuple(attribute for attribute, count in self.count().items() if count == 0)

    def select(self, attributes: Iterable[str]) -> WitnessSet:
        """The set of ``attributes`` only (same layers, in the order given); ``KeyError`` naming one it lacks."""
        attributes = list(attributes)
        missing = [a for a in attributes if a not in self.witnesses]
        if missing:
            raise KeyError(f"no witnesses of {', '.join(missing)} in this set; it has {', '.join(self.witnesses)}")
        return WitnessSet(self.layers, {a: dict(self.witnesses[a]) for a in attributes},
                          {key: source for key, source in self.sources.items() if key[0] in attributes})

    def where(self, attribute: str, layer: str) -> str:
        """Where entry (``attribute``, ``layer``) was read: ``<file>:<line>``, or ``"(built in memory)"``."""
        source = self.sources.get((attribute, layer))
        return "(built in memory)" if source is None else f"{source[0]}:{source[1]}"

    def validate(self, channels: Mapping[str, int]) -> None:
        """Check the set against a model: ``channels`` maps each of the model's layers to its channel count (e.g.
        ``layer_channels(model, hook_layer_names(model))`` of :mod:`ami_lightning.models.layers`).

        ``WitnessFormatError`` (a ``ValueError``) for the first bad entry (attribute by attribute, layers in order):
        on a layer the model does not have (naming the file, line, layer and the model's layers) or with a channel
        outside ``0 .. channels - 1`` (naming the file, line, layer, the channel and the allowed range); entries
        built in memory are named by attribute and layer alone. Empty entries that no file listed are not checked.
        """
        for attribute, per_layer in self.witnesses.items():
            for layer in self.layers:
                idx = per_layer.get(layer, ())
                if (attribute, layer) not in self.sources and not idx:
                    continue  # a layer this attribute's file did not list, or an empty in-memory entry
                what = f"{self.where(attribute, layer)}: attribute {attribute!r}"
                if layer not in channels:
                    raise WitnessFormatError(
                        f"{what}: unknown layer {layer!r}; the model's layers are {list(channels)}"
                    )
                bad = [i for i in idx if not 0 <= i < channels[layer]]
                if bad:
                    raise WitnessFormatError(
                        f"{what}: channel {bad[0]} out of range at layer {layer!r}: allowed 0..{channels[layer] - 1} "
                        f"({channels[layer]} channels)"
                    )

    # ---- files ---------------------------------------------------------------------------------------------------
    @classmethod
    def read(
        cls,
        directory: str | Path,
        fmt: Format = "vgg_face_dag",
        attributes: Iterable[str] = ATTRIBUTES,
        channels: Mapping[str, int] | None = None,
        allow_empty: bool = False,
    ) -> WitnessSet:
        """Read ``<attr>_neurons.txt`` (``vgg_face_dag``) or ``<attr>_witness.txt`` (``caffe``) files, remembering
        the file and line of each entry (:attr:`sources`).

        Each error names the file and line (``WitnessFormatError``): a malformed line, a negative channel index, a
        layer listed twice; with ``channels`` (layer -> channel count, e.g. from
        :func:`ami_lightning.models.layers.layer_channels`) also unknown layers and out-of-range indices (the same
        checks as :meth:`validate` afterwards). Attributes with no witness at any layer (e.g. an empty file) are an
        error naming their files and what to do (:func:`no_witness_error`) unless ``allow_empty``.
        """
        directory = Path(directory)
        if fmt not in _FILE_SUFFIX:
            raise ValueError(f"unknown witness format {fmt!r}; expected one of {sorted(_FILE_SUFFIX)}")
        attributes = list(attributes)
        mapping: dict[str, dict[str, list[int]]] = {}
        sources: dict[tuple[str, str], Source] = {}
        empty: dict[str, str] = {}  # attribute -> its file, and whether it is empty
        for attribute in attributes:
            path = directory / f"{attribute}{_FILE_SUFFIX[fmt]}"
            if not path.is_file():
                raise FileNotFoundError(f"witness file not found: {path}")
            per_layer, lines = _parse_file(path, fmt, channels)
            if not any(per_layer.values()):
                empty[attribute] = f"{path}{' (the file is empty)' if not per_layer else ''}"
            mapping[attribute] = per_layer
            sources.update({(attribute, layer): (path, line) for layer, line in lines.items()})
        if empty and not allow_empty:
            raise no_witness_error("; ".join(empty.values()), list(empty), attributes,
                                   f"list witnesses in {'that file' if len(empty) == 1 else 'those files'}")
        witnesses = cls.from_mapping(mapping, channels)
        witnesses.sources = sources
        return witnesses

    def write(self, directory: str | Path, fmt: Format = "vgg_face_dag") -> list[Path]:
        """Write one file per attribute in format ``fmt``; returns the paths written."""
        if fmt not in _FILE_SUFFIX:
            raise ValueError(f"unknown witness format {fmt!r}; expected one of {sorted(_FILE_SUFFIX)}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for attribute, per_layer in self.witnesses.items():
            lists = {layer: ",".join(map(str, per_layer[layer])) for layer in self.layers}
            if fmt == "vgg_face_dag":
                text = "\n".join(f"{layer}->{idx}" for layer, idx in lists.items())
            else:
                text = "".join(f"{layer_to_caffe(layer)},{idx}\n" for layer, idx in lists.items() if idx)
            path = directory / f"{attribute}{_FILE_SUFFIX[fmt]}"
            write_text(path, text)
            paths.append(path)
        return paths


def _parse_file(
    path: Path, fmt: Format, channels: Mapping[str, int] | None
) -> tuple[dict[str, list[int]], dict[str, int]]:
    """(layer -> channel indices, layer -> line number) of one witness file."""
    per_layer: dict[str, list[int]] = {}
    lines: dict[str, int] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        where = f"{path}:{lineno}"
        if fmt == "vgg_face_dag":
            if "->" not in line:
                raise WitnessFormatError(f"{where}: expected 'layer->i,j,k', got {raw!r}")
            layer, _, rest = line.partition("->")
        else:
            layer, _, rest = line.partition(",")
            layer = caffe_to_layer(layer)
        layer = layer.strip()
        if not _LAYER_NAME.fullmatch(layer):
            raise WitnessFormatError(f"{where}: bad layer name in {raw!r}")
        try:
            idx = [int(tok) for tok in rest.split(",") if tok.strip()] if rest.strip() else []
        except ValueError:
            raise WitnessFormatError(f"{where}: channel indices must be integers, got {rest!r}") from None
        if layer in per_layer:
            raise WitnessFormatError(f"{where}: layer {layer!r} listed twice")
        negative = [i for i in idx if i < 0]
        if negative:
            raise WitnessFormatError(f"{where}: negative channel index {negative[0]} at layer {layer!r}")
        if channels is not None:
            if layer not in channels:
                raise WitnessFormatError(f"{where}: unknown layer {layer!r}; the model's layers are {list(channels)}")
            bad = [i for i in idx if not 0 <= i < channels[layer]]
            if bad:
                raise WitnessFormatError(
                    f"{where}: channel index {bad[0]} out of range for {layer} ({channels[layer]} channels)"
                )
        per_layer[layer] = idx
        lines[layer] = lineno
    return per_layer, lines
