"""The exact reference: the polar factor from the thin SVD.

    A = P Σ Qᴴ (thin, k = min(m, n))   ⇒   U = P Qᴴ,   H = Q Σ Qᴴ (A = U H),   H = P Σ Pᴴ (A = H U)
    (Higham, "Functions of Matrices", Thm. 8.1; ᴴ is ᵀ for real A)

Backward stable and accurate for any condition number, rank-deficient inputs included (U is then
one of the many valid factors: LAPACK's choice of singular vectors for σ = 0). Slow on GPUs.

Who computes the SVD (``route``): ``"torch"`` is ``torch.linalg.svd`` (MKL on x86 CPU wheels,
cuSOLVER on CUDA); ``"lapack"`` is SciPy's LAPACK ``?gesdd`` (CPU), the routine
``scipy.linalg.polar`` itself calls, with every product in SciPy's BLAS; ``"auto"`` takes the
LAPACK route for CPU matrices with min(m, n) ≥ :data:`LAPACK_MIN_SIDE` outside autograd, the
torch route otherwise. Wide matrices are decomposed through the tall Aᴴ on either route. On the torch
route a CPU batch of small matrices is spread over torch's threads (:mod:`polarkernels.threaded_svd`).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.linalg.blas
import torch
from torch import Tensor

from .backends import blas
from .threaded_svd import thin_svd

#: ``route="auto"`` takes SciPy's ``?gesdd`` for CPU matrices at least this large (min side);
#: ``None``: never. The last session measured SciPy 1.1–1.5× faster from 512 up, but with torch's
#: SVD timed in the same process right after SciPy's OpenBLAS (whose spinning workers slow the
#: next torch call); timed without that interference (one thread, or each library in its own
#: process, issue 12) torch's MKL SVD was 1.0–1.3× faster at 512–2048 (bench/RESULTS.md), so
#: ``auto`` stays on torch and ``polar(method="svd", backend="blas")`` asks for SciPy's.
LAPACK_MIN_SIDE: int | None = None
ROUTES = ("auto", "torch", "lapack")


def svd_polar(a: Tensor, route: str = "auto") -> Tensor:
    """U = P Qᴴ for A = P Σ Qᴴ, batched over leading dims; real or complex (half is upcast)."""
    if a.shape[-2] < a.shape[-1]:
        # the SVD of the tall Aᴴ (see :func:`svd_polar_decomposition`); materialise the conjugate
        return svd_polar(a.mH, route).mH.resolve_conj()
    work = _working(a)
    if _use_lapack(work, route):
        return _lapack_polar(work)[0].to(a.dtype)
    p, _, qh = thin_svd(work)
    return (p @ qh).to(a.dtype)


def svd_polar_decomposition(a: Tensor, side: str = "right", route: str = "auto") -> tuple[Tensor, Tensor]:
    """(U, H) with A = U H (side="right", H = Q Σ Qᴴ, n×n) or A = H U (side="left", H = P Σ Pᴴ).

    H is formed from the singular triplets, as scipy.linalg.polar does, and is exactly
    symmetric (Hermitian for complex A). On the torch route (the default) it is (Q Σ) Qᴴ
    symmetrised, which keeps autograd through this function finite at σ = 0 (√σ would not); on
    the LAPACK route it is one BLAS ``?syrk`` (``?herk``) of Q Σ^½ (or P Σ^½): half the FLOPs of
    the full product, and positive semi-definite up to rounding.
    """
    u, h, _ = svd_polar_spectrum(a, side, route)
    return u, h


def svd_polar_spectrum(a: Tensor, side: str = "right",
                       route: str = "auto") -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """:func:`svd_polar_decomposition` and the singular pairs behind it: (U, H, (V, σ)) with V
    the right singular vectors of the tall orientation (A, or Aᴴ when wide) and σ its singular
    values, the eigendecomposition (AᴴA)^½ = V diag(σ) Vᴴ (wide: (AAᴴ)^½) that
    :func:`polarkernels.polar_backward.attach` would otherwise recompute. (V, σ) is None on the
    LAPACK route, which keeps them in NumPy."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    if a.shape[-2] < a.shape[-1]:
        # Wide A: decompose the tall Aᴴ = H Uᴴ (the other side, the same H). LAPACK's SVD of a
        # wide matrix was 1.6–2.6× slower than of its transpose here (bench/RESULTS.md).
        u, h, spectrum = svd_polar_spectrum(a.mH, "left" if side == "right" else "right", route)
        return u.mH.resolve_conj(), h, spectrum  # u: a real tensor, not a lazy conjugate view (NumPy/DLPack reject those)
    work = _working(a)
    if _use_lapack(work, route):
        u, h = _lapack_polar(work, side)
        return u.to(a.dtype), h.to(a.dtype), None
    p, s, qh = thin_svd(work)
    h = (qh.mH * s[..., None, :]) @ qh if side == "right" else (p * s[..., None, :]) @ p.mH
    return (p @ qh).to(a.dtype), ((h + h.mH) / 2).to(a.dtype), (qh.mH.to(a.dtype), s)


def _working(a: Tensor) -> Tensor:
    return a if a.dtype in (torch.float32, torch.float64) or a.is_complex() else a.float()


def _use_lapack(a: Tensor, route: str = "auto") -> bool:
    """Whether ``route`` means SciPy's LAPACK for ``a`` (see the module docstring); NumPy carries no
    gradients, so ``auto`` keeps inputs that require grad in torch."""
    if route not in ROUTES:
        raise ValueError(f"unknown SVD route {route!r}; expected one of {ROUTES}")
    if route == "lapack":
        if a.device.type != "cpu":
            raise ValueError(f"the LAPACK route (backend='blas') needs CPU tensors, got {a.device}")
        return True
    return (route == "auto" and LAPACK_MIN_SIDE is not None and a.device.type == "cpu"
            and not a.requires_grad and min(a.shape[-2:]) >= LAPACK_MIN_SIDE)


def _lapack_polar(a: Tensor, side: str | None = None) -> tuple[Tensor, Tensor | None]:
    """(U, H) per matrix of the batch from SciPy's ``?gesdd`` (``?gesvd`` if it fails); H only
    for ``side`` "right" or "left", as one ``?syrk``/``?herk`` of Q Σ^½ (or P Σ^½), exactly
    symmetric (Hermitian).

    Every product is SciPy's BLAS, the library ``?gesdd`` runs in, and everything between the
    calls is single-threaded NumPy: no other thread pool (torch's OpenMP, NumPy's own OpenBLAS)
    runs in between (see :func:`polarkernels.backends.blas._copy` for what that costs).
    """
    flat = a.detach().resolve_conj().reshape(-1, *a.shape[-2:]).numpy()
    m, n = flat.shape[1:]
    k = min(m, n)
    gemm = scipy.linalg.blas.get_blas_funcs("gemm", (flat,))
    u = np.empty(flat.shape, dtype=flat.dtype)
    # the factor whose Gram matrix is H: Q Σ^½ (n×k, side="right") or P Σ^½ (m×k, side="left")
    halves = None if side is None else np.empty((flat.shape[0], n if side == "right" else m, k), flat.dtype)
    for i, x in enumerate(flat):
        if not np.isfinite(x).all():
            # LAPACK rejects NaN/inf (an "illegal value" error); propagate them as torch does
            u[i] = np.nan
            if halves is not None:
                halves[i] = np.nan
            continue
        try:
            p, s, qh = scipy.linalg.svd(x, full_matrices=False, check_finite=False, lapack_driver="gesdd")
        except np.linalg.LinAlgError:
            # gesdd's divide and conquer rarely fails to converge; gesvd's QR iteration is
            # slower but more robust
            p, s, qh = scipy.linalg.svd(x, full_matrices=False, check_finite=False, lapack_driver="gesvd")
        u[i] = gemm(1.0, p, qh)  # LAPACK returns P, Qᴴ column-major: no copies going in
        if halves is not None:
            root = np.sqrt(np.maximum(s, 0))  # σ ≥ 0; the clamp only guards the square root
            halves[i] = (qh.conj().T * root) if side == "right" else (p * root)
    u_t = torch.from_numpy(u).reshape(a.shape)
    if halves is None:
        return u_t, None
    h = blas.gram(torch.from_numpy(halves))  # one ?syrk/?herk per matrix, mirrored: exactly Hermitian
    return u_t, h.reshape(*a.shape[:-2], *h.shape[-2:])
