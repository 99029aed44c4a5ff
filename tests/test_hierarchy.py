"""LatHAdapter's hierarchy diagnostics against Ganea's cone formulas re-stated on hand-made points; the switches of
issue 25 item 3 (`centre`, `cone_parent`, `hyp_metric`) against re-statements and the reference; the refusal of
variants the fused twins do not implement."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lathadapter.adapter.catalog import create_method
from lathadapter.adapter.methods.lathadapter.diagnostics import cone_statistics, mean_radii, radius_summary_of
from lathadapter.adapter.options import OptionError
from lathadapter.cache.store import FewShotData
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments.run import RunConfig, fit
from lathadapter.experiments.table import run_rows


def in_cone(parents: torch.Tensor, children: torch.Tensor, c: torch.Tensor, k: float, kappa: float
            ) -> tuple[float, float]:
    """The diagnostics' (% of the pairs inside the cone, mean exterior angle), read back as they are."""
    share, angle = cone_statistics(parents, children, c, k, kappa).tolist()
    return 100.0 * share, angle


def radius_summary(categories: torch.Tensor, attributes: torch.Tensor, images: torch.Tensor, c: torch.Tensor
                   ) -> dict:
    """The diagnostics' mean radii by kind and their order, read back as they are."""
    return radius_summary_of(mean_radii(categories, attributes, images, c).tolist())


def make_data(classes: int = 6, dim: int = 12, per_class: int = 3, attributes: int = 9) -> FewShotData:
    """A small few-shot set whose images and text share an offset per modality (a modality gap)."""
    generator = torch.Generator().manual_seed(3)
    text = F.normalize(torch.randn(classes, dim, generator=generator) + 2.0, dim=-1)
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = F.normalize(text[labels] + 0.6 * torch.randn(len(labels), dim, generator=generator) - 1.5, dim=-1)
    views = F.normalize(images[:, None, :] + 0.1 * torch.randn(len(labels), 2, dim, generator=generator), dim=-1)
    vocabulary = F.normalize(torch.randn(attributes, dim, generator=generator) + 2.0, dim=-1)
    return FewShotData([str(c) for c in range(classes)], text, vocabulary, images, views, labels, images, labels,
                       images, labels, "t")


# --- Ganea et al.'s cone in the unit ball, re-stated for points of the ball of curvature −c (apply it to √c p) ---

def ganea_aperture(p: torch.Tensor, c: float, k: float) -> float:
    pn = math.sqrt(c) * float(p.norm())
    return math.asin(min(1.0, k * (1 - pn * pn) / pn))


def ganea_angle(p: torch.Tensor, q: torch.Tensor, c: float) -> float:
    p, q = math.sqrt(c) * p.double(), math.sqrt(c) * q.double()
    pn, qn, dot = float(p.norm()), float(q.norm()), float(p @ q)
    cosine = (dot * (1 + pn**2) - pn**2 * (1 + qn**2)) / (pn * float((p - q).norm()) * math.sqrt(1 + pn**2 * qn**2
                                                                                                  - 2 * dot))
    return math.acos(max(-1.0, min(1.0, cosine)))


def planar(radius: float, angle: float, c: float, dim: int = 5) -> torch.Tensor:
    """The point at scaled radius `radius` (√c |h|) and `angle` from the first axis, in the first two axes."""
    point = torch.zeros(dim, dtype=torch.float64)
    point[0], point[1] = math.cos(angle), math.sin(angle)
    return point * radius / math.sqrt(c)


@pytest.mark.parametrize("c", [1.0, 2.5])
@pytest.mark.parametrize(("k", "kappa"), [(0.1, 1.0), (0.3, 1.0), (1.0, 1.0), (0.1, 3.0)])
def test_in_cone_share_and_angle_equal_ganeas_formulas_on_hand_made_points(c: float, k: float, kappa: float) -> None:
    category = planar(0.3, 0.0, c)
    angles = [0.0, 0.05, 0.2, 0.5, 0.9, 1.4, 2.0, math.pi]  # images at scaled radius 0.8, that far off its axis
    images = torch.stack([planar(0.8, a, c) for a in angles])
    parents = category.expand_as(images)
    share, mean_angle = in_cone(parents, images, torch.tensor(c, dtype=torch.float64), k, kappa)
    xi = [ganea_angle(category, image, c) for image in images]
    psi = ganea_aperture(category, c, k)
    assert xi[0] == pytest.approx(0.0, abs=1e-6) and xi[-1] == pytest.approx(math.pi, abs=1e-6)  # on its axis
    assert share == pytest.approx(100.0 * sum(x <= kappa * psi for x in xi) / len(xi))
    assert mean_angle == pytest.approx(sum(xi) / len(xi), abs=1e-6)


def test_the_aperture_decides_which_of_the_hand_made_images_are_inside() -> None:
    """ψ at scaled radius 0.3 with K = 0.1 is arcsin(0.1 · 0.91 / 0.3) ≈ 0.308 rad; images beyond it are outside."""
    c = torch.tensor(1.0, dtype=torch.float64)
    category = planar(0.3, 0.0, 1.0)
    psi = math.asin(0.1 * 0.91 / 0.3)
    inside = [planar(0.3, 0.0, 1.0) * 2.5, planar(0.9, 0.02, 1.0)]
    outside = [planar(0.8, 1.0, 1.0), planar(0.5, 0.6, 1.0)]
    for points, expected in ((inside, 100.0), (outside, 0.0)):
        children = torch.stack(points)
        assert in_cone(category.expand_as(children), children, c, 0.1, 1.0)[0] == expected
    assert all(ganea_angle(category, q, 1.0) > psi for q in outside)


def test_the_cone_boundary_is_sharp_a_ten_thousandth_of_a_radian_decides() -> None:
    """Images whose exterior angle Ξ (Ganea's formula, solved for by bisection) is κψ ∓ 1e-4 rad: the first is
    inside, the second outside; no tolerance widens the cone."""
    c, k, kappa = 1.7, 0.1, 1.0
    category = planar(0.3, 0.0, c)
    psi = ganea_aperture(category, c, k)

    def at_angle(target: float) -> torch.Tensor:
        """The image at scaled radius 0.8 whose Ξ from the category is `target` (Ξ grows with the planar angle)."""
        low, high = 0.0, math.pi / 2
        for _ in range(80):
            middle = (low + high) / 2
            low, high = (middle, high) if ganea_angle(category, planar(0.8, middle, c), c) < target else (low, middle)
        return planar(0.8, (low + high) / 2, c)

    children = torch.stack([at_angle(kappa * psi - 1e-4), at_angle(kappa * psi + 1e-4)])
    curvature = torch.tensor(c, dtype=torch.float64)
    assert in_cone(category.expand_as(children[:1]), children[:1], curvature, k, kappa)[0] == 100.0
    assert in_cone(category.expand_as(children[1:]), children[1:], curvature, k, kappa)[0] == 0.0


def test_radius_summary_and_order_on_hand_made_points() -> None:
    c = torch.tensor(4.0, dtype=torch.float64)
    kinds = {"category": [0.1, 0.3], "attribute": [0.5, 0.5, 0.2], "image": [0.9, 0.7]}
    points = {kind: torch.stack([planar(r, 0.3 * i, 4.0) for i, r in enumerate(radii)])
              for kind, radii in kinds.items()}
    summary = radius_summary(points["category"], points["attribute"], points["image"], c)
    for kind, radii in kinds.items():
        assert summary[f"radius_{kind}"] == pytest.approx(sum(radii) / len(radii))
    assert summary["radius_order"] is True
    swapped = radius_summary(points["attribute"], points["category"], points["image"], c)
    assert swapped["radius_order"] is False


def test_a_trained_runs_metrics_hold_the_diagnostics_in_their_ranges(tmp_path: Path) -> None:
    cache = write_synthetic_cache(tmp_path / "c.h5", num_classes=8, dim=16, shots=(4,), seeds=(1,))
    metrics = fit(cache, "lathadapter", shots=4, seed=1, classes="base", out=tmp_path / "runs", device="cpu",
                  epochs=2, min_steps=20)
    saved = json.loads((Path(metrics["run_dir"]) / "metrics.json").read_text())["hierarchy"]
    assert set(saved) == {"train_in_cone", "test_in_cone", "train_angle", "test_angle", "aperture",
                          "radius_category", "radius_attribute", "radius_image", "radius_order",
                          "euclid_hyper_disagree"}
    for name in ("train_in_cone", "test_in_cone", "euclid_hyper_disagree"):
        assert 0 <= saved[name] <= 100, name
    for name in ("train_angle", "test_angle"):
        assert 0 <= saved[name] <= math.pi, name
    assert 0 < saved["aperture"] <= math.pi / 2
    for name in ("radius_category", "radius_attribute", "radius_image"):
        assert 0 < saved[name] < 1, name
    assert isinstance(saved["radius_order"], bool)
    assert saved["euclid_hyper_disagree"] == 0  # radius=kind: hyperbolic distance is monotone in the cosine
    row = run_rows([Path(metrics["run_dir"])])[0]
    assert row["hier.train_in_cone"] == saved["train_in_cone"] and row["hier.radius_order"] == saved["radius_order"]


def axis_world(train_angles: list[float], test_angles: list[float]) -> FewShotData:
    """Two classes with text on the first and second axes; each class's images at the given angles from its text,
    turned towards the third axis (class 0) or the fourth (class 1)."""
    def image(label: int, angle: float) -> torch.Tensor:
        point = torch.zeros(4)
        point[label], point[2 + label] = math.cos(angle), math.sin(angle)
        return point

    def split(angles: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.tensor([label for label in (0, 1) for _ in angles])
        return torch.stack([image(label, a) for label in (0, 1) for a in angles]), labels

    (train, train_labels), (test, test_labels) = split(train_angles), split(test_angles)
    text = torch.eye(4)[:2]
    vocabulary = F.normalize(torch.ones(3, 4), dim=-1)
    return FewShotData(["a", "b"], text, vocabulary, train, train[:, None], train_labels, train, train_labels, test,
                       test_labels, "axes")


@pytest.mark.parametrize("cone_parent", ["text", "image"])
def test_a_models_diagnostics_equal_ganeas_formulas_on_its_known_points(cone_parent: str) -> None:
    """With both adapters zeroed and `attr_proto` off, v_i = x_i and p_c = t_c, and with `radius=kind` every scaled
    radius is tanh(√c s_kind): the diagnostics are Ganea's formulas on points placed by hand. With
    `cone_parent=image`, a class's parent lies along the mean of its train images' directions."""
    c, k, kappa = 1.7, 0.3, 1.0
    train_angles, test_angles = [0.1, 0.5, 1.2], [0.05, 0.3, 0.8, 1.5]
    data = axis_world(train_angles, test_angles)
    model = create_method("lathadapter", data, attr_proto=False, radius="kind", curvature=c, cone_k=k,
                          cone_kappa=kappa, num_attributes=3, attr_init="random", cone_parent=cone_parent,
                          impl="reference" if cone_parent == "image" else "fused")
    with torch.no_grad():
        for adapter in (model.visual_adapter, model.text_adapter):
            for layer in (adapter.net[0], adapter.net[2]):
                layer.weight.zero_()
    diagnostics = model.diagnostics(data)
    rho = {kind: math.tanh(math.sqrt(c) * scale) for kind, scale in (("cat", 0.3), ("attr", 0.6), ("img", 1.0))}
    # the parent direction's angle from the class's text axis, turned towards its image plane
    parent_angle = math.atan2(sum(map(math.sin, train_angles)), sum(map(math.cos, train_angles))) \
        if cone_parent == "image" else 0.0
    parent = planar(rho["cat"], parent_angle, c, dim=2)
    xi_train = [ganea_angle(parent, planar(rho["img"], a, c, dim=2), c) for a in train_angles]
    xi_test = [ganea_angle(parent, planar(rho["img"], a, c, dim=2), c) for a in test_angles]
    psi = ganea_aperture(parent, c, k)
    expected = {
        "train_in_cone": 100.0 * sum(x <= kappa * psi for x in xi_train) / len(xi_train),
        "test_in_cone": 100.0 * sum(x <= kappa * psi for x in xi_test) / len(xi_test),
        "train_angle": sum(xi_train) / len(xi_train), "test_angle": sum(xi_test) / len(xi_test), "aperture": psi,
        "radius_category": rho["cat"], "radius_attribute": rho["attr"], "radius_image": rho["img"],
    }
    assert 0 < expected["train_in_cone"] < 100 and 0 < expected["test_in_cone"] < 100  # the cone splits them
    for name, value in expected.items():
        assert diagnostics[name] == pytest.approx(value, abs=1e-5), name
    assert diagnostics["radius_order"] is True and diagnostics["euclid_hyper_disagree"] == 0


# --- the switches ---

def test_fused_refuses_cone_parent_image_in_one_line_naming_the_reference() -> None:
    for make in (lambda: create_method("lathadapter", make_data(), cone_parent="image"),
                 lambda: RunConfig.create("lathadapter", 4, 1, overrides={"cone_parent": "image"})):
        with pytest.raises(OptionError, match="impl=reference") as error:
            make()
        assert "\n" not in str(error.value) and "cone_parent" in str(error.value)
    create_method("lathadapter", make_data(), cone_parent="image", impl="reference")


def test_centre_modality_equals_the_plain_model_on_centred_renormalised_features() -> None:
    """A `centre=modality` model against a `centre=none` twin with the same parameters, fed features centred and
    renormalised here (image mean over the train images' clean and augmented views, text mean over the training
    classes): same loss (every impl), same logits for the training and for novel classes, same lifted points."""
    data = make_data()
    dim = data.text_features.shape[1]
    image_mean = torch.cat([data.train_features, data.train_augmented.reshape(-1, dim)]).mean(0)
    text_mean = data.text_features.mean(0)
    centred_text = F.normalize(data.text_features - text_mean, dim=-1)
    novel_text = F.normalize(torch.randn(4, dim, generator=torch.Generator().manual_seed(5)), dim=-1)

    def images(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x - image_mean, dim=-1)

    centred_data = dataclasses.replace(data, text_features=centred_text, test_features=images(data.test_features))
    for options in ({"radius": "kind"}, {"radius": "head", "impl": "reference"}, {"radius": "norm"}):
        torch.manual_seed(0)
        model = create_method("lathadapter", data, centre="modality", attr_init="random", **options)
        torch.manual_seed(0)
        plain = create_method("lathadapter", centred_data, attr_init="random", **options)
        torch.testing.assert_close(model.text_features, centred_text)
        x, y = data.train_features, data.train_labels
        torch.testing.assert_close(model.loss(x, y)[0], plain.loss(images(x), y)[0])
        with torch.no_grad():
            torch.testing.assert_close(model.logits(data.test_features), plain.logits(images(data.test_features)))
            torch.testing.assert_close(model.logits(data.test_features, novel_text),
                                       plain.logits(images(data.test_features),
                                                    F.normalize(novel_text - text_mean, dim=-1)))
        ours, theirs = model.lifted_points(data), plain.lifted_points(centred_data)
        for kind in ("categories", "attributes", "images"):
            torch.testing.assert_close(ours[kind], theirs[kind])


def test_centre_modality_starts_attribute_prompts_from_the_centred_vocabulary() -> None:
    data = make_data()
    model = create_method("lathadapter", data, centre="modality", num_attributes=3)
    centred = F.normalize(data.attribute_features - data.text_features.mean(0), dim=-1)
    # every k-means centre is a mean of centred vocabulary rows: its nearest row is closer than any raw row
    nearest_centred = torch.cdist(model.attribute_prompts.detach(), centred).min(1).values
    nearest_raw = torch.cdist(model.attribute_prompts.detach(), data.attribute_features).min(1).values
    assert (nearest_centred < nearest_raw).all()


SWITCH_CASES = [{"radius": r, "hier": h, "hyp_metric": "euclid", "lambda_hier": 0.1} for r in ("kind", "head", "norm")
                for h in ("cone", "triplet")]
SWITCH_CASES += [{"radius": "kind", "hyp_metric": "euclid", "lambda_hier": 0.0, "lambda_anchor": 0.3},
                 {"radius": "head", "centre": "modality", "hyp_metric": "euclid", "lambda_hier": 0.1},
                 {"radius": "kind", "centre": "modality", "lambda_hier": 0.1},
                 {"radius": "norm", "centre": "modality", "lambda_hier": 0.1}]


@pytest.mark.parametrize("options", SWITCH_CASES, ids=["-".join(f"{k}={v}" for k, v in o.items())
                                                       for o in SWITCH_CASES])
def test_fused_equals_the_reference_in_float64_under_the_switches(options: dict) -> None:
    data = make_data(classes=7, dim=13)
    torch.manual_seed(1)
    model = create_method("lathadapter", data, num_attributes=5, curvature=1.4, **options).double()
    if model.options.radius == "head":
        with torch.no_grad():
            model.radius_weight.copy_(torch.randn(model.radius_weight.shape, generator=torch.Generator()
                                                  .manual_seed(7)))
    batch = torch.tensor([0, 2, 3, 5, 7, 8, 13, 14, 20])
    x, y = data.train_features[batch].double(), data.train_labels[batch]
    params = [p for p in model.parameters() if p.requires_grad]
    results = []
    for impl in ("fused", "reference"):
        model.options = dataclasses.replace(model.options, impl=impl)
        loss, parts = model.loss(x, y)
        results.append((loss, parts, torch.autograd.grad(loss, params, materialize_grads=True)))
    (fused, fused_parts, fused_grads), (reference, reference_parts, reference_grads) = results
    tol = {"rtol": 1e-9, "atol": 1e-11}
    torch.testing.assert_close(fused, reference, **tol)
    assert fused_parts.keys() == reference_parts.keys()
    for (name, _), g, e in zip((n for n in model.named_parameters() if n[1].requires_grad), fused_grads,
                               reference_grads, strict=True):
        torch.testing.assert_close(g, e, **tol, msg=lambda m, name=name: f"{name}: {m}")


def test_hyp_metric_euclid_is_cross_entropy_of_cosines_over_tau_and_so_is_its_inference() -> None:
    """With `attr_proto` off, p_c = norm(m_c): L_hyp and the `infer=hyper` scores re-stated from the adapters."""
    data = make_data()
    for impl in ("fused", "reference"):
        model = create_method("lathadapter", data, hyp_metric="euclid", attr_proto=False, impl=impl, infer="hyper")
        with torch.no_grad():
            model.log_tau_hyp.fill_(math.log(0.2))
        x, y = data.train_features, data.train_labels

        def adapted(features: torch.Tensor, adapter: torch.nn.Module, alpha: float) -> torch.Tensor:
            return F.normalize((1 - alpha) * features + alpha * adapter(features), dim=-1)

        with torch.no_grad():
            v = adapted(x, model.visual_adapter, model.options.alpha_v)
            p = adapted(data.text_features, model.text_adapter, model.options.alpha_t)
            _, parts = model.loss(x, y)
            assert float(parts["hyp"]) == pytest.approx(float(F.cross_entropy(v @ p.t() / 0.2, y)), rel=1e-5)
            torch.testing.assert_close(model.logits(x), v @ p.t() / 0.2)
            euclid, hyper = model.scores(x)
            assert (euclid.argmax(-1) == hyper.argmax(-1)).all()


def test_cone_parent_image_with_one_image_per_class_puts_every_image_in_its_cone() -> None:
    """With one image of each class in the batch, the image-side centre of its class is its own direction: the image
    lies on the centre's ray beyond it (scaled radii 0.76 > 0.29), so the category → image energies vanish and
    L_hier drops by exactly their weighted mean, which is re-computed here from Ganea's formulas on the text edges."""
    data = make_data()
    batch = torch.tensor([0, 3, 6, 9, 12, 15])  # one image of each of the six classes
    x, y = data.train_features[batch].double(), data.train_labels[batch]
    torch.manual_seed(0)
    text_model = create_method("lathadapter", data, impl="reference", num_attributes=4, lambda_hier=0.1).double()
    image_model = create_method("lathadapter", data, impl="reference", num_attributes=4, cone_parent="image",
                                lambda_hier=0.1).double()
    image_model.load_state_dict(text_model.state_dict())
    _, text_parts = text_model.loss(x, y)
    _, image_parts = image_model.loss(x, y)
    with torch.no_grad():
        c = float(text_model.curvature)
        v, length = text_model.adapt_images(x)
        side = text_model.text_side(text_model.text_features)
        h_v = text_model.lift(2, v, length)
        h_c = (text_model.class_radii(text_model.text_features, side, text_model.curvature) / math.sqrt(c))[:, None] \
            * side.prototypes
    k, kappa = text_model.options.cone_k, text_model.options.cone_kappa
    energies = [max(0.0, ganea_angle(h_c[int(y[i])], h_v[i], c) - kappa * ganea_aperture(h_c[int(y[i])], c, k))
                for i in range(len(y))]
    total_weight = 2 * len(y) + len(torch.unique(y))
    assert float(text_parts["hier"] - image_parts["hier"]) == pytest.approx(sum(energies) / total_weight, rel=1e-6)
    assert sum(energies) > 0.1  # the text edges were far from their cones


def test_cone_parent_image_parents_each_image_at_the_mean_direction_of_its_class_in_the_batch() -> None:
    """Several images of a class in the batch: the parent of image i is e_c = norm(Σ_{j: y_j = c} v_j) over the
    batch's images of its class, lifted as a category (radius=kind: scaled radius tanh(√c s_cat)). Only the
    category → image edges differ from `cone_parent=text`, so L_hier differs by (Σ_i E(h^c_{y_i}, h^v_i) −
    Σ_i E(e_{y_i}, h^v_i)) / (total weight), each E re-computed here from Ganea's formulas on points placed from the
    adapters' plain formulas (attr_proto off: p_c = norm(m_c))."""
    data = make_data()
    batch = torch.tensor([0, 1, 2, 3, 5, 9, 12, 13])  # classes 0 ×3, 1 ×2, 3 ×1, 4 ×2
    x, y = data.train_features[batch].double(), data.train_labels[batch]
    torch.manual_seed(0)
    options = dict(impl="reference", num_attributes=4, lambda_hier=0.1, attr_proto=False, curvature=1.6,
                   scale_cat=0.5, scale_img=1.2)
    text_model = create_method("lathadapter", data, **options).double()
    image_model = create_method("lathadapter", data, cone_parent="image", **options).double()
    image_model.load_state_dict(text_model.state_dict())
    _, text_parts = text_model.loss(x, y)
    _, image_parts = image_model.loss(x, y)
    o = text_model.options

    def adapted(features: torch.Tensor, adapter: torch.nn.Module, alpha: float) -> torch.Tensor:
        first, _, second = adapter.net
        return F.normalize((1 - alpha) * features + alpha * torch.relu(features @ first.weight.t()) @
                           second.weight.t(), dim=-1)

    c, k, kappa = 1.6, o.cone_k, o.cone_kappa
    with torch.no_grad():
        v = adapted(x, text_model.visual_adapter, o.alpha_v)
        p = adapted(data.text_features.double(), text_model.text_adapter, o.alpha_t)
    h_v = math.tanh(math.sqrt(c) * 1.2) / math.sqrt(c) * v
    h_c = math.tanh(math.sqrt(c) * 0.5) / math.sqrt(c) * p
    centres = {int(label): F.normalize(v[y == label].sum(0), dim=-1) for label in torch.unique(y)}
    e = torch.stack([math.tanh(math.sqrt(c) * 0.5) / math.sqrt(c) * centres[int(label)] for label in y])

    def energy(parent: torch.Tensor, child: torch.Tensor) -> float:
        return max(0.0, ganea_angle(parent, child, c) - kappa * ganea_aperture(parent, c, k))

    text_edges = sum(energy(h_c[int(y[i])], h_v[i]) for i in range(len(y)))
    image_edges = sum(energy(e[i], h_v[i]) for i in range(len(y)))
    total_weight = 2 * len(y) + len(torch.unique(y))
    assert float(text_parts["hier"] - image_parts["hier"]) == pytest.approx(
        (text_edges - image_edges) / total_weight, rel=1e-6, abs=1e-9)
    assert image_edges > 0.01  # the class centres are not the images' own directions: some lie outside their cones


def test_variants_the_stacked_twin_lacks_do_not_stack() -> None:
    data = make_data()
    assert create_method("lathadapter", data).stackable
    assert create_method("lathadapter", data, centre="modality").stackable
    assert not create_method("lathadapter", data, hyp_metric="euclid").stackable
    assert not create_method("lathadapter", data, cone_parent="image", impl="reference").stackable


def test_centred_runs_stack_and_their_stacked_loss_is_the_references() -> None:
    """Under vmap over two stacked copies (`grid --batch-runs`), a `centre=modality` model's loss (its centring buffers
    stacked with it) equals the reference's in float64."""
    from lathadapter.adapter.batched import LossModule

    data = make_data(classes=7, dim=13)
    torch.manual_seed(1)
    model = create_method("lathadapter", data, num_attributes=5, centre="modality", impl="reference").double()
    x, y = data.train_features.double(), data.train_labels
    reference, _ = model.loss(x, y)
    module = LossModule(model)
    params, buffers = torch.func.stack_module_state([module, module])
    assert any(name.endswith("image_mean") for name in buffers)
    stacked, _ = torch.func.vmap(lambda p, b, x, y: torch.func.functional_call(module, (p, b), (x, y)))(
        params, buffers, torch.stack([x, x]), torch.stack([y, y]))
    torch.testing.assert_close(stacked, torch.stack([reference, reference]).detach(), rtol=1e-9, atol=1e-11)
