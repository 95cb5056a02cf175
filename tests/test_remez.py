"""The Polar Express generator: published tables, minimax properties, composition, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq

from polarkernels.remez import optimal_quintic, polar_express_schedule
from polarkernels.schedules import NEWTON_SCHULZ_QUINTIC, POLAR_EXPRESS_5, POLAR_EXPRESS_8_UNSCALED

EPS = np.finfo(np.float64).eps
#: The cushion in the paper's reference code; test_cushion_of_the_8_step_table re-derives it.
PAPER_CUSHION = 0.02407327424182761


def _compose(table, x: np.ndarray) -> np.ndarray:
    """σ ↦ p_K(… p_1(σ)): what the iteration does to each singular value."""
    for a, b, c in table:
        y = x * x
        x = x * (a + y * (b + y * c))
    return x


def _band_tolerance(table, l0: float) -> float:
    """First-order round-off bound on how far P_K can stray past its band [ℓ_K, 2 − ℓ_K].

    Rounding in step k (its coefficients, ℓ_k, evaluating p) is at most eps·Σ|coeff·σ^j| at the
    interval's ends; an excess already there is multiplied by the step's slope |p'| at the end
    it sits on (up to ~28 for the steep first steps without a cushion). Interior points map
    inside the band, so only the ends carry an excess.
    """
    tol, ends = 0.0, np.array([l0, 1.0])
    for a, b, c in table:
        slope = np.abs(a + 3 * b * ends**2 + 5 * c * ends**4).max()
        size = (abs(a) * ends + abs(b) * ends**3 + abs(c) * ends**5).max()
        tol = slope * tol + 8 * EPS * size
        lk = _compose([(a, b, c)], ends[:1])[0]
        ends = np.array([lk, 2.0 - lk])
    return tol


def _max_abs_diff(table, expected) -> np.ndarray:
    """Per-step max |Δ coefficient|."""
    return np.abs(np.array(table) - np.array(expected)).max(axis=1)


# --- the published tables (issue: reproduce both to 1e-6) -------------------------------------

def test_reproduces_polar_express_5():
    table = polar_express_schedule(1e-3, 5, safety=0.02, cushion=0.02)
    # Measured max |Δ| = 6.4e-14 (coefficients up to 22.5: ~3 ulps). 1e-10 allows another
    # LAPACK's rounding in the 4×4 solves while staying 1e4 below the 1e-6.
    assert _max_abs_diff(table, POLAR_EXPRESS_5).max() <= 1e-10


def test_reproduces_polar_express_8_unscaled():
    diff = _max_abs_diff(polar_express_schedule(1e-3, 8, cushion=PAPER_CUSHION), POLAR_EXPRESS_8_UNSCALED)
    # Steps 1–6: measured max |Δ| = 1.8e-14 (a few ulps); 1e-10 as above.
    assert diff[:6].max() <= 1e-10
    # Step 7 (ℓ/u = 1 − 2.4e-3): measured 1.8e-11, all of it the table's: against a 60-digit
    # Remez on the same interval ours is off by 4e-16 and the table by 1.8e-11 (its monomial
    # 4×4 system loses digits to cancellation as ℓ/u → 1). Step 8 (ℓ/u = 1 − 2.1e-9): both are
    # exactly (15/8, −10/8, 3/8), Δ = 0.
    assert diff[6] <= 1e-9
    assert tuple(polar_express_schedule(1e-3, 8, cushion=PAPER_CUSHION)[7]) == NEWTON_SCHULZ_QUINTIC


def test_cushion_of_the_8_step_table():
    """The cushion is not printed with the table; root-finding on its first coefficient finds it."""
    first = POLAR_EXPRESS_8_UNSCALED[0][0]
    cushion = brentq(lambda cu: polar_express_schedule(1e-3, 1, cushion=cu)[0][0] - first,
                     0.02, 0.03, xtol=1e-16)
    # Measured 0.024073274241826894: 7e-16 from the reference code's value, as close as one
    # coefficient (printed to ~1e-15 relative, da/dcushion ≈ −8) can pin it.
    assert cushion == pytest.approx(PAPER_CUSHION, abs=1e-13)
    # The round 0.024 is not it: it misses step 1 in the 4th significant digit (Δ = 4.7e-3).
    assert _max_abs_diff(polar_express_schedule(1e-3, 8, cushion=0.024), POLAR_EXPRESS_8_UNSCALED)[0] > 1e-3


# --- one step: the minimax quintic ---------------------------------------------------------------

def _remez_60_digits(lam: float) -> tuple[float, float, float]:
    """The paper's monomial Remez exchange in 60-digit arithmetic: the reference for float64."""
    mp = pytest.importorskip("mpmath")
    with mp.workdps(60):
        lam = mp.mpf(lam)
        q, r = (3 * lam + 1) / 4, (lam + 3) / 4
        for _ in range(100):
            rows = [[x, x**3, x**5, s] for x, s in zip((lam, q, r, mp.mpf(1)), (1, -1, 1, -1))]
            a, b, c, _ = mp.lu_solve(mp.matrix(rows), mp.matrix([1, 1, 1, 1]))
            d = mp.sqrt(9 * b * b - 20 * a * c)  # p'(x) = 0 ⇔ 5c x⁴ + 3b x² + a = 0
            q_new, r_new = mp.sqrt((-3 * b - d) / (10 * c)), mp.sqrt((-3 * b + d) / (10 * c))
            moved = max(abs(q_new - q), abs(r_new - r))
            q, r = q_new, r_new
            if moved < mp.mpf(10) ** -50:
                return float(a), float(b), float(c)
    raise AssertionError(f"60-digit Remez did not converge for lam={lam}")


@pytest.mark.parametrize("lam", [1e-9, 1e-3, 0.02, 0.5, 1 - 1e-3, 1 - 1e-6], ids=lambda v: f"lam={v:.6g}")
def test_optimal_quintic_matches_60_digit_remez(lam):
    got = np.array(optimal_quintic(lam, 1.0))
    want = np.array(_remez_60_digits(lam))
    # Measured ≤ 5.2 ulps relative over 120 random λ ∈ [1e-8, 1 − 1e-10]; allow 32.
    np.testing.assert_allclose(got, want, rtol=32 * EPS, atol=0)


@settings(max_examples=200, deadline=None)
@given(log_ratio=st.floats(-6.0, math.log10(0.9)), log_u=st.floats(-2.0, 2.0))
def test_optimal_quintic_equioscillates(log_ratio, log_u):
    u = 10.0**log_u
    l = u * 10.0**log_ratio
    a, b, c = optimal_quintic(l, u)
    assert a > 0 and b < 0 and c > 0
    # The interior extrema: p'(x) = a + 3b x² + 5c x⁴ = 0.
    d = math.sqrt(9 * b * b - 20 * a * c)
    q, r = math.sqrt((-3 * b - d) / (10 * c)), math.sqrt((-3 * b + d) / (10 * c))
    assert l < q < r < u
    x = np.array([l, q, r, u])
    err = a * x + b * x**3 + c * x**5 - 1.0
    # Alternation (Chebyshev): signs −, +, −, + at ℓ, q, r, u ...
    assert np.array_equal(np.sign(err), [-1.0, 1.0, -1.0, 1.0]), err
    # ... with equal magnitudes up to the round-off of evaluating p, eps·(|a|u + |b|u³ + |c|u⁵)
    # (measured spread ≤ 1.9 of those over 2000 random intervals; allow 8).
    scale = abs(a) * u + abs(b) * u**3 + abs(c) * u**5
    e = np.abs(err).max()
    assert e - np.abs(err).min() <= 8 * EPS * scale
    # p maps [ℓ, u] into [1 − E, 1 + E], on a dense grid, to the same round-off.
    grid = np.linspace(l, u, 2001)
    assert np.abs(a * grid + b * grid**3 + c * grid**5 - 1.0).max() <= e + 8 * EPS * scale


def test_optimal_quintic_limit_is_newton_schulz():
    assert optimal_quintic(1.0, 1.0) == NEWTON_SCHULZ_QUINTIC
    assert optimal_quintic(3.0, 3.0) == pytest.approx((15 / 8 / 3, -10 / 8 / 27, 3 / 8 / 243), rel=4 * EPS)
    # Just above the switch to the closed form (η = (u − l)/(u + l) = 1e-9) the Remez solution
    # equals the limit, Newton–Schulz scaled to the midpoint m, up to O(η²) ≈ 1e-18 < round-off.
    l, u = 1.0 - 2.004e-9, 1.0
    m = (l + u) / 2
    limit = (15 / 8 / m, -10 / 8 / m**3, 3 / 8 / m**5)
    np.testing.assert_allclose(optimal_quintic(l, u), limit, rtol=8 * EPS, atol=0)


# --- the composition ---------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(log_l0=st.floats(-6.0, -0.5), safety=st.sampled_from([0.0, 0.01, 0.02]),
       cushion=st.sampled_from([0.0, 0.02, PAPER_CUSHION, 0.1]))
def test_composition_band_shrinks(log_l0, safety, cushion):
    """After k steps, P_k maps [ℓ₀, 1] into [ℓ_k, 2 − ℓ_k] with ℓ_k = P_k(ℓ₀) increasing in k."""
    l0 = 10.0**log_l0
    x = np.concatenate([np.geomspace(l0, 1.0, 2001), np.linspace(l0, 1.0, 2001)])
    lows = []
    for k in range(1, 9):
        table = polar_express_schedule(l0, k, safety=safety, cushion=cushion)
        image = _compose(table, x)
        lk = _compose(table, np.array([l0]))[0]
        # Round-off only (the bound is derived in _band_tolerance); measured excess ≤ 0.11 of it
        # over 500 random cases. A safety factor > 0 leaves a margin instead, as intended.
        tol = _band_tolerance(table, l0)
        assert image.min() >= lk - tol
        assert image.max() <= 2.0 - lk + tol
        lows.append(lk)
    # The band's half-width 1 − ℓ_k narrows at every step until it reaches round-off.
    gaps = 1.0 - np.array(lows)
    assert np.all((np.diff(gaps) < 0) | (np.abs(gaps[1:]) <= 1e-13)), gaps


def test_published_settings_converge_in_8_steps():
    table = polar_express_schedule(1e-3, 8, safety=0.02, cushion=0.02)
    # From ℓ₀ = 1e-3 the band 1 − ℓ_k goes 0.99, 0.97, 0.87, 0.58, 0.14, 2.3e-3, 6.1e-8, 2.3e-14
    # (measured): 8 steps reach float64 round-off.
    gap = 1.0 - _compose(table, np.array([1e-3]))[0]
    assert 0.0 <= gap <= 1e-13


def test_published_5_step_band():
    # The 5-step table maps [1e-3, 1] into [ℓ₅, 2 − ℓ₅] with ℓ₅ = 0.8589 (measured 0.858873):
    # from any σ ∈ [1e-3, 1] the singular values end within ±0.142 of 1.
    lk = _compose(POLAR_EXPRESS_5, np.array([1e-3]))[0]
    assert lk == pytest.approx(0.858873, abs=1e-6)
    image = _compose(POLAR_EXPRESS_5, np.geomspace(1e-3, 1.0, 4001))
    tol = _band_tolerance(POLAR_EXPRESS_5, 1e-3)  # round-off, as in test_composition_band_shrinks
    assert image.min() >= lk - tol and image.max() <= 2.0 - lk + tol


def test_schedule_prefix_and_scale():
    long, short = polar_express_schedule(1e-4, 6, safety=0.02, cushion=0.02), polar_express_schedule(
        1e-4, 4, safety=0.02, cushion=0.02)
    # Only the last step differs (it carries no safety factor): the steps before are identical.
    assert long[:3] == short[:3]
    # Scaling σ by t: the first step absorbs 1/t, the rest are unchanged.
    t = 7.0
    scaled = polar_express_schedule(1e-4 * t, 6, u=t, safety=0.02, cushion=0.02)
    # (ℓ₀·t and the midpoint differ from exact scalings by an ulp each: measured 4 eps.)
    np.testing.assert_allclose(scaled[0], np.array(long[0]) / [t, t**3, t**5], rtol=32 * EPS)
    # ℓ_1 agrees only to round-off, and later steps are smooth in ℓ: measured Δ ≤ 1e-14.
    np.testing.assert_allclose(scaled[1:], long[1:], rtol=1e-12)


def test_schedule_returns_fresh_lists():
    assert polar_express_schedule(1e-3, 0) == []
    table = polar_express_schedule(1e-3, 3)
    table.clear()  # the cache must not hand out this list again
    assert len(polar_express_schedule(1e-3, 3)) == 3


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("l, u", [(0.0, 1.0), (-1e-3, 1.0), (2.0, 1.0), (math.nan, 1.0), (1e-3, math.inf)],
                         ids=["l=0", "l<0", "l>u", "l=nan", "u=inf"])
def test_bad_interval(l, u):
    with pytest.raises(ValueError, match="0 < l <= u"):
        optimal_quintic(l, u)
    with pytest.raises(ValueError, match="0 < l <= u"):
        polar_express_schedule(l, 3, u=u)


@pytest.mark.parametrize("l, u", [(1e-3, 1e70), (1e-80, 1e-70)], ids=["huge", "tiny"])
def test_unrepresentable_interval(l, u):
    # c = (3/8)/m⁵ and friends would overflow or underflow float64.
    with pytest.raises(ValueError, match="rescale the interval"):
        optimal_quintic(l, u)


def test_tiny_lower_end_is_the_l0_limit():
    # For l/u below ~1e-16, η = (u − l)/(u + l) rounds to 1 and the Remez runs on [0, 1]: the
    # l → 0 limit, which the answers for small l approach (they move by ≈ 44·l).
    np.testing.assert_allclose(optimal_quintic(1e-300, 1.0), optimal_quintic(1e-15, 1.0), rtol=1e-13)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=-1), "steps"),
    (dict(steps=2.0), "steps"),
    (dict(steps=True), "steps"),
    (dict(steps=3, safety=-0.01), "safety"),
    (dict(steps=3, safety=math.nan), "safety"),
    (dict(steps=3, cushion=-0.1), "cushion"),
    (dict(steps=3, cushion=1.0), "cushion"),
    (dict(steps=3, cushion=math.nan), "cushion"),
], ids=["steps<0", "steps-float", "steps-bool", "safety<0", "safety-nan", "cushion<0", "cushion=1",
        "cushion-nan"])
def test_bad_schedule_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        polar_express_schedule(1e-3, **kwargs)
