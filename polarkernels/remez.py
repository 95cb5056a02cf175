"""The Polar Express schedule generator: per-step minimax odd quintics, composed greedily.

Amsel, Persson, Musco, Gower, "The Polar Express: Optimal Matrix Sign Methods and Their
Application to the Muon Algorithm", arXiv 2505.16932. Step k maps every singular value
σ ∈ [ℓ_k, u_k] through the odd quintic

    p_k = argmin_{p odd, deg p ≤ 5}  max_{x ∈ [ℓ_k, u_k]} |1 − p(x)|          (the greedy step)

and the next interval is [p_k(ℓ_k), 2 − p_k(ℓ_k)] ⊇ p_k([ℓ_k, u_k]); the paper proves this greedy
composition optimal among all compositions of odd quintics. By Chebyshev's alternation theorem
(3 coefficients, so 3 + 1 = 4 points) p_k − 1 equioscillates at ℓ_k, two interior points and u_k;
the simplified Remez exchange of the paper's reference code finds it. Pure NumPy: no torch.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .schedules import Coeffs, with_safety

# Below this half-width η the corrections to the limit, O(η²), are under round-off.
_LIMIT_ETA = 1e-9
_MAX_EXCHANGES = 50
_SIGNS = np.array([1.0, -1.0, 1.0, -1.0])  # p(x_i) = 1 − s_i E at x = ℓ, q, r, u


def optimal_quintic(l: float, u: float) -> Coeffs:
    """The minimax odd quintic p(x) = a x + b x³ + c x⁵ approximating 1 on [l, u].

    This is one step of the paper's greedy construction: p = argmin over odd quintics of
    max_{x ∈ [l, u]} |1 − p(x)|. Its error p − 1 equioscillates with some magnitude E at l, two
    interior points q < r, and u (signs −, +, −, +), so p maps [l, u] onto [1 − E, 1 + E].

    Args:
        l: lower end of the interval, 0 < l ≤ u.
        u: upper end of the interval.

    Returns:
        (a, b, c), accurate to a few ulps for every l/u (checked against 60-digit arithmetic).
        As l/u → 1 they tend to the Newton–Schulz quintic (15/8, −10/8, 3/8) rescaled to the
        midpoint m = (l + u)/2, i.e. (15/8)/m, (−10/8)/m³, (3/8)/m⁵.
    """
    _check_interval(l, u)
    a1, a3, a5 = _remez((u - l) / (u + l))
    # The problem is scale-invariant: p(x) = P(x/m) for the optimum P on [1 − η, 1 + η].
    m = l / 2.0 + u / 2.0
    coeffs = (a1 / m, a3 / m / m / m, a5 / m / m / m / m / m)
    if not all(math.isfinite(v) and v != 0.0 for v in coeffs):
        raise ValueError(f"the quintic for [l, u] = [{l!r}, {u!r}] over- or underflows float64; "
                         "rescale the interval towards 1")
    return coeffs


@lru_cache(maxsize=4096)
def _remez(eta: float) -> Coeffs:
    """Monomial coefficients of the minimax odd quintic P(z) ≈ 1 on [1 − η, 1 + η], 0 ≤ η ≤ 1.

    (η = 1 when l/u is below round-off: the l → 0 limit, E = 1, still a well-posed system.)

    Simplified Remez exchange (the paper's ``optimal_quintic``): impose equioscillation,
    P(z_i) = 1 − s_i E at the reference points z = (1 − η, q, r, 1 + η), a linear system for the
    coefficients and E; move q, r to the critical points of P; repeat until they settle.

    The unknown is written as a correction to its η → 0 limit, the Newton–Schulz quintic N:
    P = N + z (δ₀ + δ₁ τ + δ₂ τ²), τ = z² − 1, and points are kept as offsets ζ = z − 1. Since
    1 − N(z) = −ζ³ (3z² + 9z + 8)/8 is known in closed form and δ_k = O(η²), no quantity is
    formed by cancellation and the coefficients stay accurate even for η ≈ 1e-6, where the plain
    monomial system (columns z, z³, z⁵ nearly parallel) loses ~10 digits.
    """
    if eta <= _LIMIT_ETA:
        return 15 / 8, -10 / 8, 3 / 8  # P(1) = 1, P'(1) = P''(1) = 0
    # Initial interior points (3ℓ + u)/4, (ℓ + 3u)/4: exact to first order as η → 0.
    zeta = np.array([-eta, -eta / 2.0, eta / 2.0, eta])
    last_move = math.inf
    for _ in range(_MAX_EXCHANGES):
        z, tau = 1.0 + zeta, zeta * (2.0 + zeta)
        residual = -(zeta**3) * (3.0 * z * z + 9.0 * z + 8.0) / 8.0  # 1 − N(z)
        lhs = np.stack([z, z * tau, z * tau * tau, _SIGNS], axis=1)
        d0, d1, d2, _ = np.linalg.solve(lhs, residual)
        # Exchange: P'(z) = (15/8 + 5δ₂) τ² + (3δ₁ + 4δ₂) τ + (δ₀ + 2δ₁) = 0 at the new q, r.
        qa, qb, qc = 15 / 8 + 5.0 * d2, 3.0 * d1 + 4.0 * d2, d0 + 2.0 * d1
        disc = qb * qb - 4.0 * qa * qc
        if not (qa > 0.0 and disc > 0.0):
            raise ArithmeticError(f"Remez exchange lost its interior extrema for eta={eta!r}")
        big = -(qb + math.copysign(math.sqrt(disc), qb)) / 2.0  # stable quadratic roots
        taus = np.sort([big / qa, qc / big])
        new = taus / (np.sqrt(1.0 + taus) + 1.0)  # ζ = √(1 + τ) − 1 without cancellation
        if not -eta < new[0] < new[1] < eta:
            raise ArithmeticError(f"Remez exchange left the interval for eta={eta!r}: zeta={new}")
        move = float(np.max(np.abs(new - zeta[1:3])))
        zeta[1:3] = new
        # Quadratic convergence down to the round-off floor, where the moves stop shrinking.
        if move <= 4.0 * np.finfo(float).eps * eta or move >= last_move:
            break
        last_move = move
    else:
        raise ArithmeticError(f"Remez exchange did not converge for eta={eta!r}")
    # z (δ₀ + δ₁ (z² − 1) + δ₂ (z² − 1)²) added to N, expanded in z, z³, z⁵.
    return (float(15 / 8 + d0 - d1 + d2), float(-10 / 8 + d1 - 2.0 * d2), float(3 / 8 + d2))


def polar_express_schedule(l: float, steps: int, *, u: float = 1.0, safety: float = 0.0,
                           cushion: float = 0.0) -> list[Coeffs]:
    """The Polar Express coefficients (a_k, b_k, c_k) for σ(X₀) ⊂ [l, u] (the paper's composition).

    Step k takes the minimax quintic on [max(ℓ_k, cushion·u_k), u_k]; when the cushion is active
    it rescales that quintic so that p(ℓ_k) + p(u_k) = 2 (centring the images of both ends about
    1). Every step but the last is then applied as p(x/s), s = 1 + ``safety`` (``with_safety``:
    the paper's guard against round-off pushing σ past u_k), so ℓ_{k+1} = p(ℓ_k/s) and
    u_{k+1} = 2 − ℓ_{k+1}.

    Reproduces the published tables: ``(1e-3, 5, safety=0.02, cushion=0.02)`` gives
    ``POLAR_EXPRESS_5`` and ``(1e-3, 8, cushion=0.02407327424182761)`` gives
    ``POLAR_EXPRESS_8_UNSCALED`` (see tests/test_remez.py for the achieved errors).

    Args:
        l: lower bound on the singular values of X₀, 0 < l ≤ u.
        steps: number of steps, ≥ 0.
        u: upper bound on the singular values of X₀.
        safety: relative safety margin ε ≥ 0; coefficient k (of x^(2k+1)) of every step but
            the last is divided by (1 + ε)^(2k+1).
        cushion: 0 ≤ cushion < 1; design each step for a lower end of at least cushion·u_k,
            which keeps the first steps' coefficients (and their round-off) moderate.

    Returns:
        A list of ``steps`` tuples (a, b, c).
    """
    _check_interval(l, u)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if not (math.isfinite(safety) and safety >= 0.0):
        raise ValueError(f"safety must be finite and >= 0, got {safety!r}")
    if not 0.0 <= cushion < 1.0:
        raise ValueError(f"cushion must satisfy 0 <= cushion < 1, got {cushion!r}")
    return list(_schedule(float(l), int(steps), float(u), float(safety), float(cushion)))


@lru_cache(maxsize=256)
def _schedule(l: float, steps: int, u: float, safety: float, cushion: float) -> tuple[Coeffs, ...]:
    """``polar_express_schedule`` after validation, cached (tables are requested repeatedly)."""
    s = 1.0 + safety
    table = []
    for _ in range(steps):
        lo = max(l, cushion * u)
        a, b, c = optimal_quintic(lo, u)
        if lo > l:
            # Cushion active: scale p so its images of ℓ and u sit symmetrically about 1.
            r = 2.0 / (_quintic(a, b, c, l) + _quintic(a, b, c, u))
            a, b, c = a * r, b * r, c * r
        table.append((a, b, c))
        # The step applied is p(x/s) (``with_safety``), so the next interval starts at p(ℓ/s);
        # p([ℓ, u]) ⊂ [p(ℓ), 2 − p(ℓ)] and p(ℓ) ≤ 1, which round-off must not break near ℓ = 1.
        l = min(_quintic(a, b, c, l / s), 1.0)
        u = 2.0 - l
    return with_safety(tuple(table), s)


def _quintic(a: float, b: float, c: float, x: float) -> float:
    """p(x) = a x + b x³ + c x⁵, in Horner form."""
    y = x * x
    return x * (a + y * (b + y * c))


def _check_interval(l: float, u: float) -> None:
    if not (math.isfinite(l) and math.isfinite(u) and 0.0 < l <= u):
        raise ValueError(f"need finite 0 < l <= u, got l={l!r}, u={u!r}")
