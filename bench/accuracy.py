"""Achieved accuracy of polar() per method and dtype against scipy.linalg.polar (float64).

    python -m bench.accuracy            # prints the Markdown table the README quotes

Over the shapes and condition numbers of tests/test_polar_vs_scipy.py, reports the worst
orthogonality ‖UᵀU − I‖_F/√k and backward error ‖A − UH‖_F/‖A‖_F, both in units of ε√max(m, n),
and the worst forward error ‖U − U_scipy‖_F/√k in units of εκ.
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


def _matrix(m: int, n: int, cond: float, rng: np.random.Generator) -> np.ndarray:
    k = min(m, n)
    p, _ = np.linalg.qr(rng.standard_normal((m, k)))
    q, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return (p * (np.geomspace(1, 1 / cond, k) if k > 1 else np.ones(1))) @ q.T


def worst_errors(method: str, dtype: torch.dtype, seed: int = 0) -> tuple[float, float, float, float]:
    """(orthogonality, backward, forward, largest κ) worst cases, in the units of the module doc."""
    rng = np.random.default_rng(seed)
    eps = torch.finfo(dtype).eps
    worst = [0.0, 0.0, 0.0]
    conds = CONDS.get(method, {}).get(dtype, ITERATIVE[dtype])
    for cond in conds:
        for m, n in SHAPES:
            a64 = _matrix(m, n, cond, rng)
            u_ref, _ = scipy.linalg.polar(a64)
            a = torch.from_numpy(a64).to(dtype)
            u, h = (t.double() for t in pk.polar(a, method=method))
            a = a.double()
            k, big = min(m, n), max(m, n)
            gram = u.mT @ u if m >= n else u @ u.mT
            ortho = float(torch.linalg.matrix_norm(gram - torch.eye(k, dtype=torch.float64))) / math.sqrt(k)
            backward = float(torch.linalg.matrix_norm(a - u @ h) / torch.linalg.matrix_norm(a))
            forward = float(torch.linalg.matrix_norm(u - torch.from_numpy(u_ref))) / math.sqrt(k)
            worst[0] = max(worst[0], ortho / (eps * math.sqrt(big)))
            worst[1] = max(worst[1], backward / (eps * math.sqrt(big)))
            worst[2] = max(worst[2], forward / (eps * cond))
    return worst[0], worst[1], worst[2], max(conds)


def main() -> None:
    print("| method | dtype | κ up to | ‖UᵀU−I‖/√k [ε√max(m,n)] | ‖A−UH‖/‖A‖ [ε√max(m,n)] | ‖U−U_scipy‖/√k [εκ] |")
    print("|---|---|---|---|---|---|")
    for method in METHODS:
        for dtype in (torch.float64, torch.float32):
            o, b, f, kmax = worst_errors(method, dtype)
            print(f"| {method} | {str(dtype)[6:]} | {kmax:.0e} | {o:.1f} | {b:.1f} | {f:.1f} |")


if __name__ == "__main__":
    main()
