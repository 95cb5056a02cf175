"""The optimizer benchmark's harness: schedules, coordinate descent, the AdamW-equivalent speedup,
the runner applying the schedule, and the whole protocol end to end (tiny sizes) with resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench.optimizers import sweep
from bench.optimizers.__main__ import run_benchmark
from bench.optimizers.optimizers import ABLATION, OPTIMIZERS, OptimizerSpec, Setting
from bench.optimizers.plan import estimate, plan
from bench.optimizers.problems import Budget, QuadraticRegression, StiefelTrace
from bench.optimizers.protocol import (PROTOCOLS, ablation_cell, moe_cell, scaling_cells, schedule_cell,
                                       single_cell)
from bench.optimizers.runner import run
from bench.optimizers.scaling import adamw_equivalent_speedup, counted_params, steps_for_ratio
from bench.optimizers.schedules import SCHEDULES, LRSchedule
from bench.optimizers.store import record_key
from bench.optimizers.sweep import coordinate_descent


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- schedules -------------------------------------------------------------------------------

@pytest.mark.parametrize("total", [10, 37, 200])
def test_schedule_factors_follow_the_formulas(total):
    cos = LRSchedule("cosine", warmup=0.1, floor=0.1)
    w = round(0.1 * total)
    for t in range(1, total + 1):
        if t <= w:
            expected = t / w                                           # linear warm-up
        else:
            p = (t - w) / (total - w)
            expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))
        assert cos.factor(t, total) == pytest.approx(expected, rel=1e-12)   # same float64 formula
    assert cos.factor(total, total) == pytest.approx(0.1, rel=1e-12)        # ends at the floor
    for shape, g in (("linear", lambda p: p), ("sqrt", math.sqrt)):
        wsd = LRSchedule("wsd", warmup=0.0, decay=0.3, shape=shape)
        start = total - round(0.3 * total)
        assert wsd.decay_start(total) == start
        assert all(wsd.factor(t, total) == 1.0 for t in range(1, start + 1))  # stable phase
        for t in range(start + 1, total + 1):
            assert wsd.factor(t, total) == pytest.approx(1 - g((t - start) / (total - start)), abs=1e-12)
        assert wsd.factor(total, total) == 0.0
    assert all(LRSchedule("constant").factor(t, total) == 1.0 for t in range(1, total + 1))


def test_schedule_rejects_bad_input():
    with pytest.raises(ValueError, match="kind"):
        LRSchedule("linear")
    with pytest.raises(ValueError, match="warmup"):
        LRSchedule("cosine", warmup=1.5)
    with pytest.raises(ValueError, match="decay"):
        LRSchedule("wsd", decay=0.0)
    with pytest.raises(ValueError, match="step"):
        SCHEDULES["cosine"].factor(0, 10)


def test_runner_applies_the_schedule_to_every_group():
    seen: list[list[float]] = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            seen.append([g["lr"] for g in self.param_groups])
            return super().step(closure)

    def build(model, s, adamw):
        return Recording([{"params": [model.X], "lr": s.lr}, {"params": [], "lr": 2 * s.lr}], lr=s.lr)

    spec = OptimizerSpec("rec", "recording SGD", build, {"quadratic": 1e-9})
    problem = QuadraticRegression(m=6, n=3, p=12, q=5)
    schedule = LRSchedule("wsd", warmup=0.2, decay=0.4)
    record = run(problem, spec, Setting(1e-9), 0, Budget(10, 2), schedule, None)
    assert [lrs for lrs in seen] == [[1e-9 * schedule.factor(t, 10), 2e-9 * schedule.factor(t, 10)]
                                     for t in range(1, 11)]
    assert record["schedule"] == schedule.as_dict() and record["steps_done"] == 10
    assert 0 < record["optimizer_ms_per_step"] <= record["ms_per_step"]


# --- coordinate descent ----------------------------------------------------------------------

def _bowl(opt_lr_k: int, opt_wd: float):
    """A separable bowl over the lr index (factor 2 around 1.0) and the λ grid."""
    def loss(s: Setting) -> float:
        k = round(math.log2(s.lr))
        return (k - opt_lr_k) ** 2 + 10 * (s.weight_decay - opt_wd) ** 2 + (0 if s.beta == 0.95 else 0.5)
    return loss


def _moves(wds=(0.0, 0.1, 0.3), betas=(0.9, 0.95, 0.98)):
    def lr(s, d):
        return Setting(s.lr * 2.0 ** d, s.weight_decay, s.beta)

    def grid(axis, values):
        def move(s, d):
            i = values.index(getattr(s, axis)) + d
            return Setting(**{**s.as_dict(), axis: values[i]}) if 0 <= i < len(values) else None
        return move
    return {"lr": lr, "weight_decay": grid("weight_decay", wds), "beta": grid("beta", betas)}


def test_coordinate_descent_finds_an_interior_optimum():
    d = coordinate_descent(_bowl(3, 0.1), Setting(1.0, 0.0, 0.9), _moves(), budget=50,
                           natural_bounds=[("weight_decay", -1)])
    assert d.chosen == Setting(8.0, 0.1, 0.95) and d.flags == []
    # every neighbour of the choice was run and is worse
    for move in _moves().values():
        for step in (-1, 1):
            assert d.tried[move(d.chosen, step)] > d.tried[d.chosen]


def test_coordinate_descent_flags_grid_edges_and_spent_budgets():
    edge = coordinate_descent(_bowl(0, 0.5), Setting(1.0, 0.0, 0.95), _moves(), budget=50,
                              natural_bounds=[("weight_decay", -1)])
    assert edge.chosen.weight_decay == 0.3 and edge.flags == ["weight_decay at the grid's top"]
    at_zero = coordinate_descent(_bowl(0, 0.0), Setting(1.0, 0.1, 0.95), _moves(), budget=50,
                                 natural_bounds=[("weight_decay", -1)])
    assert at_zero.chosen.weight_decay == 0.0 and at_zero.flags == []     # λ = 0 is a natural bound
    short = coordinate_descent(_bowl(6, 0.1), Setting(1.0, 0.1, 0.95), _moves(), budget=4)
    assert len(short.tried) == 4 and "lr above untried" in short.flags


# --- speedup ---------------------------------------------------------------------------------

def test_adamw_equivalent_speedup_interpolates_in_log_budget():
    budgets, losses = [100, 200, 400], [3.0, 2.5, 2.0]              # L = 3 − 0.5·log2(D/100)
    for d, loss in ((100, 2.75), (200, 2.25), (400, 2.5)):
        expected = 100 * 2 ** ((3.0 - loss) / 0.5) / d
        assert adamw_equivalent_speedup(budgets, losses, d, loss).value == pytest.approx(expected, rel=1e-12)
    assert str(adamw_equivalent_speedup(budgets, losses, 400, 2.0)) == "1.00×"    # AdamW itself
    assert str(adamw_equivalent_speedup(budgets, losses, 200, 1.9)) == ">2.00×"   # beyond the curve
    assert str(adamw_equivalent_speedup(budgets, losses, 200, 3.5)) == "<0.50×"
    # a longer budget that ended worse (seed noise) is dropped from the monotone hull
    assert adamw_equivalent_speedup([100, 200, 400], [3.0, 2.0, 2.1], 100, 2.5).value == pytest.approx(
        2 ** 0.5, rel=1e-12)
    assert adamw_equivalent_speedup(budgets, losses, 100, math.inf) is None


def test_budgets_count_non_embedding_parameters():
    cells = scaling_cells(PROTOCOLS["test"])
    model = cells[0].cell.problem.build(0)
    embedded = model.embed.weight.numel() + model.pos.weight.numel()
    assert counted_params(model) == sum(p.numel() for p in model.parameters()) - embedded
    p = PROTOCOLS["test"]
    for c in cells:
        params = counted_params(c.cell.problem.build(0))
        assert c.cell.budget.steps == round(c.tokens_per_param * params / (p.context * p.batch))
    assert steps_for_ratio(1000, 20.0, 100) == 200
    with pytest.raises(ValueError):
        steps_for_ratio(1000, 0.0, 100)


# --- the protocol end to end -----------------------------------------------------------------

def test_protocol_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    protocol = PROTOCOLS["test"]
    text = run_benchmark(protocol, tmp_path, progress=False)
    saved = json.loads((tmp_path / "optimizers_test.json").read_text())
    runs, tunings = saved["runs"], saved["tunings"]
    assert saved["meta"]["protocol"]["mode"] == "test" and saved["meta"]["sessions"][0]["commit"]
    # scaling: AdamW, Muon, PolarGrad at every size × ratio, each with its seeds at the chosen setting
    for c in scaling_cells(protocol):
        assert set(tunings[c.cell.key]) >= {"adamw", "muon", "polargrad"}
        for name in ("adamw", "muon", "polargrad"):
            t = tunings[c.cell.key][name]
            assert t["runs"] <= t["budget"]
            seeds = {r["seed"] for r in runs if r["problem"] == c.cell.problem.name and r["optimizer"] == name
                     and r["steps"] == c.cell.budget.steps and r["setting"] == t["chosen"]}
            assert seeds == set(range(protocol.seeds(c.size)))           # fewer at the larger size
    cells = scaling_cells(protocol)
    first = cells[0].cell.key
    for size in protocol.sizes:                 # every size's first ratio: full descent, then lr only
        mine = [c.cell.key for c in cells if c.size == size]
        for name in ("adamw", "muon", "polargrad"):
            assert tunings[mine[0]][name]["axes"] == ["lr", "weight_decay", "beta"]
            assert tunings[mine[0]][name]["start"]["lr"] == OPTIMIZERS[name].lr_center["stdlib_lm"]
            assert tunings[mine[1]][name]["axes"] == ["lr"]
            assert tunings[mine[1]][name]["start"] == tunings[mine[0]][name]["chosen"]
    # the hybrids' AdamW part is pinned to AdamW's choice at the same cell
    assert tunings[first]["muon"]["adamw"] == tunings[first]["adamw"]["chosen"]
    ablation = tunings[ablation_cell(protocol).cell.key]
    assert {f"{o}_{k}" for o in ("muon", "polargrad") for k in protocol.ablation} <= set(ablation)
    assert set(protocol.ablation) < set(ABLATION)           # the test protocol runs two of the four
    wsd = schedule_cell(protocol)
    assert {r["schedule"]["kind"] for r in runs if r["problem"] == wsd.problem.name} == {"cosine", "wsd"}
    assert any(r["problem"] == "quadratic" for r in runs)
    # the Stiefel problem: manifold optimizers and unconstrained Muon through the same sweep, no λ
    trace = tunings[single_cell(protocol, StiefelTrace()).key]
    assert set(trace) == {"adamw", *StiefelTrace.optimizers}
    for name, t in trace.items():
        assert t["axes"] == ["lr", "beta"] and t["chosen"]["weight_decay"] == 0.0, name
    for r in runs:
        if r["problem"] == "stiefel_trace" and OPTIMIZERS[r["optimizer"]].manifold and not r["diverged"]:
            assert r["final"]["orthogonality"] < 1e-4      # float32 polar retractions, ~1e-6 per step
    for c in scaling_cells(protocol, protocol.adamw_curve):                  # AdamW alone, longer
        assert list(tunings[c.cell.key]) == ["adamw"] and tunings[c.cell.key]["adamw"]["axes"] == ["lr"]
    moe = moe_cell(protocol)                       # the MoE variant, at the ablation's size and steps
    assert set(tunings[moe.key]) == {"adamw", "muon", "polargrad"} and moe.budget == ablation_cell(protocol).cell.budget
    for heading in ("Scaling study: verdict", "Polar-factor accuracy ablation", "Schedule check",
                    "Mixture-of-experts variant"):
        assert heading in text
    assert (tmp_path / "optimizers_test.md").read_text().strip() == text.strip()
    assert "final orthogonality" in text
    for name in ("lm_s", "lm_m", "ablation", "schedule", "moe", "quadratic", "stiefel_trace"):
        assert (tmp_path / f"optimizers_test_{name}.png").stat().st_size > 0
    capsys.readouterr()

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded run was run again")

    monkeypatch.setattr(sweep, "run", no_training)
    assert run_benchmark(protocol, tmp_path, progress=False) == text
    again = json.loads((tmp_path / "optimizers_test.json").read_text())
    assert len(again["runs"]) == len(runs) and len(again["meta"]["sessions"]) == 2
    # a stage run in parallel into its own folder merges back: same report, no run repeated
    split = tmp_path / "split"
    split.mkdir()
    part = {**saved, "runs": [r for r in runs if r["problem"] == "quadratic"],
            "tunings": {k: v for k, v in tunings.items() if k.startswith("quadratic")}}
    rest = {**saved, "runs": [r for r in runs if r["problem"] != "quadratic"],
            "tunings": {k: v for k, v in tunings.items() if not k.startswith("quadratic")}}
    (split / "optimizers_test.json").write_text(json.dumps(rest))
    (tmp_path / "part.json").write_text(json.dumps(part))
    assert run_benchmark(protocol, split, progress=False, merge=(tmp_path / "part.json",)) == text
    # the documented two-process run: A = --sizes s (every stage), B = --sizes m --stages scaling,curve
    # in its own folder, merged into A: the same runs and tunings as the single process
    monkeypatch.undo()
    a, b = tmp_path / "a", tmp_path / "b"
    run_benchmark(protocol, a, sizes=["s"], progress=False)
    run_benchmark(protocol, b, sizes=["m"], stages=["scaling", "curve"], progress=False)
    only_b = json.loads((b / "optimizers_test.json").read_text())
    assert {r["problem"] for r in only_b["runs"]} == {"stdlib_lm_m"}
    run_benchmark(protocol, a, train=False, progress=False, merge=(b / "optimizers_test.json",))
    merged = json.loads((a / "optimizers_test.json").read_text())
    assert merged["tunings"] == tunings             # same choices from the same (deterministic) losses
    assert {record_key(r): r["final"] for r in merged["runs"]} == {record_key(r): r["final"] for r in runs}


def test_every_optimizer_builds_on_the_transformer():
    problem = scaling_cells(PROTOCOLS["test"])[0].cell.problem
    for name, spec in OPTIMIZERS.items():
        if spec.applies_to("stdlib_lm"):
            model = problem.build(0)
            opt = spec.build(model, Setting(1e-3, 0.1, spec.beta), Setting(1e-3, 0.1, 0.98) if spec.hybrid else None)
            problem.train_loss(model, torch.Generator().manual_seed(0)).backward()
            opt.step()
            assert all(torch.isfinite(p).all() for p in model.parameters()), name


def test_cli_validates_names_and_reports_from_an_empty_store(tmp_path, capsys):
    from bench.optimizers.__main__ import main

    with pytest.raises(SystemExit, match="unknown stage"):
        main(["--quick", "--stages", "scaling,nope", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown model size"):
        main(["--quick", "--sizes", "s,xl", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown problem"):
        main(["--quick", "--problems", "nope", "--out", str(tmp_path)])
    assert main(["--quick", "--report-only", "--out", str(tmp_path)]) == 0     # nothing recorded: headings only
    assert "quick protocol" in capsys.readouterr().out
    assert not (tmp_path / "optimizers_quick.json").exists()                    # no run, no file


def test_step_cost_measures_cpu_time_per_step():
    from bench.optimizers.step_cost import markdown, step_cost

    problem = scaling_cells(PROTOCOLS["test"])[0].cell.problem
    results = {"s": {name: step_cost(problem, name, steps=2) for name in ("adamw", "muon")}}
    for r in results["s"].values():
        assert 0 < r["optimizer_ms_per_step"] <= r["ms_per_step"]
    table = markdown(results)
    assert "| s | AdamW |" in table and table.count("\n") == 3 and "1.00× |" in table


def test_plan_bounds_the_runs_of_a_process(tmp_path):
    """The dry run visits the cells the protocol runs, and its worst case bounds the runs made."""
    protocol = PROTOCOLS["test"]
    planned = plan(protocol, ["scaling", "curve"], sizes=["m"])
    run_benchmark(protocol, tmp_path, sizes=["m"], stages=["scaling", "curve"], progress=False)
    saved = json.loads((tmp_path / "optimizers_test.json").read_text())
    assert {(r.cell.key, r.optimizer) for r in planned} == {(cell, name) for cell, ts in saved["tunings"].items()
                                                            for name in ts}
    for r in planned:
        made = {record_key(x) for x in saved["runs"] if x["problem"] == r.cell.problem.name
                and x["optimizer"] == r.optimizer and x["steps"] == r.cell.budget.steps}
        assert 0 < len(made) <= r.runs
    total, by_cell = estimate(planned[:2], steps=1)
    assert total > 0 and total == pytest.approx(sum(by_cell.values()))


def test_manifold_optimizers_keep_the_weights_on_the_manifold():
    from bench.optimizers.problems import StiefelDigitsMLP

    problem = StiefelDigitsMLP()
    for name in StiefelDigitsMLP.optimizers:
        spec = OPTIMIZERS[name]
        model = problem.build(0)
        opt = spec.build(model, Setting(spec.lr_center["stiefel_digits"], 0.0, spec.beta), Setting(3e-3, 0.1, 0.98))
        for _ in range(3):
            opt.zero_grad()
            problem.train_loss(model, torch.Generator().manual_seed(0)).backward()
            opt.step()
        orthogonality = problem.evaluate(model)["orthogonality"]
        if spec.manifold:                        # float32 polar retractions: ~1e-6 after 3 steps
            assert orthogonality < 1e-4, name
        else:                                    # unconstrained Muon leaves the manifold
            assert orthogonality > 1e-2, name
