"""The tuning protocol: the same sweep, with the same budget, for every optimizer on a problem.

Per problem, AdamW first (the hybrids reuse its tuned setting for their non-matrix
parameters), then every other optimizer that applies:

1. learning rate on a log grid around the optimizer's centre, half a decade apart, seed 0,
   no weight decay; while the best point is at an edge of the grid, the grid grows by one
   point on that side (up to ``max_extensions`` points in all), so a badly placed centre
   costs runs, not the result;
2. weight decay (networks only; for the matrix problems it would change the objective): the
   best learning rate again with each per-step shrink ηλ in ``decays``;
3. the best (lr, decay), by final loss, on seeds 1 … seeds−1.

Selection is by final loss (the metric at the end of the budget, not at an early checkpoint),
as in Wen et al., "Fantastic Pretraining Optimizers and Where to Find Them" (arXiv 2509.02046).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from polarkernels.optim import split_params

from .optimizers import OPTIMIZERS, OptimizerSpec, Setting
from .problems import MatrixProblem, Problem
from .runner import run
from .store import RunStore, run_key


@dataclass(frozen=True)
class Protocol:
    """Sweep sizes for one mode; the step budget comes from ``problem.budgets[mode]``."""

    mode: str
    lr_offsets: tuple[int, ...]        # grid points: centre × 10^(k/2)
    max_extensions: int
    decays: tuple[float, ...]          # per-step shrink ηλ tried at the best lr (networks)
    seeds: int


PROTOCOLS = {
    "full": Protocol("full", (-2, -1, 0, 1, 2), 2, (1e-3,), 3),
    "quick": Protocol("quick", (-1, 0, 1), 1, (), 2),
    "test": Protocol("test", (0, 1), 1, (1e-3,), 2),
}


def final_loss(record: dict[str, Any]) -> float:
    """The selection metric of a run; +inf when it diverged (stored as null)."""
    loss = record["final"]["loss"]
    return math.inf if loss is None or record["diverged"] else loss


def lr_at(center: float, k: int) -> float:
    """centre × 10^(k/2), rounded to 3 significant digits so grids of reruns match exactly."""
    return float(f"{center * 10 ** (k / 2):.3g}")


class Sweep:
    """Runs the protocol for a set of problems and optimizers, reusing recorded runs."""

    def __init__(self, store: RunStore, protocol: Protocol,
                 on_run: Callable[[dict[str, Any], bool], None] = lambda record, cached: None) -> None:
        self.store = store
        self.protocol = protocol
        self.on_run = on_run

    def problem(self, problem: Problem, optimizers: Iterable[str]) -> dict[str, Setting]:
        """Tune every optimizer in ``optimizers`` on ``problem``; returns the chosen settings.

        AdamW is always tuned, first: it is the baseline of the speedups, and the hybrids reuse
        its setting for their non-matrix parameters.
        """
        chosen = {"adamw": self.tune(problem, OPTIMIZERS["adamw"], None)}
        adamw = chosen["adamw"] if _has_non_matrix(problem) else None
        for name in optimizers:
            if name != "adamw" and OPTIMIZERS[name].applies_to(problem.name):
                chosen[name] = self.tune(problem, OPTIMIZERS[name], adamw)
        return chosen

    def tune(self, problem: Problem, spec: OptimizerSpec, adamw: Setting | None) -> Setting:
        """Steps 1–3 of the protocol for one optimizer; returns the best setting."""
        p = self.protocol
        center = spec.lr_center[problem.name]
        offsets = list(p.lr_offsets)
        results = {k: self._run(problem, spec, Setting(lr_at(center, k)), 0, adamw) for k in offsets}
        for _ in range(p.max_extensions):
            best = min(offsets, key=lambda k: final_loss(results[k]))
            if best not in (offsets[0], offsets[-1]) or math.isinf(final_loss(results[best])):
                break
            k = offsets[0] - 1 if best == offsets[0] else offsets[-1] + 1
            offsets = sorted([*offsets, k])
            results[k] = self._run(problem, spec, Setting(lr_at(center, k)), 0, adamw)
        candidates = {Setting(lr_at(center, k)): r for k, r in results.items()}
        if not isinstance(problem, MatrixProblem):
            lr = min(candidates, key=lambda s: final_loss(candidates[s])).lr
            for decay in p.decays:
                s = Setting(lr, decay)
                candidates[s] = self._run(problem, spec, s, 0, adamw)
        best = min(candidates, key=lambda s: final_loss(candidates[s]))
        for seed in range(1, p.seeds):
            self._run(problem, spec, best, seed, adamw)
        return best

    def _run(self, problem: Problem, spec: OptimizerSpec, setting: Setting, seed: int,
             adamw: Setting | None) -> dict[str, Any]:
        budget = problem.budgets[self.protocol.mode]
        aw = {"lr": adamw.lr, "decay": adamw.decay} if adamw is not None and spec.hybrid else None
        key = run_key(problem.name, spec.name, setting.lr, setting.decay, seed, budget.steps, aw)
        record = self.store.get(key)
        if record is not None:
            self.on_run(record, True)
            return record
        record = self.store.add(run(problem, spec, setting, seed, budget, adamw))
        self.on_run(record, False)
        return record


def _has_non_matrix(problem: Problem) -> bool:
    """Whether the problem's model has parameters the hybrids give to AdamW."""
    return any(g["algorithm"] == "adamw" for g in split_params(problem.build(0)))
