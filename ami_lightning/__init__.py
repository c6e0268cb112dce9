"""ami-lightning: AmI (Attacks Meet Interpretability, Tao et al., NeurIPS 2018) for face-recognition CNNs."""

__version__ = "0.1.0"
