"""Problems on the Stiefel manifold: manifold Muon vs MCSD/SPEL vs Riemannian SGD vs unconstrained Muon.

    python -m bench.optimizers.stiefel_problems [--steps 30 150] [--seeds 2] [--out bench/results/stiefel.json]

Two problems, each run with every optimizer over the same learning-rate grid, equal step budgets,
a cosine schedule and the same seeds; the best learning rate per optimizer (by mean final metric
over seeds) is reported, with its time per step:

- ``trace``: the top-8 eigenspace of a 96×96 symmetric matrix with a known spectrum, as
  maximisation of the generalised Rayleigh quotient tr((WᵀW)⁻¹WᵀAW) over W ∈ ℝ^{96×8}. It is
  invariant to W → WR, so unconstrained Muon is well posed on it; on the manifold it is tr(WᵀAW).
  Metric: the relative gap to the sum of the top 8 eigenvalues.
- ``digits``: an MLP 64 → 96 → 32 → 10 on scikit-learn's digits whose two hidden matrices
  (96×64 tall, 32×96 wide) are on the manifold (AdamW for biases and the head in every run).
  Metric: held-out cross-entropy.

Optimizers: ``stiefel_muon`` (StiefelMuon, Su's fixed point, ≤ 10 polar factors per solve,
warm-started), ``stiefel_dual`` (Bernstein's dual ascent, same cap), ``stiefel_admm`` (ADMM,
same cap), ``spel`` (MCSD/SPEL: msign
of the Riemannian gradient), ``rsgd`` (Riemannian SGD with momentum: W ← polar(W − η P_T M)) and
``muon`` (unconstrained Muon; the manifold weights are ordinary weights). Not registered in
:data:`bench.optimizers.problems.PROBLEMS` (its sweep protocol tunes λ and β too; see
``bench/OPTIMIZERS.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polarkernels import polar
from polarkernels.optim import Muon, StiefelMuon, project_to_stiefel_
from polarkernels.optim.stiefel_direction import project_tangent

LRS = (0.01, 0.03, 0.1, 0.3, 1.0)
#: Riemannian SGD steps along the raw (projected) momentum, whose scale is the gradient's: its own grid.
LRS_RSGD = (0.3, 1.0, 3.0, 10.0, 30.0)
OPTIMIZERS = ("stiefel_muon", "stiefel_dual", "stiefel_admm", "spel", "rsgd", "muon")


class RiemannianSGD(torch.optim.Optimizer):
    """SGD with momentum on the manifold: M ← βM + G, W ← polar(W − η P_T(M)) (polar retraction)."""

    def __init__(self, params, lr: float, momentum: float = 0.9) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(p.grad)
                tall = p.shape[0] >= p.shape[1]
                w, m = (p, buf) if tall else (p.mT, buf.mT)
                new = polar(w - group["lr"] * project_tangent(w, m))[0]
                p.copy_(new if tall else new.mT)


class TraceProblem:
    name = "trace"

    def __init__(self, m: int = 96, n: int = 8) -> None:
        gen = torch.Generator().manual_seed(42)
        q = polar(torch.randn(m, m, generator=gen, dtype=torch.float64))[0]
        spectrum = torch.linspace(1.0, 0.01, m, dtype=torch.float64) ** 2          # gap λ₈/λ₉ ≈ 1.02
        self.a = ((q * spectrum) @ q.T).float()
        self.best = float(spectrum[:n].sum())
        self.shape = (m, n)

    def build(self, seed: int) -> tuple[nn.Module, list[nn.Parameter]]:
        torch.manual_seed(seed)
        model = nn.Module()
        model.w = nn.Parameter(torch.randn(*self.shape))
        project_to_stiefel_(model.w)
        return model, [model.w]

    def loss(self, model: nn.Module, gen: torch.Generator) -> Tensor:
        w = model.w
        return -torch.trace(torch.linalg.solve(w.T @ w, w.T @ self.a @ w)) / self.best

    @torch.no_grad()
    def metric(self, model: nn.Module) -> float:
        """1 − tr((WᵀW)⁻¹WᵀAW)/Σλ₁..₈, in float64 (float32 would floor it at ~1e-7)."""
        w, a = model.w.double(), self.a.double()
        return float(1 - torch.trace(torch.linalg.solve(w.T @ w, w.T @ a @ w)) / self.best)


class DigitsProblem:
    name = "digits"

    def __init__(self) -> None:
        from sklearn.datasets import load_digits
        data = load_digits()
        x = torch.tensor(data.data, dtype=torch.float32)
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        y = torch.tensor(data.target)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(42))
        self.train_x, self.train_y = x[perm[:1400]], y[perm[:1400]]
        self.val_x, self.val_y = x[perm[1400:]], y[perm[1400:]]

    def build(self, seed: int) -> tuple[nn.Module, list[nn.Parameter]]:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(64, 96), nn.Tanh(), nn.Linear(96, 32), nn.Tanh(), nn.Linear(32, 10))
        on = [model[0].weight, model[2].weight]
        project_to_stiefel_(on)
        return model, on

    def loss(self, model: nn.Module, gen: torch.Generator) -> Tensor:
        idx = torch.randint(0, len(self.train_x), (64,), generator=gen)
        return F.cross_entropy(model(self.train_x[idx]), self.train_y[idx])

    @torch.no_grad()
    def metric(self, model: nn.Module) -> float:
        return float(F.cross_entropy(model(self.val_x), self.val_y))


def build_optimizer(name: str, model: nn.Module, on: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    rest = [p for p in model.parameters() if all(p is not q for q in on)]
    adamw = dict(adamw_lr=3e-3, adamw_weight_decay=0.0)
    if name in ("stiefel_muon", "stiefel_dual", "stiefel_admm", "spel"):
        solver = {"stiefel_muon": "fixed_point", "stiefel_dual": "dual_ascent", "stiefel_admm": "admm",
                  "spel": "spel"}[name]
        return StiefelMuon(rest, lr=lr, weight_decay=0.0, stiefel=on, solver=solver, max_iter=10, **adamw)
    if name == "muon":
        return Muon([{"params": on, "algorithm": "polar"}] + ([{"params": rest, "algorithm": "adamw"}] if rest else []),
                    lr=lr, weight_decay=0.0, **adamw)
    sgd = RiemannianSGD(on, lr=lr)
    if not rest:
        return sgd
    extra = torch.optim.AdamW(rest, lr=3e-3, weight_decay=0.0)
    return _Both(sgd, extra)


class _Both:
    def __init__(self, *opts: torch.optim.Optimizer) -> None:
        self.opts = opts
        self.param_groups = [g for o in opts for g in o.param_groups]

    def zero_grad(self) -> None:
        for o in self.opts:
            o.zero_grad()

    def step(self) -> None:
        for o in self.opts:
            o.step()


def run(problem, name: str, lr: float, seed: int, steps: int) -> dict[str, Any]:
    model, on = problem.build(seed)
    opt = build_optimizer(name, model, on, lr)
    peaks = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(1000 + seed)
    step_s = 0.0
    for t in range(steps):
        factor = 0.5 * (1 + math.cos(math.pi * t / steps))             # cosine to 0
        for g, peak in zip(opt.param_groups, peaks):
            g["lr"] = peak * factor
        opt.zero_grad()
        problem.loss(model, gen).backward()
        t0 = time.perf_counter()
        opt.step()
        step_s += time.perf_counter() - t0
    metric = problem.metric(model)
    gaps = [gap for _, _, _, gap in getattr(opt, "last_solves", [])]
    off = max(float(torch.linalg.matrix_norm((w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T)
                                             - torch.eye(min(w.shape)))) for w in map(torch.Tensor.detach, on))
    return dict(metric=metric if math.isfinite(metric) else math.inf, ms_per_step=1e3 * step_s / steps,
                orthogonality=off, last_gap=max(gaps) if gaps else None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs=2, default=[30, 150], metavar=("TRACE", "DIGITS"),
                        help="step budgets of the two problems")
    parser.add_argument("--problems", nargs="+", default=["trace", "digits"], choices=["trace", "digits"])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", default="bench/results/stiefel.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results: dict[str, Any] = {"seeds": args.seeds, "lrs": LRS, "lrs_rsgd": LRS_RSGD, "machine": platform.processor()
                               or platform.machine(), "torch": torch.__version__,
                               "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                                        text=True).stdout.strip(), "problems": {}}
    budgets = dict(zip(("trace", "digits"), args.steps))
    for problem in [{"trace": TraceProblem, "digits": DigitsProblem}[name]() for name in args.problems]:
        steps = budgets[problem.name]
        table = {}
        for name in OPTIMIZERS:
            grid = LRS_RSGD if name == "rsgd" else LRS
            runs = {lr: [run(problem, name, lr, seed, steps) for seed in range(args.seeds)] for lr in grid}
            best = min(grid, key=lambda lr: np.mean([r["metric"] for r in runs[lr]]))
            table[name] = dict(best_lr=best, metric=float(np.mean([r["metric"] for r in runs[best]])),
                               spread=float(np.std([r["metric"] for r in runs[best]])),
                               ms_per_step=float(np.mean([r["ms_per_step"] for r in runs[best]])),
                               orthogonality=max(r["orthogonality"] for r in runs[best]),
                               edge=best in (grid[0], grid[-1]),
                               last_gap=max((r["last_gap"] for r in runs[best] if r["last_gap"] is not None),
                                            default=None))
            print(problem.name, name, table[name], flush=True)
        results["problems"][problem.name] = dict(steps=steps, optimizers=table)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"| problem | optimizer | best lr | final metric (mean ± sd over {args.seeds} seeds) | ms/step | "
          f"‖WᵀW − I‖_F | last solver gap |")
    print("|---|---|---|---|---|---|---|")
    for pname, entry in results["problems"].items():
        for name, row in entry["optimizers"].items():
            print(f"| {pname} | {name} | {row['best_lr']}{' (edge)' if row['edge'] else ''} | "
                  f"{row['metric']:.3g} ± {row['spread']:.1g} | {row['ms_per_step']:.2f} | {row['orthogonality']:.1e} | "
                  f"{'—' if row['last_gap'] is None else format(row['last_gap'], '.1e')} |")


if __name__ == "__main__":
    main()
