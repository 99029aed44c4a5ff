"""The public fused ops and the backend switch: Triton kernels for CUDA tensors, the PyTorch reference otherwise.

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

from lathadapter.kernels.cone import check_cone_options
from lathadapter.kernels.geometry import (
    Curvature,
    as_curvature,
    distance,
    origin_distance,
    pairwise_distance_reference,
)
from lathadapter.kernels.hierarchy import (
    check_edge_inputs,
    check_separation_inputs,
    edge_energy_reference,
    negative_counts,
    separation_loss_reference,
)

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
    from lathadapter.kernels import triton_pairs

    if not triton_pairs.INTERPRETED:
        raise _interpreter_error("triton was already imported without it")


def use_triton(*points: torch.Tensor) -> bool:
    """Whether the fused Triton path serves a call on these point tensors under the current backend."""
    name = get_backend()
    if name == "torch":
        return False
    on_cuda = points[0].is_cuda
    supported = all(p.dtype in TRITON_DTYPES for p in points)
    if name == "auto":
        return on_cuda and supported and importlib.util.find_spec("triton") is not None
    if not supported:
        found = ", ".join(sorted({str(p.dtype) for p in points}))
        raise ValueError(f"kernels backend 'triton' takes float16, bfloat16 or float32 points, got {found}; "
                         "use backend 'torch' or 'auto' for other dtypes")
    if importlib.util.find_spec("triton") is None:
        raise RuntimeError("kernels backend 'triton' needs the triton package, which is not installed")
    if points[0].device.type == "cpu":
        _require_interpreter()
    elif not on_cuda:
        raise ValueError(f"kernels backend 'triton' runs on CUDA tensors (or CPU ones in the interpreter), "
                         f"got {points[0].device}")
    return True


def pairwise_distance(x: torch.Tensor, y: torch.Tensor, c: Curvature) -> torch.Tensor:
    """All Poincaré distances d(x_m, y_n): [..., M, D] × [..., N, D] → [..., M, N] (leading dims broadcast).

    The Triton path flattens the leading dims into G independent problems of one batched kernel.
    """
    if x.dim() < 2 or y.dim() < 2 or x.shape[-1] != y.shape[-1]:
        raise ValueError(f"pairwise_distance takes x [..., M, D] and y [..., N, D] with one D, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if not use_triton(x, y):
        return pairwise_distance_reference(x, y, c)
    from lathadapter.kernels.triton_distance import pairwise_distance_triton

    lead = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    dtype = torch.promote_types(x.dtype, y.dtype)
    (m, dim), n = x.shape[-2:], y.shape[-2]
    xg = x.to(dtype).expand(*lead, m, dim).reshape(-1, m, dim)
    yg = y.to(dtype).expand(*lead, n, dim).reshape(-1, n, dim)
    out = pairwise_distance_triton(xg, yg, as_curvature(c, torch.float32, x.device))
    return out.reshape(*lead, m, n)


def separation_loss(
    children: torch.Tensor,
    parents: torch.Tensor,
    positive: torch.Tensor,
    c: Curvature,
    margin: float = 0.1,
    parent_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch separation: mean_i mean_{j ≠ positive_i, mask_j} max(0, d(x_i, y_pos) − d(x_i, y_j) + margin).

    children [M, D], parents [N, D], positive [M] (each child's parent), parent_mask [N] bool or None (all parents).
    A child without eligible negatives contributes 0 and still counts in the mean. Returns a 0-d tensor.
    """
    check_separation_inputs(children, parents, positive, parent_mask)
    if not use_triton(children, parents):
        return separation_loss_reference(children, parents, positive, c, margin, parent_mask)
    from lathadapter.kernels.triton_hierarchy import separation_sums_triton

    dtype = torch.promote_types(children.dtype, parents.dtype)
    x, y = children.to(dtype), parents.to(dtype)
    curvature = as_curvature(c, torch.float32, x.device)
    positive_d = distance(x.float(), y.float()[positive], curvature)
    mask = None if parent_mask is None else parent_mask.to(torch.uint8).contiguous()
    sums = separation_sums_triton(x, y, positive_d, positive, mask, curvature, float(margin))
    if len(sums) == 0:
        return sums.sum()
    count = negative_counts(positive, parent_mask, len(parents)).clamp_min(1)
    return (sums / count).mean()


def edge_energy(
    parents: torch.Tensor,
    children: torch.Tensor,
    weights: torch.Tensor,
    c: Curvature,
    kind: str = "cone",
    K: float = 0.1,
    kappa: float = 1.0,
    margin: float = 0.1,
) -> torch.Tensor:
    """Weighted edge energy Σ_{n,m} W[n,m] E(parents[n], children[m]) (a sum; the caller divides by Σ W).

    E is the cone energy max(0, Ξ − κ ψ) for kind="cone", the centripetal hinge max(0, |p|_H − |q|_H + margin) for
    kind="centripetal". parents [N, D], children [M, D], weights [N, M]. Returns a 0-d tensor.
    """
    check_edge_inputs(parents, children, weights, kind)
    if kind == "cone":
        check_cone_options(K, kappa)
    if not use_triton(parents, children):
        return edge_energy_reference(parents, children, weights, c, kind, K, kappa, margin)
    from lathadapter.kernels.triton_hierarchy import centripetal_sum_triton, cone_energy_sum_triton

    curvature = as_curvature(c, torch.float32, parents.device)
    if kind == "centripetal":
        hp = origin_distance(parents.float(), curvature)
        hq = origin_distance(children.float(), curvature)
        return centripetal_sum_triton(hp, hq, weights, float(margin))
    dtype = torch.promote_types(parents.dtype, children.dtype)
    return cone_energy_sum_triton(parents.to(dtype), children.to(dtype), weights, curvature, float(K), float(kappa))
