"""The BLAS backend: ``gram``, ``poly`` and ``apply`` through ``scipy.linalg.blas`` on CPU tensors.

Same names, signatures and semantics as :mod:`polarkernels.backends.torch_ref` (the reference it
is tested against), for CPU float32/float64/complex64/complex128 tensors:

    gram(x)            S = X Xᴴ        ?SYRK (?HERK), one triangle, mirrored     m²n FLOPs (gemm: 2m²n)
    poly(s, b, c)      B = b S + c S²  ?SYRK on S (S S = S Sᴴ), β = b, mirrored   m³ (gemm: 2m³)
    apply(bmat, x, a)  X' = a X + B X  ?GEMM with the a X term in β               2m²n

so one quintic step on a wide m×n X costs 3m²n + m³ FLOPs instead of 4m²n + 2m³. The BLAS
routines read the tensors' memory in place (a row-major matrix is a column-major view of its
transpose, so each product is posed on whichever of X, Xᵀ is Fortran-contiguous: no copies), and
write into the freshly allocated result. Matrices that are neither row- nor column-contiguous
are copied once. Batches ``(..., m, n)`` loop over the batch in Python: one BLAS call per matrix.

Not supported: other dtypes (``TypeError``; use the ``torch`` backend for bfloat16/float16), CUDA
tensors (``ValueError``), autograd (results carry no graph).

Complex: ?HERK writes the conjugate of what ?SYRK's real identities give whenever the column-major
view is the transpose of the tensor (a row-major matrix), since Xᵀ conj(X) = conj(X Xᴴ); each
call below says which of S and conj(S) lands in memory, and the mirror conjugates.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy.linalg import blas as _blas
from torch import Tensor

NAME = "blas"

_SYRK = {torch.float32: _blas.ssyrk, torch.float64: _blas.dsyrk,
         torch.complex64: _blas.cherk, torch.complex128: _blas.zherk}   # ?HERK: the Hermitian ?SYRK
_GEMM = {torch.float32: _blas.sgemm, torch.float64: _blas.dgemm,
         torch.complex64: _blas.cgemm, torch.complex128: _blas.zgemm}


def available() -> tuple[bool, str]:
    """Always (True, scope note): SciPy is a dependency of the package."""
    return True, "CPU float32/float64/complex64/complex128 tensors only"


def gram(x: Tensor) -> Tensor:
    """S = X Xᴴ, shape (..., m, m), exactly symmetric (Hermitian); matches ``torch_ref.gram``."""
    _check(x, "x")
    m, n = x.shape[-2:]
    out = x.new_empty((*x.shape[:-2], m, m))  # β = 0: SYRK never reads it
    if out.numel() == 0 or n == 0:
        return out.zero_()
    syrk = _SYRK[x.dtype]
    x_views, x_row_major = _fortran(x)
    # row-major X is the column-major Xᵀ: S = (Xᵀ)ᵀ Xᵀ is SYRK's trans=1 form, else X Xᵀ. HERK's
    # transposed form is trans=2 (ᴴ) and gives Xᵀ conj(X) = conj(S) = Sᵀ, which the row-major
    # tensor reads as S; the plain form gives S = X Xᴴ in column-major memory, i.e. Sᵀ = conj(S).
    trans = (2 if x.is_complex() else 1) if x_row_major else 0
    for xf, sf in zip(x_views, _fortran(out)[0]):
        syrk(1.0, xf, trans=trans, c=sf, overwrite_c=1)
    return _mirror_lower(out, conjugate=x.is_complex() and not x_row_major)


def poly(s: Tensor, b: float, c: float) -> Tensor:
    """B = b S + c S² for symmetric (Hermitian) S, exactly so; matches ``torch_ref.poly``.

    S² = S Sᴴ for Hermitian S, so it is one SYRK (HERK) with the b S term in β: B = c S Sᴴ + b S.
    (Complex: the column-major view of the row-major S is conj(S), so HERK computes
    c conj(S) Sᵀ + b conj(S) = conj(B) = Bᵀ in column-major memory, which is B row-major.)
    """
    _check(s, "s")
    if c == 0.0:
        return torch.from_numpy(s.detach().numpy() * b)  # NumPy, like every copy here (see _copy)
    out = _copy(s, row_major=True)
    if out.numel() == 0:
        return out
    syrk = _SYRK[s.dtype]
    # S is symmetric, so either column-major view of its memory (S or Sᵀ) is S. A complex S must
    # be row-major like ``out``, so that both views hold conj(S) (a copy if not).
    s_views, s_row_major = _fortran(s)
    if s.is_complex() and not s_row_major:
        s_views = _fortran(_copy(s, row_major=True))[0]
    for sf, bf in zip(s_views, _fortran(out)[0]):
        syrk(c, sf, beta=b, c=bf, overwrite_c=1)
    return _mirror_lower(out)


def apply(bmat: Tensor, x: Tensor, a: float) -> Tensor:
    """X' = a X + B X for any square B; matches ``torch_ref.apply``.

    One GEMM with X in C and β = a, posed on X' when X is column-major and on
    X'ᵀ = a Xᵀ + Xᵀ Bᵀ when it is row-major, so that no operand is copied; the result keeps
    X's memory layout (so the next ``gram`` reads it in place too).
    """
    _check(bmat, "bmat")
    _check(x, "x")
    if bmat.dtype != x.dtype:
        raise TypeError(f"bmat and x must have the same dtype, got {bmat.dtype} and {x.dtype}")
    m, n = x.shape[-2:]
    if bmat.shape != (*x.shape[:-2], m, m):
        raise ValueError(f"bmat must have shape {(*x.shape[:-2], m, m)}, got {tuple(bmat.shape)}")
    if x.numel() == 0:
        return x.clone()
    gemm = _GEMM[x.dtype]
    x_views, x_row_major = _fortran(x)
    b_views, b_row_major = _fortran(bmat)
    out = _copy(x, row_major=x_row_major)
    for xf, bf, of in zip(x_views, b_views, _fortran(out)[0]):
        if x_row_major:  # X'ᵀ = a Xᵀ + Xᵀ Bᵀ; bf is Bᵀ when B is row-major, else B
            gemm(1.0, xf, bf, beta=a, c=of, trans_b=int(not b_row_major), overwrite_c=1)
        else:            # X' = a X + B X
            gemm(1.0, bf, xf, beta=a, c=of, trans_a=int(b_row_major), overwrite_c=1)
    return out


def _check(t: Tensor, what: str) -> None:
    if t.device.type != "cpu":
        raise ValueError(f"the blas backend needs CPU tensors; {what} is on {t.device}")
    if t.dtype not in _GEMM:
        raise TypeError(f"the blas backend supports float32/float64/complex64/complex128, {what} is {t.dtype}; "
                        "use backend='torch' for half precision")
    if t.ndim < 2:
        raise ValueError(f"{what} must be (..., m, n), got shape {tuple(t.shape)}")


def _fortran(t: Tensor) -> tuple[list[np.ndarray], bool]:
    """Column-major NumPy views of each matrix of the batch, sharing the tensor's memory, and
    whether they are the transposes (True when the matrices are row-major). A batch of matrices
    that are neither row- nor column-major is copied to row-major first."""
    m, n = t.shape[-2:]
    t3 = t.detach().resolve_conj().reshape(-1, m, n)  # a lazy conjugate (Xᴴ views) is made real memory
    row_major = t3.stride(-1) == 1 and (t3.stride(-2) == n or m == 1)
    col_major = t3.stride(-2) == 1 and (t3.stride(-1) == m or n == 1)
    if not (row_major or col_major):
        t3, row_major = _copy(t3, row_major=True), True
    arrays = t3.numpy()
    return [a.T if row_major else a for a in arrays], row_major


def _copy(t: Tensor, *, row_major: bool) -> Tensor:
    """A fresh copy of ``t`` (row- or column-major matrices), made by NumPy.

    Every copy and mirror between two BLAS calls is NumPy's (one thread), never a torch kernel:
    torch's OpenMP workers and OpenBLAS's pthreads each spin-wait after a call, and on a machine
    with as many cores as threads, alternating the two pools stalled every call by a scheduler
    time slice (measured on 2 cores: a 0.3 ms 256² SYRK took 8 ms behind a torch.where).
    """
    a = t.detach().resolve_conj().numpy()
    if row_major:
        return torch.from_numpy(np.array(a, order="C", copy=True))
    return torch.from_numpy(np.array(np.swapaxes(a, -1, -2), order="C", copy=True)).mT


#: Rows per block of the triangle mirror (each block row strip is written from the column strip
#: below its diagonal block, read transposed). Against one masked whole-matrix copy, it cut
#: ``gram`` of a 2048×512 float64 matrix from 136 to 77 ms (the SYRK itself: 64 ms).
_MIRROR_BLOCK = 256


@lru_cache(maxsize=8)
def _strict_upper(m: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(m, 1)


@lru_cache(maxsize=8)
def _strict_lower(m: int) -> tuple[np.ndarray, np.ndarray]:
    return np.tril_indices(m, -1)


def _mirror_lower(s: Tensor, conjugate: bool = False) -> Tensor:
    """Copy the valid triangle of SYRK's result onto the other, exactly, in place (conjugated
    for a Hermitian result); with ``conjugate``, first conjugate the valid triangle (HERK wrote
    conj(S) there, see :func:`gram`).

    SYRK (uplo='U') fills the upper triangle of the column-major view, which is the lower
    triangle of the row-major tensor; the other triangle holds garbage until mirrored here.
    Block by block: the strip right of each diagonal block is the transpose of the strip below
    it (disjoint memory), and the diagonal block's upper triangle is gathered from its lower.
    """
    m = s.shape[-1]
    hermitian = s.is_complex()
    for a in s.numpy().reshape(-1, m, m):  # row-major, freshly allocated by the caller
        for i in range(0, m, _MIRROR_BLOCK):
            j = min(i + _MIRROR_BLOCK, m)
            block = a[i:j, i:j]
            lower, upper = _strict_lower(j - i), _strict_upper(j - i)
            if conjugate:
                block[lower] = block[lower].conj()
                np.conjugate(a[j:, i:j], out=a[j:, i:j])
            block[upper] = block.T[upper].conj() if hermitian else block.T[upper]  # gather before scatter
            a[i:j, j:] = a[j:, i:j].T.conj() if hermitian else a[j:, i:j].T
    return s  # HERK's diagonal is real by definition, so the result is exactly Hermitian
