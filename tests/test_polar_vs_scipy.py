"""polar() against scipy.linalg.polar in float64/complex128: the validation grid.

For every method × dtype (float32, float64, complex64, complex128) × shape × condition number ×
side, on fresh matrices with prescribed singular values (complex ones with Haar-random unitary
singular vectors), measure
  orthogonality   ‖UᴴU − I‖_F / √k      (UUᴴ for wide U; k = min(m, n))
  backward error  ‖A − UH‖_F / ‖A‖_F    (‖A − HU‖ for side="left")
  forward error   ‖U − U_scipy‖_F / √k
  H               symmetric, and positive semi-definite up to rounding.
Tolerances (justified once here, used below):
  * orthogonality and backward error are O(ε √max(m, n)) for every converged method: the
    iterative ones stop once ‖XXᵀ − I‖_F/√m ≤ 10 ε √n (polarkernels.iterate.default_tol), QDWH
    and the SVD are backward stable. Bound: 40 ε √max(m, n) (measured ≤ 7.5 ε √max(m, n), polar_express in float64).
  * forward error: perturbation theory for the polar factor gives ‖ΔU‖ ≲ ‖ΔA‖/σ_min, so a
    backward-stable method has forward error ≲ c ε κ. Bound: 40 ε κ √k + 40 ε √max(m, n)
    (measured: ≤ 14 ε κ, newton_schulz in float32; see bench/accuracy.py).
  * H is PSD to rounding: λ_min(H) ≥ −40 ε √max(m, n) ‖A‖₂.
  Complex dtypes take the same bounds with ε of their real part (complex64: float32's): a complex
  dot product of length n rounds like a real one of length 2n, a factor √2 the 40 absorbs
  (measured: see bench/accuracy.py's complex rows).
"""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

import polarkernels as pk
from matrices import conditioned

SHAPES = [(1, 1), (5, 3), (3, 5), (17, 17), (40, 23), (23, 40), (150, 120)]
# The range each method is meant for: the SVD and QDWH any κ (1e10 in float64, 1e5 in float32,
# i.e. well inside 1/ε); the polynomial iterations need ~log(κ)/log(15/8) tail steps, so they are
# meant for moderately conditioned inputs (optimizer gradients): κ ≤ 1e6 / 1e3.
CONDS = {
    ("svd", torch.float64): [1, 1e3, 1e10], ("qdwh", torch.float64): [1, 1e3, 1e10],
    ("svd", torch.float32): [1, 1e3, 1e5], ("qdwh", torch.float32): [1, 1e3, 1e5],
}
ITERATIVE_CONDS = {torch.float64: [1, 1e3, 1e6], torch.float32: [1, 1e3]}
DTYPES = [torch.float64, torch.float32, torch.complex128, torch.complex64]
METHODS = ["svd", "qdwh", "polar_express", "newton_schulz", "muon"]


def grid():
    for method in METHODS:
        for dtype in DTYPES:
            real = dtype.to_real()
            for cond in CONDS.get((method, real), ITERATIVE_CONDS[real]):
                for shape in SHAPES:
                    if shape == (1, 1) and cond != 1:
                        continue
                    yield pytest.param(method, dtype, shape, cond,
                                       id=f"{method}-{str(dtype)[6:]}-{shape[0]}x{shape[1]}-k{cond:g}")


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("method, dtype, shape, cond", list(grid()))
def test_polar_matches_scipy(method, dtype, shape, cond, side):
    m, n = shape
    k, big = min(m, n), max(m, n)
    a64 = conditioned(m, n, cond, seed=hash((method, shape, cond, side)) % 2**32, complex=dtype.is_complex)
    u_ref, _ = scipy.linalg.polar(a64, side=side)
    a = torch.from_numpy(a64).to(dtype)
    u, h = pk.polar(a, side=side, method=method)
    assert u.dtype == dtype and h.dtype == dtype
    assert u.shape == (m, n) and h.shape == ((n, n) if side == "right" else (m, m))
    eps = torch.finfo(dtype).eps
    wide = torch.complex128 if dtype.is_complex else torch.float64
    u, h, a = u.to(wide), h.to(wide), a.to(wide)

    gram = u.mH @ u if m >= n else u @ u.mH
    ortho = float(torch.linalg.matrix_norm(gram - torch.eye(k, dtype=wide))) / math.sqrt(k)
    assert ortho <= 40 * eps * math.sqrt(big), f"orthogonality {ortho:.2e}"

    recon = u @ h if side == "right" else h @ u
    backward = float(torch.linalg.matrix_norm(a - recon) / torch.linalg.matrix_norm(a))
    assert backward <= 40 * eps * math.sqrt(big), f"backward error {backward:.2e}"

    forward = float(torch.linalg.matrix_norm(u - torch.from_numpy(u_ref))) / math.sqrt(k)
    assert forward <= 40 * eps * cond * math.sqrt(k) + 40 * eps * math.sqrt(big), f"forward error {forward:.2e}"

    assert torch.equal(h, h.mH)  # Hermitian by construction
    lam_min = float(torch.linalg.eigvalsh(h).min())
    assert lam_min >= -40 * eps * math.sqrt(big) * float(torch.linalg.matrix_norm(a, 2)), f"λ_min(H) = {lam_min:.2e}"


@pytest.mark.parametrize("complex", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])
def test_batched_equals_per_matrix(method, shape, complex):
    a = torch.from_numpy(conditioned(*shape, 100.0, seed=7, batch=(2, 3), complex=complex))
    u, h = pk.polar(a, method=method)
    for i in range(2):
        for j in range(3):
            u1, h1 = pk.polar(a[i, j], method=method)
            # Same operations on the same data, but batched kernels may block/reduce differently
            # and the iteration count is shared by the batch (it stops when the worst converges):
            # agreement to a few ε·κ.
            torch.testing.assert_close(u[i, j], u1, atol=1e-12, rtol=0)
            torch.testing.assert_close(h[i, j], h1, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64], ids=str)
@pytest.mark.parametrize("method", ["polar_express", "muon", "newton_schulz", "qdwh", "svd"])
def test_orthogonalize_batched_equals_per_matrix(method, dtype):
    g = torch.randn(3, 8, 5, dtype=dtype)
    u = pk.orthogonalize(g, method=method)
    for i in range(3):
        # float32 fixed-step iteration; batched vs single matmuls may round differently: ~10 ε.
        torch.testing.assert_close(u[i], pk.orthogonalize(g[i], method=method), atol=1e-5, rtol=0)
