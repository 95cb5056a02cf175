"""The public surface: :func:`polar`, :func:`orthogonalize`, :func:`orthogonalize_many`.

This module validates, converts array kinds, orients and dispatches; it computes nothing
numerical itself. Methods:

============== ===================================================================================
``svd``         U = P Qᵀ from the thin SVD (:mod:`polarkernels.svd`); exact, slow on GPUs
``qdwh``        dynamically weighted Halley, QR then Cholesky form (:mod:`polarkernels.qdwh`)
``polar_express`` per-step optimal odd quintics (:mod:`polarkernels.schedules`, Amsel et al. 2025)
``newton_schulz`` the convergent Newton–Schulz quintic (15/8, −10/8, 3/8)
``muon``        Muon's fixed quintic (3.4445, −4.7750, 2.0315); approximate by design
============== ===================================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from . import backends, iterate, polar_backward, schedules
from .arrays import COMPLEX_DTYPES, SUPPORTED_DTYPES, from_tensor, to_tensor
from .gram_newton_schulz import gram_iterate
from .qdwh import qdwh
from .svd import svd_polar, svd_polar_spectrum

POLAR_METHODS = ("auto", "svd", "qdwh", "polar_express", "newton_schulz", "muon")
ORTHOGONALIZE_METHODS = ("muon", "polar_express", "newton_schulz", "qdwh", "svd")
SIDES = ("right", "left")
_HALF = (torch.bfloat16, torch.float16)


def polar(a: Any, side: str = "right", *, method: str = "auto", backend: str = "auto",
          steps: int | None = None, tol: float | None = None, check_finite: bool = True) -> tuple[Any, Any]:
    """Polar decomposition ``a = u @ h`` (side="right") or ``a = h @ u`` (side="left").

    A drop-in for :func:`scipy.linalg.polar` that also takes batches ``(..., m, n)``, tall and
    wide matrices, and torch tensors (any device), NumPy arrays, CuPy arrays or nested lists,
    real or complex, returning the same kind, device and dtype (lists come back as NumPy arrays,
    as from scipy). ``u`` (m×n) has orthonormal columns (m ≥ n) or rows (m < n): UᴴU = I or
    UUᴴ = I; ``h`` is Hermitian (symmetric) positive semi-definite, n×n for side="right" and m×m
    for side="left".

    The result is converged to the working precision: float64/complex128 inputs are computed in
    that dtype, complex64 in complex64, everything narrower in float32 and rounded once at the end.

    Args:
        a: the matrix or batch of matrices.
        side: "right" (a = u h) or "left" (a = h u); ``u`` is the same either way.
        method: "auto" (SVD on CPU, where LAPACK's divide-and-conquer SVD is the fastest accurate
            method; QDWH on CUDA, where it beats the SVD and converges for any condition number),
            or one of "svd", "qdwh", "polar_express", "newton_schulz", "muon". The iterative
            methods run their schedule, then the Newton–Schulz quintic until converged.
        backend: "auto" or one of :data:`polarkernels.backends.BACKENDS`; who computes the
            matrix products of the iterative methods and of QDWH's Cholesky form.
        steps: cap on iterations (QDWH iterations, or tail steps for the polynomial methods);
            ``None`` picks a cap that suffices for any input in the working dtype.
        tol: convergence tolerance; ``None`` picks one for the working dtype. For the polynomial
            methods the bound on ‖XXᵀ − I‖_F/√m (:mod:`polarkernels.iterate`); for QDWH the unit
            roundoff to converge to (:mod:`polarkernels.qdwh`).
        check_finite: raise ``ValueError`` if ``a`` holds NaN or ±inf (as scipy does).

    Rank-deficient inputs: ``svd`` returns an orthonormal ``u`` (one of many valid factors); the
    polynomial methods return the unique partial isometry (zero singular values stay zero, so
    ``u.mH @ u`` is the projector onto the row space); QDWH keeps exactly zero singular values at
    zero but lifts rounding-level ones to 1, like the SVD. ``a = u h`` holds in every case.

    Differentiable (reverse and forward mode, ``torch.func.grad``/``jvp``) through one analytic
    rule for every method (:mod:`polarkernels.polar_backward`): the forward is not recorded, so
    memory does not grow with the step count, and gradients are finite at repeated singular values.
    """
    x, kind = to_tensor(a, what="a")
    _check_matrix(x, "a")
    if side not in SIDES:
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    _check_method(method, POLAR_METHODS)
    _check_steps(steps, allow_none=True)
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    if check_finite:
        _check_finite(x, "a")
    m, n = x.shape[-2:]
    k = n if side == "right" else m
    if x.numel() == 0:
        u = torch.zeros_like(x)
        h = x.new_zeros((*x.shape[:-2], k, k))
        return from_tensor(u, kind), from_tensor(h, kind)

    work = x.to(torch.float32) if x.dtype in _HALF else x
    if method == "auto":
        method = auto_polar_method(work.device)
    spectrum = None  # the SVD's (V, σ): the backward then needs no eigendecomposition of its own
    with torch.no_grad():  # nothing per iteration is recorded: polar_backward differentiates the result
        if method == "svd":
            u, h, spectrum = svd_polar_spectrum(work.detach(), side, _svd_route(backend, work))
        else:
            u = _polar_factor(work.detach(), method, backend, steps, tol)
            h = _hermitian_factor(u, work.detach(), side)
    if polar_backward.needs_derivative(work):
        u, h = polar_backward.attach(work, u, h, side, spectrum)
    return from_tensor(u.to(x.dtype), kind), from_tensor(h.to(x.dtype), kind)


def auto_polar_method(device: torch.device) -> str:
    """What ``polar(method="auto")`` runs on ``device``: "qdwh" on CUDA, "svd" elsewhere."""
    return "qdwh" if device.type == "cuda" else "svd"


def orthogonalize(g: Any, *, method: str = "polar_express", steps: int = 5,
                  dtype: torch.dtype | None = None, backend: str = "auto",
                  check_finite: bool = False, gram: bool = False) -> Any:
    """The optimizer fast path: an approximate polar factor U of ``g`` with a fixed step count.

    Args:
        g: matrix or batch ``(..., m, n)``, real or complex; torch, NumPy, CuPy or a nested
            list; returned as the same kind/dtype (a list as a NumPy array).
        method: "polar_express" (the published 5-step table at steps=5, the same construction
            for other counts), "muon", "newton_schulz", "qdwh" (``steps`` iterations), "svd".
        steps: number of polynomial steps (or QDWH iterations); ignored by "svd".
        dtype: precision the iteration runs in; default bfloat16 on CUDA, float32 on CPU;
            complex input runs in complex64 by default, and a real ``dtype`` names the precision
            of its complex counterpart (float64 → complex128); there is no complex half.
            QDWH and SVD need float32 or wider and upcast half precision.
        backend: "auto" or one of :data:`polarkernels.backends.BACKENDS`.
        check_finite: raise ``ValueError`` on NaN/inf instead of propagating them.
        gram: run the polynomial methods as Gram Newton–Schulz
            (:mod:`polarkernels.gram_newton_schulz`): the steps act on the small m×m Gram matrix
            and touch X only at restarts. Fewer FLOPs when the aspect ratio max/min > 5/3.

    The zero matrix maps to zero (Muon's convention). The input is never modified.
    """
    x, kind = to_tensor(g, what="g")
    _check_matrix(x, "g")
    _check_method(method, ORTHOGONALIZE_METHODS)
    _check_steps(steps, allow_none=False)
    work_dtype = _orthogonalize_dtype(x, dtype)
    if gram and method not in schedules.ITERATIVE_METHODS:
        raise ValueError(f"gram=True applies to the polynomial methods {schedules.ITERATIVE_METHODS}, not {method!r}")
    if check_finite:
        _check_finite(x, "g")
    if x.numel() == 0:
        return from_tensor(torch.zeros_like(x), kind)
    u = _orthogonalize_tensor(x.to(work_dtype), method, steps, backend, gram)
    return from_tensor(u.to(x.dtype), kind)


def orthogonalize_many(gs: Sequence[Any], *, method: str = "polar_express", steps: int = 5,
                       dtype: torch.dtype | None = None, backend: str = "auto",
                       check_finite: bool = False) -> list[Any]:
    """:func:`orthogonalize` for a list of matrices of possibly different shapes.

    Matrices of the same shape, dtype, device and kind are stacked and orthogonalized in one
    batched call; the results come back in input order. With ``backend="cuda"`` the whole ragged
    list of 2-D CUDA tensors goes to the grouped kernel in a few launches.
    """
    if backend == "cuda" and method in schedules.ITERATIVE_METHODS:
        return _orthogonalize_group_cuda(gs, method, steps, dtype, check_finite)
    groups: dict[tuple, list[int]] = {}
    for i, g in enumerate(gs):
        key = (type(g), tuple(g.shape), str(g.dtype), str(getattr(g, "device", "cpu")))
        groups.setdefault(key, []).append(i)
    out: list[Any] = [None] * len(gs)
    for idx in groups.values():
        tensors = [to_tensor(gs[i], what=f"gs[{i}]") for i in idx]
        kind = tensors[0][1]
        stacked = torch.stack([t for t, _ in tensors])
        u = orthogonalize(stacked, method=method, steps=steps, dtype=dtype, backend=backend,
                          check_finite=check_finite)
        for j, i in enumerate(idx):
            out[i] = from_tensor(u[j], kind)
    return out


def _orthogonalize_group_cuda(gs: Sequence[Any], method: str, steps: int, dtype: torch.dtype | None,
                              check_finite: bool) -> list[Any]:
    """orthogonalize_many through the CUDA backend's one-launch-per-step grouped kernel."""
    _check_steps(steps, allow_none=False)
    converted = [to_tensor(g, what=f"gs[{i}]") for i, g in enumerate(gs)]
    for i, (t, _) in enumerate(converted):
        if t.is_complex():
            raise TypeError(f"backend 'cuda' computes in real arithmetic only; gs[{i}] is {t.dtype}")
        if t.ndim != 2:
            raise ValueError(f"backend='cuda' groups 2-D matrices; gs[{i}] has shape {tuple(t.shape)}")
        if check_finite:
            _check_finite(t, f"gs[{i}]")
    ops = backends.get_ops("cuda")
    schedule = schedules.fixed_schedule(method, steps)
    work = [t.to(dtype or torch.bfloat16) for t, _ in converted]
    us = ops.orthogonalize_group(work, schedule.coeffs, schedule.norm_safety)
    return [from_tensor(u.to(t.dtype), kind) for u, (t, kind) in zip(us, converted)]


def _polar_factor(x: Tensor, method: str, backend: str, steps: int | None, tol: float | None) -> Tensor:
    """Converged U for float32/float64 ``x`` by an iterative method or QDWH."""
    ops = backends.get_ops(backends.resolve(backend, x))
    if method == "qdwh":
        result = qdwh(x, tol=tol, max_iter=10 if steps is None else steps, gram=ops.gram)
        if not result.converged and steps is None:
            # Only when κ(A) ≳ 1/ε (rounding-noise singular values still moving after 10
            # iterations, see polarkernels.qdwh): the SVD's answer is then the better one.
            return svd_polar(x)
        return result.u
    schedule = schedules.convergent_schedule(method)
    return _on_wide_side(x, lambda w: iterate.run(
        iterate.normalize(w, schedule), schedule, ops, tol=tol, max_steps=steps).u)


def _orthogonalize_tensor(x: Tensor, method: str, steps: int, backend: str, gram: bool = False) -> Tensor:
    """Fixed-step U in ``x.dtype`` (QDWH/SVD upcast half precision)."""
    if method == "svd":
        nonzero = x.abs().amax(dim=(-2, -1), keepdim=True) > 0
        return svd_polar(x, _svd_route(backend, x)) * nonzero
    ops = backends.get_ops(backends.resolve(backend, x))
    if method == "qdwh":
        work = x.to(torch.float32) if x.dtype in _HALF else x
        return qdwh(work, tol=None, max_iter=steps, gram=ops.gram).u.to(x.dtype)
    schedule = schedules.fixed_schedule(method, steps)
    if hasattr(ops, "orthogonalize_group") and not gram:  # a backend that fuses the whole loop
        mats = list(x.reshape(-1, *x.shape[-2:]).unbind(0))
        return torch.stack(ops.orthogonalize_group(mats, schedule.coeffs, schedule.norm_safety)).reshape(x.shape)
    if gram:
        return _on_wide_side(x, lambda w: gram_iterate(
            iterate.normalize(w, schedule), schedule.coeffs, ops))
    return _on_wide_side(x, lambda w: iterate.run(
        iterate.normalize(w, schedule), schedule, ops).u)


def _on_wide_side(x: Tensor, f) -> Tensor:
    """f applied to x, or to xᵀ (and transposed back) when x is tall: the Gram matrix X Xᴴ is
    then min(m, n)² instead of max(m, n)². (polar(Aᵀ) = polar(A)ᵀ for complex A too: Aᵀ = HᵀUᵀ
    is a left polar decomposition, Hᵀ = conj(H) being Hermitian PSD.)"""
    if x.shape[-2] > x.shape[-1]:
        return f(x.mT).mT
    return f(x)


def _hermitian_factor(u: Tensor, a: Tensor, side: str) -> Tensor:
    """H = herm(Uᴴ A) (side="right", A = U H) or herm(A Uᴴ) (side="left", A = H U),
    herm(P) = (P + Pᴴ)/2.

    Taking the Hermitian part is exact for the true factor and removes the rounding asymmetry of
    one product.
    """
    p = u.mH @ a if side == "right" else a @ u.mH
    return (p + p.mH) / 2


def _orthogonalize_dtype(x: Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype :func:`orthogonalize` iterates in (see its ``dtype`` argument)."""
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}")
    if not x.is_complex():
        if dtype in COMPLEX_DTYPES:
            raise TypeError(f"dtype {dtype} is complex but the input is real ({x.dtype})")
        return dtype or (torch.bfloat16 if x.is_cuda else torch.float32)
    if dtype is None or dtype in COMPLEX_DTYPES:
        return dtype or torch.complex64
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"complex input has no {dtype} counterpart; use complex64 or complex128")
    return dtype.to_complex()


def _check_matrix(x: Tensor, what: str) -> None:
    if x.ndim < 2:
        raise ValueError(f"{what} must be a matrix or a batch of matrices (..., m, n); got shape {tuple(x.shape)}")


def _check_method(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise ValueError(f"unknown method {method!r}; expected one of {allowed}")


def _check_steps(steps: int | None, *, allow_none: bool) -> None:
    if steps is None and allow_none:
        return
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be a non-negative int{' or None' if allow_none else ''}, got {steps!r}")
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}")


def _check_finite(x: Tensor, what: str) -> None:
    finite = torch.isfinite(x).flatten(-2).all(dim=-1)
    if not bool(finite.all()):
        where = ""
        if finite.ndim:
            first = torch.nonzero(~finite)[0].tolist()
            where = f" (first bad matrix at batch index {tuple(first)})"
        raise ValueError(f"{what} must not contain infs or NaNs{where}")


def _svd_route(backend: str, x: Tensor) -> str:
    """The SVD's route for ``backend`` (:mod:`polarkernels.svd`): "auto", "torch" (torch.linalg.svd)
    or, for backend="blas", "lapack" (SciPy's ``?gesdd`` and BLAS)."""
    if backend in ("auto", "torch"):
        return backend
    backends.resolve(backend, x)  # unknown names (and complex on real-only backends) raise here
    if backend != "blas":
        raise ValueError(f"method 'svd' runs on the 'torch' or 'blas' (SciPy LAPACK) backend, not {backend!r}")
    return "lapack"
