"""The Triton kernels against the PyTorch reference (evaluated in float64 as the oracle): forward values and the
gradients w.r.t. points, weights and curvature, on shapes that cross block edges, with G > 1 and D not a power of 2.

On a machine without a GPU the kernels run in the Triton interpreter, which needs TRITON_INTERPRET=1 before triton
is first imported; tests/conftest.py imports open_clip, which imports triton. So unless this process was started
with TRITON_INTERPRET=1 (or has CUDA), the kernel cases are skipped here and `test_kernel_cases_in_the_interpreter`
reruns this file in a child pytest process that has it.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lathadapter import kernels
from lathadapter.kernels.geometry import pairwise_distance_reference
from lathadapter.kernels.hierarchy import edge_energy_reference, separation_loss_reference

pytest.importorskip("triton")

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETER or not torch.cuda.is_available() else "cuda"
RUNNABLE = INTERPRETER or DEVICE == "cuda"
kernel_case = pytest.mark.skipif(not RUNNABLE, reason="runs in the TRITON_INTERPRET=1 child process of "
                                                      "test_kernel_cases_in_the_interpreter")
# Triton computes in float32; the oracle is the reference in float64 on the same (float32) points.
RTOL = 1e-5  # values
GRAD_TOL = 5e-5  # gradients: max |triton − oracle| ≤ GRAD_TOL × max |oracle| (+ RTOL elementwise)


def ball_points(*shape: int, c: float, high: float = 0.95, seed: int = 0) -> torch.Tensor:
    """Float32 points in random directions at random radii below `high` / √c."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(*shape, generator=generator)
    radius = torch.rand(*shape[:-1], 1, generator=generator) * high / math.sqrt(c)
    return (direction / direction.norm(dim=-1, keepdim=True) * radius).to(DEVICE)


def assert_grads_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    expected = expected.to(actual.device, torch.float64)
    scale = float(expected.abs().max()) + 1e-12
    torch.testing.assert_close(actual.double(), expected, rtol=RTOL, atol=GRAD_TOL * scale)


def run_both(fn, inputs: list[torch.Tensor], c: float, upstream: torch.Tensor | None = None):
    """(value, grads) of fn(*inputs, curvature) on the Triton path and on the float64 reference path."""
    results = []
    for backend, dtype in (("triton", None), ("torch", torch.float64)):
        leaves = [t.detach().to(dtype or t.dtype).requires_grad_(t.is_floating_point()) for t in inputs]
        curvature = torch.tensor(c, dtype=dtype or torch.float32, device=DEVICE, requires_grad=True)
        with kernels.backend(backend):
            value = fn(*leaves, curvature)
        weight = torch.ones_like(value) if upstream is None else upstream.to(value)
        targets = [t for t in leaves if t.requires_grad] + [curvature]
        grads = torch.autograd.grad((value * weight).sum(), targets)
        results.append((value.detach(), grads))
    return results


@pytest.mark.skipif(RUNNABLE, reason="the kernel cases run in this process")
def test_kernel_cases_in_the_interpreter() -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).resolve())]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root, timeout=900)
    output = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 8, output


if RUNNABLE:
    import triton
    import triton.language as tl

    from lathadapter.kernels.triton_math import acos, asin, log1p

    @triton.jit
    def elementary_kernel(x_ptr, out_ptr, n, FN: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offsets, mask=offsets < n, other=0.0)
        y = acos(x) if FN == 0 else asin(x) if FN == 1 else log1p(x)
        tl.store(out_ptr + offsets, y, mask=offsets < n)


@kernel_case
def test_elementary_functions_without_libdevice() -> None:
    unit = torch.linspace(-1, 1, 4001, dtype=torch.float64)
    near_one = torch.logspace(-7, -1, 50, dtype=torch.float64)
    unit = torch.cat([unit, 1 - near_one, -1 + near_one])
    grow = torch.logspace(-12, 7, 400, dtype=torch.float64)
    log_inputs = torch.cat([grow, -grow[grow < 0.99], torch.zeros(1, dtype=torch.float64)])
    for fn, inputs, reference, tolerance in ((0, unit, torch.acos, 4e-7), (1, unit, torch.asin, 4e-7),
                                             (2, log_inputs, torch.log1p, 3e-7)):
        x = inputs.float().to(DEVICE)
        out = torch.empty_like(x)
        elementary_kernel[(triton.cdiv(len(x), 1024),)](x, out, len(x), FN=fn, BLOCK=1024)
        truth = reference(x.double().cpu())
        scale = truth.abs().clamp_min(1e-30) if fn == 2 else 1.0  # log1p: relative; acos, asin: absolute
        error = (out.double().cpu() - truth).abs() / scale
        assert float(error.max()) < tolerance, (fn, float(error.max()))


@kernel_case
@pytest.mark.parametrize("shape", [(3, 37, 21, 45), (1, 16, 33, 20)])
def test_pairwise_distance_forward_and_gradients(shape: tuple[int, int, int, int]) -> None:
    groups, m, n, dim = shape
    c = 1.6
    x = ball_points(groups, m, dim, c=c, seed=1)
    y = ball_points(groups, n, dim, c=c, seed=2)
    y[0, 3] = x[0, 5]  # coincident: exactly 0 (the tile's direct-sum path)
    y[-1, 4] = x[-1, 0] + 1e-4 / math.sqrt(dim)  # close pair
    x[0, 1] = 0.0  # the origin
    upstream = torch.randn(groups, m, n, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    (value, grads), (truth, truth_grads) = run_both(kernels.pairwise_distance, [x, y], c, upstream)
    assert value.dtype == torch.float32 and value.shape == (groups, m, n)
    torch.testing.assert_close(value.double(), truth.to(value.device), rtol=RTOL, atol=1e-5)
    assert value[0, 5, 3] == 0
    for grad, truth_grad in zip(grads, truth_grads, strict=True):
        assert_grads_close(grad, truth_grad)


@kernel_case
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pairwise_distance_in_half_precision(dtype: torch.dtype) -> None:
    c = 0.9
    x = ball_points(2, 20, 24, c=c, high=0.9, seed=4).to(dtype).requires_grad_()
    y = ball_points(2, 19, 24, c=c, high=0.9, seed=5).to(dtype).requires_grad_()
    with kernels.backend("triton"):
        out = kernels.pairwise_distance(x, y, c)
    assert out.dtype == dtype
    truth = pairwise_distance_reference(x.double(), y.double(), c)  # the same half-precision points, in float64
    step = torch.finfo(dtype).eps
    torch.testing.assert_close(out.double(), truth, rtol=2 * step, atol=step)
    grad_x, grad_y = torch.autograd.grad(out.float().sum(), (x, y))
    truth_x, truth_y = torch.autograd.grad(truth.sum(), (x, y))
    for grad, truth_grad in ((grad_x, truth_x), (grad_y, truth_y)):
        assert grad.dtype == dtype
        torch.testing.assert_close(grad.double(), truth_grad.double(), rtol=4 * step, atol=4 * step)


@kernel_case
def test_leading_dims_become_groups() -> None:
    c = 2.2
    x = ball_points(2, 3, 17, 12, c=c, seed=6)
    y = ball_points(18, 12, c=c, seed=7)  # broadcast against every group
    with kernels.backend("triton"):
        out = kernels.pairwise_distance(x, y, c)
    assert out.shape == (2, 3, 17, 18)
    truth = pairwise_distance_reference(x.double(), y.double(), c)
    torch.testing.assert_close(out.double(), truth, rtol=RTOL, atol=1e-5)


@kernel_case
@pytest.mark.parametrize("masked", [False, True])
def test_separation_loss_forward_and_gradients(masked: bool) -> None:
    c = 1.3
    children = ball_points(37, 30, c=c, seed=8)
    parents = ball_points(21, 30, c=c, high=0.6, seed=9)
    positive = torch.randint(0, 21, (37,), generator=torch.Generator().manual_seed(10)).to(DEVICE)
    mask = None
    if masked:
        mask = torch.rand(21, generator=torch.Generator().manual_seed(11)).to(DEVICE) > 0.4
        mask[int(positive[0])] = True
    children[2] = parents[int(positive[2])]  # a child sitting on its parent

    def loss(x, y, curvature):
        return kernels.separation_loss(x, y, positive, curvature, margin=0.3, parent_mask=mask)

    (value, grads), (truth, truth_grads) = run_both(loss, [children, parents], c)
    assert value.dim() == 0 and float(truth) > 0
    torch.testing.assert_close(value.double(), truth.to(value.device), rtol=RTOL, atol=1e-6)
    for grad, truth_grad in zip(grads, truth_grads, strict=True):
        assert_grads_close(grad, truth_grad)
    # the reference path in float32 agrees too
    reference = separation_loss_reference(children, parents, positive, c, 0.3, mask)
    torch.testing.assert_close(value, reference, rtol=RTOL, atol=1e-6)


@kernel_case
def test_separation_loss_counts_children_without_negatives_as_zero() -> None:
    c = 1.0
    children = ball_points(5, 18, c=c, seed=12)
    parents = ball_points(3, 18, c=c, seed=13)
    positive = torch.tensor([0, 0, 1, 0, 0], device=DEVICE)
    only_first = torch.tensor([True, False, False], device=DEVICE)  # children of parent 0 have no negative
    with kernels.backend("triton"):
        value = kernels.separation_loss(children, parents, positive, c, margin=5.0, parent_mask=only_first)
    # only child 2 has a negative (parent 0), and with margin 5 its hinge is active: the mean is over all 5
    d = pairwise_distance_reference(children.double(), parents.double(), c)
    assert abs(float(value) - float(d[2, 1] - d[2, 0] + 5.0) / 5) < 1e-5


@kernel_case
@pytest.mark.parametrize("kind", ["cone", "centripetal"])
def test_edge_energy_forward_and_gradients(kind: str) -> None:
    c = 0.7
    parents = ball_points(19, 36, c=c, high=0.7, seed=14)
    children = ball_points(34, 36, c=c, seed=15)
    children[3] = parents[2]  # child on its parent: Ξ undefined, E = 0
    children[5] = 1.4 * parents[4]  # on the cone's axis
    weights = torch.rand(34, 19, generator=torch.Generator().manual_seed(16)).to(DEVICE).t()  # not contiguous

    def energy(p, q, w, curvature):
        return kernels.edge_energy(p, q, w, curvature, kind=kind, K=0.1, kappa=1.0, margin=0.2)

    (value, grads), (truth, truth_grads) = run_both(energy, [parents, children, weights], c)
    assert float(truth) > 0
    torch.testing.assert_close(value.double(), truth.to(value.device), rtol=RTOL, atol=1e-5)
    for grad, truth_grad in zip(grads, truth_grads, strict=True):
        assert_grads_close(grad, truth_grad)
    reference = edge_energy_reference(parents, children, weights, c, kind, 0.1, 1.0, 0.2)
    torch.testing.assert_close(value, reference, rtol=RTOL, atol=1e-4)


@kernel_case
def test_edge_energy_with_fixed_weights_leaves_them_without_gradient() -> None:
    c = 1.0
    parents = ball_points(4, 20, c=c, high=0.5, seed=17).requires_grad_()
    children = ball_points(23, 20, c=c, seed=18).requires_grad_()
    one_hot = torch.nn.functional.one_hot(torch.arange(23, device=DEVICE) % 4, 4).t().float()
    with kernels.backend("triton"):
        value = kernels.edge_energy(parents, children, one_hot, c, kind="cone")
    grad_p, grad_q = torch.autograd.grad(value, (parents, children))
    truth = edge_energy_reference(parents.double(), children.double(), one_hot.double(), c)
    truth_p, truth_q = torch.autograd.grad(truth, (parents, children))
    torch.testing.assert_close(value.double(), truth, rtol=RTOL, atol=1e-5)
    assert_grads_close(grad_p, truth_p)
    assert_grads_close(grad_q, truth_q)


@kernel_case
def test_gradients_stay_finite_at_the_origin_and_the_boundary() -> None:
    c = 3.0
    x = ball_points(20, 17, c=c, seed=19)
    x[0] = 0.0
    x[1] = x[1] / x[1].norm() * (1 - 1e-7) / math.sqrt(c)  # on the boundary in float32
    x[2] = x[1]
    x.requires_grad_()
    curvature = torch.tensor(c, device=DEVICE, requires_grad=True)
    weights = torch.rand(20, 20, generator=torch.Generator().manual_seed(20)).to(DEVICE)
    positive = torch.arange(20, device=DEVICE)
    with kernels.backend("triton"):
        terms = [
            kernels.pairwise_distance(x, x, curvature),
            kernels.separation_loss(x, x, positive, curvature),
            kernels.edge_energy(x, x, weights, curvature, kind="cone"),
            kernels.edge_energy(x, x, weights, curvature, kind="centripetal"),
        ]
    for term in terms:
        assert torch.isfinite(term).all()
        for grad in torch.autograd.grad(term.sum(), (x, curvature)):
            assert torch.isfinite(grad).all()
