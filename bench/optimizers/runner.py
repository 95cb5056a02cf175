"""One training run: a problem, an optimizer at one sweep point, a seed, a budget, a schedule."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from polarkernels.optim import NonFiniteGradientError

from .optimizers import OptimizerSpec, Setting
from .problems import Budget, MatrixProblem, Problem
from .schedules import LRSchedule

#: A run whose metric exceeds this multiple of its initial value has diverged; it is stopped.
DIVERGED_FACTOR = 1e3


def run(problem: Problem, spec: OptimizerSpec, setting: Setting, seed: int, budget: Budget,
        schedule: LRSchedule, adamw: Setting | None) -> dict[str, Any]:
    """Train once and return the record: the settings, the logged curve and the final metrics.

    ``seed`` fixes the initial weights and the minibatch stream. Before step t every param
    group's learning rate is its peak value times ``schedule.factor(t, steps)`` (the AdamW
    groups of the hybrids too). The curve holds the step, the problem's metrics (``loss``
    first) and, for matrix problems, ‖∇f‖_* and κ₂(∇f) of the full objective per parameter
    (``grad_nuc/X``, ``grad_cond/X``, ...). ``ms_per_step`` times the training steps
    (minibatch, forward, backward, optimizer step; evaluations excluded) and
    ``optimizer_ms_per_step`` the ``optimizer.step()`` calls alone. A run whose loss turns
    non-finite or grows by :data:`DIVERGED_FACTOR` stops early with ``diverged: true`` and a
    final loss of +inf, so that selection never picks it.
    """
    torch.manual_seed(seed)
    model = problem.build(seed)
    optimizer = spec.build(model, setting, adamw if spec.hybrid else None)
    peaks = [g["lr"] for g in optimizer.param_groups]
    gen = torch.Generator().manual_seed(1_000_003 * (seed + 1))
    evals = set(budget.eval_steps())
    curve: dict[str, list[float]] = {}
    log(curve, 0, metrics(problem, model))
    start_loss = curve["loss"][0]
    diverged = False
    train_s = step_s = 0.0
    steps_done = 0
    for step in range(1, budget.steps + 1):
        factor = schedule.factor(step, budget.steps)
        for group, peak in zip(optimizer.param_groups, peaks):
            group["lr"] = peak * factor
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = problem.train_loss(model, gen)
        if not torch.isfinite(loss):
            diverged = True
            break
        loss.backward()
        t1 = time.perf_counter()
        try:
            optimizer.step()
        except NonFiniteGradientError:
            diverged = True
            break
        t2 = time.perf_counter()
        train_s += t2 - t0
        step_s += t2 - t1
        steps_done = step
        if step in evals:
            log(curve, step, metrics(problem, model))
            last = curve["loss"][-1]
            if not math.isfinite(last) or last > DIVERGED_FACTOR * max(start_loss, 1e-12):
                diverged = True
                break
    final = {k: v[-1] for k, v in curve.items() if k != "step"}
    if diverged:
        final["loss"] = math.inf
    per_step = 1e3 / max(steps_done, 1)
    return {"problem": problem.name, "optimizer": spec.name, "setting": setting.as_dict(), "seed": seed,
            "steps": budget.steps, "schedule": schedule.as_dict(),
            "adamw": adamw.as_dict() if adamw is not None and spec.hybrid else None, "diverged": diverged,
            "steps_done": steps_done, "ms_per_step": round(train_s * per_step, 3),
            "optimizer_ms_per_step": round(step_s * per_step, 3), "final": final, "curve": curve}


def log(curve: dict[str, list[float]], step: int, metrics: dict[str, float]) -> None:
    """Append one evaluation (5 significant digits keep the JSON small)."""
    curve.setdefault("step", []).append(step)
    for key, value in metrics.items():
        curve.setdefault(key, []).append(float(f"{value:.5g}") if math.isfinite(value) else value)


def metrics(problem: Problem, model: torch.nn.Module) -> dict[str, float]:
    """One evaluation: the problem's metrics, and ‖∇f‖_*, κ₂(∇f) per parameter on matrix problems."""
    out = problem.evaluate(model)
    if isinstance(problem, MatrixProblem):
        for name, g in problem.gradient(model).items():
            if not torch.isfinite(g).all():                               # diverging: logged as null
                out[f"grad_nuc/{name}"] = out[f"grad_cond/{name}"] = math.nan
                continue
            s = torch.linalg.svdvals(g.double())
            out[f"grad_nuc/{name}"] = float(s.sum())                      # ‖∇f‖_*
            out[f"grad_cond/{name}"] = float(s[0] / s[-1])                # κ₂(∇f) = σ_max/σ_min
    return out
