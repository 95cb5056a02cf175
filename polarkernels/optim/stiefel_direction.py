r"""Steepest descent direction under the spectral norm in the tangent space of the Stiefel manifold.

For W ∈ ℝ^{m×n} with WᵀW = I (m ≥ n; a wide W is handled as Wᵀ) and a gradient G, the
direction of manifold Muon is

.. math::
   \Phi^\star = \operatorname*{arg\,max}_{\Phi}\ \operatorname{tr}(G^\top \Phi)
   \quad\text{s.t.}\quad \|\Phi\|_2 \le 1,\quad W^\top\Phi + \Phi^\top W = 0.            \tag{1}

Lagrange multipliers X = Xᵀ for the tangent condition give the dual (Bernstein, Modula docs
"Stiefel manifold"; Thinking Machines, "Modular Manifolds", 2025; Su, "Steepest descent on
manifolds" parts 2, 3 and 5):

.. math::
   \min_{X = X^\top} D(X) = \|G + W X\|_*, \qquad
   \Phi(X) = \operatorname{msign}(G + W X), \qquad
   \nabla D(X) = \operatorname{sym}(W^\top \Phi(X)).                                          \tag{2}

For every symmetric X and every feasible Φ, tr(GᵀΦ) = tr((G + WX)ᵀΦ) ≤ D(X) (tr(X·WᵀΦ) = 0:
symmetric times skew), so D(X) bounds (1) from above; X is optimal when Φ(X) is tangent,
sym(WᵀΦ(X)) = 0. Both dual solvers start from X₀ = −sym(WᵀG), which is exact for square W:

- ``"dual_ascent"`` (Bernstein): gradient descent on D, X ← X − α_k · 2 sym(WᵀΦ), with
  α_k = α (1 − k/K) (K = ``max_iter``, the linear decay of the Modula code). One polar factor
  per iteration. Robust (a first-order method on a convex function) but linear at best: tens to
  hundreds of iterations for a 1e-4 residual on random tall matrices.
- ``"fixed_point"`` (Su, part 3): Φ = msign(G + WX) = (G + WX) Q⁻¹ with Q = ((G+WX)ᵀ(G+WX))^{1/2}
  the polar factor's H, so the tangent condition (WᵀG + X) Q⁻¹ + Q⁻¹ (GᵀW + X) = 0 is, after
  multiplying by Q on both sides, the Lyapunov equation

  .. math:: Q X + X Q = -(Q\, W^\top G + G^\top W\, Q).                                     \tag{3}

  The iteration freezes Q at the current X, solves (3) for the next X (eigendecomposition of
  the n×n Q) and repeats. One polar factor (U and H together) plus one n×n ``eigh`` per
  iteration; it converges much faster than dual ascent when Q is well conditioned (a handful of
  iterations on random tall matrices with m ≥ 2n), and it can stall when G + WX is nearly rank
  deficient (Q nearly singular). (3) is this module's statement of Su's fixed point on the
  stationarity condition of his post.

**When neither converges.** The dual optimum often makes G + WX rank deficient when m − n is
small (3×2, 5×3, 5×4 in the tests; and for low-rank G, as in network training): the optimal Φ
then has singular values below 1 on that null space, msign(G + WX) jumps there, and both
iterations stall at a residual of order 1 (measured: relative gaps of 4–15% after 10 iterations
on the ``stiefel_digits`` MLP of ``bench.optimizers``). The returned Φ is still feasible
(tangent, ‖Φ‖₂ = 1) and ``gap`` bounds how far its objective is from the optimum (the dual value
is an upper bound): trust ``converged`` and ``gap``, not the iteration count.

- ``"admm"``: for those cases, the alternating direction method of multipliers on the primal
  (1) split as Φ ∈ tangent space, Ψ ∈ spectral ball, Φ = Ψ (the splitting of Cesista's ADMM
  experiments; Boyd et al., "Distributed optimization and statistical learning via the
  alternating direction method of multipliers", 2011, §5), in units where P_T(G)'s singular
  values are O(1), with ρ = 1:

  .. math::
     \Phi \leftarrow P_T(\Psi - Y + G/\rho), \qquad
     \Psi \leftarrow \operatorname{clip}_1(\Phi + Y), \qquad Y \leftarrow Y + \Phi - \Psi,   \tag{5}

  clip₁(A) = U min(H, I) for A = UH (one polar factor and one n×n ``eigh``: the same cost as the
  fixed point). Its dual certificate is X = −sym(Wᵀ(G − ρY)). It converges on every input,
  rank-deficient optima included (30–80 iterations to a 1e-8 gap on the tests' small matrices,
  a few hundred on random 128×64), where the fixed point wins on well-conditioned ones.

Every msign is :func:`polarkernels.polar` (``method`` and ``backend`` pass through), so the
kernels and their accuracy carry over. Every solver stops when the tangent residual
‖sym(WᵀΦ)‖_F/√n and the relative duality gap are below ``tol``, or after ``max_iter``
iterations, and reports both. The returned direction is always feasible: the last iterate (Φ(X),
or ADMM's Ψ) projected onto the tangent space, Φ − W sym(WᵀΦ), and scaled to spectral norm 1
(a lower bound for (1); the gap is D(X) minus its objective, relative to D(X)).

Square W (n = m) has the closed form (Su, part 2; Cesista, "Heuristic solutions for steepest
descent on the Stiefel manifold", 2025): with the tangent space {WΩ : Ω = −Ωᵀ},

.. math::
   \Phi^\star = W \operatorname{msign}(\operatorname{skew}(W^\top G))
             = \operatorname{msign}(G - W \operatorname{sym}(W^\top G)),                    \tag{4}

equal because G − W sym(WᵀG) = W skew(WᵀG) and msign(WA) = W msign(A) for orthogonal W.
For tall W the right-hand form msign(P_T G) is the single-loop MCSD/SPEL direction (Yang and
Lai, "Manifold constrained steepest descent", ICML 2026): steepest under the spectral norm
applied to the Riemannian gradient, then retracted; it is not tangent, and not (1)'s optimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import api

SOLVERS = ("fixed_point", "dual_ascent", "admm")


@dataclass(frozen=True)
class StiefelDirection:
    """The solution of (1) for one matrix or a batch, and how well it was solved.

    Attributes:
        direction: Φ, the shape of ``g``: tangent at ``w`` to rounding, ‖Φ‖₂ = 1 (0 where the
            Riemannian gradient P_T(G) is 0).
        multiplier: the solver's state, in the units of G / (‖P_T(G)‖_F/√n), on the tall side: X
            (n×n, symmetric) for the fixed point and dual ascent, (Ψ, Y) stacked (…, 2, m, n) for
            ADMM; pass it back as ``multiplier`` to warm-start the next solve.
        iterations: polar factors computed (the batch runs until its last matrix stops).
        residual: per matrix, ‖sym(WᵀΦ(X))‖_F/√n of the last msign iterate (before projection).
        gap: per matrix, (D(X) − tr(GᵀΦ))/D(X), the relative duality gap of the returned Φ.
        converged: every matrix reached ``residual ≤ tol`` and ``gap ≤ tol``.
    """

    direction: Tensor
    multiplier: Tensor
    iterations: int
    residual: Tensor
    gap: Tensor
    converged: bool


def sym(a: Tensor) -> Tensor:
    """(A + Aᵀ)/2 over the last two dimensions."""
    return (a + a.mT) / 2


def skew(a: Tensor) -> Tensor:
    """(A − Aᵀ)/2 over the last two dimensions."""
    return (a - a.mT) / 2


def project_tangent(w: Tensor, x: Tensor) -> Tensor:
    """P_T(X) = X − W sym(WᵀX): the orthogonal projection onto the tangent space at tall ``w``."""
    return x - w @ sym(w.mT @ x)


def tangent_residual(w: Tensor, phi: Tensor) -> Tensor:
    """‖WᵀΦ + ΦᵀW‖_F / (2√n) = ‖sym(WᵀΦ)‖_F/√n per matrix (``w`` tall, n its columns)."""
    return torch.linalg.matrix_norm(sym(w.mT @ phi)) / math.sqrt(w.shape[-1])


def square_direction(w: Tensor, g: Tensor, *, method: str = "auto", backend: str = "auto") -> Tensor:
    """Φ = W msign(skew(WᵀG)) for square orthogonal ``w``, eq. (4); batched.

    skew(WᵀG) of odd order is singular; the projection onto the skew matrices afterwards
    removes what an SVD-based msign puts on its null space (a symmetric u uᵀ term).
    """
    _check_pair(w, g)
    if w.shape[-1] != w.shape[-2]:
        raise ValueError(f"square_direction needs square matrices, got {tuple(w.shape[-2:])}")
    k = skew(w.mT @ g)
    omega = skew(_msign(k, method, backend))
    out = w @ omega
    norm = torch.linalg.matrix_norm(omega, ord=2)                # ‖WΩ‖₂ = ‖Ω‖₂
    return out / torch.where(norm > 0, norm, 1.0)[..., None, None]


def stiefel_direction(w: Tensor, g: Tensor, *, solver: str = "fixed_point", tol: float = 1e-4,
                      max_iter: int = 100, step_size: float = 0.2, multiplier: Tensor | None = None,
                      method: str = "auto", backend: str = "auto") -> StiefelDirection:
    """Solve (1) for ``w`` (``(..., m, n)`` with orthonormal columns, or rows if m < n) and ``g``.

    Args:
        w: points on the Stiefel manifold; a batch is solved at once (each matrix its own problem).
        g: gradients (any scale: Φ is invariant to scaling G by a positive number).
        solver: "fixed_point" (Su), "dual_ascent" (Bernstein) or "admm"; see the module docstring.
        tol: bound on the tangent residual and the relative duality gap.
        max_iter: cap on iterations (polar factors).
        step_size: α of dual ascent, in units where P_T(G)'s singular values are O(1) (G is divided
            by ‖P_T(G)‖_F/√n first); unused by the other solvers.
        multiplier: the ``multiplier`` of a previous solve (a warm start): X for the fixed
            point and dual ascent (else X₀ = −sym(WᵀG)), (Ψ, Y) stacked for ADMM (else zeros).
        method, backend: passed to :func:`polarkernels.polar` for every msign.

    Returns:
        a :class:`StiefelDirection`; ``multiplier`` is in the units of the scaled G.
    """
    _check_pair(w, g)
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if not (isinstance(tol, float | int) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    if not (isinstance(step_size, float | int) and step_size > 0):
        raise ValueError(f"step_size must be a positive number, got {step_size!r}")
    wide = w.shape[-2] < w.shape[-1]
    if wide:
        w, g = w.mT, g.mT
    n = w.shape[-1]
    # Φ is invariant to G → cG (c > 0) and depends on G only through P_T(G) (tr(GᵀΦ) =
    # tr(P_T(G)ᵀΦ) for tangent Φ): solve in units where P_T(G)'s singular values are O(1).
    scale = torch.linalg.matrix_norm(project_tangent(w, g)) / math.sqrt(n)
    nonzero = scale > 0
    g = g / torch.where(nonzero, scale, 1.0)[..., None, None]
    wtg = w.mT @ g
    expected = (*g.shape[:-2], 2, *g.shape[-2:]) if solver == "admm" else wtg.shape
    if multiplier is not None and multiplier.shape != expected:
        raise ValueError(f"multiplier must have shape {tuple(expected)}, got {tuple(multiplier.shape)}")
    x = -sym(wtg) if multiplier is None or solver == "admm" else multiplier.to(g.dtype)
    if solver == "admm":
        return _admm(w, g, wtg, multiplier, nonzero, wide, tol, max_iter, method, backend)
    if w.shape[-2] == n:                                        # square: eq. (4), X = −sym(WᵀG)
        direction = square_direction(w, g, method=method, backend=backend) * nonzero[..., None, None]
        dual = torch.linalg.svdvals(skew(wtg)).sum(-1)               # D(X) = ‖W skew(WᵀG)‖_*
        gap = (dual - (g * direction).sum((-2, -1))) / torch.where(dual > 0, dual, 1.0)
        residual = tangent_residual(w, direction)
        return StiefelDirection(direction.mT if wide else direction, -sym(wtg), 1, residual, gap,
                                bool(((residual <= tol) & (gap <= tol)).all()))
    done = False
    for k in range(max_iter):
        phi, q = api.polar(g + w @ x, method=method, backend=backend)    # Φ(X), Q = |G + WX|
        r = sym(w.mT @ phi)
        residual = torch.linalg.matrix_norm(r) / math.sqrt(n)
        direction, gap = _feasible(w, g, phi, q)
        ok = ((residual <= tol) & (gap <= tol)) | ~nonzero
        if bool(ok.all()):
            done = True
            break
        if k == max_iter - 1:
            break
        if solver == "dual_ascent":
            x = x - (step_size * (1 - k / max_iter) * 2) * r         # X ← X − α_k ∇D, eq. (2)
        else:
            x = _lyapunov(q, -(q @ wtg + wtg.mT @ q))                   # eq. (3) with Q frozen
    direction = direction * nonzero[..., None, None]
    if wide:
        direction = direction.mT
    return StiefelDirection(direction, x, k + 1, residual, gap, done)


def _admm(w: Tensor, g: Tensor, wtg: Tensor, state: Tensor | None, nonzero: Tensor, wide: bool, tol: float,
          max_iter: int, method: str, backend: str) -> StiefelDirection:
    """Eq. (5) with ρ = 1 on tall ``w`` and scaled ``g``; ``state`` is (Ψ, Y) stacked at dim −3, or None."""
    n = w.shape[-1]
    psi, y = (torch.zeros_like(g), torch.zeros_like(g)) if state is None else state.to(g.dtype).unbind(-3)
    done = False
    for k in range(max_iter):
        phi = project_tangent(w, psi - y + g)
        u, h = api.polar(phi + y, method=method, backend=backend)
        lam, v = torch.linalg.eigh(h)
        psi = u @ (v * lam.clamp(max=1)[..., None, :]) @ v.mT      # clip₁(Φ + Y)
        y = y + phi - psi
        residual = tangent_residual(w, psi)
        direction, _ = _feasible(w, g, psi, h)
        x = -sym(wtg - w.mT @ y)                                    # X = −sym(Wᵀ(G − ρY))
        dual = torch.linalg.svdvals(g + w @ x).sum(-1)
        gap = (dual - (g * direction).sum((-2, -1))) / torch.where(dual > 0, dual, 1.0)
        if bool((((residual <= tol) & (gap <= tol)) | ~nonzero).all()):
            done = True
            break
    direction = direction * nonzero[..., None, None]
    return StiefelDirection(direction.mT if wide else direction, torch.stack([psi, y], dim=-3), k + 1, residual, gap, done)


def _feasible(w: Tensor, g: Tensor, phi: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """Φ projected onto the tangent space and scaled to ‖Φ‖₂ = 1, and its relative duality gap.

    D(X) = ‖G + WX‖_* = tr Q; ‖P‖₂² is the largest eigenvalue of the n×n PᵀP.
    """
    p = project_tangent(w, phi)
    top = torch.linalg.eigvalsh(p.mT @ p)[..., -1].clamp_min(0).sqrt()
    p = p / torch.where(top > 0, top, 1.0)[..., None, None]
    dual = q.diagonal(dim1=-2, dim2=-1).sum(-1)
    primal = (g * p).sum((-2, -1))
    gap = (dual - primal) / torch.where(dual > 0, dual, 1.0)
    return p, gap


def _lyapunov(q: Tensor, c: Tensor) -> Tensor:
    """The symmetric X with QX + XQ = C, for symmetric positive semi-definite Q and symmetric C.

    With Q = V diag(λ) Vᵀ: X = V [(VᵀCV)ᵢⱼ / (λᵢ + λⱼ)] Vᵀ; denominators below ε·λ_max
    (Q singular) are raised to it, which keeps X finite where the equation leaves X free.
    """
    lam, v = torch.linalg.eigh(q)
    floor = (lam[..., -1:] * torch.finfo(q.dtype).eps * q.shape[-1]).clamp_min(torch.finfo(q.dtype).tiny)
    denom = (lam[..., :, None] + lam[..., None, :]).clamp_min(floor[..., None])
    return sym(v @ ((v.mT @ c @ v) / denom) @ v.mT)


def _msign(a: Tensor, method: str, backend: str) -> Tensor:
    return api.polar(a, method=method, backend=backend)[0]


def _check_pair(w: Tensor, g: Tensor) -> None:
    if not (isinstance(w, Tensor) and isinstance(g, Tensor)):
        raise TypeError(f"w and g must be torch tensors, got {type(w).__name__} and {type(g).__name__}")
    if w.ndim < 2 or w.shape != g.shape:
        raise ValueError(f"w and g must be matrices (..., m, n) of one shape, got {tuple(w.shape)} and "
                         f"{tuple(g.shape)}")
    if not (w.dtype.is_floating_point and g.dtype == w.dtype) or w.dtype in (torch.bfloat16, torch.float16):
        raise TypeError(f"w and g must share a float32/float64 dtype, got {w.dtype} and {g.dtype}")
