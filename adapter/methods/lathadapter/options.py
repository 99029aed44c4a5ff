"""LatHAdapter's options, one frozen dataclass (docs/method.md lists each with its meaning)."""

from __future__ import annotations

from dataclasses import dataclass

from lathadapter.adapter.options import TrainOptions, choice

CURVATURE_RANGE = (0.1, 10.0)


@dataclass(frozen=True)
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
