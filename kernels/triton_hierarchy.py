"""Fused hierarchy-loss kernels: the in-batch separation hinge and the weighted edge energy (cone or centripetal).

None of them stores an M × N matrix in the forward or backward pass: forward kernels reduce each tile as they go,
backward kernels recompute the tile (kernels/triton_pairs.py). The only M × N tensor is dW = g · E, the gradient of
the dense weight matrix itself, and only when W requires grad.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lathadapter.kernels.triton_pairs import (
    OP_CONE,
    OP_SEPARATION,
    block_sizes,
    cone_terms,
    distance_terms,
    dot_in_fp32,
    pair_gradient,
    split_chunk,
    split_count,
    tile_invariants,
)


@triton.jit
def separation_forward_kernel(
    x_ptr, y_ptr, c_ptr, positive_d_ptr, positive_ptr, mask_ptr, sum_ptr, active_ptr,
    M, N, D, n_chunk, s_xm, s_yn, margin,
    HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Per child i and chunk of n_chunk parents: S_i = Σ_j eligible max(0, d_i,pos(i) − d(x_i, y_j) + margin) and the
    number of active hinges, written to row `split` of the outputs."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_ok = rows < M
    c = tl.load(c_ptr).to(tl.float32)
    positive_d = tl.load(positive_d_ptr + rows, mask=rows_ok, other=0.0).to(tl.float32)
    positive = tl.load(positive_ptr + rows, mask=rows_ok, other=-1)
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    active_count = tl.zeros([BLOCK_M], dtype=tl.int32)
    chunk_end = tl.minimum((split + 1) * n_chunk, N)
    for start in range(split * n_chunk, chunk_end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cols_ok = cols < chunk_end
        aa, bb, _, uu, _ = tile_invariants(x_ptr, y_ptr, rows, cols, rows_ok, cols_ok, D, s_xm, s_yn,
                                        BLOCK_M, BLOCK_N, BLOCK_K, DOT_FP32)
        d, _, _, _, _ = distance_terms(aa[:, None], bb[None, :], uu, c)
        eligible = rows_ok[:, None] & cols_ok[None, :] & (cols[None, :] != positive[:, None])
        if HAS_MASK:
            eligible = eligible & (tl.load(mask_ptr + cols, mask=cols_ok, other=0) != 0)[None, :]
        hinge = positive_d[:, None] - d + margin
        active = eligible & (hinge > 0)
        total += tl.sum(tl.where(active, hinge, 0.0), axis=1)
        active_count += tl.sum(active.to(tl.int32), axis=1)
    tl.store(sum_ptr + split * M + rows, total, mask=rows_ok)
    tl.store(active_ptr + split * M + rows, active_count, mask=rows_ok)


@triton.jit
def cone_energy_forward_kernel(
    p_ptr, q_ptr, w_ptr, c_ptr, out_ptr, N, M, D, m_chunk, s_pn, s_qm, s_wn, s_wm, K, kappa,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """Per parent n and chunk of m_chunk children: Σ_m W[n, m] E(p_n, q_m), E the cone energy, in row `split`."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_ok = rows < N
    c = tl.load(c_ptr).to(tl.float32)
    total = tl.zeros([BLOCK_N], dtype=tl.float32)
    chunk_end = tl.minimum((split + 1) * m_chunk, M)
    for start in range(split * m_chunk, chunk_end, BLOCK_M):
        cols = start + tl.arange(0, BLOCK_M)
        cols_ok = cols < chunk_end
        pair_ok = rows_ok[:, None] & cols_ok[None, :]
        aa, bb, au, uu, _ = tile_invariants(p_ptr, q_ptr, rows, cols, rows_ok, cols_ok, D, s_pn, s_qm,
                                         BLOCK_N, BLOCK_M, BLOCK_K, DOT_FP32)
        energy, _, _, _, _, _ = cone_terms(aa[:, None], bb[None, :], au, uu, c, K, kappa)
        weight = tl.load(w_ptr + rows[:, None] * s_wn + cols[None, :] * s_wm, mask=pair_ok, other=0.0)
        total += tl.sum(tl.where(pair_ok, weight.to(tl.float32) * energy, 0.0), axis=1)
    tl.store(out_ptr + split * N + rows, total, mask=rows_ok)


@triton.jit
def centripetal_kernel(
    hp_ptr, hq_ptr, w_ptr, upstream_ptr, out_ptr, grad_w_ptr, grad_hp_ptr, grad_hq_ptr,
    N, M, s_wn, s_wm, s_gwn, s_gwm, margin,
    BACKWARD: tl.constexpr, WRITE_GRAD_WEIGHT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """One [BLOCK_N, BLOCK_M] tile of W ⊙ max(0, |p|_H − |q|_H + margin): forward writes the tile's row sums to
    out[pid_m, rows]; backward writes dW and the tile's partial gradients of |p|_H (by column block) and |q|_H."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_ok = rows < N
    cols_ok = cols < M
    pair_ok = rows_ok[:, None] & cols_ok[None, :]
    hp = tl.load(hp_ptr + rows, mask=rows_ok, other=0.0).to(tl.float32)
    hq = tl.load(hq_ptr + cols, mask=cols_ok, other=0.0).to(tl.float32)
    weight = tl.load(w_ptr + rows[:, None] * s_wn + cols[None, :] * s_wm, mask=pair_ok, other=0.0).to(tl.float32)
    hinge = hp[:, None] - hq[None, :] + margin
    active = pair_ok & (hinge > 0)
    if BACKWARD:
        upstream = tl.load(upstream_ptr).to(tl.float32)
        if WRITE_GRAD_WEIGHT:
            grad_w = tl.where(active, upstream * hinge, 0.0)
            tl.store(grad_w_ptr + rows[:, None] * s_gwn + cols[None, :] * s_gwm,
                     grad_w.to(grad_w_ptr.dtype.element_ty), mask=pair_ok)
        slope = tl.where(active, upstream * weight, 0.0)
        tl.store(grad_hp_ptr + pid_m * N + rows, tl.sum(slope, axis=1), mask=rows_ok)
        tl.store(grad_hq_ptr + pid_n * M + cols, -tl.sum(slope, axis=0), mask=cols_ok)
    else:
        tl.store(out_ptr + pid_m * N + rows, tl.sum(tl.where(active, weight * hinge, 0.0), axis=1), mask=rows_ok)


class TritonSeparation(torch.autograd.Function):
    """S_i = Σ_{eligible j} max(0, positive_d_i − d(x_i, y_j) + margin); gradients to x, y, positive_d and c."""

    @staticmethod
    def forward(ctx, x, y, positive_d, positive, mask, c, margin):  # type: ignore[override]
        m, dim = x.shape
        n = y.shape[0]
        blocks = block_sizes(dim)
        programs = triton.cdiv(m, blocks["BLOCK_M"])
        splits = split_count(programs, triton.cdiv(n, blocks["BLOCK_N"]), x.device)
        sums = torch.zeros(splits, m, dtype=torch.float32, device=x.device)
        active = torch.zeros(splits, m, dtype=torch.int32, device=x.device)
        if m > 0 and n > 0:
            separation_forward_kernel[(programs, splits)](
                x, y, c, positive_d, positive, c if mask is None else mask, sums, active,
                m, n, dim, split_chunk(n, blocks["BLOCK_N"], splits), x.stride(0), y.stride(0), float(margin),
                HAS_MASK=mask is not None, BLOCK_M=blocks["BLOCK_M"], BLOCK_N=blocks["BLOCK_N"],
                BLOCK_K=blocks["BLOCK_K"], DOT_FP32=dot_in_fp32(x.dtype), num_warps=blocks["num_warps"],
            )
        active = active.sum(0)
        ctx.save_for_backward(x, y, positive_d, positive, c, active, *(() if mask is None else (mask,)))
        ctx.margin = margin
        return sums.sum(0)

    @staticmethod
    def backward(ctx, grad_sums):  # type: ignore[override]
        x, y, positive_d, positive, c, active, *rest = ctx.saved_tensors
        mask = rest[0] if rest else None
        upstream = grad_sums.float().contiguous()
        common = {"upstream": upstream, "first_value": positive_d, "first_index": positive, "second_mask": mask,
                  "margin": ctx.margin}
        grad_x, grad_c = pair_gradient(OP_SEPARATION, x[None], y[None], True, c, **common)
        grad_y, _ = pair_gradient(OP_SEPARATION, y[None], x[None], False, c, **common)
        grad_positive_d = (upstream * active).to(positive_d.dtype)
        return grad_x[0], grad_y[0], grad_positive_d, None, None, grad_c.to(c.dtype), None


class TritonConeEnergy(torch.autograd.Function):
    """Σ_{n,m} W[n,m] E_cone(p_n, q_m); gradients to p, q, W and c."""

    @staticmethod
    def forward(ctx, p, q, weights, c, K, kappa):  # type: ignore[override]
        n, dim = p.shape
        m = q.shape[0]
        blocks = block_sizes(dim)
        programs = triton.cdiv(n, blocks["BLOCK_N"])
        splits = split_count(programs, triton.cdiv(m, blocks["BLOCK_M"]), p.device)
        per_parent = torch.zeros(splits, n, dtype=torch.float32, device=p.device)
        if n > 0 and m > 0:
            cone_energy_forward_kernel[(programs, splits)](
                p, q, weights, c, per_parent, n, m, dim, split_chunk(m, blocks["BLOCK_M"], splits), p.stride(0),
                q.stride(0), weights.stride(0), weights.stride(1), float(K), float(kappa),
                BLOCK_N=blocks["BLOCK_N"], BLOCK_M=blocks["BLOCK_M"], BLOCK_K=blocks["BLOCK_K"],
                DOT_FP32=dot_in_fp32(p.dtype), num_warps=blocks["num_warps"],
            )
        ctx.save_for_backward(p, q, weights, c)
        ctx.options = (K, kappa)
        return per_parent.sum()

    @staticmethod
    def backward(ctx, grad_total):  # type: ignore[override]
        p, q, weights, c = ctx.saved_tensors
        K, kappa = ctx.options
        upstream = grad_total.float().reshape(())
        grad_weights = torch.empty_like(weights) if ctx.needs_input_grad[2] else None
        s_wn, s_wm = weights.stride()
        grad_p, grad_c = pair_gradient(
            OP_CONE, p[None], q[None], True, c, weight=weights, weight_strides=(0, s_wn, s_wm),
            grad_weight=grad_weights,
            grad_weight_strides=(0, 0) if grad_weights is None else grad_weights.stride(),
            upstream=upstream, K=K, kappa=kappa,
        )
        grad_q, _ = pair_gradient(
            OP_CONE, q[None], p[None], False, c, weight=weights, weight_strides=(0, s_wm, s_wn), upstream=upstream,
            K=K, kappa=kappa,
        )
        return grad_p[0], grad_q[0], grad_weights, grad_c.to(c.dtype), None, None


class TritonCentripetal(torch.autograd.Function):
    """Σ_{n,m} W[n,m] max(0, hp_n − hq_m + margin) for precomputed origin distances hp, hq."""

    @staticmethod
    def forward(ctx, hp, hq, weights, margin):  # type: ignore[override]
        n, m = weights.shape
        blocks = block_sizes(16)
        grid = (triton.cdiv(n, blocks["BLOCK_N"]), triton.cdiv(m, blocks["BLOCK_M"]))
        partial = torch.zeros(grid[1], n, dtype=torch.float32, device=hp.device)
        if n > 0 and m > 0:
            centripetal_kernel[grid](
                hp, hq, weights, hp, partial, hp, hp, hp, n, m, weights.stride(0), weights.stride(1), 0, 0,
                float(margin), BACKWARD=False, WRITE_GRAD_WEIGHT=False, BLOCK_N=blocks["BLOCK_N"],
                BLOCK_M=blocks["BLOCK_M"], num_warps=blocks["num_warps"],
            )
        ctx.save_for_backward(hp, hq, weights)
        ctx.margin = margin
        return partial.sum()

    @staticmethod
    def backward(ctx, grad_total):  # type: ignore[override]
        hp, hq, weights = ctx.saved_tensors
        n, m = weights.shape
        blocks = block_sizes(16)
        grid = (triton.cdiv(n, blocks["BLOCK_N"]), triton.cdiv(m, blocks["BLOCK_M"]))
        grad_weights = torch.empty_like(weights) if ctx.needs_input_grad[2] else None
        grad_hp = torch.zeros(grid[1], n, dtype=torch.float32, device=hp.device)
        grad_hq = torch.zeros(grid[0], m, dtype=torch.float32, device=hp.device)
        if n > 0 and m > 0:
            centripetal_kernel[grid](
                hp, hq, weights, grad_total.float().reshape(()), hp,
                hp if grad_weights is None else grad_weights, grad_hp, grad_hq,
                n, m, weights.stride(0), weights.stride(1),
                *((0, 0) if grad_weights is None else grad_weights.stride()), float(ctx.margin),
                BACKWARD=True, WRITE_GRAD_WEIGHT=grad_weights is not None, BLOCK_N=blocks["BLOCK_N"],
                BLOCK_M=blocks["BLOCK_M"], num_warps=blocks["num_warps"],
            )
        return grad_hp.sum(0).to(hp.dtype), grad_hq.sum(0).to(hq.dtype), grad_weights, None


def separation_sums_triton(x: torch.Tensor, y: torch.Tensor, positive_d: torch.Tensor, positive: torch.Tensor,
                           mask: torch.Tensor | None, c: torch.Tensor, margin: float) -> torch.Tensor:
    """Per-child hinge sums S [M] (float32); x [M, D], y [N, D] of one dtype, mask uint8 [N] or None."""
    return TritonSeparation.apply(x.contiguous(), y.contiguous(), positive_d.float().contiguous(),
                                  positive.contiguous(), mask, c, margin)


def cone_energy_sum_triton(p: torch.Tensor, q: torch.Tensor, weights: torch.Tensor, c: torch.Tensor, K: float,
                           kappa: float) -> torch.Tensor:
    """Σ W ⊙ E_cone for parents p [N, D], children q [M, D] of one dtype, weights [N, M]; a 0-d float32 tensor."""
    return TritonConeEnergy.apply(p.contiguous(), q.contiguous(), weights, c, K, kappa)


def centripetal_sum_triton(hp: torch.Tensor, hq: torch.Tensor, weights: torch.Tensor, margin: float) -> torch.Tensor:
    """Σ W ⊙ max(0, hp_n − hq_m + margin) for origin distances hp [N], hq [M]; a 0-d float32 tensor."""
    return TritonCentripetal.apply(hp.float().contiguous(), hq.float().contiguous(), weights, margin)
