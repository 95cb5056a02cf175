"""The tuning protocol: coordinate descent with the same budget for every optimizer.

Wen et al. ("Fantastic Pretraining Optimizers and Where to Find Them", arXiv 2509.02046) tune
every optimizer's hyperparameters by coordinate descent and compare at the end of the
schedule; this module does the same at every *cell* (a problem, a step budget, a schedule):

1. **Coordinate descent** (seed 0) from a starting setting, over the axes peak learning rate
   (a log grid, neighbours a factor ``lr_factor`` apart, unbounded), weight decay λ (the
   protocol's grid; networks only: on the matrix problems it would change the objective) and
   the optimizer's momentum coefficient β (its own grid, :attr:`OptimizerSpec.betas`). Along
   each axis in turn: evaluate both neighbours of the current best; if one is better, keep
   stepping that way while the loss keeps falling. Passes repeat until one changes nothing,
   or the budget of distinct runs (the same for every optimizer) is spent.
2. **Seeds**: the chosen setting again on seeds 1 … seeds − 1.

Later cells of a study start from an earlier cell's choice and re-tune the learning rate only
(Wen et al.'s phase II: at larger scales only the sensitive hyperparameters are re-tuned). The
chosen value is *interior* on an axis when both its neighbours were run and were no better; a
value at the end of a finite grid (other than λ = 0) or with a neighbour left untried (budget
spent) is flagged, and the report marks it †.

Selection is by final loss (the metric at the end of the budget, after the schedule's decay).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from polarkernels.optim import split_params

from .optimizers import OPTIMIZERS, OptimizerSpec, Setting
from .problems import Budget, Problem
from .runner import run
from .schedules import LRSchedule
from .store import RunStore, run_key

AXES = ("lr", "weight_decay", "beta")


@dataclass(frozen=True)
class Tuning:
    """The grids and budgets of the coordinate descent, the same for every optimizer."""

    lr_factor: float
    weight_decays: tuple[float, ...]
    #: distinct seed-0 runs per optimizer for a full descent (all axes)
    runs: int
    #: distinct seed-0 runs per optimizer when only the learning rate is re-tuned
    retune_runs: int
    seeds: int


@dataclass(frozen=True)
class Cell:
    """A problem at one step budget and schedule: where optimizers are tuned and compared."""

    problem: Problem
    budget: Budget
    schedule: LRSchedule

    @property
    def key(self) -> str:
        s = self.schedule
        return f"{self.problem.name}|{self.budget.steps}|{s.kind}/{s.warmup:g}/{s.decay:g}/{s.shape}/{s.floor:g}"


def family(problem: Problem) -> str:
    """The key of the optimizers' starting learning rates (model sizes of one problem share it)."""
    return getattr(problem, "family", problem.name)


def final_loss(record: dict[str, Any]) -> float:
    """The selection metric of a run; +inf when it diverged (stored as null)."""
    loss = record["final"]["loss"]
    return math.inf if loss is None or record["diverged"] else loss


def lr_at(center: float, factor: float, k: int) -> float:
    """centre × factor^k to 3 significant digits (the same grid in every rerun)."""
    return float(f"{center * factor ** k:.3g}")


@dataclass
class Descent:
    """The outcome of one coordinate descent."""

    chosen: Setting
    tried: dict[Setting, float]
    flags: list[str]


Move = Callable[[Setting, int], "Setting | None"]


def coordinate_descent(loss_of: Callable[[Setting], float], start: Setting, moves: dict[str, Move],
                       budget: int, natural_bounds: Iterable[tuple[str, int]] = ()) -> Descent:
    """Minimise ``loss_of`` by coordinate descent from ``start`` with at most ``budget`` distinct
    evaluations (step 1 of the module docstring). ``moves[axis](s, ±1)`` is the neighbour of
    ``s`` on that axis (None past the end of a finite grid); ``natural_bounds`` lists the
    (axis, direction) grid ends that are not flagged (λ = 0)."""
    tried: dict[Setting, float] = {}

    def f(s: Setting) -> float | None:
        if s not in tried:
            if len(tried) >= budget:
                return None
            tried[s] = loss_of(s)
        return tried[s]

    best = start
    f(best)
    changed = True
    while changed:
        changed = False
        for axis, move in moves.items():
            better = []
            for d in (-1, 1):
                s = move(best, d)
                if s is not None and (loss := f(s)) is not None and loss < tried[best]:
                    better.append((loss, d, s))
            if not better:
                continue
            _, d, cur = min(better, key=lambda b: b[0])
            while (nxt := move(cur, d)) is not None and (loss := f(nxt)) is not None and loss < tried[cur]:
                cur = nxt
            best, changed = cur, True
    natural = set(natural_bounds)
    flags = []
    for axis, move in moves.items():
        for d in (-1, 1):
            s = move(best, d)
            side = "below" if d < 0 else "above"
            if s is None and (axis, d) not in natural:
                flags.append(f"{axis} at the grid's {'bottom' if d < 0 else 'top'}")
            elif s is not None and s not in tried:
                flags.append(f"{axis} {side} untried")
    return Descent(best, tried, flags)


class Sweep:
    """Runs cells of the protocol, reusing recorded runs."""

    def __init__(self, store: RunStore, tuning: Tuning,
                 on_run: Callable[[dict[str, Any], bool], None] = lambda record, cached: None) -> None:
        self.store = store
        self.tuning = tuning
        self.on_run = on_run

    def cell(self, cell: Cell, optimizers: Iterable[str], starts: dict[str, Setting] | None = None,
             adamw: Setting | None = None, seeds: int | None = None) -> dict[str, Setting]:
        """Tune ``optimizers`` at ``cell``; returns the chosen settings, AdamW's included.

        AdamW comes first unless its setting is given: it is the speedups' baseline, and the
        hybrids reuse its setting for their non-matrix parameters. An optimizer with an entry
        in ``starts`` re-tunes its learning rate only, from there; the others get a full
        descent from their spec's starting point. ``seeds`` overrides the tuning's seed count.
        """
        starts = starts or {}
        seeds = self.tuning.seeds if seeds is None else seeds
        chosen = {"adamw": adamw if adamw is not None else self.tune(cell, OPTIMIZERS["adamw"], None,
                                                                      starts.get("adamw"), seeds)}
        pinned = chosen["adamw"] if _has_non_matrix(cell.problem) else None
        for name in optimizers:
            if name != "adamw" and OPTIMIZERS[name].applies_to(family(cell.problem)):
                chosen[name] = self.tune(cell, OPTIMIZERS[name], pinned, starts.get(name), seeds)
        return chosen

    def tune(self, cell: Cell, spec: OptimizerSpec, adamw: Setting | None, start: Setting | None,
             seeds: int) -> Setting:
        """Coordinate descent (full, or the learning rate from ``start``), then the seeds."""
        t = self.tuning
        center = spec.lr_center[family(cell.problem)]

        def lr_move(s: Setting, d: int) -> Setting:
            k = round(math.log(s.lr / center) / math.log(t.lr_factor))
            return replace(s, lr=lr_at(center, t.lr_factor, k + d))

        def grid_move(axis: str, grid: tuple[float, ...]) -> Move:
            def move(s: Setting, d: int) -> Setting | None:
                i = grid.index(getattr(s, axis)) + d
                return replace(s, **{axis: grid[i]}) if 0 <= i < len(grid) else None
            return move

        moves: dict[str, Move] = {"lr": lr_move}
        if start is None:
            decays = cell.problem.tunes_weight_decay and not spec.manifold
            wd = min(t.weight_decays, key=lambda w: abs(w - spec.weight_decay))     # nearest on the grid
            start = Setting(lr_at(center, t.lr_factor, 0), wd if decays else 0.0, spec.beta)
            if decays:
                moves["weight_decay"] = grid_move("weight_decay", t.weight_decays)
            moves["beta"] = grid_move("beta", spec.betas)
        budget = t.runs if len(moves) > 1 else t.retune_runs
        descent = coordinate_descent(lambda s: final_loss(self._run(cell, spec, s, 0, adamw)), start, moves,
                                     budget, natural_bounds=[("weight_decay", -1)])
        for seed in range(1, seeds):
            self._run(cell, spec, descent.chosen, seed, adamw)
        self.store.add_tuning(cell.key, spec.name, {
            "chosen": descent.chosen.as_dict(), "start": start.as_dict(), "axes": list(moves),
            "budget": budget, "runs": len(descent.tried), "flags": descent.flags,
            "adamw": adamw.as_dict() if adamw is not None else None,
            "tried": [[s.as_dict(), loss] for s, loss in descent.tried.items()]})
        return descent.chosen

    def _run(self, cell: Cell, spec: OptimizerSpec, setting: Setting, seed: int,
             adamw: Setting | None) -> dict[str, Any]:
        aw = adamw.as_dict() if adamw is not None and spec.hybrid else None
        key = run_key(cell.problem.name, spec.name, setting.as_dict(), seed, cell.budget.steps,
                      cell.schedule.as_dict(), aw)
        record = self.store.get(key)
        if record is not None:
            self.on_run(record, True)
            return record
        record = self.store.add(run(cell.problem, spec, setting, seed, cell.budget, cell.schedule, adamw))
        self.on_run(record, False)
        return record


def _has_non_matrix(problem: Problem) -> bool:
    """Whether the problem's model has parameters the hybrids give to AdamW."""
    return any(g["algorithm"] == "adamw" for g in split_params(problem.build(0)))
