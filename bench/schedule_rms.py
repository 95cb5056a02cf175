"""AdamW's weight RMS under cosine and WSD schedules: measured vs the schedule-aware prediction.

    python -m bench.schedule_rms

Noise-driven AdamW (torch.optim.AdamW, i.i.d. N(0, 1) gradients, 65 536 weights, λ = 0.5, peak
η = 4e-3, 100 warmup steps, 3000 steps) against eq. (1) of
:mod:`polarkernels.optim.schedule_theory` and the constant-rate equilibrium √(η_t/2λ) at the
current η. Prints a Markdown table at a few steps and the worst relative error over all steps.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from polarkernels.optim.schedule_theory import adamw_weight_rms, cosine_schedule, wsd_schedule

STEPS, PEAK, WD, INIT = 3000, 4e-3, 0.5, 0.05


def measure(lrs: np.ndarray) -> np.ndarray:
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(INIT * torch.randn(65536, generator=gen))
    opt = torch.optim.AdamW([p], lr=float(lrs[0]), weight_decay=WD)
    out = np.empty(len(lrs))
    with torch.no_grad():
        for t, lr in enumerate(lrs):
            opt.param_groups[0]["lr"] = float(lr)
            p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
            out[t] = float(p.double().square().mean().sqrt())
    return out


def main() -> None:
    print("| schedule | step | η_t | measured RMS | eq. (1) | √(η_t/2λ) |")
    print("|---|---|---|---|---|---|")
    worst = {}
    for name, lrs in (("cosine", cosine_schedule(PEAK, STEPS, warmup=100)),
                      ("wsd", wsd_schedule(PEAK, STEPS, warmup=100, decay_fraction=0.2))):
        measured = measure(lrs)
        predicted = adamw_weight_rms(lrs, WD, init_rms=INIT)
        worst[name] = float(np.abs(measured / predicted - 1).max())
        for t in (100, 1000, 2000, 2400, 2800, STEPS):
            eq = math.sqrt(lrs[t - 1] / (2 * WD))
            print(f"| {name} | {t} | {lrs[t - 1]:.2e} | {measured[t - 1]:.4f} | {predicted[t - 1]:.4f} | {eq:.4f} |")
    for name, err in worst.items():
        print(f"{name}: worst |measured/predicted − 1| over all {STEPS} steps = {err:.2%}")


if __name__ == "__main__":
    main()
