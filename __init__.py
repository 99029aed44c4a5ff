"""lathadapter: few-shot adaptation of CLIP-style models over a precomputed feature cache."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """`lathadapter.fit` without importing torch at `import lathadapter` (the CLI starts faster)."""
    if name == "fit":
        from lathadapter.adapter.fit import fit

        return fit
    raise AttributeError(f"module 'lathadapter' has no attribute {name!r}")
