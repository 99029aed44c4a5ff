"""The centripetal term of the hierarchical regularisation (docs/method.md, `hier=triplet`) for explicit points."""

from __future__ import annotations

import torch

from lathadapter.kernels.geometry import Curvature, as_curvature, compute_dtype, origin_distance


def centripetal_energy(p: torch.Tensor, q: torch.Tensor, c: Curvature, margin: float = 0.1) -> torch.Tensor:
    """max(0, |p|_H − |q|_H + margin), row-wise with broadcasting: 0 when the parent p is nearer the origin than its
    child q by at least the margin."""
    dtype = compute_dtype(p, q)
    curvature = as_curvature(c, dtype, p.device)
    return torch.relu(origin_distance(p.to(dtype), curvature) - origin_distance(q.to(dtype), curvature) + margin)
