"""Coefficient schedules for odd-polynomial polar iterations.

Every iterative method in this package is the same loop (see :mod:`polarkernels.iterate`)

    X₀ = A / (safety · ‖A‖_F)
    X_{k+1} = a_k X_k + b_k (X_k X_kᵀ) X_k + c_k (X_k X_kᵀ)² X_k          (1)

i.e. the singular values follow σ ← p_k(σ) = a_k σ + b_k σ³ + c_k σ⁵. Methods differ only in
the table of (a_k, b_k, c_k) and in ``safety``; this module holds those tables, once, with
their provenance. Pure Python: no torch import.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

Coeffs = tuple[float, float, float]

#: Muon's fixed quintic (Keller Jordan, "Muon", 2024; torch.optim.Muon). Not convergent: it
#: maps σ ∈ (0, 1] into roughly [0.5, 1.2] quickly and stays there. For ``orthogonalize`` only.
MUON_QUINTIC: Coeffs = (3.4445, -4.7750, 2.0315)
MUON_NORM_EPS = 1e-7  # X₀ = G / max(‖G‖_F, 1e-7), as torch.optim.Muon

#: Newton–Schulz cubic, p(σ) = (3σ − σ³)/2 (Higham, "Functions of Matrices", eq. 8.20).
#: Convergent for 0 < σ < √3, quadratically near 1.
NEWTON_SCHULZ_CUBIC: Coeffs = (1.5, -0.5, 0.0)

#: Newton–Schulz quintic, p(σ) = (15σ − 10σ³ + 3σ⁵)/8: the [2/0] Padé-type iteration of order 3.
#: Convergent for 0 < σ < ~1.53; the limit of every Polar Express step as ℓ → 1.
NEWTON_SCHULZ_QUINTIC: Coeffs = (15 / 8, -10 / 8, 3 / 8)

#: Polar Express 5-step table (Amsel, Persson, Musco, Gower, arXiv 2505.16932) as used by
#: modded-nanogpt and microsoft/dion; safety already folded in. Apply after
#: X₀ = A / (1.02 ‖A‖_F). Reproduced by ``polar_express_schedule(1e-3, 5, safety=0.02,
#: cushion=0.02)``.
POLAR_EXPRESS_5: tuple[Coeffs, ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_5_NORM_SAFETY = 1.02

#: The paper's 8-step table for ℓ₀ = 1e-3, *before* its safety factor (arXiv 2505.16932,
#: reference implementation). The last step is clamped to exactly the Newton–Schulz quintic.
#: Reproduced by ``polar_express_schedule(1e-3, 8, cushion=0.02407327424182761)`` (steps 1–6 to
#: 2e-14; step 7 to 2e-11, where the generator matches a 60-digit reference and the table does not).
POLAR_EXPRESS_8_UNSCALED: tuple[Coeffs, ...] = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
POLAR_EXPRESS_8_SAFETY = 1.01


def with_safety(table: tuple[Coeffs, ...], safety: float) -> tuple[Coeffs, ...]:
    """Divide (a, b, c) of every step but the last by (s, s³, s⁵): p(σ) → p(σ/s)·…

    This is the paper's guard against round-off pushing σ past the interval the step was
    designed for: each step then maps [ℓ, u·s] safely instead of [ℓ, u].
    """
    s = safety
    head = tuple((a / s, b / s**3, c / s**5) for a, b, c in table[:-1])
    return head + table[-1:]


#: The paper's 8-step table with its safety factor; use after X₀ = A / (1.01 ‖A‖_F).
POLAR_EXPRESS_8: tuple[Coeffs, ...] = with_safety(POLAR_EXPRESS_8_UNSCALED, POLAR_EXPRESS_8_SAFETY)


@dataclass(frozen=True)
class Schedule:
    """What the iteration loop needs to know about a method.

    Attributes:
        name: method name, for messages.
        coeffs: the fixed steps (a, b, c) of eq. (1), applied in order.
        norm_safety: X₀ = A / (norm_safety · ‖A‖_F); > 1 keeps σ(X₀) inside the design interval.
        tail: a convergent step repeated after ``coeffs`` until the loop's convergence test
            passes (``polar``), or ``None`` for a fixed-step schedule (``orthogonalize``).
        norm_eps: ``None`` for the overflow-safe normalisation; a number for Muon's own,
            X₀ = A / max(‖A‖_F, norm_eps) in the working dtype (KellerJordan/Muon,
            torch.optim.Muon), which ``orthogonalize(method="muon")`` reproduces bit for bit.
    """

    name: str
    coeffs: tuple[Coeffs, ...]
    norm_safety: float = 1.0
    tail: Coeffs | None = None
    norm_eps: float | None = None


ITERATIVE_METHODS = ("muon", "polar_express", "newton_schulz")


def fixed_schedule(method: str, steps: int) -> Schedule:
    """The ``orthogonalize`` schedule: exactly ``steps`` steps of ``method``, no tail."""
    if method == "muon":
        return Schedule("muon", (MUON_QUINTIC,) * steps, norm_eps=MUON_NORM_EPS)
    if method == "newton_schulz":
        return Schedule("newton_schulz", (NEWTON_SCHULZ_QUINTIC,) * steps)
    if method == "polar_express":
        return Schedule("polar_express", _polar_express_table(steps), POLAR_EXPRESS_5_NORM_SAFETY)
    raise ValueError(f"no fixed schedule for method {method!r}; expected one of {ITERATIVE_METHODS}")


def convergent_schedule(method: str) -> Schedule:
    """The ``polar`` schedule: a method's own steps, then the Newton–Schulz quintic until converged.

    - ``newton_schulz``: the quintic alone (its convergence region holds every σ ∈ (0, 1]).
    - ``polar_express``: the paper's 8-step table with its 1.01 safety factor, then the quintic.
    - ``muon``: Muon's 5 fixed steps (σ lands in ≈[0.5, 1.2], inside the quintic's region), then
      the quintic. Offered for completeness; ``polar_express`` reaches the same point faster.
    """
    if method == "newton_schulz":
        return Schedule("newton_schulz", (), 1.0, NEWTON_SCHULZ_QUINTIC)
    if method == "polar_express":
        return Schedule("polar_express", POLAR_EXPRESS_8, POLAR_EXPRESS_8_SAFETY, NEWTON_SCHULZ_QUINTIC)
    if method == "muon":
        return Schedule("muon", (MUON_QUINTIC,) * 5, 1.0, NEWTON_SCHULZ_QUINTIC)
    raise ValueError(f"no convergent schedule for method {method!r}; expected one of {ITERATIVE_METHODS}")


@lru_cache(maxsize=None)
def _polar_express_table(steps: int) -> tuple[Coeffs, ...]:
    """Polar Express table for ``orthogonalize``: the published 5-step table, or generated.

    Other step counts come from the same construction that reproduces the 5-step table
    (ℓ₀ = 1e-3, safety 0.02, cushion 0.02), so ``steps`` is a free knob.
    """
    if steps == len(POLAR_EXPRESS_5):
        return POLAR_EXPRESS_5
    if steps == 0:
        return ()
    from .remez import polar_express_schedule

    return tuple(polar_express_schedule(1e-3, steps, safety=0.02, cushion=0.02))
