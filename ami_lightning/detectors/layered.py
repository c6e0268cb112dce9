"""What the detectors fitted on hooked layers share (Mahalanobis, LID, NIC): the choice of layers, the base class
that reads them and is calibrated at a benign FPR, and the summary of the fit set their results carry."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ami_lightning.checks import show
from ami_lightning.detectors.thresholded import ThresholdDetector
from ami_lightning.models.layers import hook_layer_names

DEFAULT_LAYER_COUNT = 4
"""``layers: null`` reads the last this many hook layers of the model (all of them when it has fewer)."""


def default_layers(model: nn.Module, count: int = DEFAULT_LAYER_COUNT) -> tuple[str, ...]:
    """The last ``count`` of ``model``'s hook layers (:func:`~ami_lightning.models.layers.hook_layer_names`; all of
    them when it has fewer): the deepest ones, whose features separate classes best."""
    return tuple(hook_layer_names(model)[-count:])


def layers_problems(params: Mapping[str, Any], minimum: int = 1, why: str = "") -> list[str]:
    """``["layers=<value>: expected ..."]`` unless ``params["layers"]`` is absent, null or a list of at least
    ``minimum`` distinct layer names (``why``: the reason for the minimum, said in the message)."""
    if params.get("layers") is None:
        return []
    layers = params["layers"]
    ok = (isinstance(layers, Sequence) and not isinstance(layers, str | bytes) and len(layers) >= max(1, minimum)
          and all(isinstance(n, str) and n for n in layers) and len(set(layers)) == len(layers))
    if ok:
        return []
    amount = "a non-empty list" if minimum <= 1 else f"a list of at least {minimum}"
    return [f"layers={show(layers)}: expected null (the last {DEFAULT_LAYER_COUNT} hook layers of the model) or "
            f"{amount} distinct hook layer names{why}"]


def resolve_layers(model: nn.Module, layers: Sequence[str] | None, kind: str, minimum: int = 1
                   ) -> tuple[str, ...]:
    """``layers`` as a tuple, or :func:`default_layers` when None; ValueError (``"<kind>: bad parameters:
    layers=..."``) for a name that is not one of the model's hook layers, or fewer than ``minimum`` layers."""
    try:
        names = hook_layer_names(model)
    except ValueError as err:
        raise ValueError(f"{kind}: bad parameters: layers={show(layers)}: {err}") from None
    chosen = default_layers(model) if layers is None else tuple(layers)
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise ValueError(f"{kind}: bad parameters: layers={show(list(chosen))}: {unknown} are not hook layers of "
                         f"{type(model).__name__}; expected names among {', '.join(names)}")
    if len(chosen) < minimum:
        raise ValueError(f"{kind}: bad parameters: layers={show(layers)}: {type(model).__name__} gives "
                         f"{len(chosen)} layer(s); {kind} needs at least {minimum}")
    return chosen


def fit_summary(record: Mapping[str, Any] | None, items: int | None) -> dict[str, Any] | None:
    """What a detector's parameters say of its fit set (None before setup): the fit record without its file list
    (``rule`` and the like), ``items`` (the readable images fitted on) and ``digest`` (16 hex of SHA-256 over the whole
    record, files included, so that identities of detectors fitted on different files differ)."""
    if record is None:
        return None
    text = json.dumps(record, sort_keys=True, default=str)
    summary = {k: v for k, v in record.items() if k != "files"}
    summary.update(items=items, digest=hashlib.sha256(text.encode()).hexdigest()[:16])
    return summary


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU when it has none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


class LayerDetector(ThresholdDetector):
    """A detector fitted on the benign fit set (:attr:`needs_fit`) that reads the outputs of hooked ``layers``
    (:meth:`feature_layers`: the evaluation computes them once for every such detector), scored with exact gradients
    and flagged above the threshold calibrated at benign FPR ``fpr``. ``layers`` (None: :func:`default_layers`) are
    resolved against the model's hook layers, at least :attr:`min_layers` of them. ``fit_items``: the readable
    images fitted on (None before setup)."""

    needs_fit: ClassVar[bool] = True
    gradient: ClassVar[str] = "exact"
    min_layers: ClassVar[int] = 1

    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None, fpr: float = 0.05) -> None:
        super().__init__(model, fpr)
        self.layers: tuple[str, ...] = resolve_layers(model, layers, self.kind, self.min_layers)
        self.fit_items: int | None = None

    def feature_layers(self) -> tuple[str, ...]:
        """The chosen layers (their outputs are what the score reads)."""
        return self.layers

    def fit_summary(self) -> dict[str, Any] | None:
        """:func:`fit_summary` of this detector's fit set (None before setup)."""
        return fit_summary(self.fit_record, self.fit_items)
