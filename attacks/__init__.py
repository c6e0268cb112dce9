"""Attack generators of the AmI evaluation (pixel space [0, 255])."""
