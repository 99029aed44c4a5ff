"""LatHAdapter's loss after the cosine products: the fused twins of `reference.reference_loss` for every radius —
Triton kernels on CUDA (`kernels/triton_radial_loss.py`, under the kernels backend: `LATHADAPTER_KERNELS=torch`
forces the PyTorch twin), the PyTorch twin below elsewhere (the one CPU twin). Radii come as vectors (`radius=head`,
`norm`; under Triton also `kind`, one radius per kind as a constant vector) or, for `radius=kind` off Triton, as one
0-d radius per kind, whose gradients the radial nodes reduce instead of spreading over the edges.

Every distance and cone angle between two lifted points is a function of their two radii and the cosine of their
directions, so the loss takes the batch's cosine matrices — image–prototype [B, C], image–attribute [B, K],
prototype–attribute [C, K] — and the radii, never [N, D] points. Distances and exterior angles are the
radial nodes of `kernels.radial`, whose hand-written backward passes give the gradients for the cosines and for
radius vectors broadcast against them; the rest (softmaxes, hinges, weighted means) is ordinary autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lathadapter.adapter.methods.base import LOGIT_SCALE
from lathadapter.adapter.methods.lathadapter.options import LatHAdapterOptions
from lathadapter.kernels.dispatch import use_triton
from lathadapter.kernels.radial import as_column, as_row, radial_centripetal_energy, radial_cone_energy, radial_distance


def _edge_energy(o: LatHAdapterOptions, rho_parent: torch.Tensor, rho_child: torch.Tensor, cosine: torch.Tensor,
                 c: torch.Tensor) -> torch.Tensor:
    """Cone energy (`hier=cone`) or centripetal hinge (`hier=triplet`) of parent → child edges."""
    if o.hier == "cone":
        return radial_cone_energy(rho_parent, rho_child, cosine, o.cone_k, o.cone_kappa)
    return radial_centripetal_energy(rho_parent, rho_child, c, o.margin_radial)


def _at(rho: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The radii of the points `index` picks: a 0-d radius is every point's."""
    return rho[index] if rho.dim() else rho


def _weighted_sum(energy: torch.Tensor, weights: torch.Tensor | None, rows: int) -> torch.Tensor:
    """Σ over an edge set of weight · energy; the energy broadcasts against the weights (None: each 1). A 0-d energy
    (a centripetal hinge between two 0-d radii) is the same on every edge, and each of the `rows` rows of weights
    sums to 1 (or is one edge of weight 1): its sum is energy · rows, and the weights need not be computed."""
    if energy.dim() == 0:
        return energy * rows
    return energy.sum() if weights is None else torch.sum(weights * energy)


def fused_loss(image_cosines: torch.Tensor, class_attribute: torch.Tensor, class_weights: torch.Tensor,
               rho_categories: torch.Tensor, rho_attributes: torch.Tensor, rho_images: torch.Tensor,
               c: torch.Tensor, log_tau: torch.Tensor, labels: torch.Tensor, o: LatHAdapterOptions
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`L_ce + λ_hyp L_hyp + λ_hier L_hier` and its detached parts, from the cosines of the batch's images with the
    C prototypes and the K attributes [B, C + K], the cosines <p_c, a_k> and weights w_ck [C, K], the scaled radii
    (ρ' = √c |h| < 1) of categories [C], attributes [K] and images [B], the curvature and log τ_h."""
    num_classes = class_weights.shape[0]
    image_class, image_attribute = image_cosines[:, :num_classes], image_cosines[:, num_classes:]
    if use_triton(image_cosines):  # radius vectors (one radius per kind: constant ones)
        from lathadapter.kernels.triton_radial_loss import radial_loss_triton

        return radial_loss_triton(
            image_class, image_attribute, class_attribute, class_weights, rho_categories, rho_attributes,
            rho_images, c, log_tau, labels, logit_scale=LOGIT_SCALE, lambda_hyp=o.lambda_hyp,
            lambda_hier=o.lambda_hier, hier=o.hier, cone_k=o.cone_k, cone_kappa=o.cone_kappa, margin=o.margin,
            margin_radial=o.margin_radial, tau_attr=o.tau_attr)
    ce = F.cross_entropy(LOGIT_SCALE * image_class, labels)
    zero = image_cosines.new_zeros(())
    hyp = hier = zero
    if o.lambda_hyp > 0 or o.lambda_hier > 0:
        # 0-d radii broadcast as they are (their gradients are two reductions); vectors as a column and a row
        distances = radial_distance(as_column(rho_images), as_row(rho_categories), image_class, c)  # [B, C]
        hyp = F.cross_entropy(distances * -torch.exp(-log_tau), labels)  # one pass over [B, C]: the scalar on 0-d
    if o.lambda_hier > 0:
        present = torch.unique(labels)
        others = present[None, :] != labels[:, None]
        hinge = torch.relu(distances.gather(1, labels[:, None]) - distances[:, present] + o.margin)
        separation = (hinge * others).sum(1).div(others.sum(1).clamp_min(1)).mean()
        # the batch's tree, one edge set at a time, radii broadcast against the set's cosines (a 0-d radius as it
        # is): category y_i → image i [B], category c → attribute k [P, K] (the batch's categories), attribute k →
        # image i [B, K]; each with its weights (1, w_ck, r_ik) and its rows (B, P, B)
        scalar_hinges = o.hier == "triplet" and rho_categories.dim() == rho_attributes.dim() == rho_images.dim() == 0
        r = None if scalar_hinges else torch.softmax(image_attribute / o.tau_attr, dim=-1)  # image → attribute
        edges = ((_at(rho_categories, labels), rho_images, image_class.gather(1, labels[:, None])[:, 0], None,
                  len(labels)),
                 (as_column(_at(rho_categories, present)), as_row(rho_attributes), class_attribute[present],
                  class_weights[present], len(present)),
                 (as_row(rho_attributes), as_column(rho_images), image_attribute, r, len(labels)))
        energy = sum(_weighted_sum(_edge_energy(o, parent, child, cosine, c), weights, rows)
                     for parent, child, cosine, weights, rows in edges)
        # each row of r and w sums to 1: the edge weights total B + P + B
        hier = energy / (2 * len(labels) + len(present)) + separation
    loss = ce + o.lambda_hyp * hyp + o.lambda_hier * hier
    return loss, (ce.detach(), hyp.detach(), hier.detach())
