"""LatHAdapter's loss after the cosine products over radius vectors: the fused twins of `reference.reference_loss`
— Triton kernels on CUDA (`kernels/triton_radial_loss.py`, under the kernels backend: `LATHADAPTER_KERNELS=torch`
forces the PyTorch twin), the PyTorch twin below elsewhere. It serves `radius=head|norm` everywhere and, under
Triton, `radius=kind` too (one radius per kind is a constant vector); on the CPU `radius=kind` takes `loss.py`'s
one-node form (a CPU step with this twin over constant vectors takes 1.1× as long, 1.2× with the hierarchy term:
benchmarks/loss_forms.py).

Every distance and cone angle between two lifted points is a function of their two radii and the cosine of their
directions, so the loss takes the batch's cosine matrices — image–prototype [B, C], image–attribute [B, K],
prototype–attribute [C, K] — and the radius vectors, never [N, D] points. Distances and exterior angles are the
radial nodes of `kernels.radial`, whose hand-written backward passes give the gradients for the cosines and for
radius vectors broadcast against them; the rest (softmaxes, hinges, weighted means) is ordinary autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lathadapter.adapter.methods.base import LOGIT_SCALE
from lathadapter.adapter.methods.lathadapter.options import LatHAdapterOptions
from lathadapter.kernels.dispatch import use_triton
from lathadapter.kernels.radial import radial_centripetal_energy, radial_cone_energy, radial_distance


def _edge_energy(o: LatHAdapterOptions, rho_parent: torch.Tensor, rho_child: torch.Tensor, cosine: torch.Tensor,
                 c: torch.Tensor) -> torch.Tensor:
    """Cone energy (`hier=cone`) or centripetal hinge (`hier=triplet`) of parent → child edges."""
    if o.hier == "cone":
        return radial_cone_energy(rho_parent, rho_child, cosine, o.cone_k, o.cone_kappa)
    return radial_centripetal_energy(rho_parent, rho_child, c, o.margin_radial)


def fused_loss(image_cosines: torch.Tensor, class_attribute: torch.Tensor, class_weights: torch.Tensor,
               rho_categories: torch.Tensor, rho_attributes: torch.Tensor, rho_images: torch.Tensor,
               c: torch.Tensor, log_tau: torch.Tensor, labels: torch.Tensor, o: LatHAdapterOptions
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`L_ce + λ_hyp L_hyp + λ_hier L_hier` and its detached parts, from the cosines of the batch's images with the
    C prototypes and the K attributes [B, C + K], the cosines <p_c, a_k> and weights w_ck [C, K], the scaled radii
    (ρ' = √c |h| < 1) of categories [C], attributes [K] and images [B], the curvature and log τ_h."""
    num_classes = class_weights.shape[0]
    image_class, image_attribute = image_cosines[:, :num_classes], image_cosines[:, num_classes:]
    if use_triton(image_cosines):
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
        distances = radial_distance(rho_images[:, None], rho_categories[None, :], image_class, c)  # [B, C]
        hyp = F.cross_entropy(-distances / log_tau.exp(), labels)
    if o.lambda_hier > 0:
        present = torch.unique(labels)
        others = present[None, :] != labels[:, None]
        hinge = torch.relu(distances.gather(1, labels[:, None]) - distances[:, present] + o.margin)
        separation = (hinge * others).sum(1).div(others.sum(1).clamp_min(1)).mean()
        r = torch.softmax(image_attribute / o.tau_attr, dim=-1)  # image → attribute [B, K]
        batch, num_present, num_attributes = len(labels), len(present), r.shape[1]
        # the batch's tree as one flat list of edges (one call of each radial node): category y_i → image i,
        # category c → attribute k (the batch's categories), attribute k → image i
        parents = torch.cat([rho_categories[labels], rho_categories[present].repeat_interleave(num_attributes),
                             rho_attributes.repeat(batch)])
        children = torch.cat([rho_images, rho_attributes.repeat(num_present),
                              rho_images.repeat_interleave(num_attributes)])
        edge_cosines = torch.cat([image_class.gather(1, labels[:, None])[:, 0], class_attribute[present].reshape(-1),
                                  image_attribute.reshape(-1)])
        weights = torch.cat([r.new_ones(batch), class_weights[present].reshape(-1), r.reshape(-1)])
        # each row of r and w sums to 1: the edge weights total B + P + B
        energy = torch.dot(weights, _edge_energy(o, parents, children, edge_cosines, c))
        hier = energy / (2 * batch + num_present) + separation
    loss = ce + o.lambda_hyp * hyp + o.lambda_hier * hier
    return loss, (ce.detach(), hyp.detach(), hier.detach())
