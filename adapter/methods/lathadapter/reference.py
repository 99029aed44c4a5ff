"""LatHAdapter's training loss, the definition (docs/method.md, steps 1–6): ordinary autograd over explicit lifted
points with the plain geometry functions of `kernels`. The fused twins must give the same loss and gradients.

Read it beside docs/method.md; to try a loss variant, edit this function and train with `--set impl=reference`.
The inputs arrive centred (`centre=modality`: `LatHAdapter.loss` centres the images, the model holds centred text).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lathadapter.adapter.methods.base import LOGIT_SCALE, mix
from lathadapter.kernels.cone import cone_energy
from lathadapter.kernels.geometry import distance, expmap0
from lathadapter.kernels.hierarchy import centripetal_energy

CATEGORY, ATTRIBUTE, IMAGE = 0, 1, 2  # the kinds, in the order of the lift scales


def reference_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The total loss of a LatHAdapter `model` on a batch of image features `x` [B, D] with labels `y` [B], and its
    parts. It reads the model's parameters and calls one named step, `model.radius` (step 5). Variants:
    `hyp_metric=euclid` (L_hyp by cosines), `cone_parent=image` (category → image cones from image-side centres)."""
    o, c, t = model.options, model.curvature, model.text_features
    # 1. adapters: z_i = (1 − α_v) x_i + α_v g_v(x_i), v_i = norm(z_i); likewise m_c and u_c from t_c
    z = mix(x, model.visual_adapter, o.alpha_v)
    m = mix(t, model.text_adapter, o.alpha_t)
    v, u = F.normalize(z, dim=-1), F.normalize(m, dim=-1)
    # 2. attribute prompts and soft one-to-many associations
    a = F.normalize(model.attribute_prompts, dim=-1)
    r = torch.softmax(v @ a.t() / o.tau_attr, dim=-1)  # image → attribute [B, K]
    w = torch.softmax(u @ a.t() / o.tau_attr, dim=-1)  # category → attribute [C, K]
    # 3. attribute-refined prototypes q_c = m_c + β |m_c| Σ_k w_ck a_k, p_c = norm(q_c)
    q = m + model.beta * m.norm(dim=-1, keepdim=True) * (w @ a) if o.attr_proto else m
    p = F.normalize(q, dim=-1)
    # 4. Euclidean logits
    logits = LOGIT_SCALE * v @ p.t()
    # 5. the lift, each point with its own radius: h = exp0(ρ e)
    h_v = expmap0(model.radius(IMAGE, v, z.norm(dim=-1))[:, None] * v, c)
    h_a = expmap0(model.radius(ATTRIBUTE, a, model.attribute_prompts.norm(dim=-1))[:, None] * a, c)
    h_c = expmap0(model.radius(CATEGORY, p, q.norm(dim=-1))[:, None] * p, c)
    # 6. losses
    ce = F.cross_entropy(logits, y)
    d = distance(h_v[:, None, :], h_c[None, :, :], c)  # [B, C]
    if o.hyp_metric == "euclid":  # the Euclidean twin: CE(<v_i, p_c> / τ_h)
        hyp = F.cross_entropy(v @ p.t() / model.log_tau_hyp.exp(), y)
    else:
        hyp = F.cross_entropy(-d / model.log_tau_hyp.exp(), y)
    present = torch.unique(y)  # the categories of the batch, sorted
    others = present[None, :] != y[:, None]  # [B, P]: the batch's other categories of each image
    hinge = torch.relu(d.gather(1, y[:, None]) - d[:, present] + o.margin)
    separation = (hinge * others).sum(1).div(others.sum(1).clamp_min(1)).mean()
    # the batch's tree: category y_i → image i (weight 1), category c → attribute k (w_ck, c in the batch),
    # attribute k → image i (r_ik). With cone_parent=image the parent of image i is its class's image-side centre in
    # the batch, e_c = norm(mean_{j: y_j = c} v_j), lifted as a category (radius=norm: ρ = s_cat |mean v_j|)
    parent = h_c[y]
    if o.cone_parent == "image":
        counts = torch.bincount(y, minlength=len(p)).to(x.dtype)
        mean = torch.zeros_like(p).index_add(0, y, v)[y] / counts[y][:, None]  # [B, D]: each image's class mean
        e = F.normalize(mean, dim=-1)
        parent = expmap0(model.radius(CATEGORY, e, mean.norm(dim=-1))[:, None] * e, c)
    edges = [(parent, h_v, torch.ones_like(y, dtype=x.dtype)),
             (h_c[present][:, None, :], h_a[None, :, :], w[present]),
             (h_a[None, :, :], h_v[:, None, :], r)]
    if o.hier == "cone":
        energies = [cone_energy(parent, child, c, o.cone_k, o.cone_kappa) for parent, child, _ in edges]
    else:
        energies = [centripetal_energy(parent, child, c, o.margin_radial) for parent, child, _ in edges]
    weighted = sum((weight * energy).sum() for (_, _, weight), energy in zip(edges, energies, strict=True))
    hier = weighted / sum(weight.sum() for _, _, weight in edges) + separation
    anchor = (1 - (p * t).sum(-1)).mean() + (1 - (v * x).sum(-1)).mean()
    total = ce + o.lambda_hyp * hyp + o.lambda_hier * hier + o.lambda_anchor * anchor
    return total, {"ce": ce.detach(), "hyp": hyp.detach(), "hier": hier.detach(), "anchor": anchor.detach()}
