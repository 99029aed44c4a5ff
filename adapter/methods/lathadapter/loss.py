"""LatHAdapter's training loss after the cosine product, `L_ce + λ_hyp L_hyp + λ_hier L_hier`, as one autograd node.

Every lifted point is a unit direction times one radius per kind (`kernels.radial`), so all of the loss is a function
of the batch's cosines (image–class, image–attribute, class–attribute), the association weights and five scalars
(the three log lift scales, log c, log τ_h). Written with autograd it costs some 500 small ops a step, and on a CPU a
step's time goes mostly into per-op overhead and passes over [B, C]; here the forward and the hand-written backward
take a fraction of that:

- the scalar chain (radii, half-apertures and their derivatives) is Python arithmetic, and the five scalar gradients
  are one product of a few reductions with a matrix of Python coefficients;
- the three cone edge sets go through one call in which W, M and N of the exterior angle are affine in the cosine,
  with coefficients that are constant on each edge set, so the radii's gradients need per-set sums, which are one
  product with the sets' indicators;
- the upstream gradient is read once as a Python float, so every scaling folds into a coefficient.

The rows of both association matrices are softmax distributions, so the edge weights of the batch's tree sum to
exactly B + P + B (B images, P categories present): the weighted means divide by that constant.
`reference.reference_loss` is the definition over explicit points that the tests hold this against (`radius=kind`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lathadapter.adapter.methods.base import LOGIT_SCALE
from lathadapter.adapter.methods.lathadapter.options import CURVATURE_RANGE, LatHAdapterOptions
from lathadapter.kernels.geometry import PROJECTION_EPS
from lathadapter.kernels.radial import (
    distance_backward,
    distance_forward,
    distance_radius_coefficients,
    exterior_angle_coefficient_derivatives,
    exterior_angle_coefficients,
    exterior_angle_cosine_grad,
    exterior_angle_forward,
    exterior_angle_pieces,
    half_aperture,
)

# (parent kind, child kind) of the cone's three edge sets; kinds: 0 categories, 1 attributes, 2 images
EDGE_SETS = ((0, 2), (0, 1), (1, 2))


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
        # one read (one sync on a GPU); inside an autograd Function's forward nothing here is recorded
        *log_s, log_c, log_t = torch.cat([log_scales, log_curvature.view(1), log_tau.view(1)]).tolist()
        low, high = curvature_range
        raw_c = math.exp(log_c)
        sqrt_c = math.sqrt(min(max(raw_c, low), high))
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

    def jacobian(self) -> list[list[float]]:
        """∂(ρ_cat, ρ_attr, ρ_img, √c, log τ_h)/∂(log s_cat, log s_attr, log s_img, log c, log τ_h), row by row."""
        (d0, d1, d2), (e0, e1, e2), f = self.drho_dlog_scale, self.drho_dsqrt_c, self.dsqrt_c_dlog_c
        return [[d0, 0, 0, e0 * f, 0], [0, d1, 0, e1 * f, 0], [0, 0, d2, e2 * f, 0], [0, 0, 0, f, 0], [0, 0, 0, 0, 1]]


def _cone_table(s: _Scalars, o: LatHAdapterOptions, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[11, 3]: per edge set, the exterior angle's coefficients (w0, w1, m0, m1, n0, n1), ρ_p², κ ψ(ρ_p) and the
    set's indicator (a column of the identity), which `torch.cat` of expanded columns spreads over the set's edges."""
    columns = []
    for j, (parent, child) in enumerate(EDGE_SETS):
        rho_p, rho_q = s.rho[parent], s.rho[child]
        columns.append([*exterior_angle_coefficients(rho_p, rho_q), rho_p * rho_p,
                        o.cone_kappa * half_aperture(rho_p, o.cone_k)[0], *(float(j == k) for k in range(3))])
    return torch.tensor(columns, dtype=dtype, device=device).t()


def _cone_rows(s: _Scalars, o: LatHAdapterOptions) -> list[list[float]]:
    """Rows of ∂/∂(ρ_cat, ρ_attr, ρ_img, √c, log τ_h) for the flattened [4, 6] per-set sums of the cone's backward:
    rows (a, b_w, b_m, ∂L/∂e) by columns (Σ over set 0, 1, 2, then Σ · cos over set 0, 1, 2). The angle's part is
    Σ a N_ρ − b_w W_ρ − b_m M_ρ with N_ρ = dn0 + dn1 cos (likewise W, M); the threshold's is −κ ψ'(ρ_p) Σ ∂L/∂e."""
    blocks = [[None] * 6 for _ in range(4)]
    for j, (parent, child) in enumerate(EDGE_SETS):
        derivative_p, derivative_q = exterior_angle_coefficient_derivatives(s.rho[parent], s.rho[child])
        # (piece, sign, index of the constant coefficient's derivative); the cosine's is the next index
        for piece, sign, index in ((0, 1.0, 4), (1, -1.0, 0), (2, -1.0, 2)):
            for column, offset in ((j, 0), (3 + j, 1)):
                row = [0.0] * 5
                row[parent] += sign * derivative_p[index + offset]
                row[child] += sign * derivative_q[index + offset]
                blocks[piece][column] = row
        row = [0.0] * 5
        row[parent] = -o.cone_kappa * half_aperture(s.rho[parent], o.cone_k)[1]
        blocks[3][j], blocks[3][3 + j] = row, [0.0] * 5
    return [row for block in blocks for row in block]


class _LatHAdapterLoss(torch.autograd.Function):
    """Inputs: the cosines of the batch's images with the C prototypes and the K attributes [B, C + K]; the cosines
    <p_c, a_k> and the category→attribute weights w [C, K]; the log scales [3], log c, log τ_h; labels [B]; the
    sorted categories of the batch [P] and each label's position among them [B]. Outputs the loss and its detached
    parts (L_ce, L_hyp, L_hier)."""

    @staticmethod
    def forward(ctx, image_cosines, class_attribute, class_weights, log_scales, log_curvature, log_tau, labels,
                present, position, o: LatHAdapterOptions):
        s = _Scalars.of(log_scales, log_curvature, log_tau, CURVATURE_RANGE)
        rho_cat, _, rho_img = s.rho
        batch, num_present, num_classes = len(labels), len(present), class_weights.shape[0]
        label_index, position_index = labels[:, None], position[:, None]
        image_class = image_cosines[:, :num_classes]
        log_prob = torch.log_softmax(image_class * LOGIT_SCALE, dim=1)
        ce = F.nll_loss(log_prob, labels)
        hyp = hier = image_cosines.new_zeros(())
        saved = {"s": s, "o": o, "batch": batch, "num_present": num_present, "class_shape": class_weights.shape}
        t = {"label_index": label_index, "present": present, "position_index": position_index, "log_prob": log_prob}
        if o.lambda_hyp > 0 or o.lambda_hier > 0:
            distances, delta, root = distance_forward(rho_img, rho_cat, image_class, s.sqrt_c)  # [B, C]
            t.update(distances=distances, delta=delta, root=root)
        if o.lambda_hyp > 0:
            hyp_log_prob = torch.log_softmax(distances * -s.inv_tau, dim=1)
            hyp = F.nll_loss(hyp_log_prob, labels)
            t["hyp_log_prob"] = hyp_log_prob
        if o.lambda_hier > 0:
            if num_present > 1:  # separation: mean_i mean_{c ≠ y_i in batch} max(0, d(i, y_i) − d(i, c) + m)
                batch_distances = distances.index_select(1, present)  # [B, P]
                hinge = torch.relu(batch_distances.gather(1, position_index) - batch_distances + o.margin)
                # the term c = y_i is max(0, m) exactly: subtracted rather than masked (its gradient cancels)
                hier = (hinge.sum() - batch * max(o.margin, 0.0)) / (batch * (num_present - 1))
                t.update(active=torch.sign(hinge), batch_distances=batch_distances)
            total_weight = 2 * batch + num_present  # Σ 1 + Σ w_ck + Σ r_ik: rows of w and r sum to 1
            if o.hier == "cone":
                image_attribute = image_cosines[:, num_classes:]
                r = torch.softmax(image_attribute / o.tau_attr, dim=1)  # [B, K]
                cosines = torch.cat([image_class.gather(1, label_index).view(-1),
                                     class_attribute.index_select(0, present).view(-1), image_attribute.reshape(-1)])
                sizes = (batch, num_present * r.shape[1], r.numel())
                table = _cone_table(s, o, cosines.dtype, cosines.device)
                columns = zip(table.split(1, 1), sizes, strict=True)
                per_edge = torch.cat([column.expand(-1, size) for column, size in columns], 1)  # [11, E]
                *coefficients, pp, threshold, _, _, _ = per_edge.unbind()
                angle, angle_saved = exterior_angle_forward(tuple(coefficients), pp, cosines)
                energy = (angle - threshold).relu_()
                weights = torch.cat([r.new_ones(batch), class_weights.index_select(0, present).view(-1), r.view(-1)])
                hier = torch.add(hier, torch.dot(weights, energy), alpha=1 / total_weight)
                saved["sizes"] = sizes
                t.update(per_edge=per_edge, r=r, weights=weights, energy=energy)
                t.update((f"angle_saved_{i}", tensor) for i, tensor in enumerate(angle_saved))
            else:  # centripetal: max(0, |parent|_H − |child|_H + m_r) depends on the radii alone
                origin = [2 * math.atanh(rho) / s.sqrt_c for rho in s.rho]
                edges = ((0, 2, batch), (0, 1, num_present), (1, 2, batch))  # (parent, child, Σ weight)
                hier = hier + sum(weight * max(0.0, origin[p] - origin[q] + o.margin_radial)
                                  for p, q, weight in edges) / total_weight
                saved.update(origin=origin, edges=edges)
            saved["total_weight"] = total_weight
        parts = torch.stack([ce, hyp, hier])
        # tensors through save_for_backward (autograd checks they are not modified in place before the backward);
        # Python values (the scalar chain, options, sizes) on ctx. No input is read by the backward.
        ctx.save_for_backward(*t.values())
        ctx.saved, ctx.tensor_names = saved, tuple(t)
        ctx.shapes = (image_cosines.shape, log_curvature.shape, log_tau.shape)
        ctx.mark_non_differentiable(parts)
        return ce.add(hyp, alpha=o.lambda_hyp).add_(hier, alpha=o.lambda_hier), parts

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _grad_parts: torch.Tensor):
        saved, t = ctx.saved, dict(zip(ctx.tensor_names, ctx.saved_tensors, strict=True))
        s: _Scalars = saved["s"]
        o: LatHAdapterOptions = saved["o"]
        upstream = float(grad)
        batch, num_present = saved["batch"], saved["num_present"]
        num_classes = saved["class_shape"][0]
        rho_cat, _, rho_img = s.rho
        label_index = t["label_index"]
        grad_class = t["log_prob"].exp()  # ∂L_ce/∂ℓ = (softmax − onehot)/B, then ℓ = scale · cos
        grad_class.scatter_add_(1, label_index, grad_class.new_full((batch, 1), -1.0))
        grad_class.mul_(upstream * LOGIT_SCALE / batch)
        grad_class_attribute = grad_weights = grad_attribute = cone_sums = None
        # The scalar gradients are Σ_i reduction_i · row_i, a row holding ∂/∂(ρ_cat, ρ_attr, ρ_img, √c at fixed radii,
        # log τ_h) of what was reduced; the Jacobian of those five w.r.t. the parameters' logs is applied once. The
        # reductions are 0-d tensors, then the cone's [24] per-set sums (rows from `_cone_rows`).
        reductions: list[torch.Tensor] = []
        rows: list[list[float]] = []
        if o.lambda_hyp > 0:  # ∂(λ L_hyp)/∂d = −(softmax − onehot) λ / (B τ)
            grad_distances = t["hyp_log_prob"].exp()
            grad_distances.scatter_add_(1, label_index, grad_distances.new_full((batch, 1), -1.0))
            grad_distances.mul_(-upstream * o.lambda_hyp * s.inv_tau / batch)
            # logits = −d/τ, so ∂/∂log τ = −Σ g_d d; and d ∝ 1/√c at fixed radii, so ∂/∂√c = −Σ g_d d/√c
            reductions.append(torch.dot(grad_distances.view(-1), t["distances"].view(-1)))
            rows.append([0.0, 0.0, 0.0, -1 / s.sqrt_c, -1.0])
        elif o.lambda_hier > 0:
            grad_distances = torch.zeros_like(t["distances"])
        if o.lambda_hier > 0:
            scale = upstream * o.lambda_hier
            total_weight = saved["total_weight"]
            if "active" in t:  # separation
                active = t["active"]
                per_pair = scale / (batch * (num_present - 1))
                grad_batch = active * -per_pair
                grad_batch.scatter_add_(1, t["position_index"], active.sum(1, keepdim=True).mul_(per_pair))
                grad_distances.index_add_(1, t["present"], grad_batch)
                reductions.append(torch.dot(grad_batch.view(-1), t["batch_distances"].view(-1)))
                rows.append([0.0, 0.0, 0.0, -1 / s.sqrt_c, 0.0])  # d ∝ 1/√c at fixed radii
            if o.hier == "cone":
                grad_attribute, grad_class_attribute, grad_weights, cone_sums = _LatHAdapterLoss.cone_backward(
                    t, saved, scale / total_weight, grad_class)
            else:  # centripetal: |x|_H = 2 artanh(ρ)/√c, so ∂/∂ρ = 2/(√c (1 − ρ²)) and ∂/∂√c = −|x|_H/√c
                origin = saved["origin"]
                drho, dsqrt_c = [0.0, 0.0, 0.0], 0.0
                for parent, child, weight in saved["edges"]:
                    if origin[parent] - origin[child] + o.margin_radial > 0:
                        share = scale * weight / total_weight
                        for kind, sign in ((parent, 1.0), (child, -1.0)):
                            drho[kind] += sign * share * 2 / (s.sqrt_c * (1 - s.rho[kind] ** 2))
                            dsqrt_c -= sign * share * origin[kind] / s.sqrt_c
                reductions.append(grad.new_ones(()))
                rows.append([*drho, dsqrt_c, 0.0])
        if o.lambda_hyp > 0 or o.lambda_hier > 0:  # d(ρ_img, ρ_cat, cos): to the cosines and the radii
            g, to_cos = distance_backward(grad_distances, rho_img, rho_cat, s.sqrt_c, t["root"])
            grad_class.add_(g, alpha=to_cos)
            a_img, b_img, a_cat, b_cat = distance_radius_coefficients(rho_img, rho_cat)
            reductions += [g.sum(), torch.dot(g.view(-1), t["delta"].view(-1))]
            rows += [[a_cat / s.sqrt_c, 0.0, a_img / s.sqrt_c, 0.0, 0.0],
                     [b_cat / s.sqrt_c, 0.0, b_img / s.sqrt_c, 0.0, 0.0]]
        cosine_shape, curvature_shape, tau_shape = ctx.shapes
        if reductions:
            stacked = torch.stack(reductions)
            if cone_sums is not None:
                stacked = torch.cat([stacked, cone_sums])
                rows += _cone_rows(s, o)
            matrices = torch.tensor([*rows, *s.jacobian()], dtype=grad_class.dtype, device=grad_class.device)
            scalar_grads = (stacked @ matrices[:len(rows)]) @ matrices[len(rows):]
        else:
            scalar_grads = grad_class.new_zeros(5)
        grad_scales, grad_curvature, grad_tau = scalar_grads.split((3, 1, 1))
        if cosine_shape[1] == num_classes:  # no attribute columns (the hierarchy term is off)
            grad_cosines = grad_class
        elif grad_attribute is None:
            grad_cosines = grad_class.new_zeros(cosine_shape)
            grad_cosines[:, :num_classes] = grad_class
        else:
            grad_cosines = torch.cat([grad_class, grad_attribute], 1)
        return (grad_cosines, grad_class_attribute, grad_weights, grad_scales, grad_curvature.view(curvature_shape),
                grad_tau.view(tau_shape), None, None, None, None)

    @staticmethod
    def cone_backward(t: dict, saved: dict, per_weight: float, grad_class: torch.Tensor) -> tuple:
        """Gradients of the weighted cone energies (`per_weight` = upstream · λ_hier / T) w.r.t. the image–class
        cosines (added into `grad_class`), then returned: the image–attribute cosines, the category–attribute
        cosines and the weights w; and the [24] per-set sums that the radii's gradients need (`_cone_rows`)."""
        o: LatHAdapterOptions = saved["o"]
        batch, num_present = saved["batch"], saved["num_present"]
        first, second = saved["sizes"][0], saved["sizes"][0] + saved["sizes"][1]
        per_edge, energy, r = t["per_edge"], t["energy"], t["r"]
        grad_energy = t["weights"].mul(energy > 0).mul_(per_weight)
        angle_saved = tuple(t[f"angle_saved_{i}"] for i in range(6))
        a, b_w, b_m = pieces = exterior_angle_pieces(grad_energy, angle_saved)
        grad_cos = exterior_angle_cosine_grad(pieces, per_edge[1], per_edge[5])  # the edges' w1 and n1
        # category y_i → image i: the cosine at [i, y_i]
        grad_class.scatter_add_(1, t["label_index"], grad_cos[:first, None])
        # through the weights: ∂/∂w_ck = e_ck / T, ∂/∂r_ik = e_ik / T, then the softmax's backward for r
        weighted_energy = energy * per_weight
        grad_class_attribute = energy.new_zeros(saved["class_shape"])
        grad_class_attribute.index_copy_(0, t["present"], grad_cos[first:second].view(num_present, -1))
        grad_weights = torch.zeros_like(grad_class_attribute)
        grad_weights.index_copy_(0, t["present"], weighted_energy[first:second].view(num_present, -1))
        grad_attribute = grad_cos[second:].view(batch, -1)
        r_grad = r * weighted_energy[second:].view(batch, -1)
        grad_attribute.add_(r_grad, alpha=1 / o.tau_attr)
        grad_attribute.addcmul_(r, r_grad.sum(1, keepdim=True), value=-1 / o.tau_attr)
        # radii: the coefficients are constant on an edge set, so the per-set sums of a, b_w, b_m and ∂L/∂e, plain
        # and times the cosine, are one product with the sets' indicators [3, E]
        indicator = per_edge[8:]
        sums = torch.stack([a, b_w, b_m, grad_energy]) @ torch.cat([indicator, indicator * angle_saved[0]]).t()
        return grad_attribute, grad_class_attribute, grad_weights, sums.view(-1)


def lathadapter_loss(image_cosines: torch.Tensor, class_attribute: torch.Tensor, class_weights: torch.Tensor,
                     log_scales: torch.Tensor, log_curvature: torch.Tensor, log_tau: torch.Tensor, labels: torch.Tensor,
                     options: LatHAdapterOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """`L_ce + λ_hyp L_hyp + λ_hier L_hier` of a batch and its detached parts `(L_ce, L_hyp, L_hier)` (docs/method.md
    step 6); a switched-off part is 0.

    `image_cosines` [B, C + K] are the cosines of the adapted images with the prototypes, then the attributes (the
    prototypes alone, [B, C], will do when λ_hier = 0); `class_attribute` [C, K] the cosines <p_c, a_k> of the
    prototypes with the attributes and `class_weights` [C, K] the associations w (both read by the cone energy alone);
    the log scales are of categories, attributes and images.
    """
    if options.lambda_hier > 0:  # the batch's sorted categories and each label's position: the hierarchy term's
        present = torch.unique(labels)
        position = torch.searchsorted(present, labels)
    else:
        present = position = labels[:0]
    return _LatHAdapterLoss.apply(image_cosines, class_attribute, class_weights, log_scales, log_curvature, log_tau,
                                  labels, present, position, options)
