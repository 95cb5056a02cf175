"""Complex input through the public API: array kinds, dtype rules, backends, bad input.

The numerical contract (orthogonality, backward and forward error against scipy.linalg.polar in
complex128) is checked by the validation grid in test_polar_vs_scipy.py and the invariances in
test_polar_properties.py; this file checks everything around it.
"""

import numpy as np
import pytest
import scipy.linalg
import torch

import polarkernels as pk
from matrices import conditioned

METHODS = ["svd", "qdwh", "polar_express", "newton_schulz", "muon"]


def _complex(m, n, seed=0, dtype=np.complex128):
    return conditioned(m, n, 10.0, seed=seed, complex=True).astype(dtype)


@pytest.mark.parametrize("method", METHODS)
def test_nested_lists_like_scipy(method):
    a = [[1 + 2j, 0.5], [3j, -1 - 1j], [2, 1j]]
    u, h = pk.polar(a, method=method)
    u_ref, h_ref = scipy.linalg.polar(np.asarray(a))
    assert isinstance(u, np.ndarray) and u.dtype == np.complex128 and h.dtype == np.complex128
    # κ(a) ≈ 2: every method converges to a few ε of scipy's factors.
    np.testing.assert_allclose(u, u_ref, atol=1e-13)
    np.testing.assert_allclose(h, h_ref, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("method", METHODS)
def test_numpy_complex_kinds_and_dtypes_round_trip(method, dtype):
    a = _complex(7, 4, dtype=dtype)
    u, h = pk.polar(a, method=method)
    assert isinstance(u, np.ndarray) and u.dtype == dtype and h.dtype == dtype
    assert h.shape == (4, 4)
    np.testing.assert_array_equal(h, h.conj().T)  # Hermitian by construction
    eps = np.finfo(dtype).eps
    # A = U H to the backward error the validation grid allows: 40 ε √max(m, n).
    assert np.linalg.norm(u @ h - a) / np.linalg.norm(a) < 40 * eps * np.sqrt(7)


@pytest.mark.parametrize("side", ["right", "left"])
def test_torch_complex_tensor_stays_a_tensor(side):
    a = torch.from_numpy(_complex(3, 6, seed=1)).to(torch.complex64)
    u, h = pk.polar(a, side=side)
    assert u.dtype == torch.complex64 and h.shape == ((6, 6) if side == "right" else (3, 3))
    # wide U: U Uᴴ = I to float32 rounding of a length-6 complex product (≤ 40 ε √6 ≈ 1e-5)
    torch.testing.assert_close(u @ u.mH, torch.eye(3, dtype=torch.complex64), atol=1e-5, rtol=0)


def test_real_input_is_untouched_by_the_complex_path():
    """A real input still gives real factors (no complex promotion)."""
    u, h = pk.polar(np.eye(3))
    assert u.dtype == np.float64 and h.dtype == np.float64


@pytest.mark.parametrize("method", ["polar_express", "muon", "newton_schulz", "qdwh", "svd"])
def test_orthogonalize_complex(method):
    g = torch.from_numpy(_complex(8, 5, seed=2))
    u = pk.orthogonalize(g, method=method)
    assert u.dtype == torch.complex128  # computed in complex64 (the default), returned as given
    s = torch.linalg.svdvals(u)
    # The same window the real fixed-step methods land in (tests/test_orthogonalize.py): exact for
    # svd/qdwh, [0.5, 1.25] for the quintics after 5 steps on κ = 10 input.
    assert bool((s > 0.5).all() and (s < 1.25).all()), s


@pytest.mark.parametrize("dtype, expected", [(None, torch.complex64), (torch.float64, torch.complex128),
                                             (torch.float32, torch.complex64),
                                             (torch.complex128, torch.complex128)])
def test_orthogonalize_complex_dtype_rules(dtype, expected):
    g = torch.from_numpy(_complex(6, 4, seed=3))
    u = pk.orthogonalize(g, dtype=dtype, method="svd")
    assert u.dtype == torch.complex128  # returned in the input's dtype whatever it ran in
    # the working precision shows in the result's rounding (κ = 10, exact SVD polar):
    exact = torch.from_numpy(scipy.linalg.polar(g.numpy())[0])
    err = float((u - exact).abs().max())
    if expected == torch.complex64:
        assert 1e-9 < err < 1e-5, err   # rounded at ε₃₂ ≈ 1e-7, visibly not complex128 work
    else:
        assert err < 1e-13, err         # a few ε₆₄ · κ


@pytest.mark.parametrize("dtype, match", [(torch.bfloat16, "no torch.bfloat16 counterpart"),
                                          (torch.float16, "no torch.float16 counterpart")])
def test_orthogonalize_complex_has_no_half(dtype, match):
    with pytest.raises(TypeError, match=match):
        pk.orthogonalize(torch.ones(3, 3, dtype=torch.complex64), dtype=dtype)


def test_orthogonalize_real_input_refuses_complex_dtype():
    with pytest.raises(TypeError, match="is complex but the input is real"):
        pk.orthogonalize(torch.ones(3, 3), dtype=torch.complex64)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("fn", [lambda a, b: pk.polar(a, method="polar_express", backend=b),
                                lambda a, b: pk.orthogonalize(a, backend=b),
                                lambda a, b: pk.orthogonalize_many([a, a[:2]], backend=b)],
                         ids=["polar", "orthogonalize", "orthogonalize_many"])
def test_real_only_backends_refuse_complex(fn, backend):
    """Never drop the imaginary part: a real-arithmetic backend raises, naming the way out."""
    with pytest.raises(TypeError, match="real arithmetic only"):
        fn(torch.ones(3, 3, dtype=torch.complex64), backend)


@pytest.mark.parametrize("method", ["polar_express", "newton_schulz", "qdwh"])
def test_blas_backend_takes_complex(method):
    a = torch.from_numpy(_complex(9, 6, seed=4))
    u_blas, h_blas = pk.polar(a, method=method, backend="blas")
    u_ref, h_ref = pk.polar(a, method=method, backend="torch")
    # same iteration, products rounded by a different BLAS: agreement to a few hundred ε at κ = 10
    torch.testing.assert_close(u_blas, u_ref, atol=1e-13, rtol=0)
    torch.testing.assert_close(h_blas, h_ref, atol=1e-13, rtol=0)


# The real API's bad-input cases run on complex input too in test_api_validation.py.


def test_complex32_is_refused():
    with pytest.raises(TypeError, match="not supported"):
        pk.polar(torch.ones(3, 3, dtype=torch.complex32))


@pytest.mark.parametrize("method", METHODS)
def test_complex_zero_and_empty(method):
    z = torch.zeros(2, 4, 3, dtype=torch.complex128)
    u, h = pk.polar(z, method=method)
    assert torch.isfinite(u).all() and torch.equal(h, torch.zeros(2, 3, 3, dtype=torch.complex128))
    assert torch.equal(pk.orthogonalize(z, method=method), z)  # Muon's convention: 0 ↦ 0
    e = torch.zeros(0, 4, 3, dtype=torch.complex64)
    assert pk.polar(e, method=method)[0].shape == e.shape


@pytest.mark.parametrize("method", ["polar_express", "muon", "newton_schulz"])
def test_gram_newton_schulz_takes_complex(method):
    """orthogonalize(gram=True) on complex input: the same 5 steps through the Gram matrix X Xᴴ."""
    g = torch.from_numpy(_complex(16, 64, seed=5)).to(torch.complex64)
    plain = pk.orthogonalize(g, method=method)
    via_gram = pk.orthogonalize(g, method=method, gram=True)
    # complex64, restarts every 2 steps: within ~10 ε₃₂ of the plain loop (tests/test_gram_newton_schulz.py)
    torch.testing.assert_close(via_gram, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["torch", "blas"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_wide_complex_numpy_through_the_svd(side, backend):
    """The SVD decomposes a wide A through Aᴴ: the factor it returns must be real memory, not a lazy
    conjugate view (NumPy refuses those), and match scipy's."""
    a = np.arange(6).reshape(2, 3) + 1j * np.ones((2, 3))
    u, h = pk.polar(a, side=side, method="svd", backend=backend)
    u_ref, h_ref = scipy.linalg.polar(a, side=side)
    # κ(a) ≈ 4: a few ε of scipy's factors
    np.testing.assert_allclose(u, u_ref, atol=1e-13)
    np.testing.assert_allclose(h, h_ref, atol=1e-13)
    t = pk.polar(torch.from_numpy(a), method="svd", backend=backend)[0]
    assert not t.is_conj() and np.array_equal(t.numpy(), pk.polar(a, method="svd", backend=backend)[0])
