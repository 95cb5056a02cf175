"""The one loop every odd-polynomial polar method runs (Newton–Schulz, Muon, Polar Express).

Given a schedule (:mod:`polarkernels.schedules`) and a backend's three primitives
(:mod:`polarkernels.backends.torch_ref`), on a wide X (m ≤ n), real or complex (Xᵀ below is then
the conjugate transpose Xᴴ; the real coefficients act on the singular values exactly as before):

    X₀ = A / (safety · ‖A‖_F)                                   (so σ(X₀) ≤ 1/safety ≤ 1)
    for (a, b, c) in schedule.coeffs:   S = X Xᵀ;  X ← a X + (b S + c S²) X
    then, if schedule.tail:             repeat the tail step until converged            (1)

Convergence contract for the tail: let r_k = ‖S_k − I‖_F / √m, the RMS deviation of X_k X_kᵀ
from the identity (S_k is the Gram matrix the step computes anyway, so the test is free but for
one reduction). Stop with ``converged=True`` once r_k ≤ tol; stop with ``converged=False`` when
r_k no longer decreases (the rounding floor, or a rank-deficient input whose zero singular values
stay zero) or after ``max_steps`` tail steps. Each tail step is monotone in every σ ∈ (0, 1.5),
so in exact arithmetic r_k strictly decreases until all σ are 0 or 1.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import NamedTuple

import torch
from torch import Tensor

from .schedules import Schedule


class IterResult(NamedTuple):
    """Result of :func:`run`: the iterate, the number of steps taken, and whether the tail's
    tolerance was met (``None`` for a fixed schedule, which has no convergence test)."""

    u: Tensor
    num_steps: int
    converged: bool | None


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64, float32 for everything narrower: where norms and residuals live.

    Complex dtypes are their own (complex64 is the narrowest complex type supported).
    """
    if dtype.is_complex:
        return dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


def frobenius_normalize(a: Tensor, safety: float = 1.0) -> Tensor:
    """X₀ = A / (safety · ‖A‖_F), per matrix, returned in A's dtype.

    Overflow- and underflow-safe in every dtype: A is first divided by max|A| in float32 (or
    float64), so ‖·‖_F is computed on entries of magnitude ≤ 1 (entries of 1e±30 in float32 or
    bfloat16, or 6e4 in float16, normalise exactly). The zero matrix maps to zero.
    """
    wide = a.to(accumulation_dtype(a.dtype))
    amax = wide.abs().amax(dim=(-2, -1), keepdim=True)
    scaled = wide / torch.where(amax > 0, amax, torch.ones_like(amax))
    norm = torch.linalg.matrix_norm(scaled, keepdim=True) * safety
    return (scaled / torch.where(norm > 0, norm, torch.ones_like(norm))).to(a.dtype)


def normalize(a: Tensor, schedule: Schedule) -> Tensor:
    """X₀ for ``schedule``: :func:`frobenius_normalize`, or Muon's own normalisation.

    Muon's (``schedule.norm_eps`` set) is X₀ = A / max(‖A‖_F, eps) with the norm and the division
    in A's dtype, exactly as torch.optim.Muon computes it, so its trajectories match bit for bit.
    Where that overflows (‖A‖_F not finite in A's dtype, e.g. float16 entries near 6e4), the
    overflow-safe :func:`frobenius_normalize` is used for that matrix instead.
    """
    safe = frobenius_normalize(a, schedule.norm_safety)
    if schedule.norm_eps is None:
        return safe
    norm = torch.linalg.matrix_norm(a, keepdim=True)
    muon = a / norm.clamp_min(schedule.norm_eps)
    return torch.where(torch.isfinite(norm), muon, safe)


def default_tol(dtype: torch.dtype, n: int) -> float:
    """Default tail tolerance on r = ‖XXᵀ − I‖_F/√m: 10 ε √n.

    Each entry of XXᵀ is a length-n dot product, so its rounding error is ~ε√n; asking for less
    only reaches the rounding floor (which the stall test catches anyway).
    """
    return 10.0 * torch.finfo(dtype).eps * math.sqrt(max(n, 1))


def default_max_steps(dtype: torch.dtype) -> int:
    """Tail steps that lift the smallest representable relative σ (≈ ε) to 1, plus 10.

    Far from 1 the quintic tail multiplies σ by 15/8 per step: ⌈log(1/ε)/log(15/8)⌉ steps.
    """
    eps = torch.finfo(accumulation_dtype(dtype)).eps
    return math.ceil(math.log(1.0 / eps) / math.log(15 / 8)) + 10


def _residual(s: Tensor) -> float:
    """max over the batch of ‖S − I‖_F / √m, in float32 or wider."""
    m = s.shape[-1]
    s = s.to(accumulation_dtype(s.dtype))
    eye = torch.eye(m, dtype=s.dtype, device=s.device)
    return float((torch.linalg.matrix_norm(s - eye) / math.sqrt(m)).max())


def run(x0: Tensor, schedule: Schedule, ops: ModuleType, *, tol: float | None = None,
        max_steps: int | None = None) -> IterResult:
    """Apply ``schedule`` to the normalised wide X₀ (..., m, n), m ≤ n, with backend ``ops``.

    ``tol`` and ``max_steps`` concern the tail only (see the module docstring for the contract);
    defaults: :func:`default_tol`, :func:`default_max_steps`.
    """
    if x0.shape[-2] > x0.shape[-1]:
        raise ValueError(f"run() needs the wide orientation (m <= n), got shape {tuple(x0.shape)}")
    x = x0
    for a, b, c in schedule.coeffs:
        x = ops.apply(ops.poly(ops.gram(x), b, c), x, a)            # eq. (1)
    if schedule.tail is None:
        return IterResult(x, len(schedule.coeffs), None)

    tol = default_tol(x.dtype, x.shape[-1]) if tol is None else tol
    max_steps = default_max_steps(x.dtype) if max_steps is None else max_steps
    a, b, c = schedule.tail
    steps, previous = len(schedule.coeffs), math.inf
    for _ in range(max_steps + 1):
        s = ops.gram(x)
        r = _residual(s)
        if r <= tol:
            return IterResult(x, steps, True)
        if not r < previous:  # stalled: rounding floor or zero singular values (also catches NaN)
            return IterResult(x, steps, False)
        if steps - len(schedule.coeffs) == max_steps:
            break
        previous = r
        x = ops.apply(ops.poly(s, b, c), x, a)
        steps += 1
    return IterResult(x, steps, False)
