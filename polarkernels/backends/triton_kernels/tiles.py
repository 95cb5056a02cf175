"""Device-side helpers shared by the kernels: tile indexing, the dot, the mirrored store."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def upper_tile(t):
    """(row, col) of the t-th tile of an upper triangle listed column by column.

    t = col (col + 1) / 2 + row with 0 ≤ row ≤ col, so consecutive programs share the column
    block (an L2-friendly order). col is the root of that quadratic, corrected by one either way
    for fp32 rounding of the square root (exact up to 2²¹ tiles).
    """
    col = ((tl.sqrt(8.0 * t + 1.0) - 1.0) * 0.5).to(tl.int32)
    col = tl.where(col * (col + 1) // 2 > t, col - 1, col)
    col = tl.where((col + 1) * (col + 2) // 2 <= t, col + 1, col)
    return t - col * (col + 1) // 2, col


@triton.jit
def grouped_tile(t, tiles_m, tiles_n, GROUP: tl.constexpr):
    """(pid_m, pid_n) of the t-th tile in groups of GROUP row blocks (column-major inside a group),
    so the programs in flight together reuse the same operand tiles from L2."""
    width = GROUP * tiles_n
    first_m = (t // width) * GROUP
    size = tl.minimum(tiles_m - first_m, GROUP)
    return first_m + (t % width) % size, (t % width) // size


@triton.jit
def mma(b_a, b_b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + b_a @ b_b in fp32. UPCAST: operands to fp32 first (the interpreter's bf16 dot is wrong)."""
    if UPCAST:
        b_a = b_a.to(tl.float32)
        b_b = b_b.to(tl.float32)
    return tl.dot(b_a, b_b, acc, input_precision=PRECISION)


@triton.jit
def store_symmetric(p_out, val, row, col, offs_i, offs_j, M, stride_r, stride_c):
    """Store tile (row, col) of a symmetric M×M output and its mirror (col, row).

    On a diagonal tile the strict lower half is taken from the transposed upper half, so the
    stored matrix is exactly symmetric whatever the accumulation order inside the tile.
    """
    val = val.to(p_out.dtype.element_ty)
    m_out = (offs_i[:, None] < M) & (offs_j[None, :] < M)
    if row == col:
        val = tl.where(offs_i[:, None] <= offs_j[None, :], val, tl.trans(val))
    tl.store(p_out + offs_i[:, None] * stride_r + offs_j[None, :] * stride_c, val, mask=m_out)
    if row != col:
        tl.store(p_out + offs_j[None, :] * stride_r + offs_i[:, None] * stride_c, val, mask=m_out)
