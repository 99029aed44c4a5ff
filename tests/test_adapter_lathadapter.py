"""LatHAdapter's losses equal a direct computation of docs/method.md's equations; Triton and reference paths agree."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from lathadapter.adapter.catalog import create_method
from lathadapter.cache.store import FewShotData


def make_data(classes: int = 5, dim: int = 16, per_class: int = 3, attributes: int = 10) -> FewShotData:
    generator = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(classes, dim, generator=generator), dim=-1)
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = F.normalize(text[labels] + 0.7 * torch.randn(len(labels), dim, generator=generator), dim=-1)
    vocabulary = F.normalize(torch.randn(attributes, dim, generator=generator), dim=-1)
    return FewShotData([str(c) for c in range(classes)], text, vocabulary, images, images.unsqueeze(1), labels,
                       images, labels, images, labels, "t")


# --- an independent transcription of docs/method.md, in float64, with explicit loops over edges ---

def ball_distance(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    squared = ((x - y) ** 2).sum(-1)
    return torch.acosh(1 + 2 * c * squared / ((1 - c * (x * x).sum(-1)) * (1 - c * (y * y).sum(-1)))) / math.sqrt(c)


def exp0(v: torch.Tensor, c: float) -> torch.Tensor:
    n = v.norm(dim=-1, keepdim=True)
    return torch.tanh(math.sqrt(c) * n) * v / (math.sqrt(c) * n)


def origin(x: torch.Tensor, c: float) -> torch.Tensor:
    return 2 / math.sqrt(c) * torch.atanh(math.sqrt(c) * x.norm(dim=-1))


def cone(p: torch.Tensor, q: torch.Tensor, c: float, k: float, kappa: float) -> torch.Tensor:
    p, q = math.sqrt(c) * p, math.sqrt(c) * q
    pn, qn, dot = p.norm(), q.norm(), (p * q).sum()
    psi = torch.asin(torch.clamp(k * (1 - pn**2) / pn, max=1.0))
    cosine = (dot * (1 + pn**2) - pn**2 * (1 + qn**2)) / (pn * (p - q).norm() * torch.sqrt(1 + pn**2 * qn**2 - 2 * dot))
    return torch.clamp(torch.acos(torch.clamp(cosine, -1, 1)) - kappa * psi, min=0)


@torch.no_grad()
def oracle_losses(method, x: torch.Tensor, y: torch.Tensor, hier: str) -> dict[str, float]:
    o = method.options
    d = lambda t: t.detach().double()  # noqa: E731
    c = float(method.curvature.detach())
    s_cat, s_attr, s_img = (float(s) for s in method.log_scales.detach().exp())
    tau_h = float(method.log_tau_hyp.exp())
    gv = lambda t: method.visual_adapter(t.float()).double()  # noqa: E731
    gt = lambda t: method.text_adapter(t.float()).double()  # noqa: E731
    x, t = d(x), d(method.text_features)
    v = F.normalize((1 - o.alpha_v) * x + o.alpha_v * d(gv(x)), dim=-1)
    u = F.normalize((1 - o.alpha_t) * t + o.alpha_t * d(gt(t)), dim=-1)
    a = F.normalize(d(method.attribute_prompts), dim=-1)
    r = torch.softmax(v @ a.t() / o.tau_attr, dim=-1)
    w = torch.softmax(u @ a.t() / o.tau_attr, dim=-1)
    p = F.normalize(u + float(method.beta) * w @ a, dim=-1)
    ce = F.cross_entropy(100 * v @ p.t(), y)
    hv, ha, hc = exp0(s_img * v, c), exp0(s_attr * a, c), exp0(s_cat * p, c)
    dist = torch.stack([torch.stack([ball_distance(hv[i], hc[j], c) for j in range(len(hc))]) for i in range(len(hv))])
    hyp = F.cross_entropy(-dist / tau_h, y)
    present = sorted(set(y.tolist()))
    edges = [(hc[int(y[i])], hv[i], 1.0) for i in range(len(y))]
    edges += [(hc[cc], ha[k], w[cc, k]) for cc in present for k in range(len(a))]
    edges += [(ha[k], hv[i], r[i, k]) for k in range(len(a)) for i in range(len(y))]
    if hier == "cone":
        energies = [cone(parent, child, c, o.cone_k, o.cone_kappa) for parent, child, _ in edges]
    else:
        energies = [torch.clamp(origin(parent, c) - origin(child, c) + o.margin_radial, min=0)
                    for parent, child, _ in edges]
    weights = [torch.as_tensor(weight, dtype=torch.float64) for _, _, weight in edges]
    edge_term = sum(wt * e for wt, e in zip(weights, energies, strict=True)) / sum(weights)
    separation = []
    for i in range(len(y)):
        negatives = [cc for cc in present if cc != int(y[i])]
        hinges = [torch.clamp(dist[i, int(y[i])] - dist[i, cc] + o.margin, min=0) for cc in negatives]
        separation.append(sum(hinges) / len(hinges) if hinges else torch.tensor(0.0, dtype=torch.float64))
    hier_loss = edge_term + sum(separation) / len(separation)
    total = ce + o.lambda_hyp * hyp + o.lambda_hier * hier_loss
    return {"ce": float(ce), "hyp": float(hyp), "hier": float(hier_loss), "total": float(total)}


@pytest.mark.parametrize("hier", ["cone", "triplet"])
def test_losses_equal_a_direct_computation_of_the_equations(hier: str) -> None:
    data = make_data()
    torch.manual_seed(0)
    method = create_method("lathadapter", data, num_attributes=4, hier=hier, curvature=1.3, scale_img=0.9)
    with torch.no_grad():
        method.beta.fill_(0.25)
    batch = torch.tensor([0, 1, 3, 4, 6, 9, 12, 13])  # four categories present, some twice
    x, y = data.train_features[batch], data.train_labels[batch]
    loss, parts = method.loss(x, y)
    expected = oracle_losses(method, x, y, hier)
    assert float(parts["ce"]) == pytest.approx(expected["ce"], rel=1e-4, abs=1e-5)
    assert float(parts["hyp"]) == pytest.approx(expected["hyp"], rel=1e-4, abs=1e-5)
    assert float(parts["hier"]) == pytest.approx(expected["hier"], rel=1e-3, abs=1e-4)
    assert float(loss.detach()) == pytest.approx(expected["total"], rel=1e-3, abs=1e-4)


def test_switches_remove_their_terms_and_gradients_reach_every_trained_part() -> None:
    data = make_data()
    method = create_method("lathadapter", data, num_attributes=4, lambda_hyp=0.0, lambda_hier=0.0)
    _, parts = method.loss(data.train_features, data.train_labels)
    assert set(parts) == {"ce"}
    method = create_method("lathadapter", data, num_attributes=4)
    loss, _ = method.loss(data.train_features, data.train_labels)
    loss.backward()
    for name, parameter in method.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, f"{name} receives no gradient"
    frozen = create_method("lathadapter", data, learn_curvature=False)
    assert not frozen.log_curvature.requires_grad


def test_attribute_prompts_start_at_kmeans_centres_of_the_vocabulary() -> None:
    data = make_data(attributes=12)
    method = create_method("lathadapter", data, num_attributes=3)
    prompts = method.attribute_prompts.detach()
    assignment = torch.cdist(data.attribute_features, prompts).argmin(1)
    for k in range(3):  # each centre is the mean of the vocabulary points assigned to it (Lloyd's fixed point)
        members = data.attribute_features[assignment == k]
        assert len(members) > 0
        assert torch.allclose(prompts[k], members.mean(0), atol=1e-5)


def test_novel_classes_get_their_own_prototypes_from_text() -> None:
    data = make_data()
    method = create_method("lathadapter", data, num_attributes=4, infer="euclid")
    novel_text = F.normalize(torch.randn(3, 16), dim=-1)
    scores = method.logits(data.test_features, novel_text)
    assert scores.shape == (len(data.test_labels), 3)
    p, _ = method.prototypes(novel_text)
    assert torch.allclose(scores, 100 * method.adapt_images(data.test_features) @ p.t(), atol=1e-4)


@pytest.mark.parametrize("attr_proto", [True, False])
def test_text_side_equals_the_plain_formulas_in_value_and_gradient(attr_proto: bool) -> None:
    """The fused category side against docs/method.md steps 1–3 written with autograd, in float64, and gradcheck."""
    from lathadapter.adapter.methods.lathadapter.text import text_side

    generator = torch.Generator().manual_seed(5)
    text = F.normalize(torch.randn(6, 8, generator=generator, dtype=torch.float64), dim=-1)
    first, second = torch.randn(2, 8, generator=generator, dtype=torch.float64), torch.randn(8, 2, generator=generator,
                                                                                              dtype=torch.float64)
    prompts = 2 * torch.randn(3, 8, generator=generator, dtype=torch.float64)
    beta = torch.tensor(0.4, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (first, second, prompts, beta)]

    def plain(first, second, prompts, beta):
        u = F.normalize(0.8 * text + 0.2 * torch.relu(text @ first.t()) @ second.t(), dim=-1)
        a = F.normalize(prompts, dim=-1)
        w = torch.softmax(u @ a.t() / 0.3, dim=-1)
        p = F.normalize(u + beta * w @ a, dim=-1) if attr_proto else u
        return p, w, p @ a.t(), a

    def fused(first, second, prompts, beta):
        side = text_side(text, first, second, prompts, beta, 0.2, 0.3, attr_proto)
        return side.prototypes, side.weights, side.class_attribute, side.attributes

    upstream = [torch.randn(t.shape, generator=generator, dtype=torch.float64) for t in plain(*leaves)]
    expected, actual = plain(*leaves), fused(*leaves)
    for e, a in zip(expected, actual, strict=True):
        torch.testing.assert_close(a, e)
    loss = lambda outputs: sum((g * t).sum() for g, t in zip(upstream, outputs, strict=True))  # noqa: E731
    expected_grads = torch.autograd.grad(loss(expected), leaves, allow_unused=True)
    actual_grads = torch.autograd.grad(loss(actual), leaves, allow_unused=True)
    for e, a in zip(expected_grads, actual_grads, strict=True):
        if e is None:
            assert a is None or float(a.abs().max()) == 0
        else:
            torch.testing.assert_close(a, e)
    assert torch.autograd.gradcheck(lambda *x: loss(fused(*x)), leaves)


POINT_CASE = """
import torch
import torch.nn.functional as F
from lathadapter.adapter.catalog import create_method
from lathadapter.cache.store import FewShotData
torch.manual_seed(0)
text = F.normalize(torch.randn(5, 16), dim=-1)
labels = torch.arange(5).repeat_interleave(3)
x = F.normalize(text[labels] + 0.7 * torch.randn(15, 16), dim=-1)
data = FewShotData(list("abcde"), text, F.normalize(torch.randn(8, 16), dim=-1), x, x[:, None], labels,
                   x, labels, x, labels, "t")
method = create_method("lathadapter", data, num_attributes=4, curvature=1.4)
"""


def compare_with_point_loss(method, x: torch.Tensor, y: torch.Tensor) -> None:
    """The radial loss and its gradients equal the point loss (explicit lifted points through `kernels`)."""
    loss, _ = method.loss(x, y)
    grads = torch.autograd.grad(loss, list(method.parameters()), materialize_grads=True)
    expected = method.point_loss(x, y)
    expected_grads = torch.autograd.grad(expected, list(method.parameters()), materialize_grads=True)
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-6), (loss, expected)
    for (name, _), g, e in zip(method.named_parameters(), grads, expected_grads, strict=True):
        assert torch.allclose(g, e, rtol=1e-3, atol=1e-5), name


@pytest.mark.parametrize("options", [{}, {"hier": "triplet"}, {"lambda_hyp": 0.0}, {"attr_proto": False}],
                         ids=["cone", "triplet", "no-hyp", "no-attr-proto"])
def test_radial_loss_and_gradients_equal_the_point_kernels_reference_backend(options: dict) -> None:
    namespace: dict = {}
    exec(POINT_CASE, namespace)
    from lathadapter import kernels
    from lathadapter.adapter.catalog import create_method

    method = create_method("lathadapter", namespace["data"], num_attributes=4, curvature=1.4, **options)
    with kernels.backend("torch"):
        compare_with_point_loss(method, namespace["x"], namespace["labels"])


def test_radial_loss_and_gradients_equal_the_point_kernels_triton_backend() -> None:
    script = "import os\nos.environ['TRITON_INTERPRET'] = '1'\n" + POINT_CASE + textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from lathadapter import kernels
        from test_adapter_lathadapter import compare_with_point_loss
        with kernels.backend("triton"):
            compare_with_point_loss(method, x, labels)
        print("ok")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize(("options", "named"), [({"cone_k": 0.0}, "cone_k"), ({"cone_kappa": -1.0}, "cone_kappa"),
                                                ({"curvature": 20.0}, "curvature"), ({"hier": "tree"}, "hier")])
def test_bad_options_are_refused_with_their_names(options: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        create_method("lathadapter", make_data(), **options)


LOSS_CASES = {
    "cone": {},
    "triplet": {"hier": "triplet", "margin_radial": 1.0},  # two of the three edge kinds inside the margin
    "ce-only": {"lambda_hyp": 0.0, "lambda_hier": 0.0},
    "hyp-only": {"lambda_hier": 0.0},
    "hier-only": {"lambda_hyp": 0.0},
    "one-category": {"labels": [2, 2, 2, 2, 2, 2]},
    "curvature-clamped": {"log_curvature": math.log(20.0)},  # c = 10 at the clamp: no gradient to log c
}


@pytest.mark.parametrize("case", LOSS_CASES.values(), ids=LOSS_CASES.keys())
def test_loss_backward_matches_finite_differences(case: dict) -> None:
    """The hand-written backward of the fused loss against central differences in float64, w.r.t. the image
    cosines, the category–attribute cosines, the association weights and the five scalars (lift scales, curvature,
    temperature)."""
    from lathadapter.adapter.methods.lathadapter import CURVATURE_RANGE, LatHAdapterOptions
    from lathadapter.adapter.methods.lathadapter.loss import lathadapter_loss

    case = dict(case)
    labels = torch.tensor(case.pop("labels", [0, 2, 2, 3, 0, 4]))
    log_curvature = torch.tensor(case.pop("log_curvature", math.log(1.3)), dtype=torch.float64)
    options = {"lambda_hyp": 0.5, "lambda_hier": 0.7, "hier": "cone", "cone_k": 0.1, "cone_kappa": 1.0,
               "margin": 0.4, "margin_radial": 0.3, "tau_attr": 0.2, **case}
    generator = torch.Generator().manual_seed(3)
    cosine = lambda *shape: (torch.rand(*shape, generator=generator, dtype=torch.float64) * 1.8 - 0.9)  # noqa: E731
    inputs = [cosine(6, 5 + 3), cosine(5, 3),
              torch.softmax(torch.randn(5, 3, generator=generator, dtype=torch.float64), 1),
              torch.tensor([0.3, 0.6, 1.0], dtype=torch.float64).log(), log_curvature,
              torch.tensor(math.log(0.5), dtype=torch.float64)]
    inputs = [t.clone().requires_grad_() for t in inputs]
    o = LatHAdapterOptions(**options)
    total, (ce, hyp, hier) = lathadapter_loss(*inputs, labels, o)
    assert torch.isclose(total, ce + o.lambda_hyp * hyp + o.lambda_hier * hier)
    assert torch.autograd.gradcheck(lambda *x: lathadapter_loss(*x, labels, o)[0], inputs, eps=1e-6, atol=1e-7)
    if log_curvature > math.log(CURVATURE_RANGE[1]):
        (grad_c,) = torch.autograd.grad(lathadapter_loss(*inputs, labels, o)[0], inputs[4])
        assert grad_c == 0
