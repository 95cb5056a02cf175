"""Hypothesis property tests of polar(): scaling and orthogonal invariance on random shapes."""

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import polarkernels as pk
from matrices import conditioned

METHODS = st.sampled_from(["svd", "qdwh", "polar_express", "newton_schulz"])
SHAPES = st.tuples(st.integers(1, 12), st.integers(1, 12))
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(shape=SHAPES, log_c=st.floats(-30, 30), seed=st.integers(0, 2**31), method=METHODS)
def test_scaling(shape, log_c, seed, method):
    """polar(cA) = (U, cH) for c > 0: U is scale-invariant and H scales linearly."""
    a = torch.from_numpy(conditioned(*shape, 100.0, seed=seed))
    c = 10.0**log_c
    u, h = pk.polar(a, method=method)
    uc, hc = pk.polar(a * c, method=method)
    # float64, κ = 100: both runs are backward stable, so U agrees to ~ε κ √k and H/c to ~ε ‖A‖.
    torch.testing.assert_close(uc, u, atol=1e-11, rtol=0)
    torch.testing.assert_close(hc / c, h, atol=1e-11, rtol=0)


@SETTINGS
@given(shape=SHAPES, seed=st.integers(0, 2**31), method=METHODS)
def test_left_orthogonal_invariance(shape, seed, method):
    """polar(QA) = (QU, H) for orthogonal Q."""
    m, n = shape
    a = torch.from_numpy(conditioned(m, n, 100.0, seed=seed))
    q, _ = torch.linalg.qr(torch.from_numpy(np.random.default_rng(seed).standard_normal((m, m))))
    u, h = pk.polar(a, method=method)
    uq, hq = pk.polar(q @ a, method=method)
    # same tolerance argument as above; Q adds one rounding per entry.
    torch.testing.assert_close(uq, q @ u, atol=1e-11, rtol=0)
    torch.testing.assert_close(hq, h, atol=1e-11, rtol=0)


@SETTINGS
@given(shape=SHAPES, log_c=st.floats(-30, 30), theta=st.floats(-np.pi, np.pi),
       seed=st.integers(0, 2**31), method=METHODS)
def test_complex_scaling(shape, log_c, theta, seed, method):
    """polar(cA) = (e^{iθ} U, |c| H) for complex c = |c| e^{iθ}."""
    a = torch.from_numpy(conditioned(*shape, 100.0, seed=seed, complex=True))
    c = 10.0**log_c * np.exp(1j * theta)
    u, h = pk.polar(a, method=method)
    uc, hc = pk.polar(a * c, method=method)
    # complex128, κ = 100: as in test_scaling (a complex product rounds like a real one of twice
    # the length, well inside the margin of 1e-11 ≈ 5e4 ε).
    torch.testing.assert_close(uc, u * np.exp(1j * theta), atol=1e-11, rtol=0)
    torch.testing.assert_close(hc / abs(c), h, atol=1e-11, rtol=0)


@SETTINGS
@given(shape=SHAPES, seed=st.integers(0, 2**31), method=METHODS, side=st.sampled_from(["right", "left"]))
def test_left_unitary_invariance(shape, seed, method, side):
    """polar(QA) = (QU, H) for unitary Q (side="right"; for side="left", H ↦ Q H Qᴴ)."""
    m, n = shape
    a = torch.from_numpy(conditioned(m, n, 100.0, seed=seed, complex=True))
    rng = np.random.default_rng(seed)
    q, _ = torch.linalg.qr(torch.from_numpy(rng.standard_normal((m, m)) + 1j * rng.standard_normal((m, m))))
    u, h = pk.polar(a, side=side, method=method)
    uq, hq = pk.polar(q @ a, side=side, method=method)
    # same tolerance argument as test_complex_scaling; Q adds a few roundings per entry.
    torch.testing.assert_close(uq, q @ u, atol=1e-11, rtol=0)
    torch.testing.assert_close(hq, h if side == "right" else q @ h @ q.mH, atol=1e-11, rtol=0)
