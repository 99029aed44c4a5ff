"""LatHAdapter: attribute prompts bridge categories and images; all three are lifted into a Poincaré ball where a
hierarchical regularisation shapes the latent tree category → attribute → image (METHOD.md).

Only four facts come from the paper's abstract (adapter on frozen CLIP, attribute prompts as a one-to-many bridge,
hyperbolic lift of each batch's categories, attributes and images, hierarchical regularisation). The equations below
are this project's reconstruction, and each of its choices is an option.
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

    def associations(self, features: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
        """Soft one-to-many associations `softmax_k(<f, a_k> / τ_a)` of images or categories to attributes."""
        return torch.softmax(features @ attributes.t() / self.options.tau_attr, dim=-1)

    def prototypes(self, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attribute-refined class prototypes `p_c` and the category→attribute weights `w_ck`."""
        u = blend(text_features, self.text_adapter, self.options.alpha_t)
        attributes = self.attributes()
        w = self.associations(u, attributes)
        if not self.options.attr_proto:
            return u, w
        return normalize(u + self.beta * (w @ attributes)), w

    def lift(self, points: torch.Tensor, which: int) -> torch.Tensor:
        """`exp0(s · point)` with the learned scale of categories (0), attributes (1) or images (2)."""
        return expmap0(self.log_scales[which].exp() * points, self.curvature)

    def hyperbolic_logits(self, image_points: torch.Tensor, class_points: torch.Tensor) -> torch.Tensor:
        return -pairwise_distance(image_points, class_points, self.curvature) / self.log_tau_hyp.exp()

    # --- training loss (METHOD.md step 6) ---

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        o = self.options
        c = self.curvature
        v = self.adapt_images(features)
        p, w = self.prototypes(self.text_features)
        attributes = self.attributes()
        loss_ce = F.cross_entropy(LOGIT_SCALE * v @ p.t(), labels)
        image_points, class_points = self.lift(v, 2), self.lift(p, 0)
        parts = {"ce": loss_ce.detach()}
        loss = loss_ce
        if o.lambda_hyp > 0:
            loss_hyp = F.cross_entropy(self.hyperbolic_logits(image_points, class_points), labels)
            loss = loss + o.lambda_hyp * loss_hyp
            parts["hyp"] = loss_hyp.detach()
        if o.lambda_hier > 0:
            loss_hier = self.hierarchy_loss(v, labels, image_points, class_points, attributes, w, c)
            loss = loss + o.lambda_hier * loss_hier
            parts["hier"] = loss_hier.detach()
        return loss, parts

    def hierarchy_loss(self, v: torch.Tensor, labels: torch.Tensor, image_points: torch.Tensor,
                       class_points: torch.Tensor, attributes: torch.Tensor, w: torch.Tensor,
                       c: torch.Tensor) -> torch.Tensor:
        """The batch tree's regularisation: edge energies (cone or centripetal) plus in-batch separation.

        Edges: category y_i → image i (weight 1), category → attribute (w_ck, categories of the batch), attribute →
        image (r_ik); the energy term is their weighted mean. The category → image edges, one parent per child, are
        scored pair by pair; the dense attribute edges go through the fused `edge_energy`.
        """
        o = self.options
        present = torch.unique(labels)  # sorted categories of the batch
        positive = torch.searchsorted(present, labels)  # each image's parent among them
        category_points = class_points[present]
        attribute_points = self.lift(attributes, 1)
        r = self.associations(v, attributes)  # [B, K]
        category_attribute = w[present]  # [P, K]
        kind = "cone" if o.hier == "cone" else "centripetal"

        def energy(parents: torch.Tensor, children: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
            return edge_energy(parents, children, weights, c, kind=kind, K=o.cone_k, kappa=o.cone_kappa,
                               margin=o.margin_radial)

        if kind == "cone":
            category_image = cone_energy(class_points[labels], image_points, c, o.cone_k, o.cone_kappa)
        else:
            category_image = centripetal_energy(class_points[labels], image_points, c, o.margin_radial)
        total_energy = (
            category_image.sum()
            + energy(category_points, attribute_points, category_attribute)
            + energy(attribute_points, image_points, r.t())
        )
        total_weight = len(labels) + category_attribute.sum() + r.sum()
        separation = separation_loss(image_points, category_points, positive, c, o.margin)
        return total_energy / total_weight + separation

    # --- inference (METHOD.md step 7) ---

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        text = self.text_features if text_features is None else text_features
        v = self.adapt_images(features)
        p, _ = self.prototypes(text)
        if self.options.infer == "euclid":
            return LOGIT_SCALE * v @ p.t()
        hyper = self.hyperbolic_logits(self.lift(v, 2), self.lift(p, 0))
        if self.options.infer == "hyper":
            return hyper
        return torch.softmax(LOGIT_SCALE * v @ p.t(), dim=-1) + torch.softmax(hyper, dim=-1)
