"""Detectors of adversarial faces behind one interface (:mod:`.base`), registered by name: AmI (:mod:`.ami`, with
its steering in :mod:`.steering` and the choice of its parameters in :mod:`.ami_calibration`) and Feature Squeezing
(:mod:`.feature_squeezing`)."""

from ami_lightning.detectors.base import (
    DETECTORS,
    Detector,
    DetectorOutput,
    SetupContext,
    create_detector,
    register_detector,
    registered_detectors,
)

__all__ = [
    "DETECTORS",
    "Detector",
    "DetectorOutput",
    "SetupContext",
    "create_detector",
    "register_detector",
    "registered_detectors",
]
