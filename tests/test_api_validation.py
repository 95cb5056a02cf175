"""Bad input to polar() / orthogonalize(): every case raises clearly or returns a finite, correct result."""

import numpy as np
import pytest
import torch

import polarkernels as pk


# Every bad-input case runs on real and complex input alike.
DTYPES = [torch.float32, torch.complex128]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fn", [pk.polar, pk.orthogonalize], ids=["polar", "orthogonalize"])
@pytest.mark.parametrize("shape", [(), (3,)], ids=["0d", "1d"])
def test_rejects_non_matrices(fn, shape, dtype):
    with pytest.raises(ValueError, match=r"matrix or a batch of matrices"):
        fn(torch.ones(shape, dtype=dtype))


@pytest.mark.parametrize("fn", [pk.polar, lambda a: pk.orthogonalize(a, check_finite=True)],
                         ids=["polar", "orthogonalize"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), complex(0, float("inf"))])
def test_rejects_non_finite(fn, bad):
    a = torch.randn(4, 3, dtype=torch.complex64 if isinstance(bad, complex) else torch.float32)
    a[2, 1] = bad
    with pytest.raises(ValueError, match="infs or NaNs"):
        fn(a)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_names_the_bad_matrix_in_a_batch(dtype):
    a = torch.randn(2, 3, 4, 4, dtype=dtype)
    a[1, 2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"batch index \(1, 2\)"):
        pk.polar(a)


def test_check_finite_false_skips_the_check():
    a = torch.randn(4, 4, dtype=torch.float64)
    a[0, 0] = float("nan")
    u, _ = pk.polar(a, method="newton_schulz", check_finite=False)
    assert torch.isnan(u).any()  # garbage in, garbage out, but only when asked for


@pytest.mark.parametrize("dtype", [torch.bool, torch.complex32])
def test_rejects_unsupported_torch_dtypes(dtype):
    with pytest.raises(TypeError, match="not supported"):
        pk.polar(torch.ones(3, 3, dtype=dtype))


@pytest.mark.parametrize("arr", [np.ones((3, 3), dtype=bool), np.ones((3, 3), dtype=np.clongdouble),
                                 np.array([["a", "b"], ["c", "d"]])], ids=["bool", "clongdouble", "str"])
def test_rejects_unsupported_numpy_dtypes(arr):
    with pytest.raises(TypeError):
        pk.polar(arr)


def test_rejects_non_arrays():
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        pk.polar("not a matrix")


def test_integer_numpy_is_promoted_to_float64_like_scipy():
    a = np.array([[2, 1], [0, 3]], dtype=np.int32)
    u, h = pk.polar(a)
    assert isinstance(u, np.ndarray) and u.dtype == np.float64 and h.dtype == np.float64
    # A = U H exactly up to float64 rounding of a 2×2 product: a few ε·‖A‖.
    np.testing.assert_allclose(u @ h, a, atol=1e-14)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(method="cholesky"), ValueError, "unknown method"),
    (dict(side="up"), ValueError, "side must be"),
    (dict(backend="opencl"), ValueError, "unknown backend"),
    (dict(steps=-1), ValueError, "non-negative"),
    (dict(steps=2.5), TypeError, "steps must be"),
    (dict(steps=True), TypeError, "steps must be"),
    (dict(tol=0.0), ValueError, "tol must be positive"),
])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_polar_rejects_bad_options(kwargs, exc, match, dtype):
    with pytest.raises(exc, match=match):
        pk.polar(torch.randn(3, 3, dtype=dtype), **kwargs)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(method="auto"), ValueError, "unknown method"),
    (dict(backend="opencl"), ValueError, "unknown backend"),
    (dict(steps=-2), ValueError, "non-negative"),
    (dict(steps=None), TypeError, "steps must be"),
    (dict(dtype=torch.int32), TypeError, "dtype must be"),
])
def test_orthogonalize_rejects_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        pk.orthogonalize(torch.randn(3, 3), **kwargs)


def test_svd_runs_on_torch_or_blas_only():
    with pytest.raises(ValueError, match="runs on the 'torch' or 'blas'"):
        pk.polar(torch.randn(3, 3), method="svd", backend="triton")


def test_missing_backend_raises_with_reason():
    with pytest.raises(RuntimeError, match="not available"):
        pk.orthogonalize(torch.randn(3, 3), backend="cuda")


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
@pytest.mark.parametrize("method", ["svd", "qdwh", "polar_express", "newton_schulz", "muon"])
def test_input_is_never_modified(method, dtype):
    a = torch.randn(6, 4, dtype=dtype)
    before = a.clone()
    pk.polar(a, method=method)
    pk.orthogonalize(a, method=method)
    assert torch.equal(a, before)


@pytest.mark.parametrize("method", ["svd", "qdwh", "polar_express", "newton_schulz", "muon"])
def test_empty_batch_and_empty_matrices(method):
    for shape in [(0, 4, 3), (2, 0, 3), (2, 3, 0)]:
        a = torch.randn(shape)
        u, h = pk.polar(a, method=method)
        assert u.shape == shape and h.shape == (*shape[:-2], shape[-1], shape[-1])
        assert pk.orthogonalize(a, method=method).shape == shape


@pytest.mark.parametrize("method", ["svd", "qdwh", "polar_express", "newton_schulz", "muon"])
def test_zero_matrix(method):
    a = torch.zeros(2, 5, 3, dtype=torch.float64)
    u, h = pk.polar(a, method=method)
    assert torch.isfinite(u).all() and torch.equal(h, torch.zeros(2, 3, 3, dtype=torch.float64))
    assert torch.equal(pk.orthogonalize(a, method=method), torch.zeros_like(a))  # Muon's convention


@pytest.mark.parametrize("method", ["qdwh", "polar_express", "newton_schulz"])
def test_rank_deficient_gives_the_partial_isometry(method):
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.standard_normal((7, 2)) @ rng.standard_normal((2, 5)))  # rank 2
    u, h = pk.polar(a, method=method)
    # U Uᵀ U = U (a partial isometry) and A = U H; fp64 iterations land within ~1e3 ε of both
    # (the loop stops at the rounding floor of ‖S − I‖, which rank deficiency keeps at √(3/5)).
    torch.testing.assert_close(u @ u.mT @ u, u, atol=1e-12, rtol=0)
    torch.testing.assert_close(u @ h, a, atol=1e-12 * float(a.norm()), rtol=0)
    # (QDWH lifts the rounding-level σ ≈ 1e-16 of this product to 1 — also a valid factor — while
    # the polynomial iterations leave them near 0: either way U is a partial isometry.)


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 1e30), (torch.float32, 1e-30),
                                          (torch.bfloat16, 1e30), (torch.bfloat16, 1e-30),
                                          (torch.float16, 6e4), (torch.float16, 1e-4)])
@pytest.mark.parametrize("method", ["svd", "qdwh", "polar_express", "newton_schulz"])
def test_extreme_scales_do_not_overflow(dtype, scale, method):
    rng = np.random.default_rng(2)
    base = torch.from_numpy(rng.uniform(-1, 1, (6, 4)))
    a = (base * scale).to(dtype)
    u, h = pk.polar(a, method=method)
    u_ref, _ = pk.polar(a.double(), method="svd")
    assert torch.isfinite(u).all()
    if float(torch.linalg.matrix_norm(a.double(), 2)) < torch.finfo(dtype).max / 2:
        assert torch.isfinite(h).all()  # H is finite wherever ‖A‖₂ itself is representable
    # U is scale-invariant; the only error is rounding U to the input dtype (≤ ε_dtype per entry)
    # after a float32 computation on a condition-~10 matrix: 4 ε_dtype relative in Frobenius norm.
    eps = torch.finfo(dtype).eps
    assert float((u.double() - u_ref).norm() / u_ref.norm()) < 4 * eps + 1e-5
    w = pk.orthogonalize(a, method=method)
    assert torch.isfinite(w).all()


def test_non_contiguous_and_transposed_inputs():
    a = torch.randn(9, 7, dtype=torch.float64)
    u_t, h_t = pk.polar(a.mT)  # a transposed view
    u_c, h_c = pk.polar(a.mT.contiguous())
    torch.testing.assert_close(u_t, u_c)
    strided = torch.randn(10, 14, dtype=torch.float64)[::2, ::2]
    u_s, _ = pk.polar(strided, method="qdwh")
    u_r, _ = pk.polar(strided.contiguous(), method="qdwh")
    torch.testing.assert_close(u_s, u_r)
    neg = np.random.default_rng(3).standard_normal((5, 5))[::-1]  # negative NumPy strides
    u_n, _ = pk.polar(neg)
    np.testing.assert_allclose(u_n @ u_n.T, np.eye(5), atol=1e-13)


def test_returns_same_kind_device_and_dtype():
    a = np.random.default_rng(4).standard_normal((5, 3)).astype(np.float32)
    u, h = pk.polar(a)
    assert isinstance(u, np.ndarray) and u.dtype == np.float32 and h.dtype == np.float32
    w = pk.orthogonalize(torch.randn(5, 3, dtype=torch.float16))
    assert isinstance(w, torch.Tensor) and w.dtype == torch.float16
