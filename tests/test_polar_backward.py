"""The analytic polar derivative (polarkernels.polar_backward) through polar() and on its own.

References: torch.autograd.gradcheck (finite differences of our own forward), autograd through
torch.linalg.svd on well-separated spectra, and central differences of scipy.linalg.polar (the
exact factor, float64/complex128) where the SVD's derivative fails (repeated singular values).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch.autograd import forward_ad

import polarkernels as pk
from polarkernels import polar_backward
from polarkernels.polar_backward import attach
from polarkernels.svd import svd_polar_spectrum

METHODS = ("svd", "qdwh", "polar_express", "newton_schulz", "muon")
SIDES = ("right", "left")
SHAPES = {"tall": (6, 4), "wide": (4, 6), "square": (5, 5), "batched_tall": (2, 5, 3), "batched_wide": (2, 3, 5)}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(shape, dtype=torch.float64, seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=_gen(seed), dtype=dtype)


def _svd_factors(a: torch.Tensor, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, H) from torch.linalg.svd, for any dtype torch's SVD takes (complex included)."""
    p, s, qh = torch.linalg.svd(a, full_matrices=False)
    s = s.to(a.dtype)[..., None, :]
    h = (qh.mH * s) @ qh if side == "right" else (p * s) @ p.mH
    return p @ qh, (h + h.mH) / 2


def _attached(a: torch.Tensor, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The Function on its own: factors computed without autograd, derivative attached."""
    with torch.no_grad():
        u, h = _svd_factors(a.detach(), side)
    return attach(a, u, h, side)


def _with_spectrum(m: int, n: int, sigma, dtype=torch.float64, seed=0) -> torch.Tensor:
    """P diag(sigma) Qᴴ with Haar-random P (m×k), Q (n×k)."""
    k = min(m, n)
    p = torch.linalg.qr(_randn((m, k), dtype, seed))[0]
    q = torch.linalg.qr(_randn((n, k), dtype, seed + 1))[0]
    return (p * torch.as_tensor(sigma, dtype=torch.float64).to(dtype)) @ q.mH


def _scipy_polar(a: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    return scipy.linalg.polar(a, side)


def _central_difference(a: torch.Tensor, da: torch.Tensor, side: str, step: float = 1e-6):
    """(dU, dH) of the exact factor (scipy.linalg.polar, float64/complex128) along da."""
    plus = _scipy_polar((a + step * da).numpy(), side)
    minus = _scipy_polar((a - step * da).numpy(), side)
    return tuple(torch.from_numpy((p - q) / (2 * step)) for p, q in zip(plus, minus))


def _jvp(f, a, da):
    with forward_ad.dual_level():
        outs = f(forward_ad.make_dual(a, da))
        return tuple(forward_ad.unpack_dual(o).tangent for o in outs)


def _vjp(f, a, cotangents):
    a = a.detach().clone().requires_grad_()
    outs = f(a)
    (g,) = torch.autograd.grad(outs, a, cotangents)
    return g


def _inner(x: torch.Tensor, y: torch.Tensor) -> float:
    """Re tr(xᴴ y): the inner product torch's complex gradients are adjoints in."""
    return float((x.conj() * y).real.sum())


# --- gradcheck -------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, dtype", [(shape, torch.float64) for shape in SHAPES.values()]
                         + [(SHAPES[k], torch.complex128) for k in ("tall", "wide", "square")],
                         ids=[f"{k}-float64" for k in SHAPES] + [f"{k}-complex128" for k in ("tall", "wide", "square")])
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_through_polar(method, side, shape, dtype):
    """Reverse and forward mode against central differences of polar() itself (complex: torch's
    convention, real and imaginary parts checked apart); gradcheck's default atol 1e-5 / rtol
    1e-3 are far above its float64 differences' error (~1e-9) on these Gaussian matrices
    (κ ≲ 30), and every method converges to ~1e-15."""
    a = _randn(shape, dtype, seed=len(shape) * 10 + shape[-1]).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: pk.polar(x, side, method=method), (a,),
                                    fast_mode=True, check_forward_ad=True)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("side", SIDES)
def test_gradcheck_and_gradgradcheck_complex128_function(side, shape):
    """The rule for complex input (torch's convention: the Re⟨·,·⟩-adjoint) on factors from
    torch.linalg.svd; second order through eigh's derivative. Same tolerances as above."""
    a = _randn(shape, torch.complex128, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: _attached(x, side), (a,), fast_mode=True, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(lambda x: _attached(x, side), (a,), fast_mode=True)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (2, 5, 5)], ids=["tall", "wide", "batched_square"])
@pytest.mark.parametrize("side", SIDES)
def test_gradgradcheck_float64_through_polar(side, shape):
    """The backward is torch operations on the saved input and outputs: differentiable again."""
    a = _randn(shape, seed=4).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x: pk.polar(x, side, method="newton_schulz"), (a,), fast_mode=True)


def test_half_precision_input_gets_a_float32_gradient():
    """bfloat16 runs in float32 and is rounded once: the gradient flows through both casts."""
    a = _randn((6, 4), seed=5)
    x = a.to(torch.bfloat16).requires_grad_()
    pk.polar(x, method="polar_express")[0].float().sum().backward()
    ref = _vjp(lambda t: _attached(t, "right"), x.detach().double(), (torch.ones(6, 4, dtype=torch.float64),
                                                                         torch.zeros(4, 4, dtype=torch.float64)))
    assert x.grad.dtype == torch.bfloat16
    # bfloat16 input and gradient (8 bits: 2⁻⁸ relative), κ ≈ 5: a few percent at most
    torch.testing.assert_close(x.grad.double(), ref, rtol=0.05, atol=0.05)


# --- every method gives the SVD route's gradient ---------------------------------------------------

@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (5, 5), (3, 6, 4)], ids=["tall", "wide", "square", "batched"])
@pytest.mark.parametrize("side", SIDES)
def test_all_methods_match_autograd_through_svd(side, shape):
    """On well-separated singular values (gaps ≥ 0.3, σ ∈ [1, 3]) autograd through
    torch.linalg.svd is exact; every method's analytic gradient matches it."""
    m, n = shape[-2:]
    k = min(m, n)
    batch = shape[:-2]
    a = torch.stack([_with_spectrum(m, n, torch.linspace(1, 3, k), seed=s) for s in range(int(np.prod(batch)))])
    a = a.reshape(shape)
    hk = n if side == "right" else m
    cot = (_randn(shape, seed=8), _randn((*batch, hk, hk), seed=9))
    ref = _vjp(lambda t: _svd_factors(t, side), a, cot)
    for method in METHODS:
        g = _vjp(lambda t: pk.polar(t, side, method=method), a, cot)
        # factors converged to ~1e-15 in float64, amplified by at most 1/gap ≈ 3 in the SVD's
        # derivative and 1/(σᵢ + σⱼ) ≤ 1/2 in ours: 1e-12 leaves two orders of headroom
        torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-12, msg=f"method={method}")


# --- repeated singular values: the exact factor's derivative, finite -------------------------------

def _repeated_cases(dtype):
    q = torch.linalg.qr(_randn((6, 6), dtype, seed=11))[0]
    return {
        "orthogonal": q,
        "scaled_identity": 2 * torch.eye(5, dtype=dtype),
        "two_repeated_pairs": _with_spectrum(6, 6, [3, 3, 1, 1, 0.7, 0.4], dtype, seed=12),
        "tall_orthonormal_columns": _with_spectrum(8, 4, [1, 1, 1, 1], dtype, seed=13),
        "wide_repeated": _with_spectrum(3, 7, [2, 2, 0.5], dtype, seed=14),
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["float64", "complex128"])
@pytest.mark.parametrize("case", ["orthogonal", "scaled_identity", "two_repeated_pairs",
                                  "tall_orthonormal_columns", "wide_repeated"])
@pytest.mark.parametrize("side", SIDES)
def test_repeated_singular_values_match_finite_differences(case, side, dtype):
    """Where the SVD's derivative divides by σᵢ² − σⱼ² = 0 (NaN, or 7% off for repeated pairs),
    the polar factor is smooth: its derivative (jvp and vjp) matches central differences of
    scipy.linalg.polar. Through the Function on SVD factors and through polar() for every method."""
    a = _repeated_cases(dtype)[case]
    da = _randn(a.shape, dtype, seed=15)
    fd_u, fd_h = _central_difference(a, da, side)
    gu, gh = _randn(fd_u.shape, dtype, seed=16), _randn(fd_h.shape, dtype, seed=17)
    routes = {"function": lambda t: _attached(t, side)}
    routes.update({m: (lambda t, m=m: pk.polar(t, side, method=m)) for m in METHODS})
    for name, f in routes.items():
        du, dh = _jvp(f, a, da)
        # central difference with step 1e-6 in float64: truncation ~1e-12 and rounding
        # ~ε/1e-6 ≈ 1e-10 on entries of size O(1); the derivative's own bound is 1/(σᵢ + σⱼ) ≤ 2.5
        torch.testing.assert_close(du, fd_u, rtol=1e-7, atol=1e-7, msg=f"dU via {name}")
        torch.testing.assert_close(dh, fd_h, rtol=1e-7, atol=1e-7, msg=f"dH via {name}")
        g = _vjp(f, a, (gu, gh))
        assert torch.isfinite(g).all()
        # ⟨g, dA⟩ = ⟨gU, dU⟩ + ⟨gH, dH⟩: the same finite-difference error, summed over ~50 entries
        assert _inner(g, da) == pytest.approx(_inner(gu, fd_u) + _inner(gh, fd_h), rel=1e-7, abs=1e-6), name


# --- rank-deficient input: the documented convention -----------------------------------------------

def _rank_preserving_curve(a: torch.Tensor, seed: int):
    """A(t) = (I + tX) A (I + tY), of A's rank for small t, and its tangent X A + A Y."""
    m, n = a.shape
    x, y = 0.3 * _randn((m, m), a.dtype, seed), 0.3 * _randn((n, n), a.dtype, seed + 1)
    curve = lambda t: (torch.eye(m, dtype=a.dtype) + t * x) @ a @ (torch.eye(n, dtype=a.dtype) + t * y)
    return curve, x @ a + a @ y


def _partial_isometry_factors(a: torch.Tensor, rank: int, side: str):
    """The iterative methods' factors of a rank-``rank`` matrix: W = P_r Q_rᴴ, H from the top
    ``rank`` singular triplets (float64 SVD)."""
    p, s, qh = torch.linalg.svd(a, full_matrices=False)
    p, s, qh = p[:, :rank], s[:rank], qh[:rank]
    h = (qh.mH * s) @ qh if side == "right" else (p * s) @ p.mH
    return p @ qh, h


@pytest.mark.parametrize("method", ["polar_express", "newton_schulz", "muon"])
@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (5, 5)], ids=["tall", "wide", "square"])
@pytest.mark.parametrize("side", SIDES)
def test_rank_deficient_is_the_partial_isometrys_derivative(side, shape, method):
    """A of rank 2 (σ = 2, 1, 0, ...): the polynomial methods return the partial isometry
    W = P_r Q_rᴴ (zero singular values stay zero); along perturbations that keep the rank, the
    rule (weight 0 for pairs σᵢ = σⱼ = 0, H⁺ for H⁻¹) is W's and H's derivative. Reference:
    central differences of W along the rank-2 curve (I + tX) A (I + tY)."""
    m, n = shape
    a = _with_spectrum(m, n, [2, 1] + [0] * (min(m, n) - 2), seed=21)
    curve, da = _rank_preserving_curve(a, seed=22)
    step = 1e-6
    plus, minus = _partial_isometry_factors(curve(step), 2, side), _partial_isometry_factors(curve(-step), 2, side)
    fd_u, fd_h = ((p - q) / (2 * step) for p, q in zip(plus, minus))
    # the schedule amplifies A's rounding-level zero singular values (~1e-16) to ≲ 1e-12 in U
    assert (torch.linalg.svdvals(pk.polar(a, side, method=method)[0])[2:] < 1e-10).all()
    du, dh = _jvp(lambda t: pk.polar(t, side, method=method), a, da)
    # central differences with step 1e-6: ~1e-9 (measured ≤ 6e-10); the zero singular values
    # come out at rounding level (≲ 1e-15) and fall below the rank tolerance max(m, n)·ε·σ₁
    torch.testing.assert_close(du, fd_u, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(dh, fd_h, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("method", ["svd", "qdwh"])
@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (5, 5)], ids=["tall", "wide", "square"])
def test_rank_deficient_orthonormal_factor_is_consistent(shape, method):
    """The SVD and QDWH return an orthonormal U for a singular A (one of many valid factors:
    QDWH lifts the rounding-level singular values to 1). Its derivative along rank-keeping
    perturbations satisfies dU H + U dH = dA, keeps U orthonormal (UᴴdU, or dU Uᴴ when wide,
    is skew-Hermitian), and dH (H is unique) matches central differences of scipy's H."""
    m, n = shape
    a = _with_spectrum(m, n, [2, 1, 0.5, 0][: min(m, n)] + [0] * (min(m, n) - 4), seed=23)
    curve, da = _rank_preserving_curve(a, seed=24)
    u, h = pk.polar(a, method=method)
    du, dh = _jvp(lambda t: pk.polar(t, method=method), a, da)
    step = 1e-6
    fd_h = torch.from_numpy((scipy.linalg.polar(curve(step).numpy())[1]
                             - scipy.linalg.polar(curve(-step).numpy())[1]) / (2 * step))
    gauge = du @ u.mT if m < n else u.mT @ du
    # float64 products of O(1) factors (‖dU‖ ≲ 1/σ_min(nonzero) = 2): rounding ~1e-15
    torch.testing.assert_close(du @ h + u @ dh, da, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gauge, -gauge.mT, rtol=1e-12, atol=1e-12)
    # central differences with step 1e-6: ~1e-9
    torch.testing.assert_close(dh, fd_h, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_zero_matrix_has_finite_gradient(method):
    """At A = 0 every pair has σᵢ + σⱼ = 0: all weights are 0 and H⁺ = 0, so gA = U herm(gH):
    zero for the iterative methods (U = 0), U herm(gH) for the SVD's orthonormal U."""
    a = torch.zeros(5, 3, dtype=torch.float64)
    gu, gh = _randn((5, 3), seed=25), _randn((3, 3), seed=26)
    g = _vjp(lambda t: pk.polar(t, method=method), a, (gu, gh))
    u = pk.polar(a, method=method)[0]
    assert torch.equal(g, u @ ((gh + gh.mT) / 2))  # exact: one product of exact zeros or of u


# --- memory and cost: nothing per iteration is saved ------------------------------------------------

def _saved_bytes(f) -> tuple[int, int]:
    """(number, bytes) of the distinct tensors autograd saves while f() runs (the Function
    saves the same three for reverse and forward mode)."""
    sizes = {}

    def pack(t):
        sizes[t.data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        f()
    return len(sizes), sum(sizes.values())


@pytest.mark.parametrize("method", METHODS)
def test_saves_only_the_input_and_the_factors(method):
    """Whatever the method and step cap, the graph holds A, U and H and nothing per iteration
    (autograd through 50 Newton–Schulz steps would save ~3 m×n or m×m tensors per step)."""
    a = _randn((40, 24), seed=27).requires_grad_()
    expected = (3, (40 * 24 * 2 + 24 * 24) * 8)
    if method == "svd":  # plus the SVD's V (24×24) and σ (24): the backward skips its eigh
        expected = (5, (40 * 24 * 2 + 24 * 24 * 2 + 24) * 8)
    for steps in (2, 50):
        assert _saved_bytes(lambda: pk.polar(a, method=method, steps=steps, tol=1e-300)) == expected


# --- torch.func --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["svd", "qdwh", "newton_schulz"])
def test_torch_func_grad_and_jvp_through_polar(method):
    """torch.func.grad and torch.func.jvp take the same rule as reverse and forward mode."""
    a, da = _randn((6, 4), seed=28), _randn((6, 4), seed=29)
    gu = _randn((6, 4), seed=30)
    loss = lambda t: (pk.polar(t, method=method)[0] * gu).sum()
    ref_g = _vjp(lambda t: pk.polar(t, method=method), a, (gu, torch.zeros(4, 4, dtype=torch.float64)))
    # the same float64 operations in another order: rounding only
    torch.testing.assert_close(torch.func.grad(loss)(a), ref_g, rtol=1e-12, atol=1e-12)
    _, (du, dh) = torch.func.jvp(lambda t: pk.polar(t, method=method), (a,), (da,))
    ref_du, ref_dh = _jvp(lambda t: pk.polar(t, method=method), a, da)
    torch.testing.assert_close(du, ref_du, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dh, ref_dh, rtol=1e-12, atol=1e-12)


def test_vmap_of_the_function_equals_the_batched_call():
    """torch.func.vmap over the Function (generate_vmap_rule) and its grad per sample. polar()
    itself cannot be vmapped: its convergence tests and finite check branch on tensor values."""
    a = _randn((3, 6, 4), seed=31)
    gu = _randn((3, 6, 4), seed=32)
    with torch.no_grad():
        u, h = _svd_factors(a, "right")
    per_sample = torch.func.vmap(torch.func.grad(lambda x, uu, hh, g: (attach(x, uu, hh)[0] * g).sum()))(a, u, h, gu)
    batched = _vjp(lambda t: attach(t, u, h), a, (gu, torch.zeros_like(h)))
    # the same float64 operations batched differently: rounding only
    torch.testing.assert_close(per_sample, batched, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (5, 5), (2, 6, 3)], ids=str)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["f64", "c128"])
def test_svd_spectrum_gives_the_eigh_gradient(shape, side, dtype):
    """The SVD route hands its (V, σ) to the backward instead of an eigh of H: the same gradient,
    also where σ repeats (there V is any basis of the eigenspace and (1)–(4) do not depend on
    which). Both are the same formula on the same H, so they agree to rounding: 1e-12 on
    order-1 entries in float64 (measured ≤ 1e-14)."""
    for repeated in (False, True):
        a = _randn(shape, seed=41, dtype=dtype)
        if repeated:  # singular values 1, 1, 2, 2, ...: every pair repeats
            p, _, qh = torch.linalg.svd(a, full_matrices=False)
            k = min(shape[-2:])
            s = torch.arange(k, dtype=torch.float64).div(2, rounding_mode="floor") + 1
            a = (p * s.to(p.dtype)) @ qh
        gu, gh = _randn(a.shape, seed=42, dtype=dtype), _randn(svd_polar_spectrum(a, side)[1].shape, seed=43, dtype=dtype)
        grads = []
        for use_spectrum in (True, False):
            x = a.clone().requires_grad_()
            u, h, spectrum = svd_polar_spectrum(a, side)
            uu, hh = attach(x, u, h, side, spectrum if use_spectrum else None)
            grads.append(torch.autograd.grad((torch.real(uu * gu.conj()).sum() + torch.real(hh * gh.conj()).sum()), x)[0])
        assert torch.allclose(grads[0], grads[1], rtol=0, atol=1e-12), f"repeated={repeated}"


@pytest.mark.parametrize("shape", [(5, 3), (3, 5)], ids=str)
def test_svd_route_second_order_takes_eigh(shape):
    """With create_graph the backward must not use the SVD's (V, σ), which carry no derivative:
    gradgradcheck through polar(method="svd") holds (float64, well-separated σ)."""
    a = torch.from_numpy(np.random.default_rng(44).standard_normal(shape)).requires_grad_()
    for side in SIDES:
        assert torch.autograd.gradgradcheck(lambda x, side=side: pk.polar(x, side, method="svd"), (a,))


# --- bad input -----------------------------------------------------------------------------------

def test_attach_rejects_mismatched_factors():
    a = _randn((5, 3))
    u, h = _svd_factors(a, "right")
    with pytest.raises(ValueError, match="side must be"):
        attach(a, u, h, "up")
    with pytest.raises(ValueError, match="do not belong"):
        attach(a, u, h, "left")
    with pytest.raises(TypeError, match="one dtype"):
        attach(a, u.float(), h)
    with pytest.raises(ValueError, match="spectrum of shapes"):
        attach(a, u, h, "right", (torch.eye(2, dtype=a.dtype), torch.ones(2, dtype=a.dtype)))


def test_needs_derivative():
    a = _randn((3, 2))
    assert not polar_backward.needs_derivative(a)
    assert polar_backward.needs_derivative(a.clone().requires_grad_())
    with torch.no_grad():
        assert not polar_backward.needs_derivative(a.clone().requires_grad_())
    with forward_ad.dual_level():
        assert polar_backward.needs_derivative(forward_ad.make_dual(a, a))
