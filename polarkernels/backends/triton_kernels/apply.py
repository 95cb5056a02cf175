"""X' = a X + B X: a blocked product with the axpy fused into the epilogue.

Matches :func:`polarkernels.backends.torch_ref.apply`. B need not be symmetric (the Gram
Newton–Schulz variant applies it to m×m polynomials as well as to X).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import launch
from .tiles import grouped_tile, mma


@triton.jit
def _apply_kernel(p_b, p_x, p_out, M, N, a,
                  stride_bb, stride_bm, stride_bk, stride_xb, stride_xm, stride_xn,
                  stride_ob, stride_om, stride_on,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
                  PRECISION: tl.constexpr, UPCAST: tl.constexpr, AXPY: tl.constexpr):
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    batch = (pid // (tiles_m * tiles_n)).to(tl.int64)
    pid_m, pid_n = grouped_tile(pid % (tiles_m * tiles_n), tiles_m, tiles_n, GROUP)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    p_b += batch * stride_bb
    p_x += batch * stride_xb
    # rows/cols past the edge wrap around (real data, never stored), so only K needs a load mask
    p_a = p_b + (offs_m % M)[:, None] * stride_bm + offs_k[None, :] * stride_bk  # [BLOCK_M, BLOCK_K] B[i, k]
    p_c = p_x + offs_k[:, None] * stride_xm + (offs_n % N)[None, :] * stride_xn  # [BLOCK_K, BLOCK_N] X[k, j]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(M, BLOCK_K)):
        m_k = offs_k < M - k * BLOCK_K
        b_a = tl.load(p_a, mask=m_k[None, :], other=0.0)
        b_c = tl.load(p_c, mask=m_k[:, None], other=0.0)
        acc = mma(b_a, b_c, acc, PRECISION, UPCAST)
        p_a += BLOCK_K * stride_bk
        p_c += BLOCK_K * stride_xm

    m_out = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if AXPY:  # acc += a X[i, j], fused in the epilogue
        b_x = tl.load(p_x + offs_m[:, None] * stride_xm + offs_n[None, :] * stride_xn, mask=m_out, other=0.0)
        acc += a * b_x.to(tl.float32)
    p_o = p_out + batch * stride_ob + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(p_o, acc.to(p_out.dtype.element_ty), mask=m_out)


INTERPRETED = launch.interpreted(_apply_kernel)


def apply(bmat: Tensor, x: Tensor, a: float, *, out: Tensor | None = None,
          input_precision: str | None = None) -> Tensor:
    """X' = a X + B X for B (..., m, m) and X (..., m, n); returns X's shape and dtype (fp32 accumulation).

    Args:
        bmat, x: same dtype, device and leading dims; any strides.
        a: the step's linear coefficient (0 skips reading X a second time).
        out: optional output, written in full (must not share memory with the inputs).
        input_precision: ``tl.dot`` precision for fp32 storage ("ieee" default, "tf32", "tf32x3").
    """
    launch.check_operand(bmat, "bmat", interpreting=INTERPRETED)
    launch.check_operand(x, "x", interpreting=INTERPRETED)
    m, n = x.shape[-2:]
    if bmat.shape[:-2] != x.shape[:-2] or bmat.shape[-2:] != (m, m):
        raise ValueError(f"bmat must have shape {(*x.shape[:-2], m, m)} to multiply x {tuple(x.shape)}; "
                         f"got {tuple(bmat.shape)}")
    if bmat.dtype != x.dtype or bmat.device != x.device:
        raise ValueError(f"bmat ({bmat.dtype}, {bmat.device}) and x ({x.dtype}, {x.device}) must match")
    res = launch.output(out, tuple(x.shape), x)
    if out is not None:  # a fresh output shares nothing (and fake tensors under torch.compile have no storage)
        launch.check_no_alias(res, bmat, x)
    if res.numel() == 0:
        return res
    for t, name in ((bmat, "bmat"), (x, "x"), (res, "out")):
        launch.check_offsets(t, name)
    b3, x3, o3 = launch.batched(bmat), launch.batched(x), launch.batched(res)
    a = float(a)
    args = (b3, x3, o3, m, n, a, *b3.stride(), *x3.stride(), *o3.stride())
    flags = dict(PRECISION=launch.dot_precision(x.dtype, input_precision), AXPY=a != 0.0)
    batch = x3.shape[0]
    if INTERPRETED:
        block = launch.INTERPRETER_BLOCK
        grid = (batch * triton.cdiv(m, block) * triton.cdiv(n, block),)
        _apply_kernel[grid](*args, BLOCK_M=block, BLOCK_N=block, BLOCK_K=block, GROUP=4,
                            UPCAST=x.dtype != torch.float32, **flags)
    else:
        def grid(meta):
            return (batch * triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)
        tuning_class = (launch.bucket(m), launch.bucket(n), launch.layout(b3), launch.layout(x3), launch.layout(o3),
                        *flags.values())
        tuner = launch.tuned(_apply_kernel, launch.rectangular_configs, tuning_class)
        launch.traceable(tuner)[grid](*args, UPCAST=False, **flags)
    return res
