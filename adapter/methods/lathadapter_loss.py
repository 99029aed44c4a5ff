"""LatHAdapter's hyperbolic loss terms, `λ_hyp L_hyp + λ_hier L_hier`, as one autograd node over direction cosines.

Every lifted point is a unit direction times one radius per kind (`kernels.radial`), so the terms are functions of
the batch's cosines (image–class, image–attribute, class–attribute), the association weights and five scalars (the
three log lift scales, log c, log τ_h). Written with autograd they cost some 500 small ops a step, and on a CPU a
step's time goes mostly into per-op overhead; here the forward and the hand-written backward take about a tenth of
that, and the scalar chain (radii, half-apertures, their derivatives) is Python arithmetic. `LatHAdapter.point_loss`
is the reference over explicit points that the tests hold this against.

The rows of both association matrices are softmax distributions, so the edge weights of the batch's tree sum to
exactly B + P + B (B images, P categories present): the weighted means divide by that constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lathadapter.kernels.geometry import PROJECTION_EPS
from lathadapter.kernels.radial import (
    distance_backward,
    distance_forward,
    exterior_angle_backward,
    exterior_angle_forward,
)


@dataclass(frozen=True)
class HyperbolicLossOptions:
    """The options of LatHAdapter that the hyperbolic terms read (names as in `LatHAdapterOptions`)."""

    lambda_hyp: float
    lambda_hier: float
    hier: str  # cone | triplet
    cone_k: float
    cone_kappa: float
    margin: float
    margin_radial: float
    tau_attr: float
    curvature_range: tuple[float, float]


@dataclass(frozen=True)
class _Scalars:
    """The lift's scalars as Python floats, with the derivatives of the radii that the backward pass chains."""

    sqrt_c: float
    rho: tuple[float, float, float]  # scaled radii of categories, attributes, images
    drho_dlog_scale: tuple[float, float, float]
    drho_dsqrt_c: tuple[float, float, float]
    dsqrt_c_dlog_c: float
    inv_tau: float  # 1 / τ_h

    @staticmethod
    def of(log_scales: torch.Tensor, log_curvature: torch.Tensor, log_tau: torch.Tensor,
           curvature_range: tuple[float, float]) -> _Scalars:
        values = torch.cat([log_scales.detach().reshape(3), log_curvature.detach().reshape(1),
                            log_tau.detach().reshape(1)]).tolist()  # one transfer (one sync on a GPU)
        *log_s, log_c, log_t = values
        low, high = curvature_range
        raw_c = math.exp(log_c)
        c = min(max(raw_c, low), high)
        sqrt_c = math.sqrt(c)
        eps = PROJECTION_EPS[torch.float64 if log_scales.dtype == torch.float64 else torch.float32]
        rho, drho_dlog_scale, drho_dsqrt_c = [], [], []
        for scale in map(math.exp, log_s):
            t = math.tanh(sqrt_c * scale)
            inside = t <= 1 - eps  # the projection's clamp passes no gradient
            rho.append(min(t, 1 - eps))
            drho_dlog_scale.append((1 - t * t) * sqrt_c * scale if inside else 0.0)
            drho_dsqrt_c.append((1 - t * t) * scale if inside else 0.0)
        dsqrt_c = sqrt_c / 2 if low <= raw_c <= high else 0.0  # d√c/d log c = √c / 2 inside the clamp
        return _Scalars(sqrt_c, tuple(rho), tuple(drho_dlog_scale), tuple(drho_dsqrt_c), dsqrt_c, math.exp(-log_t))


def half_aperture(rho: float, K: float) -> tuple[float, float]:
    """ψ(ρ) = arcsin(min(1, K (1 − ρ²)/ρ)) and dψ/dρ (0 where the min is 1)."""
    x = K * (1 - rho * rho) / rho
    if x >= 1:
        return math.pi / 2, 0.0
    return math.asin(x), -K * (1 + 1 / (rho * rho)) / math.sqrt(1 - x * x)


class _HyperbolicLoss(torch.autograd.Function):
    """Inputs: cosines image–class [B, C], image–attribute [B, K], class–attribute [C, K]; the category→attribute
    weights w [C, K]; the log scales [3], log c, log τ_h; labels [B]; the sorted categories of the batch [P] and each
    label's position among them [B]. Outputs the weighted sum and the detached parts (L_hyp, L_hier)."""

    @staticmethod
    def forward(ctx, image_class, image_attribute, class_attribute, class_weights, log_scales, log_curvature,
                log_tau, labels, present, position, o: HyperbolicLossOptions):
        s = _Scalars.of(log_scales, log_curvature, log_tau, o.curvature_range)
        rho_cat, rho_attr, rho_img = s.rho
        batch, num_present = len(labels), len(present)
        distances, delta, root = distance_forward(rho_img, rho_cat, image_class, s.sqrt_c)  # [B, C]
        total = image_class.new_zeros(())
        parts = image_class.new_zeros(2)
        saved: dict[str, object] = {"s": s, "o": o, "batch": batch}
        tensors = [image_class, labels, present, position, distances, delta, root]
        if o.lambda_hyp > 0:
            logits = distances * -s.inv_tau
            log_prob = torch.log_softmax(logits, dim=1)
            loss_hyp = -log_prob.gather(1, labels[:, None]).mean()
            total = total + o.lambda_hyp * loss_hyp
            parts[0] = loss_hyp
            tensors += [logits, log_prob]
        if o.lambda_hier > 0:
            hier = image_class.new_zeros(())
            if num_present >= 2:  # separation: mean over images and the other categories of the batch
                batch_distances = distances.index_select(1, present)  # [B, P]
                positive = batch_distances.gather(1, position[:, None])
                hinge = torch.relu(positive - batch_distances + o.margin)
                hinge.scatter_(1, position[:, None], 0.0)  # c = y_i is no negative
                hier = hier + hinge.sum() / (batch * (num_present - 1))
                tensors.append(hinge > 0)
            total_weight = 2 * batch + num_present  # Σ 1 + Σ w_ck + Σ r_ik: rows of w and r sum to 1
            if o.hier == "cone":
                weights_present = class_weights.index_select(0, present)  # [P, K]
                r = torch.softmax(image_attribute / o.tau_attr, dim=1)  # [B, K]
                sizes = (batch, weights_present.numel(), r.numel())
                cosines = torch.cat([image_class.gather(1, labels[:, None]).flatten(),
                                     class_attribute.index_select(0, present).flatten(), image_attribute.flatten()])
                psi_cat, dpsi_cat = half_aperture(rho_cat, o.cone_k)
                psi_attr, dpsi_attr = half_aperture(rho_attr, o.cone_k)
                segment = torch.tensor(sizes, device=cosines.device)
                per_segment = torch.tensor([[rho_cat, rho_cat, rho_attr], [rho_img, rho_attr, rho_img],
                                            [psi_cat, psi_cat, psi_attr]], dtype=cosines.dtype).to(cosines.device)
                rho_p, rho_q, psi = per_segment.repeat_interleave(segment, 1, output_size=len(cosines))
                angle, angle_saved = exterior_angle_forward(rho_p, rho_q, cosines)
                energy = torch.relu(angle - o.cone_kappa * psi)
                weights = torch.cat([torch.ones_like(image_class[:, 0]), weights_present.flatten(), r.flatten()])
                hier = hier + torch.dot(weights, energy) / total_weight
                saved.update(sizes=sizes, dpsi=(dpsi_cat, dpsi_attr), total_weight=total_weight)
                tensors += [rho_p, rho_q, r, weights, energy, *angle_saved]
            else:  # centripetal: max(0, |parent|_H − |child|_H + m_r) depends on the radii alone
                origin = [2 * math.atanh(rho) / s.sqrt_c for rho in s.rho]
                edges = ((0, 2, batch), (0, 1, num_present), (1, 2, batch))  # (parent, child, Σ weight)
                centripetal = sum(weight * max(0.0, origin[p] - origin[q] + o.margin_radial) for p, q, weight in edges)
                hier = hier + centripetal / total_weight
                saved.update(origin=origin, edges=edges, total_weight=total_weight)
            total = total + o.lambda_hier * hier
            parts[1] = hier
        saved.update(num_present=num_present, weights_shape=class_weights.shape)
        ctx.log_curvature_shape, ctx.log_tau_shape = log_curvature.shape, log_tau.shape
        ctx.saved = saved
        ctx.save_for_backward(*tensors)
        ctx.mark_non_differentiable(parts)
        return total, parts

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _grad_parts: torch.Tensor):
        saved = ctx.saved
        s: _Scalars = saved["s"]
        o: HyperbolicLossOptions = saved["o"]
        batch, num_present = saved["batch"], saved["num_present"]
        rho_cat, rho_attr, rho_img = s.rho
        image_class, labels, present, position, distances, delta, root, *rest = ctx.saved_tensors
        grad_distances = torch.zeros_like(distances)
        grad_attribute = grad_class_attribute = grad_weights = grad_edges = None
        # The five scalar gradients are linear in a few reductions: `add` records each reduction with its row of
        # coefficients w.r.t. (log s_cat, log s_attr, log s_img, log c, log τ_h), and one product sums them.
        reductions: list[torch.Tensor] = []
        rows: list[list[float]] = []

        def add(reduction: torch.Tensor, drho: tuple[float, float, float] = (0.0, 0.0, 0.0), dsqrt_c: float = 0.0,
                dlog_tau: float = 0.0) -> None:
            """`reduction` times ∂/∂ρ_k = drho[k], ∂/∂√c (at fixed radii) = dsqrt_c, ∂/∂log τ_h = dlog_tau."""
            through_radii = sum(d * chain for d, chain in zip(drho, s.drho_dsqrt_c, strict=True))
            reductions.append(reduction.reshape(()))
            rows.append([d * chain for d, chain in zip(drho, s.drho_dlog_scale, strict=True)]
                        + [(through_radii + dsqrt_c) * s.dsqrt_c_dlog_c, dlog_tau])

        if o.lambda_hyp > 0:
            logits, log_prob, *rest = rest
            grad_logits = log_prob.exp()
            grad_logits.scatter_add_(1, labels[:, None], torch.full_like(logits[:, :1], -1.0))
            grad_logits.mul_(grad * (o.lambda_hyp / batch))  # ∂(λ_hyp L_hyp)/∂logits
            grad_distances.add_(grad_logits, alpha=-s.inv_tau)
            add(torch.dot(grad_logits.flatten(), logits.flatten()), dlog_tau=-1.0)  # ∂logits/∂log τ_h = −logits
        if o.lambda_hier > 0:
            scale = grad * o.lambda_hier
            total_weight = saved["total_weight"]
            if num_present >= 2:  # separation
                active, *rest = rest
                per_pair = scale / (batch * (num_present - 1))
                grad_batch = active.to(distances.dtype) * -per_pair
                grad_batch.scatter_add_(1, position[:, None], active.sum(1, keepdim=True) * per_pair)
                grad_distances.index_add_(1, present, grad_batch)
            if o.hier == "cone":
                rho_p, rho_q, r, weights, energy, *angle_saved = rest
                first, second = saved["sizes"][0], saved["sizes"][0] + saved["sizes"][1]
                grad_energy = (energy > 0).to(energy.dtype) * weights * (scale / total_weight)
                grad_p, grad_q, grad_cos = exterior_angle_backward(grad_energy, rho_p, rho_q, tuple(angle_saved))
                grad_edges = grad_cos[:first]  # category y_i → image i: the cosine at [i, y_i]
                grad_class_attribute = torch.zeros(saved["weights_shape"], dtype=energy.dtype, device=energy.device)
                grad_class_attribute.index_copy_(0, present, grad_cos[first:second].view(num_present, -1))
                # through the weights: ∂/∂w_ck = e_ck / T, ∂/∂r_ik = e_ik / T, then the softmax's backward for r
                per_weight = energy * (scale / total_weight)
                grad_weights = torch.zeros_like(grad_class_attribute)
                grad_weights.index_copy_(0, present, per_weight[first:second].view(num_present, -1))
                grad_r = per_weight[second:].view(batch, -1)
                grad_attribute = grad_cos[second:].view(batch, -1) + r * (
                    grad_r - (r * grad_r).sum(1, keepdim=True)) / o.tau_attr
                dpsi_cat, dpsi_attr = saved["dpsi"]
                add(grad_p[:second].sum(), drho=(1.0, 0.0, 0.0))  # parents: categories, then attributes
                add(grad_p[second:].sum(), drho=(0.0, 1.0, 0.0))
                add(grad_q[first:second].sum(), drho=(0.0, 1.0, 0.0))  # children: attributes, images
                add(grad_q[:first].sum() + grad_q[second:].sum(), drho=(0.0, 0.0, 1.0))
                add(grad_energy[:second].sum(), drho=(-o.cone_kappa * dpsi_cat, 0.0, 0.0))  # ∂e/∂ψ = −κ
                add(grad_energy[second:].sum(), drho=(0.0, -o.cone_kappa * dpsi_attr, 0.0))
            else:  # centripetal: |x|_H = 2 artanh(ρ)/√c, so ∂/∂ρ = 2/(√c (1 − ρ²)) and ∂/∂√c = −|x|_H/√c
                origin = saved["origin"]
                drho, dsqrt_c = [0.0, 0.0, 0.0], 0.0
                for parent, child, weight in saved["edges"]:
                    if origin[parent] - origin[child] + o.margin_radial > 0:
                        share = weight / total_weight
                        for kind, sign in ((parent, 1.0), (child, -1.0)):
                            drho[kind] += sign * share * 2 / (s.sqrt_c * (1 - s.rho[kind] ** 2))
                            dsqrt_c -= sign * share * origin[kind] / s.sqrt_c
                add(scale, drho=(drho[0], drho[1], drho[2]), dsqrt_c=dsqrt_c)
        # the distances d(ρ_img, ρ_cat, cos): to the cosines, the radii (three reductions) and √c (one)
        g, grad_image_class, k_img, k_cat = distance_backward(grad_distances, rho_img, rho_cat, s.sqrt_c, root)
        if grad_edges is not None:
            grad_image_class.scatter_add_(1, labels[:, None], grad_edges[:, None])
        k, inv = 2 / ((1 - rho_img * rho_img) * (1 - rho_cat * rho_cat)), 1 / s.sqrt_c
        add(g.sum(), drho=(2 * k * rho_cat * inv, 0.0, 2 * k * rho_img * inv))
        add(torch.dot(g.flatten(), image_class.flatten()), drho=(-2 * k * rho_img * inv, 0.0, -2 * k * rho_cat * inv))
        add(torch.dot(g.flatten(), delta.flatten()), drho=(k_cat * inv, 0.0, k_img * inv))
        add(torch.dot(grad_distances.flatten(), distances.flatten()), dsqrt_c=-inv)  # d ∝ 1/√c at fixed radii
        matrix = torch.tensor(rows, dtype=image_class.dtype).to(image_class.device)
        scalar_grads = torch.stack(reductions) @ matrix
        return (grad_image_class, grad_attribute, grad_class_attribute, grad_weights, scalar_grads[:3],
                scalar_grads[3].reshape(ctx.log_curvature_shape), scalar_grads[4].reshape(ctx.log_tau_shape),
                None, None, None, None)


def hyperbolic_loss(image_class: torch.Tensor, image_attribute: torch.Tensor, class_attribute: torch.Tensor,
                    class_weights: torch.Tensor, log_scales: torch.Tensor, log_curvature: torch.Tensor,
                    log_tau: torch.Tensor, labels: torch.Tensor, options: HyperbolicLossOptions
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """`λ_hyp L_hyp + λ_hier L_hier` of a batch and its detached parts `(L_hyp, L_hier)` (METHOD.md step 6).

    `image_class` [B, C], `image_attribute` [B, K] and `class_attribute` [C, K] are direction cosines,
    `class_weights` [C, K] the category→attribute associations w; the log scales are of categories, attributes and
    images. The attribute inputs are read only by the cone energy.
    """
    present = torch.unique(labels)  # sorted categories of the batch
    position = torch.searchsorted(present, labels)
    return _HyperbolicLoss.apply(image_class, image_attribute, class_attribute, class_weights, log_scales,
                                 log_curvature, log_tau, labels, present, position, options)
