"""Behaviours that a seventh mutation campaign (stop 27) found untested, in LatHAdapter's own package (the model's
curvature range, inference and its class probabilities, k-means and the lifted points; the reference's image-side
class centres; the hierarchy diagnostics with a radius per point; the kernels backend): each test here fails on a
mutant that the rest of the suite let pass, and checks the code against an independent oracle (docs/method.md's
formulas restated in float64 on points placed by hand, Ganea's cone formulas, a hand-built input with a known
answer)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lathadapter.adapter.catalog import create_method
from lathadapter.adapter.methods.lathadapter import diagnostics as diagnostics_module
from lathadapter.cache.store import FewShotData

# --- the Poincaré ball and Ganea's cones, restated from docs/method.md in float64 ---


def lifted(scale: float, length: float, direction: torch.Tensor, c: float) -> torch.Tensor:
    """exp0(ρ e) with ρ = scale · length (`radius=norm`): tanh(√c ρ)/√c along the unit direction e."""
    return math.tanh(math.sqrt(c) * scale * length) / math.sqrt(c) * F.normalize(direction.double(), dim=-1)


def ball_distance(x: torch.Tensor, y: torch.Tensor, c: float) -> float:
    squared = float(((x - y) ** 2).sum())
    return math.acosh(1 + 2 * c * squared / ((1 - c * float(x @ x)) * (1 - c * float(y @ y)))) / math.sqrt(c)


def aperture(p: torch.Tensor, c: float, k: float) -> float:
    """ψ(p) = arcsin(min(1, K (1 − |p|²)/|p|)) of √c p."""
    pn = math.sqrt(c) * float(p.norm())
    return math.asin(min(1.0, k * (1 - pn * pn) / pn))


def exterior_angle(p: torch.Tensor, q: torch.Tensor, c: float) -> float:
    """Ξ(p, q) of √c p, √c q."""
    p, q = math.sqrt(c) * p, math.sqrt(c) * q
    pn, qn, dot = float(p.norm()), float(q.norm()), float(p @ q)
    cosine = (dot * (1 + pn**2) - pn**2 * (1 + qn**2)) / (
        pn * float((p - q).norm()) * math.sqrt(1 + pn**2 * qn**2 - 2 * dot))
    return math.acos(max(-1.0, min(1.0, cosine)))


def zero_adapters(model: torch.nn.Module) -> None:
    """Both adapters output 0, so z = (1 − α_v) x and m = (1 − α_t) t."""
    with torch.no_grad():
        for adapter in (model.visual_adapter, model.text_adapter):
            for layer in (adapter.net[0], adapter.net[2]):
                layer.weight.zero_()


def unit(*entries: float) -> torch.Tensor:
    return torch.tensor(entries, dtype=torch.float32)


# ------------------------------------------------------------------------------------------ hierarchy diagnostics


def norm_world() -> FewShotData:
    """Two classes in 4-d with text of different lengths and images of different lengths (radius=norm reads them):
    class 0's text on the first axis, class 1's on the second; train images turned towards the third axis (class 0)
    or the fourth (class 1); five test images, the last one near the origin between the two texts."""
    def image(label: int, angle: float, length: float) -> torch.Tensor:
        point = torch.zeros(4)
        point[label], point[2 + label] = math.cos(angle), math.sin(angle)
        return length * point

    train = torch.stack([image(0, 0.2, 0.9), image(0, 0.5, 1.2), image(0, 1.0, 1.0),
                         image(1, 0.2, 1.1), image(1, 0.7, 0.8), image(1, 1.1, 1.3)])
    train_labels = torch.tensor([0, 0, 0, 1, 1, 1])
    test = torch.stack([image(0, 0.3, 1.4), image(0, 0.9, 0.7), image(1, 0.4, 1.5), image(1, 0.8, 1.0),
                        0.3 * F.normalize(unit(1.0, 1.1, 0.0, 0.0), dim=0)])
    test_labels = torch.tensor([0, 0, 1, 1, 1])
    text = torch.stack([unit(1, 0, 0, 0), 1.6 * unit(0, 1, 0, 0)])
    vocabulary = F.normalize(torch.ones(3, 4), dim=-1)
    return FewShotData(["a", "b"], text, vocabulary, train, train[:, None], train_labels, train, train_labels, test,
                       test_labels, "norms")


@pytest.mark.parametrize("chunk", [8192, 5, 2])
def test_diagnostics_with_a_radius_per_point_and_image_side_centres_equal_the_formulas(
        chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/method.md, "Hierarchy diagnostics", with `radius=norm` (ρ = s_kind |pre-normalisation vector|) and
    `cone_parent=image`: each class's parent is norm(mean v_i) of its train images at radius s_cat |mean v_i|; the
    in-cone shares use the run's κ; the aperture is the parents'; the radii are the train images', the text
    prototypes' and the prompts'; `euclid_hyper_disagree` is the share of the test images whose top-1 class differs
    between 100 <v, p_c> and −d(h^v, h^c), whatever the chunks the test images are scored in. Adapters zeroed and
    `attr_proto` off: z = 0.8 x, q_c = m_c = 0.8 t_c."""
    monkeypatch.setattr(diagnostics_module, "CHUNK", chunk)
    c, k, kappa = 1.7, 0.3, 0.7
    scales = {"cat": 0.3, "attr": 0.6, "img": 1.0}
    data = norm_world()
    torch.manual_seed(0)
    model = create_method("lathadapter", data, attr_proto=False, radius="norm", curvature=c, cone_k=k,
                          cone_kappa=kappa, num_attributes=3, attr_init="random", cone_parent="image",
                          impl="reference")
    zero_adapters(model)
    diagnostics = model.diagnostics(data)

    def image_point(x: torch.Tensor) -> torch.Tensor:
        return lifted(scales["img"], 0.8 * float(x.norm()), x, c)

    v = F.normalize(data.train_features.double(), dim=-1)
    means = [v[data.train_labels == label].mean(0) for label in (0, 1)]
    parents = [lifted(scales["cat"], float(mean.norm()), mean, c) for mean in means]
    categories = [lifted(scales["cat"], 0.8 * float(t.norm()), t, c) for t in data.text_features]

    def shares(features: torch.Tensor, labels: torch.Tensor, kappa: float) -> tuple[float, float]:
        angles = [exterior_angle(parents[int(y)], image_point(x), c) for x, y in zip(features, labels, strict=True)]
        inside = [angle <= kappa * aperture(parents[int(y)], c, k) for angle, y in zip(angles, labels, strict=True)]
        return 100.0 * sum(inside) / len(inside), sum(angles) / len(angles)

    train_share, train_angle = shares(data.train_features, data.train_labels, kappa)
    test_share, test_angle = shares(data.test_features, data.test_labels, kappa)
    prompts = model.attribute_prompts.detach().double()
    disagree = []
    for x in data.test_features:
        euclid = max((0, 1), key=lambda label: float(F.normalize(x.double(), dim=0) @ categories[label]
                                                     / categories[label].norm()))
        hyper = min((0, 1), key=lambda label: ball_distance(image_point(x), categories[label], c))
        disagree.append(euclid != hyper)
    expected = {
        "train_in_cone": train_share, "test_in_cone": test_share, "train_angle": train_angle,
        "test_angle": test_angle, "aperture": sum(aperture(p, c, k) for p in parents) / 2,
        "radius_category": sum(math.sqrt(c) * float(p.norm()) for p in categories) / 2,
        "radius_attribute": sum(math.tanh(math.sqrt(c) * scales["attr"] * float(a.norm())) for a in prompts) / 3,
        "radius_image": sum(math.sqrt(c) * float(image_point(x).norm()) for x in data.train_features) / 6,
        "euclid_hyper_disagree": 100.0 * sum(disagree) / len(disagree),
    }
    # the hand-made points separate what a slip would confuse: κ decides some images, the train and test images'
    # radii differ, the parents are not the prototypes, and the last test image is one that disagrees
    assert shares(data.train_features, data.train_labels, 1.0)[0] != train_share
    assert 0 < train_share < 100 and 0 < test_share < 100
    assert disagree[-1] and 0 < sum(disagree) < len(disagree)
    for name, value in expected.items():
        assert diagnostics[name] == pytest.approx(value, abs=1e-5), name


# ------------------------------------------------------------------------------------------ the reference's centres


def test_image_side_centres_with_norm_radii_sit_at_the_mean_directions_length() -> None:
    """`cone_parent=image` under `radius=norm`: the parent of image i is e_c = norm(mean_{j: y_j = c} v_j) at radius
    s_cat |mean v_j| (the mean, not the sum). Only the category → image edges differ from `cone_parent=text`, so
    L_hier differs by (Σ_i E(h^c_{y_i}, h^v_i) − Σ_i E(e_{y_i}, h^v_i)) / (2B + P), each E from Ganea's formulas."""
    c, k, kappa, scales = 1.6, 0.3, 1.0, {"cat": 0.5, "img": 1.0}
    data = norm_world()
    x, y = data.train_features.double(), data.train_labels
    torch.manual_seed(0)
    options = dict(impl="reference", radius="norm", num_attributes=3, attr_init="random", lambda_hier=0.1,
                   attr_proto=False, curvature=c, cone_k=k, cone_kappa=kappa, scale_cat=scales["cat"])
    text_model = create_method("lathadapter", data, **options).double()
    zero_adapters(text_model)
    image_model = create_method("lathadapter", data, cone_parent="image", **options).double()
    image_model.load_state_dict(text_model.state_dict())
    with torch.no_grad():
        text_hier, image_hier = float(text_model.loss(x, y)[1]["hier"]), float(image_model.loss(x, y)[1]["hier"])

    def energy(parent: torch.Tensor, child: torch.Tensor) -> float:
        return max(0.0, exterior_angle(parent, child, c) - kappa * aperture(parent, c, k))

    v = F.normalize(x, dim=-1)
    children = [lifted(scales["img"], 0.8 * float(row.norm()), row, c) for row in x]
    categories = [lifted(scales["cat"], 0.8 * float(t.norm()), t, c) for t in data.text_features]
    means = [v[y == label].mean(0) for label in (0, 1)]
    centres = [lifted(scales["cat"], float(mean.norm()), mean, c) for mean in means]
    text_edges = sum(energy(categories[int(label)], child) for label, child in zip(y, children, strict=True))
    image_edges = sum(energy(centres[int(label)], child) for label, child in zip(y, children, strict=True))
    assert image_edges > 0.01
    assert text_hier - image_hier == pytest.approx((text_edges - image_edges) / (2 * len(y) + 2), rel=1e-6)


# ------------------------------------------------------------------------------------------ the loss's hinges


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_the_centripetal_hinges_between_kind_radii_weigh_each_edge_set_by_its_edges(impl: str) -> None:
    """`hier=triplet` with one radius per kind: |exp0(s e)|_H = 2s, so each edge set's hinge is one number,
    max(0, 2 s_parent − 2 s_child + m_r), and L_hier is their mean over the 2B + P edges, weighted by the B images,
    the P categories' K attributes (weights w_ck summing to 1 per category) and the B images' attributes. With
    categories outside images the hinges are positive; one class in the batch leaves no separation term."""
    s_cat, s_attr, s_img, m_r = 0.9, 0.5, 0.3, 0.1
    data = norm_world()
    torch.manual_seed(0)
    model = create_method("lathadapter", data, impl=impl, radius="kind", hier="triplet", lambda_hier=0.1,
                          num_attributes=3, attr_init="random", scale_cat=s_cat, scale_attr=s_attr,
                          scale_img=s_img, margin_radial=m_r)
    batch = data.train_labels == 0
    with torch.no_grad():
        hier = float(model.loss(data.train_features[batch], data.train_labels[batch])[1]["hier"])

    def hinge(parent: float, child: float) -> float:
        return max(0.0, 2 * parent - 2 * child + m_r)

    images = int(batch.sum())
    expected = (images * hinge(s_cat, s_img) + hinge(s_cat, s_attr) + images * hinge(s_attr, s_img)) / (2 * images + 1)
    assert hier == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------ the model


@pytest.mark.parametrize("learned", [40.0, 0.01])
def test_the_curvature_is_clamped_to_its_range_where_it_is_used(learned: float) -> None:
    """docs/method.md: c is clamped to [0.1, 10] where used: a learned log c beyond either end scores (`infer=hyper`,
    −d(h^v, h^c)/τ_h) as the end itself. Adapters zeroed, `attr_proto` off, one radius per kind."""
    data = norm_world()
    model = create_method("lathadapter", data, infer="hyper", radius="kind", attr_proto=False, num_attributes=3,
                          attr_init="random", scale_img=0.5, tau_hyp=0.2)
    zero_adapters(model)
    with torch.no_grad():
        model.log_curvature.fill_(math.log(learned))
        scores = model.logits(data.test_features).double()
    c = min(max(learned, 0.1), 10.0)
    expected = torch.tensor([[-ball_distance(lifted(0.5, 1.0, x, c), lifted(0.3, 1.0, t, c), c) / 0.2
                              for t in data.text_features] for x in data.test_features], dtype=torch.float64)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)


def test_the_lifted_points_hold_each_chosen_class_s_first_images_and_its_strongest_attribute() -> None:
    """`lifted_points` (the report's disk): up to `images_per_class` test images of each of the first `classes`
    classes, and each class's strongest attribute, the k of the largest w_ck = softmax_k(<u_c, a_k>/τ_a)."""
    data = norm_world()
    torch.manual_seed(0)
    model = create_method("lathadapter", data, attr_proto=False, num_attributes=3, attr_init="random")
    zero_adapters(model)
    points = model.lifted_points(data, classes=2, images_per_class=1)
    assert points["image_labels"].tolist() == [0, 1] and len(points["images"]) == 2
    u = F.normalize(data.text_features.double(), dim=-1)
    a = F.normalize(model.attribute_prompts.detach().double(), dim=-1)
    weights = torch.softmax(u @ a.t() / model.options.tau_attr, dim=-1)
    assert points["strongest_attribute"].tolist() == weights.argmax(dim=1).tolist()
    assert (weights.argmax(dim=1) != weights.argmin(dim=1)).all()


def test_k_means_keeps_a_centre_whose_cluster_emptied() -> None:
    """k-means with more centres than distinct points: the seeding must repeat a point, the repeat's cluster is empty
    (ties go to the first centre), and an empty cluster keeps its centre, so every centre is one of the points."""
    from lathadapter.adapter.methods.lathadapter.method import kmeans

    points = torch.eye(3).repeat(2, 1)  # three distinct points, each twice
    centres = kmeans(points, 5)
    assert torch.cdist(centres, torch.eye(3)).min(dim=1).values.max() < 1e-6


def test_the_diagnostics_of_a_centred_model_are_those_of_the_plain_model_on_centred_features() -> None:
    """`centre=modality` acts on the inputs of everything (docs/method.md step 0), the diagnostics included: they
    equal those of a `centre=none` model with the same parameters given features centred and renormalised here
    (image mean over the train images' clean and augmented views, text mean over the classes)."""
    data = norm_world()
    image_mean = torch.cat([data.train_features, data.train_augmented.reshape(-1, 4)]).mean(0)
    text_mean = data.text_features.mean(0)

    def images(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x - image_mean, dim=-1)

    centred = FewShotData(data.class_names, F.normalize(data.text_features - text_mean, dim=-1),
                          data.attribute_features, images(data.train_features),
                          images(data.train_features)[:, None], data.train_labels, images(data.val_features),
                          data.val_labels, images(data.test_features), data.test_labels, data.dataset)
    options = dict(radius="norm", num_attributes=3, attr_init="random", cone_k=0.3)
    torch.manual_seed(0)
    model = create_method("lathadapter", data, centre="modality", **options)
    plain = create_method("lathadapter", centred, **options)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("_mean")})
    ours, theirs = model.diagnostics(data), plain.diagnostics(centred)
    uncentred = create_method("lathadapter", data, **options)
    uncentred.load_state_dict(plain.state_dict())
    assert uncentred.diagnostics(data)["train_angle"] != pytest.approx(theirs["train_angle"], abs=1e-3)
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, abs=1e-5), name


# ------------------------------------------------------------------------------------------ class probabilities


@pytest.mark.parametrize("infer", ["euclid", "hyper", "fused"])
def test_class_probabilities_are_the_softmax_of_a_single_score_and_the_mean_of_fused_s_two(infer: str) -> None:
    """docs/method.md step 7: the confidence a run's ECE bins is the softmax of `euclid`'s or `hyper`'s scores (their
    cross-entropy logits), or for `fused`, whose scores are already a sum of two softmaxes, their mean."""
    model = create_method("lathadapter", norm_world(), infer=infer, num_attributes=3, attr_init="random")
    scores = torch.tensor([[2.0, -1.0, 0.5], [0.3, 1.6, 0.1]])  # rows of `fused` scores sum to 2
    expected = scores / 2 if infer == "fused" else torch.exp(scores) / torch.exp(scores).sum(-1, keepdim=True)
    torch.testing.assert_close(model.probabilities(scores), expected)


# ------------------------------------------------------------------------------------------ options


def test_a_cone_kappa_of_zero_is_valid_and_a_negative_margin_is_not() -> None:
    """docs/method.md's table: κ ≥ 0 (κ = 0 makes the cone energy the exterior angle itself), m ≥ 0, m_r ≥ 0."""
    from lathadapter.adapter.options import OptionError

    options = dict(num_attributes=3, attr_init="random")
    assert create_method("lathadapter", norm_world(), cone_kappa=0.0, **options).options.cone_kappa == 0.0
    for name in ("margin", "margin_radial"):
        with pytest.raises(OptionError, match=name) as error:
            create_method("lathadapter", norm_world(), **{name: -0.1}, **options)
        assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------ the kernels backend


def test_the_torch_backend_never_serves_triton() -> None:
    """`LATHADAPTER_KERNELS=torch` (or `backend("torch")`) forces the PyTorch twins for every tensor, whatever its
    dtype or device, and leaves the previous backend in force after the block."""
    from lathadapter.kernels.dispatch import backend, get_backend, use_triton

    before = get_backend()
    with backend("torch"):
        for dtype in (torch.float32, torch.float16, torch.float64):
            assert use_triton(torch.zeros(2, dtype=dtype)) is False
    assert get_backend() == before


def test_an_unknown_backend_is_refused_naming_the_valid_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend other than auto, triton or torch, from `set_backend` or from $LATHADAPTER_KERNELS, is refused with
    the valid names; with neither, the backend is `auto`."""
    from lathadapter.kernels import dispatch

    monkeypatch.setattr(dispatch, "_selected", None)
    monkeypatch.delenv("LATHADAPTER_KERNELS", raising=False)
    assert dispatch.get_backend() == "auto"
    with pytest.raises(ValueError, match="auto, triton, torch"):
        dispatch.set_backend("cuda")
    monkeypatch.setenv("LATHADAPTER_KERNELS", "cuda")
    with pytest.raises(ValueError, match="LATHADAPTER_KERNELS.*auto, triton, torch"):
        dispatch.get_backend()


def test_the_triton_backend_takes_16_and_32_bit_floats_and_refuses_others() -> None:
    """docs/method.md: Triton serves float16, bfloat16 and float32; float64 under backend `triton` is a one-line
    error naming the dtypes. (A supported CPU tensor then needs the interpreter: served, or refused for want of it.)"""
    pytest.importorskip("triton")
    from lathadapter.kernels.dispatch import backend, use_triton

    with backend("triton"):
        with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
            use_triton(torch.zeros(2, dtype=torch.float64))
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            try:
                assert use_triton(torch.zeros(2, dtype=dtype)) is True
            except RuntimeError as error:
                assert "TRITON_INTERPRET" in str(error)


def test_triton_imported_without_the_interpreter_is_named_even_when_the_variable_is_set_later(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors under backend `triton` need the interpreter from the first import of triton: setting
    TRITON_INTERPRET=1 afterwards is refused with the reason (triton already imported without it), not served."""
    pytest.importorskip("triton")
    from lathadapter.kernels import triton_math
    from lathadapter.kernels.dispatch import backend, use_triton

    if triton_math.INTERPRETED:
        pytest.skip("this process imported triton under the interpreter")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with backend("triton"), pytest.raises(RuntimeError, match="already imported without it"):
        use_triton(torch.zeros(2))
