"""lathadapter: few-shot adaptation of CLIP-style models over a precomputed feature cache."""

__version__ = "0.1.0"
