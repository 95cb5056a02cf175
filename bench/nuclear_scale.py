"""How well PolarGrad's ν = ⟨X, U⟩ estimates ‖X‖_* for each polar method, step count and dtype.

    python -m bench.nuclear_scale            # the table in bench/RESULTS.md ("PolarGrad's ν")

With an exact polar factor, ⟨X, U⟩ = Σσᵢ = ‖X‖_*. With U = p(X) from a fixed number of steps,
⟨X, U⟩ = Σσᵢ p(σᵢ/‖X‖) (in exact arithmetic): the error is the σ-weighted mean of p − 1, so a
method whose p stays off 1 (Muon's quintic lands in ≈[0.7, 1.2]) or that has not yet lifted the
small σᵢ (too few steps) biases ν. Inputs: spectra a momentum matrix can have (Gaussian,
κ ≈ 10³ for square; a power law σᵢ ∝ i⁻¹; a decaying exponential σᵢ = e^{−i/8}; flat, all σᵢ
equal; rank 1 and rank 4 with σ within 10%), square and 1:4, several seeds. Flat and low-rank
spectra put all the mass at one σ, where p − 1 is largest: they set the worst case. ν is
computed as the optimizer computes it (:func:`polarkernels.optim.polargrad.nuclear_scale`); the
reference ‖X‖_* in float64 by SVD.
"""

from __future__ import annotations

import argparse
import json

import torch

import polarkernels
from polarkernels.optim.polargrad import nuclear_scale

CONFIGS = [("polar_express", 5), ("polar_express", 6), ("polar_express", 8), ("muon", 5), ("muon", 10),
           ("newton_schulz", 5), ("newton_schulz", 10), ("qdwh", 4), ("svd", 0)]
SPECTRA = ("gaussian", "power", "exponential", "flat", "rank1", "rank4")
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
SHAPES = [(256, 256), (128, 512)]


def spectrum_matrix(kind: str, m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """A float32 m×n matrix with one of :data:`SPECTRA`."""
    g = torch.randn(m, n, generator=gen, dtype=torch.float64)
    if kind == "gaussian":
        return g.float()
    p, _, qh = torch.linalg.svd(g, full_matrices=False)
    i = torch.arange(1, min(m, n) + 1, dtype=torch.float64)
    if kind == "power":
        sigma = 1.0 / i
    elif kind == "exponential":
        sigma = torch.exp(-i / 8)
    elif kind == "flat":
        sigma = torch.ones_like(i)
    else:                                                     # "rank<r>"
        jitter = 1 + 0.1 * torch.rand(i.shape, generator=gen, dtype=torch.float64)
        sigma = (i <= int(kind.removeprefix("rank"))) * jitter
    return ((p * sigma) @ qh).float()


def relative_errors(method: str, steps: int, dtype: torch.dtype, seeds: int) -> list[float]:
    """ν/‖X‖_* − 1 over every spectrum, shape and seed."""
    out = []
    for kind in SPECTRA:
        for m, n in SHAPES:
            for seed in range(seeds):
                x = spectrum_matrix(kind, m, n, torch.Generator().manual_seed(seed))
                u = polarkernels.orthogonalize(x, method=method, steps=max(steps, 1), dtype=dtype)
                exact = float(torch.linalg.svdvals(x.double()).sum())
                out.append(float(nuclear_scale(x, u)) / exact - 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows = []
    print("| method | steps | dtype | min ν/‖X‖_* − 1 | max ν/‖X‖_* − 1 |")
    print("|---|---|---|---|---|")
    for method, steps in CONFIGS:
        for name, dtype in DTYPES.items():
            if method in ("qdwh", "svd") and dtype == torch.bfloat16:
                continue                         # both upcast half precision: the float32 row
            errs = relative_errors(method, steps, dtype, args.seeds)
            rows.append(dict(method=method, steps=steps, dtype=name, min=min(errs), max=max(errs)))
            print(f"| {method} | {steps or '—'} | {name} | {min(errs):+.2%} | {max(errs):+.2%} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
