"""Hyperbolic entailment cones (Ganea et al. 2018) in the ball of curvature −c, as PyTorch references.

The unit-ball formulas are applied to √c p and √c q (which preserves angles). Every quantity is written in terms of
the pair invariants |p|², |q|², <p, q − p> and |q − p|², so that the row-wise functions here and LatHAdapter's
fixed-shape loss (`stacked.py`, through `cone_energy_from_invariants`) share one formula, and close pairs keep their
precision (see docs/method.md).
"""

from __future__ import annotations

import torch

from lathadapter.kernels.geometry import (
    MIN_NORM,
    Curvature,
    as_curvature,
    compute_dtype,
    machine_eps,
    safe_sqrt,
)


def check_cone_options(K: float, kappa: float) -> None:
    if not K > 0:
        raise ValueError(f"cone K (half-aperture constant) must be positive, got {K}")
    if not kappa >= 0:
        raise ValueError(f"cone kappa (aperture multiplier) must be non-negative, got {kappa}")


def safe_arcsin(x: torch.Tensor) -> torch.Tensor:
    """arcsin on [−1, 1] as atan2(x, √(1 − x²)) with the safe √: exact ±π/2 at ±1, finite gradient there."""
    return torch.atan2(x, safe_sqrt(1 - x * x))


def safe_arccos(x: torch.Tensor) -> torch.Tensor:
    """arccos on [−1, 1] as atan2(√(1 − x²), x) with the safe √: exact 0 and π at ±1, finite gradient there."""
    return torch.atan2(safe_sqrt(1 - x * x), x)


def half_aperture_from_norm2(aa: torch.Tensor, c: torch.Tensor, K: float) -> torch.Tensor:
    """ψ(p) = arcsin(min(1, K (1 − c|p|²) / (√c|p|))) from |p|² (the argument clamped to [0, 1])."""
    pp = c * aa
    ratio = K * (1 - pp) / safe_sqrt(pp).clamp_min(MIN_NORM)
    return safe_arcsin(ratio.clamp(0, 1))


def exterior_angle_from_invariants(
    aa: torch.Tensor, bb: torch.Tensor, au: torch.Tensor, uu: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    """Ξ(p, q) from |p|², |q|², <p, q − p>, |q − p|² (unscaled); 0 where it is undefined (p at the origin, q = p,
    or closer to either than eps allows).

    With P = √c p, Q = √c q, u = Q − P the numerator <P,Q>(1 + |P|²) − |P|²(1 + |Q|²) is <P,u>(1 − |P|²) − |P|²|u|²
    and the square of the denominator |P| |u| √(1 + |P|²|Q|² − 2<P,Q>) is |P|² |u|² ((1 − |P|²)(1 − |Q|²) + |u|²):
    both free of cancellation.
    """
    pp, qq, pu, w = c * aa, c * bb, c * au, c * uu
    numerator = pu * (1 - pp) - pp * w
    squared_denominator = pp * w * ((1 - pp) * (1 - qq) + w)
    # Undefined also where the denominator is below eps: there the quotient's gradient would overflow (and turn into
    # NaN through the clamp), and the pair is degenerate (|P| |u| < eps) anyway.
    valid = squared_denominator > machine_eps(squared_denominator.dtype) ** 2
    cosine = numerator / torch.where(valid, safe_sqrt(squared_denominator), torch.ones_like(numerator))
    return torch.where(valid, safe_arccos(cosine.clamp(-1, 1)), torch.zeros_like(cosine))


def cone_energy_from_invariants(
    aa: torch.Tensor, bb: torch.Tensor, au: torch.Tensor, uu: torch.Tensor, c: torch.Tensor, K: float, kappa: float
) -> torch.Tensor:
    """E(p, q) = max(0, Ξ(p, q) − κ ψ(p)) from the pair invariants."""
    return torch.relu(exterior_angle_from_invariants(aa, bb, au, uu, c) - kappa * half_aperture_from_norm2(aa, c, K))


def _row_invariants(
    p: torch.Tensor, q: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    u = q - p
    return (p * p).sum(-1), (q * q).sum(-1), (p * u).sum(-1), (u * u).sum(-1)


def cone_half_aperture(p: torch.Tensor, c: Curvature, K: float = 0.1) -> torch.Tensor:
    """Half-aperture ψ(p) of the entailment cone at p, over the last dim: π/2 near the origin, → 0 at the boundary."""
    check_cone_options(K, 0.0)
    dtype = compute_dtype(p)
    pc = p.to(dtype)
    return half_aperture_from_norm2((pc * pc).sum(-1), as_curvature(c, dtype, p.device), K).to(p.dtype)


def cone_exterior_angle(p: torch.Tensor, q: torch.Tensor, c: Curvature) -> torch.Tensor:
    """Exterior angle Ξ(p, q) at p towards q (the angle between p and (−p) ⊕ q), row-wise with broadcasting."""
    dtype = compute_dtype(p, q)
    invariants = _row_invariants(p.to(dtype), q.to(dtype))
    out = exterior_angle_from_invariants(*invariants, as_curvature(c, dtype, p.device))
    return out.to(torch.promote_types(p.dtype, q.dtype))


def cone_energy(p: torch.Tensor, q: torch.Tensor, c: Curvature, K: float = 0.1, kappa: float = 1.0) -> torch.Tensor:
    """E(p, q) = max(0, Ξ(p, q) − κ ψ(p)), row-wise with broadcasting: 0 when q lies in p's cone."""
    check_cone_options(K, kappa)
    dtype = compute_dtype(p, q)
    invariants = _row_invariants(p.to(dtype), q.to(dtype))
    out = cone_energy_from_invariants(*invariants, as_curvature(c, dtype, p.device), K, kappa)
    return out.to(torch.promote_types(p.dtype, q.dtype))
