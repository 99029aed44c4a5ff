"""LatHAdapter: attribute prompts bridge categories and images; all three are lifted into a Poincaré ball where a
hierarchical regularisation shapes the latent tree category → attribute → image (docs/method.md).

Only four facts come from the paper's abstract (adapter on frozen CLIP, attribute prompts as a one-to-many bridge,
hyperbolic lift of each batch's categories, attributes and images, hierarchical regularisation). The equations below
are this project's reconstruction, and each of its choices is an option.

Every lifted point is a unit vector times one radius per kind, so `loss` computes every term from direction cosines
and the lift's scalars: the category side is one autograd node (`text`), the images meet prototypes and
attributes in one product, and everything after it is one node (`loss`), both with hand-written backward
passes. `point_loss` computes the same loss over explicit points with the general kernels, as its reference.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lathadapter.adapter.methods.base import LOGIT_SCALE, Adapter, Method, blend, cosines, mix, normalize
from lathadapter.adapter.methods.lathadapter.loss import lathadapter_loss
from lathadapter.adapter.methods.lathadapter.options import CURVATURE_RANGE, LatHAdapterOptions
from lathadapter.adapter.methods.lathadapter.text import TextSide, text_side
from lathadapter.adapter.registry import register
from lathadapter.cache.store import FewShotData
from lathadapter.kernels import (
    centripetal_energy,
    cone_energy,
    edge_energy,
    expmap0,
    pairwise_distance,
    separation_loss,
)
from lathadapter.kernels.radial import radial_distance, scaled_radius


def kmeans(points: torch.Tensor, k: int, seed: int = 0, iterations: int = 50) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding (deterministic for `seed`); returns the `k` centres."""
    generator = torch.Generator().manual_seed(seed)
    points = points.float().cpu()
    centres = [points[torch.randint(len(points), (1,), generator=generator)].squeeze(0)]
    for _ in range(1, k):
        distance = torch.cdist(points, torch.stack(centres)).min(dim=1).values.pow(2)
        centres.append(points[torch.multinomial(distance + 1e-12, 1, generator=generator)].squeeze(0))
    centres_t = torch.stack(centres)
    for _ in range(iterations):
        assignment = torch.cdist(points, centres_t).argmin(dim=1)
        updated = torch.zeros_like(centres_t).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=k).unsqueeze(1)
        updated = torch.where(counts > 0, updated / counts.clamp_min(1), centres_t)
        if torch.allclose(updated, centres_t):
            break
        centres_t = updated
    return centres_t


def init_attribute_prompts(data: FewShotData, options: LatHAdapterOptions) -> torch.Tensor:
    """K × D prompts: k-means centres of the attribute-vocabulary features when the cache has enough of them."""
    dim = data.text_features.shape[1]
    vocabulary = data.attribute_features
    if options.attr_init == "kmeans" and len(vocabulary) >= options.num_attributes:
        return kmeans(vocabulary, options.num_attributes).to(data.text_features.device)
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randn(options.num_attributes, dim, generator=generator) / math.sqrt(dim)
    return prompts.to(data.text_features.device)


@register("lathadapter", LatHAdapterOptions)
class LatHAdapter(Method):
    def __init__(self, options: LatHAdapterOptions, data: FewShotData) -> None:
        super().__init__(options, data)
        device, dim = data.text_features.device, data.text_features.shape[1]
        self.visual_adapter = Adapter(dim, options.reduction).to(device)
        self.text_adapter = Adapter(dim, options.reduction).to(device)
        self.attribute_prompts = nn.Parameter(init_attribute_prompts(data, options))
        self.beta = nn.Parameter(torch.tensor(options.beta, device=device))
        self.log_curvature = nn.Parameter(
            torch.tensor(math.log(options.curvature), device=device), requires_grad=options.learn_curvature
        )
        self.log_scales = nn.Parameter(
            torch.tensor([options.scale_cat, options.scale_attr, options.scale_img], device=device).log()
        )
        self.log_tau_hyp = nn.Parameter(torch.tensor(math.log(options.tau_hyp), device=device))

    # --- the pieces of the forward pass (docs/method.md, steps 1–5) ---

    @property
    def curvature(self) -> torch.Tensor:
        return self.log_curvature.exp().clamp(*CURVATURE_RANGE)

    def adapt_images(self, features: torch.Tensor) -> torch.Tensor:
        return blend(features, self.visual_adapter, self.options.alpha_v)

    def attributes(self) -> torch.Tensor:
        return normalize(self.attribute_prompts)

    def associations(self, cosines: torch.Tensor) -> torch.Tensor:
        """Soft one-to-many associations `softmax_k(<f, a_k> / τ_a)` from the cosines of images or categories to
        the attributes."""
        return torch.softmax(cosines / self.options.tau_attr, dim=-1)

    def text_side(self, text_features: torch.Tensor) -> TextSide:
        """The category side (steps 1–3): the prototypes `p_c`, normalised `q_c = u_c + β Σ_k w_ck a_k` (`u_c` with
        `attr_proto` off), the weights `w_ck`, the cosines `<p_c, a_k>` and the attributes; one autograd node
        (`text`)."""
        first, _, second = self.text_adapter.net
        return text_side(text_features, first.weight, second.weight, self.attribute_prompts, self.beta,
                         self.options.alpha_t, self.options.tau_attr, self.options.attr_proto)

    def prototypes(self, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attribute-refined class prototypes `p_c` and the category→attribute weights `w_ck`."""
        side = self.text_side(text_features)
        return side.prototypes, side.weights

    def radii(self, c: torch.Tensor) -> torch.Tensor:
        """Scaled radii ρ = √c·r of the lifted categories, attributes and images: exp0(s·u) = (ρ/√c)·u for unit u."""
        return scaled_radius(self.log_scales.exp(), c)

    def lift(self, points: torch.Tensor, which: int) -> torch.Tensor:
        """`exp0(s · point)` of unit-norm points with the scale of categories (0), attributes (1) or images (2)."""
        c = self.curvature
        return self.radii(c)[which] / c.sqrt() * points

    def image_class_distances(self, cosines: torch.Tensor, radii: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """`d(h^v_i, h^c_c)` [B, C] from the image–prototype cosines and the scaled radii of the lift."""
        return radial_distance(radii[2], radii[0], cosines, c)

    def hyperbolic_logits(self, distances: torch.Tensor) -> torch.Tensor:
        """`−d(h^v_i, h^c_c) / τ_h`."""
        return distances * -torch.exp(-self.log_tau_hyp)  # one pass over [B, C]; the scalar work is on 0-d tensors

    # --- training loss (docs/method.md, step 6) ---

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """All points are lifted unit vectors, so every term is a function of direction cosines and the lift's
        scalars (`loss`); the cosines come from one product of the images with prototypes and attributes."""
        o = self.options
        side = self.text_side(self.text_features)
        # v = normalize(mixed) is folded into the one product
        mixed = mix(features, self.visual_adapter, o.alpha_v)
        image_cosines = cosines(mixed, torch.cat([side.prototypes, side.attributes]), unit_y=True)
        loss, (ce, hyp, hier) = lathadapter_loss(image_cosines, side.class_attribute, side.weights, self.log_scales,
                                                 self.log_curvature, self.log_tau_hyp, labels, o)
        parts = {"ce": ce}
        if o.lambda_hyp > 0:
            parts["hyp"] = hyp
        if o.lambda_hier > 0:
            parts["hier"] = hier
        return loss, parts

    def point_loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The same total loss computed over explicit lifted points [N, D] with the general fused ops of `kernels`
        (Triton on CUDA, PyTorch elsewhere): the reference the radial form is tested and benchmarked against."""
        o = self.options
        c = self.curvature
        s_cat, s_attr, s_img = self.log_scales.exp()
        v = self.adapt_images(features)
        attributes = self.attributes()
        p, w = self.prototypes(self.text_features)
        loss = F.cross_entropy(LOGIT_SCALE * v @ p.t(), labels)
        images, classes = expmap0(s_img * v, c), expmap0(s_cat * p, c)
        if o.lambda_hyp > 0:
            distances = pairwise_distance(images, classes, c)
            loss = loss + o.lambda_hyp * F.cross_entropy(self.hyperbolic_logits(distances), labels)
        if o.lambda_hier > 0:
            attribute_points = expmap0(s_attr * attributes, c)
            present = torch.unique(labels)
            r = self.associations(v @ attributes.t())
            kind = "cone" if o.hier == "cone" else "centripetal"
            options = {"kind": kind, "K": o.cone_k, "kappa": o.cone_kappa, "margin": o.margin_radial}
            if kind == "cone":
                category_image = cone_energy(classes[labels], images, c, o.cone_k, o.cone_kappa).sum()
            else:
                category_image = centripetal_energy(classes[labels], images, c, o.margin_radial).sum()
            energy = (category_image + edge_energy(classes[present], attribute_points, w[present], c, **options)
                      + edge_energy(attribute_points, images, r.t(), c, **options))
            separation = separation_loss(images, classes[present], torch.searchsorted(present, labels), c, o.margin)
            loss = loss + o.lambda_hier * (energy / (len(labels) + w[present].sum() + r.sum()) + separation)
        return loss

    @torch.no_grad()
    def lifted_points(self, data: FewShotData, classes: int = 4, images_per_class: int = 12) -> dict[str, Any]:
        """The lifted prototypes of the first `classes` classes, every attribute prompt and up to `images_per_class`
        test images of each of those classes, with the curvature and each class's strongest attribute: what the
        report's Poincaré-disk picture draws."""
        self.eval()
        chosen = list(range(min(classes, data.num_classes)))
        prototypes, w = self.prototypes(data.text_features)
        keep = torch.cat([torch.nonzero(data.test_labels == k).flatten()[:images_per_class] for k in chosen])
        return {
            "curvature": float(self.curvature),
            "class_names": [data.class_names[k] for k in chosen],
            "categories": self.lift(prototypes[chosen], 0).cpu(),
            "attributes": self.lift(self.attributes(), 1).cpu(),
            "images": self.lift(self.adapt_images(data.test_features[keep]), 2).cpu(),
            "image_labels": data.test_labels[keep].cpu(),
            "strongest_attribute": w[chosen].argmax(dim=1).cpu(),
        }

    # --- inference (docs/method.md, step 7) ---

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        text = self.text_features if text_features is None else text_features
        v = self.adapt_images(features)
        p, _ = self.prototypes(text)
        cosines = v @ p.t()
        if self.options.infer == "euclid":
            return LOGIT_SCALE * cosines
        c = self.curvature
        hyper = self.hyperbolic_logits(self.image_class_distances(cosines, self.radii(c), c))
        if self.options.infer == "hyper":
            return hyper
        return torch.softmax(LOGIT_SCALE * cosines, dim=-1) + torch.softmax(hyper, dim=-1)
