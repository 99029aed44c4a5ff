"""lathadapter: few-shot adaptation of CLIP-style models over a precomputed feature cache."""

from typing import Any

from lathadapter.version import __version__

__all__ = ["__version__", "fit", "load"]


def __getattr__(name: str) -> Any:
    """`lathadapter.fit` and `lathadapter.load` without importing torch at `import lathadapter` (the CLI starts
    faster)."""
    if name == "fit":
        from lathadapter.experiments.run import fit

        return fit
    if name == "load":
        from lathadapter.experiments.trained import load

        return load
    raise AttributeError(f"module 'lathadapter' has no attribute {name!r}")
