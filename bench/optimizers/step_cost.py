"""CPU time per training step and per optimizer step, apart from the sweeps.

    python -m bench.optimizers.step_cost [--steps 30] [--out bench/results/optimizers_step_cost.json]

The sweeps record wall-clock time per step, which on a shared machine measures the load as much as
the optimizer. This measures *process CPU time* (``time.process_time``, one torch thread), which
other processes barely change, for every optimizer of the full protocol's transformer studies on
each model: the main three, the ablation's eight variants and the MoE variant. Median over
``--steps`` steps after 5 warm-up steps; the overhead is the optimizer step's share of the
training step and its ratio to AdamW's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from .optimizers import OPTIMIZERS, Setting
from .problems import Problem
from .protocol import PROTOCOLS, ablation_cell, lm_problem, moe_cell
from .sweep import family

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "optimizers_step_cost.json"


def step_cost(problem: Problem, name: str, steps: int) -> dict[str, float]:
    """Median CPU ms per training step and per ``optimizer.step()`` of ``name`` on ``problem``."""
    spec, key = OPTIMIZERS[name], family(problem)
    decay = spec.weight_decay if problem.tunes_weight_decay and not spec.manifold else 0.0
    model = problem.build(0)
    # at the coordinate descent's starting point (a setting that does not diverge)
    opt = spec.build(model, Setting(spec.lr_center[key], decay, spec.beta),
                     Setting(OPTIMIZERS["adamw"].lr_center[key], 0.1, 0.95) if spec.hybrid else None)
    gen = torch.Generator().manual_seed(0)
    total, inner = [], []
    for i in range(steps + 5):
        t0 = time.process_time()
        opt.zero_grad(set_to_none=True)
        problem.train_loss(model, gen).backward()
        t1 = time.process_time()
        opt.step()
        t2 = time.process_time()
        if i >= 5:
            total.append(t2 - t0)
            inner.append(t2 - t1)
    return {"ms_per_step": 1e3 * statistics.median(total), "optimizer_ms_per_step": 1e3 * statistics.median(inner)}


def markdown(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """One row per (model, optimizer): CPU ms per step, per optimizer step, ratio to AdamW."""
    lines = ["| model | optimizer | CPU ms/step | optimizer CPU ms/step | optimizer share | step / AdamW's |",
             "|---|---|---|---|---|---|"]
    for model, rows in results.items():
        base = rows["adamw"]["ms_per_step"]
        for name, r in rows.items():
            lines.append(f"| {model} | {OPTIMIZERS[name].label} | {r['ms_per_step']:.1f} | "
                         f"{r['optimizer_ms_per_step']:.1f} | {r['optimizer_ms_per_step'] / r['ms_per_step']:.0%} | "
                         f"{r['ms_per_step'] / base:.2f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.optimizers.step_cost", description=__doc__.split("\n\n")[2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    p = PROTOCOLS["full"]
    ablation = [f"{o}_{k}" for o in ("muon", "polargrad") for k in p.ablation]
    models: dict[str, tuple[Problem, list[str]]] = {
        size.tag: (lm_problem(size, p.context, p.batch), ["adamw", "muon", "polargrad"]) for size in p.sizes}
    models[ablation_cell(p).size.tag][1].extend(ablation)
    moe = moe_cell(p)
    if moe is not None:
        models[moe.problem.name] = (moe.problem, ["adamw", "muon", "polargrad"])
    results = {tag: {name: step_cost(problem, name, args.steps) for name in names}
               for tag, (problem, names) in models.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "torch_threads": 1, "results": results}, indent=1))
    print(markdown(results))


if __name__ == "__main__":
    main()
