r"""Gram Newton–Schulz: run the polynomial steps on the small Gram matrix, touch X only at restarts.

For a wide X (m ≤ n) every step of eq. (1) in :mod:`polarkernels.schedules` is X ← (aI + Z) X
with Z = b R + c R² and R = X Xᵀ. All these m×m matrices are polynomials in R₀ = X₀ X₀ᵀ, so they
commute, and L steps from X₀ collapse to (Zhang, Amsel, Chen, Dao, "Gram Newton–Schulz", 2026)

    R₀ = X₀ X₀ᵀ,  Q₀ = I
    Z_t = b_t R_t + c_t R_t²                    the step's polynomial in R_t = X_t X_tᵀ
    Q_{t+1} = (a_t I + Z_t) Q_t                 X_t = Q_t X₀ throughout
    R_{t+1} = W_t R_t W_t = W_t² R_t,           W_t = a_t I + Z_t  (W_t² = a_t² I + 2a_t Z_t + Z_t²)
    X_L = Q_L X₀                                one product with the tall-and-wide X per segment

Restarts. Inside a segment R is never recomputed from X: R_{t+1} = W_t² R_t multiplies the
rounding error of R (≈ u‖R‖, u the unit roundoff) by W_t² ≈ a_t² (≈ 66 for Polar Express's first
step), and once that exceeds R's small eigenvalues they turn negative and the next steps diverge
(Q too grows to σ_t/σ₀ ~ 10² in the small directions). Restarting (X ← Q X, R ← X Xᵀ, Q ← I)
bounds both; it costs one X-sized product and one Gram. Measured with torch_ref (m×n up to
256×1024, condition numbers 10²–10⁶, error against the float64 plain loop): in float32,
restarting every 2 or 3 steps stays within 3× of the plain loop's error (never restarting: up to
400× on the 8-step table); in bf16, never restarting or restarting every 4 steps fails (errors
≫ 1), every 3 steps holds for the 5-step tables but gives NaN on the 8-step Polar Express table,
every 2 steps holds for all of them (within 6× of the plain bf16 loop's error). Hence the
default 2; fp16 and fp32 tolerate 3.

FLOPs, counting a symmetric product (gram, poly: one triangle) of m×m×k as m²k and a general one
(apply) as 2m²k. A segment of L steps costs

    gram m²n + L poly m³ + (L−1) × [Q update 2m³ + W² m³ + W²R 2m³] + final apply 2m²n
    = 3m²n + (6L − 5) m³

against L (3m²n + m³) for the plain loop: it saves 3(L−1) m²n and spends 5(L−1) m³, so it wins
when the aspect ratio n/m > 5/3 (by FLOPs), for any restart interval. Five steps on m×4m
(plain: 65m³): restarting every 2 steps (segments 2 + 2 + 1) costs 9m²n + 15m³ = 51m³, 22% fewer
(→ 40% as n/m → ∞); every 3 steps (3 + 2) costs 6m²n + 20m³ = 44m³, 32% fewer (→ 60%). With a
primitive for the product of two commuting symmetric matrices that computes one triangle, the
m³ terms would shrink to (4L − 3) m³ and the break-even to n/m > 1; the backends do not have it.
On a GPU the m×m products are smaller, less efficient GEMMs than the plain loop's, so the
measured break-even sits above the FLOP count's (see bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

from torch import Tensor

Coeffs = tuple[float, float, float]

#: Restart after this many steps by default: stable in bf16 for every table in schedules.py
#: (see the module docstring); 5-step schedules run as segments of 2 + 2 + 1.
DEFAULT_RESTART_EVERY = 2


def gram_iterate(x0: Tensor, coeffs: Sequence[Coeffs], ops: ModuleType, *,
                 restart_every: int | None = DEFAULT_RESTART_EVERY) -> Tensor:
    """Apply the steps ``coeffs`` to an already-normalised wide ``x0`` through its Gram matrix.

    Computes the same X_L as the plain loop ``X ← a X + (b S + c S²) X`` (S = X Xᵀ) over
    ``coeffs``, with ``ops``' primitives only (``gram``, ``poly``, ``apply``: any backend).

    Args:
        x0: (..., m, n) with m ≤ n, scaled so its singular values lie in the schedule's interval.
        coeffs: the steps (a, b, c), in order.
        ops: a backend module (:mod:`polarkernels.backends.torch_ref`, ``triton_ops``, ...).
        restart_every: steps per segment; ``None`` never restarts, 1 is the plain loop.

    Returns:
        X_L, same shape and dtype as ``x0``.
    """
    if x0.dim() < 2 or x0.shape[-2] > x0.shape[-1]:
        raise ValueError(f"x0 must be wide (..., m, n) with m <= n; got shape {tuple(x0.shape)}")
    if restart_every is not None and (isinstance(restart_every, bool) or not isinstance(restart_every, int)
                                      or restart_every < 1):
        raise ValueError(f"restart_every must be a positive int or None; got {restart_every!r}")
    steps = [tuple(map(float, abc)) for abc in coeffs]
    span = len(steps) if restart_every is None else restart_every
    x = x0
    for start in range(0, len(steps), max(span, 1)):
        x = _segment(x, steps[start:start + span], ops)
    return x


def _segment(x: Tensor, steps: list[Coeffs], ops: ModuleType) -> Tensor:
    """X_L = Q_L X for the steps of one segment (the module docstring's recurrences)."""
    if len(steps) == 1:  # a one-step segment is the plain step: X ← a X + Z X
        a, b, c = steps[0]
        return ops.apply(ops.poly(ops.gram(x), b, c), x, a)
    r = ops.gram(x)                                   # R₀ = X Xᵀ
    q = None                                          # Q = I, kept implicit until the first step
    for t, (a, b, c) in enumerate(steps):
        z = ops.poly(r, b, c)                         # Z = b R + c R²
        if t < len(steps) - 1:                        # the last step's R is never read
            w2 = _plus_identity(ops.poly(z, 2.0 * a, 1.0), a * a)   # W² = a² I + 2a Z + Z²
            r = ops.apply(w2, r, 0.0)                 # R ← W² R  (= W R W: all commute)
        q = _plus_identity(z, a) if q is None else ops.apply(z, q, a)  # Q ← (a I + Z) Q
    return ops.apply(q, x, 0.0)                       # X_L = Q X


def _plus_identity(z: Tensor, a: float) -> Tensor:
    """z + a I, in place on a fresh matrix (batched over leading dims)."""
    z.diagonal(dim1=-2, dim2=-1).add_(a)
    return z
