"""Detector-agnostic evaluation: rates and their eligibility rule, thresholds calibrated to a benign FPR, intervals,
and the Lightning module that scores every attack set with every detector."""
