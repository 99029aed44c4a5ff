"""The radial geometry (points r·u with unit u) equals the point geometry of `kernels` on the lifted points: the
distance in values and gradients (its hand-written backward passes float64 gradcheck), the exterior angle's pieces
that LatHAdapter's loss node uses in values (the node's gradients are checked in test_adapter_lathadapter)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from lathadapter.kernels import cone_exterior_angle, cone_half_aperture, distance, expmap0
from lathadapter.kernels.radial import (
    exterior_angle_coefficients,
    exterior_angle_forward,
    exterior_angle_pieces,
    half_aperture,
    radial_distance,
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


def exterior_angle(rho_p: torch.Tensor, rho_q: torch.Tensor, cosine: torch.Tensor) -> torch.Tensor:
    return exterior_angle_forward(exterior_angle_coefficients(rho_p, rho_q), rho_p * rho_p, cosine)[0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_values_and_gradients_equal_the_point_geometry(dtype: torch.dtype) -> None:
    """In float32 the close pairs are left out: a cosine near 1 carries the documented rounding of the radial form."""
    tol = {"rtol": 1e-7, "atol": 1e-7} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 2e-5}
    u, v, c, scales = lifted_pairs(dtype)
    if dtype == torch.float32:
        u, v = u[5:], v[5:]
    cosine = (u * v).sum(-1)
    a, b = expmap0(scales[0] * u, c), expmap0(scales[1] * v, c)
    rho = scaled_radius(scales, c)
    expected, actual = distance(a, b, c), radial_distance(rho[0], rho[1], cosine, c)
    torch.testing.assert_close(actual, expected, **tol)
    weights = torch.rand(len(u), generator=torch.Generator().manual_seed(3), dtype=dtype)
    grads_expected = torch.autograd.grad((weights * expected).sum(), (c, scales))
    grads_actual = torch.autograd.grad((weights * actual).sum(), (c, scales))
    for e, g in zip(grads_expected, grads_actual, strict=True):
        torch.testing.assert_close(g, e, **tol)
    with torch.no_grad():
        rho = scaled_radius(scales, c)
        for p, q, cos in ((a, b, cosine), (b, a, cosine)):
            rho_p, rho_q = (rho[0], rho[1]) if p is a else (rho[1], rho[0])
            torch.testing.assert_close(exterior_angle(rho_p, rho_q, cos), cone_exterior_angle(p, q, c), **tol)
        for radius in rho.tolist():  # the scalar half-aperture against the point form at that radius
            point = torch.tensor([[radius, 0.0]], dtype=torch.float64)
            assert half_aperture(radius, 0.1)[0] == pytest.approx(float(cone_half_aperture(point, 1.0, 0.1)))


def test_distance_gradients_reach_the_directions_as_through_the_points() -> None:
    """On the unit sphere of directions (the tangential part of the gradient), the radial distance's gradient equals
    the gradient through the lifted points."""
    dtype = torch.float64
    u, v, c, scales = lifted_pairs(dtype)
    u, v = u.clone().requires_grad_(), v.clone().requires_grad_()
    a, b = expmap0(scales[0] * u, c), expmap0(scales[1] * v, c)
    rho = scaled_radius(scales, c)
    expected = torch.autograd.grad(distance(a, b, c).sum(), (u, v))
    actual = torch.autograd.grad(radial_distance(rho[0], rho[1], (u * v).sum(-1), c).sum(), (u, v))
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


def test_degenerate_pairs_give_zero_angle_and_finite_gradient_pieces() -> None:
    # parent at the origin; child on the parent
    for rho_p, rho_q, cos in ((0.0, 0.2, 0.3), (0.5, 0.5, 1.0)):
        angle, saved = exterior_angle_forward(exterior_angle_coefficients(rho_p, rho_q), rho_p * rho_p,
                                              torch.tensor([cos]))
        assert float(angle) == 0.0
        assert all(torch.isfinite(piece).all() for piece in exterior_angle_pieces(torch.ones(1), saved))
