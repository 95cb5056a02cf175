"""The optimizer benchmark's problems compute what they claim, and the harness runs end to end.

Matrix problems: the closed-form gradient (which the benchmark logs ‖∇f‖_* and κ₂ from) and the
training loss's autograd gradient both match float64 autograd of the paper's definition; f* is
right where it is known. Networks: data splits, targets and initial losses are what the
docstrings say. Problems are shrunk (same code, smaller shapes) to keep this file fast. The
harness is tested in ``test_optimizer_harness.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from bench.optimizers.problems import (DigitsMLP, LogisticRegression, MatrixCompletion, QuadraticRegression,
                                       StdlibCharLM, StiefelDigitsMLP, StiefelTrace, stdlib_corpus)

# float32 gradients of these small problems against float64 autograd: the products are sums of
# ≤ 60 terms, so the error is a few float32 eps (1.2e-7) times the conditioning of the sums;
# measured ≤ 3e-6 relative (Frobenius) over seeds 0-9; 1e-4 leaves margin without hiding a
# wrong formula (a wrong transpose or factor gives O(1)).
GRAD_RTOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The benchmark's own default (``--threads 1``): these small products ran 1.5-60× slower
    on 2 threads than on 1 on the 2-vCPU development machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def autograd64(loss_fn, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().double().requires_grad_()
    loss_fn(x).backward()
    return x.grad


@pytest.fixture(scope="module")
def quad() -> QuadraticRegression:
    return QuadraticRegression(m=30, n=8, p=60, q=20)


def test_quadratic_gradient_matches_definition(quad):
    model = quad.build(seed=3)
    a, b, c = (t.double() for t in (quad.a, quad.b, quad.c))
    expected = autograd64(lambda x: 0.5 * ((a @ x @ b - c) ** 2).sum(), model.X)    # ½‖AXB − C‖²
    assert rel(quad.gradient(model)["X"], expected) < GRAD_RTOL
    quad.train_loss(model, torch.Generator()).backward()
    assert rel(model.X.grad, expected) < GRAD_RTOL


def test_quadratic_loss_and_optimum(quad):
    model = quad.build(seed=1)
    f = quad.objective(model.X)
    # the training loss is the exact expansion f* + ½⟨E, AᵀA E BBᵀ⟩ evaluated in float32: equal
    # to f up to float32 rounding of a sum of positive terms (relative 1e-6 measured; 1e-5 bound)
    assert float(quad.train_loss(model, torch.Generator()).detach()) == pytest.approx(f, rel=1e-5)
    assert quad.evaluate(model)["loss"] == pytest.approx(f - quad.f_star, rel=1e-9)   # float64 both
    # X* is the minimiser: zero gradient (float64, relative to the gradient at a random point,
    # bounded by float64 eps × κ(AᵀA)κ(BBᵀ) ≈ 1e-16 × 1e3) and f* below f of perturbed points
    a, b, c = (t.double() for t in (quad.a, quad.b, quad.c))
    grad_star = a.mT @ (a @ quad.x_star @ b - c) @ b.mT
    grad_rand = a.mT @ (a @ model.X.detach().double() @ b - c) @ b.mT
    assert float(grad_star.norm() / grad_rand.norm()) < 1e-10
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        assert quad.objective(quad.x_star + 1e-3 * torch.randn(quad.x_star.shape, generator=gen,
                                                                dtype=torch.float64)) > quad.f_star


def test_logistic_gradient_and_minibatch():
    prob = LogisticRegression(m=40, n=6, rows=120, q=15, batch=32)
    model = prob.build(seed=2)
    a, b, c = (t.double() for t in (prob.a, prob.b, prob.c))
    expected = autograd64(lambda x: torch.log1p(torch.exp(-c * (a @ x @ b))).sum(), model.X)
    assert rel(prob.gradient(model)["X"], expected) < GRAD_RTOL
    # a training step uses the rows the generator draws, with their labels
    rows = torch.randint(0, 120, (32,), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        batch_loss = prob.train_loss(model, torch.Generator().manual_seed(7))
        direct = torch.log1p(torch.exp(-c[rows] * (a[rows] @ model.X.double() @ b))).sum()
    assert float(batch_loss) == pytest.approx(float(direct), rel=1e-5)      # float32 sum of 480 terms
    assert set(prob.c.unique().tolist()) == {-1.0, 1.0}
    with torch.no_grad():
        model.X.zero_()
    assert prob.evaluate(model)["loss"] == pytest.approx(math.log(2), rel=1e-6)   # softplus(0) = ln 2


def test_completion_gradient_and_zero_optimum():
    prob = MatrixCompletion(m=30, n=20, rank=3, observed=0.3)
    model = prob.build(seed=0)
    mask, target = prob.mask.double(), prob.target.double()
    observed = mask.sum()

    def f(x, y):
        return ((mask * (x @ y.mT - target)) ** 2).sum() / observed

    grads = prob.gradient(model)
    assert rel(grads["X"], autograd64(lambda x: f(x, model.Y.double()), model.X)) < GRAD_RTOL
    assert rel(grads["Y"], autograd64(lambda y: f(model.X.double(), y), model.Y)) < GRAD_RTOL
    # f is the mean squared error over the observed entries only
    i, j = prob.mask.nonzero(as_tuple=True)
    mse = ((model.X @ model.Y.mT).detach()[i, j] - prob.target[i, j]).pow(2).mean()
    assert prob.evaluate(model)["loss"] == pytest.approx(float(mse), rel=1e-6)
    # the true factors attain f* = 0 (up to float32 rounding of U Vᵀ)
    with torch.no_grad():
        model.X.copy_(prob.u)
        model.Y.copy_(prob.v)
    assert prob.evaluate(model)["loss"] < 1e-10


def test_digits_split_and_learnable():
    prob = DigitsMLP(width=32)
    sizes = [len(part[1]) for part in (prob.train, prob.val, prob.test)]
    assert sum(sizes) == 1797 and min(sizes) >= 359
    rows = {tuple(x.tolist()) for part in (prob.train, prob.val, prob.test) for x in part[0][:50]}
    assert len(rows) == 150                      # the sampled rows of the three splits are distinct
    model = prob.build(seed=0)
    assert prob.evaluate(model)["loss"] == pytest.approx(math.log(10), abs=0.2)   # near-uniform at init
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        opt.zero_grad()
        prob.train_loss(model, gen).backward()
        opt.step()
    result = prob.evaluate(model)
    assert result["test_accuracy"] > 0.9         # a 2-hidden-layer MLP gets ~97% here
    assert result["loss"] < 0.5


def test_stdlib_lm_data_and_model():
    train, val = stdlib_corpus()
    assert not set(train) & set(val) and len(val) >= 2
    assert stdlib_corpus() == (train, val)       # deterministic file list
    prob = StdlibCharLM(width=32, layers=1, heads=2, context=16, batch=4, val_windows=8)
    assert torch.equal(prob.val_x[:, 1:], prob.val_y[:, :-1])               # targets = next byte
    model = prob.build(seed=0)
    # N(0, 0.02²) weights give near-uniform next-byte predictions: loss ≈ ln 256
    assert prob.evaluate(model)["loss"] == pytest.approx(math.log(256), abs=0.05)
    # causal: changing the last byte leaves every earlier prediction unchanged
    x = prob.val_x[:2].clone()
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 256
    with torch.no_grad():
        assert torch.allclose(model(x)[:, :-1], model(y)[:, :-1], atol=1e-6)
    loss = prob.train_loss(model, torch.Generator().manual_seed(0))
    assert loss.shape == () and torch.isfinite(loss)


def test_stiefel_trace_gap_and_invariance():
    prob = StiefelTrace(m=24, n=4)
    eigvals, eigvecs = torch.linalg.eigh(prob.a)                  # ascending
    assert prob.best == pytest.approx(float(eigvals[-4:].sum()), rel=1e-12)   # float64 eigh
    model = prob.build(seed=0)
    # built on the manifold: ‖WᵀW − I‖_F at float32 rounding (polar of a 24×4 matrix, ~1e-7)
    assert prob.evaluate(model)["orthogonality"] < 1e-5
    gap = prob.evaluate(model)["loss"]
    assert 0 < gap < 1
    # the top eigenvectors close the gap (float64 metric: ~1e-16; 1e-12 is generous)
    with torch.no_grad():
        model.w.copy_(eigvecs[:, -4:].float())
    assert abs(prob.evaluate(model)["loss"]) < 1e-6              # float32 eigenvectors: ~1e-7
    # the generalised Rayleigh quotient is invariant to W → WR (R invertible): float64, 1e-10
    fresh = prob.build(seed=1)
    r = torch.randn(4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 4 * torch.eye(4)
    w = fresh.w.detach().double()
    assert float(prob._gap(w @ r)) == pytest.approx(float(prob._gap(w)), abs=1e-10)


def test_stiefel_digits_split_and_manifold():
    prob = StiefelDigitsMLP()
    assert len(prob.train[1]) == 1400 and len(prob.val[1]) == 397
    model = prob.build(seed=0)
    assert [tuple(p.shape) for p in prob.on_manifold(model)] == [(96, 64), (32, 96)]   # the head is not
    result = prob.evaluate(model)
    assert result["orthogonality"] < 1e-5                         # float32 polar factors, ~1e-6
    assert result["loss"] == pytest.approx(math.log(10), abs=0.5)  # untrained head: near-uniform
    assert torch.isfinite(prob.train_loss(model, torch.Generator().manual_seed(0)))
