"""QDWH: the QR-based dynamically weighted Halley iteration for the polar factor U.

References:
    [NBG10] Y. Nakatsukasa, Z. Bai, F. Gygi, "Optimizing Halley's iteration for computing the
            matrix polar decomposition", SIAM J. Matrix Anal. Appl. 31(5), 2010.
    [NH13]  Y. Nakatsukasa, N. J. Higham, "Stable and efficient spectral divide and conquer
            algorithms for the symmetric eigenvalue decomposition and the SVD", SIAM J. Sci.
            Comput. 35(3), 2013 (Cholesky form, stopping rule).

With X₀ = A/α (α ≥ ‖A‖₂) every singular value of X₀ lies in [ℓ₀, 1]. Each step applies the
odd rational map

    f(x) = x (a + b x²) / (1 + c x²)                                    [NBG10, §3]

to the singular values, with weights chosen from the running lower bound ℓ so that f maps
[ℓ, 1] into [f(ℓ), 1] with f(ℓ) as large as possible:

    d = ∛(4(1 − ℓ²) / ℓ⁴)
    a = √(1 + d) + ½ √(8 − 4d + 8(2 − ℓ²) / (ℓ² √(1 + d)))                [NBG10, §3]
    b = (a − 1)² / 4,   c = a + b − 1,   ℓ ← ℓ (a + b ℓ²) / (1 + c ℓ²)     [NBG10, §3]

As ℓ → 1, (a, b, c) → (3, 1, 3): Halley's method. Complex A works the same way with ᵀ read
as ᴴ (QR and Cholesky of complex matrices). The map is evaluated in one of two forms:

    QR form (c > 100):   [√c X; I] = [Q₁; Q₂] R,
                         X ← (b/c) X + (1/√c)(a − b/c) Q₁ Q₂ᵀ            [NBG10, §4]
    Cholesky form:       Z = I + c XᵀX = WᵀW,
                         X ← (b/c) X + (a − b/c) (X W⁻¹) W⁻ᵀ            [NH13]

The Cholesky form is cheaper (no QR, one Gram product) and backward stable once κ(Z) ≤ 1 + c
is small [NH13]; the QR form is stable for every c. The converged U then takes one cubic
Newton–Schulz step U ← U(3I − UᴴU)/2, which halves its departure from orthogonality (JAX's
``jax.lax.linalg.qdwh`` ends the same way). From ℓ₀ ≥ 1e-16 (indeed from ℓ₀ ≥ u²)
the bound reaches 1 − 10u within 6 steps in float64 [NBG10, §3], the first two or three in
QR form (tests/test_qdwh.py checks both).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .backends.torch_ref import gram as torch_gram

CHOLESKY_MAX_C = 100.0
"""Use the Cholesky form once c ≤ this, i.e. κ(Z) ≤ 1 + c ≤ 101 [NH13]; the QR form above it."""

TALL_RATIO = 1.5
"""Reduce A = QR first and iterate on the n×n R when m ≥ TALL_RATIO·n. Per step on an m×n X the
QR form costs ≈ 6mn² + 3n³ flops and the Cholesky form ≈ 3mn² + n³/3; the reduction costs
≈ 4mn² more than the R-only QR the ℓ₀ estimate needs anyway, and saves ≥ 15(m − n)n² over a
typical 1 QR + 3 Cholesky run, so it pays from m ≈ 1.4n."""


Weights = tuple[Tensor, Tensor, Tensor]
"""Per-matrix (a, b, c), each float64 of shape (B,)."""


class QDWHResult(NamedTuple):
    """Result of :func:`qdwh`."""

    u: Tensor
    """Polar factor, same shape and dtype as the input."""
    num_iters: int
    """QDWH steps taken (the most any matrix of the batch needed)."""
    converged: bool
    """True when every matrix met the stopping rule within ``max_iter`` steps."""


def qdwh(x: Tensor, *, tol: float | None = None, max_iter: int = 10, l0: float | None = None,
         gram: Callable[[Tensor], Tensor] | None = None) -> QDWHResult:
    """Polar factor U of ``x`` (A = U H) by the QDWH iteration [NBG10] with the Cholesky form [NH13].

    Args:
        x: ``(..., m, n)`` float32 or float64, tall or wide (wide inputs are transposed
            internally so the iteration runs with m ≥ n). Never modified.
        tol: unit roundoff the result is converged to; default ``torch.finfo(x.dtype).eps / 2``.
            A matrix has converged when ‖X_k − X_{k−1}‖_F ≤ (10·tol)^(1/3) (the next step would
            change X by O(tol): the convergence is cubic) and 1 − ℓ_k ≤ 10·tol [NH13].
        max_iter: most steps (≥ 0; 0 returns X₀ = A/α). At most 6 are needed for κ(A) ≤ 1e16
            in float64 and 5 for κ(A) ≤ 1e6 in float32.
        l0: a lower bound on σ_min(X₀) to use instead of the estimate below, 0 < l0 ≤ 1; any
            l0 ≤ 1/(κ₂(A)·√min(m, n)) is one, since σ_min(X₀) ≥ σ_min(A)/‖A‖_F.
        gram: ``gram(y) = y yᵀ`` for a wide ``y`` (a backend's primitive); the Cholesky form
            computes XᵀX as ``gram(Xᵀ)``. Default: plain torch.

    Scaling: A is first divided by its largest |entry| (so that no norm below over- or
    underflows), then by α = min(‖A‖_F, √(‖A‖₁‖A‖_∞)) ≥ ‖A‖₂. If m ≥ 1.5n the iteration runs
    on R from A = QR and returns U = Q U_R (cheaper steps; polar(QR) = Q polar(R)).

    ℓ₀: from the R of a QR of A (R-only when not already computed),
    ℓ₀ = max(1/(α‖R⁻¹‖_F) − (m + n)u, u²). 1/‖R⁻¹‖_F ≤ 1/‖R⁻¹‖₂ = σ_min(A), so without
    rounding this is a lower bound within a factor √n of σ_min(X₀); the (m + n)u margin covers
    the rounding of R and R⁻¹, which only matters once κ(A) nears 1/u; the floor u² (hit by
    numerically singular input, or when R⁻¹ overflows) still reaches 1 − 10u within 6 steps
    in float64. A well-conditioned input thus takes 3–4 steps instead of the 6 that a
    constant ℓ₀ = O(u) would cost. The cost is one QR of A (≈ a third of a QR-form step) and
    a triangular inverse. ℓ₀ and the weights carry no gradient.

    Rank deficiency: f(0) = 0, so exactly zero singular values stay zero and U is the partial
    isometry P_r Q_rᵀ of the compact SVD (UᵀU an orthogonal projector; U = 0 for the zero
    matrix, which is returned at once). Singular values below u‖A‖ are rounding noise
    (numerically rank-deficient A, κ(A) ≳ 1/u): they usually reach 1, as with an SVD-based
    polar factor, but may end near 0, or, rarely, still be climbing after ``max_iter``
    steps, which ``converged=False`` reports. Non-finite input gives non-finite output and
    ``converged=False``.

    Batches: every matrix keeps its own ℓ and (a, b, c), takes the QR or Cholesky form by its
    own c and stops when it has converged, so a batched call returns exactly the per-matrix
    results. Autograd flows through the QR, Cholesky and triangular solves.

    Raises:
        TypeError: dtype other than float32/float64.
        ValueError: fewer than 2 dimensions, max_iter < 0, tol ≤ 0, l0 outside (0, 1].
    """
    if x.dtype not in (torch.float32, torch.float64, torch.complex64, torch.complex128):
        raise TypeError(f"qdwh computes in float32/float64 or complex64/complex128, got {x.dtype} "
                        "(polarkernels.polar upcasts half precision before calling it)")
    if x.dim() < 2:
        raise ValueError(f"qdwh needs a matrix or a batch (..., m, n), got shape {tuple(x.shape)}")
    if not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative int, got {max_iter!r}")
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    if l0 is not None and not 0 < l0 <= 1:
        raise ValueError(f"l0 must lie in (0, 1], got {l0!r}")
    if x.numel() == 0:
        return QDWHResult(torch.zeros_like(x), 0, True)

    wide = x.shape[-2] < x.shape[-1]
    a_tall = x.mT if wide else x
    batch, (m, n) = a_tall.shape[:-2], a_tall.shape[-2:]
    u, num_iters, converged = _qdwh_tall(a_tall.reshape(-1, m, n), tol, max_iter, l0, gram or torch_gram)
    u = u.reshape(*batch, m, n)
    return QDWHResult(u.mT if wide else u, num_iters, converged)


def _qdwh_tall(a: Tensor, tol: float | None, max_iter: int, l0: float | None,
               gram: Callable[[Tensor], Tensor]) -> tuple[Tensor, int, bool]:
    """QDWH on a flat batch ``(B, m, n)`` with m ≥ n."""
    u_round = tol if tol is not None else torch.finfo(a.dtype).eps / 2
    tol_dx, tol_l = (10 * u_round) ** (1 / 3), 10 * u_round

    # Prescale by max |entry| so that the norms below cannot over- or underflow.
    amax = a.abs().amax(dim=(-2, -1))
    a = a / torch.where(amax > 0, amax, torch.ones_like(amax))[:, None, None]
    m, n = a.shape[-2:]
    q = None
    if m >= TALL_RATIO * n:
        q, a = torch.linalg.qr(a)          # polar(QR) = Q polar(R): iterate on the n×n R

    # α = min(‖A‖_F, √(‖A‖₁‖A‖_∞)) ≥ ‖A‖₂, so X₀ = A/α has σ_max(X₀) ≤ 1.
    alpha = torch.minimum(torch.linalg.matrix_norm(a),
                          (torch.linalg.matrix_norm(a, 1) * torch.linalg.matrix_norm(a, float("inf"))).sqrt())
    alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    x = a / alpha[:, None, None]
    if l0 is None:   # ℓ₀ only steers the weights: no gradient flows through it
        r = a if q is not None else torch.linalg.qr(a.detach(), mode="r").R
        ell = _initial_bound(r.detach(), alpha.detach(), margin=(m + n) * u_round, floor=u_round**2)
    else:
        ell = torch.full(alpha.shape, l0, dtype=torch.float64, device=a.device)

    x, num_iters, done = _iterate(x, ell, amax == 0, max_iter, tol_dx, tol_l, gram)
    u = x if q is None else q @ x
    if num_iters:
        u = _newton_schulz_refine(u)
    return u, num_iters, bool(done.all())


def _newton_schulz_refine(u: Tensor) -> Tensor:
    """One cubic Newton–Schulz step U ← U (3I − UᴴU)/2 on the converged U (as JAX's qdwh ends).

    Each σ near 1 maps to σ(3 − σ²)/2 = 1 − O((σ − 1)²): it removes the O(u√n) loss of
    orthogonality left by the last QDWH step (and by Q @ U_R on tall input), e.g. ‖UᴴU − I‖_F/√n
    9.2e-16 → 6.5e-16 at 1024² float64 Gaussian, for one Gram product and one m×n×n product
    (bench/RESULTS.md). Zero singular values stay zero (partial isometries are kept). Computed
    with torch's matmul in U's dtype, never the ``gram`` hook: a reduced-precision backend Gram
    would put its own rounding back into U.
    """
    return 1.5 * u - 0.5 * (u @ (u.mH @ u))


def _initial_bound(r: Tensor, alpha: Tensor, margin: float, floor: float) -> Tensor:
    """ℓ₀ = max(1/(α‖R⁻¹‖_F) − margin, floor) ≤ σ_min(X₀) (float64, shape (B,)).

    1/‖R⁻¹‖_F ≤ 1/‖R⁻¹‖₂ = σ_min(R); ``margin`` absorbs the O(u) absolute error of the
    computed R and R⁻¹ (Weyl), which decides the bound once κ(A) approaches 1/u.
    """
    eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device).expand_as(r)
    rinv_norm = torch.linalg.matrix_norm(torch.linalg.solve_triangular(r, eye, upper=True))
    ell = 1 / (alpha.double() * rinv_norm.double()) - margin
    ell = torch.where(torch.isnan(ell), torch.zeros_like(ell), ell)   # singular R: inf − inf in R⁻¹
    return ell.clamp(floor, 1.0)


def _iterate(x: Tensor, ell: Tensor, done: Tensor, max_iter: int, tol_dx: float, tol_l: float,
             gram: Callable[[Tensor], Tensor]) -> tuple[Tensor, int, Tensor]:
    """QDWH steps on the matrices of the flat batch ``x`` not yet ``done`` (zero ones start done)."""
    num_iters = 0
    any_done = bool(done.any())   # tracked on the host: one sync per early step, not three
    while num_iters < max_iter and not (any_done and bool(done.all())):
        num_iters += 1
        active = (~done).nonzero().squeeze(1) if any_done else None   # None: all of them
        xa, la = (x, ell) if active is None else (x[active], ell[active])
        a, b, c = _weights(la)
        x_new = _step(xa, (a, b, c), gram)
        la = (la * (a + b * la**2) / (1 + c * la**2)).clamp(max=1.0)   # ℓ ← f(ℓ) [NBG10, §3]
        finished = 1 - la <= tol_l
        if bool(finished.any()):   # ‖ΔX‖ only matters once ℓ is near 1 (the early steps skip it)
            finished &= torch.linalg.matrix_norm(x_new - xa) <= tol_dx
            any_done = any_done or bool(finished.any())
        if active is None:
            x, ell, done = x_new, la, finished
        else:
            x = x.index_put((active,), x_new)
            ell = ell.index_put((active,), la)
            done = done.index_put((active,), finished)
    return x, num_iters, done


def _weights(ell: Tensor) -> Weights:
    """Dynamic weights (a, b, c) for lower bounds ``ell`` (float64) [NBG10, §3]."""
    l2 = ell**2
    d = (4 * (1 - l2) / l2**2).clamp(min=0) ** (1 / 3)
    sqd = (1 + d).sqrt()
    a = sqd + 0.5 * (8 - 4 * d + 8 * (2 - l2) / (l2 * sqd)).sqrt()
    b = (a - 1) ** 2 / 4
    return a, b, a + b - 1


def _step(x: Tensor, abc: Weights, gram: Callable[[Tensor], Tensor]) -> Tensor:
    """One QDWH step per matrix: Cholesky form where c ≤ 100, QR form elsewhere and wherever
    the Cholesky factorization fails (Z not numerically positive definite, e.g. from a
    low-precision ``gram``)."""
    use_qr = abc[2] > CHOLESKY_MAX_C
    out = torch.empty_like(x)
    chol = (~use_qr).nonzero().squeeze(1)
    if chol.numel():
        y, ok = _cholesky_step(x[chol], _take(abc, chol), gram)
        if chol.numel() == x.shape[0] and bool(ok.all()):
            return y
        out = out.index_put((chol[ok],), y[ok])
        use_qr = use_qr.index_put((chol[~ok],), torch.ones_like(ok[~ok]))
    qr = use_qr.nonzero().squeeze(1)
    if qr.numel() == x.shape[0]:
        return _qr_step(x, abc)
    return out.index_put((qr,), _qr_step(x[qr], _take(abc, qr)))


def _take(abc: Weights, idx: Tensor) -> Weights:
    """The weights of the matrices ``idx``."""
    return abc[0][idx], abc[1][idx], abc[2][idx]


def _qr_step(x: Tensor, abc: Weights) -> Tensor:
    """[√c X; I] = [Q₁; Q₂] R,  X ← (b/c) X + (1/√c)(a − b/c) Q₁ Q₂ᴴ   [NBG10, §4]."""
    a, b, c = abc
    m, n = x.shape[-2:]
    sqrt_c = c.sqrt()
    eye = torch.eye(n, dtype=x.dtype, device=x.device).expand(x.shape[0], n, n)
    q, _ = torch.linalg.qr(torch.cat([_col(sqrt_c, x) * x, eye], dim=-2))
    q1, q2 = q[:, :m], q[:, m:]
    return _col(b / c, x) * x + _col((a - b / c) / sqrt_c, x) * (q1 @ q2.mH)


def _cholesky_step(x: Tensor, abc: Weights, gram: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """Z = I + c XᴴX = WᴴW,  X ← (b/c) X + (a − b/c) (X W⁻¹) W⁻ᴴ   [NH13].

    Returns the new X and, per matrix, whether the Cholesky factorization succeeded.
    """
    a, b, c = abc
    n = x.shape[-1]
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    z = eye + _col(c, x) * gram(x.mH)
    w, info = torch.linalg.cholesky_ex(z, upper=True)
    y = torch.linalg.solve_triangular(w, x, upper=True, left=False)          # X W⁻¹
    y = torch.linalg.solve_triangular(w.mH, y, upper=False, left=False)      # (X W⁻¹) W⁻ᴴ
    return _col(b / c, x) * x + _col(a - b / c, x) * y, info == 0


def _col(weight: Tensor, x: Tensor) -> Tensor:
    """A per-matrix float64 weight (B,) as (B, 1, 1) in x's dtype, to scale each matrix of x."""
    return weight.to(x.dtype)[:, None, None]
