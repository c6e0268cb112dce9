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
from collections.abc import Callable, Mapping, Sequence
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


def layer_features(
    model: nn.Module, x: torch.Tensor, layers: Sequence[str], reduce: Reduce = "mean"
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({layer: features (B, D_layer)}, logits (B, K)) of pixels x (B, 3, H, W) in [0, 255]: the outputs of the
    hooked ``layers`` of ``model`` reduced by :func:`_reduce`, in x's graph (gradients reach the pixels). KeyError
    for a layer the model does not have; ValueError for an unknown ``reduce``."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce={reduce!r}: expected one of {', '.join(REDUCTIONS)}")
    found: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            found[name] = _reduce(output, reduce)

        return hook

    with forward_hooks(model, {name: keep(name) for name in layers}):
        logits = model(x)
    return {name: found[name] for name in layers}, logits


@torch.no_grad()
def fit_features(
    model: nn.Module, fit: FitSet, layers: Sequence[str], reduce: Reduce = "mean"
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """({layer: features (N, D_layer) float32 on the CPU}, labels (N,) long, logits (N, K)) of the fit set's
    readable items (a label below 0 marks an unreadable file, left out), in order."""
    features: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    labels, logits = [], []
    for batch in DataLoader(fit.dataset, batch_size=fit.batch_size):
        keep = batch[1] >= 0
        if not keep.any():
            continue
        found, out = layer_features(model, batch[0][keep].to(fit.device).float(), layers, reduce)
        for name in layers:
            features[name].append(found[name].float().cpu())
        labels.append(batch[1][keep].long())
        logits.append(out.float().cpu())
    if not labels:
        raise ValueError(f"the fit set ({fit.record.get('rule', 'benign fit set')}) has no readable image")
    return {n: torch.cat(v) for n, v in features.items()}, torch.cat(labels), torch.cat(logits)


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
