"""S = X Xᵀ as a symmetric product: only the upper-triangle tiles are computed, each stored twice.

Matches :func:`polarkernels.backends.torch_ref.gram`. For X (m×n) this costs m²n FLOPs (plus the
diagonal tiles' other half) instead of cuBLAS's 2m²n.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import launch
from .tiles import mma, store_symmetric, upper_tile


@triton.jit
def _gram_kernel(p_x, p_s, M, K,
                 stride_xb, stride_xm, stride_xk, stride_sb, stride_sm, stride_sn,
                 BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
                 PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    tiles = tl.cdiv(M, BLOCK)
    triangle = tiles * (tiles + 1) // 2
    pid = tl.program_id(0)
    batch = (pid // triangle).to(tl.int64)
    row, col = upper_tile(pid % triangle)

    offs_i = row * BLOCK + tl.arange(0, BLOCK)
    offs_j = col * BLOCK + tl.arange(0, BLOCK)
    offs_k = tl.arange(0, BLOCK_K)
    p_x += batch * stride_xb
    # rows past M wrap around (real data, never stored), so only K needs a load mask
    p_a = p_x + (offs_i % M)[:, None] * stride_xm + offs_k[None, :] * stride_xk  # [BLOCK, BLOCK_K] X[i, k]
    p_b = p_x + offs_k[:, None] * stride_xk + (offs_j % M)[None, :] * stride_xm  # [BLOCK_K, BLOCK] X[j, k]ᵀ

    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        m_k = offs_k < K - k * BLOCK_K
        b_a = tl.load(p_a, mask=m_k[None, :], other=0.0)
        b_b = tl.load(p_b, mask=m_k[:, None], other=0.0)
        acc = mma(b_a, b_b, acc, PRECISION, UPCAST)
        p_a += BLOCK_K * stride_xk
        p_b += BLOCK_K * stride_xk

    store_symmetric(p_s + batch * stride_sb, acc, row, col, offs_i, offs_j, M, stride_sm, stride_sn)


INTERPRETED = launch.interpreted(_gram_kernel)


def gram(x: Tensor, *, out: Tensor | None = None, input_precision: str | None = None) -> Tensor:
    """S = X Xᵀ for X of shape (..., m, n); returns (..., m, m) in X's dtype (fp32 accumulation).

    Args:
        x: any strides (transposed or sliced matrices are read in place).
        out: optional output, written in full (must not share memory with ``x``).
        input_precision: ``tl.dot`` precision for fp32 storage ("ieee" default, "tf32", "tf32x3").
    """
    launch.check_operand(x, "x", interpreting=INTERPRETED)
    m, k = x.shape[-2:]
    s = launch.output(out, (*x.shape[:-1], m), x)
    if out is not None:  # a fresh output shares nothing (and fake tensors under torch.compile have no storage)
        launch.check_no_alias(s, x)
    if s.numel() == 0:
        return s
    launch.check_offsets(x, "x")
    launch.check_offsets(s, "out")
    x3, s3 = launch.batched(x), launch.batched(s)
    args = (x3, s3, m, k, *x3.stride(), *s3.stride())
    precision = launch.dot_precision(x.dtype, input_precision)
    batch = x3.shape[0]
    if INTERPRETED:
        block = launch.INTERPRETER_BLOCK
        tiles = triton.cdiv(m, block)
        _gram_kernel[(batch * tiles * (tiles + 1) // 2,)](
            *args, BLOCK=block, BLOCK_K=block, PRECISION=precision, UPCAST=x.dtype != torch.float32)
    else:
        def grid(meta):
            tiles = triton.cdiv(m, meta["BLOCK"])
            return (batch * tiles * (tiles + 1) // 2,)
        tuning_class = (launch.bucket(m), launch.bucket(k), launch.layout(x3), launch.layout(s3), precision)
        tuner = launch.tuned(_gram_kernel, launch.symmetric_configs, tuning_class)
        launch.traceable(tuner)[grid](*args, PRECISION=precision, UPCAST=False)
    return s
