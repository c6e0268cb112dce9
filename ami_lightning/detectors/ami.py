"""AmI (Tao et al., NeurIPS 2018) behind the detector interface: the original model and its attribute-steered twin.

Score: ``-log p`` (nats, >= 0) of the original model's top-1 identity under the steered model
(:func:`ami_lightning.detectors.steering.detection_score`). Rule (:func:`top1_disagreement`): flagged when the
original and the steered model disagree on the top-1 identity. Preparation (:meth:`AmIDetector.setup`): the
witnesses, read from files or extracted from the shipped faces and cached
(:func:`ami_lightning.witnesses.stage.prepare_witnesses`). Gradients: the steering factors depend on the sample's own
activation statistics through clamps and exponentials whose gradients vanish or explode, so by default they are
treated as constants in the backward pass (straight-through, BPDA); ``exact`` differentiates through them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

import torch
import torch.nn.functional as F
from torch import nn

from ami_lightning.checks import existing, expect, is_positive, show
from ami_lightning.detectors.base import Detector, SetupContext, register_detector
from ami_lightning.detectors.steering import SteeringParams, detection_score, steer
from ami_lightning.models.layers import find_layer, forward_hooks
from ami_lightning.witnesses import ATTRIBUTES, WitnessSet
from ami_lightning.witnesses.witness_set import Format


def top1_disagreement(original_logits: torch.Tensor, steered_logits: torch.Tensor) -> torch.Tensor:
    """AmI's rule: (B,) bool, the original and the steered model's top-1 identities differ (logits (B, K))."""
    return original_logits.argmax(1) != steered_logits.argmax(1)


class AmIDetector(Detector):
    """AmI on top of a pixel-space classifier ``model`` (input (B, 3, H, W) in [0, 255], output (B, K) logits).

    The steered model is ``model`` with every layer that has at least one witness replaced, per sample, by its
    steered output (:func:`ami_lightning.detectors.steering.steer`); layers named in ``crop_layers`` are first
    cropped by ``crop`` pixels per side and resized back. Hooks live only during :meth:`steered_logits`, so the
    plain model is unchanged after use and several detectors can share one model.

    ``witnesses``: given now, or prepared by :meth:`setup` from ``witness_source`` (a folder of witness files in
    ``witness_format``; None: extracted with the release's rule, or the Caffe one with ``caffe_median``), for the
    face attributes ``attributes`` (default all four).
    """

    kind = "ami"
    score_unit = "-log p of the original top-1 identity under the attribute-steered model (nats, >= 0)"
    rule = "the original and the attribute-steered model disagree on the top-1 identity"
    gradient = "straight-through"

    def __init__(
        self,
        model: nn.Module,
        witnesses: WitnessSet | None = None,
        weaken: float = 60.0,
        strengthen: Sequence[float] = (2.15, 50.0),
        crop_layers: Sequence[str] = ("pool3",),
        crop: int = 2,
        caffe_median: bool = False,
        witness_source: str | Path | None = None,
        witness_format: Format = "vgg_face_dag",
        attributes: Sequence[str] = ATTRIBUTES,
    ) -> None:
        super().__init__(model)
        self.params = SteeringParams(float(weaken), (float(strengthen[0]), float(strengthen[1])))
        self.crop_layers = tuple(crop_layers)
        self.crop = crop
        self.caffe_median = bool(caffe_median)
        self.witness_source = witness_source
        self.witness_format = witness_format
        self.attributes = tuple(attributes)
        self.witnesses: WitnessSet | None = None
        self.layers: tuple[str, ...] = ()
        if witnesses is not None:
            self.use_witnesses(witnesses)

    def use_witnesses(self, witnesses: WitnessSet) -> None:
        """Steer with ``witnesses``; KeyError naming a layer the model does not have."""
        layers = witnesses.steered_layers()
        for name in layers:
            find_layer(self.model, name)  # fail now, not mid-forward
        device = next(self.model.parameters(), torch.zeros(0)).device
        for i, name in enumerate(layers):
            concat = [c for channels in witnesses.at(name).values() for c in channels]
            self.register_buffer(f"_witnesses_{i}", torch.tensor(concat, dtype=torch.long, device=device),
                                 persistent=False)
        self.witnesses, self.layers = witnesses, layers

    def setup(self, context: SetupContext) -> None:
        """Prepare the witnesses (unless given): :func:`~ami_lightning.witnesses.stage.prepare_witnesses`, cached
        under ``context.cache_dir``, a copy in ``context.out_dir/witnesses``."""
        from ami_lightning.witnesses.stage import prepare_witnesses

        if self.witnesses is None:
            self.use_witnesses(prepare_witnesses(self.model, context.cache_dir, context.model_key, self.caffe_median,
                                                 self.witness_source, self.witness_format, context.out_dir,
                                                 self.attributes))

    def _hook(self, i: int, name: str, straight_through: bool) -> Callable[..., torch.Tensor]:
        crop = self.crop if name in self.crop_layers else 0
        indices: torch.Tensor = getattr(self, f"_witnesses_{i}")
        return lambda _module, _inputs, output: steer(output, indices, self.params, crop, straight_through)

    def steered_logits(self, x: torch.Tensor, straight_through: bool = False) -> torch.Tensor:
        """Logits (B, K) of the attribute-steered model for pixels x (B, 3, H, W); ``straight_through``: gradients
        treat the steering factors as constants (:func:`ami_lightning.detectors.steering.steer`), the values are
        the same. RuntimeError before the witnesses are known (:meth:`setup`)."""
        if self.witnesses is None:
            raise RuntimeError("AmI has no witnesses yet: call setup(context) or use_witnesses(witnesses) first")
        hooks = {name: self._hook(i, name, straight_through) for i, name in enumerate(self.layers)}
        with forward_hooks(self.model, hooks):
            return self.model(x)

    def score(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) :func:`~ami_lightning.detectors.steering.detection_score` (nats), straight-through gradients."""
        return self.evaluate(x, self.model(x) if logits is None else logits)[0]

    def evaluate(self, x: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        steered = self.steered_logits(x, straight_through=True)
        return detection_score(logits, steered), top1_disagreement(logits, steered)

    def evasion_loss(self, x: torch.Tensor, targets: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """The steered model's cross-entropy (B,) towards ``targets``: low when it agrees with the target, so that
        the rule does not fire on an image the plain model also gives the target."""
        return F.cross_entropy(self.steered_logits(x, straight_through=not exact), targets, reduction="none")

    def parameters_dict(self) -> dict[str, Any]:
        """weaken, strengthen, crop layers, the witness rule and source, and the witness count per attribute once
        known."""
        return {"weaken": self.params.weaken, "strengthen": list(self.params.strengthen),
                "crop_layers": list(self.crop_layers), "caffe_median": self.caffe_median,
                "witness_source": None if self.witness_source is None else str(self.witness_source),
                "witnesses": None if self.witnesses is None else self.witnesses.count()}

    def identity(self) -> Any:
        """The steering parameters and the witness lists themselves (None before :meth:`setup`)."""
        witnesses = None if self.witnesses is None else {
            attribute: {layer: list(channels) for layer, channels in per_layer.items()}
            for attribute, per_layer in self.witnesses.witnesses.items()}
        return {"weaken": self.params.weaken, "strengthen": list(self.params.strengthen),
                "crop_layers": list(self.crop_layers), "witnesses": witnesses}


def check_ami_params(params: Mapping[str, Any]) -> list[str]:
    """Problems with the values of AmI's parameters (the keys of the ``ami`` group, resolved), one line each: the
    steering strengths finite and > 0, ``crop_layers`` a list of names (checked against the model's layers once it is
    built: :func:`check_ami_layers`), ``caffe_median`` a boolean,
    ``witness_format`` a known format, ``attributes`` distinct known attributes, ``witnesses`` an existing folder."""
    formats = get_args(Format)
    return [
        *(line for key in ("weaken", "strengthen0", "strengthen1")
          for line in expect(params, key, is_positive, "a finite number > 0")),
        *expect(params, "crop_layers", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                "a list of layer names, like [pool3] or []"),
        *expect(params, "caffe_median", lambda v: isinstance(v, bool), "true or false"),
        *expect(params, "witness_format", lambda v: v in formats, f"one of {', '.join(formats)}"),
        *expect(params, "attributes", lambda v: isinstance(v, list) and 0 < len(v) == len(set(v))
                and all(a in ATTRIBUTES for a in v),
                f"a non-empty list of distinct attributes among {', '.join(ATTRIBUTES)}, like [leye,reye,mouth]"),
        *existing(params, "witnesses", "folder", "the witness files to use (null: extract them)"),
    ]


@register_detector("ami")
def ami(
    model: nn.Module,
    weaken: float = 60.0,
    strengthen0: float = 2.15,
    strengthen1: float = 50.0,
    crop_layers: Sequence[str] = ("pool3",),
    caffe_median: bool = False,
    witnesses: str | None = None,
    witness_format: Format = "vgg_face_dag",
    attributes: Sequence[str] = ATTRIBUTES,
) -> AmIDetector:
    """AmI from the keys of the ``ami`` config group: steering parameters, crop layers, the witness rule, an
    optional folder of witness files (``witnesses``; None: extracted by :meth:`AmIDetector.setup`) and the face
    attributes whose witnesses it steers with."""
    return AmIDetector(model, None, weaken, (strengthen0, strengthen1), crop_layers, caffe_median=caffe_median,
                       witness_source=witnesses, witness_format=witness_format, attributes=attributes)


def check_ami_layers(params: Mapping[str, Any], layer_names: Sequence[str]) -> list[str]:
    """Once the model is built: every ``crop_layers`` entry must be one of its hookable layers ``layer_names``."""
    crop_layers = params.get("crop_layers")
    unknown = [name for name in crop_layers or () if name not in layer_names] if isinstance(crop_layers, list) else []
    if not unknown:
        return []
    return [f"crop_layers={show(crop_layers)}: {', '.join(map(str, unknown))} "
            f"{'is' if len(unknown) == 1 else 'are'} not among the model's hookable layers; "
            f"expected some of: {', '.join(layer_names)} (or [] to crop none)"]


ami.check_params = check_ami_params  # type: ignore[attr-defined]  # what the config check calls
ami.check_layers = check_ami_layers  # type: ignore[attr-defined]  # and, once the model is built, this
