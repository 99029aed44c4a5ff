"""Poincaré geometry of radial points `r·u` with unit directions `u`, from radii and direction cosines.

For a unit vector u, exp0(s·u) = (tanh(√c s)/√c)·u: the lift of a unit vector with a scale s is a radial point whose
radius depends on s and c only. LatHAdapter lifts unit-norm images, prototypes and attributes with one scale per
kind, so every pair of lifted points is described by two radii and the cosine of their directions, and a B × C
matrix of distances or cone angles costs one matrix product of directions plus O(BC) elementwise work instead of
O(BCD) differences.

Everything is written with the scaled radius ρ = √c·r = min(tanh(√c s), 1 − ε) ∈ [0, 1), the radius after rescaling
the ball to curvature −1: angles depend on ρ only, and distances are the unit-ball distance divided by √c. With
a = ρ_a u_a, b = ρ_b u_b in the unit ball and cos = <u_a, u_b>:

- |a − b|² = W = (ρ_a − ρ_b)² + 2 ρ_a ρ_b (1 − cos) (no cancellation between the radial and the angular part);
- d(a, b) = arcosh(1 + 2W / ((1 − ρ_a²)(1 − ρ_b²))) / √c;
- the exterior angle of Ganea et al.'s cone at parent a towards child b is arccos(N / √(W M)) with
  N = (ρ_b cos − ρ_a)(1 − ρ_a²) − ρ_a W and M = 1 + ρ_a² ρ_b² − 2 ρ_a ρ_b cos (the invariant formula of `cone`
  divided by ρ_a).

The two matrix-valued fields have hand-written backward passes: autograd through their formulas records some 100
to 200 small ops each, and on a CPU a training step's time goes mostly into such per-op overhead. A cosine near 1
carries a rounding of about 1e-7 in float32, so directions closer than about 3e-4 rad lose relative precision in the
angular part of W. Unit directions are assumed, not checked: callers normalise.
"""

from __future__ import annotations

import torch

from lathadapter.kernels.cone import check_cone_options, half_aperture_from_norm2
from lathadapter.kernels.geometry import PROJECTION_EPS, artanh, machine_eps


def scaled_radius(scale: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """ρ = √c·|exp0(scale·u)| for unit u, projected to at most 1 − ε (elementwise over `scale`)."""
    eps = PROJECTION_EPS[torch.float64 if scale.dtype == torch.float64 else torch.float32]
    return torch.tanh(c.sqrt() * scale).clamp_max(1 - eps)


def _reduce(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return grad.sum_to_size(like.shape) if grad.shape != like.shape else grad


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.dot(x.reshape(-1), y.reshape(-1))


def distance_forward(rho_a, rho_b, cosine: torch.Tensor, sqrt_c) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """d = arcosh(1 + δ) / √c with δ = 2W / ((1 − ρ_a²)(1 − ρ_b²)); returns d, δ and √(δ(δ + 2)) (clamped to eps),
    what `distance_backward` needs. Radii and √c are Python floats or tensors broadcasting against `cosine`."""
    alpha, beta = 1 - rho_a * rho_a, 1 - rho_b * rho_b
    w = torch.rsub(cosine, 1).clamp_(0, 2).mul_(2 * rho_a * rho_b).add_((rho_a - rho_b) ** 2)
    delta = w.mul_(2 / (alpha * beta))
    root = (delta * (delta + 2)).sqrt_()
    out = torch.log1p(delta + root).div_(sqrt_c)
    return out, delta, root.clamp_min_(machine_eps(cosine.dtype))


def distance_backward(grad: torch.Tensor, rho_a, rho_b, sqrt_c, root: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, float | torch.Tensor, float | torch.Tensor]:
    """The pieces of d's gradient: `g` = grad · √c ∂d/∂δ, the gradient w.r.t. the cosines, and the coefficients
    `ka`, `kb` with ∂L/∂ρ_a = (2k (ρ_a Σg − ρ_b Σg·cos) + ka Σg·δ) / √c (symmetrically for ρ_b), k = 2/(αβ)."""
    alpha, beta = 1 - rho_a * rho_a, 1 - rho_b * rho_b
    g = grad / root
    k = 2 / (alpha * beta)
    grad_cos = g * (-2 * k * rho_a * rho_b / sqrt_c)  # ∂W/∂cos = −2 ρ_a ρ_b
    return g, grad_cos, 2 * rho_a / alpha, 2 * rho_b / beta


class _RadialDistance(torch.autograd.Function):
    """d = arcosh(1 + 2W / ((1 − ρ_a²)(1 − ρ_b²))) / √c over a tensor of cosines; ρ_a, ρ_b broadcast against it.

    With 0-d radii (one radius per kind, the common case) their gradients come from three dot products.
    """

    @staticmethod
    def forward(ctx, rho_a: torch.Tensor, rho_b: torch.Tensor, cosine: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out, delta, root = distance_forward(rho_a, rho_b, cosine, c.sqrt())
        ctx.save_for_backward(rho_a, rho_b, cosine, c, delta, root, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rho_a, rho_b, cosine, c, delta, root, out = ctx.saved_tensors
        scale = c.rsqrt()
        g, grad_cos, ka, kb = distance_backward(grad, rho_a, rho_b, c.sqrt(), root)
        k = 2 / ((1 - rho_a * rho_a) * (1 - rho_b * rho_b))
        grad_a = grad_b = grad_c = None
        if ctx.needs_input_grad[3]:
            grad_c = -_dot(grad, out) / (2 * c)  # at fixed radii, d ∝ 1/√c
        # ∂W/∂ρ_a = 2(ρ_a − ρ_b cos) and ∂δ/∂ρ_a at fixed W = 2ρ_a δ/α (symmetrically for ρ_b)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            if rho_a.dim() == 0 and rho_b.dim() == 0:
                s0, s1, s2 = g.sum(), _dot(g, cosine), _dot(g, delta)
                grad_a = scale * (2 * k * (rho_a * s0 - rho_b * s1) + ka * s2)
                grad_b = scale * (2 * k * (rho_b * s0 - rho_a * s1) + kb * s2)
            else:
                grad_a = scale * _reduce(g * ((2 * k) * (rho_a - rho_b * cosine) + ka * delta), rho_a)
                grad_b = scale * _reduce(g * ((2 * k) * (rho_b - rho_a * cosine) + kb * delta), rho_b)
        return grad_a, grad_b, grad_cos if ctx.needs_input_grad[2] else None, grad_c


def exterior_angle_forward(rho_p, rho_q, cosine: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Ξ and what `exterior_angle_backward` needs; radii are Python floats or tensors broadcasting against `cosine`."""
    eps = machine_eps(cosine.dtype)
    cosine = cosine.clamp(-1, 1)
    pp, pq = rho_p * rho_p, rho_p * rho_q
    w = (rho_p - rho_q) ** 2 + 2 * pq * (1 - cosine)
    m = 1 + pq * pq - 2 * pq * cosine
    n = (rho_q * cosine - rho_p) * (1 - pp) - rho_p * w
    wm = w * m
    # Undefined where |P| |u| √M < eps (parent at the origin, child at the parent): 0, without gradient.
    valid = pp * wm > eps * eps
    x = torch.where(valid, n / wm.clamp_min(eps * eps).sqrt(), 0.0).clamp_(-1, 1)
    return torch.arccos(x).masked_fill_(~valid, 0.0), (cosine, w, m, x, valid)


def exterior_angle_backward(grad: torch.Tensor, rho_p, rho_q, saved: tuple[torch.Tensor, ...]
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Elementwise gradients of Σ grad·Ξ w.r.t. ρ_p, ρ_q and the cosine (the caller reduces the radii's terms)."""
    cosine, w, m, x, valid = saved
    eps = machine_eps(w.dtype)
    # dΞ/dx = −1/√(1 − x²) inside (−1, 1); then dx/dt = N_t/√(WM) − x/2 (W_t/W + M_t/M) for t in ρ_p, ρ_q, cos.
    gx = (-grad / (1 - x * x).clamp_min(eps).sqrt()).masked_fill_(~valid | (x.abs() >= 1), 0.0)
    a = gx / (w * m).clamp_min(eps * eps).sqrt()  # multiplies N_t
    bw = gx * x * 0.5 / w.clamp_min(eps * eps)  # multiplies −W_t
    bm = gx * x * 0.5 / m  # multiplies −M_t
    pp, pq = rho_p * rho_p, rho_p * rho_q
    # N_c = ρ_q (1 + ρ_p²), W_c = M_c = −2 ρ_p ρ_q
    grad_cos = a * (rho_q * (1 + pp)) + (bw + bm) * (2 * pq)
    # N_p = −(1 − ρ_p² + W), W_p = 2(ρ_p − ρ_q cos), M_p = 2ρ_q(ρ_p ρ_q − cos)
    grad_p = -(a * (1 - pp + w)) - bw * (2 * (rho_p - rho_q * cosine)) - bm * (2 * rho_q * (pq - cosine))
    # N_q = cos (1 + ρ_p²) − 2ρ_p ρ_q, W_q = 2(ρ_q − ρ_p cos), M_q = 2ρ_p(ρ_p ρ_q − cos)
    grad_q = a * (cosine * (1 + pp) - 2 * pq) - bw * (2 * (rho_q - rho_p * cosine)) - bm * (2 * rho_p * (pq - cosine))
    return grad_p, grad_q, grad_cos


class _ExteriorAngle(torch.autograd.Function):
    """Ξ = arccos(N / √(W M)) of the cone at parent ρ_p u_p towards child ρ_q u_q; 0 where undefined."""

    @staticmethod
    def forward(ctx, rho_p: torch.Tensor, rho_q: torch.Tensor, cosine: torch.Tensor) -> torch.Tensor:
        angle, saved = exterior_angle_forward(rho_p, rho_q, cosine)
        ctx.save_for_backward(rho_p, rho_q, *saved)
        return angle

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rho_p, rho_q, *saved = ctx.saved_tensors
        grad_p, grad_q, grad_cos = exterior_angle_backward(grad, rho_p, rho_q, tuple(saved))
        return _reduce(grad_p, rho_p), _reduce(grad_q, rho_q), grad_cos


def radial_distance(rho_a: torch.Tensor, rho_b: torch.Tensor, cosine: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Poincaré distance between the points of scaled radii ρ_a, ρ_b whose directions have these cosines."""
    return _RadialDistance.apply(rho_a, rho_b, cosine, c)


def radial_exterior_angle(rho_p: torch.Tensor, rho_q: torch.Tensor, cosine: torch.Tensor) -> torch.Tensor:
    """Exterior angle Ξ(p, q) of parent ρ_p·u_p towards child ρ_q·u_q for every entry of `cosine`."""
    return _ExteriorAngle.apply(rho_p, rho_q, cosine)


def radial_half_aperture(rho: torch.Tensor, K: float = 0.1) -> torch.Tensor:
    """Half-aperture ψ = arcsin(min(1, K (1 − ρ²)/ρ)) of the cone at a point of scaled radius ρ (elementwise)."""
    return half_aperture_from_norm2(rho * rho, torch.ones_like(rho), K)


def radial_cone_energy(rho_p: torch.Tensor, rho_q: torch.Tensor, cosine: torch.Tensor, K: float = 0.1,
                       kappa: float = 1.0) -> torch.Tensor:
    """Cone energy max(0, Ξ(p, q) − κ ψ(p)) for every entry of `cosine`; ψ depends on ρ_p only."""
    check_cone_options(K, kappa)
    return torch.relu(radial_exterior_angle(rho_p, rho_q, cosine) - kappa * radial_half_aperture(rho_p, K))


def radial_origin_distance(rho: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """|x|_H = (2/√c) artanh(ρ) of a point of scaled radius ρ."""
    return 2 * artanh(rho) / c.sqrt()


def radial_centripetal_energy(rho_p: torch.Tensor, rho_q: torch.Tensor, c: torch.Tensor,
                              margin: float = 0.1) -> torch.Tensor:
    """max(0, |p|_H − |q|_H + margin) for a parent and a child of scaled radii ρ_p, ρ_q: it depends on radii only."""
    return torch.relu(radial_origin_distance(rho_p, c) - radial_origin_distance(rho_q, c) + margin)
