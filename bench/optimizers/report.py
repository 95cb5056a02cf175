"""From the recorded runs and tunings to the tables and plots of ``bench/OPTIMIZERS.md``.

Everything is recomputed from the results JSON (so ``--report-only`` needs no training). For
each optimizer at a cell the chosen setting is the one its coordinate descent chose (recorded
in ``tunings``), and its figures are over every recorded seed of that setting.

Speedup over AdamW (Wen et al.): :func:`bench.optimizers.scaling.adamw_equivalent_speedup` on
AdamW's seed-mean final loss at every ratio of the same model size.
"""

from __future__ import annotations

import io
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import polarkernels

from .optimizers import OPTIMIZERS, PolarFactor, Setting
from .protocol import (Protocol, ablation_cell, moe_cell, problem_optimizers, scaling_cells, schedule_cell,
                       single_cell, single_problems)
from .scaling import Speedup, adamw_equivalent_speedup
from .store import RunStore
from .sweep import Cell, final_loss


@dataclass
class Summary:
    """One optimizer at one cell, at its chosen setting."""

    optimizer: str
    setting: Setting
    flags: list[str]
    tuning_runs: int
    finals: list[float]                              # final loss per seed
    curve: dict[str, list[float]]                    # seed-mean of every logged metric
    ms_per_step: float
    optimizer_ms_per_step: float
    extras: dict[str, float]
    speedup: Speedup | None = None

    @property
    def label(self) -> str:
        return OPTIMIZERS[self.optimizer].label

    @property
    def mean(self) -> float:
        return statistics.fmean(self.finals)

    @property
    def std(self) -> float:
        return statistics.stdev(self.finals) if len(self.finals) > 1 and math.isfinite(self.mean) else 0.0


def summarize(store: RunStore, cell: Cell, optimizers: list[str] | None = None) -> dict[str, Summary]:
    """Summaries of the optimizers tuned at ``cell`` (all recorded ones unless listed)."""
    tunings = store.tunings.get(cell.key, {})
    out = {}
    for name in optimizers if optimizers is not None else list(tunings):
        if name not in tunings:
            continue
        t = tunings[name]
        runs = sorted((r for r in store.runs.values()
                       if r["problem"] == cell.problem.name and r["optimizer"] == name
                       and r["steps"] == cell.budget.steps and r["schedule"] == cell.schedule.as_dict()
                       and r["setting"] == t["chosen"] and r["adamw"] == (t["adamw"] if OPTIMIZERS[name].hybrid
                                                                           else None)),
                      key=lambda r: r["seed"])
        if not runs:
            continue
        extras = {k: statistics.fmean(r["final"][k] for r in runs) for k in runs[0]["final"]
                  if k != "loss" and not k.startswith("grad_") and all(r["final"].get(k) is not None for r in runs)}
        out[name] = Summary(name, Setting(**t["chosen"]), t["flags"], t["runs"], [final_loss(r) for r in runs],
                            _mean_curve([r["curve"] for r in runs]),
                            statistics.fmean(r["ms_per_step"] for r in runs),
                            statistics.fmean(r["optimizer_ms_per_step"] for r in runs), extras)
    return out


def _mean_curve(curves: list[dict[str, list]]) -> dict[str, list[float]]:
    """Seed-mean of each metric over the steps every seed logged (a diverged seed truncates)."""
    n = min(len(c["step"]) for c in curves)
    out = {"step": curves[0]["step"][:n]}
    for key in curves[0]:
        if key != "step":
            values = [[c[key][i] for c in curves] for i in range(n)]
            out[key] = [math.nan if any(v is None for v in vs) else statistics.fmean(vs) for vs in values]
    return out


def _fmt(x: float) -> str:
    return "diverged" if not math.isfinite(x) else f"{x:.4g}"


def _setting(s: Summary) -> list[str]:
    dagger = " †" if s.flags else ""
    beta = "—" if s.setting.beta is None else f"{s.setting.beta:g}"
    return [f"{s.setting.lr:.3g}{dagger}", f"{s.setting.weight_decay:g}", beta]


def polar_error(factor: PolarFactor, shape: tuple[int, int] = (64, 256), seed: int = 0) -> float:
    """‖U − U_exact‖_F / ‖U_exact‖_F of ``factor`` on a fixed matrix shaped like the small
    model's weights, singular values log-spaced from 1 to 10⁻³ (gradients and momenta are
    ill-conditioned: the small singular values are where 5-step iterations stop short)."""
    gen = torch.Generator().manual_seed(seed)
    m, n = shape
    q1, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n, m, generator=gen, dtype=torch.float64))
    x = (q1 * torch.logspace(0, -3, m, dtype=torch.float64)) @ q2.mT
    exact = q1 @ q2.mT
    u = polarkernels.orthogonalize(x.float(), method=factor.method, steps=factor.steps, dtype=factor.dtype)
    return float((u.double() - exact).norm() / exact.norm())


def cell_table(title: str, metric: str, summaries: dict[str, Summary], *, speedups: bool = True,
               polar_errors: bool = False, extras: tuple[str, ...] = ()) -> str:
    """One cell's table, best mean final loss first; ``extras``: further final metrics (seed-mean)."""
    head = ["optimizer", "peak lr η", "λ", "β", f"final {metric} (mean ± sd, n)",
            *(["speedup vs AdamW"] if speedups else []), *(["polar error"] if polar_errors else []),
            *(f"final {k}" for k in extras), "ms/step", "optimizer ms/step", "tuning runs"]
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in sorted(summaries.values(), key=lambda s: s.mean):
        polar = OPTIMIZERS[s.optimizer].polar
        cells = [s.label, *_setting(s), f"{_fmt(s.mean)} ± {s.std:.2g} ({len(s.finals)})",
                 *([str(s.speedup) if s.speedup is not None else "—"] if speedups else []),
                 *([f"{polar_error(polar):.1e}" if polar is not None else "—"] if polar_errors else []),
                 *(f"{s.extras[k]:.3g}" if k in s.extras else "—" for k in extras),
                 f"{s.ms_per_step:.1f}", f"{s.optimizer_ms_per_step:.1f}", str(s.tuning_runs)]
        lines.append("| " + " | ".join(cells) + " |")
    flagged = [f"{s.label}: {', '.join(s.flags)}" for s in summaries.values() if s.flags]
    if flagged:
        lines += ["", "† not shown interior (budget spent or grid end): " + "; ".join(flagged) + "."]
    return "\n".join(lines)


@dataclass
class ScalingResult:
    size: str
    title: str
    tokens_per_param: float
    cell: Cell
    summaries: dict[str, Summary]


def scaling_results(store: RunStore, p: Protocol) -> list[ScalingResult]:
    """Summaries of every scaling cell with AdamW done (and of AdamW's longer-budget cells),
    with Wen et al.'s speedups filled in."""
    out = []
    for c in sorted(scaling_cells(p) + scaling_cells(p, p.adamw_curve),
                    key=lambda c: (p.sizes.index(c.size), c.tokens_per_param)):
        summaries = summarize(store, c.cell, ["adamw", "muon", "polargrad"])
        if "adamw" in summaries:
            out.append(ScalingResult(c.size.tag, c.cell.problem.title, c.tokens_per_param, c.cell, summaries))
    for size in p.sizes:
        mine = [r for r in out if r.size == size.tag]
        budgets = [r.cell.budget.steps for r in mine]
        adamw = [r.summaries["adamw"].mean for r in mine]
        for r in mine:
            for s in r.summaries.values():
                s.speedup = adamw_equivalent_speedup(budgets, adamw, r.cell.budget.steps, s.mean)
    return out


def verdict_table(results: list[ScalingResult], adamw_only: tuple[float, ...] = ()) -> str:
    """Rows: size × ratio; per optimizer its final loss and speedup; the winner."""
    names = ["adamw", "muon", "polargrad"]
    head = ["model", "tokens/param", "steps", *(OPTIMIZERS[n].label.split(" (")[0] for n in names), "winner"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.size, f"{r.tokens_per_param:g}", str(r.cell.budget.steps)]
        for n in names:
            s = r.summaries.get(n)
            cells.append("—" if s is None else f"{_fmt(s.mean)} ± {s.std:.2g}"
                         + (f" ({s.speedup})" if n != "adamw" and s.speedup is not None else ""))
        best = min(r.summaries.values(), key=lambda s: s.mean)
        cells.append(best.label.split(" (")[0] if set(names) <= set(r.summaries)
                     else "(AdamW's curve only)" if r.tokens_per_param in adamw_only else "(incomplete)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def losses(results: list[ScalingResult]) -> list[str]:
    """Per optimizer, the cells where another one ends lower by more than the two seed spreads."""
    lines = []
    for name in ("adamw", "muon", "polargrad"):
        lost = []
        for r in results:
            mine = r.summaries.get(name)
            if mine is None:
                continue
            best = min(r.summaries.values(), key=lambda s: s.mean)
            if best.optimizer != name and mine.mean - best.mean > mine.std + best.std:
                lost.append(f"{r.size} at {r.tokens_per_param:g} tokens/param (+{mine.mean - best.mean:.3f} "
                            f"vs {best.label.split(' (')[0]})")
        label = OPTIMIZERS[name].label
        lines.append(f"- {label}: " + ("; ".join(lost) if lost else "no cell lost by more than the seed spreads"))
    return lines


def overhead_table(results: list[ScalingResult]) -> str:
    """ms per training step and per optimizer step, seed-mean at each cell, with the ratio to AdamW.

    Wall-clock on a shared 2-core machine: read the ratios, not the absolute values."""
    names = ["adamw", "muon", "polargrad"]
    head = ["model", "tokens/param", *(f"{OPTIMIZERS[n].label.split(' (')[0]} ms/step (optimizer)" for n in names),
            "Muon / AdamW", "PolarGrad / AdamW"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        s = r.summaries
        cells = [r.size, f"{r.tokens_per_param:g}"]
        cells += [f"{s[n].ms_per_step:.1f} ({s[n].optimizer_ms_per_step:.1f})" if n in s else "—" for n in names]
        cells += [f"{s[n].ms_per_step / s['adamw'].ms_per_step:.2f}×" if n in s else "—" for n in names[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(store: RunStore, p: Protocol, out: Path) -> str:
    """All tables as markdown (returned and written to ``optimizers_<mode>.md``) and the plots."""
    metric = "val loss"
    parts = [f"# Optimizer benchmark, {p.mode} protocol (generated by `python -m bench.optimizers"
             f"{'' if p.mode == 'full' else ' --' + p.mode}`)", ""]
    results = scaling_results(store, p)
    if results:
        parts += ["## Scaling study: verdict", "", "Final validation loss (nats/byte, mean ± sd over seeds) and, "
                  "in brackets, the speedup over AdamW: the AdamW budget reaching the same loss on AdamW's own "
                  "final-loss-vs-budget curve, over this budget (> or <: outside AdamW's measured budgets).", "",
                  verdict_table(results, p.adamw_curve), ""]
        parts += ["## Where each optimizer loses", "", *losses(results), "",
                  "## Time per step (wall-clock)", "", "Recorded by every run; on a shared machine this "
                  "measures the load as much as the optimizer (CPU time: `python -m bench.optimizers.step_cost`).", "",
                  overhead_table(results), ""]
        parts += ["## Scaling study: every cell", ""]
        for r in results:
            parts += [cell_table(f"{r.title}: {r.tokens_per_param:g} tokens/param, {r.cell.budget.steps} steps, "
                                 f"{r.cell.schedule.label}", metric, r.summaries), ""]
        for size in p.sizes:
            mine = [r for r in results if r.size == size.tag]
            if mine:
                plot_scaling(out / f"optimizers_{p.mode}_lm_{size.tag}.png", mine)
    a = ablation_cell(p)
    ablation = summarize(store, a.cell, [n for n in OPTIMIZERS if n.startswith(("muon", "polargrad"))
                                         and n not in ("muon_torch", "polargrad_pe", "polargrad_qdwh")])
    if len(ablation) > 2:
        parts += ["## Polar-factor accuracy ablation", "",
                  "Polar error: ‖U − U_exact‖_F/‖U_exact‖_F of the variant's polar factor on a fixed 64×256 "
                  "matrix with singular values log-spaced from 1 to 1e-3 (`report.polar_error`).", "",
                  cell_table(f"{a.cell.problem.title}: {a.tokens_per_param:g} tokens/param, {a.cell.budget.steps} "
                             f"steps, {a.cell.schedule.label}", metric, ablation, speedups=False,
                             polar_errors=True), ""]
        plot_cells(out / f"optimizers_{p.mode}_ablation.png", "Polar-factor ablation", a.cell, ablation)
    sc = schedule_cell(p)
    sched = summarize(store, sc, ["adamw", "muon", "polargrad"])
    if sched:
        parts += ["## Schedule check", "", cell_table(f"{sc.problem.title}: {sc.budget.steps} steps, "
                                                      f"{sc.schedule.label}", metric, sched, speedups=False), ""]
        plot_cells(out / f"optimizers_{p.mode}_schedule.png", f"{sc.schedule.label}", sc, sched)
    moe = moe_cell(p)
    moe_summaries = summarize(store, moe, ["adamw", "muon", "polargrad"]) if moe is not None else {}
    if moe_summaries:
        dense = summarize(store, a.cell, ["adamw", "muon", "polargrad"])
        parts += ["## Mixture-of-experts variant", "",
                  "Same size, data, steps and schedule as the dense model's cell of the ablation (dense final "
                  "losses: " + ", ".join(f"{s.label.split(' (')[0]} {_fmt(s.mean)} ± {s.std:.2g}"
                                         for s in dense.values()) + ").", "",
                  cell_table(f"{moe.problem.title}: {moe.budget.steps} steps, {moe.schedule.label}", metric,
                             moe_summaries, speedups=False), ""]
        plot_cells(out / f"optimizers_{p.mode}_moe.png", moe.problem.title, moe, moe_summaries)
    for problem in single_problems(p):
        c = single_cell(p, problem)
        summaries = summarize(store, c, list(problem_optimizers(problem)) + ["adamw"])
        if summaries:
            parts += [f"## {problem.title}", "", cell_table(f"{problem.title}: {c.budget.steps} steps, "
                                                            f"{c.schedule.label}", problem.metric, summaries,
                                                            speedups=False, extras=problem.reported), ""]
            plot_cells(out / f"optimizers_{p.mode}_{problem.name}.png", problem.title, c, summaries,
                       log_scale=problem.log_scale)
    text = "\n".join(parts)
    (out / f"optimizers_{p.mode}.md").write_text(text + "\n")
    return text


def _colors() -> dict[str, Any]:
    import matplotlib.pyplot as plt

    # tab20 holds 10 hues in dark/light pairs: the first 10 optimizers get the dark shades, the
    # next 10 the light ones (neighbours in the registry differ in hue), the rest tab20b
    return {name: plt.get_cmap("tab20")(2 * i % 20 + i // 10) if i < 20 else plt.get_cmap("tab20b")(i % 20)
            for i, name in enumerate(OPTIMIZERS)}


def _draw(ax: Any, cell: Cell, summaries: dict[str, Summary], colors: dict[str, Any], log_scale: bool) -> None:
    """Seed-mean loss curves, the schedule's warm-up end and decay start marked, the y range
    zoomed on the second half of training (where the curves cross)."""
    tail = []
    for name, s in summaries.items():
        ax.plot(s.curve["step"], s.curve["loss"], color=colors[name], label=s.label, lw=1.2)
        half = [v for st, v in zip(s.curve["step"], s.curve["loss"]) if st >= cell.budget.steps / 2 and math.isfinite(v)]
        tail += half
    start = cell.schedule.decay_start(cell.budget.steps)
    if start is not None:
        ax.axvline(start, color="k", ls=":", lw=0.8)
        ax.text(start, 1.0, " decay", transform=ax.get_xaxis_transform(), fontsize=7, va="top")
    if tail and max(tail) > min(tail):
        lo, hi = min(tail), max(tail)
        pad = 0.1 * (hi - lo) if not log_scale else 0
        ax.set_ylim(lo - pad if not log_scale else lo / 1.5, hi + 3 * pad if not log_scale else hi * 3)
    ax.set_yscale("log" if log_scale else "linear")
    ax.grid(alpha=0.3)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=70)
    plt.close(fig)
    # a 64-colour palette keeps the committed PNGs ~3× smaller with no visible loss
    Image.open(buffer).convert("RGB").quantize(colors=64).save(path, optimize=True)


def plot_scaling(path: Path, results: list[ScalingResult]) -> None:
    """One panel per data/model ratio of one model size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _colors()
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, r in zip(axes[0], results):
        _draw(ax, r.cell, r.summaries, colors, False)
        ax.set(xlabel="step", ylabel="val loss (nats/byte)", title=f"{r.tokens_per_param:g} tokens/param")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle(f"{results[0].title}; {results[0].cell.schedule.label}; mean over seeds", fontsize=9)
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 0.94))
    _save(fig, path)


def plot_cells(path: Path, title: str, cell: Cell, summaries: dict[str, Summary], *, log_scale: bool = False) -> None:
    """Loss curves of one cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    _draw(ax, cell, summaries, _colors(), log_scale)
    ax.set(xlabel="step", ylabel=cell.problem.metric)
    ax.legend(fontsize=6, ncol=2, frameon=False)
    fig.suptitle(f"{title} ({cell.budget.steps} steps, {cell.schedule.label})", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
