"""``python -m bench.optimizers [--quick] [--stages ...] [--sizes ...] [--problems ...] [--report-only]``

Runs the protocol (:mod:`bench.optimizers.protocol`): the transformer scaling study, the
polar-accuracy ablation, the schedule check and the single-budget problems, recording every run
in ``<out>/optimizers_<mode>.json`` as it ends (resumable: rerun the same command to continue an
interrupted run), then writes the tables to ``<out>/optimizers_<mode>.md`` and the plots to
``<out>/optimizers_<mode>_*.png``.
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
from .problems import PROBLEMS
from .protocol import PROTOCOLS, STAGES, Protocol, run_protocol, scaling_cells, single_problems
from .store import RunStore
from .sweep import Sweep

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.optimizers", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models and budgets: a ≤ 3-minute smoke test")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {list(STAGES)}")
    parser.add_argument("--sizes", default=None,
                        help="comma list of the model sizes to run (default all; e.g. 'm' in a second process "
                             "with its own --out, merged back with --merge): each size is tuned independently")
    parser.add_argument("--problems", default=None,
                        help=f"single-budget problems for the 'problems' stage, comma list of {list(PROBLEMS)} "
                             "(default: the protocol's)")
    parser.add_argument("--optimizers", default=None,
                        help="optimizers for the single-budget problems (default: each problem's own list)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default bench/results)")
    parser.add_argument("--report-only", action="store_true", help="tables and plots from recorded runs only")
    parser.add_argument("--merge", type=Path, nargs="+", default=(), metavar="JSON",
                        help="first add the runs of these results files (stages run in parallel with their own "
                             "--out), then train/report as asked")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: these models are small, and on the 2-vCPU "
                             "machine the results were taken on 2 threads ran 1.5-60× slower than 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    protocol = PROTOCOLS["quick" if args.quick else "full"]
    if args.problems is not None:
        protocol = Protocol(**{**protocol.__dict__, "problems": tuple(_choices(args.problems, PROBLEMS, "problem"))})
    optimizers = None if args.optimizers is None else _choices(args.optimizers, OPTIMIZERS, "optimizer")
    stages = _choices(args.stages, dict.fromkeys(STAGES), "stage")
    sizes = None if args.sizes is None else _choices(args.sizes, {s.tag: s for s in protocol.sizes}, "model size")
    print(run_benchmark(protocol, args.out, stages=stages, optimizers=optimizers, sizes=sizes,
                        train=not args.report_only, merge=args.merge))
    return 0


def run_benchmark(protocol: Protocol, out: Path, *, stages: list[str] = list(STAGES),
                  optimizers: list[str] | None = None, sizes: list[str] | None = None, train: bool = True,
                  progress: bool = True, merge: tuple[Path, ...] = ()) -> str:
    """Merge ``merge`` in, run ``stages`` at the model sizes ``sizes`` (default all; unless
    ``train`` is False), then report; returns the markdown tables."""
    store = RunStore(out / f"optimizers_{protocol.mode}.json", _meta(protocol))
    for path in merge:
        print(f"merged {store.merge(path)} new runs from {path}", file=sys.stderr)
    if train:
        bar = tqdm(desc=protocol.mode, unit="run", disable=not progress, file=sys.stderr)

        def on_run(record: dict, cached: bool) -> None:
            bar.update()
            loss = record["final"]["loss"]
            s = record["setting"]
            bar.set_postfix_str(f"{record['optimizer']} lr={s['lr']:.3g} λ={s['weight_decay']:g} seed={record['seed']} "
                                f"{'cached' if cached else 'final'}={'diverged' if loss is None else f'{loss:.4g}'}")

        run_protocol(protocol, Sweep(store, protocol.tuning, on_run), stages, optimizers, sizes,
                     announce=lambda title: bar.set_description(title[:60]))
        bar.close()
    return report.write_report(store, protocol, out)


def _choices(text: str, allowed: dict, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}(s) {unknown}; choose from {list(allowed)}")
    return names


def _meta(protocol: Protocol) -> dict:
    """Provenance recorded with the runs: versions, commit, machine, protocol, data."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    problems = {c.cell.problem for c in scaling_cells(protocol)} | set(single_problems(protocol))
    return {"date": now, "commit": commit, "sessions": [{"started": now, "commit": commit}],
            "polarkernels": polarkernels.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "protocol": protocol.as_dict(),
            "problems": {p.name: p.provenance() for p in problems}}


if __name__ == "__main__":
    raise SystemExit(main())
