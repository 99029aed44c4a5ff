"""The kernels backend switch: Triton kernels for CUDA tensors, the PyTorch twin otherwise (LatHAdapter's loss stage,
`adapter/methods/lathadapter/fused.py`, asks `use_triton`).

The backend is "auto" (Triton on CUDA, reference elsewhere), "triton" (always Triton; CPU tensors then need the
Triton interpreter, TRITON_INTERPRET=1 set before triton is first imported) or "torch" (always the reference). Its
initial value comes from the environment variable LATHADAPTER_KERNELS. Triton is imported only when it is used.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "LATHADAPTER_KERNELS"
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_selected: str | None = None


def _validated(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown kernels backend {name!r} (from {source}); valid backends: {', '.join(BACKENDS)}")
    return name


def get_backend() -> str:
    """The backend in force: the last set_backend / backend() value, else $LATHADAPTER_KERNELS, else "auto"."""
    if _selected is not None:
        return _selected
    return _validated(os.environ.get(ENV_VAR, "auto"), f"environment variable {ENV_VAR}")


def set_backend(name: str) -> None:
    """Select the backend for all later calls: "auto", "triton" or "torch"."""
    global _selected
    _selected = _validated(name, "set_backend")


@contextmanager
def backend(name: str) -> Iterator[None]:
    """Use backend `name` inside the with-block, then restore the previous selection."""
    global _selected
    previous = _selected
    set_backend(name)
    try:
        yield
    finally:
        _selected = previous


def _interpreter_error(detail: str) -> RuntimeError:
    return RuntimeError(
        "kernels backend 'triton' on CPU tensors runs the Triton interpreter, which needs TRITON_INTERPRET=1 in the "
        f"environment before triton is first imported ({detail}; note that importing open_clip or torch.compile "
        "imports triton). Set it at process start, or use backend 'torch' or 'auto' on the CPU."
    )


def _require_interpreter() -> None:
    if "triton.language" not in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise _interpreter_error("TRITON_INTERPRET is not set to 1")
    from lathadapter.kernels import triton_math

    if not triton_math.INTERPRETED:
        raise _interpreter_error("triton was already imported without it")


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether the fused Triton path serves a call on these tensors under the current backend."""
    name = get_backend()
    if name == "torch":
        return False
    on_cuda = tensors[0].is_cuda
    supported = all(t.dtype in TRITON_DTYPES for t in tensors)
    if name == "auto":
        return on_cuda and supported and importlib.util.find_spec("triton") is not None
    if not supported:
        found = ", ".join(sorted({str(t.dtype) for t in tensors}))
        raise ValueError(f"kernels backend 'triton' takes float16, bfloat16 or float32 tensors, got {found}; "
                         "use backend 'torch' or 'auto' for other dtypes")
    if importlib.util.find_spec("triton") is None:
        raise RuntimeError("kernels backend 'triton' needs the triton package, which is not installed")
    if tensors[0].device.type == "cpu":
        _require_interpreter()
    elif not on_cuda:
        raise ValueError(f"kernels backend 'triton' runs on CUDA tensors (or CPU ones in the interpreter), "
                         f"got {tensors[0].device}")
    return True
