"""The benchmark's protocols (full, quick, test) and the order their studies run in.

A protocol runs up to six studies (``--stages``), each a set of cells tuned by
:class:`bench.optimizers.sweep.Sweep`:

- ``scaling``: the byte-level transformer at every model size × data/model ratio, AdamW, Muon
  and PolarGrad under the decaying schedule. Each size's first cell (its smallest ratio) gets
  the full coordinate descent (the same budget for every optimizer and every size), so the sizes
  are independent and can run in parallel processes (``--sizes``); every later ratio of a size
  starts from that size's previous ratio's choice and re-tunes the learning rate (phase II of
  Wen et al.).
- ``ablation``: Muon and polar-first PolarGrad with four polar factors (5-step Polar Express
  bf16, Muon's quintic, cubic Newton–Schulz, exact SVD) at one scaling cell, each re-tuning the
  learning rate from the main variant's choice there.
- ``schedule``: AdamW, Muon and PolarGrad at one scaling cell under WSD instead of cosine,
  learning rate re-tuned from the cosine choice.
- ``moe``: the mixture-of-experts variant of the transformer (``StdlibMoELM``) at the ablation's
  size and budget, AdamW, Muon and PolarGrad re-tuning the learning rate from the dense model's
  choice there (same family, same data, same steps).
- ``curve``: AdamW alone at longer budgets (``adamw_curve`` tokens/param), learning rate
  re-tuned from its choice at the largest ratio: more of AdamW's loss-vs-budget curve, so that an
  optimizer ending below AdamW's loss at the largest ratio gets a speedup rather than a bound.
- ``problems``: single-budget problems of :data:`bench.optimizers.problems.PROBLEMS` (each at
  its own ``budgets[mode]``), full descent, every optimizer that has a starting point for it
  (the Stiefel problems: the manifold optimizers, unconstrained Muon and AdamW).

Order: per model size (of ``sizes``, default all), its scaling cells, then the studies at that
size (ablation, schedule check, MoE variant); then AdamW's curve at every size run; then the
problems; so that an interrupted run has answered the most questions. A study whose cell is at
a size not run is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

from .optimizers import ABLATION, Setting
from .problems import PROBLEMS, Budget, Problem, StdlibCharLM
from .scaling import ModelSize, counted_params, steps_for_ratio
from .schedules import SCHEDULES
from .sweep import Cell, Sweep, Tuning

STAGES = ("scaling", "ablation", "schedule", "moe", "curve", "problems")
MAIN = ("adamw", "muon", "polargrad")


@dataclass(frozen=True)
class Protocol:
    """Everything a mode fixes; recorded in the results JSON."""

    mode: str
    tuning: Tuning
    sizes: tuple[ModelSize, ...]
    #: data/model ratios of the scaling study, tokens per counted parameter
    tokens_per_param: tuple[float, ...]
    context: int
    batch: int
    evals: int
    schedule: str = "cosine"
    #: (size tag, index into tokens_per_param) of the ablation and of the schedule check
    ablation_cell: tuple[str, int] = ("s", 1)
    schedule_cell: tuple[str, int] = ("s", 1)
    schedule_check: str = "wsd"
    #: the ablation's polar factors (keys of :data:`bench.optimizers.optimizers.ABLATION`)
    ablation: tuple[str, ...] = tuple(ABLATION)
    #: single-budget problems (those not registered in PROBLEMS are skipped)
    problems: tuple[str, ...] = ()
    #: seeds per model size where fewer than ``tuning.seeds`` (the larger sizes cost most)
    size_seeds: tuple[int, ...] = ()
    #: the mixture-of-experts variant run at the ablation's cell (a name in PROBLEMS, or None)
    moe: str | None = "stdlib_moe_lm"
    #: longer budgets (tokens/param) at which AdamW alone extends its loss-vs-budget curve
    adamw_curve: tuple[float, ...] = ()

    def seeds(self, size: ModelSize) -> int:
        i = self.sizes.index(size)
        return self.size_seeds[i] if i < len(self.size_seeds) else self.tuning.seeds

    def as_dict(self) -> dict:
        return {"mode": self.mode, "tuning": self.tuning.__dict__, "sizes": [s.__dict__ for s in self.sizes],
                "tokens_per_param": self.tokens_per_param, "context": self.context, "batch": self.batch,
                "evals": self.evals, "schedule": SCHEDULES[self.schedule].as_dict(),
                "ablation_cell": self.ablation_cell, "ablation": self.ablation, "schedule_cell": self.schedule_cell,
                "schedule_check": SCHEDULES[self.schedule_check].as_dict(), "problems": self.problems,
                "size_seeds": self.size_seeds, "adamw_curve": self.adamw_curve, "moe": self.moe}


_TUNING = {"full": Tuning(lr_factor=2.0, weight_decays=(0.0, 0.01, 0.03, 0.1, 0.3, 1.0), runs=12, retune_runs=4,
                          seeds=3),
           "quick": Tuning(lr_factor=2.0, weight_decays=(0.0, 0.1, 0.3), runs=4, retune_runs=2, seeds=2),
           "test": Tuning(lr_factor=2.0, weight_decays=(0.0, 0.1), runs=2, retune_runs=1, seeds=2)}

PROTOCOLS = {
    # Data/model ratios 1/64, 1/16 and 1/4 of Chinchilla's 20 tokens/param (16× apart), sizes
    # 2.1× apart in counted parameters (116k, 248k); AdamW's curve at 2× the largest ratio.
    # Sized for two processes on the 2-core machine: A = `--sizes s` (s scaling, ablation,
    # schedule, MoE, s curve, problems) and B = `--sizes m --stages scaling,curve`.
    # `python -m bench.optimizers.plan` (worst case: every descent spends its whole budget; CPU
    # ms per step and per evaluation measured at one torch thread), idle machine (load ~1.5),
    # 2026-12-02, three measurements: A ≈ 21-26 CPU-min (s scaling 8-10, ablation ~3, schedule 1,
    # MoE 2.2-3, s curve 2, problems 7-12), B ≈ 20-28 (m scaling 15-20, m curve 5.4-7.8); plus
    # ~0.1 s per run outside the steps (606 runs: ~1 min; checked on --quick: 198 runs, plan 0.9
    # min of steps, 76 s wall). On one core each, that is their wall time: B ≤ ~45 min even if
    # the shared machine runs 1.5× slower. Matrix logistic regression is left out of the
    # problems: 12 CPU-min (its evaluation is a 10000-row objective plus an SVD of the gradient).
    "full": Protocol("full", _TUNING["full"], (ModelSize("s", 64, 2, 2), ModelSize("m", 96, 2, 2)),
                     (0.3125, 1.25, 5.0), context=64, batch=16, evals=12, size_seeds=(3, 2), adamw_curve=(10.0,),
                     problems=("stiefel_trace", "stiefel_digits", "digits_mlp", "quadratic", "completion")),
    "quick": Protocol("quick", _TUNING["quick"], (ModelSize("s", 32, 1, 2), ModelSize("m", 48, 1, 2)),
                      (0.25, 0.5, 1.0), context=32, batch=8, evals=6, ablation_cell=("s", 0),
                      problems=("quadratic", "stiefel_trace", "stiefel_digits")),
    "test": Protocol("test", _TUNING["test"], (ModelSize("s", 16, 1, 2), ModelSize("m", 24, 1, 2)),
                     (0.02, 0.04), context=8, batch=2, evals=2, ablation_cell=("s", 0), schedule_cell=("s", 0),
                     ablation=("pe_bf16", "svd"), problems=("quadratic", "stiefel_trace"), size_seeds=(2, 1),
                     adamw_curve=(0.08,)),
}


@cache
def lm_problem(size: ModelSize, context: int, batch: int) -> StdlibCharLM:
    """The byte-level transformer at ``size`` (named ``stdlib_lm_<tag>``; family ``stdlib_lm``)."""
    problem = StdlibCharLM(width=size.width, layers=size.layers, heads=size.heads, context=context, batch=batch)
    problem.name = f"stdlib_lm_{size.tag}"
    problem.family = "stdlib_lm"
    problem.title = (f"Byte-level transformer LM ({size.layers} layer{'s' * (size.layers > 1)}, width {size.width}, "
                     f"{counted_params(problem.build(0)) / 1e3:.0f}k parameters) on the stdlib sources")
    return problem


@dataclass(frozen=True)
class ScalingCell:
    size: ModelSize
    tokens_per_param: float
    cell: Cell


def scaling_cells(p: Protocol, ratios: tuple[float, ...] | None = None) -> list[ScalingCell]:
    """Every (size, ratio) cell of the scaling study (or at ``ratios``), sizes in order, ratios ascending."""
    out = []
    schedule = SCHEDULES[p.schedule]
    for size in p.sizes:
        problem = lm_problem(size, p.context, p.batch)
        for r in p.tokens_per_param if ratios is None else ratios:
            steps = steps_for_ratio(counted_params(problem.build(0)), r, p.context * p.batch)
            out.append(ScalingCell(size, r, Cell(problem, Budget(steps, p.evals), schedule)))
    return out


def _at(p: Protocol, where: tuple[str, int]) -> ScalingCell:
    tag, i = where
    return next(c for c in scaling_cells(p) if c.size.tag == tag and c.tokens_per_param == p.tokens_per_param[i])


def ablation_cell(p: Protocol) -> ScalingCell:
    return _at(p, p.ablation_cell)


def schedule_cell(p: Protocol) -> Cell:
    base = _at(p, p.schedule_cell).cell
    return Cell(base.problem, base.budget, SCHEDULES[p.schedule_check])


def moe_cell(p: Protocol) -> Cell | None:
    """The MoE variant at the ablation's model size, context, batch and step budget."""
    if p.moe is None or p.moe not in PROBLEMS:
        return None
    size, dense = ablation_cell(p).size, ablation_cell(p).cell
    problem = PROBLEMS[p.moe](width=size.width, layers=size.layers, heads=size.heads, context=p.context,
                              batch=p.batch)
    problem.name = f"{p.moe}_{size.tag}"
    options = problem.model_options
    problem.title = (f"{problem.title.split(' (')[0]} ({size.layers} layer{'s' * (size.layers > 1)}, width "
                     f"{size.width}, {options.get('experts')} experts top {options.get('top_k')})")
    return Cell(problem, dense.budget, dense.schedule)


def single_problems(p: Protocol) -> list[Problem]:
    return [PROBLEMS[name]() for name in p.problems if name in PROBLEMS]


def problem_optimizers(problem: Problem) -> tuple[str, ...]:
    """The optimizers a single-budget problem is benchmarked with: its own ``optimizers``
    attribute if it names some (e.g. manifold optimizers), else AdamW, SGD, Muon, PolarGrad."""
    return tuple(getattr(problem, "optimizers", ("adamw", "sgd", *MAIN[1:])))


def single_cell(p: Protocol, problem: Problem) -> Cell:
    return Cell(problem, problem.budgets[p.mode], SCHEDULES[p.schedule])


def run_protocol(p: Protocol, sweep: Sweep, stages: Iterable[str] = STAGES,
                 optimizers: Iterable[str] | None = None, sizes: Iterable[str] | None = None,
                 announce: Callable[[str], None] = lambda title: None) -> None:
    """Run ``stages`` of ``p`` at the model sizes tagged ``sizes`` (default all) in the module
    docstring's order (``optimizers`` restricts the single-budget problems' optimizers; the
    studies have fixed sets). The scaling cells of a size are (re)visited whenever a stage at
    that size needs their choices: recorded runs are reused, so this costs nothing on resume."""
    stages = set(stages)
    tags = [s.tag for s in p.sizes] if sizes is None else list(sizes)
    unknown = set(tags) - {s.tag for s in p.sizes}
    if unknown:
        raise ValueError(f"unknown model size(s) {sorted(unknown)}; the protocol has {[s.tag for s in p.sizes]}")
    chosen: dict[tuple[str, float], dict[str, Setting]] = {}

    def scaling(size: ModelSize) -> None:
        for j, c in enumerate(c for c in scaling_cells(p) if c.size == size):
            start = chosen[size.tag, p.tokens_per_param[j - 1]] if j > 0 else None    # first ratio: full descent
            announce(f"scaling {c.cell.problem.name}, {c.tokens_per_param:g} tokens/param, {c.cell.budget.steps} steps")
            chosen[size.tag, c.tokens_per_param] = sweep.cell(c.cell, MAIN, start, seeds=p.seeds(size))

    at_size = {"ablation": p.ablation_cell[0], "schedule": p.schedule_cell[0], "moe": p.ablation_cell[0]}
    for size in (s for s in p.sizes if s.tag in tags):
        studies = [stage for stage in ("ablation", "schedule", "moe") if stage in stages and at_size[stage] == size.tag]
        if studies or stages & {"scaling", "curve"}:
            scaling(size)
        if "ablation" in studies:
            a = ablation_cell(p)
            base = chosen[a.size.tag, a.tokens_per_param]
            announce(f"ablation {a.cell.problem.name}, {a.cell.budget.steps} steps")
            starts = {f"{opt}_{key}": base[opt] for opt in ("muon", "polargrad") for key in p.ablation}
            sweep.cell(a.cell, starts, starts, adamw=base["adamw"], seeds=p.seeds(size))
        if "schedule" in studies:
            c, at = schedule_cell(p), _at(p, p.schedule_cell)
            announce(f"schedule check {c.problem.name}, {c.schedule.label}")
            sweep.cell(c, MAIN, chosen[at.size.tag, at.tokens_per_param], seeds=p.seeds(size))
        if "moe" in studies and (moe := moe_cell(p)) is not None:
            at = ablation_cell(p)
            announce(f"MoE {moe.problem.name}, {moe.budget.steps} steps")
            sweep.cell(moe, MAIN, chosen[at.size.tag, at.tokens_per_param], seeds=p.seeds(size))
    if "curve" in stages:
        for c in scaling_cells(p, p.adamw_curve):
            if c.size.tag in tags:
                announce(f"AdamW curve {c.cell.problem.name}, {c.tokens_per_param:g} tokens/param")
                start = {"adamw": chosen[c.size.tag, p.tokens_per_param[-1]]["adamw"]}
                sweep.cell(c.cell, [], start, seeds=p.seeds(c.size))
    if "problems" in stages:
        for problem in single_problems(p):
            announce(f"problem {problem.name}")
            sweep.cell(single_cell(p, problem), optimizers or problem_optimizers(problem))
