"""LatHAdapter's loss for runs trained as one stacked model (`adapter.batched`, under `torch.func.vmap`): the
definition of `reference.reference_loss` in a form that vmaps and never waits on the device.

The reference and the fused twins take the batch's categories with `torch.unique` (a shape that depends on the
labels, read on the host) and the fused twins read the lift's scalars as Python floats; neither can be vmapped over
runs nor captured in a CUDA graph. Here every shape is fixed by B, C and K:

- the batch's categories are a 0/1 mask over all C classes; the separation term averages each image's hinges over
  the present classes other than its own, and the category → attribute edges of absent classes weigh 0;
- every lifted point is a unit direction times a radius, so each distance is written from the two scaled radii and
  the direction cosine (`kernels.radial.radial_distance_fixed`: autograd on the radii, a hand-written backward for
  the [B, C] work), and each cone angle through the invariants of `kernels.cone` (|p|², |q|², <p, q − p>, |q − p|² in
  the ball of curvature −1), in plain autograd.

Each operation is a kernel of a captured step on a GPU, so the form spends few: a term whose weight is 0 is not
computed, `radius=kind` takes one 0-d radius per kind, and in a captured step (`Method.fixed_shapes`) the adapters'
blends, the normalisations and the distance are single nodes with hand-written backward passes
(`base.adapter_mix`, `base.normalize`, `kernels.radial.radial_distance_fixed`), whose host time under vmap a capture
pays once. Stacked runs that are not captured take plain autograd for those three, cheaper for the host at every
step. `benchmarks/step_ops.py` counts the operations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lathadapter.adapter.methods.base import LOGIT_SCALE, mean_cross_entropy, mix, normalize
from lathadapter.adapter.methods.lathadapter.reference import ATTRIBUTE, CATEGORY, IMAGE
from lathadapter.kernels.cone import cone_energy_from_invariants
from lathadapter.kernels.radial import (
    as_column,
    as_row,
    radial_centripetal_energy,
    radial_distance_fixed,
    scaled_radius,
)


def _invariants(rho_p: torch.Tensor, rho_q: torch.Tensor, cosine: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """|p|², |q|², <p, q − p>, |q − p|² of p = ρ_p u, q = ρ_q v with <u, v> = cosine (broadcasting); |q − p|² as
    (ρ_p − ρ_q)² + 2 ρ_p ρ_q (1 − cos), free of cancellation."""
    product = rho_p * rho_q
    return (rho_p * rho_p).expand_as(cosine), (rho_q * rho_q).expand_as(cosine), product * cosine - rho_p * rho_p, \
        (rho_p - rho_q).square() + 2 * product * (1 - cosine)


def _radii(model: nn.Module, v: torch.Tensor, z: torch.Tensor, p: torch.Tensor, q: torch.Tensor, a: torch.Tensor,
           c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scaled radii (images, categories, attributes): with `radius=kind` one 0-d radius per kind (broadcasting
    against every pair), else one per point; only `radius=norm` reads the lengths before normalisation."""
    o = model.options
    if o.radius == "kind":
        rho = scaled_radius(model.log_scales.exp(), c)  # [3], in the order of the kinds
        return rho[IMAGE], rho[CATEGORY], rho[ATTRIBUTE]
    norm = o.radius == "norm"
    return (model.scaled_radii(IMAGE, v, z.norm(dim=-1) if norm else None, c),
            model.scaled_radii(CATEGORY, p, q.norm(dim=-1) if norm else None, c),
            model.scaled_radii(ATTRIBUTE, a, model.attribute_prompts.norm(dim=-1) if norm else None, c))


def masked_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total loss of a LatHAdapter `model` on images `x` [B, D] with labels `y` [B], and its parts (as
    `reference_loss`, whose steps it follows). A term whose weight is 0 is left out, and so is its part (a fixed
    choice of the options, as in the fused forms): each operation is a kernel of a captured step."""
    o, c, t = model.options, model.curvature, model.text_features
    nodes = model.fixed_shapes  # a captured step: the nodes that launch the fewest kernels (`Method.fixed_shapes`)
    unit = normalize if nodes else lambda rows: F.normalize(rows, dim=-1)
    # 1–3. adapters, attribute prompts, associations, refined prototypes
    z = mix(x, model.visual_adapter, o.alpha_v, node=nodes)
    m = mix(t, model.text_adapter, o.alpha_t, node=nodes)
    v, u = unit(z), unit(m)
    a = unit(model.attribute_prompts)
    w = torch.softmax(u @ a.t() / o.tau_attr, dim=-1)  # [C, K]
    q = m + model.beta * m.norm(dim=-1, keepdim=True) * (w @ a) if o.attr_proto else m
    p = unit(q)
    image_class = v @ p.t()  # [B, C]
    # 6. losses
    ce = mean_cross_entropy(LOGIT_SCALE * image_class, y)
    total, parts = ce, {"ce": ce.detach()}
    if o.lambda_hyp > 0 or o.lambda_hier > 0:
        # 5. scaled radii (the ball rescaled to curvature −1): ρ' = √c |exp0(ρ e)|
        rho_img, rho_cat, rho_attr = _radii(model, v, z, p, q, a, c)
        d = radial_distance_fixed(as_column(rho_img), as_row(rho_cat), image_class, c, node=nodes)  # [B, C]
        if o.lambda_hyp > 0:
            hyp = mean_cross_entropy(-d / model.log_tau_hyp.exp(), y)
            total, parts["hyp"] = total + o.lambda_hyp * hyp, hyp.detach()
    if o.lambda_hier > 0:
        hier = _hierarchy(model, x, y, v, a, w, p, image_class, d, (rho_img, rho_cat, rho_attr), c)
        total, parts["hier"] = total + o.lambda_hier * hier, hier.detach()
    if o.lambda_anchor > 0:
        anchor = (1 - (p * t).sum(-1)).mean() + (1 - (v * x).sum(-1)).mean()
        total, parts["anchor"] = total + o.lambda_anchor * anchor, anchor.detach()
    return total, parts


def _hierarchy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
               w: torch.Tensor, p: torch.Tensor, image_class: torch.Tensor, d: torch.Tensor,
               radii: tuple[torch.Tensor, torch.Tensor, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
    """L_hier: the separation hinge over the batch's categories and the batch tree's edge energies (cone or
    centripetal), in fixed shapes."""
    o = model.options
    one = torch.ones((), dtype=x.dtype, device=x.device)
    num_classes = p.shape[0]
    # one radius per point (a kind's 0-d radius repeated): the edges pair them elementwise
    rho_img, rho_cat, rho_attr = (rho.expand(n) for rho, n in zip(radii, (len(v), num_classes, len(a)), strict=True))
    image_attribute = v @ a.t()  # [B, K]
    r = torch.softmax(image_attribute / o.tau_attr, dim=-1)
    own = (y[:, None] == torch.arange(num_classes, device=y.device)).to(x.dtype)  # [B, C] one-hot
    present = own.amax(0)  # [C]: the batch's categories
    others = present[None, :] * (1 - own)
    hinge = torch.relu(d.gather(1, y[:, None]) - d + o.margin)
    separation = ((hinge * others).sum(1) / others.sum(1).clamp_min(1)).mean()
    # the batch's tree: category y_i → image i (weight 1), category c → attribute k (w_ck, c present),
    # attribute k → image i (r_ik)
    class_attribute = p @ a.t()
    edges = [(rho_cat.gather(0, y), rho_img, image_class.gather(1, y[:, None])[:, 0], torch.ones_like(rho_img)),
             (rho_cat[:, None], rho_attr[None, :], class_attribute, w * present[:, None]),
             (rho_attr[None, :], rho_img[:, None], image_attribute, r)]
    weighted = x.new_zeros(())
    for rho_p, rho_q, cosine, weight in edges:
        if o.hier == "cone":
            energy = cone_energy_from_invariants(*_invariants(rho_p, rho_q, cosine), one, o.cone_k, o.cone_kappa)
        else:
            energy = radial_centripetal_energy(rho_p, rho_q, c, o.margin_radial).expand_as(cosine)
        weighted = weighted + (weight * energy).sum()
    return weighted / sum(weight.sum() for _, _, _, weight in edges) + separation
