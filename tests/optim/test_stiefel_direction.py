"""The Stiefel direction solvers against their equations, each other, the square closed form and
a brute-force maximisation over the tangent space."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch

from polarkernels import polar
from polarkernels.optim.stiefel_direction import (SOLVERS, skew, square_direction, stiefel_direction, sym,
                                                  tangent_residual)

# Tall with m ≥ 2n (where both solvers converge fast), one wide (solved as its transpose).
SHAPES = [(8, 4), (12, 3), (16, 8), (6, 2), (3, 9)]
F64 = torch.float64


def point_and_gradient(m: int, n: int, seed: int, batch: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = polar(torch.randn(*batch, m, n, generator=gen, dtype=F64))[0]
    return w, torch.randn(*batch, m, n, generator=gen, dtype=F64)


def tall(w: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (w, x) if w.shape[-2] >= w.shape[-1] else (w.mT, x.mT)


def spectral(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(x, ord=2)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("seed", [0, 1])
def test_feasible_and_converged(solver, shape, seed):
    w, g = point_and_gradient(*shape, seed)
    res = stiefel_direction(w, g, solver=solver, tol=1e-8, max_iter=2000)
    assert res.converged, (res.iterations, float(res.residual), float(res.gap))
    assert float(res.residual) <= 1e-8 and 0 <= float(res.gap) <= 1e-8
    wt, phi = tall(w, res.direction)
    # The returned Φ is projected onto the tangent space and scaled: both hold to float64
    # rounding of a few products of O(1) matrices (~10 ε).
    assert float(tangent_residual(wt, phi)) < 1e-14
    assert abs(float(spectral(phi)) - 1) < 1e-13
    assert float((g * res.direction).sum()) > 0                  # an ascent direction of tr(GᵀΦ)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_solvers_agree(shape):
    w, g = point_and_gradient(*shape, seed=3)
    a, *others = [stiefel_direction(w, g, solver=solver, tol=1e-11, max_iter=3000) for solver in SOLVERS]
    for b in [a, *others]:
        assert b.converged
        # All are within a 1e-11 relative gap of the same (here unique: G + WX has full rank)
        # maximiser; the objective is flat to second order there, so Φ agrees to ~√gap ≈ 3e-6.
        assert float(torch.linalg.matrix_norm(a.direction - b.direction)) < 2e-5
        assert abs(float((g * a.direction).sum() - (g * b.direction).sum())) < 1e-9 * float(torch.linalg.matrix_norm(g))


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_square_closed_form(n):
    w, g = point_and_gradient(n, n, seed=n)
    phi = square_direction(w, g, method="svd")
    assert float(tangent_residual(w, phi)) < 1e-14
    assert abs(float(spectral(phi)) - 1) < 1e-13
    for solver in ("fixed_point", "dual_ascent"):
        # X₀ = −sym(WᵀG) is exact for square W: the dual solvers stop after their first polar factor.
        res = stiefel_direction(w, g, solver=solver, tol=1e-10)
        assert res.iterations == 1
        assert float(torch.linalg.matrix_norm(res.direction - phi)) < 1e-12
    res = stiefel_direction(w, g, solver="admm", tol=1e-12, max_iter=2000)
    assert res.converged                                       # a 1e-12 gap: Φ within ~√gap = 1e-6
    assert float(torch.linalg.matrix_norm(res.direction - phi)) < 1e-5
    if n % 2 == 0:  # skew(WᵀG) of even order is invertible: msign is unique, eq. (4)'s two forms agree
        other = polar(g - w @ sym(w.mT @ g))[0]
        assert float(torch.linalg.matrix_norm(other - w @ polar(skew(w.mT @ g))[0])) < 1e-12
        assert float(torch.linalg.matrix_norm(other - phi)) < 1e-12


def tangent_basis(w: np.ndarray) -> np.ndarray:
    """An orthonormal basis (as flattened m×n matrices) of {Φ : WᵀΦ + ΦᵀW = 0}: WΩ (Ω skew) ⊕ W⊥K."""
    m, n = w.shape
    q = np.linalg.qr(np.concatenate([w, np.eye(m)], axis=1))[0][:, :m]
    w_perp = q[:, n:]
    basis = []
    for i in range(n):
        for j in range(i + 1, n):
            omega = np.zeros((n, n))
            omega[i, j], omega[j, i] = 1 / np.sqrt(2), -1 / np.sqrt(2)
            basis.append((w @ omega).ravel())
    for i in range(m - n):
        for j in range(n):
            k = np.zeros((m - n, n))
            k[i, j] = 1
            basis.append((w_perp @ k).ravel())
    return np.array(basis)


def brute_force_max(w: torch.Tensor, g: torch.Tensor, near: torch.Tensor | None = None) -> float:
    """max tr(GᵀΦ)/‖Φ‖₂ over the tangent space: 5000 random directions, then Nelder–Mead from 3
    random starts (and, given ``near``, from 2 perturbations of that tangent matrix)."""
    m, n = w.shape
    wn, gn = w.numpy(), g.numpy()
    basis = tangent_basis(wn)

    def values(theta: np.ndarray) -> np.ndarray:
        phi = (np.atleast_2d(theta) @ basis).reshape(-1, m, n)
        return (gn * phi).sum((-2, -1)) / np.linalg.svd(phi, compute_uv=False)[:, 0]

    rng = np.random.default_rng(0)
    search = values(rng.standard_normal((5000, len(basis))))
    starts = rng.standard_normal((3, len(basis)))
    if near is not None:                                        # coordinates of ``near`` in the basis
        theta = basis @ near.numpy().ravel()
        starts = np.concatenate([starts, theta + 0.05 * rng.standard_normal((2, len(basis)))])
    local = [-scipy.optimize.minimize(lambda t: -values(t)[0], t0, method="Nelder-Mead",
                                      options=dict(xatol=1e-10, fatol=1e-13, maxiter=3000)).fun for t0 in starts]
    return max(search.max(), *local)


@pytest.mark.parametrize("shape", [(4, 2), (5, 2), (6, 2)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_optimal_against_brute_force(shape):
    """Random search and Nelder–Mead over the tangent space never beat the solvers' value, and
    (in the 5-dimensional tangent space of 4×2, where Nelder–Mead is reliable) reach it."""
    w, g = point_and_gradient(*shape, seed=11)
    solves = [stiefel_direction(w, g, solver=solver, tol=1e-10, max_iter=3000) for solver in SOLVERS]
    assert all(res.converged for res in solves)
    best = min(float((g * res.direction).sum()) for res in solves)
    # Feasible points cannot beat the maximum (1e-9: the solvers' 1e-10 relative gap on a value
    # of ~3, plus rounding). Nelder–Mead started near the solver's Φ cannot climb above it either.
    found = brute_force_max(w, g, near=solves[0].direction)
    assert found <= best + 1e-9
    if shape == (4, 2):  # Nelder–Mead from random starts finds the maximum to ~1e-7
        assert found >= best - 1e-7


def test_rank_deficient_optimum():
    """3×2: the dual optimum makes G + WX rank deficient; the dual solvers stall (see the module
    docstring) but their reported gap is an honest bound, and ADMM converges to the maximum."""
    w, g = point_and_gradient(3, 2, seed=11)
    found = brute_force_max(w, g)
    res = stiefel_direction(w, g, solver="admm", tol=1e-10, max_iter=2000)
    assert res.converged
    # Nelder–Mead in the 3-dimensional tangent space reaches the maximum to ~1e-9.
    assert float((g * res.direction).sum()) == pytest.approx(found, abs=1e-7)
    for solver in ("fixed_point", "dual_ascent"):
        res = stiefel_direction(w, g, solver=solver, tol=1e-10, max_iter=200)
        assert not res.converged
        value = float((g * res.direction).sum())
        dual = value / (1 - float(res.gap))                     # D(X) ≥ the maximum (weak duality)
        assert value <= found + 1e-9 and found <= dual + 1e-9


def test_tangent_basis():
    w, _ = point_and_gradient(5, 2, seed=0)
    basis = torch.from_numpy(tangent_basis(w.numpy())).reshape(-1, 5, 2)
    assert basis.shape[0] == 1 + 3 * 2                         # n(n−1)/2 + (m−n)n = dim of the tangent space
    assert float(tangent_residual(w, basis).max()) < 1e-15
    gram = torch.einsum("aij,bij->ab", basis, basis)
    assert float((gram - torch.eye(len(gram), dtype=F64)).abs().max()) < 1e-14


@pytest.mark.parametrize("solver", SOLVERS)
def test_batched_equals_per_matrix(solver):
    w, g = point_and_gradient(10, 4, seed=5, batch=(2, 3))
    batched = stiefel_direction(w, g, solver=solver, tol=1e-10, max_iter=3000)
    for idx in np.ndindex(2, 3):
        one = stiefel_direction(w[idx], g[idx], solver=solver, tol=1e-10, max_iter=3000)
        # The batch runs until its slowest matrix converges, so the others take extra iterations
        # from within a 1e-10 gap of the optimum: they agree to ~√gap.
        assert float(torch.linalg.matrix_norm(batched.direction[idx] - one.direction)) < 1e-4
        assert abs(float((g[idx] * (batched.direction[idx] - one.direction)).sum())) < 1e-9


@pytest.mark.parametrize("solver", SOLVERS)
def test_warm_start_and_scale_invariance(solver):
    w, g = point_and_gradient(12, 4, seed=7)
    first = stiefel_direction(w, g, solver=solver, tol=1e-10, max_iter=2000)
    again = stiefel_direction(w, 5.0 * g, solver=solver, tol=1e-9, multiplier=first.multiplier)
    assert again.iterations == 1                               # the state is in units of G/‖G‖_RMS
    assert float(torch.linalg.matrix_norm(again.direction - first.direction)) < 1e-8


def test_zero_gradient_gives_zero_direction():
    w, g = point_and_gradient(6, 3, seed=2, batch=(2,))
    g[0] = 0
    res = stiefel_direction(w, g, tol=1e-10, max_iter=1000)
    assert torch.equal(res.direction[0], torch.zeros_like(g[0]))
    assert abs(float(spectral(res.direction[1])) - 1) < 1e-13


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(solver="newton"), ValueError, "solver must be one of"),
    (dict(tol=0.0), ValueError, "tol must be a positive number, got 0.0"),
    (dict(max_iter=0), ValueError, "max_iter must be a positive int, got 0"),
    (dict(step_size=-1.0), ValueError, "step_size must be a positive number, got -1.0"),
    (dict(multiplier=torch.zeros(3, 3, dtype=F64)), ValueError, r"multiplier must have shape \(2, 2\)"),
])
def test_bad_arguments(kwargs, error, match):
    w, g = point_and_gradient(4, 2, seed=0)
    with pytest.raises(error, match=match):
        stiefel_direction(w, g, **kwargs)


def test_bad_inputs():
    w, g = point_and_gradient(4, 2, seed=0)
    with pytest.raises(ValueError, match="of one shape"):
        stiefel_direction(w, g[:3])
    with pytest.raises(TypeError, match="float32/float64"):
        stiefel_direction(w.bfloat16(), g.bfloat16())
    with pytest.raises(ValueError, match="square"):
        square_direction(w, g)
