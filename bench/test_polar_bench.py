"""The benchmark's cases as a pytest-benchmark suite: ``pytest bench/ --benchmark-only``.

Outside the normal test run (pytest's testpaths is tests/). Uses the registry of
:mod:`bench.cases` on small CPU workloads (GPU ones when CUDA is visible); each case also checks
that what it timed is a plausible polar factor, so a broken case fails instead of timing garbage.
"""

from __future__ import annotations

import math

import pytest
import torch

from bench import cases

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
WORKLOADS = [cases.square(256), cases.wide(256), cases.batched(64, 32)]
CANDIDATES, _ = cases.build_candidates(
    DEVICE, polar_dtypes=[torch.float32], orthogonalize_dtypes=[torch.float32],
    methods=list(dict.fromkeys(cases.POLAR_METHODS + cases.ORTHOGONALIZE_METHODS)),
    backend_names=list(cases.DEVICE_BACKENDS[DEVICE.type]), baseline_names=list(cases.BASELINES),
    steps=5, compile_=False)

#: Largest ‖UᵀU − I‖_F/√k a case may return. Converged methods: ~ε√n (float32, n ≤ 1024),
#: 1e-4 leaves a wide margin. Five fixed steps on these Gaussian inputs leave σ in roughly
#: [0.3, 1.2] (measured orthogonality ≤ 0.65), so anything ≤ 1 is a working iteration.
MAX_ORTHOGONALITY = {"polar": 1e-4, "orthogonalize": 1.0}


def _params():
    for workload in WORKLOADS:
        for cand in CANDIDATES:
            if cases.applies(cand, workload):
                yield pytest.param(cand, workload, id=f"{workload.name}-{cand.key}".replace(" ", "_"))


@pytest.mark.parametrize("cand, workload", list(_params()))
def test_bench(benchmark, cand, workload):
    inputs = workload.inputs(cand.dtype, DEVICE, seed=0)
    benchmark.group = workload.name
    outputs = benchmark.pedantic(cand.run, args=(inputs,), rounds=3, warmup_rounds=1)
    for u, g in zip(outputs, inputs):
        assert u.shape == g.shape and torch.isfinite(u).all()
        u = u.double()
        k = min(u.shape[-2:])
        gram = u.mT @ u if u.shape[-2] >= u.shape[-1] else u @ u.mT
        orth = float(torch.linalg.matrix_norm(gram - torch.eye(k, dtype=torch.float64, device=u.device)).max())
        assert orth / math.sqrt(k) <= MAX_ORTHOGONALITY[cand.family], f"{cand.key}: orthogonality {orth:.2e}"
