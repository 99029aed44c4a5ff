"""LatHAdapter's loss stage after the cosine products, fused in Triton: the CUDA twin of
`adapter.methods.lathadapter.fused.fused_loss` for every `radius` (with `radius=kind` the radius vectors are constant).

Every term is a function of two scaled radii and one direction cosine per pair (kernels/radial.py), so the loss reads
three cosine matrices and three radius vectors:

- image–class [B, C]: cross-entropy on `logit_scale·cos` and on `−d/τ_h` (two online logsumexps), the distances d,
  the in-batch separation hinge and the label edges category y_i → image i;
- image–attribute [B, K]: the edges attribute k → image i weighted by r_ik = softmax_k(cos/τ_a);
- category–attribute [C, K], rows of the batch's P present categories: the edges category c → attribute k weighted
  by w_ck.

The forward pass is one kernel per matrix writing O(B) (or O(P)) row statistics. The backward pass is one kernel per
matrix that recomputes the pair terms and writes the gradient w.r.t. the cosines (and w.r.t. w_ck); radius gradients
are row sums in the kernel and column sums in a per-block partial buffer [row blocks, columns] that the host
reduces, the curvature and log τ_h gradients per-program partials. No [B, C] buffer exists besides the cosines'
gradient. Everything is computed in float32.

Pair geometry (parent p, child q, cosine t, all radii scaled to the unit ball; see kernels/radial.py):
W = (ρ_p − ρ_q)² + 2ρ_pρ_q(1 − t), M = (1 − ρ_pρ_q)² + 2ρ_pρ_q(1 − t), N = −ρ_p(1 + ρ_q²) + ρ_q(1 + ρ_p²) t and
WM − N² = S² with S = (1 − ρ_p²) ρ_q √(1 − t²), so Ξ = atan2(S, N): the kernels take 1 − |N/√(WM)| and the
derivatives (N dS − S dN)/(WM) from S, free of the cancellation near t = ±1 (where the radii's derivatives vanish and
the cosine's is set to 0, as the reference masks it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from lathadapter.kernels.cone import check_cone_options
from lathadapter.kernels.triton_math import (
    EPS,
    INTERPRETED,
    MIN_NORM,
    TINY,
    acos_from_complement,
    asin,
    atanh,
    log1p,
    safe_sqrt,
)

HIERARCHIES = ("cone", "triplet")
NEG: tl.constexpr = tl.constexpr(-1.0e30)  # the logit of a masked entry: exp(NEG − max) = 0

# rows of the image–class statistics [IMAGE_CLASS_STATS, B]
LSE_CE: tl.constexpr = tl.constexpr(0)  # logsumexp_c logit_scale·cos_ic
LSE_HYP: tl.constexpr = tl.constexpr(1)  # logsumexp_c −d_ic/τ_h
LABEL_DISTANCE: tl.constexpr = tl.constexpr(2)  # d_i,y_i
ACTIVE: tl.constexpr = tl.constexpr(3)  # active separation hinges of row i
CE: tl.constexpr = tl.constexpr(4)  # the row's cross-entropy
HYP: tl.constexpr = tl.constexpr(5)  # the row's hyperbolic cross-entropy
SEPARATION: tl.constexpr = tl.constexpr(6)  # Σ of the row's separation hinges
LABEL_EDGE: tl.constexpr = tl.constexpr(7)  # energy of the edge y_i → i
IMAGE_CLASS_STATS = 8
# rows of the image–attribute statistics [2, B]
LSE_ATTR: tl.constexpr = tl.constexpr(0)  # logsumexp_k cos_ik/τ_a
ATTR_EDGES: tl.constexpr = tl.constexpr(1)  # Σ_k r_ik E(a_k → i)


# ---------------------------------------------------------------------------------------------------------------
# pair terms


@triton.jit
def distance_terms(rho_a, rho_b, cosine, inv_sqrt_c):
    """d = arcosh(1 + δ)/√c with δ = 2W/((1 − ρ_a²)(1 − ρ_b²)), and ∂d/∂cos, ∂d/∂ρ_a, ∂d/∂ρ_b (∂d/∂c = −d/(2c))."""
    in_range = (cosine >= -1.0) & (cosine <= 1.0)
    t = tl.minimum(tl.maximum(cosine, -1.0), 1.0)
    alpha = 1.0 - rho_a * rho_a
    beta = 1.0 - rho_b * rho_b
    k = 2.0 / (alpha * beta)
    gap = rho_a - rho_b
    u = 1.0 - t
    delta = k * (gap * gap + 2.0 * rho_a * rho_b * u)
    root = tl.sqrt_rn(delta * (delta + 2.0))
    dist = log1p(delta + root) * inv_sqrt_c
    g = inv_sqrt_c / tl.maximum(root, EPS)  # ∂d/∂δ, with the reference's clamp of the root at eps
    dist_cos = tl.where(in_range, -2.0 * k * rho_a * rho_b * g, 0.0)
    dist_a = g * (k * (2.0 * gap + 2.0 * rho_b * u) + delta * 2.0 * rho_a / alpha)
    dist_b = g * (k * (-2.0 * gap + 2.0 * rho_a * u) + delta * 2.0 * rho_b / beta)
    return dist, dist_cos, dist_a, dist_b


@triton.jit
def origin_distance_terms(rho, inv_sqrt_c):
    """|x|_H = 2 artanh(ρ)/√c (ρ clamped to 1 − eps, as the reference) and d|x|_H/dρ."""
    on = (rho >= -1.0 + EPS) & (rho <= 1.0 - EPS)
    z = tl.minimum(tl.maximum(rho, -1.0 + EPS), 1.0 - EPS)
    return 2.0 * atanh(z) * inv_sqrt_c, tl.where(on, 2.0 * inv_sqrt_c / ((1.0 - z) * (1.0 + z)), 0.0)


@triton.jit
def parent_terms(rho, inv_sqrt_c, K, CONE: tl.constexpr):
    """What an edge needs of its parent: the half-aperture ψ = asin(min(1, K(1 − ρ²)/ρ)) and dψ/dρ (cone), or the
    origin distance |p|_H and its derivative (triplet)."""
    if CONE:
        pp = rho * rho
        ratio = K * (1.0 - pp) / tl.maximum(rho, MIN_NORM)
        x = tl.minimum(tl.maximum(ratio, 0.0), 1.0)
        cosine, cosine_grad = safe_sqrt(1.0 - x * x)
        # d/dx atan2(x, √(1 − x²)) with the reference's safe √
        psi_x = (cosine + 2.0 * x * x * cosine_grad) / (x * x + cosine * cosine)
        value = asin(x)
        grad = tl.where((ratio >= 0.0) & (ratio <= 1.0), -psi_x * K * (1.0 + 1.0 / tl.maximum(pp, TINY)), 0.0)
    else:
        value, grad = origin_distance_terms(rho, inv_sqrt_c)
    return value, grad


@triton.jit
def cone_terms(rho_p, rho_q, cosine, psi, psi_grad, kappa):
    """E = max(0, Ξ − κψ) of the cone at parent ρ_p u_p towards child ρ_q u_q (Ξ = 0 where undefined), and ∂E/∂cos,
    ∂E/∂ρ_p, ∂E/∂ρ_q; ψ and dψ/dρ_p come from `parent_terms`."""
    in_range = (cosine >= -1.0) & (cosine <= 1.0)
    t = tl.minimum(tl.maximum(cosine, -1.0), 1.0)
    pp = rho_p * rho_p
    qq = rho_q * rho_q
    pq = rho_p * rho_q
    u = 1.0 - t
    gap = rho_p - rho_q
    w = gap * gap + 2.0 * pq * u
    m = (1.0 - pq) * (1.0 - pq) + 2.0 * pq * u
    n = -rho_p * (1.0 + qq) + rho_q * (1.0 + pp) * t
    sine2 = u * (1.0 + t)
    sine = tl.sqrt_rn(sine2)
    side = (1.0 - pp) * rho_q * sine  # S = √(WM − N²)
    wm = w * m
    valid = wm * pp > TINY  # as the reference: undefined where |P| |u| √M < eps
    wm = tl.maximum(wm, TINY)
    root = tl.sqrt_rn(wm)
    x = tl.minimum(tl.maximum(n / root, -1.0), 1.0)
    xi = tl.where(valid, acos_from_complement(x, side * side / (root * (root + tl.abs(n)))), 0.0)
    # dΞ = (N dS − S dN)/(WM), with S_ρp = −2ρ_pρ_q sin, S_ρq = (1 − ρ_p²) sin, S_t = −(1 − ρ_p²)ρ_q t/sin
    n_p = -(1.0 + qq) + 2.0 * pq * t
    n_q = -2.0 * pq + (1.0 + pp) * t
    n_t = rho_q * (1.0 + pp)
    xi_p = tl.where(valid, rho_q * sine * (-2.0 * rho_p * n - (1.0 - pp) * n_p) / wm, 0.0)
    xi_q = tl.where(valid, (1.0 - pp) * sine * (n - rho_q * n_q) / wm, 0.0)
    t_ok = valid & in_range & (sine2 > 0.0)
    xi_t = tl.where(t_ok, -(1.0 - pp) * rho_q * (n * t + sine2 * n_t) / (tl.where(t_ok, sine, 1.0) * wm), 0.0)
    excess = xi - kappa * psi
    on = excess > 0.0
    return (tl.where(on, excess, 0.0), tl.where(on, xi_t, 0.0), tl.where(on, xi_p - kappa * psi_grad, 0.0),
            tl.where(on, xi_q, 0.0))


@triton.jit
def edge_terms(rho_p, rho_q, cosine, parent, parent_grad, child_h, child_h_grad, inv_c, kappa, margin_radial,
               CONE: tl.constexpr):
    """Energy of parent → child edges — cone energy, or centripetal hinge max(0, |p|_H − |q|_H + m_r) — and its
    derivatives w.r.t. the cosine, ρ_p, ρ_q and c. `parent` is ψ or |p|_H (`parent_terms`), `child_h` is |q|_H."""
    if CONE:
        energy, energy_cos, energy_p, energy_q = cone_terms(rho_p, rho_q, cosine, parent, parent_grad, kappa)
        energy_c = tl.zeros_like(energy)
    else:
        gap = parent - child_h  # parent and child broadcast to the pairs' shape
        on = gap + margin_radial > 0.0
        energy = tl.where(on, gap + margin_radial, 0.0)
        energy_cos = tl.zeros_like(energy)
        energy_p = tl.where(on, parent_grad, 0.0)
        energy_q = tl.where(on, -child_h_grad, 0.0)
        energy_c = tl.where(on, -0.5 * gap * inv_c, 0.0)  # |x|_H ∝ 1/√c
    return energy, energy_cos, energy_p, energy_q, energy_c


# ---------------------------------------------------------------------------------------------------------------
# tiles: what the forward and backward kernel of one matrix both read


@triton.jit
def program_block(n, BLOCK: tl.constexpr):
    """This program's block of BLOCK rows out of n: the program id, the row indices and which of them exist."""
    pid = tl.program_id(0)
    index = pid * BLOCK + tl.arange(0, BLOCK)
    return pid, index, index < n


@triton.jit
def column_block(start, n, rows_ok, BLOCK: tl.constexpr):
    """The BLOCK columns out of n from `start`, which of them exist, and which of their pairs with the rows do."""
    cols = start + tl.arange(0, BLOCK)
    cols_ok = cols < n
    return cols, cols_ok, rows_ok[:, None] & cols_ok[None, :]


@triton.jit
def load_pairs(ptr, row_stride, col_stride, rows, cols, pair_ok):
    """The [rows, cols] entries of a strided matrix in float32, 0 outside the pairs that exist."""
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :] * col_stride, mask=pair_ok,
                   other=0.0).to(tl.float32)


@triton.jit
def load_radii(ptr, index, ok):
    """Scaled radii in float32; 0.5 (inside the ball, so every term stays finite) where the index does not exist."""
    return tl.load(ptr + index, mask=ok, other=0.5).to(tl.float32)


@triton.jit
def curvature(c_ptr):
    """The curvature c (0-d, any float dtype) in float32 and 1/√c."""
    c = tl.load(c_ptr).to(tl.float32)
    return c, 1.0 / tl.sqrt_rn(c)


@triton.jit
def separation_pairs(present_ptr, cols, cols_ok, pair_ok, y):
    """The pairs (image i, category c) of the separation hinge: c present in the batch and not i's label y_i."""
    present = tl.load(present_ptr + cols, mask=cols_ok, other=0) != 0
    return pair_ok & present[None, :] & (cols[None, :] != y[:, None])


@triton.jit
def image_children(rho_v_ptr, rows, rows_ok, inv_sqrt_c):
    """The rows' images as the children of the edges attribute → image: their radii, |v|_H and d|v|_H/dρ_v."""
    rho_v = load_radii(rho_v_ptr, rows, rows_ok)
    child_h, child_h_grad = origin_distance_terms(rho_v, inv_sqrt_c)
    return rho_v, child_h, child_h_grad


@triton.jit
def image_attribute_pairs(a_ptr, a_b, a_k, rho_a_ptr, rows, rows_ok, rho_v, child_h, child_h_grad, c, inv_sqrt_c,
                          start, K, cone_k, cone_kappa, margin_radial, CONE: tl.constexpr, BLOCK_K: tl.constexpr):
    """The tile of the rows' images with the BLOCK_K attributes from `start`: the attributes, which exist, which
    pairs do, the cosines, and the edges attribute k → image i (`edge_terms`'s energy and derivatives)."""
    ks, ks_ok, pair_ok = column_block(start, K, rows_ok, BLOCK_K)
    a = load_pairs(a_ptr, a_b, a_k, rows, ks, pair_ok)
    rho_a = load_radii(rho_a_ptr, ks, ks_ok)
    parent, parent_grad = parent_terms(rho_a, inv_sqrt_c, cone_k, CONE)
    energy, energy_cos, energy_p, energy_q, energy_c = edge_terms(
        rho_a[None, :], rho_v[:, None], a, parent[None, :], parent_grad[None, :], child_h[:, None],
        child_h_grad[:, None], 1.0 / c, cone_kappa, margin_radial, CONE)
    return ks, ks_ok, pair_ok, a, energy, energy_cos, energy_p, energy_q, energy_c


@triton.jit
def class_attribute_pairs(q_ptr, q_c, q_k, w_ptr, w_c, w_k, rho_a_ptr, category, slots_ok, rho_p, parent,
                          parent_grad, c, inv_sqrt_c, start, K, cone_kappa, margin_radial, CONE: tl.constexpr,
                          BLOCK_K: tl.constexpr):
    """The tile of the slots' categories with the BLOCK_K attributes from `start`: the attributes, which exist,
    which pairs do, the weights w_ck, and the edges category c → attribute k (`edge_terms`'s energy and
    derivatives; `parent` is the categories' `parent_terms`)."""
    ks, ks_ok, pair_ok = column_block(start, K, slots_ok, BLOCK_K)
    cosine = load_pairs(q_ptr, q_c, q_k, category, ks, pair_ok)
    weight = load_pairs(w_ptr, w_c, w_k, category, ks, pair_ok)
    rho_a = load_radii(rho_a_ptr, ks, ks_ok)
    child_h, child_h_grad = origin_distance_terms(rho_a, inv_sqrt_c)
    energy, energy_cos, energy_p, energy_q, energy_c = edge_terms(
        rho_p[:, None], rho_a[None, :], cosine, parent[:, None], parent_grad[:, None], child_h[None, :],
        child_h_grad[None, :], 1.0 / c, cone_kappa, margin_radial, CONE)
    return ks, ks_ok, pair_ok, weight, energy, energy_cos, energy_p, energy_q, energy_c


# ---------------------------------------------------------------------------------------------------------------
# image–class [B, C]


@triton.jit
def image_class_forward_kernel(
    s_ptr, s_b, s_c, labels_ptr, present_ptr, rho_c_ptr, rho_v_ptr, c_ptr, log_tau_ptr, stats_ptr,
    B, C, logit_scale, margin, cone_k, cone_kappa, margin_radial,
    NEED_D: tl.constexpr, HIER: tl.constexpr, CONE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Per image: both logsumexps (online), the label distance, the separation hinges' sum and count and the label
    edge's energy, in one pass over its row of cosines."""
    pid, rows, rows_ok = program_block(B, BLOCK_B)
    c, inv_sqrt_c = curvature(c_ptr)
    inv_tau = tl.exp(-tl.load(log_tau_ptr).to(tl.float32))
    y = tl.load(labels_ptr + rows, mask=rows_ok, other=0)
    s_label = tl.load(s_ptr + rows * s_b + y * s_c, mask=rows_ok, other=0.0).to(tl.float32)
    rho_v = load_radii(rho_v_ptr, rows, rows_ok)
    rho_y = load_radii(rho_c_ptr, y, rows_ok)
    d_label = tl.zeros([BLOCK_B], dtype=tl.float32)
    if NEED_D:
        # discarded outputs are named apart: the GPU compiler refuses a name (`_`) re-bound in a loop to another shape
        d_label, _a0, _a1, _a2 = distance_terms(rho_v, rho_y, s_label, inv_sqrt_c)
    max_ce = tl.full([BLOCK_B], NEG, dtype=tl.float32)
    sum_ce = tl.zeros([BLOCK_B], dtype=tl.float32)
    max_hyp = tl.full([BLOCK_B], NEG, dtype=tl.float32)
    sum_hyp = tl.zeros([BLOCK_B], dtype=tl.float32)
    hinges = tl.zeros([BLOCK_B], dtype=tl.float32)
    active_count = tl.zeros([BLOCK_B], dtype=tl.float32)
    for start in range(0, C, BLOCK_C):
        cols, cols_ok, pair_ok = column_block(start, C, rows_ok, BLOCK_C)
        s = load_pairs(s_ptr, s_b, s_c, rows, cols, pair_ok)
        logits = tl.where(pair_ok, logit_scale * s, NEG)
        new_max = tl.maximum(max_ce, tl.max(logits, axis=1))
        sum_ce = sum_ce * tl.exp(max_ce - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        max_ce = new_max
        if NEED_D:
            rho_c = load_radii(rho_c_ptr, cols, cols_ok)
            dist, _b0, _b1, _b2 = distance_terms(rho_v[:, None], rho_c[None, :], s, inv_sqrt_c)
            logits = tl.where(pair_ok, -dist * inv_tau, NEG)
            new_max = tl.maximum(max_hyp, tl.max(logits, axis=1))
            sum_hyp = sum_hyp * tl.exp(max_hyp - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
            max_hyp = new_max
            if HIER:
                eligible = separation_pairs(present_ptr, cols, cols_ok, pair_ok, y)
                hinge = d_label[:, None] - dist + margin
                active = eligible & (hinge > 0.0)
                hinges += tl.sum(tl.where(active, hinge, 0.0), axis=1)
                active_count += tl.sum(active.to(tl.float32), axis=1)
    lse_ce = max_ce + tl.log(sum_ce)
    tl.store(stats_ptr + LSE_CE * B + rows, lse_ce, mask=rows_ok)
    tl.store(stats_ptr + CE * B + rows, lse_ce - logit_scale * s_label, mask=rows_ok)
    if NEED_D:
        lse_hyp = max_hyp + tl.log(sum_hyp)
        tl.store(stats_ptr + LSE_HYP * B + rows, lse_hyp, mask=rows_ok)
        tl.store(stats_ptr + LABEL_DISTANCE * B + rows, d_label, mask=rows_ok)
        tl.store(stats_ptr + HYP * B + rows, lse_hyp + d_label * inv_tau, mask=rows_ok)
    if HIER:
        parent, parent_grad = parent_terms(rho_y, inv_sqrt_c, cone_k, CONE)
        child_h, child_h_grad = origin_distance_terms(rho_v, inv_sqrt_c)
        energy, _c0, _c1, _c2, _c3 = edge_terms(rho_y, rho_v, s_label, parent, parent_grad, child_h, child_h_grad,
                                                1.0 / c, cone_kappa, margin_radial, CONE)
        tl.store(stats_ptr + ACTIVE * B + rows, active_count, mask=rows_ok)
        tl.store(stats_ptr + SEPARATION * B + rows, hinges, mask=rows_ok)
        tl.store(stats_ptr + LABEL_EDGE * B + rows, energy, mask=rows_ok)


@triton.jit
def image_class_backward_kernel(
    s_ptr, s_b, s_c, labels_ptr, present_ptr, rho_c_ptr, rho_v_ptr, c_ptr, log_tau_ptr, upstream_ptr, stats_ptr,
    grad_s_ptr, grad_rho_c_partial_ptr, grad_rho_v_ptr, grad_c_partial_ptr, grad_log_tau_partial_ptr,
    B, C, logit_scale, ce_coef, hyp_coef, separation_coef, edge_coef, margin, cone_k, cone_kappa, margin_radial,
    NEED_D: tl.constexpr, HYP_GRAD: tl.constexpr, HIER: tl.constexpr, CONE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """For a block of images: ∂L/∂cos_ic (written), Σ_c ∂L/∂ρ_v (row sums), the block's Σ_i ∂L/∂ρ_c (a row of the
    partial buffer) and its shares of ∂L/∂c and ∂L/∂log τ_h, recomputing the softmaxes and distances."""
    pid, rows, rows_ok = program_block(B, BLOCK_B)
    upstream = tl.load(upstream_ptr).to(tl.float32)
    c, inv_sqrt_c = curvature(c_ptr)
    inv_tau = tl.exp(-tl.load(log_tau_ptr).to(tl.float32))
    ce_coef = ce_coef * upstream
    hyp_coef = hyp_coef * upstream * inv_tau
    separation_coef = separation_coef * upstream
    edge_coef = edge_coef * upstream
    y = tl.load(labels_ptr + rows, mask=rows_ok, other=-1)
    rho_v = load_radii(rho_v_ptr, rows, rows_ok)
    lse_ce = tl.load(stats_ptr + LSE_CE * B + rows, mask=rows_ok, other=0.0)
    lse_hyp = tl.load(stats_ptr + LSE_HYP * B + rows, mask=rows_ok, other=0.0)
    d_label = tl.load(stats_ptr + LABEL_DISTANCE * B + rows, mask=rows_ok, other=0.0)
    active_count = tl.load(stats_ptr + ACTIVE * B + rows, mask=rows_ok, other=0.0)
    grad_v = tl.zeros([BLOCK_B], dtype=tl.float32)
    c_sum = tl.zeros([BLOCK_B], dtype=tl.float32)  # Σ G d, times −1/(2c) at the end (d ∝ 1/√c)
    c_label = tl.zeros([BLOCK_B], dtype=tl.float32)  # the label edges' ∂E/∂c (triplet)
    tau_sum = tl.zeros([BLOCK_B], dtype=tl.float32)  # Σ G_hyp d, times −1 at the end
    label_cos = tl.zeros([BLOCK_B], dtype=tl.float32)
    label_parent = tl.zeros([BLOCK_B], dtype=tl.float32)
    if HIER:  # the label edge y_i → i: its cosine and parent gradients land in the tile's label column
        y_safe = tl.where(rows_ok, y, 0)
        s_label = tl.load(s_ptr + rows * s_b + y_safe * s_c, mask=rows_ok, other=0.0).to(tl.float32)
        rho_y = load_radii(rho_c_ptr, y_safe, rows_ok)
        parent, parent_grad = parent_terms(rho_y, inv_sqrt_c, cone_k, CONE)
        child_h, child_h_grad = origin_distance_terms(rho_v, inv_sqrt_c)
        _f0, energy_cos, energy_p, energy_q, energy_c = edge_terms(
            rho_y, rho_v, s_label, parent, parent_grad, child_h, child_h_grad, 1.0 / c, cone_kappa, margin_radial,
            CONE)
        label_cos = edge_coef * energy_cos
        label_parent = edge_coef * energy_p
        grad_v += edge_coef * energy_q
        c_label = edge_coef * energy_c
    for start in range(0, C, BLOCK_C):
        cols, cols_ok, pair_ok = column_block(start, C, rows_ok, BLOCK_C)
        is_label = cols[None, :] == y[:, None]
        label = is_label.to(tl.float32)
        s = load_pairs(s_ptr, s_b, s_c, rows, cols, pair_ok)
        grad = ce_coef * (tl.exp(logit_scale * s - lse_ce[:, None]) - label)
        grad_c_col = tl.zeros([BLOCK_C], dtype=tl.float32)
        if NEED_D:
            rho_c = load_radii(rho_c_ptr, cols, cols_ok)
            dist, dist_cos, dist_v, dist_c = distance_terms(rho_v[:, None], rho_c[None, :], s, inv_sqrt_c)
            g = tl.zeros([BLOCK_B, BLOCK_C], dtype=tl.float32)  # ∂L/∂d
            if HYP_GRAD:
                g_hyp = tl.where(pair_ok, hyp_coef * (label - tl.exp(-dist * inv_tau - lse_hyp[:, None])), 0.0)
                tau_sum += tl.sum(g_hyp * dist, axis=1)
                g += g_hyp
            if HIER:
                eligible = separation_pairs(present_ptr, cols, cols_ok, pair_ok, y)
                active = eligible & (d_label[:, None] - dist + margin > 0.0)
                g += separation_coef * (label * active_count[:, None] - active.to(tl.float32))
            g = tl.where(pair_ok, g, 0.0)
            grad += g * dist_cos
            grad_v += tl.sum(g * dist_v, axis=1)
            grad_c_col += tl.sum(g * dist_c, axis=0)
            c_sum += tl.sum(g * dist, axis=1)
        if HIER:
            grad += label * label_cos[:, None]
            grad_c_col += tl.sum(label * label_parent[:, None], axis=0)
        tl.store(grad_s_ptr + rows[:, None] * C + cols[None, :], grad.to(grad_s_ptr.dtype.element_ty), mask=pair_ok)
        tl.store(grad_rho_c_partial_ptr + pid * C + cols, grad_c_col, mask=cols_ok)
    tl.store(grad_rho_v_ptr + rows, grad_v, mask=rows_ok)
    c_total = tl.where(rows_ok, c_label - 0.5 / c * c_sum, 0.0)
    tl.store(grad_c_partial_ptr + pid, tl.sum(c_total, axis=0))
    tl.store(grad_log_tau_partial_ptr + pid, -tl.sum(tl.where(rows_ok, tau_sum, 0.0), axis=0))


# ---------------------------------------------------------------------------------------------------------------
# image–attribute [B, K]


@triton.jit
def image_attribute_forward_kernel(
    a_ptr, a_b, a_k, rho_a_ptr, rho_v_ptr, c_ptr, stats_ptr,
    B, K, inv_tau_attr, cone_k, cone_kappa, margin_radial,
    CONE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Per image: logsumexp_k cos_ik/τ_a and Σ_k r_ik E(a_k → i), with an online softmax over its row."""
    pid, rows, rows_ok = program_block(B, BLOCK_B)
    c, inv_sqrt_c = curvature(c_ptr)
    rho_v, child_h, child_h_grad = image_children(rho_v_ptr, rows, rows_ok, inv_sqrt_c)
    running_max = tl.full([BLOCK_B], NEG, dtype=tl.float32)
    total = tl.zeros([BLOCK_B], dtype=tl.float32)
    weighted = tl.zeros([BLOCK_B], dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        _d0, _d1, pair_ok, a, energy, _d2, _d3, _d4, _d5 = image_attribute_pairs(
            a_ptr, a_b, a_k, rho_a_ptr, rows, rows_ok, rho_v, child_h, child_h_grad, c, inv_sqrt_c, start, K, cone_k,
            cone_kappa, margin_radial, CONE, BLOCK_K)
        logits = tl.where(pair_ok, a * inv_tau_attr, NEG)
        new_max = tl.maximum(running_max, tl.max(logits, axis=1))
        scale = tl.exp(running_max - new_max)
        weights = tl.exp(logits - new_max[:, None])
        total = total * scale + tl.sum(weights, axis=1)
        weighted = weighted * scale + tl.sum(tl.where(pair_ok, weights * energy, 0.0), axis=1)
        running_max = new_max
    tl.store(stats_ptr + LSE_ATTR * B + rows, running_max + tl.log(total), mask=rows_ok)
    tl.store(stats_ptr + ATTR_EDGES * B + rows, weighted / total, mask=rows_ok)


@triton.jit
def image_attribute_backward_kernel(
    a_ptr, a_b, a_k, rho_a_ptr, rho_v_ptr, c_ptr, upstream_ptr, stats_ptr,
    grad_a_ptr, grad_rho_a_partial_ptr, grad_rho_v_ptr, grad_c_partial_ptr,
    B, K, inv_tau_attr, edge_coef, cone_k, cone_kappa, margin_radial,
    CONE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """For a block of images: ∂L/∂cos_ik of Σ r_ik E_ik (through E and through the softmax r), added to the rows'
    ∂L/∂ρ_v, the block's Σ_i ∂L/∂ρ_a (a row of the partial buffer) and its share of ∂L/∂c."""
    pid, rows, rows_ok = program_block(B, BLOCK_B)
    coef = edge_coef * tl.load(upstream_ptr).to(tl.float32)
    c, inv_sqrt_c = curvature(c_ptr)
    rho_v, child_h, child_h_grad = image_children(rho_v_ptr, rows, rows_ok, inv_sqrt_c)
    lse = tl.load(stats_ptr + LSE_ATTR * B + rows, mask=rows_ok, other=0.0)
    mean_energy = tl.load(stats_ptr + ATTR_EDGES * B + rows, mask=rows_ok, other=0.0)
    grad_v = tl.zeros([BLOCK_B], dtype=tl.float32)
    c_sum = tl.zeros([BLOCK_B], dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        ks, ks_ok, pair_ok, a, energy, energy_cos, energy_p, energy_q, energy_c = image_attribute_pairs(
            a_ptr, a_b, a_k, rho_a_ptr, rows, rows_ok, rho_v, child_h, child_h_grad, c, inv_sqrt_c, start, K, cone_k,
            cone_kappa, margin_radial, CONE, BLOCK_K)
        r = tl.where(pair_ok, coef * tl.exp(a * inv_tau_attr - lse[:, None]), 0.0)
        grad = r * (energy_cos + inv_tau_attr * (energy - mean_energy[:, None]))
        tl.store(grad_a_ptr + rows[:, None] * K + ks[None, :], grad.to(grad_a_ptr.dtype.element_ty), mask=pair_ok)
        tl.store(grad_rho_a_partial_ptr + pid * K + ks, tl.sum(r * energy_p, axis=0), mask=ks_ok)
        grad_v += tl.sum(r * energy_q, axis=1)
        c_sum += tl.sum(r * energy_c, axis=1)
    previous = tl.load(grad_rho_v_ptr + rows, mask=rows_ok, other=0.0)
    tl.store(grad_rho_v_ptr + rows, previous + grad_v, mask=rows_ok)
    tl.store(grad_c_partial_ptr + pid, tl.sum(c_sum, axis=0))


# ---------------------------------------------------------------------------------------------------------------
# category–attribute [C, K], the rows of the present categories


@triton.jit
def class_attribute_forward_kernel(
    q_ptr, q_c, q_k, w_ptr, w_c, w_k, present_index_ptr, rho_c_ptr, rho_a_ptr, c_ptr, out_ptr,
    P, K, cone_k, cone_kappa, margin_radial,
    CONE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Per present category c: Σ_k w_ck E(c → a_k)."""
    pid, slots, slots_ok = program_block(P, BLOCK_P)
    category = tl.load(present_index_ptr + slots, mask=slots_ok, other=0)
    c, inv_sqrt_c = curvature(c_ptr)
    rho_p = load_radii(rho_c_ptr, category, slots_ok)
    parent, parent_grad = parent_terms(rho_p, inv_sqrt_c, cone_k, CONE)
    total = tl.zeros([BLOCK_P], dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        _e0, _e1, pair_ok, weight, energy, _e2, _e3, _e4, _e5 = class_attribute_pairs(
            q_ptr, q_c, q_k, w_ptr, w_c, w_k, rho_a_ptr, category, slots_ok, rho_p, parent, parent_grad, c,
            inv_sqrt_c, start, K, cone_kappa, margin_radial, CONE, BLOCK_K)
        total += tl.sum(tl.where(pair_ok, weight * energy, 0.0), axis=1)
    tl.store(out_ptr + slots, total, mask=slots_ok)


@triton.jit
def class_attribute_backward_kernel(
    q_ptr, q_c, q_k, w_ptr, w_c, w_k, present_index_ptr, rho_c_ptr, rho_a_ptr, c_ptr, upstream_ptr,
    grad_q_ptr, grad_w_ptr, grad_rho_p_ptr, grad_rho_a_partial_ptr, grad_c_partial_ptr,
    P, K, edge_coef, cone_k, cone_kappa, margin_radial,
    CONE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """For a block of present categories: ∂L/∂cos_ck and ∂L/∂w_ck (rows of the zeroed [C, K] gradients), Σ_k ∂L/∂ρ_c
    per category, the block's Σ_c ∂L/∂ρ_a (a row of the partial buffer) and its share of ∂L/∂c."""
    pid, slots, slots_ok = program_block(P, BLOCK_P)
    category = tl.load(present_index_ptr + slots, mask=slots_ok, other=0)
    coef = edge_coef * tl.load(upstream_ptr).to(tl.float32)
    c, inv_sqrt_c = curvature(c_ptr)
    rho_p = load_radii(rho_c_ptr, category, slots_ok)
    parent, parent_grad = parent_terms(rho_p, inv_sqrt_c, cone_k, CONE)
    grad_p = tl.zeros([BLOCK_P], dtype=tl.float32)
    c_sum = tl.zeros([BLOCK_P], dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        ks, ks_ok, pair_ok, weight, energy, energy_cos, energy_p, energy_q, energy_c = class_attribute_pairs(
            q_ptr, q_c, q_k, w_ptr, w_c, w_k, rho_a_ptr, category, slots_ok, rho_p, parent, parent_grad, c,
            inv_sqrt_c, start, K, cone_kappa, margin_radial, CONE, BLOCK_K)
        weight = tl.where(pair_ok, coef * weight, 0.0)
        offsets = category[:, None] * K + ks[None, :]
        if CONE:  # the centripetal hinge does not depend on the cosine
            tl.store(grad_q_ptr + offsets, (weight * energy_cos).to(grad_q_ptr.dtype.element_ty), mask=pair_ok)
        tl.store(grad_w_ptr + offsets, (coef * energy).to(grad_w_ptr.dtype.element_ty), mask=pair_ok)
        grad_p += tl.sum(weight * energy_p, axis=1)
        tl.store(grad_rho_a_partial_ptr + pid * K + ks, tl.sum(weight * energy_q, axis=0), mask=ks_ok)
        c_sum += tl.sum(weight * energy_c, axis=1)
    tl.store(grad_rho_p_ptr + slots, grad_p, mask=slots_ok)
    tl.store(grad_c_partial_ptr + pid, tl.sum(c_sum, axis=0))


# ---------------------------------------------------------------------------------------------------------------
# host side


@dataclass(frozen=True)
class LossScalars:
    """The loss stage's fixed scalars: LatHAdapter's options and the logit scale."""

    logit_scale: float
    lambda_hyp: float
    lambda_hier: float
    hier: str
    cone_k: float
    cone_kappa: float
    margin: float
    margin_radial: float
    tau_attr: float

    def terms(self) -> tuple[bool, bool, bool]:
        """Which terms the kernels compute: the distances (for hyp or hier), the hierarchy term, the cone energy
        (else the triplet's hinge)."""
        return self.lambda_hyp > 0 or self.lambda_hier > 0, self.lambda_hier > 0, self.hier == "cone"


ROW_TILE = 16  # images (and present categories) per program
_row_tile: ContextVar[int] = ContextVar("row_tile", default=ROW_TILE)


@contextmanager
def row_tile(rows: int) -> Iterator[None]:
    """Loss calls started inside the block tile `rows` images (and present categories) a program instead of
    `ROW_TILE`, forward and backward: the finer tiles benchmarks/radial_loss.py --row-tiles times and the tests
    check (more programs, the same loss and gradients)."""
    if rows < 1 or rows & (rows - 1):
        raise ValueError(f"row tile {rows}: a power of two (Triton's block sizes are)")
    token = _row_tile.set(rows)
    try:
        yield
    finally:
        _row_tile.reset(token)


def loss_block_sizes(num_attributes: int) -> dict[str, int]:
    """Tile sizes: 16 × 16 in the interpreter (so small test shapes cross block edges); on the GPU 16 images × 64
    categories per image–class tile and up to 64 attributes per image–attribute and category–attribute tile. The
    images and present categories a tile takes are `row_tile`'s inside its block."""
    rows = _row_tile.get()
    if INTERPRETED:
        return {"BLOCK_B": rows, "BLOCK_C": 16, "BLOCK_K": 16, "BLOCK_P": rows, "num_warps": 1}
    return {"BLOCK_B": rows, "BLOCK_C": 64, "BLOCK_K": min(64, max(16, triton.next_power_of_2(num_attributes))),
            "BLOCK_P": rows, "num_warps": 4}


class TritonRadialLoss(torch.autograd.Function):
    """`ce + λ_hyp hyp + λ_hier hier` from the cosine matrices and the radius vectors; ce, hyp and hier come out
    as non-differentiable outputs."""

    @staticmethod
    def forward(ctx, image_class: torch.Tensor, image_attribute: torch.Tensor, class_attribute: torch.Tensor,
                class_weights: torch.Tensor, rho_categories: torch.Tensor, rho_attributes: torch.Tensor,
                rho_images: torch.Tensor, c: torch.Tensor, log_tau: torch.Tensor, labels: torch.Tensor,
                present: torch.Tensor, scalars: LossScalars):  # type: ignore[override]
        batch, num_classes = image_class.shape
        num_attributes = image_attribute.shape[1]
        num_present = present.numel()
        need_d, hier_on, cone = scalars.terms()
        blocks = loss_block_sizes(num_attributes)
        device = image_class.device
        present_mask = torch.zeros(num_classes, dtype=torch.int8, device=device)
        present_mask[present] = 1
        stats = torch.zeros(IMAGE_CLASS_STATS, batch, dtype=torch.float32, device=device)
        image_class_forward_kernel[(triton.cdiv(batch, blocks["BLOCK_B"]),)](
            image_class, *image_class.stride(), labels, present_mask, rho_categories, rho_images, c, log_tau, stats,
            batch, num_classes, float(scalars.logit_scale), float(scalars.margin), float(scalars.cone_k),
            float(scalars.cone_kappa), float(scalars.margin_radial),
            NEED_D=need_d, HIER=hier_on, CONE=cone, BLOCK_B=blocks["BLOCK_B"], BLOCK_C=blocks["BLOCK_C"],
            num_warps=blocks["num_warps"],
        )
        attribute_stats = torch.zeros(2, batch, dtype=torch.float32, device=device)
        class_edges = torch.zeros(num_present, dtype=torch.float32, device=device)
        if hier_on:
            image_attribute_forward_kernel[(triton.cdiv(batch, blocks["BLOCK_B"]),)](
                image_attribute, *image_attribute.stride(), rho_attributes, rho_images, c, attribute_stats,
                batch, num_attributes, 1.0 / scalars.tau_attr, float(scalars.cone_k), float(scalars.cone_kappa),
                float(scalars.margin_radial),
                CONE=cone, BLOCK_B=blocks["BLOCK_B"], BLOCK_K=blocks["BLOCK_K"], num_warps=blocks["num_warps"],
            )
            class_attribute_forward_kernel[(triton.cdiv(num_present, blocks["BLOCK_P"]),)](
                class_attribute, *class_attribute.stride(), class_weights, *class_weights.stride(), present,
                rho_categories, rho_attributes, c, class_edges, num_present, num_attributes,
                float(scalars.cone_k), float(scalars.cone_kappa), float(scalars.margin_radial),
                CONE=cone, BLOCK_P=blocks["BLOCK_P"], BLOCK_K=blocks["BLOCK_K"], num_warps=blocks["num_warps"],
            )
        ce = stats[CE.value].mean()
        hyp = stats[HYP.value].mean()
        separation = stats[SEPARATION.value].sum() / (batch * max(num_present - 1, 1))
        edges = stats[LABEL_EDGE.value].sum() + attribute_stats[ATTR_EDGES.value].sum() + class_edges.sum()
        hier = edges / (2 * batch + num_present) + separation if hier_on else torch.zeros_like(ce)
        total = ce + scalars.lambda_hyp * hyp + scalars.lambda_hier * hier
        ctx.save_for_backward(image_class, image_attribute, class_attribute, class_weights, rho_categories,
                              rho_attributes, rho_images, c, log_tau, labels, present, present_mask, stats,
                              attribute_stats)
        ctx.scalars = scalars
        ctx.blocks = blocks  # the backward tiles as the forward did, wherever autograd runs it
        dtype = image_class.dtype
        parts = (ce.to(dtype), hyp.to(dtype), hier.to(dtype))
        ctx.mark_non_differentiable(*parts)
        return (total.to(dtype), *parts)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total: torch.Tensor, *_):  # type: ignore[override]
        (image_class, image_attribute, class_attribute, class_weights, rho_categories, rho_attributes, rho_images,
         c, log_tau, labels, present, present_mask, stats, attribute_stats) = ctx.saved_tensors
        scalars: LossScalars = ctx.scalars
        batch, num_classes = image_class.shape
        num_attributes = image_attribute.shape[1]
        num_present = present.numel()
        need_d, hier_on, cone = scalars.terms()
        blocks = ctx.blocks
        device = image_class.device
        upstream = grad_total.detach().float().reshape(())
        row_blocks = triton.cdiv(batch, blocks["BLOCK_B"])
        f32 = {"dtype": torch.float32, "device": device}
        grad_s = torch.empty(batch, num_classes, dtype=image_class.dtype, device=device)
        grad_rho_c_partial = torch.empty(row_blocks, num_classes, **f32)
        grad_rho_v = torch.empty(batch, **f32)
        grad_c_partial = torch.empty(row_blocks, **f32)
        grad_log_tau_partial = torch.empty(row_blocks, **f32)
        edge_coef = scalars.lambda_hier / (2 * batch + num_present)
        image_class_backward_kernel[(row_blocks,)](
            image_class, *image_class.stride(), labels, present_mask, rho_categories, rho_images, c, log_tau,
            upstream, stats, grad_s, grad_rho_c_partial, grad_rho_v, grad_c_partial, grad_log_tau_partial,
            batch, num_classes, float(scalars.logit_scale), scalars.logit_scale / batch, scalars.lambda_hyp / batch,
            scalars.lambda_hier / (batch * max(num_present - 1, 1)), edge_coef, float(scalars.margin),
            float(scalars.cone_k), float(scalars.cone_kappa), float(scalars.margin_radial),
            NEED_D=need_d, HYP_GRAD=scalars.lambda_hyp > 0, HIER=hier_on, CONE=cone,
            BLOCK_B=blocks["BLOCK_B"], BLOCK_C=blocks["BLOCK_C"], num_warps=blocks["num_warps"],
        )
        if not need_d:  # only ce: nothing else reaches the loss, as in fused_loss
            return grad_s, None, None, None, None, None, None, None, None, None, None, None
        grad_rho_c = grad_rho_c_partial.sum(0)
        grad_c = grad_c_partial.sum()
        grad_a = grad_q = grad_w = grad_rho_a = None
        if hier_on:
            grad_a = torch.empty(batch, num_attributes, dtype=image_attribute.dtype, device=device)
            grad_rho_a_partial = torch.empty(row_blocks, num_attributes, **f32)
            grad_c_attribute = torch.empty(row_blocks, **f32)
            image_attribute_backward_kernel[(row_blocks,)](
                image_attribute, *image_attribute.stride(), rho_attributes, rho_images, c, upstream, attribute_stats,
                grad_a, grad_rho_a_partial, grad_rho_v, grad_c_attribute,
                batch, num_attributes, 1.0 / scalars.tau_attr, edge_coef, float(scalars.cone_k),
                float(scalars.cone_kappa), float(scalars.margin_radial),
                CONE=cone, BLOCK_B=blocks["BLOCK_B"], BLOCK_K=blocks["BLOCK_K"], num_warps=blocks["num_warps"],
            )
            present_blocks = triton.cdiv(num_present, blocks["BLOCK_P"])
            if cone:  # with hier=triplet nothing reaches the category–attribute cosines, as in fused_loss
                grad_q = torch.zeros(num_classes, num_attributes, dtype=class_attribute.dtype, device=device)
            grad_w = torch.zeros(num_classes, num_attributes, dtype=class_weights.dtype, device=device)
            grad_rho_p = torch.empty(num_present, **f32)
            grad_rho_a_class = torch.empty(present_blocks, num_attributes, **f32)
            grad_c_class = torch.empty(present_blocks, **f32)
            class_attribute_backward_kernel[(present_blocks,)](
                class_attribute, *class_attribute.stride(), class_weights, *class_weights.stride(), present,
                rho_categories, rho_attributes, c, upstream, grad_w if grad_q is None else grad_q, grad_w,
                grad_rho_p, grad_rho_a_class, grad_c_class, num_present, num_attributes, edge_coef,
                float(scalars.cone_k), float(scalars.cone_kappa), float(scalars.margin_radial),
                CONE=cone, BLOCK_P=blocks["BLOCK_P"], BLOCK_K=blocks["BLOCK_K"], num_warps=blocks["num_warps"],
            )
            grad_rho_c.index_add_(0, present, grad_rho_p)
            grad_rho_a = (grad_rho_a_partial.sum(0) + grad_rho_a_class.sum(0)).to(rho_attributes.dtype)
            grad_c = grad_c + grad_c_attribute.sum() + grad_c_class.sum()
        return (grad_s, grad_a, grad_q, grad_w, grad_rho_c.to(rho_categories.dtype), grad_rho_a,
                grad_rho_v.to(rho_images.dtype), grad_c.to(c.dtype), grad_log_tau_partial.sum().to(log_tau.dtype),
                None, None, None)


def radial_loss_triton(image_class: torch.Tensor, image_attribute: torch.Tensor, class_attribute: torch.Tensor,
                       class_weights: torch.Tensor, rho_categories: torch.Tensor, rho_attributes: torch.Tensor,
                       rho_images: torch.Tensor, c: torch.Tensor, log_tau: torch.Tensor, labels: torch.Tensor, *,
                       logit_scale: float, lambda_hyp: float, lambda_hier: float, hier: str, cone_k: float,
                       cone_kappa: float, margin: float, margin_radial: float, tau_attr: float,
                       ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`ce + λ_hyp hyp + λ_hier hier` and its detached parts (ce, hyp, hier), as `fused_loss` computes them, from the
    cosines image–class [B, C], image–attribute [B, K], category–attribute [C, K], the weights w_ck [C, K], the
    scaled radii of categories [C], attributes [K] and images [B], the curvature c and log τ_h (0-d) and the labels
    [B]. CUDA tensors (CPU ones under TRITON_INTERPRET=1); any float dtype, computed in float32; the loss and its
    parts come back in image_class's dtype, every gradient in its input's dtype."""
    if hier not in HIERARCHIES:
        raise ValueError(f"hier must be one of {HIERARCHIES}, got {hier!r}")
    if lambda_hier > 0 and hier == "cone":
        check_cone_options(cone_k, cone_kappa)
    if not tau_attr > 0:
        raise ValueError(f"tau_attr must be positive, got {tau_attr}")
    if image_class.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError("radial_loss_triton runs on CUDA tensors, or on CPU tensors in the Triton interpreter "
                           "(TRITON_INTERPRET=1 set before triton is first imported)")
    batch, num_classes = image_class.shape
    num_attributes = image_attribute.shape[1]
    if image_attribute.shape[0] != batch or class_attribute.shape != (num_classes, num_attributes) \
            or class_weights.shape != class_attribute.shape:
        raise ValueError(f"shapes do not match: image_class {tuple(image_class.shape)}, image_attribute "
                         f"{tuple(image_attribute.shape)}, class_attribute {tuple(class_attribute.shape)}, "
                         f"class_weights {tuple(class_weights.shape)}")
    if rho_categories.shape != (num_classes,) or rho_attributes.shape != (num_attributes,) \
            or rho_images.shape != (batch,) or labels.shape != (batch,):
        raise ValueError("radius vectors must be [C], [K], [B] and labels [B]")
    scalars = LossScalars(float(logit_scale), float(lambda_hyp), float(lambda_hier), hier, float(cone_k),
                          float(cone_kappa), float(margin), float(margin_radial), float(tau_attr))
    present = torch.unique(labels)  # the batch's categories, sorted (one host synchronisation)
    total, ce, hyp, hier_part = TritonRadialLoss.apply(
        image_class, image_attribute, class_attribute, class_weights, rho_categories.contiguous(),
        rho_attributes.contiguous(), rho_images.contiguous(), c.reshape(()), log_tau.reshape(()),
        labels.contiguous(), present, scalars)
    return total, (ce, hyp, hier_part)
