"""StiefelMuon: weights stay on the manifold, it optimizes, checkpoints resume bitwise, bad input raises."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from polarkernels import polar
from polarkernels.optim import NonFiniteGradientError
from polarkernels.optim.stiefel import (STIEFEL_SOLVERS, StiefelMuon, on_stiefel, project_to_stiefel_,
                                        stiefel_error)


def stiefel_params(shapes, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(*s, generator=gen, dtype=dtype)) for s in shapes]
    project_to_stiefel_(params)
    return params


def test_stays_on_manifold_for_10k_float32_steps():
    # Two matrices (one batch); random gradients every step. The single-loop solver keeps the
    # test fast: what keeps W on the manifold is the retraction, the same for every solver.
    params = stiefel_params([(5, 3), (5, 3)])
    opt = StiefelMuon([], lr=0.05, stiefel=params, solver="spel")
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for step in range(10_000):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        if step % 250 == 249:
            worst = max(worst, *(float(stiefel_error(p.detach())) for p in params))
    # The polar retraction is converged to float32 working precision every step, so the error
    # does not accumulate: ‖WᵀW − I‖_F/√n stays at a few ε (polar's own bound is 40 ε √max(m, n)).
    assert worst < 40 * torch.finfo(torch.float32).eps * math.sqrt(5)
    assert all(on_stiefel(p.detach()) for p in params)


@pytest.mark.parametrize("solver, shape", [(s, (8, 3)) for s in STIEFEL_SOLVERS]
                         + [("fixed_point", (3, 8)), ("spel", (5, 4))], ids=lambda x: x if isinstance(x, str) else f"{x[0]}x{x[1]}")
def test_maximizes_trace_on_the_manifold(solver, shape):
    """max tr(WᵀC) over St(m, n) is attained at W* = polar(C) with value ‖C‖_*; a decaying lr reaches it."""
    gen = torch.Generator().manual_seed(2)
    c = torch.randn(*shape, generator=gen, dtype=torch.float64)
    (w,) = stiefel_params([shape], seed=3, dtype=torch.float64)
    opt = StiefelMuon([], lr=0.2, stiefel=[w], solver=solver, momentum=0.5, tol=1e-6, max_iter=20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.95 ** t)
    for _ in range(150):
        w.grad = -c                                                 # gradient of −tr(WᵀC)
        opt.step()
        sched.step()
    best = float(torch.linalg.svdvals(c).sum())
    # Converged to the maximiser (square W is excluded: O(n) has two components, and polar(C)
    # may lie in the other one): the last steps are 0.2·0.95¹⁵⁰ ≈ 1e-4 long. On 5×4 only SPEL
    # gets there on this schedule: with the exact direction (ADMM solves it to a 1e-7 gap) the
    # iterates stall at a 1e-3 relative gap, a property of unit-spectral-norm steps near this
    # optimum, not of the solvers (measured; see the README).
    # 1e-5: ≤ 20 solver iterations per step leave ADMM's late directions inexact (measured 3e-6;
    # the others reach 1e-8).
    assert best - float((w.detach() * c).sum()) < 1e-5 * best
    assert float(torch.linalg.matrix_norm(w.detach() - polar(c)[0])) < 1e-3


def test_one_argument_puts_parameters_on_the_manifold():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Conv1d(8, 2, 3), nn.Flatten(), nn.Linear(6, 1))
    on = [model[0].weight, model[2].weight]
    project_to_stiefel_(on)
    opt = StiefelMuon(model.parameters(), lr=0.02, stiefel=on)
    algorithms = {a: [p for g in opt.param_groups if g["algorithm"] == a for p in g["params"]]
                  for a in ("polar", "adamw", "stiefel")}
    assert [id(p) for p in algorithms["stiefel"]] == [id(p) for p in on]
    assert not {id(p) for p in on} & {id(p) for p in algorithms["polar"] + algorithms["adamw"]}
    assert {id(p) for p in algorithms["polar"]} == {id(model[4].weight)}
    x = torch.randn(16, 5, 4)                                        # (batch, length, features)
    for _ in range(20):
        opt.zero_grad()
        hidden = model[1](model[0](x)).transpose(1, 2)                    # (16, 8, 5)
        model[4](model[3](model[2](hidden))).square().mean().backward()
        opt.step()
    assert on_stiefel(model[0].weight.detach()) and on_stiefel(model[2].weight.detach())  # conv read as (2, 24)
    assert opt.last_solves and all(len(s) == 4 for s in opt.last_solves)


@pytest.mark.parametrize("solver", STIEFEL_SOLVERS)
def test_resume_is_bitwise(solver):
    def grads(step):
        gen = torch.Generator().manual_seed(100 + step)
        return [torch.randn(s, generator=gen) for s in ((7, 3), (2, 6), (5,))]

    def make():
        params = stiefel_params([(7, 3), (2, 6)], seed=4) + [nn.Parameter(torch.zeros(5))]
        return params, StiefelMuon([params[2]], lr=0.05, stiefel=params[:2], solver=solver, max_iter=5)

    def run(params, opt, steps):
        for step in steps:
            for p, g in zip(params, grads(step)):
                p.grad = g
            opt.step()

    params, opt = make()
    run(params, opt, range(12))
    params2, opt2 = make()
    run(params2, opt2, range(6))
    buf = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in params2], "optim": opt2.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    params3, opt3 = make()
    with torch.no_grad():
        for p, saved in zip(params3, ckpt["params"]):
            p.copy_(saved)
    opt3.load_state_dict(ckpt["optim"])
    run(params3, opt3, range(6, 12))
    for a, b in zip(params, params3):
        assert torch.equal(a, b)


def test_nonfinite_gradients():
    params = stiefel_params([(5, 2)])
    opt = StiefelMuon([], stiefel=params, lr=0.1)
    params[0].grad = torch.ones(5, 2)
    opt.step()
    before = params[0].detach().clone()
    state = {k: v.clone() for k, v in opt.state[params[0]].items()}
    params[0].grad = torch.full((5, 2), float("nan"))
    with pytest.raises(NonFiniteGradientError):
        opt.step()
    assert torch.equal(params[0].detach(), before)
    assert all(torch.equal(v, opt.state[params[0]][k]) for k, v in state.items())
    skip = StiefelMuon([], stiefel=params, lr=0.1, nonfinite="skip")
    skip.step()
    assert skip.skipped_steps == 1 and torch.equal(params[0].detach(), before)
    propagate = StiefelMuon([], stiefel=params, lr=0.1, nonfinite="propagate")   # NaN cannot live on the manifold
    with pytest.raises(NonFiniteGradientError, match="'stiefel' group"):
        propagate.step()
    assert torch.equal(params[0].detach(), before) and not propagate.state[params[0]]


def test_off_manifold_parameter_raises_until_projected():
    p = nn.Parameter(torch.randn(6, 3))
    opt = StiefelMuon([], stiefel=[p])
    p.grad = torch.randn(6, 3)
    with pytest.raises(ValueError, match="not on the Stiefel manifold.*project_to_stiefel_"):
        opt.step()
    assert not on_stiefel(p.detach())
    project_to_stiefel_(p)
    assert on_stiefel(p.detach())
    opt.step()
    assert on_stiefel(p.detach())


def test_project_keeps_direction():
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    p = a.clone()
    project_to_stiefel_(p)
    assert torch.allclose(p, polar(a)[0], atol=1e-14)


@pytest.mark.parametrize("kwargs, match", [
    (dict(solver="newton"), "solver must be one of"),
    (dict(tol=0), "tol \\(stiefel group\\) must be a positive number, got 0"),
    (dict(max_iter=0), "max_iter \\(stiefel group\\) must be a positive int, got 0"),
    (dict(stiefel_lr=-1.0), "lr \\(stiefel group\\) must be a finite number ≥ 0, got -1.0"),
    (dict(stiefel_method="cholesky"), "stiefel_method must be one of"),
    (dict(momentum=1.0), "momentum"),
])
def test_bad_hyperparameters(kwargs, match):
    params = stiefel_params([(4, 2)])
    with pytest.raises(ValueError, match=match):
        StiefelMuon([], stiefel=params, **kwargs)


def test_vector_on_the_manifold_raises():
    with pytest.raises(ValueError, match="needs matrices"):
        StiefelMuon([], stiefel=[nn.Parameter(torch.ones(3))])


def test_expert_stack_and_blocks_views():
    """A (3, 6, 4) expert stack ("batch" view) and a fused (8, 4) QKV-like weight split into two
    (4, 4) blocks: every matrix of the view is on its own manifold and stays there."""
    from polarkernels.optim import MatrixView

    gen = torch.Generator().manual_seed(8)
    experts = nn.Parameter(torch.randn(3, 6, 4, generator=gen))
    fused = nn.Parameter(torch.randn(8, 4, generator=gen))
    batch, blocks = MatrixView("batch"), MatrixView(blocks=("a", "b"))
    project_to_stiefel_(experts, view=batch)
    project_to_stiefel_(fused, view=blocks)
    assert stiefel_error(experts, batch).shape == (3,) and on_stiefel(experts.detach(), view=batch)
    assert on_stiefel(fused.detach(), view=blocks) and not on_stiefel(fused.detach())   # (8, 4) itself is not
    opt = StiefelMuon([{"params": [experts], "algorithm": "stiefel", "view": batch.spec()},
                       {"params": [fused], "algorithm": "stiefel", "view": blocks.spec()}], lr=0.05)
    for _ in range(5):
        experts.grad = torch.randn(experts.shape, generator=gen)
        fused.grad = torch.randn(fused.shape, generator=gen)
        opt.step()
    assert on_stiefel(experts.detach(), view=batch) and on_stiefel(fused.detach(), view=blocks)
    assert opt.state[experts]["multiplier"].shape == (3, 4, 4)          # one warm start per matrix
    assert {s[0] for s in opt.last_solves} == {(6, 4), (4, 4)}
    with pytest.raises(ValueError, match="does not split into 3 equal blocks"):
        StiefelMuon([{"params": [fused], "algorithm": "stiefel", "view": MatrixView(blocks=("q", "k", "v")).spec()}])
