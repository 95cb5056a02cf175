"""Muon against its equations, against torch.optim.Muon, and Moonlight's 0.2 update RMS."""

from __future__ import annotations

import pytest
import torch

from polarkernels.optim import Muon, PolarGrad

from matrices import assert_close
from optim_reference import muon as reference_muon
from optim_runs import random_problem, step_size, train

SHAPES = [(8, 12), (13, 7), (8, 12), (6, 2, 3, 3)]


@pytest.mark.parametrize("adjust_lr_fn", [None, "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False], ids=["nesterov", "heavy_ball"])
def test_matches_reference(nesterov, adjust_lr_fn):
    w0, grads = random_problem(SHAPES, steps=5, seed=11)
    params, _ = train(Muon, w0, grads, lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov,
                      adjust_lr_fn=adjust_lr_fn, dtype=torch.float64)
    for i, (p, w) in enumerate(zip(params, w0)):
        ref = reference_muon(w, [g[i] for g in grads], lr=0.02, beta=0.9, wd=0.1, nesterov=nesterov, steps=5,
                             adjust_lr_fn=adjust_lr_fn)
        # float64 throughout; the normalisations differ by ~ε (the package pre-scales by max|X|)
        # and Muon's 5 quintic steps amplify that by at most Π|p'(σ)| ≤ 3.4445⁵ ≈ 500: ~1e-13.
        assert_close(p.detach(), ref, rtol=1e-11, what=f"W of {tuple(w.shape)}")


def test_is_polargrad_with_shape_scale():
    """Muon = PolarGrad(nesterov=True, scale="shape", method="muon"): the same trajectory bitwise."""
    w0, grads = random_problem(SHAPES, steps=3, seed=12, dtype=torch.float32)
    a, _ = train(Muon, w0, grads, lr=0.02)
    b, _ = train(PolarGrad, w0, grads, lr=0.02, weight_decay=0.1, nesterov=True, scale="shape", method="muon",
                 steps=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def torch_muon_runs(adjust_lr_fn):
    """10 steps of ours (bfloat16 iteration, as torch's) and of torch.optim.Muon on 2-D weights."""
    if not hasattr(torch.optim, "Muon"):
        pytest.skip(f"torch {torch.__version__} has no torch.optim.Muon (added in 2.9)")
    shapes = [(16, 32), (33, 17), (16, 32), (8, 8)]   # torch's Muon takes 2-D parameters only
    w0, grads = random_problem(shapes, steps=10, seed=13, dtype=torch.float32)
    ours, _ = train(Muon, w0, grads, lr=0.02, weight_decay=0.1, adjust_lr_fn=adjust_lr_fn, dtype=torch.bfloat16)
    theirs, _ = train(torch.optim.Muon, w0, grads, lr=0.02, weight_decay=0.1, adjust_lr_fn=adjust_lr_fn)
    return w0, [p.detach() for p in ours], [q.detach() for q in theirs]


@pytest.mark.parametrize("adjust_lr_fn", [None, "original", "match_rms_adamw"])
def test_follows_torch_muon_to_bfloat16_rounding(adjust_lr_fn):
    """Same equations as torch.optim.Muon (Nesterov, shape factor, decay with the unadjusted lr)."""
    w0, ours, theirs = torch_muon_runs(adjust_lr_fn)
    for w, p, q in zip(w0, ours, theirs):
        # Bitwise equal since orthogonalize(method="muon") normalises as torch does (see the
        # bitwise test below); 3% still catches any wrong factor: the shape factor alone is 39%
        # for 33×17, the decay term ~50%.
        assert_close(p - w, q - w, rtol=3e-2, what=f"W − W₀ of {tuple(w.shape)}")


@pytest.mark.parametrize("adjust_lr_fn", [None, "match_rms_adamw"])
def test_matches_torch_muon_trajectory_bitwise(adjust_lr_fn):
    _, ours, theirs = torch_muon_runs(adjust_lr_fn)
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q), f"{tuple(p.shape)}: max |Δ| {float((p - q).abs().max()):.3e}"


@pytest.mark.parametrize("shape", [(16, 32), (33, 17), (8, 8), (6, 2, 3, 3)], ids=str)
def test_moonlight_update_rms_is_exactly_0_2(shape):
    """match_rms_adamw: RMS(η·0.2·√max(m, n)·U) = 0.2 η for an exact, full-rank polar factor."""
    gen = torch.Generator().manual_seed(14)
    p = torch.nn.Parameter(torch.zeros(shape, dtype=torch.float64))
    opt = Muon([p], lr=0.5, weight_decay=0.0, adjust_lr_fn="match_rms_adamw", method="svd", dtype=torch.float64)
    p.grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    opt.step()
    rms = float(p.detach().pow(2).mean().sqrt()) / 0.5
    # ‖U‖_F² = min(m, n) exactly up to float64 rounding of the SVD factor (~1e-15).
    assert rms == pytest.approx(0.2, rel=1e-13)


def test_step_does_not_vanish_with_the_gradient():
    """Muon lacks null-gradient consistency: its step has the same size for G and εG."""
    g = torch.randn(12, 8, generator=torch.Generator().manual_seed(15))
    base = step_size(Muon, g)
    for eps in (1e-2, 1e-4, 1e-6):
        # X/‖X‖_F is scale-free, so only float32 rounding of the iteration differs (~1e-6).
        assert step_size(Muon, eps * g) == pytest.approx(base, rel=1e-5)
    # while PolarGrad's shrinks with ε (test_polargrad.py checks it is linear):
    assert step_size(PolarGrad, 1e-6 * g) < 1e-5 * base


def test_rejects_unknown_adjust_lr_fn():
    with pytest.raises(ValueError, match="adjust_lr_fn .* got 'rms'"):
        Muon([torch.nn.Parameter(torch.zeros(3, 3))], adjust_lr_fn="rms")


def test_update_rms_of_rms_scale_in_polargrad_matches_muon():
    """PolarGrad(scale="rms") is the Moonlight rule too: same step as Muon(match_rms_adamw)."""
    w0, grads = random_problem([(10, 6)], steps=2, seed=16, dtype=torch.float32)
    a, _ = train(Muon, w0, grads, lr=0.1, adjust_lr_fn="match_rms_adamw")
    b, _ = train(PolarGrad, w0, grads, lr=0.1, weight_decay=0.1, nesterov=True, scale="rms", method="muon", steps=5)
    assert torch.equal(a[0], b[0])


def needs_torch_muon():
    if not hasattr(torch.optim, "Muon"):
        pytest.skip(f"torch {torch.__version__} has no torch.optim.Muon (added in 2.9)")


TORCH_SHAPES = [(16, 32), (33, 17), (16, 32)]


def run(opt, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    return params


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(ns_coefficients=(3.0, -3.2, 1.2), eps=1e-5, ns_steps=3, nesterov=False),
    dict(lr=torch.tensor(0.02), adjust_lr_fn="match_rms_adamw"),
], ids=["defaults", "own_coefficients_eps_steps", "tensor_lr"])
def test_takes_torch_muon_arguments_and_follows_it_bitwise(kwargs):
    """torch.optim.Muon's arguments mean the same here: 10 steps equal bit for bit (CPU, bfloat16)."""
    needs_torch_muon()
    w0, grads = random_problem(TORCH_SHAPES, steps=10, seed=17, dtype=torch.float32)
    kwargs = {"lr": 0.02, **kwargs}
    theirs = run(torch.optim.Muon(ps := [torch.nn.Parameter(w.clone()) for w in w0], **kwargs), ps, grads)
    ours = run(Muon(ps := [torch.nn.Parameter(w.clone()) for w in w0], dtype=torch.bfloat16, **kwargs), ps, grads)
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q), f"{tuple(p.shape)}: max |Δ| {float((p - q).abs().max()):.3e}"


def test_positional_arguments_are_torch_muons():
    p = torch.nn.Parameter(torch.zeros(4, 4))
    opt = Muon([p], 0.05, 0.2, 0.9, False, (3.0, -3.2, 1.2), 1e-5, 7, "match_rms_adamw")
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["momentum"], group["nesterov"]) == (0.05, 0.2, 0.9, False)
    assert (group["ns_coefficients"], group["ns_eps"], group["steps"], group["scale"]) == ((3.0, -3.2, 1.2), 1e-5, 7,
                                                                                           "rms")


@pytest.mark.parametrize("kwargs, message", [
    (dict(ns_coefficients=(1.0, 2.0)), r"ns_coefficients must be three numbers \(a, b, c\), got \(1.0, 2.0\)"),
    (dict(eps=-1.0), r"eps must be a number ≥ 0, got -1.0"),
    (dict(ns_coefficients=(3.0, -3.2, 1.2), method="polar_express"), r"set Muon's own iteration .* 'polar_express'"),
    (dict(ns_steps=3, steps=4), r"steps=4 and ns_steps=3 name the same thing"),
    (dict(lr=torch.tensor([0.1, 0.2])), r"lr \(polar group\) as a tensor must have one real element"),
])
def test_bad_torch_muon_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Muon([torch.nn.Parameter(torch.zeros(3, 3))], **kwargs)


@pytest.mark.parametrize("adjust_lr_fn", [None, "match_rms_adamw"])
def test_resumes_a_torch_muon_state_dict_bitwise(adjust_lr_fn):
    """5 steps of torch.optim.Muon, its state_dict loaded into Muon (built with other settings,
    which torch's hyperparameters replace), 5 more == 10 steps of torch.optim.Muon."""
    needs_torch_muon()
    w0, grads = random_problem(TORCH_SHAPES, steps=10, seed=18, dtype=torch.float32)
    kw = dict(lr=0.02, weight_decay=0.05, momentum=0.9, adjust_lr_fn=adjust_lr_fn)
    straight = run(torch.optim.Muon(ps := [torch.nn.Parameter(w.clone()) for w in w0], **kw), ps, grads)
    resumed = [torch.nn.Parameter(w.clone()) for w in w0]
    first = torch.optim.Muon(resumed, **kw)
    run(first, resumed, grads[:5])
    ours = Muon(resumed, lr=1.0, weight_decay=0.0)
    ours.load_state_dict(first.state_dict())
    assert ours.param_groups[0]["dtype"] == torch.bfloat16 and ours.param_groups[0]["lr"] == 0.02
    run(ours, resumed, grads[5:])
    for p, q in zip(resumed, straight):
        assert torch.equal(p, q), f"{tuple(p.shape)}: max |Δ| {float((p - q).abs().max()):.3e}"
    # and our own state_dict round-trips through a fresh Muon
    again = Muon([torch.nn.Parameter(p.detach().clone()) for p in resumed])
    again.load_state_dict(ours.state_dict())
    assert again.param_groups[0]["ns_coefficients"] == (3.4445, -4.7750, 2.0315)


def test_torch_muon_state_dict_needs_the_same_groups():
    needs_torch_muon()
    a, b = torch.nn.Parameter(torch.zeros(3, 3)), torch.nn.Parameter(torch.zeros(3))
    state = torch.optim.Muon([a]).state_dict()
    with pytest.raises(ValueError, match="has 1 param groups, this optimizer 2"):
        Muon([a, b]).load_state_dict(state)


def test_adamw_part_has_its_own_defaults():
    """Muon(model.parameters(), lr=0.02) never trains biases and norms with lr 0.02 and decay 0.1:
    KellerJordan/Muon's MuonWithAuxAdam defaults, unless adamw_* says otherwise."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    polar, adamw = Muon(model.parameters(), lr=0.02).param_groups
    assert (polar["lr"], polar["weight_decay"]) == (0.02, 0.1)
    assert (adamw["lr"], adamw["betas"], adamw["eps"], adamw["weight_decay"]) == (3e-4, (0.9, 0.95), 1e-10, 0.0)
    _, adamw = Muon(model.parameters(), lr=0.02, adamw_lr=1e-3, adamw_weight_decay=0.01).param_groups
    assert (adamw["lr"], adamw["weight_decay"]) == (1e-3, 0.01)
    # PolarGrad's one-line swap from AdamW keeps sharing lr and weight decay, as documented.
    _, adamw = PolarGrad(model.parameters(), lr=1e-3, weight_decay=0.01).param_groups
    assert (adamw["lr"], adamw["betas"], adamw["eps"], adamw["weight_decay"]) == (1e-3, (0.9, 0.999), 1e-8, 0.01)
