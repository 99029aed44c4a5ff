"""The hierarchy loss terms of docs/method.md as PyTorch references (they materialise the M × N pair matrices), plus the
input checks shared with the fused Triton path."""

from __future__ import annotations

import torch

from lathadapter.kernels.cone import check_cone_options, cone_energy_from_invariants
from lathadapter.kernels.geometry import (
    Curvature,
    as_curvature,
    compute_dtype,
    distance,
    distance_from_invariants,
    origin_distance,
    pairwise_invariants,
)

EDGE_KINDS = ("cone", "centripetal")


def _check_points(name: str, points: torch.Tensor) -> None:
    if points.dim() != 2 or not points.is_floating_point():
        raise ValueError(f"{name} must be a floating [rows, D] tensor, got {points.dtype} {tuple(points.shape)}")


def check_separation_inputs(
    children: torch.Tensor, parents: torch.Tensor, positive: torch.Tensor, parent_mask: torch.Tensor | None
) -> None:
    """Shapes, dtypes and index range of separation_loss's inputs, with errors naming the argument."""
    _check_points("separation_loss: children", children)
    _check_points("separation_loss: parents", parents)
    if children.shape[1] != parents.shape[1]:
        raise ValueError(f"separation_loss: children have D={children.shape[1]} but parents have D={parents.shape[1]}")
    if positive.shape != (children.shape[0],) or positive.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"separation_loss: positive must be an int64 tensor of shape [{children.shape[0]}] (one parent index per "
            f"child), got {positive.dtype} of shape {tuple(positive.shape)}"
        )
    if positive.numel() > 0 and bool(((positive < 0) | (positive >= parents.shape[0])).any()):
        raise ValueError(f"separation_loss: positive holds indices outside [0, {parents.shape[0]})")
    if parent_mask is not None and (parent_mask.shape != (parents.shape[0],) or parent_mask.dtype != torch.bool):
        raise ValueError(
            f"separation_loss: parent_mask must be a bool tensor of shape [{parents.shape[0]}] or None, got "
            f"{parent_mask.dtype} of shape {tuple(parent_mask.shape)}"
        )


def check_edge_inputs(parents: torch.Tensor, children: torch.Tensor, weights: torch.Tensor, kind: str) -> None:
    _check_points("edge_energy: parents", parents)
    _check_points("edge_energy: children", children)
    if parents.shape[1] != children.shape[1]:
        raise ValueError(f"edge_energy: parents have D={parents.shape[1]} but children have D={children.shape[1]}")
    expected = (parents.shape[0], children.shape[0])
    if weights.shape != expected or not weights.is_floating_point():
        raise ValueError(
            f"edge_energy: weights must be a floating [parents, children] = {list(expected)} tensor, got "
            f"{weights.dtype} of shape {tuple(weights.shape)}"
        )
    if kind not in EDGE_KINDS:
        raise ValueError(f"edge_energy: unknown kind {kind!r}; valid kinds: {', '.join(EDGE_KINDS)}")


def centripetal_energy(p: torch.Tensor, q: torch.Tensor, c: Curvature, margin: float = 0.1) -> torch.Tensor:
    """max(0, |p|_H − |q|_H + margin), row-wise with broadcasting: 0 when the parent p is nearer the origin than its
    child q by at least the margin."""
    dtype = compute_dtype(p, q)
    curvature = as_curvature(c, dtype, p.device)
    return torch.relu(origin_distance(p.to(dtype), curvature) - origin_distance(q.to(dtype), curvature) + margin)


def negative_counts(positive: torch.Tensor, parent_mask: torch.Tensor | None, num_parents: int) -> torch.Tensor:
    """For each child, how many parents are eligible negatives (in the mask and not its positive)."""
    if parent_mask is None:
        return torch.full(positive.shape, num_parents - 1, dtype=torch.int64, device=positive.device)
    return parent_mask.sum().to(torch.int64) - parent_mask[positive].to(torch.int64)


def separation_loss_reference(
    children: torch.Tensor,
    parents: torch.Tensor,
    positive: torch.Tensor,
    c: Curvature,
    margin: float = 0.1,
    parent_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """mean_i mean_{j ≠ positive_i, mask_j} max(0, d(x_i, y_{positive_i}) − d(x_i, y_j) + margin), where a child
    without eligible negatives contributes 0."""
    dtype = compute_dtype(children, parents)
    x, y = children.to(dtype), parents.to(dtype)
    curvature = as_curvature(c, dtype, x.device)
    aa, bb, _, uu = pairwise_invariants(x, y)
    d = distance_from_invariants(aa, bb, uu, curvature)  # [M, N]
    d_positive = distance(x, y[positive], curvature)  # [M], direct
    eligible = torch.arange(y.shape[0], device=x.device)[None, :] != positive[:, None]
    if parent_mask is not None:
        eligible = eligible & parent_mask[None, :]
    hinge = torch.relu(d_positive[:, None] - d + margin) * eligible
    count = negative_counts(positive, parent_mask, y.shape[0]).clamp_min(1).to(dtype)
    return (hinge.sum(1) / count).mean() if len(x) else hinge.sum()


def edge_energy_reference(
    parents: torch.Tensor,
    children: torch.Tensor,
    weights: torch.Tensor,
    c: Curvature,
    kind: str = "cone",
    K: float = 0.1,
    kappa: float = 1.0,
    margin: float = 0.1,
) -> torch.Tensor:
    """Σ_{n,m} W[n,m] E(parents[n], children[m]) with E the cone energy or the centripetal hinge."""
    dtype = compute_dtype(parents, children)
    p, q, w = parents.to(dtype), children.to(dtype), weights.to(dtype)
    curvature = as_curvature(c, dtype, p.device)
    if kind == "centripetal":
        energy = centripetal_energy(p[:, None], q[None, :], curvature, margin)
    else:
        check_cone_options(K, kappa)
        energy = cone_energy_from_invariants(*pairwise_invariants(p, q), curvature, K, kappa)
    return (w * energy).sum()
