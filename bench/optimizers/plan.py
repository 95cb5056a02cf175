"""What a protocol run will cost, before running it: ``python -m bench.optimizers.plan``.

    python -m bench.optimizers.plan [--quick] [--stages ...] [--sizes ...] [--steps 10]

Walks :func:`bench.optimizers.protocol.run_protocol` with a stand-in for the sweep that trains
nothing and counts, for every cell and optimizer, the runs of the worst case: every coordinate
descent spends its whole budget (``runs`` for a full descent, ``retune_runs`` for a learning-rate
re-tune), then the extra seeds. Each run costs its steps × the *CPU* time of one training step
of that optimizer on that problem (:func:`bench.optimizers.step_cost.step_cost`, one torch
thread, median of ``--steps``) plus its evaluations × the CPU time of one evaluation. On an idle
machine one process's wall time is about its CPU time; cached runs make a resumed run cheaper.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .optimizers import OPTIMIZERS, Setting
from .problems import Problem
from .protocol import PROTOCOLS, STAGES, Protocol, run_protocol
from .runner import metrics
from .step_cost import step_cost
from .sweep import Cell, Tuning, family


@dataclass(frozen=True)
class Planned:
    """``runs`` runs of ``optimizer`` at ``cell`` (worst case)."""

    cell: Cell
    optimizer: str
    runs: int


class DryRun:
    """Takes :class:`bench.optimizers.sweep.Sweep`'s place: records the worst-case runs of each
    cell and returns a placeholder choice for every optimizer."""

    def __init__(self, tuning: Tuning) -> None:
        self.tuning = tuning
        self.planned: list[Planned] = []

    def cell(self, cell: Cell, optimizers: Iterable[str], starts: dict[str, Setting] | None = None,
             adamw: Setting | None = None, seeds: int | None = None) -> dict[str, Setting]:
        starts, t = starts or {}, self.tuning
        seeds = t.seeds if seeds is None else seeds
        names = [*(["adamw"] if adamw is None else []),
                 *(n for n in optimizers if n != "adamw" and OPTIMIZERS[n].applies_to(family(cell.problem)))]
        for name in names:
            self.planned.append(Planned(cell, name, (t.retune_runs if name in starts else t.runs) + seeds - 1))
        return {name: Setting(1.0) for name in ("adamw", *names)}


def plan(p: Protocol, stages: Iterable[str] = STAGES, sizes: Iterable[str] | None = None) -> list[Planned]:
    """The worst-case runs of ``stages`` at ``sizes``, in the order the protocol runs them."""
    dry = DryRun(p.tuning)
    run_protocol(p, dry, stages, sizes=sizes)       # type: ignore[arg-type]  (duck-typed sweep)
    return dry.planned


def eval_cost(problem: Problem, repeats: int = 3) -> float:
    """Median CPU seconds of one evaluation (the runner's: with the gradient's singular values on
    the matrix problems) on a fresh model."""
    model = problem.build(0)
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        metrics(problem, model)
        times.append(time.process_time() - t0)
    return statistics.median(times)


def estimate(planned: list[Planned], steps: int = 10) -> tuple[float, dict[str, float]]:
    """Worst-case CPU seconds of ``planned`` and their split by cell (problem name | steps)."""
    step_s: dict[tuple[int, str], float] = {}
    eval_s: dict[int, float] = {}
    by_cell: dict[str, float] = {}
    for r in planned:
        problem = r.cell.problem
        if id(problem) not in eval_s:
            eval_s[id(problem)] = eval_cost(problem)
        if (id(problem), r.optimizer) not in step_s:
            step_s[id(problem), r.optimizer] = step_cost(problem, r.optimizer, steps)["ms_per_step"] / 1e3
        seconds = r.runs * (r.cell.budget.steps * step_s[id(problem), r.optimizer]
                            + len(r.cell.budget.eval_steps()) * eval_s[id(problem)])
        key = f"{problem.name}, {r.cell.budget.steps} steps, {r.cell.schedule.kind}"
        by_cell[key] = by_cell.get(key, 0.0) + seconds
    return sum(by_cell.values()), by_cell


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.optimizers.plan", description=__doc__.split("\n\n")[2])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--sizes", default=None)
    parser.add_argument("--steps", type=int, default=10, help="steps timed per (problem, optimizer)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    p = PROTOCOLS["quick" if args.quick else "full"]
    sizes = None if args.sizes is None else args.sizes.split(",")
    planned = plan(p, args.stages.split(","), sizes)
    total, by_cell = estimate(planned, args.steps)
    print("| cell | worst-case runs | CPU minutes |\n|---|---|---|")
    for key, seconds in by_cell.items():
        runs = sum(r.runs for r in planned if f"{r.cell.problem.name}, {r.cell.budget.steps} steps, "
                   f"{r.cell.schedule.kind}" == key)
        print(f"| {key} | {runs} | {seconds / 60:.1f} |")
    print(f"| **total** | {sum(r.runs for r in planned)} | **{total / 60:.1f}** |")


if __name__ == "__main__":
    main()
