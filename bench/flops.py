"""FLOPs each method needs, per matrix: the figure behind the benchmark's achieved FLOP/s.

Counts are for one m×n matrix; write k = min(m, n) and N = max(m, n) (the iterations run on the
wide orientation, k × N). One multiply-add is 2 FLOPs.

Odd-polynomial step (Newton–Schulz, Muon, Polar Express), eq. (1) of polarkernels.schedules:
    S = X Xᵀ      k²N    (symmetric: one triangle; 2k²N as a full product)
    B = bS + cS²  k³     (symmetric: one triangle; 2k³)
    X' = aX + BX  2k²N
    total         3k²N + k³ per step with symmetric products, 4k²N + 2k³ naive.
The benchmark counts every implementation of a method with the symmetric count (the work the
method needs), so the achieved rates of a backend that computes full products are effective
rates, comparable across backends. ``polar()`` adds one Gram product for its last convergence
test (k²N) and H = Uᵀ A (2mn² for side="right").

QDWH (polarkernels.qdwh, its module's counts, m ≥ n after transposing): ℓ₀ from an R-only QR
(2mn² − 2n³/3) and R⁻¹ (n³/3); per QR-form step 6mn² + 3n³, per Cholesky-form step 3mn² + n³/3.
Inputs with m ≥ 1.5 n are first reduced to R (QR with Q: 4mn² − 4n³/3, and U = Q U_R: 2mn²).

SVD (nominal; LAPACK's divide-and-conquer work depends on the spectrum): the R-SVD count of
Golub & Van Loan, "Matrix Computations" 4th ed., §8.6.3, for U₁, Σ, V: 6Nk² + 20k³; U Vᵀ adds
2Nk². ``polar(method="svd")`` and ``scipy.linalg.polar`` also form H = V Σ Vᵀ from the
singular triplets: counted n²k, the symmetric count, like every symmetric product here (polar()'s
LAPACK route computes it as one ?syrk of V Σ^½; scipy, and polar() on the torch route, as the
full product (Vᵀ Σ) V, 2n²k).

Matmul reference (the "% matmul" column): one plain product of the step's shape, (k×k)·(k×N),
2k²N FLOPs, timed in the same run, dtype and batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from polarkernels import iterate, qdwh, schedules
from polarkernels.backends import torch_ref


def _orient(m: int, n: int) -> tuple[int, int]:
    return min(m, n), max(m, n)


def step(m: int, n: int) -> float:
    """One odd-polynomial step with symmetric products: 3k²N + k³."""
    k, big = _orient(m, n)
    return 3.0 * k * k * big + float(k) ** 3


def matmul(m: int, n: int) -> float:
    """The reference product (k×k)·(k×N): 2k²N."""
    k, big = _orient(m, n)
    return 2.0 * k * k * big


def svd_uvt(m: int, n: int) -> float:
    """R-SVD (6Nk² + 20k³) and U Vᵀ (2Nk²)."""
    k, big = _orient(m, n)
    return 8.0 * big * k * k + 20.0 * float(k) ** 3


def hermitian(m: int, n: int) -> float:
    """H = Uᵀ A, n×n: 2mn²."""
    return 2.0 * m * n * n


def hermitian_from_svd(m: int, n: int) -> float:
    """H = (V Σ^½)(V Σ^½)ᵀ, n×n from the thin SVD (symmetric count): n²k."""
    return float(n) * n * min(m, n)


def qdwh_flops(m: int, n: int, qr_steps: int, chol_steps: int) -> float:
    """QDWH per the counts in the module docstring."""
    big, k = max(m, n), min(m, n)
    total = 0.0
    if big >= qdwh.TALL_RATIO * k:
        total += 4.0 * big * k * k - 4.0 * k**3 / 3 + 2.0 * big * k * k   # reduce to R, then Q U_R
        big = k
    total += 2.0 * big * k * k - 2.0 * k**3 / 3 + k**3 / 3                # ℓ₀: R-only QR and R⁻¹
    total += qr_steps * (6.0 * big * k * k + 3.0 * k**3) + chol_steps * (3.0 * big * k * k + k**3 / 3)
    return total


@dataclass(frozen=True)
class Count:
    """FLOPs for one matrix and the iteration counts they came from (for the JSON)."""

    flops: float
    steps: int | None = None
    qr_steps: int | None = None


def fixed_steps(m: int, n: int, steps: int) -> Count:
    """A fixed-step polynomial method (``orthogonalize``, the Muon baselines)."""
    return Count(steps * step(m, n), steps)


def probe_polynomial(x: Tensor, method: str, *, hermitian_factor: bool) -> Count:
    """Run ``polar``'s convergent loop once on ``x`` (the first matrix of a workload) to count
    its steps: the same orientation, working dtype, schedule and defaults as polarkernels.api."""
    m, n = x.shape[-2:]
    work = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
    wide = work.mT if m > n else work
    schedule = schedules.convergent_schedule(method)
    result = iterate.run(iterate.frobenius_normalize(wide, schedule.norm_safety), schedule, torch_ref)
    k, big = _orient(m, n)
    flops = result.num_steps * step(m, n) + k * k * big + (hermitian(m, n) if hermitian_factor else 0.0)
    return Count(flops, result.num_steps)


def probe_qdwh(x: Tensor, *, max_iter: int, hermitian_factor: bool) -> Count:
    """Run QDWH once on ``x`` with a Gram product that counts its calls (one per Cholesky-form
    step; the others are QR-form steps)."""
    calls = 0

    def counting_gram(y: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        return torch_ref.gram(y)

    work = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
    result = qdwh.qdwh(work, max_iter=max_iter, gram=counting_gram)
    m, n = x.shape[-2:]
    flops = qdwh_flops(m, n, result.num_iters - calls, calls) + (hermitian(m, n) if hermitian_factor else 0.0)
    return Count(flops, result.num_iters, result.num_iters - calls)
