"""Shared pieces of the Triton kernels: the pair invariants of a tile, the per-pair distance and cone-energy terms
with their partial derivatives, and the one backward kernel every fused op uses.

Every pair function f here depends on a pair (a, b) only through aa = |a|², bb = |b|², au = <a, b − a>,
uu = |b − a|² and c. So the gradient of Σ_ab G_ab f(a, b) w.r.t. a is a · Σ_b G (2 f_aa − 2 f_au + 2 f_uu)
+ Σ_b G (f_au − 2 f_uu) b, and w.r.t. b is b · Σ_a G (2 f_bb + 2 f_uu) + Σ_a G (f_au − 2 f_uu) a: a row sum and
a matrix product per tile, so no M × N matrix is ever stored.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lathadapter.kernels.geometry import CLOSE
from lathadapter.kernels.triton_math import EPS, MIN_NORM, acos, asin, log1p, safe_sqrt

CLOSE_FRACTION: tl.constexpr = tl.constexpr(CLOSE)

# Which pair weights the backward kernel uses (a tl.constexpr argument).
OP_PAIRWISE = 0  # G = the upstream gradient of the distance matrix
OP_SEPARATION = 1  # G = −g_i on the active hinges of the separation term
OP_CONE = 2  # G = g · W for the weighted cone energy


def interpreted() -> bool:
    """True when triton.language was imported under TRITON_INTERPRET=1 (the kernels then run on CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(triton.language.standard.zeros, InterpretedFunction)


INTERPRETED = interpreted()


@triton.jit
def tile_invariants(a_ptr, b_ptr, a_rows, b_rows, a_ok, b_ok, D, stride_a, stride_b,
                    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr):
    """|a|² [A], |b|² [B], <a, b − a> and |b − a|² [A, B] for a tile of rows of a and b, and whether it has a close
    pair.

    The inner products come from tl.dot over D in BLOCK_K chunks (fp32 accumulation); a tile holding a close pair
    (|a − b|² < CLOSE (|a|² + |b|²)) is recomputed with direct sums of differences, as the reference does.
    """
    aa = tl.zeros([BLOCK_A], dtype=tl.float32)
    bb = tl.zeros([BLOCK_B], dtype=tl.float32)
    ab = tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < D
        a = tl.load(a_ptr + a_rows[:, None] * stride_a + ks[None, :], mask=a_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptr + b_rows[:, None] * stride_b + ks[None, :], mask=b_ok[:, None] & k_ok[None, :], other=0.0)
        a32 = a.to(tl.float32)
        b32 = b.to(tl.float32)
        aa += tl.sum(a32 * a32, axis=1)
        bb += tl.sum(b32 * b32, axis=1)
        ab = tl.dot(a32, tl.trans(b32), ab, input_precision="ieee") if DOT_FP32 else tl.dot(a, tl.trans(b), ab)
    norms = aa[:, None] + bb[None, :]
    uu = tl.maximum(norms - 2.0 * ab, 0.0)
    au = ab - aa[:, None]
    close = (uu < norms * CLOSE_FRACTION) & a_ok[:, None] & b_ok[None, :]
    any_close = tl.max(close.to(tl.int32)) > 0
    if any_close:
        uu = tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.float32)
        au = tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.float32)
        for k in range(0, D):
            a_col = tl.load(a_ptr + a_rows * stride_a + k, mask=a_ok, other=0.0).to(tl.float32)
            b_col = tl.load(b_ptr + b_rows * stride_b + k, mask=b_ok, other=0.0).to(tl.float32)
            diff = b_col[None, :] - a_col[:, None]
            uu += diff * diff
            au += a_col[:, None] * diff
    return aa, bb, au, uu, any_close


@triton.jit
def distance_terms(aa, bb, uu, c):
    """d = arcosh(1 + 2c uu / ((1 − c aa)(1 − c bb))) / √c and its partials (f_aa, f_bb, f_uu, f_c); f_au = 0."""
    alpha_raw = 1.0 - c * aa
    beta_raw = 1.0 - c * bb
    alpha = tl.maximum(alpha_raw, EPS)
    beta = tl.maximum(beta_raw, EPS)
    alpha_on = (alpha_raw >= EPS).to(tl.float32)
    beta_on = (beta_raw >= EPS).to(tl.float32)
    inv_ab = 1.0 / (alpha * beta)
    delta = 2.0 * c * uu * inv_ab
    root, root_grad = safe_sqrt(delta * (delta + 2.0))
    t = log1p(delta + root)
    t_grad = (1.0 + root_grad * (2.0 * delta + 2.0)) / (1.0 + delta + root)
    inv_sqrt_c = 1.0 / tl.sqrt_rn(c)
    g = inv_sqrt_c * t_grad
    f_uu = g * 2.0 * c * inv_ab
    f_aa = g * delta * c * alpha_on / alpha
    f_bb = g * delta * c * beta_on / beta
    f_c = -0.5 * t * inv_sqrt_c / c + g * (2.0 * uu * inv_ab + delta * (aa * alpha_on / alpha + bb * beta_on / beta))
    return t * inv_sqrt_c, f_aa, f_bb, f_uu, f_c


@triton.jit
def cone_terms(aa, bb, au, uu, c, K, kappa):
    """E = max(0, Ξ(p, q) − κ ψ(p)) for p = a, q = b, and its partials (f_aa, f_bb, f_au, f_uu, f_c).

    Mirrors kernels/cone.py: scaled invariants pp, qq, pu, w; numerator pu (1 − pp) − pp w; squared denominator
    pp w ((1 − pp)(1 − qq) + w); Ξ = 0 where that is below eps²; arccos and arcsin of arguments clamped to their domain,
    with the derivatives of the reference's atan2 forms.
    """
    pp = c * aa
    qq = c * bb
    pu = c * au
    w = c * uu
    numerator = pu * (1.0 - pp) - pp * w
    h = (1.0 - pp) * (1.0 - qq) + w
    squared = pp * w * h
    valid = squared > EPS * EPS  # as the reference: undefined below eps (degenerate pairs)
    den, den_grad = safe_sqrt(squared)
    den = tl.where(valid, den, 1.0)
    cosine = numerator / den
    cos_c = tl.minimum(tl.maximum(cosine, -1.0), 1.0)
    sine, sine_grad = safe_sqrt(1.0 - cos_c * cos_c)
    xi = tl.where(valid, acos(cos_c), 0.0)
    # d/dx atan2(√(1 − x²), x), the reference's arccos
    xi_cos = -(sine + 2.0 * cos_c * cos_c * sine_grad) / (cos_c * cos_c + sine * sine)
    xi_cos = tl.where(valid & (cosine >= -1.0) & (cosine <= 1.0), xi_cos, 0.0)
    by_num = xi_cos / den
    by_squared = -xi_cos * cosine / den * den_grad
    xi_pp = by_num * (-pu - w) + by_squared * (w * h - pp * w * (1.0 - qq))
    xi_qq = by_squared * (-pp * w * (1.0 - pp))
    xi_pu = by_num * (1.0 - pp)
    xi_w = -by_num * pp + by_squared * (pp * h + pp * w)
    # half-aperture ψ(p) = asin(clamp(K (1 − pp) / max(√pp, MIN_NORM), 0, 1))
    s, s_grad = safe_sqrt(pp)
    s_on = s >= MIN_NORM
    s = tl.maximum(s, MIN_NORM)
    ratio = K * (1.0 - pp) / s
    ratio_c = tl.minimum(tl.maximum(ratio, 0.0), 1.0)
    psi = asin(ratio_c)
    cosine_psi, cosine_psi_grad = safe_sqrt(1.0 - ratio_c * ratio_c)
    # d/dx atan2(x, √(1 − x²)), the reference's arcsin
    psi_ratio = (cosine_psi + 2.0 * ratio_c * ratio_c * cosine_psi_grad) / (ratio_c * ratio_c + cosine_psi * cosine_psi)
    psi_ratio = tl.where((ratio >= 0) & (ratio <= 1.0), psi_ratio, 0.0)
    psi_pp = psi_ratio * (-K / s - ratio / s * tl.where(s_on, s_grad, 0.0))
    excess = xi - kappa * psi
    on = (excess > 0).to(tl.float32)
    g_pp = on * (xi_pp - kappa * psi_pp)
    g_qq = on * xi_qq
    g_pu = on * xi_pu
    g_w = on * xi_w
    f_c = g_pp * aa + g_qq * bb + g_pu * au + g_w * uu
    return on * excess, c * g_pp, c * g_qq, c * g_pu, c * g_w, f_c


@triton.jit
def pair_grad_kernel(
    own_ptr, other_ptr, grad_own_ptr, c_ptr, c_partial_ptr,
    weight_ptr, s_wg, s_w_own, s_w_other,  # G (OP_PAIRWISE) or W (OP_CONE), strides as [group, own, other]
    grad_weight_ptr, s_gw_own, s_gw_other,  # OP_CONE: dW = g · E is written here when WRITE_GRAD_WEIGHT
    upstream_ptr,  # OP_CONE: the 0-d upstream gradient; OP_SEPARATION: g_i per child
    first_value_ptr, first_index_ptr, second_mask_ptr,  # OP_SEPARATION: d(x_i, y_pos(i)), pos(i), parent mask
    n_own, n_other, D, other_chunk,
    s_own_g, s_own_row, s_other_g, s_other_row, s_grad_g, s_grad_row,
    K, kappa, margin,
    OP: tl.constexpr, OWN_IS_FIRST: tl.constexpr, WRITE_GRAD_WEIGHT: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_OWN: tl.constexpr, BLOCK_OTHER: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_FP32: tl.constexpr, SPLIT: tl.constexpr,
):
    """Gradient w.r.t. one point set ("own") of Σ G_ab f(a, b) over its pairs with the other set, one program per
    block of own rows, group and chunk of `other_chunk` other rows (with SPLIT, the chunks' partial gradients are
    added atomically into the zeroed fp32 output); also the program's share of the curvature gradient."""
    pid = tl.program_id(0)
    group = tl.program_id(1)
    split = tl.program_id(2)
    own_base = own_ptr + group * s_own_g
    other_base = other_ptr + group * s_other_g
    rows = pid * BLOCK_OWN + tl.arange(0, BLOCK_OWN)
    rows_ok = rows < n_own
    dims = tl.arange(0, BLOCK_D)
    dims_ok = dims < D
    c = tl.load(c_ptr).to(tl.float32)
    self_sum = tl.zeros([BLOCK_OWN], dtype=tl.float32)
    cross = tl.zeros([BLOCK_OWN, BLOCK_D], dtype=tl.float32)
    c_sum = tl.zeros([BLOCK_OWN], dtype=tl.float32)
    own = tl.load(own_base + rows[:, None] * s_own_row + dims[None, :],
                  mask=rows_ok[:, None] & dims_ok[None, :], other=0.0).to(tl.float32)
    if OP == 2:
        upstream = tl.load(upstream_ptr).to(tl.float32)
    if OP == 1:
        if OWN_IS_FIRST:
            row_upstream = tl.load(upstream_ptr + rows, mask=rows_ok, other=0.0).to(tl.float32)
            row_positive_d = tl.load(first_value_ptr + rows, mask=rows_ok, other=0.0).to(tl.float32)
            row_positive = tl.load(first_index_ptr + rows, mask=rows_ok, other=-1)
        else:
            if HAS_MASK:
                row_mask = tl.load(second_mask_ptr + rows, mask=rows_ok, other=0) != 0
    other_begin = split * other_chunk
    other_end = tl.minimum(other_begin + other_chunk, n_other)
    for start in range(other_begin, other_end, BLOCK_OTHER):
        cols = start + tl.arange(0, BLOCK_OTHER)
        cols_ok = cols < other_end
        pair_ok = rows_ok[:, None] & cols_ok[None, :]
        oo, tt, ou, uu, any_close = tile_invariants(own_base, other_base, rows, cols, rows_ok, cols_ok, D,
                                                    s_own_row, s_other_row, BLOCK_OWN, BLOCK_OTHER, BLOCK_K, DOT_FP32)
        # canonical (first, second) invariants: aa = |first|², bb = |second|², au = <first, second − first>
        if OWN_IS_FIRST:
            aa = oo[:, None]
            bb = tt[None, :]
            au = ou
        else:
            aa = tt[None, :]
            bb = oo[:, None]
            au = -ou - uu
        if OP == 2:
            value, f_aa, f_bb, f_au, f_uu, f_c = cone_terms(aa, bb, au, uu, c, K, kappa)
            w_offsets = group * s_wg + rows[:, None] * s_w_own + cols[None, :] * s_w_other
            weight = upstream * tl.load(weight_ptr + w_offsets, mask=pair_ok, other=0.0).to(tl.float32)
            if WRITE_GRAD_WEIGHT:
                gw_offsets = rows[:, None] * s_gw_own + cols[None, :] * s_gw_other
                tl.store(grad_weight_ptr + gw_offsets, (upstream * value).to(grad_weight_ptr.dtype.element_ty),
                         mask=pair_ok)
        else:
            value, f_aa, f_bb, f_uu, f_c = distance_terms(aa, bb, uu, c)
            f_au = tl.zeros_like(f_uu)
            if OP == 0:
                w_offsets = group * s_wg + rows[:, None] * s_w_own + cols[None, :] * s_w_other
                weight = tl.load(weight_ptr + w_offsets, mask=pair_ok, other=0.0).to(tl.float32)
            else:
                # separation: child i = first, parent j = second; active hinges carry −g_i
                if OWN_IS_FIRST:
                    up = row_upstream[:, None]
                    positive_d = row_positive_d[:, None]
                    eligible = cols[None, :] != row_positive[:, None]
                    if HAS_MASK:
                        col_mask = tl.load(second_mask_ptr + cols, mask=cols_ok, other=0) != 0
                        eligible = eligible & col_mask[None, :]
                else:
                    up = tl.load(upstream_ptr + cols, mask=cols_ok, other=0.0).to(tl.float32)[None, :]
                    positive_d = tl.load(first_value_ptr + cols, mask=cols_ok, other=0.0).to(tl.float32)[None, :]
                    col_positive = tl.load(first_index_ptr + cols, mask=cols_ok, other=-1)
                    eligible = rows[:, None] != col_positive[None, :]
                    if HAS_MASK:
                        eligible = eligible & row_mask[:, None]
                active = eligible & pair_ok & (positive_d - value + margin > 0)
                weight = tl.where(active, -up, 0.0)
        weight = tl.where(pair_ok, weight, 0.0)
        # grad_own = own Σ G s + Σ G k (other − own), with s = 2 f_aa − f_au (own first) or 2 f_bb + f_au (own
        # second) and k = f_au − 2 f_uu; c_sum collects Σ G f_c
        self_coef = 2.0 * f_aa - f_au if OWN_IS_FIRST else 2.0 * f_bb + f_au
        cross_weight = weight * (f_au - 2.0 * f_uu)
        c_sum += tl.sum(weight * f_c, axis=1)
        if any_close:
            # k is large for close pairs, so take other − own as direct differences, one column at a time
            self_sum += tl.sum(weight * self_coef, axis=1)
            for j in range(0, BLOCK_OTHER):
                column = tl.sum(tl.where(tl.arange(0, BLOCK_OTHER)[None, :] == j, cross_weight, 0.0), axis=1)
                other_row = tl.load(other_base + (start + j) * s_other_row + dims,
                                    mask=dims_ok & (start + j < other_end), other=0.0).to(tl.float32)
                cross += column[:, None] * (other_row[None, :] - own)
        else:
            # far pairs: the expanded form, one matrix product per tile
            self_sum += tl.sum(weight * (self_coef - (f_au - 2.0 * f_uu)), axis=1)
            other = tl.load(other_base + cols[:, None] * s_other_row + dims[None, :],
                            mask=cols_ok[:, None] & dims_ok[None, :], other=0.0).to(tl.float32)
            cross = tl.dot(cross_weight, other, cross, input_precision="ieee")
    grad = own * self_sum[:, None] + cross
    grad_offsets = group * s_grad_g + rows[:, None] * s_grad_row + dims[None, :]
    if SPLIT:
        tl.atomic_add(grad_own_ptr + grad_offsets, grad, mask=rows_ok[:, None] & dims_ok[None, :])
    else:
        tl.store(grad_own_ptr + grad_offsets, grad, mask=rows_ok[:, None] & dims_ok[None, :])
    tl.store(c_partial_ptr + (split * tl.num_programs(1) + group) * tl.num_programs(0) + pid, tl.sum(c_sum, axis=0))


def split_count(programs: int, other_blocks: int, device: torch.device) -> int:
    """How many chunks to cut the loop over the other set into, so that the grid fills the GPU (about four
    programs per SM; a few in the interpreter, enough to exercise the split). Chunks of one backward program add
    their gradients atomically (float32; the summation order, hence the last bits, may vary between runs)."""
    if INTERPRETED or device.type != "cuda":
        target = 4
    else:
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(other_blocks, triton.cdiv(target, max(programs, 1))))


def split_chunk(n_other: int, block: int, splits: int) -> int:
    """Rows of the other set per split: a whole number of blocks."""
    return triton.cdiv(triton.cdiv(n_other, block), splits) * block


def block_sizes(dim: int) -> dict[str, int]:
    """Tile sizes: small in the interpreter (so tests cross block edges); on the GPU, 32 × 32 pairs per forward tile
    and 16 × 16 per backward tile, the backward with BLOCK_D / 64 warps (4 to 16).

    Every per-pair term of a tile (the invariants, the distance or cone terms and their partials) is a live
    [rows, columns] register tensor. On an H100 (Triton 3.6) the earlier 64 × 64 forward and 64 (or 32) × 32
    backward tiles needed more than the 255 registers a thread has: the backward kernels spilled 118 to 1672 bytes
    per thread, compiling one op's three kernels took 12 to 32 s at D = 17, and the separation backward at D = 512
    had not compiled after 90 s.
    """
    block_d = max(16, triton.next_power_of_2(dim))
    if INTERPRETED:
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "BLOCK_D": block_d, "BLOCK_OWN": 16,
                "BLOCK_OTHER": 16, "num_warps": 1, "num_warps_backward": 1}
    # the backward also holds own, its gradient and the other tile as [16, BLOCK_D]: 32 registers each at 8 warps
    # for D = 512
    return {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "BLOCK_D": block_d, "BLOCK_OWN": 16,
            "BLOCK_OTHER": 16, "num_warps": 4, "num_warps_backward": max(4, min(16, block_d // 64))}


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """fp16 inputs go to the tensor cores as they are; fp32 (and anything in the interpreter) uses IEEE fp32 dots."""
    return INTERPRETED or dtype == torch.float32


def pair_gradient(
    op: int,
    own: torch.Tensor,
    other: torch.Tensor,
    own_is_first: bool,
    c: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    weight_strides: tuple[int, int, int] = (0, 0, 0),
    grad_weight: torch.Tensor | None = None,
    grad_weight_strides: tuple[int, int] = (0, 0),
    upstream: torch.Tensor | None = None,
    first_value: torch.Tensor | None = None,
    first_index: torch.Tensor | None = None,
    second_mask: torch.Tensor | None = None,
    K: float = 0.1,
    kappa: float = 1.0,
    margin: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch pair_grad_kernel for own [G, n_own, D] against other [G, n_other, D] (both contiguous).

    Returns the gradient w.r.t. own (own's dtype) and this pass's curvature gradient (0-d float32).
    """
    groups, n_own, dim = own.shape
    n_other = other.shape[1]
    if n_own == 0 or n_other == 0 or dim == 0:
        return torch.zeros_like(own), torch.zeros((), dtype=torch.float32, device=own.device)
    blocks = block_sizes(dim)
    programs = triton.cdiv(n_own, blocks["BLOCK_OWN"])
    splits = split_count(programs * groups, triton.cdiv(n_other, blocks["BLOCK_OTHER"]), own.device)
    grad_own = (torch.zeros if splits > 1 else torch.empty)(groups, n_own, dim, dtype=torch.float32, device=own.device)
    c_partial = torch.empty(splits * groups * programs, dtype=torch.float32, device=own.device)
    dummy = c
    pair_grad_kernel[(programs, groups, splits)](
        own, other, grad_own, c, c_partial,
        dummy if weight is None else weight, *weight_strides,
        dummy if grad_weight is None else grad_weight, *grad_weight_strides,
        dummy if upstream is None else upstream,
        dummy if first_value is None else first_value,
        dummy if first_index is None else first_index,
        dummy if second_mask is None else second_mask,
        n_own, n_other, dim, split_chunk(n_other, blocks["BLOCK_OTHER"], splits),
        own.stride(0), own.stride(1), other.stride(0), other.stride(1), grad_own.stride(0), grad_own.stride(1),
        float(K), float(kappa), float(margin),
        OP=op, OWN_IS_FIRST=own_is_first, WRITE_GRAD_WEIGHT=grad_weight is not None,
        HAS_MASK=second_mask is not None,
        BLOCK_OWN=blocks["BLOCK_OWN"], BLOCK_OTHER=blocks["BLOCK_OTHER"], BLOCK_K=blocks["BLOCK_K"],
        BLOCK_D=blocks["BLOCK_D"], DOT_FP32=dot_in_fp32(own.dtype), SPLIT=splits > 1,
        num_warps=blocks["num_warps_backward"],
    )
    return grad_own.to(own.dtype), c_partial.sum()
