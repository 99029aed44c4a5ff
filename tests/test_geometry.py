"""The PyTorch reference geometry: geoopt agreement, hand-computed values, gyrovector identities, float64 gradcheck,
manifold properties (hypothesis), close-pair precision, brute-force loss oracles and the backend switch."""

from __future__ import annotations

import math

import geoopt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lathadapter import kernels
from lathadapter.kernels import (
    centripetal_energy,
    cone_energy,
    cone_exterior_angle,
    cone_half_aperture,
    distance,
    expmap0,
    logmap0,
    mobius_add,
    origin_distance,
    project,
)


def ball_points(n: int, dim: int, c: float, radius: torch.Tensor | float, seed: int,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """n points in random directions at `radius` × the ball's radius 1/√c."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    radius = torch.as_tensor(radius, dtype=torch.float64).reshape(-1, 1)
    return (direction * radius / math.sqrt(c)).to(dtype)


def random_radii(n: int, seed: int, high: float = 0.95) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.rand(n, generator=generator, dtype=torch.float64) * high


# --- agreement with geoopt's PoincareBall ---


@pytest.mark.parametrize("c", [0.3, 1.0, 4.0])
def test_matches_geoopt_in_float64_up_to_the_boundary(c: float) -> None:
    ball = geoopt.PoincareBall(c=torch.tensor(c, dtype=torch.float64))  # geoopt's default would round c to float32
    radii = torch.cat([random_radii(30, 0), torch.tensor([0.99, 0.999, 0.9999, 1 - 2e-5])])
    x = ball_points(len(radii), 7, c, radii, seed=1)
    y = ball_points(len(radii), 7, c, radii.flip(0), seed=2)
    v = torch.randn(len(radii), 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(distance(x, y, c), ball.dist(x, y), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(mobius_add(x, y, c), ball.mobius_add(x, y, project=False), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(expmap0(v, c), ball.expmap0(v), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(logmap0(x, c), ball.logmap0(x), rtol=1e-9, atol=1e-12)


def test_matches_geoopt_in_float32_inside_the_ball() -> None:
    c = 1.7
    ball = geoopt.PoincareBall(c=c)
    x = ball_points(64, 16, c, random_radii(64, 4, high=0.9), seed=5, dtype=torch.float32)
    y = ball_points(64, 16, c, random_radii(64, 6, high=0.9), seed=7, dtype=torch.float32)
    v = torch.randn(64, 16, generator=torch.Generator().manual_seed(8)) * 0.3
    torch.testing.assert_close(distance(x, y, c), ball.dist(x, y), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(mobius_add(x, y, c), ball.mobius_add(x, y, project=False), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(expmap0(v, c), ball.expmap0(v), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logmap0(x, c), ball.logmap0(x), rtol=1e-5, atol=1e-6)


# --- hand-computed values and identities ---


def test_distance_from_the_origin_by_hand() -> None:
    x = torch.tensor([[0.5, 0.0], [0.0, -0.25]], dtype=torch.float64)
    # c = 1: d(0, x) = 2 artanh(|x|); artanh(1/2) = ln(3)/2
    torch.testing.assert_close(origin_distance(x, 1.0), torch.tensor([math.log(3), 2 * math.atanh(0.25)],
                                                                     dtype=torch.float64))
    torch.testing.assert_close(distance(torch.zeros(2, 2, dtype=torch.float64), x, 1.0), origin_distance(x, 1.0))
    # c = 4 halves the ball: d(0, x) = (2/2) artanh(2 · 0.25)
    torch.testing.assert_close(origin_distance(x[1:], 4.0), torch.tensor([math.atanh(0.5)], dtype=torch.float64))


def test_distance_equals_the_mobius_form() -> None:
    """d(x, y) = (2/√c) artanh(√c |(−x) ⊕ y|), docs/method.md's second expression."""
    c = 2.5
    x = ball_points(20, 5, c, random_radii(20, 10), seed=11)
    y = ball_points(20, 5, c, random_radii(20, 12), seed=13)
    mobius = 2 / math.sqrt(c) * torch.atanh(math.sqrt(c) * mobius_add(-x, y, c).norm(dim=-1))
    torch.testing.assert_close(distance(x, y, c), mobius, rtol=1e-10, atol=1e-12)


def test_half_aperture_by_hand_and_under_rescaling() -> None:
    # unit ball, |p| = 1/2: ψ = asin(K (1 − 1/4) / (1/2)) = asin(0.15) for K = 0.1
    p = torch.tensor([[0.5, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(cone_half_aperture(p, 1.0, K=0.1), torch.tensor([math.asin(0.15)], dtype=torch.float64))
    # curvature c applies the formula to √c p: c = 4 with |p| = 1/4 is the same point of the unit ball
    torch.testing.assert_close(cone_half_aperture(p / 2, 4.0, K=0.1), torch.tensor([math.asin(0.15)],
                                                                                    dtype=torch.float64))
    # near the origin the cone is a half-space: ψ = π/2, in float32 too
    assert float(cone_half_aperture(p * 1e-3, 1.0)) == math.pi / 2
    assert float(cone_half_aperture(p.float() * 1e-3, 1.0)) == float(torch.tensor(math.pi / 2))


def test_exterior_angle_is_the_angle_to_the_gyro_difference() -> None:
    """Ξ(p, p ⊕ w) = angle(p, w) (left cancellation: (−p) ⊕ (p ⊕ w) = w), and Ganea's expanded formula agrees."""
    c = 1.8
    p = ball_points(40, 6, c, 0.2 + random_radii(40, 20, high=0.7), seed=21)
    w = ball_points(40, 6, c, 0.05 + random_radii(40, 22, high=0.5), seed=23)
    q = mobius_add(p, w, c)
    angle = torch.acos((p * w).sum(-1) / (p.norm(dim=-1) * w.norm(dim=-1)))
    torch.testing.assert_close(cone_exterior_angle(p, q, c), angle, rtol=1e-9, atol=1e-9)
    P, Q = p * math.sqrt(c), q * math.sqrt(c)
    pq, pp, qq = (P * Q).sum(-1), (P * P).sum(-1), (Q * Q).sum(-1)
    denominator = pp.sqrt() * (P - Q).norm(dim=-1) * (1 + pp * qq - 2 * pq).sqrt()
    ganea = torch.acos((pq * (1 + pp) - pp * (1 + qq)) / denominator)
    torch.testing.assert_close(cone_exterior_angle(p, q, c), ganea, rtol=1e-8, atol=1e-8)
    # energy: max(0, Ξ − κ ψ)
    expected = torch.relu(angle - 0.5 * cone_half_aperture(p, c, K=0.2))
    torch.testing.assert_close(cone_energy(p, q, c, K=0.2, kappa=0.5), expected, rtol=1e-9, atol=1e-9)


def test_cone_axis_and_its_opposite() -> None:
    p = torch.tensor([[0.3, 0.4]], dtype=torch.float64)
    outward, inward = 1.5 * p, 0.5 * p
    assert float(cone_exterior_angle(p, outward, 1.0)) < 1e-7  # on the cone's axis
    assert float(cone_energy(p, outward, 1.0)) == 0.0
    assert abs(float(cone_exterior_angle(p, inward, 1.0)) - math.pi) < 1e-7  # straight back towards the origin
    assert abs(float(cone_energy(p, inward, 1.0)) - (math.pi - math.asin(0.15))) < 1e-7  # |p| = 1/2: ψ = asin(0.15)


def test_degenerate_cone_pairs_are_zero_with_finite_gradients() -> None:
    """Ξ is undefined at q = p and at p = 0; both give 0, and gradients there stay finite."""
    p = torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.0, 0.0]], requires_grad=True)
    q = torch.tensor([[0.3, -0.2, 0.1], [0.2, 0.2, 0.0]], requires_grad=True)
    c = torch.tensor(1.3, requires_grad=True)
    energy = cone_energy(p, q, c)
    assert torch.equal(cone_exterior_angle(p, q, c), torch.zeros(2))
    energy.sum().backward()
    for grad in (p.grad, q.grad, c.grad):
        assert torch.isfinite(grad).all()


def test_project_keeps_points_at_the_documented_radius() -> None:
    x = torch.tensor([[3.0, 4.0], [0.1, 0.0]])
    projected = project(x, 4.0)
    assert torch.allclose(projected[0].norm(), torch.tensor((1 - 4e-3) / 2))
    assert torch.equal(projected[1], x[1])  # inside: untouched
    assert torch.allclose(project(x.double(), 4.0)[0].norm(), torch.tensor((1 - 1e-5) / 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="eps"):
        project(x, 1.0, eps=1.5)


# --- precision ---


def test_close_pairs_keep_their_precision_in_float32() -> None:
    """At separations of 1e-5 the expanded |x|² + |y|² − 2<x,y> is noise in float32; the reference is not."""
    c = 1.0
    x = ball_points(16, 32, c, 0.6, seed=30, dtype=torch.float32)
    step = ball_points(16, 32, c, 1e-5, seed=31, dtype=torch.float32)
    y = x + step
    truth = distance(x.double(), y.double(), c)
    torch.testing.assert_close(distance(x, y, c).double(), truth, rtol=1e-3, atol=0)
    expanded = ((x * x).sum(-1) + (y * y).sum(-1) - 2 * (x * y).sum(-1)).clamp_min(0)
    naive = torch.acosh(1 + 2 * c * expanded / ((1 - c * (x * x).sum(-1)) * (1 - c * (y * y).sum(-1))))
    assert ((naive.double() - truth).abs() / truth).max() > 0.1  # what the direct sums avoid


# --- gradients ---


def test_float64_gradcheck_of_distances_and_cone_energy() -> None:
    c = torch.tensor(1.4, dtype=torch.float64, requires_grad=True)
    x = ball_points(5, 4, 1.4, random_radii(5, 50, high=0.9), seed=51).requires_grad_()
    y = ball_points(6, 4, 1.4, random_radii(6, 52, high=0.9), seed=53)
    y[2] = x[1].detach() + 1e-4  # a close pair takes the direct-sum path
    y.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, k: distance(a, b[:5], k), (x, y, c))
    assert torch.autograd.gradcheck(lambda a, k: origin_distance(a, k), (x, c))
    # cone energy away from its kinks: children roughly opposite their parents, so E > 0 everywhere
    p = ball_points(5, 4, 1.4, 0.3 + random_radii(5, 54, high=0.5), seed=55).requires_grad_()
    q = (-0.8 * p.detach() + 0.05 * ball_points(5, 4, 1.4, 1.0, seed=56)).requires_grad_()
    assert (cone_energy(p, q, c) > 0.1).all()
    assert torch.autograd.gradcheck(lambda a, b, k: cone_energy(a, b, k, K=0.1, kappa=1.0), (p, q, c))


def test_gradients_are_finite_at_the_origin_at_coincident_points_and_at_the_boundary() -> None:
    c = torch.tensor(2.0, requires_grad=True)
    x = torch.zeros(3, 4)
    x[1, 0] = (1 - 1e-7) / math.sqrt(2.0)  # at the boundary in float32
    x[2] = 0.1
    x.requires_grad_()
    terms = [
        distance(x, x.detach().clone(), c),  # coincident pairs
        distance(x, torch.zeros(4), c),
        origin_distance(x, c),
        expmap0(x, c),
        logmap0(x, c),
        cone_energy(x, x.flip(0), c),
        cone_half_aperture(x, c),
    ]
    for term in terms:
        assert torch.isfinite(term).all()
        grads = torch.autograd.grad(term.sum(), (x, c), allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads)
    # exp0 at the origin is the identity to first order
    v = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    jacobian = torch.autograd.functional.jacobian(lambda a: expmap0(a, 1.0), v)
    torch.testing.assert_close(jacobian.reshape(3, 3), torch.eye(3, dtype=torch.float64))


# --- manifold properties (hypothesis) ---

curvatures = st.floats(0.1, 10.0)
radii = st.one_of(st.floats(0.0, 0.999), st.sampled_from([0.0, 0.9999, 1 - 1e-6, 1 - 1e-9]))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), c=curvatures, r1=radii, r2=radii, r3=radii, dim=st.integers(1, 8))
def test_symmetry_zero_self_distance_and_triangle_inequality(seed: int, c: float, r1: float, r2: float, r3: float,
                                                             dim: int) -> None:
    x, y, z = (ball_points(1, dim, c, r, seed=seed + k)[0] for k, r in enumerate((r1, r2, r3)))
    assert distance(x, y, c) == distance(y, x, c)
    assert distance(x, x, c) == 0
    dxy, dyz, dxz = distance(x, y, c), distance(y, z, c), distance(x, z, c)
    assert dxz <= dxy + dyz + 1e-9 * (1 + dxy + dyz)
    x32, y32 = x.float(), y.float()
    assert distance(x32, y32, c) == distance(y32, x32, c)
    assert distance(x32, x32, c) == 0


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), c=curvatures, size=st.floats(0.0, 5.0), r=st.floats(0.0, 1 - 1e-5))
def test_exp_and_log_maps_invert_each_other(seed: int, c: float, size: float, r: float) -> None:
    v = ball_points(1, 5, 1.0, 1.0, seed=seed) * size / math.sqrt(c)  # √c |v| = size
    torch.testing.assert_close(logmap0(expmap0(v, c), c), v, rtol=1e-7, atol=1e-9)
    x = ball_points(1, 5, c, r, seed=seed + 1)
    torch.testing.assert_close(expmap0(logmap0(x, c), c), x, rtol=1e-9, atol=1e-12)
    v32 = (v * min(1.0, 2.0 / max(size, 1e-9))).float()  # float32 round trip for √c |v| ≤ 2
    torch.testing.assert_close(logmap0(expmap0(v32, c), c), v32, rtol=1e-4, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), c=curvatures, r1=radii, r2=radii, coincide=st.booleans())
def test_no_nan_or_inf_in_values_or_gradients_anywhere_inside(seed: int, c: float, r1: float, r2: float,
                                                              coincide: bool) -> None:
    x = ball_points(3, 6, c, [r1, r2, 0.0], seed=seed, dtype=torch.float32).requires_grad_()
    y = (x.detach().clone() if coincide else ball_points(3, 6, c, [r2, r1, r1], seed=seed + 9,
                                                            dtype=torch.float32)).requires_grad_()
    curvature = torch.tensor(c, requires_grad=True)
    values = [
        distance(x, y, curvature),
        origin_distance(x, curvature),
        expmap0(x, curvature),
        logmap0(x, curvature),
        mobius_add(x, y, curvature),
        cone_energy(x, y, curvature),
        cone_half_aperture(x, curvature),
        centripetal_energy(x, y, curvature),
    ]
    for value in values:
        assert torch.isfinite(value).all()
        for grad in torch.autograd.grad(value.sum(), (x, y, curvature), allow_unused=True):
            assert grad is None or torch.isfinite(grad).all()


# --- inputs and the backend switch ---


def test_bad_inputs_get_errors_naming_them() -> None:
    x = torch.rand(4, 3) * 0.1
    with pytest.raises(ValueError, match="curvature"):
        distance(x, x, -1.0)
    with pytest.raises(ValueError, match="curvature"):
        distance(x, x, torch.ones(2))


def test_backend_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels.dispatch, "_selected", None)
    monkeypatch.setenv("LATHADAPTER_KERNELS", "torch")
    assert kernels.get_backend() == "torch"
    monkeypatch.setenv("LATHADAPTER_KERNELS", "cuda")
    with pytest.raises(ValueError, match="LATHADAPTER_KERNELS.*auto, triton, torch"):
        kernels.get_backend()
    monkeypatch.delenv("LATHADAPTER_KERNELS")
    assert kernels.get_backend() == "auto"
    with pytest.raises(ValueError, match="valid backends: auto, triton, torch"):
        kernels.set_backend("gpu")
    with kernels.backend("torch"):
        assert kernels.get_backend() == "torch"
        with kernels.backend("triton"):
            assert kernels.get_backend() == "triton"
        assert kernels.get_backend() == "torch"
    assert kernels.get_backend() == "auto"
    x = torch.rand(3, 4) * 0.1
    assert not kernels.dispatch.use_triton(x)  # auto on the CPU: the reference
    with kernels.backend("triton"), pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        kernels.dispatch.use_triton(x.double())


def test_forcing_triton_on_the_cpu_without_the_interpreter_says_how_to_enable_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("triton")
    from lathadapter.kernels import triton_math

    monkeypatch.setattr(triton_math, "INTERPRETED", False)
    x = torch.rand(3, 4) * 0.1
    with kernels.backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.dispatch.use_triton(x)
