"""Fused batched pairwise Poincaré distance: x [G, M, D], y [G, N, D] → [G, M, N], Triton forward and backward."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lathadapter.kernels.triton_pairs import (
    OP_PAIRWISE,
    block_sizes,
    distance_terms,
    dot_in_fp32,
    pair_gradient,
    tile_invariants,
)


@triton.jit
def pairwise_distance_kernel(
    x_ptr, y_ptr, c_ptr, out_ptr, M, N, D,
    s_xg, s_xm, s_yg, s_yn, s_og, s_om, s_on,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] tile of distances of one group; fp32 throughout, stored in the output's dtype."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    group = tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_ok = rows < M
    cols_ok = cols < N
    c = tl.load(c_ptr).to(tl.float32)
    aa, bb, _, uu, _ = tile_invariants(x_ptr + group * s_xg, y_ptr + group * s_yg, rows, cols, rows_ok, cols_ok, D,
                                    s_xm, s_yn, BLOCK_M, BLOCK_N, BLOCK_K, DOT_FP32)
    d, _, _, _, _ = distance_terms(aa[:, None], bb[None, :], uu, c)
    offsets = group * s_og + rows[:, None] * s_om + cols[None, :] * s_on
    tl.store(out_ptr + offsets, d.to(out_ptr.dtype.element_ty), mask=rows_ok[:, None] & cols_ok[None, :])


class TritonPairwiseDistance(torch.autograd.Function):
    """d(x_gm, y_gn) for all m, n in each group g; the backward recomputes distances tile by tile."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        groups, m, dim = x.shape
        n = y.shape[1]
        out = torch.empty(groups, m, n, dtype=x.dtype, device=x.device)
        blocks = block_sizes(dim)
        if out.numel() > 0:
            grid = (triton.cdiv(m, blocks["BLOCK_M"]), triton.cdiv(n, blocks["BLOCK_N"]), groups)
            pairwise_distance_kernel[grid](
                x, y, c, out, m, n, dim,
                x.stride(0), x.stride(1), y.stride(0), y.stride(1), out.stride(0), out.stride(1), out.stride(2),
                BLOCK_M=blocks["BLOCK_M"], BLOCK_N=blocks["BLOCK_N"], BLOCK_K=blocks["BLOCK_K"],
                DOT_FP32=dot_in_fp32(x.dtype), num_warps=blocks["num_warps"],
            )
        ctx.save_for_backward(x, y, c)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        x, y, c = ctx.saved_tensors
        s_g, s_m, s_n = grad_out.stride()
        grad_x, grad_c = pair_gradient(OP_PAIRWISE, x, y, True, c, weight=grad_out, weight_strides=(s_g, s_m, s_n))
        grad_y, _ = pair_gradient(OP_PAIRWISE, y, x, False, c, weight=grad_out, weight_strides=(s_g, s_n, s_m))
        return grad_x, grad_y, grad_c.to(c.dtype) if ctx.needs_input_grad[2] else None


def pairwise_distance_triton(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """x [G, M, D], y [G, N, D] of one dtype (fp16, bf16 or fp32), c a 0-d float32 tensor → [G, M, N]."""
    return TritonPairwiseDistance.apply(x.contiguous(), y.contiguous(), c)
