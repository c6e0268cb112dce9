"""Detectors fitted on benign data only: the fit set their setup gets, the hooked-layer features they read, and the
cache of what they fitted.

A detector that needs fitting (:attr:`~ami_lightning.detectors.base.Detector.needs_fit`) is handed a
:class:`FitSet` in its :class:`~ami_lightning.detectors.base.SetupContext`: benign images that are never evaluated
(the embedded default: :func:`~ami_lightning.data.benign.shipped_fit_set`; the published protocol: a seeded split of
the benign folder, :func:`~ami_lightning.data.benign.benign_folder_fit`). It reads the model's activations at hooked
layers (:func:`layer_features`, with gradients, for scoring; :func:`fit_features`, without, over the fit set) and
caches its fitted tensors with :func:`fitted_state`, keyed by the model, the fit set, its parameters and its code.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ami_lightning.models.layers import forward_hooks

Reduce = Literal["mean", "flatten"]
REDUCTIONS: tuple[str, ...] = ("mean", "flatten")


@dataclass(frozen=True)
class FitSet:
    """Benign images a detector is fitted on, never evaluated: ``dataset`` items (pixels float (3, H, W) in
    [0, 255], label long, index); ``record`` what ``results.json`` says of it (JSON-able: its rule, seed, files);
    ``batch_size`` and ``device`` of the forward passes over it."""

    dataset: Dataset
    record: dict[str, Any]
    batch_size: int = 32
    device: torch.device | str = "cpu"


def _reduce(activation: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    """(B, D) features of an activation (B, C, H, W) or (B, D): channel means over H, W (``"mean"``; a 2-D one as
    it is) or every value (``"flatten"``)."""
    if activation.dim() == 4 and reduce == "mean":
        return activation.mean(dim=(2, 3))
    return activation.flatten(1)


@dataclass
class _Forward:
    """One no-grad forward's hooked outputs: of ``model`` on the very tensor ``x`` (held, so that its memory cannot
    be reused by another tensor while this is kept) at ``version``; raw layer outputs and logits."""

    model: nn.Module
    x: torch.Tensor
    version: int
    outputs: dict[str, torch.Tensor]
    logits: torch.Tensor


_LAST: list[_Forward] = []  # at most one entry: the last no-grad forward of hooked_forward


def _version(x: torch.Tensor) -> int:
    """x's version counter (bumped by every in-place change); -1 for an inference tensor, which has none (such a
    tensor is changed in place only inside inference mode, and the evaluation never does)."""
    return -1 if x.is_inference() else x._version


def hooked_forward(model: nn.Module, x: torch.Tensor, layers: Sequence[str]) -> tuple[dict[str, torch.Tensor],
                                                                                       torch.Tensor]:
    """({layer: raw output}, logits (B, K)) of ``model`` on pixels x (B, 3, H, W) in [0, 255], one forward with
    hooks at ``layers``. Without autograd (``torch.no_grad`` or inference mode) the last call is kept and a call on
    the same tensor (unchanged since) and model for layers it holds reuses it: the evaluation's plain forward
    (:func:`prime`) then serves every detector reading hooked layers of that batch, and each detector's own forward
    is skipped. With autograd (attacks) nothing is kept. KeyError for a layer the model does not have."""
    if not torch.is_grad_enabled() and _LAST:
        last = _LAST[0]
        if last.model is model and last.x is x and last.version == _version(x) and set(layers) <= set(last.outputs):
            return {name: last.outputs[name] for name in layers}, last.logits
    calls: dict[str, list[torch.Tensor]] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            calls.setdefault(name, []).append(output)

        return hook

    with forward_hooks(model, {name: keep(name) for name in dict.fromkeys(layers)}):
        logits = model(x)
    # a network run one image at a time (an ONNX graph of fixed batch 1) calls each layer once per image
    found = {name: parts[0] if len(parts) == 1 else torch.cat(parts) for name, parts in calls.items()}
    _LAST.clear()
    if not torch.is_grad_enabled():
        _LAST.append(_Forward(model, x, _version(x), dict(found), logits))
    return {name: found[name] for name in layers}, logits


def prime(model: nn.Module, x: torch.Tensor, detectors: Iterable[Any]) -> torch.Tensor:
    """The logits (B, K) of ``model`` on x, computed with the outputs of every layer the ``detectors`` read
    (:meth:`~ami_lightning.detectors.base.Detector.feature_layers`) kept for them (:func:`hooked_forward`, no
    autograd); a plain forward when none reads a layer."""
    layers = list(dict.fromkeys(name for detector in detectors for name in detector.feature_layers()))
    if not layers:
        return model(x)
    return hooked_forward(model, x, layers)[1]


def layer_features(
    model: nn.Module, x: torch.Tensor, layers: Sequence[str], reduce: Reduce = "mean"
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({layer: features (B, D_layer)}, logits (B, K)) of pixels x (B, 3, H, W) in [0, 255]: the outputs of the
    hooked ``layers`` of ``model`` (:func:`hooked_forward`) reduced by :func:`_reduce`, in x's graph (gradients reach
    the pixels). KeyError for a layer the model does not have; ValueError for an unknown ``reduce``."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce={reduce!r}: expected one of {', '.join(REDUCTIONS)}")
    outputs, logits = hooked_forward(model, x, layers)
    return {name: _reduce(outputs[name], reduce) for name in layers}, logits


_FIT_OUTPUTS: list[tuple[nn.Module, Dataset, tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]]] = []
"""At most one entry: (model, the fit set's dataset, its outputs), for :func:`fit_features`."""


@torch.no_grad()
def fit_features(
    model: nn.Module, fit: FitSet, layers: Sequence[str], reduce: Reduce = "mean"
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """({layer: features (N, D_layer) float32 on the CPU}, labels (N,) long, logits (N, K)) of the fit set's
    readable items (a label below 0 marks an unreadable file, left out), in order. The raw layer outputs of one fit
    set and model are kept for the process, so that the detectors fitted on it after the first one (reading the same
    layers) do not run the model over it again."""
    held = _FIT_OUTPUTS[0][2] if _FIT_OUTPUTS and _FIT_OUTPUTS[0][0] is model and _FIT_OUTPUTS[0][1] is fit.dataset \
        else None
    if held is None or not set(layers) <= set(held[0]):
        wanted = list(dict.fromkeys([*(held[0] if held else ()), *layers]))
        held = _fit_outputs(model, fit, wanted)
        _FIT_OUTPUTS[:] = [(model, fit.dataset, held)]
    outputs, labels, logits = held
    return {name: _reduce(outputs[name], reduce) for name in layers}, labels, logits


def _fit_outputs(model: nn.Module, fit: FitSet, layers: Sequence[str]
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The raw outputs of ``layers`` (float32, CPU), labels and logits of the fit set's readable items."""
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    labels, logits = [], []
    for batch in DataLoader(fit.dataset, batch_size=fit.batch_size):
        keep = batch[1] >= 0
        if not keep.any():
            continue
        found, out = hooked_forward(model, batch[0][keep].to(fit.device).float(), layers)
        for name in layers:
            outputs[name].append(found[name].float().cpu())
        labels.append(batch[1][keep].long())
        logits.append(out.float().cpu())
    if not labels:
        raise ValueError(f"the fit set ({fit.record.get('rule', 'benign fit set')}) has no readable image")
    return {n: torch.cat(v) for n, v in outputs.items()}, torch.cat(labels), torch.cat(logits)


def fitted_state(
    context: Any, kind: str, identity: Any, code: Any, compute: Callable[[], Mapping[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """The tensors a detector fitted, from ``context.cache_dir/fitted/<kind>-<key>.pt`` or ``compute()`` (then
    cached; written atomically under a lock, so concurrent runs fit once). Key: the model (``context.model_key``),
    the fit set (``context.fit.record``), ``identity`` (the detector's parameters that fitting reads) and the
    source digest of ``code`` (the detector's class: :func:`~ami_lightning.pipeline.cache.code_digest`)."""
    from ami_lightning.pipeline.cache import cache_key, code_digest
    from ami_lightning.pipeline.files import exclusive, write_bytes

    if context.fit is None:
        raise RuntimeError(f"{kind} needs a benign fit set (data.fit) and the setup context has none")
    key = cache_key("fitted", kind, context.model_key, context.fit.record, identity, code_digest(code))
    path = context.cache_dir / "fitted" / f"{kind.replace(':', '_').replace('.', '_')}-{key}.pt"
    with exclusive(path):
        if path.is_file():
            return dict(torch.load(path, map_location="cpu", weights_only=True))
        state = {name: tensor.detach().cpu() for name, tensor in compute().items()}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_bytes(path, buffer.getvalue())
        return state
