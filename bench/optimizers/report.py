"""From the recorded runs to the per-problem tables and plots.

Everything is recomputed from the run records (so ``--report-only`` needs no training): for
each optimizer the best setting is the seed-0 run with the lowest final loss (the sweep's own
rule), and its figures are over every recorded seed of that setting.

Speedup: the target is AdamW's final loss (mean over seeds); an optimizer's steps-to-target is
the first logged step at which its seed-mean curve is at or below the target, and the speedup
is AdamW's steps-to-target over the optimizer's (> 1: fewer steps than AdamW). Steps are
resolved to the logging interval (budget / evals).
"""

from __future__ import annotations

import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .optimizers import OPTIMIZERS, Setting
from .store import RunStore
from .sweep import final_loss


@dataclass
class Summary:
    """One optimizer on one problem at its chosen setting."""

    optimizer: str
    setting: Setting
    finals: list[float]                              # final loss per seed
    curve: dict[str, list[float]]                    # seed-mean of every logged metric
    sweep: list[tuple[float, float, float]]          # (lr, decay, final loss) of the seed-0 runs
    extras: dict[str, float] = field(default_factory=dict)   # seed-mean of the other final metrics
    ms_per_step: float = math.nan
    steps_to_target: int | None = None
    speedup: float | None = None

    @property
    def label(self) -> str:
        return OPTIMIZERS[self.optimizer].label

    @property
    def at_grid_edge(self) -> bool:
        """Whether the chosen lr is the smallest or largest swept (the optimum may lie beyond it:
        the sweep stopped growing the grid after ``max_extensions`` points)."""
        lrs = [lr for lr, decay, _ in self.sweep if decay == 0]
        return self.setting.lr in (min(lrs), max(lrs))

    @property
    def mean(self) -> float:
        return statistics.fmean(self.finals)

    @property
    def std(self) -> float:
        return statistics.stdev(self.finals) if len(self.finals) > 1 and math.isfinite(self.mean) else 0.0


def summarize(store: RunStore, problem: str, steps: int) -> dict[str, Summary]:
    """Summaries of every optimizer recorded for ``problem`` at budget ``steps``, AdamW first."""
    runs = [r for r in store.runs.values() if r["problem"] == problem and r["steps"] == steps]
    adamw = _summary("adamw", [r for r in runs if r["optimizer"] == "adamw"])
    if adamw is None:
        return {}
    pinned = {"lr": adamw.setting.lr, "decay": adamw.setting.decay}
    out = {"adamw": adamw}
    for name in OPTIMIZERS:
        if name == "adamw":
            continue
        mine = [r for r in runs if r["optimizer"] == name and r["adamw"] in (None, pinned)]
        summary = _summary(name, mine)
        if summary is not None:
            out[name] = summary
    target = adamw.mean
    base = _first_step_at(adamw.curve, target)
    for s in out.values():
        s.steps_to_target = _first_step_at(s.curve, target)
        if base is not None and s.steps_to_target is not None:
            s.speedup = base / max(s.steps_to_target, 1)
    return out


def _summary(name: str, runs: list[dict[str, Any]]) -> Summary | None:
    sweep_runs = [r for r in runs if r["seed"] == 0]
    if not sweep_runs:
        return None
    best = min(sweep_runs, key=final_loss)
    chosen = sorted((r for r in runs if r["lr"] == best["lr"] and r["decay"] == best["decay"]),
                    key=lambda r: r["seed"])
    curve = _mean_curve([r["curve"] for r in chosen])
    extras = {k: statistics.fmean(r["final"][k] for r in chosen) for k in best["final"]
              if k != "loss" and not k.startswith("grad_") and all(r["final"].get(k) is not None for r in chosen)}
    return Summary(
        optimizer=name, setting=Setting(best["lr"], best["decay"]),
        finals=[final_loss(r) for r in chosen], curve=curve,
        sweep=sorted((r["lr"], r["decay"], final_loss(r)) for r in sweep_runs),
        extras=extras,
        ms_per_step=1e3 * statistics.fmean(r["seconds"] / max(r["steps_done"], 1) for r in chosen))


def _mean_curve(curves: list[dict[str, list]]) -> dict[str, list[float]]:
    """Seed-mean of each metric over the steps every seed logged (a diverged seed truncates)."""
    n = min(len(c["step"]) for c in curves)
    out = {"step": curves[0]["step"][:n]}
    for key in curves[0]:
        if key != "step":
            out[key] = [_mean_or_nan([c[key][i] for c in curves]) for i in range(n)]
    return out


def _mean_or_nan(values: list[float | None]) -> float:
    return math.nan if any(v is None for v in values) else statistics.fmean(values)


def _first_step_at(curve: dict[str, list[float]], target: float) -> int | None:
    """First logged step whose loss is ≤ target (relative slack 1e-9 for the baseline's own end)."""
    for step, loss in zip(curve["step"], curve["loss"]):
        if loss <= target * (1 + 1e-9) + 1e-300:
            return step
    return None


def _fmt(x: float) -> str:
    return "diverged" if not math.isfinite(x) else f"{x:.4g}"


def markdown_table(problem_title: str, metric: str, summaries: dict[str, Summary]) -> str:
    """The per-problem table, best mean final loss first."""
    extra_keys = sorted({k for s in summaries.values() for k in s.extras})
    head = ["optimizer", "lr η", "decay ηλ", f"final {metric} (mean ± sd, n)", "steps to AdamW's final",
            "speedup vs AdamW", *extra_keys, "ms/step"]
    lines = [f"**{problem_title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in sorted(summaries.values(), key=lambda s: s.mean):
        lr = f"{s.setting.lr:.3g}{' †' if s.at_grid_edge else ''}"
        cells = [s.label, lr, f"{s.setting.decay:.0e}" if s.setting.decay else "0",
                 f"{_fmt(s.mean)} ± {s.std:.2g} ({len(s.finals)})",
                 str(s.steps_to_target) if s.steps_to_target is not None else "not reached",
                 f"{s.speedup:.2f}×" if s.speedup is not None else "—",
                 *[f"{s.extras[k]:.4g}" if k in s.extras else "—" for k in extra_keys],
                 f"{s.ms_per_step:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if any(s.at_grid_edge for s in summaries.values()):
        lines += ["", "† best at the edge of its swept learning-rate grid (after the allowed extensions): "
                      "the optimum may lie beyond it."]
    return "\n".join(lines)


def plot(path: Path, problem_title: str, metric: str, log_scale: bool, summaries: dict[str, Summary]) -> None:
    """Loss curves (seed means at the chosen settings), LR sensitivity and, for the matrix
    problems, ‖∇f‖_* and κ₂(∇f) along the chosen runs; one small PNG per problem."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    grads = sorted({k.split("/", 1)[1] for s in summaries.values() for k in s.curve if k.startswith("grad_nuc/")})
    panels = 4 if grads else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.8))
    colors = {name: plt.get_cmap("tab10")(i) for i, name in enumerate(OPTIMIZERS)}
    for name, s in summaries.items():
        c = colors[name]
        axes[0].plot(s.curve["step"], s.curve["loss"], color=c, label=s.label)
        lrs = [lr for lr, decay, _ in s.sweep if decay == 0]
        finals = [f if math.isfinite(f) else math.nan for lr, decay, f in s.sweep if decay == 0]
        axes[1].plot(lrs, finals, "o-", color=c, ms=3)
        for kind, ax in zip(("grad_nuc", "grad_cond"), axes[2:]):
            for g, style in zip(grads, ("-", "--")):
                key = f"{kind}/{g}"
                if key in s.curve:
                    ax.plot(s.curve["step"], s.curve[key], style, color=c)
    axes[0].set(xlabel="step", ylabel=metric, title="chosen setting, mean over seeds")
    axes[1].set(xscale="log", xlabel="learning rate η (seed 0, no decay)", ylabel=f"final {metric}",
                title="LR sensitivity")
    if grads:
        dash = f" ({grads[0]} solid, {grads[1]} dashed)" if len(grads) > 1 else ""
        axes[2].set(yscale="log", xlabel="step", title="‖∇f‖_* (full objective)" + dash)
        axes[3].set(yscale="log", xlabel="step", title="κ₂(∇f)" + dash)
    for ax in axes[:2]:
        ax.set_yscale("log" if log_scale else "linear")
        ax.grid(alpha=0.3)
    fig.suptitle(problem_title, fontsize=10)
    ncol = min(len(summaries), 3 if panels == 2 else 5)
    rows = math.ceil(len(summaries) / ncol)
    fig.legend(loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.02 + 0.055 * rows, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=70)
    plt.close(fig)
    # a 64-colour palette keeps the committed PNGs ~3× smaller with no visible loss
    Image.open(buffer).convert("RGB").quantize(colors=64).save(path, optimize=True)
