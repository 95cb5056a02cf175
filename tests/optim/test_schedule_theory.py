"""The schedule-aware weight-RMS prediction against simulated AdamW runs, and the EMA-horizon helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from polarkernels.optim.schedule_theory import (WeightRMSTracker, adamw_weight_rms, averaging_horizon,
                                                cosine_schedule, gaussian_spectral_norm,
                                                weight_decay_for_horizon, wsd_schedule)

STEPS = 800
SCHEDULES = {"cosine": cosine_schedule(4e-3, STEPS, warmup=50), "wsd": wsd_schedule(4e-3, STEPS, warmup=50)}


@pytest.mark.parametrize("name", SCHEDULES)
def test_rms_prediction_tracks_simulated_adamw(name):
    """Noise-driven AdamW (torch.optim.AdamW, i.i.d. N(0, 1) gradients) under a schedule: the
    measured weight RMS stays within 5% of eq. (1) at every step of the run."""
    lrs, wd, init = SCHEDULES[name], 0.5, 0.05
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(init * torch.randn(2048, generator=gen))
    opt = torch.optim.AdamW([p], lr=float(lrs[0]), weight_decay=wd)
    measured = np.empty(STEPS)
    with torch.no_grad():
        for t in range(STEPS):
            opt.param_groups[0]["lr"] = float(lrs[t])
            p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
            measured[t] = float(p.square().mean().sqrt())
    predicted = adamw_weight_rms(lrs, wd, init_rms=float(p.new_tensor(init)))
    # Sampling noise of an RMS over 2048 elements is ~1/√(2·2048) ≈ 1.6%; the model's own error
    # (momentum correlations while η moves) measured ≤ 2% here; 5% is the bar.
    assert np.abs(measured / predicted - 1).max() < 0.05
    # The constant-rate equilibrium √(η_t/2λ) at the current η is what this improves on: during
    # warmup and decay the weights lag far behind it.
    live = lrs > 0
    assert np.abs(measured[live] / np.sqrt(lrs[live] / (2 * wd)) - 1).max() > 0.2


def test_constant_rates_reach_the_equilibrium():
    lr, wd = 1e-3, 0.1
    rms = adamw_weight_rms(np.full(200_000, lr), wd)
    assert rms[-1] == pytest.approx(math.sqrt(lr**2 / (2 * lr * wd - (lr * wd) ** 2)), rel=1e-9)
    assert rms[-1] == pytest.approx(math.sqrt(lr / (2 * wd)), rel=1e-4)


def test_tracker_matches_batch():
    lrs = wsd_schedule(1e-2, 300, warmup=10)
    tracker = WeightRMSTracker(0.3)
    online = [tracker.update(float(lr), 0.2) for lr in lrs]
    assert np.allclose(online, adamw_weight_rms(lrs, 0.2, init_rms=0.3), rtol=0, atol=0)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("horizon", [30.0, 123.4, 700.0])
def test_horizon_round_trip(name, horizon):
    lrs = SCHEDULES[name]
    if name == "cosine":
        lrs = cosine_schedule(4e-3, STEPS, warmup=50, final=4e-4)   # η → 0 would forbid short horizons
    wd = weight_decay_for_horizon(lrs, horizon)
    assert averaging_horizon(lrs, wd) == pytest.approx(horizon, rel=1e-9)


def test_horizon_of_constant_rates():
    assert averaging_horizon(np.full(10_000, 1e-3), 0.5) == pytest.approx(1 / -math.log1p(-5e-4), rel=1e-9)
    assert averaging_horizon(np.full(100, 1e-3), 0.5) == math.inf      # 100 steps decay 5% < one e-folding


def test_bad_inputs():
    with pytest.raises(ValueError, match="η_t·λ_t must be < 1"):
        adamw_weight_rms([0.5, 2.0], 1.0)
    with pytest.raises(ValueError, match="as short as"):
        weight_decay_for_horizon(cosine_schedule(1e-3, 1000), 10)
    with pytest.raises(ValueError, match="horizon must be in"):
        weight_decay_for_horizon(np.full(10, 1e-3), 11)


def test_gaussian_spectral_norm():
    gen = torch.Generator().manual_seed(0)
    for n, m in [(256, 64), (128, 128)]:
        measured = float(torch.linalg.matrix_norm(torch.randn(n, m, generator=gen, dtype=torch.float64) * 0.02, ord=2))
        # The Bai–Yin edge: at these sizes the largest singular value sits within ~3% of it.
        assert measured == pytest.approx(gaussian_spectral_norm(n, m, 0.02), rel=0.05)


def test_monitor_reports_the_schedule_aware_prediction():
    """EquilibriumMonitor on torch.optim.AdamW under WSD: ``schedule_weight_rms`` is eq. (1) run
    over the lr it saw each step, and tracks the measured RMS within 5% at every measured step."""
    from polarkernels.optim import EquilibriumMonitor

    lrs, wd = wsd_schedule(4e-3, 600, warmup=30), 0.5
    gen = torch.Generator().manual_seed(3)
    p = torch.nn.Parameter(0.05 * torch.randn(64, 64, generator=gen))
    opt = torch.optim.AdamW([p], lr=float(lrs[0]), weight_decay=wd)
    init = float(p.detach().double().square().mean().sqrt())             # the monitor sums in float64
    monitor = EquilibriumMonitor(opt, every=50)
    for t in range(600):
        opt.param_groups[0]["lr"] = float(lrs[t])
        p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        if t % 50 == 0:
            stats = monitor.latest[0]
            assert stats.schedule_weight_rms == pytest.approx(adamw_weight_rms(lrs[:t + 1], wd, init)[-1], rel=1e-12)
            # 4096 weights: ~1.1% sampling noise; the model's error measured ≤ 2% (see above).
            assert stats.weight_rms == pytest.approx(stats.schedule_weight_rms, rel=0.05)
            assert stats.noise_spectral_norm == pytest.approx(stats.weight_rms * 16, rel=1e-12)   # √64 + √64


def test_monitor_prediction_ignores_skipped_steps():
    from polarkernels.optim import EquilibriumMonitor, PolarGrad

    p = torch.nn.Parameter(torch.full((8, 8), 0.1))
    opt = PolarGrad([{"params": [p], "algorithm": "adamw"}], lr=0.01, weight_decay=0.5, nonfinite="skip")
    monitor = EquilibriumMonitor(opt)
    p.grad = torch.ones(8, 8)
    opt.step()
    first = monitor.latest[0].schedule_weight_rms
    assert first == pytest.approx(math.sqrt((1 - 0.005) ** 2 * 0.01 + 1e-4), rel=1e-6)
    p.grad = torch.full((8, 8), float("nan"))
    opt.step()
    assert opt.skipped_steps == 1 and monitor.latest[0].schedule_weight_rms == first
