"""Achieved accuracy of polar() per method and dtype against scipy.linalg.polar (float64/complex128).

    python -m bench.accuracy            # prints the Markdown table the README quotes

Over the shapes and condition numbers of tests/test_polar_vs_scipy.py, reports the worst
orthogonality ‖UᴴU − I‖_F/√k and backward error ‖A − UH‖_F/‖A‖_F, both in units of ε√max(m, n),
and the worst forward error ‖U − U_scipy‖_F/√k in units of εκ (ε of the real part's dtype for
complex64/complex128; complex inputs have Haar-random unitary singular vectors).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch

import polarkernels as pk

SHAPES = [(1, 1), (5, 3), (3, 5), (17, 17), (40, 23), (23, 40), (150, 120)]
CONDS = {"svd": {torch.float64: [1, 1e3, 1e10], torch.float32: [1, 1e3, 1e5]},
         "qdwh": {torch.float64: [1, 1e3, 1e10], torch.float32: [1, 1e3, 1e5]}}
ITERATIVE = {torch.float64: [1, 1e3, 1e6], torch.float32: [1, 1e3]}
METHODS = ["svd", "qdwh", "polar_express", "newton_schulz", "muon"]
DTYPES = [torch.float64, torch.float32, torch.complex128, torch.complex64]


def _gaussian(rng: np.random.Generator, shape: tuple[int, int], complex: bool) -> np.ndarray:
    g = rng.standard_normal(shape)
    return g + 1j * rng.standard_normal(shape) if complex else g


def _matrix(m: int, n: int, cond: float, rng: np.random.Generator, complex: bool = False) -> np.ndarray:
    k = min(m, n)
    p, _ = np.linalg.qr(_gaussian(rng, (m, k), complex))
    q, _ = np.linalg.qr(_gaussian(rng, (n, k), complex))
    return (p * (np.geomspace(1, 1 / cond, k) if k > 1 else np.ones(1))) @ q.conj().T


def worst_errors(method: str, dtype: torch.dtype, seed: int = 0) -> tuple[float, float, float, float]:
    """(orthogonality, backward, forward, largest κ) worst cases, in the units of the module doc."""
    rng = np.random.default_rng(seed)
    eps = torch.finfo(dtype).eps
    wide = torch.complex128 if dtype.is_complex else torch.float64
    worst = [0.0, 0.0, 0.0]
    conds = CONDS.get(method, {}).get(dtype.to_real(), ITERATIVE[dtype.to_real()])
    for cond in conds:
        for m, n in SHAPES:
            a64 = _matrix(m, n, cond, rng, dtype.is_complex)
            u_ref, _ = scipy.linalg.polar(a64)
            a = torch.from_numpy(a64).to(dtype)
            u, h = (t.to(wide) for t in pk.polar(a, method=method))
            a = a.to(wide)
            k, big = min(m, n), max(m, n)
            gram = u.mH @ u if m >= n else u @ u.mH
            ortho = float(torch.linalg.matrix_norm(gram - torch.eye(k, dtype=wide))) / math.sqrt(k)
            backward = float(torch.linalg.matrix_norm(a - u @ h) / torch.linalg.matrix_norm(a))
            forward = float(torch.linalg.matrix_norm(u - torch.from_numpy(u_ref))) / math.sqrt(k)
            worst[0] = max(worst[0], ortho / (eps * math.sqrt(big)))
            worst[1] = max(worst[1], backward / (eps * math.sqrt(big)))
            worst[2] = max(worst[2], forward / (eps * cond))
    return worst[0], worst[1], worst[2], max(conds)


def main() -> None:
    print("| method | dtype | κ up to | ‖UᴴU−I‖/√k [ε√max(m,n)] | ‖A−UH‖/‖A‖ [ε√max(m,n)] | ‖U−U_scipy‖/√k [εκ] |")
    print("|---|---|---|---|---|---|")
    for method in METHODS:
        for dtype in DTYPES:
            o, b, f, kmax = worst_errors(method, dtype)
            print(f"| {method} | {str(dtype)[6:]} | {kmax:.0e} | {o:.1f} | {b:.1f} | {f:.1f} |")


if __name__ == "__main__":
    main()
