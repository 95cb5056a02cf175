"""``python -m bench.optimizers [--quick] [--problems ...] [--optimizers ...] [--report-only]``

Runs the tuning protocol (:mod:`bench.optimizers.sweep`) problem by problem, cheapest first,
records every run in ``<out>/optimizers_<mode>.json`` (resumable: rerun the same command to
continue an interrupted sweep), then prints one markdown table per problem and writes
``<out>/optimizers_<mode>_<problem>.png``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import polarkernels

from . import report
from .optimizers import OPTIMIZERS
from .problems import PROBLEMS, MatrixProblem, Problem
from .store import RunStore
from .sweep import PROTOCOLS, Protocol, Sweep

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.optimizers", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short budgets, 3-point LR grid, 2 seeds (minutes)")
    parser.add_argument("--problems", default=",".join(PROBLEMS), help=f"comma list of {list(PROBLEMS)}")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help=f"comma list of {list(OPTIMIZERS)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default bench/results)")
    parser.add_argument("--report-only", action="store_true", help="tables and plots from recorded runs only")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: these problems are small, and on the 2-vCPU "
                             "machine the results were taken on 2 threads ran 1.5-60× slower than 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    problems = _choices(args.problems, PROBLEMS, "problem")
    optimizers = _choices(args.optimizers, OPTIMIZERS, "optimizer")
    protocol = PROTOCOLS["quick" if args.quick else "full"]
    run_benchmark([PROBLEMS[p]() for p in problems], optimizers, protocol, args.out,
                  train=not args.report_only)
    return 0


def run_benchmark(problems: list[Problem], optimizers: list[str], protocol: Protocol, out: Path, *,
                  train: bool = True, progress: bool = True) -> dict[str, str]:
    """Sweep (unless ``train`` is False), then report; returns the markdown table per problem."""
    store = RunStore(out / f"optimizers_{protocol.mode}.json", _meta(problems, protocol))
    tables = {}
    for problem in problems:
        budget = problem.budgets[protocol.mode]
        if train:
            names = [n for n in optimizers if OPTIMIZERS[n].applies_to(problem.name)]
            bar = tqdm(total=_planned_runs(problem, names, protocol), desc=problem.name, unit="run",
                       disable=not progress, file=sys.stderr)

            def on_run(record: dict, cached: bool, bar: tqdm = bar) -> None:
                bar.update()
                loss = record["final"]["loss"]
                bar.set_postfix_str(f"{record['optimizer']} lr={record['lr']:.3g} seed={record['seed']} "
                                    f"{'cached' if cached else 'final'}={'diverged' if loss is None else f'{loss:.4g}'}")

            Sweep(store, protocol, on_run).problem(problem, optimizers)
            bar.close()
        summaries = report.summarize(store, problem.name, budget.steps)
        if not summaries:
            continue
        title = f"{problem.title} — {budget.steps} steps, {protocol.mode} protocol"
        tables[problem.name] = report.markdown_table(title, problem.metric, summaries)
        print(tables[problem.name] + "\n", flush=True)
        report.plot(out / f"optimizers_{protocol.mode}_{problem.name}.png", title, problem.metric,
                    problem.log_scale, summaries)
    return tables


def _planned_runs(problem: Problem, names: list[str], protocol: Protocol) -> int:
    """Runs the protocol makes without grid extensions (AdamW counted once)."""
    decays = 0 if isinstance(problem, MatrixProblem) else len(protocol.decays)
    return len({"adamw", *names}) * (len(protocol.lr_offsets) + decays + protocol.seeds - 1)


def _choices(text: str, allowed: dict, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}(s) {unknown}; choose from {list(allowed)}")
    return names


def _meta(problems: list[Problem], protocol: Protocol) -> dict:
    """Provenance recorded with the runs: versions, commit, machine, protocol, data."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit, "polarkernels": polarkernels.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "protocol": protocol.__dict__,
            "problems": {p.name: {**p.provenance(), "budget": p.budgets[protocol.mode].__dict__}
                         for p in problems}}


if __name__ == "__main__":
    raise SystemExit(main())
