r"""What decoupled weight decay does under learning-rate and weight-decay *schedules*.

**Weight RMS under a schedule** (Su Jianlin, "Asymptotic estimate of AdamW's weight RMS", parts
1 and 2). With θ_t = (1 − η_tλ_t) θ_{t−1} − η_t u_t and updates uncorrelated with θ (noise-driven
training) whose running sums grow like those of unit-RMS noise (AdamW: Σ m̂/√v̂ behaves like
Σ g/√v), the mean square per element obeys

.. math::
   \rho_t^2 = (1 - \eta_t\lambda_t)^2 \rho_{t-1}^2 + \eta_t^2 .                             \tag{1}

For constant rates its fixed point is ρ² = η²/(2ηλ − η²λ²) ≈ η/(2λ), the equilibrium
:class:`~polarkernels.optim.EquilibriumMonitor` has always predicted; under a schedule (cosine,
WSD, warmup) ρ_t lags the instantaneous √(η_t/2λ_t) and (1) tracks it (the dynamic estimate of
Su's part 2; its continuous form ρ_T² = e^{−2Λ_T}[ρ_0² + ∫ η_s² e^{2Λ_s} ds], Λ_t = ∫ η_sλ_s ds, is
(1) summed). :func:`adamw_weight_rms` runs (1) for a whole schedule; :class:`WeightRMSTracker`
runs it online, one step at a time, as the monitor does.

**Weight decay as a moving average** (Su, "Weight decay and learning rate from the
moving-average view"). Rewritten, θ_t = β_t θ_{t−1} + (1 − β_t)(−u_t/λ_t) with β_t = 1 − η_tλ_t:
the weights are an exponential moving average of the (scaled) updates. At step T its effective
averaging horizon is the number H of most recent steps whose decays add up to one e-folding,
Σ_{t=T−H+1}^{T} −log(1 − η_tλ_t) = 1 (H = 1/(−log(1 − ηλ)) ≈ 1/(ηλ) for constant rates).
:func:`averaging_horizon` computes it for a schedule and :func:`weight_decay_for_horizon` inverts it.

**Gaussian spectral norm.** ‖A‖₂ ≈ σ(√n + √m) for an n×m matrix of i.i.d. N(0, σ²) entries
(the Bai–Yin edge; Su uses it for the scale of random initialisations): a cheap sanity bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _rates(lrs: Sequence[float] | np.ndarray, weight_decays: float | Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    eta = np.asarray(lrs, dtype=np.float64)
    lam = np.broadcast_to(np.asarray(weight_decays, dtype=np.float64), eta.shape)
    if eta.ndim != 1 or eta.size == 0:
        raise ValueError(f"lrs must be a non-empty 1-D sequence, got shape {eta.shape}")
    if not (np.isfinite(eta).all() and (eta >= 0).all() and np.isfinite(lam).all() and (lam >= 0).all()):
        raise ValueError("learning rates and weight decays must be finite and ≥ 0")
    if ((eta * lam) >= 1).any():
        raise ValueError(f"every η_t·λ_t must be < 1 (the decay factor 1 − ηλ must stay positive), got max "
                         f"{float((eta * lam).max())!r}")
    return eta, lam


def adamw_weight_rms(lrs: Sequence[float] | np.ndarray, weight_decays: float | Sequence[float] | np.ndarray,
                     init_rms: float = 0.0, update_rms: float = 1.0) -> np.ndarray:
    """Predicted weight RMS after each step of a schedule, eq. (1).

    Args:
        lrs: η_t for t = 1..T (the learning rate each step actually used).
        weight_decays: λ_t (a number for constant weight decay), decoupled as in AdamW.
        init_rms: ρ_0, the weights' RMS before the first step.
        update_rms: RMS of the updates' noise per step (1 for AdamW).

    Returns:
        ρ_1..ρ_T as a float64 array.
    """
    eta, lam = _rates(lrs, weight_decays)
    tracker = WeightRMSTracker(init_rms, update_rms)
    out = np.empty_like(eta)
    for t, (e, l) in enumerate(zip(eta, lam)):
        out[t] = tracker.update(float(e), float(l))
    return out


class WeightRMSTracker:
    """Eq. (1) online: call :meth:`update` with each step's η and λ; ``rms`` is the prediction."""

    def __init__(self, init_rms: float, update_rms: float = 1.0) -> None:
        if not (math.isfinite(init_rms) and init_rms >= 0):
            raise ValueError(f"init_rms must be finite and ≥ 0, got {init_rms!r}")
        if not (math.isfinite(update_rms) and update_rms >= 0):
            raise ValueError(f"update_rms must be finite and ≥ 0, got {update_rms!r}")
        self._square = init_rms**2
        self.update_rms = update_rms

    @property
    def rms(self) -> float:
        """The predicted weight RMS after the steps seen so far."""
        return math.sqrt(self._square)

    def update(self, lr: float, weight_decay: float) -> float:
        """Advance one step; returns the new prediction."""
        self._square = (1 - lr * weight_decay) ** 2 * self._square + (lr * self.update_rms) ** 2   # eq. (1)
        return self.rms


def averaging_horizon(lrs: Sequence[float] | np.ndarray, weight_decays: float | Sequence[float] | np.ndarray) -> float:
    """Effective averaging horizon (in steps) of the weights at the end of the schedule.

    The H with Σ over the last H steps of −log(1 − η_tλ_t) = 1, interpolated linearly within a
    step (so H is continuous in λ); ``math.inf`` when the whole schedule decays less than one
    e-folding (the initialisation is not yet forgotten).
    """
    eta, lam = _rates(lrs, weight_decays)
    decay = -np.log1p(-eta * lam)[::-1]                # most recent step first
    cumulative = np.cumsum(decay)
    k = int(np.searchsorted(cumulative, 1.0))
    if k == len(cumulative):
        return math.inf
    before = cumulative[k - 1] if k > 0 else 0.0
    return k + (1.0 - before) / decay[k]


def weight_decay_for_horizon(lrs: Sequence[float] | np.ndarray, horizon: float) -> float:
    """The constant λ that gives ``averaging_horizon(lrs, λ) == horizon`` (bisection on log λ)."""
    eta = np.asarray(lrs, dtype=np.float64)
    if not (0 < horizon <= np.count_nonzero(eta)):
        raise ValueError(f"horizon must be in (0, number of steps with η > 0 = {np.count_nonzero(eta)}], "
                         f"got {horizon!r}")
    lo, hi = 1e-300, (1 - 1e-12) / float(eta.max())      # horizon(lo) = inf; ηλ < 1 caps λ at hi
    if averaging_horizon(eta, hi) > horizon:
        raise ValueError(f"no weight decay with every η_t·λ < 1 gives a horizon as short as {horizon!r} steps "
                         f"(the shortest is {averaging_horizon(eta, hi):.4g}: the last steps' η is too small)")
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if averaging_horizon(eta, mid) > horizon:
            lo = mid
        else:
            hi = mid
        if hi / lo - 1 < 1e-13:
            break
    return math.sqrt(lo * hi)


def gaussian_spectral_norm(n: int, m: int, std: float = 1.0) -> float:
    """‖A‖₂ ≈ std·(√n + √m) for an n×m matrix of i.i.d. N(0, std²) entries."""
    if n < 0 or m < 0 or std < 0:
        raise ValueError(f"need n, m, std ≥ 0, got {n!r}, {m!r}, {std!r}")
    return std * (math.sqrt(n) + math.sqrt(m))


def cosine_schedule(peak: float, steps: int, warmup: int = 0, final: float = 0.0) -> np.ndarray:
    """η_t for t = 1..steps: linear warmup to ``peak``, then cosine decay to ``final``."""
    t = np.arange(1, steps + 1, dtype=np.float64)
    progress = np.clip((t - warmup) / max(steps - warmup, 1), 0, 1)
    lr = final + (peak - final) * 0.5 * (1 + np.cos(np.pi * progress))
    return np.where(t <= warmup, peak * t / max(warmup, 1), lr)


def wsd_schedule(peak: float, steps: int, warmup: int = 0, decay_fraction: float = 0.2,
                 final: float = 0.0) -> np.ndarray:
    """Warmup–stable–decay: warmup to ``peak``, hold, then linear decay to ``final`` over the last fraction."""
    t = np.arange(1, steps + 1, dtype=np.float64)
    start = steps * (1 - decay_fraction)
    lr = np.where(t <= start, peak, peak + (final - peak) * (t - start) / max(steps - start, 1))
    return np.where(t <= warmup, peak * t / max(warmup, 1), lr)
