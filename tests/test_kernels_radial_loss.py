"""The Triton twin of LatHAdapter's loss stage (kernels/triton_radial_loss.py) against `fused_loss` evaluated in
float64 on the same float32 inputs: the loss, each part and the gradient w.r.t. every floating input; and LatHAdapter
under the kernels backend "triton" (every radius and hierarchy, the default fit) against `impl=reference`.

The kernel cases need CUDA or the Triton interpreter (TRITON_INTERPRET=1 before
triton is first imported; tests/conftest.py imports open_clip, which imports triton), so on a machine without a GPU
`test_kernel_cases_in_the_interpreter` reruns this file in a child pytest process that has it.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lathadapter.adapter.methods.lathadapter import fused
from lathadapter.adapter.methods.lathadapter.options import LatHAdapterOptions

pytest.importorskip("triton")

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETER or not torch.cuda.is_available() else "cuda"
RUNNABLE = INTERPRETER or DEVICE == "cuda"
kernel_case = pytest.mark.skipif(not RUNNABLE, reason="runs in the TRITON_INTERPRET=1 child process of "
                                                      "test_kernel_cases_in_the_interpreter")
RTOL = 1e-5  # values
GRAD_TOL = 5e-5  # gradients: max |triton − oracle| ≤ GRAD_TOL × max |oracle|
NAMES = ("image_class", "image_attribute", "class_attribute", "class_weights", "rho_categories", "rho_attributes",
         "rho_images", "c", "log_tau")
SCALARS = {"logit_scale": fused.LOGIT_SCALE, "lambda_hyp": 0.5, "lambda_hier": 0.7, "hier": "cone", "cone_k": 0.1,
           "cone_kappa": 1.0, "margin": 0.1, "margin_radial": 0.1, "tau_attr": 0.07}


def make_inputs(batch: int, classes: int, attributes: int, seed: int, *, c: float = 1.3, log_tau: float = -1.5,
                labels: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Float32 cosines in [−1, 1], softmax rows of weights, radii in (0.05, 0.95), and labels."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape: int, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator)

    inputs = {
        "image_class": uniform(batch, classes), "image_attribute": uniform(batch, attributes),
        "class_attribute": uniform(classes, attributes),
        "class_weights": torch.softmax(3 * torch.randn(classes, attributes, generator=generator), dim=-1),
        "rho_categories": uniform(classes, low=0.05, high=0.95),
        "rho_attributes": uniform(attributes, low=0.05, high=0.95),
        "rho_images": uniform(batch, low=0.05, high=0.95),
        "c": torch.tensor(c), "log_tau": torch.tensor(log_tau),
    }
    if labels is None:
        labels = torch.randint(0, classes, (batch,), generator=generator)
    return inputs, labels


def add_degenerate_pairs(inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
    """Cosines at ±1 and parent and child at equal radii in each edge set (images 0–2 have labels 0–2), and cosines
    at ±1 between images and categories away from the labels. No image sits on a category (d = 0 has no derivative).

    At cos = ±1 an active cone energy has Ξ = π and an infinite derivative in the cosine: the reference masks it to 0
    where the rounded N/√(WM) is exactly ±1 and gives a huge rounding-dependent value where it is not, so those pairs
    use dyadic radii (0.25, 0.5, 0.75), for which float64 computes ±1 exactly. The twin gives 0 there always."""
    s, a, q = inputs["image_class"], inputs["image_attribute"], inputs["class_attribute"]
    rho_c, rho_a, rho_v = inputs["rho_categories"], inputs["rho_attributes"], inputs["rho_images"]
    labels[:3] = torch.tensor([0, 1, 2])
    # category → image: equal radii at cos −1 (Ξ = π) and at cos 0.5; the child nearer the origin on the axis (Ξ = π)
    rho_c[0], rho_v[0], s[0, 0] = 0.5, 0.5, -1.0
    rho_c[1], rho_v[1], s[1, 1] = 0.75, 0.75, 0.5
    rho_c[2], rho_v[2], s[2, 2] = 0.5, 0.25, 1.0
    s[3, 5], s[4, 6] = 1.0, -1.0
    # attribute → image: on the parent (Ξ undefined, 0), equal radii opposite, child nearer and farther on the axis
    rho_a[0], a[5, 0] = rho_v[5], 1.0
    rho_a[1], rho_v[6], a[6, 1] = 0.5, 0.5, -1.0
    rho_a[2], rho_v[7], a[7, 2] = 0.5, 0.25, 1.0
    rho_a[3], rho_v[8], a[8, 3] = 0.25, 0.5, 1.0
    # category → attribute (categories 0–2 are present): on the parent, equal radii opposite, child nearer on the axis
    rho_a[4], q[0, 4] = rho_c[0], 1.0
    rho_a[5], q[1, 5] = rho_c[1], -1.0
    rho_a[6], q[2, 6] = 0.25, 1.0


def oracle(inputs: dict[str, torch.Tensor], labels: torch.Tensor, scalars: dict) -> tuple:
    """(loss, parts, grads) of `fused_loss` in float64, with LatHAdapterOptions built from the scalars."""
    leaves = {name: value.detach().double().requires_grad_() for name, value in inputs.items()}
    options = LatHAdapterOptions(**{key: value for key, value in scalars.items() if key != "logit_scale"})
    cosines = torch.cat([leaves["image_class"], leaves["image_attribute"]], dim=1)
    loss, parts = fused.fused_loss(cosines, leaves["class_attribute"], leaves["class_weights"],
                                   leaves["rho_categories"], leaves["rho_attributes"], leaves["rho_images"],
                                   leaves["c"], leaves["log_tau"], labels, options)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return loss.detach(), parts, grads


def triton_twin(inputs: dict[str, torch.Tensor], labels: torch.Tensor, scalars: dict) -> tuple:
    from lathadapter.kernels.triton_radial_loss import radial_loss_triton

    leaves = {name: value.detach().to(DEVICE).requires_grad_() for name, value in inputs.items()}
    loss, parts = radial_loss_triton(*leaves.values(), labels.to(DEVICE), **scalars)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return loss.detach(), parts, grads


def compare(inputs: dict[str, torch.Tensor], labels: torch.Tensor, scalars: dict) -> tuple:
    """Run both and check the loss, its parts and every gradient; returns both results."""
    truth = oracle(inputs, labels, scalars)
    result = triton_twin(inputs, labels, scalars)
    (loss, parts, grads), (true_loss, true_parts, true_grads) = result, truth
    assert loss.dtype == inputs["image_class"].dtype
    for value, expected in zip((loss, *parts), (true_loss, *true_parts), strict=True):
        assert not value.requires_grad
        torch.testing.assert_close(value.double().cpu(), expected.detach(), rtol=RTOL, atol=1e-7)
    for name, grad, expected in zip(NAMES, grads, true_grads, strict=True):
        expected = torch.zeros_like(inputs[name], dtype=torch.float64) if expected is None else expected
        grad = torch.zeros_like(expected) if grad is None else grad.double().cpu()
        assert torch.isfinite(grad).all(), name
        error = float((grad - expected).abs().max())
        scale = float(expected.abs().max())
        assert error <= GRAD_TOL * scale + 1e-12, f"{name}: max error {error:.3g}, max |oracle| {scale:.3g}"
    return result, truth


if RUNNABLE:
    import triton
    import triton.language as tl

    from lathadapter.kernels.triton_math import acos_from_complement, asin, atanh, log1p

    @triton.jit
    def elementary_kernel(x_ptr, aux_ptr, out_ptr, n, FN: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offsets, mask=offsets < n, other=0.0)
        aux = tl.load(aux_ptr + offsets, mask=offsets < n, other=0.0)
        if FN == 0:
            y = acos_from_complement(x, aux)
        elif FN == 1:
            y = atanh(x)
        elif FN == 3:
            y = asin(x)
        else:
            y = log1p(x)
        tl.store(out_ptr + offsets, y, mask=offsets < n)


@pytest.mark.skipif(RUNNABLE, reason="the kernel cases run in this process")
def test_kernel_cases_in_the_interpreter() -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).resolve())]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root, timeout=900)
    output = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 15, output


@pytest.mark.skipif(RUNNABLE, reason="checks the module where triton runs neither on a GPU nor interpreted")
def test_module_imports_and_refuses_cpu_tensors_without_the_interpreter() -> None:
    from lathadapter.kernels import triton_radial_loss

    assert not triton_radial_loss.INTERPRETED
    parameters = inspect.signature(triton_radial_loss.radial_loss_triton).parameters
    assert list(parameters)[:10] == [*NAMES, "labels"]
    assert all(parameters[key].kind is inspect.Parameter.KEYWORD_ONLY for key in SCALARS)
    inputs, labels = make_inputs(5, 3, 2, seed=0)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        triton_radial_loss.radial_loss_triton(*inputs.values(), labels, **SCALARS)
    with pytest.raises(ValueError, match="hier"):
        triton_radial_loss.radial_loss_triton(*inputs.values(), labels, **{**SCALARS, "hier": "tree"})


@kernel_case
@pytest.mark.parametrize("hier", ["cone", "triplet"])
@pytest.mark.parametrize("shape", [(37, 53, 17), (5, 3, 2)])
def test_loss_and_gradients_match_fused_loss(hier: str, shape: tuple[int, int, int]) -> None:
    inputs, labels = make_inputs(*shape, seed=1)
    (loss, parts, _), _ = compare(inputs, labels, {**SCALARS, "hier": hier})
    assert all(float(part) > 0 for part in parts)


@kernel_case
@pytest.mark.parametrize("hier", ["cone", "triplet"])
def test_degenerate_pairs_give_finite_matching_gradients(hier: str) -> None:
    inputs, labels = make_inputs(37, 53, 17, seed=2)
    add_degenerate_pairs(inputs, labels)
    compare(inputs, labels, {**SCALARS, "hier": hier, "margin_radial": 0.4})


@kernel_case
@pytest.mark.parametrize("hier", ["cone", "triplet"])
def test_cosines_next_to_plus_minus_one(hier: str) -> None:
    """One float32 step inside ±1, where Ξ's derivative in the cosine is ~1/sin ≈ 3000 times its usual size: the
    twin's cancellation-free forms keep it within the gradient tolerance of the largest entry."""
    inputs, labels = make_inputs(37, 53, 17, seed=7)
    below_one, above_minus_one = float(torch.tensor(1.0).nextafter(torch.tensor(0.0))), -1.0 + 2.0**-24
    labels[:2] = torch.tensor([0, 1])
    inputs["image_class"][0, 0], inputs["image_class"][1, 1] = below_one, above_minus_one
    inputs["image_class"][2, 3], inputs["image_class"][3, 4] = below_one, above_minus_one
    inputs["image_attribute"][4, 0], inputs["image_attribute"][5, 1] = below_one, above_minus_one
    inputs["class_attribute"][0, 2], inputs["class_attribute"][1, 3] = below_one, above_minus_one
    compare(inputs, labels, {**SCALARS, "hier": hier})


@kernel_case
def test_elementary_functions_without_libdevice() -> None:
    """asin and log1p written from sqrt, log and polynomials (the interpreter has no libdevice) against float64:
    absolute error for asin, relative for log1p (acos: `test_elementary_functions_added_for_the_loss`)."""
    unit = torch.linspace(-1, 1, 4001, dtype=torch.float64)
    near_one = torch.logspace(-7, -1, 50, dtype=torch.float64)
    unit = torch.cat([unit, 1 - near_one, -1 + near_one])
    grow = torch.logspace(-12, 7, 400, dtype=torch.float64)
    log_inputs = torch.cat([grow, -grow[grow < 0.99], torch.zeros(1, dtype=torch.float64)])
    for fn, inputs, reference, tolerance in ((3, unit, torch.asin, 4e-7), (4, log_inputs, torch.log1p, 3e-7)):
        x = inputs.float().to(DEVICE)
        out = torch.empty_like(x)
        elementary_kernel[(triton.cdiv(len(x), 1024),)](x, x, out, len(x), FN=fn, BLOCK=1024)
        truth = reference(x.double().cpu())
        scale = truth.abs().clamp_min(1e-30) if fn == 4 else 1.0
        error = (out.double().cpu() - truth).abs() / scale
        assert float(error.max()) < tolerance, (fn, float(error.max()))


@kernel_case
def test_elementary_functions_added_for_the_loss() -> None:
    """acos from x and 1 − |x| (exact complements near ±1), and artanh, against float64."""
    near = torch.logspace(-7, -1, 40, dtype=torch.float64)
    x = torch.cat([torch.linspace(-1, 1, 2001, dtype=torch.float64), 1 - near, -1 + near])
    x32 = x.float()
    complement = 1 - x32.double().abs()  # exact for float32 x
    out = torch.empty_like(x32, device=DEVICE)
    elementary_kernel[(triton.cdiv(len(x), 1024),)](x32.to(DEVICE), complement.float().to(DEVICE), out, len(x),
                                                    FN=0, BLOCK=1024)
    assert float((out.double().cpu() - torch.acos(x32.double())).abs().max()) < 4e-7
    y = torch.cat([torch.linspace(-0.999, 0.999, 2001), torch.logspace(-9, -1, 40)])
    out = torch.empty_like(y, device=DEVICE)
    elementary_kernel[(triton.cdiv(len(y), 1024),)](y.to(DEVICE), y.to(DEVICE), out, len(y), FN=1, BLOCK=1024)
    truth = torch.atanh(y.double())
    assert float(((out.double().cpu() - truth).abs() / truth.abs().clamp_min(1e-30)).max()) < 3e-7


@kernel_case
@pytest.mark.parametrize("lambdas", [(0.0, 0.7), (0.5, 0.0), (0.0, 0.0)], ids=["no-hyp", "no-hier", "ce-only"])
def test_switched_off_terms(lambdas: tuple[float, float]) -> None:
    lambda_hyp, lambda_hier = lambdas
    inputs, labels = make_inputs(37, 53, 17, seed=3)
    (_, parts, grads), _ = compare(inputs, labels, {**SCALARS, "lambda_hyp": lambda_hyp, "lambda_hier": lambda_hier})
    grad = dict(zip(NAMES, grads, strict=True))
    assert (float(parts[1]) > 0) == (lambda_hyp > 0 or lambda_hier > 0)  # hyp is evaluated with the distances
    assert (float(parts[2]) > 0) == (lambda_hier > 0)
    if lambda_hier == 0:  # as in fused_loss, nothing reaches the attribute side
        assert all(grad[name] is None for name in ("image_attribute", "class_attribute", "class_weights",
                                                   "rho_attributes"))
    if lambda_hyp == 0 and lambda_hier > 0:
        assert float(grad["log_tau"]) == 0.0
    if lambda_hyp == 0 and lambda_hier == 0:
        assert all(grad[name] is None for name in NAMES[4:])


@kernel_case
@pytest.mark.parametrize("hier", ["cone", "triplet"])
def test_finer_row_tiles(hier: str) -> None:
    """Tiles of 4 images (and 4 present categories) instead of 16, the variant benchmarks/radial_loss.py --row-tiles
    times on a GPU: more programs, more partial rows for the host to sum, the same loss and gradients."""
    from lathadapter.kernels.triton_radial_loss import row_tile

    inputs, labels = make_inputs(37, 53, 17, seed=8)
    with row_tile(4):
        compare(inputs, labels, {**SCALARS, "hier": hier})


@kernel_case
def test_the_backward_tiles_as_its_forward_wherever_autograd_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The forward inside `row_tile(4)`, the backward after the block in a thread of its own (where autograd runs a
    CUDA backward, and where the block's setting is not seen): the backward kernels still take 4 images and 4
    present categories a program, as many programs as the forward's, and give the gradients of a backward inside."""
    import threading

    from lathadapter.kernels import triton_radial_loss
    from lathadapter.kernels.triton_radial_loss import loss_block_sizes, radial_loss_triton, row_tile

    launches: dict[str, tuple[int, int]] = {}  # kernel → (programs, rows a program)

    class Recorded:
        def __init__(self, name: str, kernel) -> None:
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid: tuple[int]):
            def launch(*args, **kwargs):
                launches[self.name] = (grid[0], kwargs.get("BLOCK_B", kwargs.get("BLOCK_P")))
                return self.kernel[grid](*args, **kwargs)

            return launch

    for name in [n for n in dir(triton_radial_loss) if n.endswith("_kernel")]:
        monkeypatch.setattr(triton_radial_loss, name, Recorded(name, getattr(triton_radial_loss, name)))
    inputs, labels = make_inputs(37, 53, 17, seed=8)
    present = len(labels.unique())

    def gradients(inside: bool) -> tuple[torch.Tensor, ...]:
        leaves = [value.detach().to(DEVICE).requires_grad_() for value in inputs.values()]
        with row_tile(4):
            loss, _ = radial_loss_triton(*leaves, labels.to(DEVICE), **SCALARS)
            if inside:
                return torch.autograd.grad(loss, leaves, allow_unused=True)
        found: list = []
        seen: list[int] = []

        def backward() -> None:
            seen.append(loss_block_sizes(17)["BLOCK_B"])
            found.extend(torch.autograd.grad(loss, leaves, allow_unused=True))

        thread = threading.Thread(target=backward)
        thread.start()
        thread.join()
        assert seen == [16]  # the thread does not see the block's tile
        return tuple(found)

    expected = gradients(inside=True)
    launches.clear()
    for grad, want in zip(gradients(inside=False), expected, strict=True):
        assert (grad is None and want is None) or torch.equal(grad, want)
    rows, categories = -(-37 // 4), -(-present // 4)
    assert launches == {"image_class_forward_kernel": (rows, 4), "image_attribute_forward_kernel": (rows, 4),
                        "class_attribute_forward_kernel": (categories, 4), "image_class_backward_kernel": (rows, 4),
                        "image_attribute_backward_kernel": (rows, 4),
                        "class_attribute_backward_kernel": (categories, 4)}


def test_row_tile_holds_inside_its_block_only_and_is_a_power_of_two() -> None:
    """Triton's block sizes are powers of two; the images and present categories a program tiles return to 16 when
    the block ends, also when it raises."""
    from lathadapter.kernels.triton_radial_loss import loss_block_sizes, row_tile

    with row_tile(4):
        assert (loss_block_sizes(16)["BLOCK_B"], loss_block_sizes(16)["BLOCK_P"]) == (4, 4)
    with pytest.raises(KeyError), row_tile(8):
        raise KeyError("stop")
    assert (loss_block_sizes(16)["BLOCK_B"], loss_block_sizes(16)["BLOCK_P"]) == (16, 16)
    for rows in (0, 12):
        with pytest.raises(ValueError, match=f"row tile {rows}: a power of two"), row_tile(rows):
            pass


@kernel_case
def test_one_present_category_has_no_separation() -> None:
    inputs, labels = make_inputs(19, 21, 5, seed=4, labels=torch.full((19,), 7))
    compare(inputs, labels, SCALARS)


@kernel_case
def test_other_scalars_and_strided_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another logit scale, curvature, temperatures, cone constants and margins; the image cosines as column slices
    of one [B, C + K] matrix and the category–attribute cosines transposed (not contiguous)."""
    monkeypatch.setattr(fused, "LOGIT_SCALE", 30.0)
    scalars = {"logit_scale": 30.0, "lambda_hyp": 1.5, "lambda_hier": 2.0, "hier": "cone", "cone_k": 0.3,
               "cone_kappa": 0.5, "margin": 0.6, "margin_radial": 0.2, "tau_attr": 0.5}
    inputs, labels = make_inputs(23, 40, 33, seed=5, c=0.4, log_tau=0.3)
    leaves = {name: value.detach().to(DEVICE) for name, value in inputs.items()}  # strided views made on the device
    cosines = torch.cat([leaves["image_class"], leaves["image_attribute"]], dim=1)
    leaves["image_class"], leaves["image_attribute"] = cosines[:, :40], cosines[:, 40:]
    leaves["class_attribute"] = leaves["class_attribute"].t().contiguous().t()
    for name in ("image_class", "image_attribute", "class_attribute"):
        assert not leaves[name].is_contiguous()
    from lathadapter.kernels.triton_radial_loss import radial_loss_triton

    strided, _ = radial_loss_triton(*leaves.values(), labels.to(DEVICE), **scalars)
    contiguous, _ = radial_loss_triton(*(value.contiguous() for value in leaves.values()), labels.to(DEVICE),
                                       **scalars)
    assert float(strided) == float(contiguous)
    compare({name: value.contiguous() for name, value in inputs.items()}, labels, scalars)


@kernel_case
def test_half_precision_inputs() -> None:
    """float16 cosines and radii are computed in float32: the loss comes back in float16, the gradients in each
    input's dtype, close to the float64 oracle on the same float16 values."""
    inputs, labels = make_inputs(37, 53, 17, seed=6)
    half = {name: value.half() if name not in ("c", "log_tau") else value for name, value in inputs.items()}
    loss, parts, grads = triton_twin(half, labels, SCALARS)
    true_loss, true_parts, true_grads = oracle(half, labels, SCALARS)
    assert loss.dtype == torch.float16 and all(part.dtype == torch.float16 for part in parts)
    step = torch.finfo(torch.float16).eps
    torch.testing.assert_close(loss.double().cpu(), true_loss, rtol=step, atol=0)
    for name, grad, expected in zip(NAMES, grads, true_grads, strict=True):
        assert grad.dtype == half[name].dtype, name
        error = float((grad.double().cpu() - expected).abs().max())
        assert error <= 2 * step * float(expected.abs().max()), name


# --- LatHAdapter through the Triton twin: every radius (one radius per kind is a constant radius vector) ---


def lathadapter_case(options: dict, classes: int = 7, dim: int = 13, attributes: int = 5) -> tuple:
    """A LatHAdapter of odd shapes on `DEVICE` with random radius heads, and a batch with six of its seven classes,
    some twice; returns (method, data, x, y)."""
    import torch.nn.functional as F

    from lathadapter.adapter.catalog import create_method
    from lathadapter.cache.store import FewShotData

    generator = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(classes, dim, generator=generator), dim=-1)
    labels = torch.arange(classes).repeat_interleave(3)
    images = F.normalize(text[labels] + 0.7 * torch.randn(len(labels), dim, generator=generator), dim=-1)
    vocabulary = F.normalize(torch.randn(9, dim, generator=generator), dim=-1)
    text, labels, images, vocabulary = (t.to(DEVICE) for t in (text, labels, images, vocabulary))
    data = FewShotData([str(c) for c in range(classes)], text, vocabulary, images, images.unsqueeze(1), labels,
                       images, labels, images, labels, "t")
    torch.manual_seed(1)
    method = create_method("lathadapter", data, num_attributes=attributes, curvature=1.4, **options)
    if method.options.radius == "head":  # radii that differ from point to point from the start
        with torch.no_grad():
            method.radius_weight.copy_(torch.randn(method.radius_weight.shape, generator=generator))
    batch = torch.tensor([0, 2, 3, 5, 7, 8, 13, 14, 20], device=DEVICE)
    return method, data, data.train_features[batch], data.train_labels[batch]


def spy_on_the_triton_twin(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of `radial_loss_triton` (fused.py imports it at each call)."""
    from lathadapter.kernels import triton_radial_loss

    calls: list[int] = []
    real = triton_radial_loss.radial_loss_triton

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(triton_radial_loss, "radial_loss_triton", spy)
    return calls


RADII_AND_HIER = [(radius, hier) for radius in ("kind", "head", "norm") for hier in ("cone", "triplet")]


@kernel_case
@pytest.mark.parametrize(("radius", "hier"), RADII_AND_HIER, ids=[f"{r}-{h}" for r, h in RADII_AND_HIER])
def test_lathadapter_through_the_triton_twin_equals_the_reference(radius: str, hier: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`impl=fused` under the kernels backend "triton" runs the Triton twin for every radius and equals
    `impl=reference` (float32, the reference in plain autograd): the loss within 2e-4 relative and the gradient of
    every trained parameter within 2e-3 relative or 5e-5 of its largest entry."""
    import dataclasses

    from lathadapter import kernels

    method, _, x, y = lathadapter_case({"radius": radius, "hier": hier, "lambda_hier": 0.1, "lambda_anchor": 0.2})
    params = [p for p in method.parameters() if p.requires_grad]
    calls = spy_on_the_triton_twin(monkeypatch)
    results = []
    for impl, backend in (("fused", "triton"), ("reference", "torch")):
        method.options = dataclasses.replace(method.options, impl=impl)
        with kernels.backend(backend):
            loss, _ = method.loss(x, y)
        results.append((loss, torch.autograd.grad(loss, params, materialize_grads=True)))
    assert len(calls) == 1  # the fused form ran the Triton twin, the reference did not
    (fused_loss, fused_grads), (reference_loss, reference_grads) = results
    torch.testing.assert_close(fused_loss, reference_loss, rtol=2e-4, atol=2e-5)
    names = [name for name, p in method.named_parameters() if p.requires_grad]
    for name, g, e in zip(names, fused_grads, reference_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=2e-3, atol=5e-5 * (float(e.abs().max()) + 1e-12),
                                   msg=lambda m, name=name: f"{name}: {m}")


@kernel_case
def test_a_default_fit_under_the_triton_backend_runs_the_triton_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Default options (radius=kind, impl=fused) trained by the trainer under the kernels backend "triton": every
    step's loss goes through the Triton twin, and the parameters move."""
    from lathadapter import kernels
    from lathadapter.adapter.trainer import train

    method, data, _, _ = lathadapter_case({"epochs": 1, "min_steps": 3, "batch_size": 8})
    assert method.options.radius == "kind" and method.options.impl == "fused"
    before = method.log_scales.detach().clone()
    calls = spy_on_the_triton_twin(monkeypatch)
    with kernels.backend("triton"):
        result = train(method, data, seed=0)
    assert result.steps >= 3 and len(calls) == result.steps
    assert not torch.equal(method.log_scales.detach(), before)
