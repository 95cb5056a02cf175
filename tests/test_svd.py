"""polarkernels.svd: both SVD routes (torch.linalg.svd, SciPy's LAPACK) against scipy.linalg.polar.

Each route runs on the same inputs, asked for by name (``route=``, or ``backend="blas"`` through
the public API), on tall, wide (decomposed through the tall Aᴴ) and square shapes. Tolerances: both routes are backward stable
SVDs, so U agrees with SciPy's to ~ε κ √k and H (formed as (QΣ^½)(QΣ^½)ᵀ vs scipy's (QᵀΣ)Q)
to ~ε ‖A‖ √n; the bounds below are 40× those.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

import polarkernels as pk
import polarkernels.svd as svd_module
from matrices import conditioned
from polarkernels.svd import svd_polar, svd_polar_decomposition

BIG = 128
SHAPES = [(BIG, BIG), (BIG + 40, BIG), (BIG, BIG + 40), (7, 5), (5, 7)]
COND = 1e3
ROUTES = ["torch", "lapack"]


def _ids(shape):
    return f"{shape[0]}x{shape[1]}"


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_decomposition_matches_scipy(shape, side, route):
    m, n = shape
    a64 = conditioned(m, n, COND, seed=m * 7 + n)
    u_ref, h_ref = scipy.linalg.polar(a64, side=side)
    a = torch.from_numpy(a64)
    u, h = svd_polar_decomposition(a, side, route)
    eps, k = torch.finfo(torch.float64).eps, min(m, n)
    forward = float(np.linalg.norm(u.numpy() - u_ref)) / math.sqrt(k)
    assert forward <= 40 * eps * COND * math.sqrt(k), f"U vs scipy {forward:.2e}"
    h_err = float(np.linalg.norm(h.numpy() - h_ref) / np.linalg.norm(h_ref))
    assert h_err <= 40 * eps * math.sqrt(max(m, n)), f"H vs scipy {h_err:.2e}"
    assert torch.equal(h, h.mT), "H must be exactly symmetric"
    recon = u @ h if side == "right" else h @ u
    backward = float(torch.linalg.matrix_norm(recon - a) / torch.linalg.matrix_norm(a))
    assert backward <= 40 * eps * math.sqrt(max(m, n)), f"backward error {backward:.2e}"
    assert torch.equal(svd_polar(a, route), u), "svd_polar and svd_polar_decomposition share the U"


@pytest.mark.parametrize("shape", [(24, 16), (16, 24)], ids=_ids)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128], ids=str)
def test_lapack_route_matches_torch_route(dtype, shape):
    """The same batched input through both routes: equal to a few ε κ (two different SVD codes)."""
    a = torch.from_numpy(conditioned(*shape, COND, seed=3, batch=(2, 3), complex=dtype.is_complex)).to(dtype)
    u_torch, h_torch = svd_polar_decomposition(a, route="torch")
    u_lapack, h_lapack = svd_polar_decomposition(a, route="lapack")
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(u_lapack, u_torch, atol=40 * eps * COND, rtol=0)
    torch.testing.assert_close(h_lapack, h_torch, atol=40 * eps * math.sqrt(24), rtol=0)
    assert torch.equal(svd_polar(a, "lapack"), u_lapack)


def test_auto_route_rule(monkeypatch):
    """``auto``: LAPACK from LAPACK_MIN_SIDE up on CPU outside autograd, if set; torch otherwise."""
    a = torch.randn(6, 5, dtype=torch.float64)
    monkeypatch.setattr(svd_module, "LAPACK_MIN_SIDE", None)
    assert not svd_module._use_lapack(a)
    monkeypatch.setattr(svd_module, "LAPACK_MIN_SIDE", 5)
    assert svd_module._use_lapack(a) and not svd_module._use_lapack(a[:, :4])
    assert not svd_module._use_lapack(a.clone().requires_grad_())
    assert not svd_module._use_lapack(a, "torch") and svd_module._use_lapack(a[:2, :2], "lapack")
    with pytest.raises(ValueError, match="unknown SVD route"):
        svd_module._use_lapack(a, "gesvd")


def test_gesvd_fallback(monkeypatch):
    """If gesdd fails to converge (LinAlgError), gesvd is used and the answer is unchanged."""
    calls = []
    real_svd = scipy.linalg.svd

    def flaky_svd(x, **kw):
        calls.append(kw["lapack_driver"])
        if kw["lapack_driver"] == "gesdd":
            raise np.linalg.LinAlgError("SVD did not converge")
        return real_svd(x, **kw)

    monkeypatch.setattr(svd_module.scipy.linalg, "svd", flaky_svd)
    a64 = conditioned(9, 6, COND, seed=11)
    u = svd_polar(torch.from_numpy(a64), "lapack")
    assert calls == ["gesdd", "gesvd"]
    u_ref, _ = scipy.linalg.polar(a64)
    np.testing.assert_allclose(u.numpy(), u_ref, atol=40 * np.finfo(np.float64).eps * COND)


def test_autograd_takes_the_torch_route():
    """NumPy carries no gradients, so inputs that require grad stay in torch even when large."""
    a = torch.from_numpy(conditioned(BIG, BIG, 10.0, seed=5)).requires_grad_()
    assert not svd_module._use_lapack(a)  # whatever LAPACK_MIN_SIDE says
    (grad,) = torch.autograd.grad(svd_polar(a).sum(), a)
    assert grad.shape == a.shape and torch.isfinite(grad).all()


def test_half_precision_is_upcast():
    a = torch.from_numpy(conditioned(6, 4, 10.0, seed=2)).to(torch.bfloat16)
    u, h = svd_polar_decomposition(a)
    assert u.dtype == h.dtype == torch.bfloat16
    u32, _ = svd_polar_decomposition(a.float())
    # one rounding of the float32 result to bfloat16: ≤ ε_bf16/2 relative per entry
    torch.testing.assert_close(u.float(), u32, atol=2 ** -8, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("kind", ["numpy", "float16", "batched", "transposed"])
def test_public_polar_through_the_lapack_route(kind, side):
    a64 = conditioned(9, 6, COND, seed=21, batch=(2,) if kind == "batched" else ())
    if kind == "numpy":
        a = a64.copy()
    elif kind == "float16":
        a = torch.from_numpy(a64).half()
    elif kind == "transposed":  # a column-major view: the route must not assume row-major memory
        a = torch.from_numpy(a64.T.copy()).mT
    else:
        a = torch.from_numpy(a64)
    exact = np.asarray(torch.as_tensor(a).double())  # the input as given (float16: rounded)
    u_ref = np.stack([scipy.linalg.polar(x, side=side)[0] for x in exact.reshape(-1, 9, 6)]).reshape(exact.shape)
    before = a.copy() if kind == "numpy" else a.clone()
    u, h = pk.polar(a, side=side, method="svd", backend="blas")
    assert type(u) is type(a) and u.dtype == a.dtype and u.shape == a.shape
    assert (np.array_equal(a, before) if kind == "numpy" else torch.equal(a, before)), "input modified"
    u, h = torch.as_tensor(u).double(), torch.as_tensor(h).double()
    # float64: 40 ε κ. float16: computed in float32 (40 ε₃₂ κ ≈ 5e-3), then U and H rounded once
    # to float16 (≤ 5e-4 relative per entry, entries ≤ 1)
    tol = 1e-2 if kind == "float16" else 40 * np.finfo(np.float64).eps * COND
    torch.testing.assert_close(u, torch.from_numpy(u_ref), atol=tol, rtol=0)
    recon = u @ h if side == "right" else h @ u
    torch.testing.assert_close(recon, torch.from_numpy(exact), atol=tol, rtol=0)
    assert torch.equal(h, h.mT)


def test_lapack_route_zero_rank_deficient_and_nan():
    zero = torch.zeros(2, 5, 4, dtype=torch.float64)
    u, h = pk.polar(zero, method="svd", backend="blas")
    assert torch.equal(h, torch.zeros(2, 4, 4, dtype=torch.float64)) and torch.isfinite(u).all()

    rng = np.random.default_rng(4)
    low = torch.from_numpy(rng.standard_normal((7, 2)) @ rng.standard_normal((2, 5)))  # rank 2
    u, h = pk.polar(low, method="svd", backend="blas")
    eps = np.finfo(np.float64).eps
    assert float(torch.linalg.eigvalsh(h).min()) >= -40 * eps * float(torch.linalg.matrix_norm(low, 2))
    torch.testing.assert_close(u @ h, low, atol=40 * eps * float(torch.linalg.matrix_norm(low)), rtol=0)

    bad = torch.from_numpy(conditioned(6, 4, 10.0, seed=1, batch=(2,)))
    bad[1, 0, 0] = float("nan")
    u, h = pk.polar(bad, method="svd", backend="blas", check_finite=False)
    assert torch.isnan(u[1]).all() and torch.isnan(h[1]).all()  # propagated, as on the torch route
    u0, _ = pk.polar(bad[0], method="svd", backend="blas")
    assert torch.equal(u[0], u0)  # the finite matrix of the batch is unaffected


def test_gradients_through_h_on_the_torch_route():
    """H = (QΣ)Qᵀ keeps gradients finite at σ = 0 (a √σ form would give NaN), and matches finite
    differences on a well-conditioned input."""
    a = torch.diag(torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)).requires_grad_()
    u, h = pk.polar(a, method="svd")
    (grad,) = torch.autograd.grad(h.sum(), a)
    assert torch.isfinite(grad).all()
    b = torch.from_numpy(conditioned(5, 3, 4.0, seed=8)).requires_grad_()
    for side in ("right", "left"):
        assert torch.autograd.gradcheck(lambda x, side=side: svd_polar_decomposition(x, side)[1], (b,))
