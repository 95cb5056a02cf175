"""B = b S + c S² on symmetric S: only the upper-triangle tiles are computed, each stored twice.

Matches :func:`polarkernels.backends.torch_ref.poly` on symmetric input (the lower triangle of S
is read only through the products, whose upper-triangle tiles are mirrored). m³ FLOPs for m×m
instead of 2m³; c = 0 skips the product (the cubic step's B = b S).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import launch
from .tiles import mma, store_symmetric, upper_tile


@triton.jit
def _poly_kernel(p_s, p_out, M, b, c,
                 stride_sb, stride_sm, stride_sn, stride_ob, stride_om, stride_on,
                 BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
                 PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                 LINEAR: tl.constexpr, SQUARE: tl.constexpr):
    tiles = tl.cdiv(M, BLOCK)
    triangle = tiles * (tiles + 1) // 2
    pid = tl.program_id(0)
    batch = (pid // triangle).to(tl.int64)
    row, col = upper_tile(pid % triangle)

    offs_i = row * BLOCK + tl.arange(0, BLOCK)
    offs_j = col * BLOCK + tl.arange(0, BLOCK)
    p_s += batch * stride_sb

    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    if SQUARE:  # acc = c (S S)[i, j]
        offs_k = tl.arange(0, BLOCK_K)
        p_a = p_s + (offs_i % M)[:, None] * stride_sm + offs_k[None, :] * stride_sn  # [BLOCK, BLOCK_K] S[i, k]
        p_b = p_s + offs_k[:, None] * stride_sm + (offs_j % M)[None, :] * stride_sn  # [BLOCK_K, BLOCK] S[k, j]
        for k in range(0, tl.cdiv(M, BLOCK_K)):
            m_k = offs_k < M - k * BLOCK_K
            b_a = tl.load(p_a, mask=m_k[None, :], other=0.0)
            b_b = tl.load(p_b, mask=m_k[:, None], other=0.0)
            acc = mma(b_a, b_b, acc, PRECISION, UPCAST)
            p_a += BLOCK_K * stride_sn
            p_b += BLOCK_K * stride_sm
        acc = acc * c
    if LINEAR:  # acc += b S[i, j], fused in the epilogue
        m_ij = (offs_i[:, None] < M) & (offs_j[None, :] < M)
        b_s = tl.load(p_s + offs_i[:, None] * stride_sm + offs_j[None, :] * stride_sn, mask=m_ij, other=0.0)
        acc += b * b_s.to(tl.float32)

    store_symmetric(p_out + batch * stride_ob, acc, row, col, offs_i, offs_j, M, stride_om, stride_on)


INTERPRETED = launch.interpreted(_poly_kernel)


def poly(s: Tensor, b: float, c: float, *, out: Tensor | None = None,
         input_precision: str | None = None) -> Tensor:
    """B = b S + c S² for symmetric S of shape (..., m, m); returns B in S's dtype (fp32 accumulation).

    Args:
        s: symmetric matrices, any strides.
        b, c: the step's coefficients.
        out: optional output, written in full (must not share memory with ``s``).
        input_precision: ``tl.dot`` precision for fp32 storage ("ieee" default, "tf32", "tf32x3").
    """
    launch.check_operand(s, "s", interpreting=INTERPRETED)
    m = s.shape[-1]
    if s.shape[-2] != m:
        raise ValueError(f"s must be square (..., m, m); got {tuple(s.shape)}")
    res = launch.output(out, tuple(s.shape), s)
    if out is not None:  # a fresh output shares nothing (and fake tensors under torch.compile have no storage)
        launch.check_no_alias(res, s)
    if res.numel() == 0:
        return res
    launch.check_offsets(s, "s")
    launch.check_offsets(res, "out")
    s3, o3 = launch.batched(s), launch.batched(res)
    b, c = float(b), float(c)
    args = (s3, o3, m, b, c, *s3.stride(), *o3.stride())
    flags = dict(PRECISION=launch.dot_precision(s.dtype, input_precision), LINEAR=b != 0.0, SQUARE=c != 0.0)
    batch = s3.shape[0]
    if INTERPRETED:
        block = launch.INTERPRETER_BLOCK
        tiles = triton.cdiv(m, block)
        _poly_kernel[(batch * tiles * (tiles + 1) // 2,)](
            *args, BLOCK=block, BLOCK_K=block, UPCAST=s.dtype != torch.float32, **flags)
    else:
        def grid(meta):
            tiles = triton.cdiv(m, meta["BLOCK"])
            return (batch * tiles * (tiles + 1) // 2,)
        tuning_class = (launch.bucket(m), launch.layout(s3), launch.layout(o3), *flags.values())
        tuner = launch.tuned(_poly_kernel, launch.symmetric_configs, tuning_class)
        launch.traceable(tuner)[grid](*args, UPCAST=False, **flags)
    return res
