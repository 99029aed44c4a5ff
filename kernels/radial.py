"""Poincaré geometry of radial points `r·u` with unit directions `u`, from radii and direction cosines.

For a unit vector u, exp0(ρ·u) = (tanh(√c ρ)/√c)·u: the lift of a unit vector with a radius ρ is a radial point
whose distance to the origin depends on ρ and c only. LatHAdapter lifts unit-norm images, prototypes and attributes,
each with its own radius (one radius per kind with `radius=kind`), so every pair of lifted points is described by two
radii and the cosine of their directions, and a B × C matrix of distances or cone angles costs one matrix product of
directions plus O(BC) elementwise work instead of O(BCD) differences. Radii are 0-d tensors or vectors that
broadcast against the cosine matrix ([B, 1] against [1, C]).

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

import math

import torch

from lathadapter.kernels.cone import check_cone_options, half_aperture_from_norm2
from lathadapter.kernels.geometry import PROJECTION_EPS, arcosh1p, artanh, machine_eps

# A radius (or √c, or a coefficient of the cosine): a Python float, or a tensor broadcasting against the cosines
Scalar = float | torch.Tensor


def scaled_radius(scale: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """ρ = √c·|exp0(scale·u)| for unit u, projected to at most 1 − ε (elementwise over `scale`)."""
    eps = PROJECTION_EPS[torch.float64 if scale.dtype == torch.float64 else torch.float32]
    return torch.tanh(c.sqrt() * scale).clamp_max(1 - eps)


def _host_scalars(*tensors: torch.Tensor) -> bool:
    """Whether these are 0-d CPU tensors outside vmap (one radius per kind): the nodes then take them as Python
    floats, whose scalar chain costs less than a dozen autograd ops on 0-d tensors."""
    return all(t.dim() == 0 and not t.is_cuda and not torch._C._functorch.is_batchedtensor(t) for t in tensors)


def as_column(rho: torch.Tensor) -> torch.Tensor:
    """Radii against the rows of a cosine matrix: a vector [N] as a column [N, 1]; a 0-d radius as it is."""
    return rho[:, None] if rho.dim() else rho


def as_row(rho: torch.Tensor) -> torch.Tensor:
    """Radii against the columns of a cosine matrix: a vector [M] as a row [1, M]; a 0-d radius as it is."""
    return rho[None, :] if rho.dim() else rho


def _reduce(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return grad.sum_to_size(like.shape) if grad.shape != like.shape else grad


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.dot(x.reshape(-1), y.reshape(-1))


def log1p(x: torch.Tensor) -> torch.Tensor:
    """log(1 + x) for x ≥ 0 as log(u) · x / (u − 1), u = 1 + x (Goldberg's correction of the rounding of u, within a
    few ulps), and x where u rounds to 1: `torch.log1p` is not vectorised on the CPU and takes 3–5× as long."""
    u = x + 1
    below = u - 1
    return torch.where(below == 0, x, torch.log(u).mul_(x).div_(below))


def distance_forward(rho_a: Scalar, rho_b: Scalar, cosine: torch.Tensor, sqrt_c: Scalar
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """d = arcosh(1 + δ) / √c with δ = 2W / ((1 − ρ_a²)(1 − ρ_b²)); returns d, δ and √(δ(δ + 2)) (clamped to eps),
    what `distance_backward` needs. Radii and √c are Python floats or tensors broadcasting against `cosine`.

    δ is affine in the cosine, k(ρ_a² + ρ_b²) − 2kρ_aρ_b cos with k = 2/((1 − ρ_a²)(1 − ρ_b²)): two passes."""
    k = 2 / ((1 - rho_a * rho_a) * (1 - rho_b * rho_b))
    delta = (cosine.clamp(-1, 1) * (-2 * k * rho_a * rho_b)).add_(k * (rho_a * rho_a + rho_b * rho_b))
    root = (delta + 2).mul_(delta).sqrt_()
    out = log1p(delta + root).div_(sqrt_c)
    return out, delta, root.clamp_min_(machine_eps(cosine.dtype))


def distance_backward(grad: torch.Tensor, rho_a: Scalar, rho_b: Scalar, sqrt_c: Scalar, root: torch.Tensor
                      ) -> tuple:
    """`g` = grad · √c ∂d/∂δ and `to_cos`, with ∂L/∂cos = g · to_cos (∂δ/∂cos = −2kρ_aρ_b, k = 2/(αβ))."""
    k = 2 / ((1 - rho_a * rho_a) * (1 - rho_b * rho_b))
    return grad / root, -2 * k * rho_a * rho_b / sqrt_c


def distance_radius_coefficients(rho_a: Scalar, rho_b: Scalar) -> tuple:
    """(A_a, B_a, A_b, B_b) with ∂δ/∂ρ_a = A_a + B_a δ at a fixed cosine (symmetrically for ρ_b): writing the
    cosine through δ, which is affine in it, gives A_a = k (ρ_a² − ρ_b²)/ρ_a and B_a = 2ρ_a/α + 1/ρ_a. So the radii's
    gradients need only Σ g and Σ g δ: ∂L/∂ρ_a = (A_a Σg + B_a Σgδ)/√c."""
    alpha, beta = 1 - rho_a * rho_a, 1 - rho_b * rho_b
    k = 2 / (alpha * beta)
    squares = rho_a * rho_a - rho_b * rho_b
    return k * squares / rho_a, 2 * rho_a / alpha + 1 / rho_a, -k * squares / rho_b, 2 * rho_b / beta + 1 / rho_b


# Below this scaled radius the gradients of `distance_radius_coefficients` divide by (nearly) zero: the radii's
# gradients are then taken in the direct form, ∂δ/∂ρ_a = (2ρ_a/α) δ + 2k (ρ_a − ρ_b cos), one more reduction.
SMALL_RADIUS = 1e-3


def distance_radius_grads(g: torch.Tensor, delta: torch.Tensor, cosine: torch.Tensor, rho_a: Scalar, rho_b: Scalar,
                          sqrt_c: Scalar) -> tuple[torch.Tensor, torch.Tensor]:
    """∂L/∂ρ_a and ∂L/∂ρ_b given `g` = grad · √c ∂d/∂δ: from Σ g and Σ g δ (`distance_radius_coefficients`) where both
    radii are at least SMALL_RADIUS, else in the direct form, finite at ρ = 0. 0-d radii (Python floats or tensors:
    one radius per kind) get sums; radius tensors broadcasting against the cosines are reduced to their shapes."""
    host = not isinstance(rho_a, torch.Tensor)
    if host and min(rho_a, rho_b) >= SMALL_RADIUS:  # the common case: two reductions, no direct form
        a_a, b_a, a_b, b_b = distance_radius_coefficients(rho_a, rho_b)
        s0, s_delta = g.sum(), _dot(g, delta)
        return (a_a * s0 + b_a * s_delta) / sqrt_c, (a_b * s0 + b_b * s_delta) / sqrt_c
    alpha, beta = 1 - rho_a * rho_a, 1 - rho_b * rho_b
    k = 2 / (alpha * beta)
    cosine = cosine.clamp(-1, 1)
    direct_a = 2 * rho_a / alpha * delta + 2 * k * (rho_a - rho_b * cosine)
    direct_b = 2 * rho_b / beta * delta + 2 * k * (rho_b - rho_a * cosine)
    if host:
        return _dot(g, direct_a) / sqrt_c, _dot(g, direct_b) / sqrt_c
    a_a, b_a, a_b, b_b = distance_radius_coefficients(rho_a, rho_b)  # inf or NaN at ρ = 0: not selected there
    small = torch.minimum(rho_a, rho_b) < SMALL_RADIUS
    if rho_a.dim() == rho_b.dim() == 0:
        s0, s_delta = g.sum(), _dot(g, delta)
        return (torch.where(small, _dot(g, direct_a), a_a * s0 + b_a * s_delta) / sqrt_c,
                torch.where(small, _dot(g, direct_b), a_b * s0 + b_b * s_delta) / sqrt_c)
    return (_reduce(g * torch.where(small, direct_a, a_a + b_a * delta), rho_a) / sqrt_c,
            _reduce(g * torch.where(small, direct_b, a_b + b_b * delta), rho_b) / sqrt_c)


class _RadialDistance(torch.autograd.Function):
    """d = arcosh(1 + 2W / ((1 − ρ_a²)(1 − ρ_b²))) / √c over a tensor of cosines; ρ_a, ρ_b broadcast against it.

    With 0-d radii (one radius per kind, the common case) their gradients come from two reductions, and on the CPU
    the radii and √c are Python floats (the scalar chain in tensor ops costs more than the passes over [B, C]).
    """

    @staticmethod
    def forward(ctx, rho_a: torch.Tensor, rho_b: torch.Tensor, cosine: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if _host_scalars(rho_a, rho_b, c):
            ctx.scalars = a, b, sqrt_c = float(rho_a), float(rho_b), math.sqrt(float(c))
        else:
            ctx.scalars, (a, b, sqrt_c) = None, (rho_a, rho_b, c.sqrt())
        out, delta, root = distance_forward(a, b, cosine, sqrt_c)
        ctx.save_for_backward(rho_a, rho_b, cosine, c, delta, root, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rho_a, rho_b, cosine, c, delta, root, out = ctx.saved_tensors
        if ctx.scalars is not None:
            rho_a, rho_b, sqrt_c = ctx.scalars
        else:
            sqrt_c = c.sqrt()
        g, to_cos = distance_backward(grad, rho_a, rho_b, sqrt_c, root)
        grad_a = grad_b = grad_c = None
        if ctx.needs_input_grad[3]:
            grad_c = -_dot(grad, out) / (2 * c)  # at fixed radii, d ∝ 1/√c
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_a, grad_b = distance_radius_grads(g, delta, cosine, rho_a, rho_b, sqrt_c)
        return grad_a, grad_b, g * to_cos if ctx.needs_input_grad[2] else None, grad_c


def exterior_angle_coefficients(rho_p: Scalar, rho_q: Scalar) -> tuple:
    """W, M and N of the exterior angle are affine in the cosine: W = w0 + w1 cos, M = m0 + m1 cos, N = n0 + n1 cos.
    Returns (w0, w1, m0, m1, n0, n1) for Python floats or tensors of radii."""
    pp, qq, pq = rho_p * rho_p, rho_q * rho_q, rho_p * rho_q
    return pp + qq, -2 * pq, 1 + pq * pq, -2 * pq, -rho_p * (1 + qq), rho_q * (1 + pp)


def exterior_angle_coefficient_derivatives(rho_p: Scalar, rho_q: Scalar) -> tuple[tuple, tuple]:
    """∂/∂ρ_p and ∂/∂ρ_q of (w0, w1, m0, m1, n0, n1)."""
    pq = rho_p * rho_q
    return ((2 * rho_p, -2 * rho_q, 2 * pq * rho_q, -2 * rho_q, -(1 + rho_q * rho_q), 2 * pq),
            (2 * rho_q, -2 * rho_p, 2 * pq * rho_p, -2 * rho_p, -2 * pq, 1 + rho_p * rho_p))


def _affine(c0, c1, x: torch.Tensor) -> torch.Tensor:
    """c0 + c1·x in one op when the coefficients are tensors, two when they are Python floats."""
    return torch.addcmul(c0, c1, x) if isinstance(c0, torch.Tensor) else (x * c1).add_(c0)


def exterior_angle_forward(coefficients: tuple, pp: Scalar, cosine: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """Ξ = arccos(N / √(W M)) from the coefficients of `exterior_angle_coefficients` and ρ_p² (`pp`); 0 where it is
    undefined (|P| |u| √M < eps: parent at the origin, child at the parent). Returns Ξ and what the backward needs."""
    w0, w1, m0, m1, n0, n1 = coefficients
    eps = machine_eps(cosine.dtype)
    cosine = cosine.clamp(-1, 1)
    w, m = _affine(w0, w1, cosine), _affine(m0, m1, cosine)
    wm = w * m
    invalid = wm * pp <= eps * eps
    inverse_root = wm.clamp_min_(eps * eps).rsqrt_()  # 1/√(WM)
    x = _affine(n0, n1, cosine).mul_(inverse_root).clamp_(-1, 1)  # arbitrary where invalid: masked below
    return torch.arccos(x).masked_fill_(invalid, 0.0), (cosine, w, m, x, invalid, inverse_root)


def exterior_angle_pieces(grad: torch.Tensor, saved: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, b_w, b_m) with Σ grad·∂Ξ/∂t = Σ a N_t − b_w W_t − b_m M_t for any t: a = gx/√(WM), b_w = gx x/(2W),
    b_m = gx x/(2M), where gx = grad·dΞ/dx = −grad/√(1 − x²) (0 where Ξ is undefined or |x| = 1)."""
    cosine, w, m, x, invalid, inverse_root = saved
    eps = machine_eps(w.dtype)
    gx = (-grad / (1 - x * x).clamp_min(eps).sqrt()).masked_fill_(invalid | (x.abs() >= 1), 0.0)
    half_gx_x = gx * x * 0.5
    return gx * inverse_root, half_gx_x / w.clamp_min(eps * eps), half_gx_x / m


def exterior_angle_cosine_grad(pieces: tuple, w1: Scalar, n1: Scalar) -> torch.Tensor:
    """∂/∂cos of Σ grad·Ξ from the `exterior_angle_pieces`: a N_c − b_w W_c − b_m M_c with N_c = n1 and
    W_c = M_c = w1 (= m1 = −2ρ_pρ_q)."""
    a, bw, bm = pieces
    return torch.addcmul(a * n1, bw + bm, w1, value=-1)


def exterior_angle_backward(grad: torch.Tensor, coefficients: tuple, saved: tuple, derivatives: tuple[tuple, tuple]
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Elementwise gradients of Σ grad·Ξ w.r.t. the cosine, ρ_p and ρ_q (unreduced), given the coefficients'
    `derivatives` w.r.t. the radii."""
    _, w1, _, _, _, n1 = coefficients
    a, bw, bm = pieces = exterior_angle_pieces(grad, saved)
    grad_cos = exterior_angle_cosine_grad(pieces, w1, n1)
    cosine = saved[0]
    radii = [a * (dn0 + dn1 * cosine) - bw * (dw0 + dw1 * cosine) - bm * (dm0 + dm1 * cosine)
             for dw0, dw1, dm0, dm1, dn0, dn1 in derivatives]
    return grad_cos, radii[0], radii[1]


class _ExteriorAngle(torch.autograd.Function):
    """Ξ = arccos(N / √(W M)) of the cone at parent ρ_p u_p towards child ρ_q u_q; 0 where undefined."""

    @staticmethod
    def forward(ctx, rho_p: torch.Tensor, rho_q: torch.Tensor, cosine: torch.Tensor) -> torch.Tensor:
        angle, saved = exterior_angle_forward(exterior_angle_coefficients(rho_p, rho_q), rho_p * rho_p, cosine)
        ctx.save_for_backward(rho_p, rho_q, *saved)
        return angle

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rho_p, rho_q, *saved = ctx.saved_tensors
        grad_cos, grad_p, grad_q = exterior_angle_backward(
            grad, exterior_angle_coefficients(rho_p, rho_q), tuple(saved),
            exterior_angle_coefficient_derivatives(rho_p, rho_q))
        return _reduce(grad_p, rho_p), _reduce(grad_q, rho_q), grad_cos


def _scalar_angle_backward(grad: torch.Tensor, p: float, q: float, saved: tuple, extra_p: float) -> tuple:
    """The exterior angle's backward for two radii given as Python floats: ∂/∂ρ_p and ∂/∂ρ_q (0-d, plus
    `extra_p` · Σ grad for ρ_p) from seven reductions, and ∂/∂cos."""
    _, w1, _, _, _, n1 = exterior_angle_coefficients(p, q)
    a, bw, bm = exterior_angle_pieces(grad, saved)
    grad_cos = (a * n1).sub_((bw + bm).mul_(w1))  # a N_c − b_w W_c − b_m M_c, N_c = n1, W_c = M_c = w1
    cosine = saved[0]
    sums = torch.stack([a.sum(), _dot(a, cosine), bw.sum(), _dot(bw, cosine), bm.sum(), _dot(bm, cosine), grad.sum()])
    # ∂/∂ρ = Σ a (dn0 + dn1 cos) − b_w (dw0 + dw1 cos) − b_m (dm0 + dm1 cos), for ρ_p then ρ_q
    rows = [[dn0, dn1, -dw0, -dw1, -dm0, -dm1, extra]
            for (dw0, dw1, dm0, dm1, dn0, dn1), extra in zip(exterior_angle_coefficient_derivatives(p, q),
                                                             (extra_p, 0.0), strict=True)]
    grad_p, grad_q = torch.tensor(rows, dtype=sums.dtype) @ sums
    return grad_p, grad_q, grad_cos


class _ConeEnergy(torch.autograd.Function):
    """max(0, Ξ(p, q) − κ ψ(ρ_p)) for two 0-d radii on the CPU, as one node: the coefficients and ψ are Python
    floats (`half_aperture`), so neither the angle's scalar chain nor ψ's is a dozen autograd ops."""

    @staticmethod
    def forward(ctx, rho_p: torch.Tensor, rho_q: torch.Tensor, cosine: torch.Tensor, K: float, kappa: float
                ) -> torch.Tensor:
        p, q = float(rho_p), float(rho_q)
        psi, dpsi = half_aperture(p, K)
        angle, saved = exterior_angle_forward(exterior_angle_coefficients(p, q), p * p, cosine)
        energy = angle.sub_(kappa * psi).relu_()
        ctx.floats = (p, q, -kappa * dpsi)
        ctx.save_for_backward(energy, *saved)
        return energy

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        energy, *saved = ctx.saved_tensors
        p, q, threshold_slope = ctx.floats
        grad_p, grad_q, grad_cos = _scalar_angle_backward(grad * (energy > 0), p, q, tuple(saved), threshold_slope)
        return grad_p, grad_q, grad_cos, None, None


def radial_distance(rho_a: torch.Tensor, rho_b: torch.Tensor, cosine: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Poincaré distance between the points of scaled radii ρ_a, ρ_b whose directions have these cosines."""
    return _RadialDistance.apply(rho_a, rho_b, cosine, c)


class _AffineArcosh(torch.autograd.Function):
    """d = arcosh(1 + δ) / √c with δ = δ0 + δ1·cos affine in the cosine, its coefficients given (broadcasting
    against the cosines), in the form `torch.func.vmap` takes (forward without ctx, `setup_context`, a generated vmap
    rule) and with tensors only: the [B, C] work of `radial_distance_fixed`, about ten operations forward and as many
    backward where autograd through the formula records some sixty (each a kernel on a GPU)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(intercept: torch.Tensor, slope: torch.Tensor, cosine: torch.Tensor, c: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        sqrt_c = c.sqrt()
        delta = torch.addcmul(intercept, slope, cosine).clamp_min_(0)  # 0 up to rounding where the points meet
        root = (delta + 2).mul_(delta).sqrt_()
        out = torch.log1p(delta + root).div_(sqrt_c)  # the GPU's form: one kernel (`log1p` takes seven on a CPU)
        return out, root.clamp_min_(machine_eps(cosine.dtype)).mul_(sqrt_c)  # √c · dd/dδ's denominator

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        out, scale = output
        ctx.save_for_backward(*inputs, out, scale)
        ctx.mark_non_differentiable(scale)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None, _: torch.Tensor | None):
        if grad is None:  # nothing reached the distance (`set_materialize_grads(False)`)
            return None, None, None, None
        intercept, slope, cosine, c, out, scale = ctx.saved_tensors
        needs = ctx.needs_input_grad
        per_delta = grad / scale  # ∂L/∂δ = grad / (√c √(δ(δ + 2)))
        return (_reduce(per_delta, intercept) if needs[0] else None,
                _reduce(per_delta * cosine, slope) if needs[1] else None,
                per_delta * slope if needs[2] else None,
                -_dot(grad, out) / (2 * c) if needs[3] else None)  # at a fixed δ, d ∝ 1/√c


def radial_distance_fixed(rho_a: torch.Tensor, rho_b: torch.Tensor, cosine: torch.Tensor, c: torch.Tensor,
                          node: bool = True) -> torch.Tensor:
    """`radial_distance` in the form stacked runs (under `torch.func.vmap`) and captured steps take: tensors only,
    never a host read. δ = k(ρ_a² + ρ_b²) − 2kρ_aρ_b cos with k = 2/((1 − ρ_a²)(1 − ρ_b²)): its coefficients are
    computed on the radii (0-d with one radius per kind) by autograd, arcosh(1 + δ)/√c over the cosines by
    `_AffineArcosh` (`node`: a captured step's form, fewer kernels) or by plain autograd (less host time a call)."""
    aa, bb = rho_a * rho_a, rho_b * rho_b
    k = 2 / ((1 - aa) * (1 - bb))
    intercept, slope = k * (aa + bb), -2 * k * rho_a * rho_b
    if node:
        return _AffineArcosh.apply(intercept, slope, cosine, c)[0]
    return arcosh1p(torch.addcmul(intercept, slope, cosine).clamp_min(0)) / c.sqrt()


def radial_exterior_angle(rho_p: torch.Tensor, rho_q: torch.Tensor, cosine: torch.Tensor) -> torch.Tensor:
    """Exterior angle Ξ(p, q) of parent ρ_p·u_p towards child ρ_q·u_q for every entry of `cosine`."""
    return _ExteriorAngle.apply(rho_p, rho_q, cosine)


def half_aperture(rho: float, K: float) -> tuple[float, float]:
    """`radial_half_aperture` of one Python float radius, and its derivative dψ/dρ (0 where the min is 1)."""
    if rho <= 0:  # at the origin: the min is 1
        return math.pi / 2, 0.0
    x = K * (1 - rho * rho) / rho
    if x >= 1:
        return math.pi / 2, 0.0
    return math.asin(x), -K * (1 + 1 / (rho * rho)) / math.sqrt(1 - x * x)


def radial_half_aperture(rho: torch.Tensor, K: float = 0.1) -> torch.Tensor:
    """Half-aperture ψ = arcsin(min(1, K (1 − ρ²)/ρ)) of the cone at a point of scaled radius ρ (elementwise)."""
    return half_aperture_from_norm2(rho * rho, torch.ones_like(rho), K)


def radial_cone_energy(rho_p: torch.Tensor, rho_q: torch.Tensor, cosine: torch.Tensor, K: float = 0.1,
                       kappa: float = 1.0) -> torch.Tensor:
    """Cone energy max(0, Ξ(p, q) − κ ψ(p)) for every entry of `cosine`; ψ depends on ρ_p only."""
    check_cone_options(K, kappa)
    if _host_scalars(rho_p, rho_q):  # one radius per kind on the CPU: one node
        return _ConeEnergy.apply(rho_p, rho_q, cosine, K, kappa)
    return torch.relu(radial_exterior_angle(rho_p, rho_q, cosine) - kappa * radial_half_aperture(rho_p, K))


def radial_origin_distance(rho: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """|x|_H = (2/√c) artanh(ρ) of a point of scaled radius ρ."""
    return 2 * artanh(rho) / c.sqrt()


def radial_centripetal_energy(rho_p: torch.Tensor, rho_q: torch.Tensor, c: torch.Tensor,
                              margin: float = 0.1) -> torch.Tensor:
    """max(0, |p|_H − |q|_H + margin) for a parent and a child of scaled radii ρ_p, ρ_q: it depends on radii only."""
    if _host_scalars(rho_p, rho_q, c):  # one radius per kind on the CPU: one node
        return _CentripetalEnergy.apply(rho_p, rho_q, c, margin)
    return torch.relu(radial_origin_distance(rho_p, c) - radial_origin_distance(rho_q, c) + margin)


class _CentripetalEnergy(torch.autograd.Function):
    """max(0, |p|_H − |q|_H + m), |x|_H = 2 artanh(ρ)/√c, for 0-d radii and curvature, in Python floats: ∂/∂ρ =
    ±2/(√c (1 − ρ²)) and ∂/∂c = −(|p|_H − |q|_H)/(2c) where the hinge is active."""

    @staticmethod
    def forward(ctx, rho_p: torch.Tensor, rho_q: torch.Tensor, c: torch.Tensor, margin: float) -> torch.Tensor:
        p, q, c_value = float(rho_p), float(rho_q), float(c)
        sqrt_c = math.sqrt(c_value)
        origin_p, origin_q = 2 * math.atanh(p) / sqrt_c, 2 * math.atanh(q) / sqrt_c
        value = origin_p - origin_q + margin
        ctx.slopes = (2 / (sqrt_c * (1 - p * p)), -2 / (sqrt_c * (1 - q * q)),
                      -(origin_p - origin_q) / (2 * c_value)) if value > 0 else (0.0, 0.0, 0.0)
        return rho_p.new_tensor(max(value, 0.0))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (*(grad * slope for slope in ctx.slopes), None)
