"""LatHAdapter's losses equal a direct computation of docs/method.md's equations; the fused twins equal the
reference (`reference.py`) in values and gradients; a radius per point makes the hyperbolic part more than a function
of the cosine."""

from __future__ import annotations

import dataclasses
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

from lathadapter.adapter.batched import LossModule
from lathadapter.adapter.catalog import create_method
from lathadapter.adapter.methods.base import ProtocolWarning
from lathadapter.adapter.methods.lathadapter.options import REFERENCE_ONLY, LatHAdapterOptions
from lathadapter.adapter.methods.lathadapter.stacked import masked_loss
from lathadapter.adapter.options import OptionError, TrainOptions
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
    """exp0(v), projected into the ball as float32 points are: at most (1 − 4e-3)/√c from the origin."""
    n = v.norm(dim=-1, keepdim=True)
    h = torch.tanh(math.sqrt(c) * n) * v / (math.sqrt(c) * n)
    edge = (1 - 4e-3) / math.sqrt(c)
    return torch.where(h.norm(dim=-1, keepdim=True) > edge, h / h.norm(dim=-1, keepdim=True) * edge, h)


def origin(x: torch.Tensor, c: float) -> torch.Tensor:
    return 2 / math.sqrt(c) * torch.atanh(math.sqrt(c) * x.norm(dim=-1))


def cone(p: torch.Tensor, q: torch.Tensor, c: float, k: float, kappa: float) -> torch.Tensor:
    p, q = math.sqrt(c) * p, math.sqrt(c) * q
    pn, qn, dot = p.norm(), q.norm(), (p * q).sum()
    psi = torch.asin(torch.clamp(k * (1 - pn**2) / pn, max=1.0))
    cosine = (dot * (1 + pn**2) - pn**2 * (1 + qn**2)) / (pn * (p - q).norm() * torch.sqrt(1 + pn**2 * qn**2 - 2 * dot))
    return torch.clamp(torch.acos(torch.clamp(cosine, -1, 1)) - kappa * psi, min=0)


@torch.no_grad()
def oracle_points(method, x: torch.Tensor, text: torch.Tensor | None = None) -> dict[str, torch.Tensor | float]:
    """Steps 1–5 of docs/method.md in float64 for images `x` and class text features `text` (default: the
    method's): the inputs x, t, the adapted images v, the attributes a, the associations r, w, the prototypes p, the
    lifted points hv, ha, hc, every image–class distance, and c, τ_h."""
    o = method.options
    d = lambda t: t.detach().double()  # noqa: E731
    c = float(method.curvature.detach())
    scales = [float(s) for s in method.log_scales.detach().exp()]  # categories, attributes, images
    tau_h = float(method.log_tau_hyp.exp())
    gv = lambda t: method.visual_adapter(t.float()).double()  # noqa: E731
    gt = lambda t: method.text_adapter(t.float()).double()  # noqa: E731
    x, t = d(x), d(method.text_features if text is None else text)
    z, m = (1 - o.alpha_v) * x + o.alpha_v * d(gv(x)), (1 - o.alpha_t) * t + o.alpha_t * d(gt(t))
    v, u = F.normalize(z, dim=-1), F.normalize(m, dim=-1)
    a = F.normalize(d(method.attribute_prompts), dim=-1)
    r = torch.softmax(v @ a.t() / o.tau_attr, dim=-1)
    w = torch.softmax(u @ a.t() / o.tau_attr, dim=-1)
    q = m + float(method.beta) * m.norm(dim=-1, keepdim=True) * (w @ a) if o.attr_proto else m
    p = F.normalize(q, dim=-1)

    def radius(kind: int, e: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:  # step 5, one row per point
        if o.radius == "kind":
            return torch.full((len(e), 1), scales[kind], dtype=torch.float64)
        if o.radius == "norm":
            return scales[kind] * pre.norm(dim=-1, keepdim=True)
        head = e @ d(method.radius_weight[kind]) + float(method.radius_bias[kind])
        return scales[kind] * torch.log1p(torch.exp(head))[:, None]

    hv, ha = exp0(radius(2, v, z) * v, c), exp0(radius(1, a, d(method.attribute_prompts)) * a, c)
    hc = exp0(radius(0, p, q) * p, c)
    dist = torch.stack([torch.stack([ball_distance(hv[i], hc[j], c) for j in range(len(hc))]) for i in range(len(hv))])
    return {"x": x, "t": t, "v": v, "a": a, "r": r, "w": w, "p": p, "hv": hv, "ha": ha, "hc": hc, "dist": dist,
            "c": c, "tau_h": tau_h}


@torch.no_grad()
def oracle_losses(method, x: torch.Tensor, y: torch.Tensor, hier: str) -> dict[str, float]:
    o = method.options
    pt = oracle_points(method, x)
    x, t, v, a, r, w, p = (pt[k] for k in ("x", "t", "v", "a", "r", "w", "p"))
    hv, ha, hc, dist, c, tau_h = (pt[k] for k in ("hv", "ha", "hc", "dist", "c", "tau_h"))
    ce = F.cross_entropy(100 * v @ p.t(), y)
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
    anchor = (1 - (p * t).sum(-1)).mean() + (1 - (v * x).sum(-1)).mean()
    total = ce + o.lambda_hyp * hyp + o.lambda_hier * hier_loss + o.lambda_anchor * anchor
    return {"ce": float(ce), "hyp": float(hyp), "hier": float(hier_loss), "anchor": float(anchor),
            "total": float(total)}


def with_radius_heads(method) -> None:
    """Random radius heads, so that radii differ from point to point from the start."""
    if method.options.radius == "head":
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            method.radius_weight.copy_(torch.randn(method.radius_weight.shape, generator=generator))


RADII_AND_HIER = [(radius, hier) for radius in ("kind", "head", "norm") for hier in ("cone", "triplet")]


@pytest.mark.parametrize(("radius", "hier"), RADII_AND_HIER, ids=[f"{r}-{h}" for r, h in RADII_AND_HIER])
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_losses_equal_a_direct_computation_of_the_equations(radius: str, hier: str, impl: str) -> None:
    data = make_data()
    torch.manual_seed(0)
    method = create_method("lathadapter", data, num_attributes=4, hier=hier, curvature=1.3, scale_img=0.9,
                           radius=radius, impl=impl, lambda_anchor=0.3, lambda_hier=0.1)
    with torch.no_grad():
        method.beta.fill_(0.25)
    with_radius_heads(method)
    batch = torch.tensor([0, 1, 3, 4, 6, 9, 12, 13])  # four categories present, some twice
    x, y = data.train_features[batch], data.train_labels[batch]
    loss, parts = method.loss(x, y)
    expected = oracle_losses(method, x, y, hier)
    for part in ("ce", "hyp", "anchor"):
        assert float(parts[part]) == pytest.approx(expected[part], rel=1e-4, abs=1e-5), part
    assert float(parts["hier"]) == pytest.approx(expected["hier"], rel=1e-3, abs=1e-4)
    assert float(loss.detach()) == pytest.approx(expected["total"], rel=1e-3, abs=1e-4)


INFERENCES = [(radius, infer) for radius in ("kind", "head", "norm") for infer in ("euclid", "hyper", "fused")]


@pytest.mark.parametrize(("radius", "infer"), INFERENCES, ids=[f"{r}-{i}" for r, i in INFERENCES])
def test_inference_scores_equal_a_direct_computation(radius: str, infer: str) -> None:
    """docs/method.md, step 7, restated in float64: `euclid` scores 100 <v, p_c>, `hyper` −d(h^v, h^c) / τ_h, `fused`
    the sum of both softmaxes; for the training classes and for novel class text. The curvature, the category and
    image scales and τ_h are off their defaults and apart, so that a swapped one shows."""
    data = make_data()
    torch.manual_seed(0)
    method = create_method("lathadapter", data, num_attributes=4, curvature=1.7, scale_cat=0.4, scale_img=1.3,
                           tau_hyp=0.2, radius=radius, infer=infer)
    with torch.no_grad():
        method.beta.fill_(0.25)
    with_radius_heads(method)
    novel = F.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(3)), dim=-1)
    for text in (None, novel):
        points = oracle_points(method, data.test_features, text)
        euclid, hyper = 100 * points["v"] @ points["p"].t(), -points["dist"] / points["tau_h"]
        expected = {"euclid": euclid, "hyper": hyper,
                    "fused": torch.softmax(euclid, dim=-1) + torch.softmax(hyper, dim=-1)}[infer]
        with torch.no_grad():
            scores = method.logits(data.test_features, text)
        torch.testing.assert_close(scores.double(), expected, rtol=1e-4, atol=1e-5)


def test_radius_heads_start_every_radius_at_its_kinds_scale() -> None:
    """docs/method.md: the heads start at w = 0, b = log(e − 1), so softplus(b) = 1 and every radius is s_kind."""
    data = make_data()
    scales = (0.4, 0.7, 1.3)  # categories, attributes, images
    method = create_method("lathadapter", data, num_attributes=4, radius="head", scale_cat=scales[0],
                           scale_attr=scales[1], scale_img=scales[2])
    units = F.normalize(torch.randn(6, 16, generator=torch.Generator().manual_seed(5)), dim=-1)
    with torch.no_grad():
        for kind, scale in enumerate(scales):
            torch.testing.assert_close(method.radius(kind, units, None), torch.full((6,), scale), rtol=1e-6, atol=0)


def test_switches_remove_their_terms_and_gradients_reach_every_trained_part() -> None:
    data = make_data()
    method = create_method("lathadapter", data, num_attributes=4, lambda_hyp=0.0, lambda_hier=0.0)
    _, parts = method.loss(data.train_features, data.train_labels)
    assert set(parts) == {"ce"}
    method = create_method("lathadapter", data, num_attributes=4, lambda_hier=0.1)  # every term on
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


def test_a_vocabulary_shorter_than_the_prompts_is_said_and_the_prompts_start_at_random() -> None:
    """attr_init=kmeans over a vocabulary of fewer phrases than prompts cannot take k-means centres: a
    ProtocolWarning names both counts and the fix, and the prompts are attr_init=random's (same values)."""
    data = make_data(attributes=3)
    with pytest.warns(ProtocolWarning, match=r"num_attributes=4 attribute phrases, but the cache holds 3.*"
                                             r"--set num_attributes=3"):
        torch.manual_seed(3)
        short = create_method("lathadapter", data, num_attributes=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProtocolWarning)  # enough phrases, or random asked for: nothing to say
        create_method("lathadapter", data, num_attributes=3)
        torch.manual_seed(3)
        random = create_method("lathadapter", data, num_attributes=4, attr_init="random")
    assert torch.equal(short.attribute_prompts, random.attribute_prompts)


@pytest.mark.parametrize("phrases", [0, 3])
def test_the_advice_of_the_short_vocabulary_warning_silences_it(phrases: int) -> None:
    """Each `--set NAME=VALUE` the warning advises, applied, trains without the warning: a cache with no attribute
    phrases at all cannot take k-means centres for any num_attributes."""
    data = make_data(attributes=phrases)
    with pytest.warns(ProtocolWarning, match="attr_init=kmeans needs") as caught:
        create_method("lathadapter", data, num_attributes=4)
    advice = re.findall(r"--set (\w+)=(\w+)", str(caught[0].message))
    assert advice
    for name, value in advice:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ProtocolWarning)
            create_method("lathadapter", data, **{"num_attributes": 4, name: value})


def test_random_prompts_are_each_runs_seeds_draws() -> None:
    """attr_init=random draws N(0, 1/D) prompts from the generator the run seeds: the same seed starts from the same
    prompts, another seed from others (so seeds vary the start, as the baselines' random inits do)."""
    from lathadapter.experiments.run import RunConfig, build

    data = make_data(dim=16)

    def prompts(seed: int) -> torch.Tensor:
        config = RunConfig.create("lathadapter", 3, seed, overrides={"attr_init": "random", "num_attributes": 64})
        return build(config, data).attribute_prompts.detach()

    first, second, again = prompts(1), prompts(2), prompts(1)
    assert torch.equal(first, again)
    assert (first - second).abs().min() > 0
    for draws in (first, second):  # 1,024 draws: the sample std within 10 % of 1/√D (a 4.5-sigma band)
        assert abs(draws.std().item() * math.sqrt(16) - 1) < 0.1
        assert abs(draws.mean().item()) < 0.1 / math.sqrt(16)


def test_remembered_kmeans_centres_are_each_callers_own() -> None:
    """k-means is remembered per input; a caller changing its centres (they become trained prompts) changes nothing
    the next caller gets: Lloyd's fixed point still holds for it."""
    from lathadapter.adapter.methods.lathadapter.method import kmeans

    points = torch.randn(30, 4, generator=torch.Generator().manual_seed(2))
    kmeans(points, 3).add_(10.0)
    centres = kmeans(points, 3)
    assignment = torch.cdist(points, centres).argmin(1)
    for k in range(3):
        assert torch.allclose(centres[k], points[assignment == k].mean(0), atol=1e-5)


def test_novel_classes_get_their_own_prototypes_from_text() -> None:
    data = make_data()
    method = create_method("lathadapter", data, num_attributes=4, infer="euclid")
    novel_text = F.normalize(torch.randn(3, 16), dim=-1)
    scores = method.logits(data.test_features, novel_text)
    assert scores.shape == (len(data.test_labels), 3)
    p, _ = method.prototypes(novel_text)
    assert torch.allclose(scores, 100 * method.adapt_images(data.test_features)[0] @ p.t(), atol=1e-4)


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


TWIN_CASES = [{"radius": radius, "hier": hier, "attr_proto": attr_proto, "lambda_hier": 0.1}
              for radius in ("kind", "head", "norm")
              for hier in ("cone", "triplet") for attr_proto in (True, False)]
TWIN_CASES += [{"radius": "head", "lambda_hyp": 0.0}, {"radius": "norm", "lambda_hier": 0.0},
               {"radius": "head", "lambda_anchor": 0.5}, {"radius": "kind", "lambda_anchor": 0.5}]
# the default configuration (λ_hier = 0: the image product without the attribute columns) through each form
TWIN_CASES += [{"radius": "kind", "lambda_hier": 0.0}, {"radius": "kind", "lambda_hier": 0.0, "attr_proto": False},
               {"radius": "head", "lambda_hier": 0.0}]
# Every loss option off its default at once (each value unlike any default): a twin that read a constant instead of
# the option, or left it out, differs from the reference here. `test_every_loss_option_is_checked_off_its_default`
# holds a new option to this list (or to REFERENCE_ONLY).
OFF_DEFAULTS = {"reduction": 3, "alpha_v": 0.35, "alpha_t": 0.3, "attr_init": "random", "tau_attr": 0.11, "beta": 0.25,
                "learn_curvature": False, "scale_cat": 0.4, "scale_attr": 0.5, "scale_img": 0.9, "tau_hyp": 0.09,
                "cone_k": 0.23, "cone_kappa": 0.8, "margin": 0.27, "margin_radial": 0.9, "lambda_hyp": 0.7,
                "lambda_hier": 0.3, "lambda_anchor": 0.4}
TWIN_CASES += [{"radius": radius, "hier": hier, **OFF_DEFAULTS} for radius, hier in (("head", "cone"),
                                                                                      ("kind", "triplet"))]
TWIN_BASE = {"num_attributes": 5, "curvature": 1.4}  # every twin comparison's, off their defaults too


def twin_and_reference(options: dict, dtype: torch.dtype, classes: int = 7, dim: int = 13):
    """A method of odd shapes with a batch, in `dtype`; returns (method, x, y)."""
    data = make_data(classes=classes, dim=dim, per_class=3, attributes=9)
    torch.manual_seed(1)
    method = create_method("lathadapter", data, **{**TWIN_BASE, **options}).to(dtype)
    with_radius_heads(method)
    batch = torch.tensor([0, 2, 3, 5, 7, 8, 13, 14, 20])  # six of the seven classes, some twice
    return method, data.train_features[batch].to(dtype), data.train_labels[batch]


# LatHAdapter's options that no twin comparison here sets off its default, each with where it is checked instead
NOT_TWIN_CASES = {
    "impl": "the form compared",
    "infer": "inference, not the loss (test_hierarchy.py, the scores)",
    "radius": "every value is in TWIN_CASES; its default is too",
    "attr_proto": "both values are in TWIN_CASES",
    "hier": "both values are in TWIN_CASES",
    "hyp_metric": "added around the fused form by LatHAdapter.loss: test_hierarchy.py's SWITCH_CASES",
    "centre": "acts on the inputs before every form: test_hierarchy.py's SWITCH_CASES",
}


def test_every_loss_option_is_checked_off_its_default_through_the_twins() -> None:
    """A LatHAdapter option that a twin could ignore unseen: one that no `TWIN_CASES` entry (compared through the CPU
    fused twin and the stacked twin) sets off its default, and that is neither a training option, nor reference-only
    (`REFERENCE_ONLY`, refused under impl=fused), nor listed in `NOT_TWIN_CASES` with where it is checked."""
    defaults = LatHAdapterOptions()
    varied = {name for case in [*TWIN_CASES, TWIN_BASE] for name, value in case.items()
              if value != getattr(defaults, name)}
    exempt = {f.name for f in dataclasses.fields(TrainOptions)} | set(REFERENCE_ONLY) | set(NOT_TWIN_CASES)
    unchecked = [f.name for f in dataclasses.fields(LatHAdapterOptions) if f.name not in varied | exempt]
    assert not unchecked, (f"LatHAdapter options {unchecked} are never set off their defaults in TWIN_CASES: add them "
                           "to OFF_DEFAULTS once every form implements them, or to REFERENCE_ONLY (docs/method.md, "
                           "'Adding an option')")


def off_value(field: dataclasses.Field, value: object) -> object:
    """A valid value of option `field` other than `value`: another choice, the other truth value, or a number inside
    the field's range (a trial option of `REFERENCE_ONLY` may be any of these, docs/method.md)."""
    meta = field.metadata
    if "choices" in meta:
        return next(choice for choice in meta["choices"] if choice != value)
    if isinstance(value, bool):
        return not value
    low, high = meta.get("least", meta.get("above")), meta.get("most")
    candidates = [value + 1, value - 1, *((value + bound) / 2 for bound in (low, high) if bound is not None)]
    return next(c for c in candidates if c != value and (low is None or c > low or ("least" in meta and c == low))
                and (high is None or c <= high))


def test_off_value_stays_inside_the_range_of_any_option_type() -> None:
    fields = {f.name: f for f in dataclasses.fields(LatHAdapterOptions)}
    assert off_value(fields["cone_parent"], "text") == "image"
    assert off_value(fields["learn_curvature"], True) is False
    assert off_value(fields["alpha_v"], 1.0) == 0.0  # in [0, 1]: not 2
    assert off_value(fields["alpha_v"], 0.5) == 0.25  # neither 1.5 nor -0.5
    assert off_value(fields["tau_attr"], 0.07) == 1.07
    assert off_value(fields["reduction"], 1) == 2


def test_a_reference_only_option_is_refused_under_fused_and_never_stacked() -> None:
    """Each `REFERENCE_ONLY` option off the twins' value (whatever its type): a one-line usage error naming it and
    impl=reference under impl=fused; under impl=reference a model that neither stacks nor captures."""
    data = make_data()
    for name, value in REFERENCE_ONLY.items():
        field = next(f for f in dataclasses.fields(LatHAdapterOptions) if f.name == name)
        other = off_value(field, value)
        with pytest.raises(OptionError, match=re.escape(f"option {name}={other!r} of lathadapter ") +
                           ".* add impl=reference"):
            create_method("lathadapter", data, **{name: other})
        assert not create_method("lathadapter", data, impl="reference", **{name: other}).stackable
        assert create_method("lathadapter", data, **{name: value}).stackable


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("options", TWIN_CASES, ids=["-".join(f"{k}={v}" for k, v in o.items()) for o in TWIN_CASES])
def test_the_cpu_fused_twin_equals_the_reference(options: dict, dtype: torch.dtype) -> None:
    """Loss and the gradient of every trained parameter: `impl=fused` against `impl=reference`."""
    method, x, y = twin_and_reference(options, dtype)
    params = [p for p in method.parameters() if p.requires_grad]
    results = []
    for impl in ("fused", "reference"):
        method.options = dataclasses.replace(method.options, impl=impl)
        loss, _ = method.loss(x, y)
        results.append((loss, torch.autograd.grad(loss, params, materialize_grads=True)))
    (fused, fused_grads), (reference, reference_grads) = results
    tol = {"rtol": 1e-9, "atol": 1e-11} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 2e-5}
    torch.testing.assert_close(fused, reference, **tol)
    for (name, _), g, e in zip((n for n in method.named_parameters() if n[1].requires_grad), fused_grads,
                               reference_grads, strict=True):
        torch.testing.assert_close(g, e, **tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("nodes", [True, False], ids=["captured", "stacked"])
@pytest.mark.parametrize("options", TWIN_CASES, ids=["-".join(f"{k}={v}" for k, v in o.items()) for o in TWIN_CASES])
def test_the_stacked_runs_twin_equals_the_reference(options: dict, nodes: bool) -> None:
    """`stacked.masked_loss` (a class mask for the batch's categories, the radial distance, no host reads; with the
    single nodes of a captured step, or in plain autograd) against `impl=reference` in float64: loss and the gradient
    of every trained parameter; and under vmap over two stacked copies of the model on two different batches, each
    copy's loss and gradients are the reference's on its batch."""
    method, x, y = twin_and_reference({**options, "impl": "reference"}, torch.float64)
    names = [name for name, p in method.named_parameters() if p.requires_grad]
    params = [p for p in method.parameters() if p.requires_grad]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(11), dtype=x.dtype)
    x2, y2 = F.normalize(x + 0.3 * noise, dim=-1), y.roll(1)
    reference, _ = method.loss(x, y)  # not fixed_shapes: `impl=reference` decides
    other, _ = method.loss(x2, y2)
    reference_grads = torch.autograd.grad(reference, params, materialize_grads=True)
    other_grads = torch.autograd.grad(other, params, materialize_grads=True)
    method.fixed_shapes = nodes
    masked, _ = masked_loss(method, x, y)
    tol = {"rtol": 1e-9, "atol": 1e-11}
    torch.testing.assert_close(masked, reference, **tol)
    for name, g, e in zip(names, torch.autograd.grad(masked, params, materialize_grads=True), reference_grads,
                          strict=True):
        torch.testing.assert_close(g, e, **tol, msg=lambda m, name=name: f"{name}: {m}")
    module = LossModule(method)
    stacked_params, buffers = torch.func.stack_module_state([module, module])
    stacked, _ = torch.func.vmap(lambda p, b, x, y: torch.func.functional_call(module, (p, b), (x, y)))(
        stacked_params, buffers, torch.stack([x, x2]), torch.stack([y, y2]))
    torch.testing.assert_close(stacked, torch.stack([reference, other]).detach(), **tol)
    leaves = [stacked_params[f"method.{name}"] for name in names]
    for name, g, e0, e1 in zip(names, torch.autograd.grad(stacked.sum(), leaves, materialize_grads=True),
                               reference_grads, other_grads, strict=True):
        torch.testing.assert_close(g, torch.stack([e0, e1]), **tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("radius", ["head", "norm"])
def test_the_reference_passes_float64_gradcheck(radius: str) -> None:
    """The reference's gradients (plain autograd) against finite differences, w.r.t. the radius heads, lift scales,
    curvature and temperature (the scalars every radius depends on)."""
    method, x, y = twin_and_reference({"radius": radius, "impl": "reference", "lambda_anchor": 0.2}, torch.float64)
    leaves = [method.log_scales, method.log_curvature, method.log_tau_hyp]
    leaves += [method.radius_weight, method.radius_bias] if radius == "head" else [method.attribute_prompts]

    def loss(*values: torch.Tensor) -> torch.Tensor:
        saved = [leaf.data for leaf in leaves]
        for leaf, value in zip(leaves, values, strict=True):
            leaf.data = value
        try:
            return method.loss(x, y)[0]
        finally:
            for leaf, value in zip(leaves, saved, strict=True):
                leaf.data = value

    inputs = [leaf.detach().clone().requires_grad_() for leaf in leaves]
    analytic = torch.autograd.grad(method.loss(x, y)[0], leaves)
    for i, leaf_input in enumerate(inputs):  # central differences, one leaf at a time
        flat = leaf_input.detach().reshape(-1)
        numeric = torch.zeros_like(flat)
        for j in range(flat.numel()):
            step = torch.zeros_like(flat)
            step[j] = 1e-6
            plus = [v.detach() if k != i else (flat + step).reshape(v.shape) for k, v in enumerate(inputs)]
            minus = [v.detach() if k != i else (flat - step).reshape(v.shape) for k, v in enumerate(inputs)]
            numeric[j] = (loss(*plus) - loss(*minus)) / 2e-6
        torch.testing.assert_close(analytic[i].reshape(-1), numeric, rtol=1e-5, atol=1e-7)


def test_a_radius_per_point_makes_the_hyperbolic_scores_differ_from_the_euclidean_ones(tmp_path) -> None:
    """With `radius=head`, after training on a generated hierarchy, the radii vary within each kind and the
    hyperbolic ranking is no longer a function of the cosine: `infer=euclid` and `infer=hyper` disagree on some test
    images. With `radius=kind` they agree on all of them."""
    from lathadapter.adapter.trainer import train
    from lathadapter.cache.store import CacheReader
    from lathadapter.cache.synthetic import write_synthetic_cache

    path = write_synthetic_cache(tmp_path / "h.h5", num_classes=12, dim=32, shots=(4,), seeds=(1,))
    data = CacheReader(path).load(4, 1)
    disagreements = {}
    for radius in ("head", "kind"):
        torch.manual_seed(0)
        method = create_method("lathadapter", data, radius=radius, epochs=5, min_steps=150, lr=1e-2, lambda_hier=0.1)
        train(method, data, seed=1)
        predictions = {}
        for infer in ("euclid", "hyper"):
            method.options = dataclasses.replace(method.options, infer=infer)
            with torch.no_grad():
                predictions[infer] = method.logits(data.test_features).argmax(-1)
        disagreements[radius] = int((predictions["euclid"] != predictions["hyper"]).sum())
        points = method.lifted_points(data)
        spreads = [points[kind].norm(dim=-1).std() for kind in ("categories", "attributes", "images")]
        if radius == "head":
            assert all(spread > 1e-3 for spread in spreads), spreads
        else:
            assert all(spread < 1e-5 for spread in spreads), spreads
    assert disagreements["kind"] == 0
    assert disagreements["head"] > 0


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
    "hyp-only-prototype-columns": {"lambda_hier": 0.0, "columns": 5},  # [B, C] cosines, as the default step passes
    "hier-only": {"lambda_hyp": 0.0},
    "one-category": {"labels": [2, 2, 2, 2, 2, 2]},
    "curvature-clamped": {"log_curvature": math.log(20.0)},  # c = 10 at the clamp: no gradient to log c
}


@pytest.mark.parametrize("case", LOSS_CASES.values(), ids=LOSS_CASES.keys())
def test_loss_backward_matches_finite_differences(case: dict) -> None:
    """The CPU twin of the loss after the image product (`fused_loss` over one 0-d radius per kind, as
    `LatHAdapter.loss` calls it for `radius=kind`: its radial nodes' hand-written backward passes) against central
    differences in float64, w.r.t. the image cosines, the category–attribute cosines, the association weights and
    the five scalars (lift scales, curvature, temperature)."""
    from lathadapter.adapter.methods.lathadapter import CURVATURE_RANGE, LatHAdapterOptions
    from lathadapter.adapter.methods.lathadapter.fused import fused_loss
    from lathadapter.kernels.radial import scaled_radius

    def lathadapter_loss(image_cosines, class_attribute, weights, log_scales, log_curvature, log_tau, labels, o):
        c = log_curvature.exp().clamp(*CURVATURE_RANGE)
        radii = scaled_radius(log_scales.exp(), c).unbind()
        return fused_loss(image_cosines, class_attribute, weights, *radii, c, log_tau, labels, o)

    case = dict(case)
    labels = torch.tensor(case.pop("labels", [0, 2, 2, 3, 0, 4]))
    columns = case.pop("columns", 5 + 3)  # image cosines with the 5 prototypes and the 3 attributes
    log_curvature = torch.tensor(case.pop("log_curvature", math.log(1.3)), dtype=torch.float64)
    options = {"lambda_hyp": 0.5, "lambda_hier": 0.7, "hier": "cone", "cone_k": 0.1, "cone_kappa": 1.0,
               "margin": 0.4, "margin_radial": 0.3, "tau_attr": 0.2, **case}
    generator = torch.Generator().manual_seed(3)
    cosine = lambda *shape: (torch.rand(*shape, generator=generator, dtype=torch.float64) * 1.8 - 0.9)  # noqa: E731
    inputs = [cosine(6, columns), cosine(5, 3),
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


def compare_triton_twin_with_reference(options: dict) -> None:
    """`impl=fused` through the Triton kernels (kernels backend "triton") against `impl=reference`, float32: the loss
    and the gradient of every trained parameter."""
    from lathadapter import kernels

    method, x, y = twin_and_reference(options, torch.float32)
    params = [p for p in method.parameters() if p.requires_grad]
    results = []
    for impl, backend in (("fused", "triton"), ("reference", "torch")):
        method.options = dataclasses.replace(method.options, impl=impl)
        with kernels.backend(backend):
            loss, _ = method.loss(x, y)
        results.append((loss, torch.autograd.grad(loss, params, materialize_grads=True)))
    (fused, fused_grads), (reference, reference_grads) = results
    torch.testing.assert_close(fused, reference, rtol=2e-4, atol=2e-5)
    for g, e in zip(fused_grads, reference_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=2e-3, atol=5e-5 * (float(e.abs().max()) + 1e-12))


TRITON_TWIN_CASES = [{"radius": "head"}, {"radius": "norm", "hier": "triplet"}, {"radius": "head", "attr_proto": False,
                                                                               "lambda_anchor": 0.5},
                     {"radius": "norm", "hier": "cone", **OFF_DEFAULTS}]


def test_the_triton_twin_equals_the_reference_in_the_interpreter() -> None:
    """The Triton twin runs on CUDA tensors; here, in the Triton interpreter in a child process (TRITON_INTERPRET=1
    must be set before triton is first imported, and this process imported it with open_clip)."""
    import os
    import subprocess
    import sys

    script = (f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
              "from test_adapter_lathadapter import TRITON_TWIN_CASES, compare_triton_twin_with_reference\n"
              "for case in TRITON_TWIN_CASES:\n    compare_triton_twin_with_reference(case)\nprint('ok')\n")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
