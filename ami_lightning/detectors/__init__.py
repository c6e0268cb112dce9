"""Detectors of adversarial faces behind one interface."""
