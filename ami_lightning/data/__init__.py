"""Datasets and the Lightning DataModule of benign and attacked faces."""
