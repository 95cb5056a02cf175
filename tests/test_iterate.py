"""The loop: normalisation safety, orientation contract, convergence and stall detection."""

import math

import numpy as np
import pytest
import torch

from matrices import conditioned, with_singular_values
from polarkernels import iterate, schedules
from polarkernels.backends import torch_ref


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 1e30), (torch.float32, 1e-30), (torch.float32, 3e38),
                                          (torch.bfloat16, 1e35), (torch.float16, 6e4), (torch.float16, 1e-7),
                                          (torch.float64, 1e300), (torch.float64, 1e-300)])
def test_frobenius_normalize_is_overflow_safe(dtype, scale):
    a = (torch.rand(3, 5, 7, dtype=torch.float64) * 2 - 1)
    x = iterate.frobenius_normalize((a * scale).to(dtype), safety=1.0)
    assert x.dtype == dtype and torch.isfinite(x).all()
    norms = torch.linalg.matrix_norm(x.double())
    # ‖X₀‖_F = 1 up to the rounding of X₀ to the dtype (each entry within ε/2 relative),
    # plus the input's own rounding when scale puts entries in the subnormal range of fp16.
    tol = 2 * torch.finfo(dtype).eps + (1e-2 if (dtype == torch.float16 and scale < 1e-4) else 0)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=tol, rtol=0)


def test_frobenius_normalize_zero_and_safety():
    assert torch.equal(iterate.frobenius_normalize(torch.zeros(2, 3, 4), 1.02), torch.zeros(2, 3, 4))
    x = iterate.frobenius_normalize(torch.randn(4, 6, dtype=torch.float64), 1.02)
    assert math.isclose(float(torch.linalg.matrix_norm(x)), 1 / 1.02, rel_tol=1e-15)


def test_run_requires_wide_orientation():
    with pytest.raises(ValueError, match="wide orientation"):
        iterate.run(torch.randn(5, 3), schedules.fixed_schedule("muon", 1), torch_ref)


def test_fixed_schedule_runs_exactly_its_steps_and_matches_the_formula():
    x0 = iterate.frobenius_normalize(torch.randn(4, 9, dtype=torch.float64))
    res = iterate.run(x0, schedules.fixed_schedule("polar_express", 5), torch_ref)
    assert res.num_steps == 5 and res.converged is None
    x = x0
    for a, b, c in schedules.POLAR_EXPRESS_5:  # eq. (1) written out
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    # both paths compute the same products in float64; only summation order may differ
    torch.testing.assert_close(res.u, x, atol=1e-13, rtol=0)


def test_muon_schedule_does_not_converge_but_lands_in_its_band():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(with_singular_values(64, 64, np.geomspace(1, 1e-3, 64), rng=rng))
    res = iterate.run(iterate.frobenius_normalize(a), schedules.fixed_schedule("muon", 5), torch_ref)
    sv = torch.linalg.svdvals(res.u)
    # Muon's quintic maps σ into roughly [0.5, 1.2] (Keller Jordan's note; torch.optim.Muon doc)
    # once σ(X₀) ≥ ~1e-3/‖A‖_F·… after 5 steps the smallest here are still climbing: check the band top.
    assert float(sv.max()) < 1.25 and float(sv.min()) > 0


@pytest.mark.parametrize("method", schedules.ITERATIVE_METHODS)
def test_convergent_schedule_reaches_tolerance(method):
    a = torch.from_numpy(conditioned(30, 50, 1e4, seed=1))
    sched = schedules.convergent_schedule(method)
    res = iterate.run(iterate.frobenius_normalize(a, sched.norm_safety), sched, torch_ref)
    assert res.converged is True
    r = float(torch.linalg.matrix_norm(res.u @ res.u.T - torch.eye(30, dtype=torch.float64))) / math.sqrt(30)
    assert r <= iterate.default_tol(torch.float64, 50)
    # κ = 1e4 after Frobenius scaling: σ_min(X₀) ≈ 1e-4/√30; the quintic tail multiplies small σ by
    # 15/8 a step, so ~log(5e5)/log(1.875) ≈ 21 steps bound every schedule here.
    assert res.num_steps <= len(sched.coeffs) + 25


def test_rank_deficient_input_stalls_instead_of_spinning():
    rng = np.random.default_rng(2)
    a = torch.from_numpy(with_singular_values(6, 10, np.array([1.0, 0.5, 0.2, 0, 0, 0]), rng=rng))
    sched = schedules.convergent_schedule("newton_schulz")
    res = iterate.run(iterate.frobenius_normalize(a), sched, torch_ref)
    assert res.converged is False
    assert res.num_steps < iterate.default_max_steps(torch.float64)  # stopped by the stall test
    sv = torch.linalg.svdvals(res.u)
    torch.testing.assert_close(sv, torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.float64), atol=1e-12, rtol=0)


def test_max_steps_caps_the_tail():
    a = torch.from_numpy(conditioned(8, 8, 1e6, seed=3))
    sched = schedules.convergent_schedule("newton_schulz")
    res = iterate.run(iterate.frobenius_normalize(a), sched, torch_ref, max_steps=3)
    assert res.num_steps == 3 and res.converged is False
