"""QDWH against scipy.linalg.polar (float64): accuracy, iteration counts, both step forms,
batching, the ``gram`` hook, rank-deficient and bad input.

Tolerances are in units of u = ε/2 of the dtype. Measured over 20 seeds on the grid below
(shapes up to 64, κ up to 1e16 in float64 and 1e6 in float32): ‖UᵀU − I‖_F ≤ 4.3(k + 1)u,
‖A − U·sym(UᵀA)‖_F/‖A‖_F ≤ 3.2(k + 1)u, forward error vs scipy ≤ 1.7(κ + k)u, where
k = min(m, n). SciPy's own SVD-based U measures ‖UᵀU − I‖_F ≈ 2ku on the same inputs.
"""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from matrices import assert_close, conditioned, rel_err, with_singular_values
from polarkernels import qdwh as qdwh_module
from polarkernels.qdwh import CHOLESKY_MAX_C, qdwh

SHAPES = [(1, 1), (5, 3), (3, 5), (40, 17), (17, 40), (64, 64)]
CONDS = {torch.float64: [1.0, 1e3, 1e8, 1e12, 1e16], torch.float32: [1.0, 1e3, 1e6]}
MAX_ITERS = {torch.float64: 6, torch.float32: 5}   # [NBG10]'s 6 for κ ≤ 1e16; fp32 measured


def unit(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def orthogonality(u: torch.Tensor) -> float:
    """‖UᵀU − I‖_F on the small side, in float64 (max over a batch)."""
    u = u.double()
    g = u.mT @ u if u.shape[-2] >= u.shape[-1] else u @ u.mT
    return float(torch.linalg.matrix_norm(g - torch.eye(g.shape[-1], dtype=torch.float64)).max())


def backward_error(u: torch.Tensor, a: torch.Tensor) -> float:
    """‖A − U H‖_F / ‖A‖_F with H = sym(UᵀA), in float64 (max over a batch)."""
    u, a = u.double(), a.double()
    h = u.mT @ a
    return rel_err(u @ ((h + h.mT) / 2), a)


def ell_sequence(l0: float, u: float) -> list[float]:
    """c of every step until ℓ reaches 1 − 10u, by [NBG10, §3] written out in Python floats."""
    cs, ell = [], l0
    while 1 - ell > 10 * u:
        l2 = ell * ell
        d = (4 * (1 - l2) / l2**2) ** (1 / 3)
        a = (1 + d) ** 0.5 + 0.5 * (8 - 4 * d + 8 * (2 - l2) / (l2 * (1 + d) ** 0.5)) ** 0.5
        b = (a - 1) ** 2 / 4
        c = a + b - 1
        ell = min(1.0, ell * (a + b * l2) / (1 + c * l2))
        cs.append(c)
    return cs


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_scipy(dtype, shape):
    m, n = shape
    k, u = min(m, n), unit(dtype)
    for i, cond in enumerate(CONDS[dtype]):
        a64 = conditioned(m, n, cond, seed=10 * i + m)
        expected = torch.from_numpy(scipy.linalg.polar(a64)[0])
        a = torch.from_numpy(a64).to(dtype)
        res = qdwh(a)
        what = f"{dtype} {m}x{n} κ={cond:.0e}"
        assert res.converged and res.u.dtype == dtype and res.u.shape == a.shape, what
        assert res.num_iters <= MAX_ITERS[dtype], f"{what}: {res.num_iters} iterations"
        # measured ≤ 4.3(k + 1)u (module docstring): factor 2 of headroom
        assert orthogonality(res.u) <= 8 * (k + 1) * u, what
        # backward stable [NH13]: measured ≤ 3.2(k + 1)u
        assert backward_error(res.u, a) <= 8 * (k + 1) * u, what
        # ‖δU‖/‖U‖ ≲ 2κ‖δA‖/‖A‖ (U's condition number is ~1/σ_min), both methods having δA ~ u,
        # plus orthogonality-level error at κ ~ 1; measured ≤ 1.7(κ + k)u. Above κ ~ 1/u the
        # forward error is O(1) for any method and only the two checks above apply.
        rtol = 4 * (cond + k) * u
        if rtol < 0.5:
            assert_close(res.u, expected, rtol=rtol, what=what)


def test_l0_bound_reaches_one_in_six_steps():
    """[NBG10]'s claim, for the weights as implemented: 6 steps from ℓ₀ = 1e-16 in float64, also
    from the estimate's floor u², with the first 2–3 steps in QR form (c > 100)."""
    u = unit(torch.float64)
    for l0, qr_steps in [(1e-16, 2), (u**2, 3)]:
        cs = ell_sequence(l0, u)
        assert len(cs) == 6 and sum(c > CHOLESKY_MAX_C for c in cs) == qr_steps, (l0, cs)
    a, b, c = qdwh_module._weights(torch.ones(1, dtype=torch.float64))
    # ℓ = 1: (a, b, c) = (3, 1, 3), Halley's method; exact up to rounding of the square roots
    torch.testing.assert_close(torch.cat([a, b, c]), torch.tensor([3.0, 1.0, 3.0], dtype=torch.float64),
                               atol=1e-14, rtol=0)


@pytest.mark.parametrize("form, ell", [("qr", 1e-12), ("qr", 1e-3), ("qr", 0.1), ("qr", 0.9),
                                       ("cholesky", 0.1), ("cholesky", 0.9)])   # Cholesky: c ≤ 100
def test_one_step_applies_the_rational_map(form, ell):
    """Each form maps X = P diag(σ) Qᵀ to P diag(f(σ)) Qᵀ, f(x) = x(a + bx²)/(1 + cx²)."""
    rng = np.random.default_rng(7)
    sigma = np.geomspace(1.0, ell, 6)
    x = torch.from_numpy(with_singular_values(9, 6, sigma, rng=rng, batch=(2,)))
    la = torch.full((2,), ell, dtype=torch.float64)
    a, b, c = qdwh_module._weights(la)
    if form == "qr":
        y = qdwh_module._qr_step(x, (a, b, c))
    else:
        assert float(c[0]) <= CHOLESKY_MAX_C
        y, ok = qdwh_module._cholesky_step(x, (a, b, c), qdwh_module.torch_gram)
        assert bool(ok.all())
    p, _, qt = torch.linalg.svd(x, full_matrices=False)
    s = torch.from_numpy(sigma)
    f = s * (a[0] + b[0] * s**2) / (1 + c[0] * s**2)
    expected = p @ torch.diag_embed(f.expand(2, -1)) @ qt
    # the step is backward stable, so X's O(u) rounding comes out amplified by |f′| ≤ f′(0) = a;
    # the SVD-built reference adds ~k·u (k = 6). Measured ≤ 2.5·(a + k)·u.
    rtol = 8 * (float(a[0]) + 6) * unit(torch.float64)
    assert_close(y, expected, rtol=rtol, what=f"{form} step ℓ={ell} (a = {float(a[0]):.3g})")


def test_batched_equals_per_matrix_with_mixed_forms():
    """Matrices of one batch with different κ take QR and Cholesky steps in the same iteration."""
    conds = [1.0, 1e12, 1e3, 1e16, 1e8, 1.0]
    for m, n in [(7, 5), (5, 7), (12, 4)]:
        a = torch.from_numpy(np.stack([conditioned(m, n, c, seed=i) for i, c in enumerate(conds)]))
        a = a.reshape(2, 3, m, n)
        batched = qdwh(a)
        singles = [qdwh(a[i, j]) for i in range(2) for j in range(3)]
        assert batched.num_iters == max(s.num_iters for s in singles)
        assert batched.converged and all(s.converged for s in singles)
        # same LAPACK calls on the same data: equal up to rounding (bitwise on CPU as measured)
        assert_close(batched.u.reshape(6, m, n), torch.stack([s.u for s in singles]),
                     rtol=4 * unit(torch.float64), what=f"batched {m}x{n}")


def test_transitions_seen_through_the_gram_hook():
    """The Cholesky form calls ``gram(Xᵀ)`` (wide) once per step, the QR form never: the count
    shows the QR → Cholesky switch where the ℓ recurrence puts it."""
    calls = []

    def counting_gram(y):
        assert y.shape[-2] <= y.shape[-1], "gram must get the wide orientation"
        calls.append(tuple(y.shape))
        return y @ y.mT

    u = unit(torch.float64)
    ill = torch.from_numpy(conditioned(30, 20, 1e12, seed=3))
    mid = torch.from_numpy(conditioned(30, 20, 1e2, seed=4))   # σ_min(X₀) ≥ 1/(κ√20) > 1e-3
    well = torch.from_numpy(conditioned(30, 20, 2.0, seed=4))
    # (input, l0, QR steps): 2 QR steps from 1e-16, 1 from 1e-3, none from 1 (Halley throughout)
    for a, l0, qr_steps in [(ill, 1e-16, 2), (mid, 1e-3, 1), (well, 1.0, 0)]:
        assert sum(c > CHOLESKY_MAX_C for c in ell_sequence(l0, u)) == qr_steps
        calls.clear()
        res = qdwh(a, l0=l0, gram=counting_gram)
        assert res.converged and len(calls) == res.num_iters - qr_steps, (l0, res.num_iters, calls)
    calls.clear()
    hooked = qdwh(ill, gram=counting_gram)
    assert calls and torch.equal(hooked.u, qdwh(ill).u)


def test_cholesky_failure_falls_back_to_qr():
    """A gram that makes Z indefinite (here: −XᵀX, for the first matrix only) must not break the
    result: those steps run in QR form."""
    def poisoned_gram(y):
        s = y @ y.mT
        return torch.cat([-s[:1], s[1:]])

    a = torch.from_numpy(conditioned(9, 6, 1e4, seed=5, batch=(2,)))
    res = qdwh(a, gram=poisoned_gram)
    expected = torch.from_numpy(np.stack([scipy.linalg.polar(m)[0] for m in a.numpy()]))
    # as in test_matches_scipy: 4(κ + k)u
    assert res.converged
    assert_close(res.u, expected, rtol=4 * (1e4 + 6) * unit(torch.float64), what="QR fallback")


def test_zero_matrix_maps_to_zero():
    res = qdwh(torch.zeros(2, 5, 3))
    assert torch.equal(res.u, torch.zeros(2, 5, 3)) and res.converged and res.num_iters == 0
    a = torch.from_numpy(conditioned(5, 3, 10.0, seed=1, batch=(3,)))
    a[1] = 0
    res = qdwh(a)
    assert torch.equal(res.u[1], torch.zeros(5, 3)) and res.converged
    assert_close(res.u[[0, 2]], qdwh(a[[0, 2]]).u, rtol=0, what="zero inside a batch")


def test_structurally_rank_deficient_gives_the_partial_isometry():
    """Exact zero singular values stay zero: U = [polar(B) 0; 0 0] for A = [B 0; 0 0]."""
    b = torch.from_numpy(conditioned(4, 3, 1e3, seed=2))
    for dtype in (torch.float64, torch.float32):
        a = torch.zeros(7, 5, dtype=dtype)
        a[:4, :3] = b.to(dtype)
        res = qdwh(a)
        expected = torch.zeros(7, 5, dtype=torch.float64)
        expected[:4, :3] = torch.from_numpy(scipy.linalg.polar(b.numpy())[0])
        assert res.converged
        # the B block is a 4×3 polar problem with κ = 1e3: 4(κ + k)u
        assert_close(res.u, expected, rtol=4 * (1e3 + 3) * unit(dtype), what=f"partial isometry {dtype}")
        assert torch.count_nonzero(res.u[4:]) == 0 and torch.count_nonzero(res.u[:, 3:]) == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape, rank", [((30, 20), 5), ((20, 30), 5), ((40, 40), 1), ((40, 17), 16)])
def test_numerically_rank_deficient_is_finite_and_a_projector(dtype, shape, rank):
    """P diag(σ₁..σ_r, 0, …) Qᵀ rounded: the zero singular values become rounding noise."""
    m, n = shape
    k, u = min(m, n), unit(dtype)
    sigma = np.r_[np.geomspace(1.0, 1e-2, rank), np.zeros(k - rank)]
    a = torch.from_numpy(with_singular_values(m, n, sigma, rng=np.random.default_rng(rank))).to(dtype)
    res = qdwh(a)
    assert torch.isfinite(res.u).all() and res.converged
    assert res.num_iters <= MAX_ITERS[dtype]
    p = res.u.double().mT @ res.u.double() if m >= n else res.u.double() @ res.u.double().mT
    # UᵀU an orthogonal projector to the orthogonality tolerance of test_matches_scipy
    assert float(torch.linalg.matrix_norm(p @ p - p)) <= 8 * (k + 1) * u
    assert backward_error(res.u, a) <= 8 * (k + 1) * u


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 1e30), (torch.float32, 1e-30), (torch.float32, 1e-40),
                                          (torch.float64, 1e300), (torch.float64, 1e-300)])
def test_extreme_scaling(dtype, scale):
    """U(sA) = U(A): the max-abs prescale keeps every norm finite and nonzero."""
    a = torch.from_numpy(conditioned(9, 6, 1e2, seed=3)).to(dtype)
    res = qdwh(a * scale)
    assert res.converged
    # s·A rounds each entry once more (1e-40 is subnormal in float32: ~1e-5 relative there)
    rtol = 1e-3 if scale == 1e-40 else 4 * (1e2 + 6) * unit(dtype)
    assert_close(res.u, qdwh(a).u, rtol=rtol, what=f"scale {scale:g}")


def test_wrong_l0_is_safe_and_max_iter_reported():
    a = torch.from_numpy(conditioned(8, 8, 10.0, seed=6))
    expected = torch.from_numpy(scipy.linalg.polar(a.numpy())[0])
    # l0 = 1 overestimates σ_min = 0.1/α: plain Halley steps, more of them, same answer
    res = qdwh(a, l0=1.0)
    assert res.converged and res.num_iters > qdwh(a).num_iters
    assert_close(res.u, expected, rtol=4 * (10 + 8) * unit(torch.float64), what="l0=1")
    short = qdwh(torch.from_numpy(conditioned(8, 8, 1e12, seed=6)), max_iter=2)
    assert short.num_iters == 2 and not short.converged
    x0 = qdwh(a, max_iter=0)
    assert x0.num_iters == 0 and not x0.converged
    assert float(torch.linalg.matrix_norm(x0.u, 2)) <= 1.0   # X₀ = A/α with α ≥ ‖A‖₂


def test_nonfinite_input_is_reported_not_raised():
    a = torch.randn(2, 5, 3, dtype=torch.float64)
    a[0, 1, 1] = float("nan")
    res = qdwh(a)
    assert not res.converged and torch.isfinite(res.u[1]).all() and not torch.isfinite(res.u[0]).all()


def test_empty_noncontiguous_and_input_untouched():
    for shape in [(0, 3, 4), (3, 0), (2, 0, 5)]:
        res = qdwh(torch.ones(shape))
        assert res.u.shape == shape and res.converged
    base = torch.from_numpy(conditioned(12, 7, 1e2, seed=8))
    view = base.mT   # 7×12, non-contiguous
    before = view.clone()
    res = qdwh(view)
    assert torch.equal(view, before)
    # the transpose of the tall problem's answer, up to rounding
    assert_close(res.u, qdwh(base.contiguous()).u.mT, rtol=4 * unit(torch.float64), what="transposed view")


def test_gradient_matches_svd_polar():
    """Autograd through QR/Cholesky/solves gives the derivative of the polar factor."""
    for m, n in [(6, 6), (9, 4), (4, 9)]:
        a = torch.from_numpy(conditioned(m, n, 1e2, seed=m)).requires_grad_()
        g = torch.from_numpy(np.random.default_rng(n).standard_normal((m, n)))
        (grad_qdwh,) = torch.autograd.grad((qdwh(a).u * g).sum(), a)
        p, _, qt = torch.linalg.svd(a, full_matrices=False)
        (grad_svd,) = torch.autograd.grad(((p @ qt) * g).sum(), a)
        # the derivative of U has condition ~κ; measured ≤ 1e-13 at κ = 1e2
        assert_close(grad_qdwh, grad_svd, rtol=1e-11, what=f"grad {m}x{n}")


@pytest.mark.parametrize("bad, err, match", [
    (dict(x=torch.ones(3, 3, dtype=torch.float16)), TypeError, "float32/float64 or complex64"),
    (dict(x=torch.ones(3, 3, dtype=torch.bfloat16)), TypeError, "float32/float64 or complex64"),
    (dict(x=torch.ones(3, 3, dtype=torch.complex32)), TypeError, "float32/float64 or complex64"),
    (dict(x=torch.ones(3, 3, dtype=torch.int64)), TypeError, "float32/float64 or complex64"),
    (dict(x=torch.ones(3)), ValueError, "matrix"),
    (dict(x=torch.ones(3, 3), max_iter=-1), ValueError, "max_iter"),
    (dict(x=torch.ones(3, 3), tol=0.0), ValueError, "tol"),
    (dict(x=torch.ones(3, 3), l0=0.0), ValueError, "l0"),
    (dict(x=torch.ones(3, 3), l0=1.5), ValueError, "l0"),
], ids=["f16", "bf16", "complex32", "int", "1d", "max_iter", "tol", "l0=0", "l0>1"])
def test_bad_input(bad, err, match):
    x = bad.pop("x")
    with pytest.raises(err, match=match):
        qdwh(x, **bad)


@pytest.mark.parametrize("shape", [(256, 256), (384, 128), (128, 384)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_newton_schulz_finish_reaches_jax_orthogonality(shape, monkeypatch):
    """The final Newton–Schulz step: ‖UᴴU − I‖_F/√k ≤ 1e-15 in float64 on Gaussian input (JAX's
    QDWH, which ends the same way, reaches 4–8e-16 at 1024²; measured here 4.2–5.5e-16 at
    256²–512²), below the unrefined iterate's."""
    torch.manual_seed(0)
    a = torch.randn(*shape, dtype=torch.float64)
    k = min(shape)
    eye = torch.eye(k, dtype=torch.float64)

    def ortho(u):
        g = u.mT @ u if shape[0] >= shape[1] else u @ u.mT
        return float(torch.linalg.matrix_norm(g - eye)) / math.sqrt(k)

    u = qdwh(a).u
    monkeypatch.setattr(qdwh_module, "_newton_schulz_refine", lambda x: x)
    u_raw = qdwh(a).u
    assert ortho(u) <= 1e-15 and ortho(u) < ortho(u_raw), (ortho(u), ortho(u_raw))
    # the refinement moves U by O(‖UᴴU − I‖) ≈ 1e-15 only: same factor to rounding
    torch.testing.assert_close(u, u_raw, atol=1e-13, rtol=0)
