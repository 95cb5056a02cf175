"""EquilibriumMonitor: measured update/weight RMS and AdamW's equilibrium ‖θ‖_RMS ≈ √(η/2λ)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from polarkernels.optim import EquilibriumMonitor, Muon, PolarGrad
from polarkernels.optim.diagnostics import adamw_equilibrium_rms


def test_adamw_weight_rms_settles_at_the_predicted_equilibrium():
    """Pure-noise gradients, 1500 steps: ‖θ‖² relaxes with time constant 1/(2ηλ) = 250 steps,
    so the second half is at equilibrium; its mean weight RMS is within 10% of √(η/2λ)."""
    lr, wd = 0.01, 0.2
    gen = torch.Generator().manual_seed(41)
    p = nn.Parameter(torch.zeros(32, 32))
    opt = PolarGrad([{"params": [p], "algorithm": "adamw"}], lr=lr, weight_decay=wd)
    monitor = EquilibriumMonitor(opt, every=10)
    measured = []
    for t in range(1500):
        p.grad = torch.randn(32, 32, generator=gen)
        opt.step()
        if t >= 750 and t % 10 == 0:
            measured.append(monitor.latest[0].weight_rms)
    predicted = monitor.latest[0].predicted_weight_rms
    assert predicted == adamw_equilibrium_rms(lr, wd) == pytest.approx(math.sqrt(0.025))
    # Measured ratio 0.970–0.978 over three seeds (the momentum and √v̂ estimate make the
    # effective unit-RMS update slightly smaller); the issue asks for 10%.
    assert sum(measured) / len(measured) == pytest.approx(predicted, rel=0.10)


def test_stats_of_a_moonlight_step():
    """Muon(match_rms_adamw) with an exact polar factor moves every matrix by RMS 0.2·η."""
    lr, wd = 0.05, 0.1
    gen = torch.Generator().manual_seed(42)
    w = nn.Parameter(torch.randn(12, 20, generator=gen, dtype=torch.float64))
    b = nn.Parameter(torch.randn(20, generator=gen, dtype=torch.float64))
    # Moonlight's recipe: the AdamW part shares lr and weight decay (Muon's own defaults differ).
    opt = Muon([w, b], lr=lr, weight_decay=wd, adjust_lr_fn="match_rms_adamw", method="svd", dtype=torch.float64,
               adamw_lr=lr, adamw_weight_decay=wd)
    seen = []
    monitor = EquilibriumMonitor(opt, callback=seen.append)
    w.grad, b.grad = torch.randn_like(w), torch.randn_like(b)
    opt.step()
    polar, adamw = monitor.latest
    assert seen == [monitor.latest]
    assert (polar.group, polar.algorithm, adamw.algorithm) == (0, "polar", "adamw")
    # The decay term is removed exactly up to float64 rounding of (1 − ηλ)·θ (~1e-16 relative).
    assert polar.update_rms == pytest.approx(0.2 * lr, rel=1e-12)
    assert polar.weight_rms == pytest.approx(float(w.detach().pow(2).mean().sqrt()), rel=1e-12)
    assert polar.predicted_weight_rms is None
    assert adamw.predicted_weight_rms == pytest.approx(math.sqrt(lr / (2 * wd)))
    # Adam's first step is η·g/(|g| + ε): every element moves by η, up to ε/|g| ≈ 1e-8/|g|.
    assert adamw.update_rms == pytest.approx(lr, rel=1e-6)


def test_every_and_remove():
    p = nn.Parameter(torch.zeros(4, 4))
    opt = torch.optim.SGD([p], lr=0.1)                 # any torch optimizer
    calls = []
    monitor = EquilibriumMonitor(opt, every=3, callback=calls.append)
    for _ in range(7):
        p.grad = torch.ones(4, 4)
        opt.step()
    assert len(calls) == 3                              # steps 0, 3, 6
    assert calls[-1][0].algorithm == "" and calls[-1][0].update_rms == pytest.approx(0.1)
    monitor.remove()
    opt.step()
    assert len(calls) == 3


def test_rejects_bad_every():
    with pytest.raises(ValueError, match="every must be a positive int, got 0"):
        EquilibriumMonitor(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), every=0)


def test_skipped_step_reports_no_movement():
    """nonfinite="skip": nothing moved, so update RMS is 0 (not ηλ·RMS(θ)) and skipped is set."""
    p = nn.Parameter(torch.randn(6, 6, generator=torch.Generator().manual_seed(43)))
    opt = PolarGrad([p], lr=0.1, weight_decay=0.5, nonfinite="skip")
    monitor = EquilibriumMonitor(opt)
    p.grad = torch.full((6, 6), math.nan)
    opt.step()
    (stats,) = monitor.latest
    assert stats.skipped and stats.update_rms == 0.0
    # The monitor sums squares in float64: equal up to its rounding (~1e-16).
    assert stats.weight_rms == pytest.approx(float(p.detach().double().pow(2).mean().sqrt()), rel=1e-12)
    p.grad = torch.ones(6, 6)
    opt.step()
    (stats,) = monitor.latest
    assert not stats.skipped and stats.update_rms > 0


def test_a_measured_step_synchronises_once(monkeypatch):
    """All sums of squares stay on device until one transfer (counted: Tensor.tolist/item/float).

    No biases (AdamW reads its CPU step counter with .item()) and no finite check, so every
    transfer counted is the monitor's.
    """
    model = nn.Sequential(nn.Linear(4, 5, bias=False), nn.Linear(5, 3, bias=False))
    opt = PolarGrad(model.parameters(), lr=0.1, weight_decay=0.1, nonfinite="propagate")
    monitor = EquilibriumMonitor(opt)
    model(torch.ones(2, 4)).sum().backward()
    opt.step()                                          # first step: the trackers start
    syncs = []
    for name in ("tolist", "item", "__float__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _real=real, _name=name: syncs.append(_name)
                            or _real(t, *a))
    opt.step()
    assert syncs == ["tolist"]
    assert len(monitor.latest) == 1 and monitor.latest[0].update_rms > 0
