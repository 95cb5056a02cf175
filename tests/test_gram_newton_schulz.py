"""Gram Newton–Schulz against the plain loop it rewrites, on torch_ref (and Triton) primitives."""

from __future__ import annotations


import pytest
import torch

from matrices import conditioned, rel_err

from polarkernels.backends import torch_ref
from polarkernels.gram_newton_schulz import gram_iterate
from polarkernels.schedules import (
    MUON_QUINTIC,
    NEWTON_SCHULZ_QUINTIC,
    POLAR_EXPRESS_5,
    POLAR_EXPRESS_5_NORM_SAFETY,
    POLAR_EXPRESS_8,
    POLAR_EXPRESS_8_SAFETY,
)

#: name -> (coefficients, X₀ = A / (safety ‖A‖_F))
SCHEDULES = {
    "polar_express_5": (POLAR_EXPRESS_5, POLAR_EXPRESS_5_NORM_SAFETY),
    "polar_express_8": (POLAR_EXPRESS_8, POLAR_EXPRESS_8_SAFETY),
    "muon_5": ((MUON_QUINTIC,) * 5, 1.0),
    "newton_schulz_6": ((NEWTON_SCHULZ_QUINTIC,) * 6, 1.0),
}
#: (batch, m, n), wide or square
SHAPES = {"17x40": ((), 17, 40), "33x33": ((), 33, 33), "2x9x30": ((2,), 9, 30)}


def plain_loop(x, coeffs, ops=torch_ref):
    """The loop Gram Newton–Schulz rewrites: X ← a X + (b S + c S²) X, S = X Xᵀ."""
    for a, b, c in coeffs:
        x = ops.apply(ops.poly(ops.gram(x), b, c), x, a)
    return x


def start(batch, m, n, cond, safety, seed):
    a = torch.from_numpy(conditioned(m, n, cond, seed=seed, batch=batch))
    return a / (safety * torch.linalg.matrix_norm(a, keepdim=True))


@pytest.mark.parametrize("restart_every", [None, 1, 2, 3])
@pytest.mark.parametrize("schedule", SCHEDULES.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_float64_equals_plain_loop(shape, schedule, restart_every):
    coeffs, safety = SCHEDULES[schedule]
    x0 = start(*shape, 1e3, safety, seed=11)
    got = gram_iterate(x0, coeffs, torch_ref, restart_every=restart_every)
    # exact algebra; rounding is amplified by ‖Q‖ (σ_t/σ₀ ≤ ~10³ here) and by W² in R's
    # recurrence: measured ≤ 7e-12 on these inputs, so 1e-10 in float64 (u = 1.1e-16)
    assert rel_err(got, plain_loop(x0, coeffs)) <= 1e-10


def test_restart_every_step_is_the_plain_loop():
    x0 = start((2,), 12, 30, 1e2, 1.0, seed=3).float()
    coeffs = POLAR_EXPRESS_5
    assert torch.equal(gram_iterate(x0, coeffs, torch_ref, restart_every=1), plain_loop(x0, coeffs))


@pytest.mark.parametrize("dtype, factor", [(torch.float32, 4.0), (torch.float16, 8.0), (torch.bfloat16, 8.0)],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("schedule", SCHEDULES.keys())
def test_low_precision_tracks_plain_loop(schedule, dtype, factor):
    """With the default restarts the Gram form stays as accurate as the plain loop in the same dtype
    (within ``factor``: measured ≤ 3× in fp32, ≤ 6× in fp16/bf16, 64×256 to 256×1024, cond 10²–10⁶)."""
    coeffs, safety = SCHEDULES[schedule]
    x0 = start((), 64, 256, 1e3, safety, seed=5)
    exact = plain_loop(x0, coeffs)
    err_gram = rel_err(gram_iterate(x0.to(dtype), coeffs, torch_ref), exact)
    err_loop = rel_err(plain_loop(x0.to(dtype), coeffs), exact)
    assert err_gram <= factor * err_loop, f"Gram form {err_gram:.2e} vs plain loop {err_loop:.2e}"


class CountingOps:
    """torch_ref's primitives, counting FLOPs as the module docstring does."""

    def __init__(self) -> None:
        self.flops = 0

    def gram(self, x):
        self.flops += x.shape[-2] ** 2 * x.shape[-1]        # symmetric: one triangle
        return torch_ref.gram(x)

    def poly(self, s, b, c):
        self.flops += s.shape[-1] ** 3                      # symmetric: one triangle
        return torch_ref.poly(s, b, c)

    def apply(self, bmat, x, a):
        self.flops += 2 * x.shape[-2] ** 2 * x.shape[-1]    # general product
        return torch_ref.apply(bmat, x, a)


@pytest.mark.parametrize("restart_every, segments", [(None, [5]), (2, [2, 2, 1]), (3, [3, 2]), (1, [1] * 5)])
def test_flop_count_matches_docstring(restart_every, segments):
    m, n = 8, 32
    ops = CountingOps()
    gram_iterate(torch.randn(m, n, dtype=torch.float64) / 10, POLAR_EXPRESS_5, ops, restart_every=restart_every)
    # 3m²n + (6L − 5) m³ per segment of L steps
    assert ops.flops == sum(3 * m * m * n + (6 * length - 5) * m**3 for length in segments)


def test_on_triton_kernels():
    from polarkernels.backends import triton_ops

    ok, why = triton_ops.available()
    if not ok:
        pytest.skip(f"triton backend unavailable: {why}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x0 = start((2,), 17, 40, 1e2, POLAR_EXPRESS_5_NORM_SAFETY, seed=7).float().to(device)
    got = gram_iterate(x0, POLAR_EXPRESS_5, triton_ops, restart_every=3)
    want = gram_iterate(x0, POLAR_EXPRESS_5, torch_ref, restart_every=3)
    # both fp32 with fp32 accumulation (ieee dots), differing only in summation order, which the
    # Gram form's recurrences amplify like any rounding: measured 1.4e-5 here
    assert rel_err(got, want) <= 1e-4


def test_no_steps_returns_the_input():
    x0 = torch.randn(3, 5)
    assert gram_iterate(x0, (), torch_ref) is x0


@pytest.mark.parametrize("kwargs, match", [
    (dict(x0=torch.randn(5, 3)), "wide"),
    (dict(x0=torch.randn(4)), "wide"),
    (dict(restart_every=0), "restart_every"),
    (dict(restart_every=2.0), "restart_every"),
    (dict(restart_every=True), "restart_every"),
], ids=["tall", "vector", "zero-restart", "float-restart", "bool-restart"])
def test_bad_arguments_raise(kwargs, match):
    args = dict(x0=torch.randn(3, 5), coeffs=POLAR_EXPRESS_5, ops=torch_ref) | kwargs
    with pytest.raises(ValueError, match=match):
        gram_iterate(**args)
