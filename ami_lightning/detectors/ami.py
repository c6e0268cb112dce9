"""``AmIDetector``: the original model and its attribute-steered twin, batched, on any device."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ami_lightning.detectors.steering import SteeringParams, detection_score, steer
from ami_lightning.models.layers import find_layer, forward_hooks
from ami_lightning.witnesses import WitnessSet


class AmIDetector(nn.Module):
    """AmI on top of a pixel-space classifier ``model`` (input (B, 3, H, W) in [0, 255], output (B, K) logits).

    The steered model is ``model`` with every layer that has at least one witness replaced, per sample, by its
    steered output (:func:`ami_lightning.detectors.steering.steer`); layers named in ``crop_layers`` are first
    cropped by
    ``crop`` pixels per side and resized back. Hooks live only during :meth:`steered_logits`, so the plain model is
    unchanged after use and several detectors can share one model.
    """

    def __init__(
        self,
        model: nn.Module,
        witnesses: WitnessSet,
        weaken: float = 60.0,
        strengthen: Sequence[float] = (2.15, 50.0),
        crop_layers: Sequence[str] = ("pool3",),
        crop: int = 2,
    ) -> None:
        super().__init__()
        self.model = model
        self.witnesses = witnesses
        self.params = SteeringParams(float(weaken), (float(strengthen[0]), float(strengthen[1])))
        self.crop_layers = tuple(crop_layers)
        self.crop = crop
        self.layers = witnesses.steered_layers()
        for name in self.layers:
            find_layer(model, name)  # fail now, not mid-forward
        for i, name in enumerate(self.layers):
            concat = [c for channels in witnesses.at(name).values() for c in channels]
            self.register_buffer(f"_witnesses_{i}", torch.tensor(concat, dtype=torch.long), persistent=False)

    def _hook(self, i: int, name: str, straight_through: bool) -> Callable[..., torch.Tensor]:
        crop = self.crop if name in self.crop_layers else 0
        indices: torch.Tensor = getattr(self, f"_witnesses_{i}")
        return lambda _module, _inputs, output: steer(output, indices, self.params, crop, straight_through)

    def steered_logits(self, x: torch.Tensor, straight_through: bool = False) -> torch.Tensor:
        """Logits (B, K) of the attribute-steered model for pixels x (B, 3, H, W); ``straight_through``: gradients
        treat the steering factors as constants (:func:`ami_lightning.detectors.steering.steer`), the values are the
        same."""
        hooks = {name: self._hook(i, name, straight_through) for i, name in enumerate(self.layers)}
        with forward_hooks(self.model, hooks):
            return self.model(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(original_logits, steered_logits), each (B, K)."""
        return self.model(x), self.steered_logits(x)

    @torch.no_grad()
    def is_adversarial(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the original and the steered model disagree on the top-1 identity."""
        original, steered = self(x)
        return original.argmax(1) != steered.argmax(1)

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) continuous score (:func:`ami_lightning.detectors.steering.detection_score`), for ROC curves."""
        return detection_score(*self(x))
