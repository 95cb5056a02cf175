"""polarkernels.threaded_svd: a CPU batch split over threads gives exactly torch.linalg.svd's
factors, and the split is never taken where thread-local state (autograd, functorch transforms,
forward-mode tangents, tracing) would be lost on the way to the pool's threads."""

from __future__ import annotations

import math
import multiprocessing as mp

import pytest
import torch

import polarkernels as pk
import polarkernels.threaded_svd as threaded
from polarkernels.svd import svd_polar
from polarkernels.threaded_svd import thin_svd


@pytest.fixture
def two_threads():
    """torch at 2 (and back to what it was): the split needs at least two threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def svd_calls(monkeypatch):
    """The batch sizes torch.linalg.svd is called with (a split shows up as several calls)."""
    calls = []
    real = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda x, **kw: calls.append(x.shape[:-2].numel()) or real(x, **kw))
    return calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex64], ids=str)
@pytest.mark.parametrize("shape", [(5, 9, 6), (2, 3, 6, 9), (3, 1, 1), (1, 8, 8)], ids=str)
@pytest.mark.parametrize("threads", [2, 3])
def test_split_is_bitwise_torch(shape, dtype, threads, svd_calls):
    """Each matrix goes through the same LAPACK call, so the factors are torch's bit for bit,
    whatever the batch shape and the number of chunks (min(threads, matrices))."""
    a = torch.randn(shape, dtype=dtype)
    expected = torch.linalg.svd(a, full_matrices=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        svd_calls.clear()
        got = thin_svd(a)
        assert torch.get_num_threads() == threads, "the workers' one-thread setting leaked to the caller"
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    flat = math.prod(shape[:-2])
    assert len(svd_calls) == (min(threads, flat) if flat > 1 else 1), svd_calls


def test_polar_takes_the_split(two_threads, svd_calls):
    a = torch.randn(4, 6, 5, dtype=torch.float64)
    u = pk.polar(a)[0]
    assert svd_calls == [2, 2] and torch.equal(u, svd_polar(a))


@pytest.mark.parametrize("shape", [(4, 0, 5), (4, 5, 0), (0, 3, 3), (6, 4)], ids=str)
def test_empty_and_single_matrices_take_one_plain_call(shape, two_threads, svd_calls):
    a = torch.randn(shape, dtype=torch.float64)
    got = thin_svd(a)
    assert all(torch.equal(g, e) for g, e in zip(got, torch.linalg.svd(a, full_matrices=False)))
    assert len(svd_calls) == 2  # ours, then the reference's


def test_no_split_under_autograd_or_above_the_size_limit(two_threads, svd_calls, monkeypatch):
    monkeypatch.setattr(threaded, "BATCH_PARALLEL_MAX_SIDE", 8)
    thin_svd(torch.randn(4, 6, 6, dtype=torch.float64, requires_grad=True))
    thin_svd(torch.randn(4, 9, 12, dtype=torch.float64))
    assert svd_calls == [4, 4]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the trace is checked against a fresh input below
def test_jvp_vmap_and_trace_see_the_svd(two_threads):
    """Transforms and tracers live in thread-local state the pool's threads do not share: the
    split must step aside, or jvp's tangent would be silently zero, vmap would fail and a trace
    would bake the SVD in as constants."""
    a, t = torch.randn(3, 6, 5, dtype=torch.float64), torch.randn(3, 6, 5, dtype=torch.float64)
    _, tangent = torch.func.jvp(svd_polar, (a,), (t,))
    h = 1e-6  # central difference of an analytic map in float64: error ~h² + ε/h ≈ 1e-10
    fd = (svd_polar(a + h * t) - svd_polar(a - h * t)) / (2 * h)
    assert torch.allclose(tangent, fd, atol=1e-7), float((tangent - fd).abs().max())
    per_sample = torch.func.vmap(svd_polar)(a)
    assert torch.allclose(per_sample, svd_polar(a), atol=1e-13)
    traced = torch.jit.trace(svd_polar, a, check_trace=False)
    b = torch.randn(3, 6, 5, dtype=torch.float64)
    assert torch.allclose(traced(b), svd_polar(b), atol=1e-13)


def test_worker_error_reports_the_whole_batch_index(two_threads):
    a = torch.randn(6, 4, 4, dtype=torch.float64)
    a[5] = float("nan")
    with pytest.raises(RuntimeError, match=r"Batch element 5\b"):
        thin_svd(a)


def test_split_works_in_a_forked_child(two_threads):
    """A forked child (a DataLoader worker) inherits the pool object but not its threads: the
    pool is made anew there instead of waiting forever on threads that do not exist."""
    a = torch.randn(4, 5, 5, dtype=torch.float64)
    expected = thin_svd(a)[1]  # the parent's pool now exists
    with mp.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_singular_values_in_child, (a,)).get(timeout=60)
    assert torch.equal(got, expected)


def _singular_values_in_child(a):
    torch.set_num_threads(2)
    return thin_svd(a)[1]
