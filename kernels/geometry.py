"""Poincaré-ball geometry (curvature −c) as pure PyTorch functions: the CPU path and the Triton kernels' test oracle.

Every function takes the curvature `c` explicitly (a positive float or a 0-d tensor, possibly requiring grad) and
computes in float32 (float64 for float64 inputs). Formulas and stable forms follow docs/method.md's "Poincaré ball".
"""

from __future__ import annotations

import torch

Curvature = float | torch.Tensor

# Projection margins of docs/method.md: points are kept at radius ≤ (1 − ε)/√c.
PROJECTION_EPS = {torch.float32: 4e-3, torch.float64: 1e-5}
MIN_NORM = 1e-15  # norms below this are treated as this (safe divisions at the origin)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32 (half-precision inputs are computed in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def machine_eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def as_curvature(c: Curvature, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The curvature as a 0-d tensor of `dtype` on `device`; rejects non-positive floats and non-scalar tensors."""
    if isinstance(c, torch.Tensor):
        if c.dim() != 0:
            raise ValueError(f"curvature c must be a positive float or a 0-d tensor, got shape {tuple(c.shape)}")
        return c.to(dtype=dtype, device=device)
    if isinstance(c, bool) or not isinstance(c, int | float) or not c > 0:
        raise ValueError(f"curvature c must be a positive float or a 0-d tensor, got {c!r}")
    return torch.tensor(float(c), dtype=dtype, device=device)


def safe_sqrt(z: torch.Tensor) -> torch.Tensor:
    """√z above eps², linear (z / eps) below: equal to √z at 0 and at eps², with a finite gradient everywhere."""
    eps = machine_eps(z.dtype)
    tiny = eps * eps
    return torch.where(z > tiny, torch.sqrt(z.clamp_min(tiny)), z / eps)


def norm(x: torch.Tensor) -> torch.Tensor:
    """|x| over the last dim, clamped below at MIN_NORM so that divisions by it and its gradient stay finite."""
    return (x * x).sum(-1, keepdim=True).clamp_min(MIN_NORM * MIN_NORM).sqrt()


def artanh(z: torch.Tensor) -> torch.Tensor:
    """artanh in its log1p form, accurate near 0 and stable up to the clamp 1 − eps."""
    z = z.clamp(-1 + machine_eps(z.dtype), 1 - machine_eps(z.dtype))
    return 0.5 * (torch.log1p(z) - torch.log1p(-z))


def arcosh1p(delta: torch.Tensor) -> torch.Tensor:
    """arcosh(1 + δ) = log1p(δ + √(δ(δ + 2))) for δ ≥ 0: exact 0 at δ = 0, no cancellation for small δ."""
    return torch.log1p(delta + safe_sqrt(delta * (delta + 2)))


def project(x: torch.Tensor, c: Curvature, eps: float | None = None) -> torch.Tensor:
    """Rescale points outside radius (1 − ε)/√c onto it (ε = 4e-3 in float32, 1e-5 in float64 by default)."""
    dtype = compute_dtype(x)
    if eps is None:
        eps = PROJECTION_EPS[dtype]
    if not 0 < eps < 1:
        raise ValueError(f"project: eps must lie in (0, 1), got {eps}")
    xc = x.to(dtype)
    max_norm = (1 - eps) / as_curvature(c, dtype, x.device).sqrt()
    n = norm(xc)
    return torch.where(n > max_norm, xc / n * max_norm, xc).to(x.dtype)


def expmap0(v: torch.Tensor, c: Curvature) -> torch.Tensor:
    """exp0(v) = tanh(√c|v|) v / (√c|v|), projected into the ball."""
    dtype = compute_dtype(v)
    sqrt_c = as_curvature(c, dtype, v.device).sqrt()
    vc = v.to(dtype)
    scaled = sqrt_c * norm(vc)
    return project(torch.tanh(scaled) * vc / scaled, c).to(v.dtype)


def logmap0(x: torch.Tensor, c: Curvature) -> torch.Tensor:
    """log0(x) = artanh(√c|x|) x / (√c|x|)."""
    dtype = compute_dtype(x)
    sqrt_c = as_curvature(c, dtype, x.device).sqrt()
    xc = x.to(dtype)
    scaled = sqrt_c * norm(xc)
    return (artanh(scaled) * xc / scaled).to(x.dtype)


def mobius_add(x: torch.Tensor, y: torch.Tensor, c: Curvature) -> torch.Tensor:
    """x ⊕ y = ((1 + 2c<x,y> + c|y|²) x + (1 − c|x|²) y) / (1 + 2c<x,y> + c²|x|²|y|²), broadcasting; not projected."""
    dtype = compute_dtype(x, y)
    cc = as_curvature(c, dtype, x.device)
    xc, yc = x.to(dtype), y.to(dtype)
    xy = (xc * yc).sum(-1, keepdim=True)
    x2 = (xc * xc).sum(-1, keepdim=True)
    y2 = (yc * yc).sum(-1, keepdim=True)
    numerator = (1 + 2 * cc * xy + cc * y2) * xc + (1 - cc * x2) * yc
    denominator = 1 + 2 * cc * xy + cc * cc * x2 * y2
    return (numerator / denominator.clamp_min(MIN_NORM)).to(torch.promote_types(x.dtype, y.dtype))


def distance_from_invariants(aa: torch.Tensor, bb: torch.Tensor, uu: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """d = (1/√c) arcosh(1 + 2c uu / ((1 − c aa)(1 − c bb))) from |a|², |b|², |a − b|² (the Triton kernels' formula)."""
    eps = machine_eps(uu.dtype)
    alpha = (1 - c * aa).clamp_min(eps)
    beta = (1 - c * bb).clamp_min(eps)
    delta = 2 * c * uu / (alpha * beta)
    return arcosh1p(delta) / c.sqrt()


def distance(x: torch.Tensor, y: torch.Tensor, c: Curvature) -> torch.Tensor:
    """Row-wise Poincaré distance d(x, y), broadcasting over leading dims; |x − y|² is a direct sum of squares."""
    dtype = compute_dtype(x, y)
    xc, yc = x.to(dtype), y.to(dtype)
    diff = xc - yc
    uu = (diff * diff).sum(-1)
    aa = (xc * xc).sum(-1)
    bb = (yc * yc).sum(-1)
    out = distance_from_invariants(aa, bb, uu, as_curvature(c, dtype, x.device))
    return out.to(torch.promote_types(x.dtype, y.dtype))


def origin_distance(x: torch.Tensor, c: Curvature) -> torch.Tensor:
    """|x|_H = (2/√c) artanh(√c|x|), the distance from the origin."""
    dtype = compute_dtype(x)
    sqrt_c = as_curvature(c, dtype, x.device).sqrt()
    return (2 * artanh(sqrt_c * norm(x.to(dtype)).squeeze(-1)) / sqrt_c).to(x.dtype)
