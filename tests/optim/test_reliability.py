"""Checkpoints, bad gradients, bad hyperparameters, closures and torch.compile."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch
from torch import nn

from polarkernels.optim import Muon, NonFiniteGradientError, PolarGrad

from optim_runs import random_problem

# A matrix, its twin (batched together), a tall one, a conv weight and two AdamW vectors.
SHAPES = [(6, 9), (6, 9), (10, 4), (4, 2, 3), (9,), (4,)]
OPTIMIZERS = {
    "polargrad": lambda ps: PolarGrad(ps, lr=0.05, weight_decay=0.1),
    "polargrad_polar_first_nesterov": lambda ps: PolarGrad(ps, lr=0.05, polar_first=True, nesterov=True),
    "muon_bf16": lambda ps: Muon(ps, lr=0.02, adjust_lr_fn="match_rms_adamw", dtype=torch.bfloat16),
}


def fresh(w0):
    return [nn.Parameter(w.clone()) for w in w0]


def run(opt, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_checkpoint_round_trip_is_bitwise(make):
    """10 steps, save (through torch.save), load into a new optimizer, 10 more == 20 straight."""
    w0, grads = random_problem(SHAPES, steps=20, seed=31, dtype=torch.float32)
    straight = fresh(w0)
    run(make(straight), straight, grads)

    first = fresh(w0)
    opt = make(first)
    run(opt, first, grads[:10])
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in first], "optim": opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer)                     # weights_only=True: plain data only
    resumed = [nn.Parameter(w.clone()) for w in checkpoint["params"]]
    opt2 = make(resumed)
    opt2.load_state_dict(checkpoint["optim"])
    run(opt2, resumed, grads[10:])
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


def snapshot(opt, params):
    return [p.detach().clone() for p in params], [
        {k: v.clone() for k, v in opt.state[p].items()} for p in params]


def assert_unchanged(before, opt, params):
    weights, states = before
    assert all(torch.equal(w, p) for w, p in zip(weights, params))
    for state, p in zip(states, params):
        assert state.keys() == opt.state[p].keys()
        assert all(torch.equal(v, opt.state[p][k]) for k, v in state.items())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", [0, 3, 5], ids=["first_matrix", "conv", "last_vector"])
def test_nonfinite_gradient_raises_and_touches_nothing(where, bad):
    w0, grads = random_problem(SHAPES, steps=3, seed=32, dtype=torch.float32)
    params = fresh(w0)
    opt = PolarGrad(params, lr=0.05, weight_decay=0.1)
    run(opt, params, grads[:2])
    before = snapshot(opt, params)
    for p, g in zip(params, grads[2]):
        p.grad = g.clone()
    params[where].grad.view(-1)[1] = bad
    with pytest.raises(NonFiniteGradientError, match=re.escape(f"(shape {tuple(SHAPES[where])}); no parameter")):
        opt.step()
    assert_unchanged(before, opt, params)


def test_nonfinite_gradient_skip_option():
    w0, grads = random_problem(SHAPES, steps=3, seed=33, dtype=torch.float32)
    params = fresh(w0)
    opt = Muon(params, nonfinite="skip")
    run(opt, params, grads[:2])
    before = snapshot(opt, params)
    for p, g in zip(params, grads[2]):
        p.grad = g.clone()
    params[1].grad[0, 0] = math.nan
    opt.step()
    assert opt.skipped_steps == 1
    assert_unchanged(before, opt, params)
    params[1].grad[0, 0] = 0.0
    opt.step()                                         # the next good gradient steps normally
    assert not torch.equal(before[0][1], params[1])


def test_named_parameter_in_nonfinite_message():
    model = nn.Linear(3, 2)
    opt = PolarGrad(model.named_parameters())
    model(torch.ones(1, 3)).sum().backward()
    model.bias.grad[0] = math.nan
    with pytest.raises(NonFiniteGradientError, match="non-finite gradient .* in bias; no parameter"):
        opt.step()


def test_sparse_gradient_is_rejected():
    emb = nn.Embedding(5, 3, sparse=True)
    opt = PolarGrad(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"sparse gradients are not supported \(shape \(5, 3\)\)"):
        opt.step()


def test_complex_parameter_is_rejected():
    with pytest.raises(ValueError, match=r"complex parameters are not supported .* torch.complex64"):
        PolarGrad([nn.Parameter(torch.zeros(3, 3, dtype=torch.complex64))])


@pytest.mark.parametrize("key", ["momentum", "lr", "algorithm"])
def test_group_missing_key_is_a_clear_error(key):
    p = nn.Parameter(torch.zeros(3, 3))
    opt = PolarGrad([p])
    del opt.param_groups[0][key]
    p.grad = torch.ones(3, 3)
    with pytest.raises(KeyError, match=rf"param group 0 .*{'algorithm' if key == 'algorithm' else key}"):
        opt.step()


def test_loading_another_optimizers_state_dict_is_a_clear_error():
    p = nn.Parameter(torch.zeros(3, 3))
    sgd = torch.optim.SGD([p], lr=0.1)
    opt = PolarGrad([p])
    opt.load_state_dict(sgd.state_dict())
    p.grad = torch.ones(3, 3)
    with pytest.raises(KeyError, match="no valid 'algorithm'.*saved by another optimizer"):
        opt.step()


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-1.0), r"lr \(polar group\) must be a finite number ≥ 0, got -1.0"),
    (dict(lr=math.nan), r"lr \(polar group\) must be a finite number ≥ 0, got nan"),
    (dict(weight_decay=-0.1), r"weight_decay \(polar group\) must be a finite number ≥ 0, got -0.1"),
    (dict(momentum=1.0), r"momentum \(polar group\) must be in \[0, 1\), got 1.0"),
    (dict(nesterov="yes"), r"nesterov \(polar group\) must be a bool, got 'yes'"),
    (dict(scale="spectral"), r"scale \(polar group\) must be one of .*, got 'spectral'"),
    (dict(method="lanczos"), r"method \(polar group\) must be one of .*, got 'lanczos'"),
    (dict(steps=0), r"steps \(polar group\) must be a positive int, got 0"),
    (dict(dtype="bf16"), r"dtype \(polar group\) must be a torch.dtype or None, got 'bf16'"),
    (dict(adamw_betas=(0.9, 1.0)), r"betas \(adamw group\) must be two floats in \[0, 1\), got \(0.9, 1.0\)"),
    (dict(adamw_eps=-1e-8), r"eps \(adamw group\) must be a non-negative float, got -1e-08"),
    (dict(adamw_lr=-3.0), r"lr \(adamw group\) must be a finite number ≥ 0, got -3.0"),
    (dict(nonfinite="ignore"), r"nonfinite must be one of \('raise', 'skip', 'propagate'\), got 'ignore'"),
    (dict(state_dtype=torch.int32), r"state_dtype must be a floating torch.dtype or None, got torch.int32"),
    (dict(method="muon"), r"scale='nuclear' with method='muon' .* off from ‖X‖_\* by"),
])
def test_bad_hyperparameter_named_in_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PolarGrad([nn.Parameter(torch.zeros(3, 3))], **kwargs)


def test_bad_value_in_a_param_group_is_named():
    with pytest.raises(ValueError, match=r"momentum \(polar group\) must be in \[0, 1\), got -0.5"):
        PolarGrad([{"params": [nn.Parameter(torch.zeros(3, 3))], "momentum": -0.5}])


def test_closure_is_evaluated_with_grad_and_its_loss_returned():
    model = nn.Linear(4, 3)
    opt = PolarGrad(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    before = model.weight.detach().clone()
    loss = opt.step(closure)
    assert loss.requires_grad and not torch.equal(before, model.weight)


def test_compiled_step_matches_eager():
    """torch.compile(opt.step) traces (with graph breaks at host syncs) and gives the eager steps.

    The Dynamo frontend with the "eager" backend keeps the suite fast; Inductor on this CPU
    (~40 s to compile) was checked by hand to agree to the same tolerance.
    """
    w0, grads = random_problem([(6, 5), (7,)], steps=2, seed=34, dtype=torch.float32)
    eager, compiled = fresh(w0), fresh(w0)
    opt_e, opt_c = (PolarGrad(ps, lr=0.1, weight_decay=0.1) for ps in (eager, compiled))
    step = torch.compile(opt_c.step, backend="eager")
    for step_grads in grads:
        for pe, pc, g in zip(eager, compiled, step_grads):
            pe.grad, pc.grad = g.clone(), g.clone()
        opt_e.step()
        step()
    for a, b in zip(eager, compiled):
        # The compiled AdamW computes its bias corrections 1 − βᵗ as float32 tensors, as torch's
        # own compiled AdamW does: relative error ε₃₂/(1 − β₂) ≈ 1.2e-4 in 1 − β₂, half that after
        # the square root, on a step of size ≈ η = 0.1: |Δ| ≲ 1e-5. The polar part agrees bitwise.
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


def test_lr_scheduler_drives_both_kinds_of_group():
    model = nn.Linear(4, 3)
    opt = PolarGrad(model.parameters(), lr=0.1, adamw_lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.005]
    opt.step()                                          # 'initial_lr' added by the scheduler is fine


@pytest.mark.parametrize("param_dtype, state_dtype, expected", [
    (torch.bfloat16, None, torch.float32), (torch.float16, None, torch.float32), (torch.float32, None, torch.float32),
    (torch.float64, None, torch.float64), (torch.bfloat16, torch.bfloat16, torch.bfloat16),
])
def test_state_dtype(param_dtype, state_dtype, expected):
    """Momentum and AdamW moments in float32 for 16-bit parameters by default; resume keeps them."""
    w0, grads = random_problem([(6, 9), (4, 2, 3), (9,)], steps=6, seed=35, dtype=param_dtype)
    make = lambda ps: Muon(ps, lr=0.02, state_dtype=state_dtype)   # noqa: E731
    params = fresh(w0)
    opt = make(params)
    run(opt, params, grads[:3])
    dtypes = {k: v.dtype for p in params for k, v in opt.state[p].items() if k != "step"}
    assert set(dtypes) == {"momentum_buffer", "exp_avg", "exp_avg_sq"} and set(dtypes.values()) == {expected}
    assert all(p.dtype == param_dtype for p in params)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    resumed = [nn.Parameter(p.detach().clone()) for p in params]
    opt2 = make(resumed)
    opt2.load_state_dict(torch.load(buffer))
    for p, q in zip(params, resumed):
        # torch's Optimizer.load_state_dict would cast them to the parameter's dtype
        assert all(opt2.state[q][k].dtype == v.dtype for k, v in opt.state[p].items())
    run(opt, params, grads[3:])
    run(opt2, resumed, grads[3:])
    assert all(torch.equal(p, q) for p, q in zip(params, resumed))


def test_float32_state_keeps_what_bfloat16_momentum_loses():
    """The reason for the default: M ← 0.99 M + 0.01 G in bfloat16 stalls once 0.01·(G − M) is
    under half an ulp of M (for G = 1, near M ≈ 1 − 2⁻⁹/0.01 ≈ 0.8); in float32 M → 1 − 0.99ᵗ."""
    def momentum(state_dtype):
        p = nn.Parameter(torch.zeros(4, 4, dtype=torch.bfloat16))
        opt = PolarGrad([p], lr=0.0, momentum=0.99, state_dtype=state_dtype)
        for _ in range(1000):
            p.grad = torch.ones(4, 4, dtype=torch.bfloat16)
            opt.step()
        return opt.state[p]["momentum_buffer"].float()
    # 1 − 0.99¹⁰⁰⁰ = 1 − 4.3e-5, accumulated in float32 (ε ≈ 6e-8 per step): within 1e-4 of 1.
    torch.testing.assert_close(momentum(None), torch.ones(4, 4), rtol=0, atol=1e-4)
    assert float(momentum(torch.bfloat16).max()) < 0.9


def test_nonfinite_propagate_skips_the_check(monkeypatch):
    """nonfinite="propagate": no check and no host sync; NaN reaches the weights, as in torch."""
    import polarkernels.optim.polargrad as polargrad_module
    monkeypatch.setattr(polargrad_module, "all_finite", lambda grads: pytest.fail("checked"))
    p = nn.Parameter(torch.zeros(3, 3))
    opt = PolarGrad([p], nonfinite="propagate")
    p.grad = torch.full((3, 3), math.nan)
    opt.step()
    assert torch.isnan(p).all()


def test_finite_check_is_one_reduction_and_one_sync(monkeypatch):
    """all_finite: one fused _foreach_norm over every gradient and one .item()."""
    from polarkernels.optim import grad_checks
    calls = {"norm": 0, "item": 0}
    real_norm, real_item = torch._foreach_norm, torch.Tensor.item
    monkeypatch.setattr(torch, "_foreach_norm", lambda ts, o: calls.__setitem__("norm", calls["norm"] + 1)
                        or real_norm(ts, o))
    monkeypatch.setattr(torch.Tensor, "item", lambda t: calls.__setitem__("item", calls["item"] + 1) or real_item(t))
    grads = [torch.randn(5, 3), torch.randn(7), torch.randn(2, 2, dtype=torch.float64)]
    assert grad_checks.all_finite(grads)
    assert calls == {"norm": 1, "item": 1}
    grads[1][3] = -math.inf
    assert not grad_checks.all_finite(grads)
