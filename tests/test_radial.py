"""The radial geometry (points r·u with unit u) equals the point geometry of `kernels` on the lifted points, in values
and gradients; its hand-written backward passes pass float64 gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from lathadapter.kernels import cone_energy, cone_exterior_angle, distance, expmap0, origin_distance
from lathadapter.kernels.hierarchy import centripetal_energy
from lathadapter.kernels.radial import (
    half_aperture,
    log1p,
    radial_centripetal_energy,
    radial_cone_energy,
    radial_distance,
    radial_distance_fixed,
    radial_exterior_angle,
    radial_origin_distance,
    scaled_radius,
)


def directions(n: int, dim: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1)


def lifted_pairs(dtype: torch.dtype, n: int = 40):
    """Pairs of lifted unit vectors, some of them with close or opposite directions, and the lift's parameters."""
    u, v = directions(n, 6, 0, dtype), directions(n, 6, 1, dtype)
    v[:5] = F.normalize(u[:5] + 1e-2 * v[:5], dim=-1)  # close directions
    v[5:8] = -u[5:8]  # opposite directions
    c = torch.tensor(1.7, dtype=dtype, requires_grad=True)
    scales = torch.tensor([0.4, 0.9], dtype=dtype, requires_grad=True)
    return u, v, c, scales


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_scaled_radius_is_that_of_the_exponential_map(dtype: torch.dtype) -> None:
    c = torch.tensor(2.5, dtype=dtype)
    u = directions(5, 4, 2, dtype)
    for scale in (0.01, 0.5, 3.0, 20.0):  # the last two are projected onto the ball's margin
        s = torch.tensor(scale, dtype=dtype)
        expected = expmap0(s * u, c).norm(dim=-1) * c.sqrt()
        torch.testing.assert_close(scaled_radius(s, c).expand(5), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_values_and_gradients_equal_the_point_geometry(dtype: torch.dtype) -> None:
    """In float32 the close pairs are left out: a cosine near 1 carries the documented rounding of the radial form.
    Opposite directions put arccos at ±1, where rounding of 1e-16 becomes 1e-8."""
    tol = {"rtol": 1e-7, "atol": 1e-7} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 2e-5}
    u, v, c, scales = lifted_pairs(dtype)
    if dtype == torch.float32:
        u, v = u[5:], v[5:]
    cosine = (u * v).sum(-1)

    def point_terms():
        a, b = expmap0(scales[0] * u, c), expmap0(scales[1] * v, c)
        return [distance(a, b, c), cone_exterior_angle(a, b, c), cone_energy(a, b, c, 0.1, 1.0),
                cone_energy(b, a, c, 0.3, 0.5), origin_distance(a, c), centripetal_energy(b, a, c, 0.1)]

    def radial_terms():
        rho = scaled_radius(scales, c)
        return [radial_distance(rho[0], rho[1], cosine, c), radial_exterior_angle(rho[0], rho[1], cosine),
                radial_cone_energy(rho[0], rho[1], cosine, 0.1, 1.0),
                radial_cone_energy(rho[1], rho[0], cosine, 0.3, 0.5),
                radial_origin_distance(rho[0], c).expand(len(u)), radial_centripetal_energy(rho[1], rho[0], c, 0.1)]

    weights = torch.rand(len(u), generator=torch.Generator().manual_seed(3), dtype=dtype)
    # The exterior angle is arccos(x) with x = −1 exactly for opposite directions, where arccos has no derivative:
    # whether rounding lands on −1 or just inside decides the point form's gradient there, so the angle terms'
    # gradients are compared away from those pairs (their values are compared everywhere).
    regular = weights * (cosine > -1 + 1e-6)
    for term, (expected, actual) in enumerate(zip(point_terms(), radial_terms(), strict=True)):
        torch.testing.assert_close(actual.expand_as(expected), expected, **tol)
        w = regular if term in (1, 2, 3) else weights
        grads_expected = torch.autograd.grad((w * expected).sum(), (c, scales), retain_graph=True)
        grads_actual = torch.autograd.grad((w * actual.expand_as(expected)).sum(), (c, scales), retain_graph=True)
        for e, a in zip(grads_expected, grads_actual, strict=True):
            torch.testing.assert_close(a, e, **tol)


def test_gradients_reach_the_directions_as_through_the_points() -> None:
    """On the unit sphere of directions (the tangential part of the gradient), the radial form's gradient equals the
    gradient through the lifted points."""
    dtype = torch.float64
    u, v, c, scales = lifted_pairs(dtype)
    keep = slice(8, None)  # generic pairs: arccos is not at ±1
    u, v = u[keep].clone().requires_grad_(), v[keep].clone().requires_grad_()
    a, b = expmap0(scales[0] * u, c), expmap0(scales[1] * v, c)
    rho = scaled_radius(scales, c)
    cosine = (u * v).sum(-1)
    through_points = distance(a, b, c) + cone_exterior_angle(a, b, c) + cone_exterior_angle(b, a, c)
    radial = (radial_distance(rho[0], rho[1], cosine, c) + radial_exterior_angle(rho[0], rho[1], cosine)
              + radial_exterior_angle(rho[1], rho[0], cosine))
    expected = torch.autograd.grad(through_points.sum(), (u, v))
    actual = torch.autograd.grad(radial.sum(), (u, v))
    for point, g_expected, g_actual in zip((u, v), expected, actual, strict=True):
        torch.testing.assert_close(tangential(g_actual, point), tangential(g_expected, point), rtol=1e-7, atol=1e-9)


def tangential(gradient: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """The part of a gradient tangent to the unit sphere at `point`."""
    return gradient - (gradient * point).sum(-1, keepdim=True) * point


@pytest.mark.parametrize("radii_shape", [(), (4, 1)], ids=["scalar-radii", "broadcast-radii"])
def test_float64_gradcheck_of_the_hand_written_backward(radii_shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(4)
    cosine = (torch.rand(4, 5, generator=generator, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    rho_a = (torch.rand(radii_shape, generator=generator, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    rho_b = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    c = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    assert gradcheck(radial_distance, (rho_a, rho_b, cosine, c))
    assert gradcheck(radial_exterior_angle, (rho_a, rho_b, cosine))
    assert gradcheck(radial_exterior_angle, (rho_b, rho_a, cosine))


@pytest.mark.parametrize("node", [True, False], ids=["node", "autograd"])
@pytest.mark.parametrize("radii_shape", [(), (4, 1)], ids=["scalar-radii", "broadcast-radii"])
def test_the_fixed_shape_distance_is_the_point_distance_and_passes_gradcheck(radii_shape: tuple[int, ...],
                                                                             node: bool) -> None:
    """`radial_distance_fixed` (autograd on the radii; the [B, C] work as a node with a hand-written backward, or in
    plain autograd) equals the Poincaré distance of the lifted points ρ/√c · u in float64, in value and in the
    gradients w.r.t. the radii, the curvature and the directions (tangentially), and passes float64 gradcheck."""
    generator = torch.Generator().manual_seed(5)
    u, v = directions(4, 6, 8, torch.float64), directions(5, 6, 9, torch.float64)
    rho_a = (torch.rand(radii_shape, generator=generator, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    rho_b = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    c = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    u.requires_grad_()
    cosine = u @ v.t()
    fixed = radial_distance_fixed(rho_a, rho_b, cosine, c, node)
    points_a = (rho_a.expand(4, 1) / c.sqrt()) * u  # radius ρ/√c: scaled radius ρ
    points_b = (rho_b / c.sqrt()) * v
    expected = distance(points_a[:, None, :], points_b[None, :, :], c)
    torch.testing.assert_close(fixed, expected, rtol=1e-10, atol=1e-12)
    weights = torch.rand(4, 5, generator=generator, dtype=torch.float64)
    got = torch.autograd.grad((weights * fixed).sum(), (rho_a, rho_b, c, u))
    want = torch.autograd.grad((weights * expected).sum(), (rho_a, rho_b, c, u))
    for g, w in zip(got[:3], want[:3], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(tangential(got[3], u), tangential(want[3], u), rtol=1e-9, atol=1e-11)
    cosine = (torch.rand(4, 5, generator=generator, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    assert gradcheck(lambda *t: radial_distance_fixed(*t, node), (rho_a, rho_b, cosine, c))


@pytest.mark.parametrize("node", [True, False], ids=["node", "autograd"])
def test_the_fixed_shape_distance_vmaps_over_stacked_runs(node: bool) -> None:
    """Under `torch.func.vmap` over runs (each its own 0-d radii, cosines and curvature), each run's distance and
    gradients are those of the run alone."""
    generator = torch.Generator().manual_seed(6)
    rho = (torch.rand(3, 2, generator=generator, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    cosine = (torch.rand(3, 4, 5, generator=generator, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    c = torch.tensor([0.7, 1.3, 2.0], dtype=torch.float64, requires_grad=True)
    stacked = torch.func.vmap(lambda r, cos, cc: radial_distance_fixed(r[0], r[1], cos, cc, node))(rho, cosine, c)
    stacked_grads = torch.autograd.grad(stacked.square().sum(), (rho, cosine, c))
    for run in range(3):
        alone = radial_distance(rho[run, 0], rho[run, 1], cosine[run], c[run])
        torch.testing.assert_close(stacked[run], alone, rtol=1e-12, atol=1e-12)
        grads = torch.autograd.grad(alone.square().sum(), (rho, cosine, c))
        for g_stacked, g_alone in zip(stacked_grads, grads, strict=True):
            torch.testing.assert_close(g_stacked[run], g_alone[run], rtol=1e-10, atol=1e-12)


def test_the_cone_energy_of_two_scalar_radii_is_the_composed_one_and_passes_gradcheck() -> None:
    """With two 0-d radii on the CPU the cone energy is one node (floats for the coefficients and ψ): its value and
    gradients equal the energy composed of the exterior angle and ψ over radius vectors of one element each, and
    float64 central differences."""
    generator = torch.Generator().manual_seed(7)
    uniform = lambda low, high: torch.rand(20, generator=generator, dtype=torch.float64) * (high - low) + low  # noqa: E731
    # ψ(0.45) = 1.09 with K = 0.5: children near the parent's direction lie inside its cone (Ξ < 0.9), the rest
    # outside (Ξ > 2)
    cosine = torch.cat([uniform(0.97, 0.995), uniform(-0.9, 0.5)]).requires_grad_()
    rho_p = torch.tensor(0.45, dtype=torch.float64, requires_grad=True)
    rho_q = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    K, kappa = 0.5, 1.0
    energy = radial_cone_energy(rho_p, rho_q, cosine, K, kappa)
    composed = torch.relu(radial_exterior_angle(rho_p.view(1), rho_q.view(1), cosine)
                          - kappa * torch.asin(K * (1 - rho_p * rho_p) / rho_p))  # ψ = arcsin(K (1 − ρ²)/ρ) < π/2
    active = energy.detach() > 0
    assert 0 < int(active.sum()) < len(cosine) and float(composed.detach()[~active].abs().max()) == 0.0
    assert float(composed.detach()[active].min()) > 1e-3  # no edge at the hinge's kink
    torch.testing.assert_close(energy, composed, rtol=1e-12, atol=1e-12)
    weights = torch.rand(40, generator=generator, dtype=torch.float64)
    expected = torch.autograd.grad((composed * weights).sum(), (rho_p, rho_q, cosine))
    actual = torch.autograd.grad((energy * weights).sum(), (rho_p, rho_q, cosine))
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    assert gradcheck(lambda p, q, x: radial_cone_energy(p, q, x, K, kappa), (rho_p, rho_q, cosine))


@pytest.mark.parametrize("rho_q", [0.3, 0.8], ids=["active", "inactive"])
def test_the_centripetal_hinge_of_scalar_radii_is_the_composed_one(rho_q: float) -> None:
    """With 0-d radii and curvature on the CPU the centripetal hinge is one node of floats: its value and gradients
    equal the hinge composed over one-element tensors, |x|_H = 2 artanh(ρ)/√c re-stated here, and float64 central
    differences."""
    rho_p = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    child = torch.tensor(rho_q, dtype=torch.float64, requires_grad=True)
    c = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    energy = radial_centripetal_energy(rho_p, child, c, 0.2)
    composed = torch.relu(2 * torch.atanh(rho_p.view(1)) / c.sqrt() - 2 * torch.atanh(child.view(1)) / c.sqrt() + 0.2)
    assert energy.dim() == 0 and (float(energy.detach()) > 0) == (rho_q == 0.3)  # a parent farther out than its child
    torch.testing.assert_close(energy, composed[0], rtol=1e-12, atol=0.0)
    for a, e in zip(torch.autograd.grad(energy, (rho_p, child, c)), torch.autograd.grad(composed[0], (rho_p, child, c)),
                    strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    assert gradcheck(lambda p, q, k: radial_centripetal_energy(p, q, k, 0.2), (rho_p, child, c))


def test_degenerate_pairs_give_zero_angle_and_finite_gradients() -> None:
    rho = torch.tensor([0.0, 0.5], requires_grad=True)
    cosine = torch.tensor([0.3, 1.0], requires_grad=True)  # parent at the origin; child on the parent
    angle = radial_exterior_angle(rho[0], rho[0] + 0.2, cosine[:1])
    same = radial_exterior_angle(rho[1], rho[1], cosine[1:])
    assert float(angle.detach()) == 0.0 and float(same.detach()) == 0.0
    (angle + same).sum().backward()
    assert torch.isfinite(rho.grad).all() and torch.isfinite(cosine.grad).all()


@pytest.mark.parametrize(("dtype", "ulps"), [(torch.float32, 2), (torch.float64, 3)])
def test_the_vectorised_log1p_is_within_a_few_ulps_of_the_exact_value(dtype: torch.dtype, ulps: int) -> None:
    """`radial.log1p` on x ≥ 0 from 1e-30 (where 1 + x rounds to 1) to 1e3 and at 0, against Python's `math.log1p` of
    the same (rounded) inputs: relative error within a few units of the dtype's last place."""
    x = torch.cat([torch.zeros(1, dtype=torch.float64), torch.logspace(-30, 3, 20001, dtype=torch.float64)]).to(dtype)
    exact = torch.tensor([math.log1p(value) for value in x.tolist()], dtype=torch.float64)
    got = log1p(x).double()
    assert got[0] == 0
    relative = ((got[1:] - exact[1:]).abs() / exact[1:]).max()
    assert relative <= ulps * torch.finfo(dtype).eps


@pytest.mark.parametrize("radii_shape", [(), (4, 1)], ids=["scalar-radii", "broadcast-radii"])
@pytest.mark.parametrize(("rho_a", "rho_b"), [(0.0, 0.4), (0.4, 0.0), (1e-6, 0.4), (5e-4, 3e-4), (2e-3, 0.7)])
def test_radius_gradients_at_and_near_the_origin_match_finite_differences(radii_shape: tuple[int, ...], rho_a: float,
                                                                          rho_b: float) -> None:
    """At ρ = 0 the two-reduction form of the radii's gradients divides by ρ (a ZeroDivisionError with one radius per
    kind, NaN with vectors; lr=1e6 reached it): against float64 finite differences (one-sided at 0) of the distance
    restated as arcosh(1 + δ), δ = 2W/((1 − ρ_a²)(1 − ρ_b²)), W = (ρ_a − ρ_b)² + 2ρ_aρ_b(1 − cos)."""
    generator = torch.Generator().manual_seed(5)
    cosine = torch.rand(4, 3, generator=generator, dtype=torch.float64) * 1.8 - 0.9
    weights = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    c = 1.3

    def restated(a: float, b: float) -> float:
        w = (a - b) ** 2 + 2 * a * b * (1 - cosine)
        delta = 2 * w / ((1 - a * a) * (1 - b * b))  # arcosh(1 + δ) as log1p: 1 + δ would round away small δ
        return float((weights * torch.log1p(delta + torch.sqrt(delta * (delta + 2))) / math.sqrt(c)).sum())

    def derivative(a: float, b: float, along: int) -> float:
        h = 1e-7
        step = (h, 0.0) if along == 0 else (0.0, h)
        at = a if along == 0 else b
        if at == 0:
            return (restated(a + step[0], b + step[1]) - restated(a, b)) / h
        return (restated(a + step[0], b + step[1]) - restated(a - step[0], b - step[1])) / (2 * h)

    a = torch.full(radii_shape, rho_a, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(rho_b, dtype=torch.float64, requires_grad=True)
    value = (weights * radial_distance(a, b, cosine, torch.tensor(c, dtype=torch.float64))).sum()
    grad_a, grad_b = torch.autograd.grad(value, (a, b))
    assert float(value) == pytest.approx(restated(rho_a, rho_b), rel=1e-12)
    assert float(grad_a.sum()) == pytest.approx(derivative(rho_a, rho_b, 0), rel=1e-6, abs=1e-6)
    assert float(grad_b) == pytest.approx(derivative(rho_a, rho_b, 1), rel=1e-6, abs=1e-6)


def test_the_half_aperture_of_a_float_radius_at_the_origin_is_a_right_angle() -> None:
    assert half_aperture(0.0, 0.1) == (math.pi / 2, 0.0)
