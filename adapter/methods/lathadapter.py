"""LatHAdapter: attribute prompts bridge categories and images; all three are lifted into a Poincaré ball where a
hierarchical regularisation shapes the latent tree category → attribute → image (METHOD.md).

Only four facts come from the paper's abstract (adapter on frozen CLIP, attribute prompts as a one-to-many bridge,
hyperbolic lift of each batch's categories, attributes and images, hierarchical regularisation). The equations below
are this project's reconstruction, and each of its choices is an option.

Every lifted point is a unit vector times one radius per kind, so `loss` computes distances and cone energies from
radii and direction cosines (`kernels.radial`); `point_loss` computes the same loss over explicit points with the
general kernels, as its reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lathadapter.adapter.methods.base import Adapter, Method, blend, normalize
from lathadapter.adapter.methods.zeroshot import LOGIT_SCALE
from lathadapter.adapter.options import TrainOptions, choice
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
from lathadapter.kernels.radial import (
    radial_centripetal_energy,
    radial_distance,
    radial_exterior_angle,
    radial_half_aperture,
    scaled_radius,
)

CURVATURE_RANGE = (0.1, 10.0)


@dataclass
class LatHAdapterOptions(TrainOptions):
    reduction: int = 4  # adapters D → D/r → D
    alpha_v: float = 0.2  # residual ratio of the visual adapter
    alpha_t: float = 0.2  # residual ratio of the text adapter
    num_attributes: int = 16  # K attribute prompts
    attr_init: str = "kmeans"  # kmeans (of the cached attribute vocabulary) | random (N(0, 1/D))
    tau_attr: float = 0.07  # temperature of the soft associations
    attr_proto: bool = True  # attribute-refined class prototypes p_c
    beta: float = 0.1  # initial weight of the attribute term in p_c (learnable)
    curvature: float = 1.0  # initial c of the ball (curvature −c)
    learn_curvature: bool = True
    scale_cat: float = 0.3  # initial lift scales: categories nearest the origin
    scale_attr: float = 0.6
    scale_img: float = 1.0
    tau_hyp: float = 0.07  # initial temperature of the hyperbolic-distance logits (learnable)
    hier: str = "cone"  # cone | triplet
    cone_k: float = 0.1  # K of the entailment cone's half-aperture
    cone_kappa: float = 1.0  # κ: energy = max(0, Ξ − κ ψ)
    margin: float = 0.1  # m of the in-batch separation term
    margin_radial: float = 0.1  # m_r of the centripetal term (triplet)
    lambda_hyp: float = 0.5
    lambda_hier: float = 0.1
    infer: str = "fused"  # euclid | hyper | fused

    def validate(self) -> None:
        choice("attr_init", self.attr_init, ("kmeans", "random"))
        choice("hier", self.hier, ("cone", "triplet"))
        choice("infer", self.infer, ("euclid", "hyper", "fused"))
        low, high = CURVATURE_RANGE
        if not low <= self.curvature <= high:
            raise ValueError(f"option curvature={self.curvature} is outside [{low}, {high}]")
        if not self.cone_k > 0:
            raise ValueError(f"option cone_k={self.cone_k} must be positive (K of the cone's half-aperture)")
        if not self.cone_kappa >= 0:
            raise ValueError(f"option cone_kappa={self.cone_kappa} must be at least 0 (the aperture's multiplier)")
        if self.num_attributes < 1 or self.reduction < 1:
            raise ValueError("options num_attributes and reduction must be at least 1")


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

    # --- the pieces of the forward pass (METHOD.md steps 1–5) ---

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

    def prototypes(self, text_features: torch.Tensor, attributes: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attribute-refined class prototypes `p_c` and the category→attribute weights `w_ck`."""
        u = blend(text_features, self.text_adapter, self.options.alpha_t)
        attributes = self.attributes() if attributes is None else attributes
        w = self.associations(u @ attributes.t())
        if not self.options.attr_proto:
            return u, w
        return normalize(torch.addmm(u, w, self.beta * attributes)), w  # u + β w A, β applied to the small A

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

    # --- training loss (METHOD.md step 6) ---

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """All points are lifted unit vectors, so the hyperbolic terms are computed from radii and cosines
        (`kernels.radial`); the cosines are the products the Euclidean logits and the associations need anyway."""
        o = self.options
        v = self.adapt_images(features)
        attributes = self.attributes()
        p, w = self.prototypes(self.text_features, attributes)
        image_class = v @ p.t()  # [B, C] cosines
        loss_ce = F.cross_entropy(LOGIT_SCALE * image_class, labels)
        parts = {"ce": loss_ce.detach()}
        loss = loss_ce
        if o.lambda_hyp <= 0 and o.lambda_hier <= 0:
            return loss, parts
        c = self.curvature
        radii = self.radii(c)
        distances = self.image_class_distances(image_class, radii, c)
        if o.lambda_hyp > 0:
            loss_hyp = F.cross_entropy(self.hyperbolic_logits(distances), labels)
            loss = loss + o.lambda_hyp * loss_hyp
            parts["hyp"] = loss_hyp.detach()
        if o.lambda_hier > 0:
            loss_hier = self.hierarchy_loss(labels, image_class, distances, v @ attributes.t(), p, attributes, w,
                                            radii, c)
            loss = loss + o.lambda_hier * loss_hier
            parts["hier"] = loss_hier.detach()
        return loss, parts

    def point_loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The same total loss computed over explicit lifted points [N, D] with the general fused ops of `kernels`
        (Triton on CUDA, PyTorch elsewhere): the reference the radial form is tested and benchmarked against."""
        o = self.options
        c = self.curvature
        s_cat, s_attr, s_img = self.log_scales.exp()
        v = self.adapt_images(features)
        attributes = self.attributes()
        p, w = self.prototypes(self.text_features, attributes)
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

    def hierarchy_loss(self, labels: torch.Tensor, image_class: torch.Tensor, distances: torch.Tensor,
                       image_attribute: torch.Tensor, p: torch.Tensor, attributes: torch.Tensor, w: torch.Tensor,
                       radii: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The batch tree's regularisation: edge energies (cone or centripetal) plus in-batch separation.

        Edges: category y_i → image i (weight 1), category → attribute (w_ck, categories of the batch), attribute →
        image (r_ik); the energy term is their weighted mean. `image_class` [B, C] and `image_attribute` [B, K] are
        direction cosines, `distances` [B, C] the image–category distances, `radii` the scaled radii of categories,
        attributes and images.
        """
        o = self.options
        present = torch.unique(labels)  # sorted categories of the batch
        r = self.associations(image_attribute)  # [B, K]
        category_attribute = w.index_select(0, present)  # [P, K]
        if o.hier == "cone":  # the three edge sets in one call: [B] category→image, [P·K], [B·K]
            rho_cat, rho_attr, rho_img = radii
            cosines = torch.cat([image_class.gather(1, labels[:, None]).flatten(),
                                 (p.index_select(0, present) @ attributes.t()).flatten(),
                                 image_attribute.flatten()])
            sizes = [len(labels), category_attribute.numel(), r.numel()]
            rho_parent = torch.cat([rho_cat.expand(sizes[0] + sizes[1]), rho_attr.expand(sizes[2])])
            rho_child = torch.cat([rho_img.expand(sizes[0]), rho_attr.expand(sizes[1]), rho_img.expand(sizes[2])])
            psi_cat, psi_attr = radial_half_aperture(radii[:2], o.cone_k)  # ψ of the two parent kinds only
            half_aperture = torch.cat([psi_cat.expand(sizes[0] + sizes[1]), psi_attr.expand(sizes[2])])
            energies = torch.relu(radial_exterior_angle(rho_parent, rho_child, cosines) - o.cone_kappa * half_aperture)
            weights = torch.cat([torch.ones_like(r[:, 0]), category_attribute.flatten(), r.flatten()])
            weighted_energy = (weights * energies).sum()
        else:  # centripetal: an edge's energy depends on the radii of its ends only, one value per edge kind
            # radii: categories, attributes, images; edges: category→image, category→attribute, attribute→image
            energies = radial_centripetal_energy(radii[[0, 0, 1]], radii[[2, 1, 2]], c, o.margin_radial)
            weighted_energy = (len(labels) * energies[0] + category_attribute.sum() * energies[1]
                               + r.sum() * energies[2])
        total_weight = len(labels) + category_attribute.sum() + r.sum()
        edge_term = weighted_energy / total_weight
        return edge_term + self.separation(labels, present, distances)

    def separation(self, labels: torch.Tensor, present: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
        """`mean_i mean_{c ≠ y_i, c in batch} max(0, d(h^v_i, h^c_{y_i}) − d(h^v_i, h^c_c) + m)`; 0 for one category.

        `present` [P] lists the batch's categories; every image has the same count of negatives, P − 1.
        """
        if len(present) < 2:
            return distances.new_zeros(())
        # index_select, not [:, present]: its backward is an index_add, several times faster than an index_put
        batch_distances = distances.index_select(1, present)  # [B, P]
        positive = batch_distances.gather(1, torch.searchsorted(present, labels)[:, None])  # [B, 1]
        negative = present[None, :] != labels[:, None]  # [B, P]
        hinge = torch.relu(positive - batch_distances + self.options.margin) * negative
        return hinge.sum() / (len(labels) * (len(present) - 1))

    # --- inference (METHOD.md step 7) ---

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
