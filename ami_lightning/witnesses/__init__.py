"""Witness neurons: the published file formats and their extraction from attribute-mutated faces."""

from ami_lightning.witnesses.witness_set import ATTRIBUTES, WitnessFormatError, WitnessSet

__all__ = ["ATTRIBUTES", "WitnessFormatError", "WitnessSet"]
