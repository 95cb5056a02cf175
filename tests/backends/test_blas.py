"""The BLAS backend against the torch reference: gram, poly, apply and the whole loop.

Reference: :mod:`polarkernels.backends.torch_ref` run on the float64 upcast of the same inputs.
Tolerance, elementwise and rigorous (Higham, "Accuracy and Stability of Numerical Algorithms",
§3.5): a length-k dot product computed in any order, blocked or with FMAs, satisfies
|fl(xᵀy) − xᵀy| ≤ γ_k |x|ᵀ|y|, γ_k = k u / (1 − k u), u = ε/2. Each primitive is one such
product plus at most two scalings/additions (α, β), so its error is ≤ γ_{k+2} times the same
expression with absolute values, plus the float64 reference's own error, γ_{k+2}(float64) times the
same. Every test checks that bound on every entry; a wrong transpose, triangle or β misses it by
orders of magnitude. Complex dtypes: a complex multiply-add is two real ones per component, so the
bound takes γ_{2(k+2)} (Higham §3.6), against the complex128 reference; a missing conjugate misses
it by orders of magnitude too.
"""

import math

import pytest
import torch

from matrices import conditioned
from polarkernels import iterate, schedules
from polarkernels.backends import blas, torch_ref
from polarkernels.svd import svd_polar

DTYPES = [torch.float32, torch.float64, torch.complex64, torch.complex128]
# (batch, m, n): odd, square, tall, wide, single row/column, batched with 1 and 2 batch dims
SHAPES = [((), 1, 1), ((), 1, 9), ((), 9, 1), ((), 3, 7), ((), 17, 17), ((), 33, 64), ((), 64, 33),
          ((), 130, 257), ((2,), 5, 11), ((3, 2), 12, 7), ((4,), 31, 31)]
LAYOUTS = ["row_major", "col_major", "strided"]


def _ids(shape):
    batch, m, n = shape
    return "x".join(map(str, (*batch, m, n)))


def _gamma(k: int, dtype: torch.dtype) -> float:
    u = torch.finfo(dtype).eps / 2
    k = 2 * k if dtype.is_complex else k
    return k * u / (1 - k * u)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """The float64 (complex128) reference copy."""
    return t.to(torch.complex128) if t.is_complex() else t.double()


def _make(batch, m, n, dtype, layout, seed):
    """A random (batch, m, n) tensor stored row-major, column-major or with a column stride 2."""
    g = torch.Generator().manual_seed(seed)
    if layout == "col_major":
        return torch.randn(*batch, n, m, generator=g, dtype=dtype).mT
    if layout == "strided":
        return torch.randn(*batch, m, 2 * n, generator=g, dtype=dtype)[..., ::2]
    return torch.randn(*batch, m, n, generator=g, dtype=dtype)


def _symmetric(batch, m, dtype, layout, seed):
    s = _make(batch, m, m, dtype, "row_major", seed)
    s = (s + s.mH) / 2
    return s.mT.contiguous().mT if layout == "col_major" else s  # same values, column-major memory


def _assert_within_bound(actual, expected, scale, k, dtype, what):
    """|actual − expected| ≤ (γ_{k+2}(dtype) + γ_{k+2}(float64)) · scale, entrywise."""
    assert actual.shape == expected.shape and actual.dtype == dtype, what
    bound = (_gamma(k + 2, dtype) + _gamma(k + 2, torch.float64)) * scale
    err = (_wide(actual) - expected).abs()
    ratio = float((err / bound.clamp_min(torch.finfo(torch.float64).tiny)).max()) if err.numel() else 0.0
    assert ratio <= 1.0, f"{what}: error reaches {ratio:.2f}× the rounding bound (max abs {float(err.max()):.2e})"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_gram_matches_reference_and_is_exactly_symmetric(shape, dtype, layout):
    batch, m, n = shape
    x = _make(batch, m, n, dtype, layout, seed=1)
    s = blas.gram(x)
    assert torch.equal(s, s.mH), "lower triangle must be mirrored exactly"
    _assert_within_bound(s, torch_ref.gram(_wide(x)), torch_ref.gram(_wide(x).abs()), n, dtype, "gram")


@pytest.mark.parametrize("layout", ["row_major", "col_major"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[1] == s[2] or s[1] < s[2]], ids=_ids)
@pytest.mark.parametrize("b, c", [(-2.8, 0.5), (1.0, -1.25), (-0.7, 0.0)])
def test_poly_matches_reference_and_is_exactly_symmetric(shape, dtype, layout, b, c):
    batch, m, _ = shape
    s = _symmetric(batch, m, dtype, layout, seed=2)
    p = blas.poly(s, b, c)
    assert torch.equal(p, p.mH), "lower triangle must be mirrored exactly"
    s64 = _wide(s)
    scale = abs(b) * s64.abs() + abs(c) * s64.abs() @ s64.abs()
    _assert_within_bound(p, torch_ref.poly(s64, b, c), scale, m, dtype, "poly")


@pytest.mark.parametrize("b_layout", ["row_major", "col_major"])
@pytest.mark.parametrize("x_layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_apply_matches_reference_for_any_square_b(shape, dtype, x_layout, b_layout):
    batch, m, n = shape
    x = _make(batch, m, n, dtype, x_layout, seed=3)
    bmat = _make(batch, m, m, dtype, b_layout, seed=4)  # not symmetric: apply must not assume it
    a = 2.35
    out = blas.apply(bmat, x, a)
    x64, b64 = _wide(x), _wide(bmat)
    _assert_within_bound(out, torch_ref.apply(b64, x64, a), a * x64.abs() + b64.abs() @ x64.abs(), m, dtype, "apply")


def test_inputs_are_not_modified():
    x, s = torch.randn(2, 6, 9), torch.randn(2, 6, 6)
    s = s + s.mT
    x0, s0 = x.clone(), s.clone()
    blas.gram(x), blas.poly(s, 1.5, -0.5), blas.apply(s, x, 2.0)
    assert torch.equal(x, x0) and torch.equal(s, s0)


@pytest.mark.parametrize("batch, m, n", [((0,), 3, 4), ((2,), 0, 4), ((2,), 3, 0)])
def test_empty_inputs(batch, m, n):
    """Shapes follow the reference; values are exact (empty sums are 0)."""
    x = torch.randn(*batch, m, n)
    s = blas.gram(x)
    assert torch.equal(s, torch.zeros(*batch, m, m))
    assert torch.equal(blas.poly(s, 2.0, 1.0), torch.zeros(*batch, m, m))
    assert torch.equal(blas.apply(s, x, 3.0), x * 3.0)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="float32/float64/complex64/complex128"):
        blas.gram(torch.randn(3, 4, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="same dtype"):
        blas.apply(torch.eye(3), torch.randn(3, 4, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="bmat must have shape"):
        blas.apply(torch.eye(4), torch.randn(3, 4), 1.0)
    with pytest.raises(ValueError, match=r"\(\.\.\., m, n\)"):
        blas.gram(torch.randn(5))


def test_available_reports_scope():
    ok, note = blas.available()
    assert ok and "float32/float64/complex64/complex128" in note


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", ["polar_express", "newton_schulz", "muon"])
def test_fixed_schedule_matches_torch_backend(method, dtype):
    """Five steps through the loop: same iterate as the torch backend up to rounding.

    Each step is backward stable per primitive (above) and the fixed schedules are contractive on
    σ ∈ [0, 1]; measured: ≤ 25 ε relative (Frobenius) after 5 steps, so 300 ε is a > 10× margin.
    """
    schedule = schedules.fixed_schedule(method, 5)
    a = conditioned(24, 50, 30.0, seed=5, batch=(3,), complex=dtype.is_complex)
    x0 = iterate.frobenius_normalize(torch.from_numpy(a).to(dtype), schedule.norm_safety)
    u_blas = iterate.run(x0, schedule, blas).u
    u_ref = iterate.run(x0, schedule, torch_ref).u
    err = float(torch.linalg.matrix_norm(_wide(u_blas - u_ref)).max() / math.sqrt(24))
    assert err <= 300 * torch.finfo(dtype).eps, f"{method}: relative difference {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_convergent_polar_express_reaches_the_svd_factor(dtype):
    """The loop to convergence on a κ = 100 input: forward error ≲ c ε κ (perturbation theory,
    as in tests/test_polar_vs_scipy.py, whose bound 40 ε κ √k + 40 ε √n this reuses)."""
    m, n, cond = 40, 70, 100.0
    a64 = torch.from_numpy(conditioned(m, n, cond, seed=6, complex=dtype.is_complex))
    schedule = schedules.convergent_schedule("polar_express")
    result = iterate.run(iterate.frobenius_normalize(a64.to(dtype), schedule.norm_safety), schedule, blas)
    assert result.converged
    eps = torch.finfo(dtype).eps
    forward = float(torch.linalg.matrix_norm(_wide(result.u) - svd_polar(a64))) / math.sqrt(m)
    assert forward <= 40 * eps * cond * math.sqrt(m) + 40 * eps * math.sqrt(n), f"forward error {forward:.2e}"


@pytest.mark.parametrize("block, m", [(4, 1), (4, 5), (4, 11), (256, 600)])
def test_mirror_copies_the_lower_triangle_exactly_across_blocks(monkeypatch, block, m):
    """The blocked mirror: diagonal blocks, partial last block, strips between blocks."""
    monkeypatch.setattr(blas, "_MIRROR_BLOCK", block)
    s = torch.randn(2, m, m, dtype=torch.float64)
    expected = s.tril() + s.tril(-1).mT
    assert torch.equal(blas._mirror_lower(s.clone()), expected)
