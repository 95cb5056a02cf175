"""Kernel benchmark: every method × backend × dtype × shape against today's baselines, in one run.

    python -m bench.polar --quick                 # ~1 minute on a 2-core CPU
    python -m bench.polar                         # the full default run of this device
    python -m bench.polar --sizes 512,1024 --dtypes float32 --methods polar_express,svd \\
        --backends torch,blas --workloads square,batched --out bench/out

Times ``polarkernels.polar`` (converged, with H) and ``polarkernels.orthogonalize`` (fixed steps;
``orthogonalize_many`` on the model workload) for every method and usable backend, next to
``torch.linalg.svd`` U Vᵀ and (U, H), ``scipy.linalg.polar`` (CPU), ``jax.scipy.linalg.polar``
(CPU, QDWH and SVD, in a process of its own: :mod:`bench.jax_peer`; skipped with a note when JAX
is not installed), torch.optim.Muon's orthogonalization
(bfloat16), a plain-torch copy of KellerJordan/Muon's 5-step quintic, and the latter two under
``torch.compile``. For each: median and IQR of the timed runs after a warm-up (CUDA events on
GPU, perf_counter on CPU), the FLOPs the method needs (:mod:`bench.flops`), achieved FLOP/s and
its fraction of a plain matmul of the same dtype and shape timed in the same run, accuracy
(‖UᵀU − I‖_F/√k and ‖U − U_polar‖_F/√k against the float64 SVD polar factor of the same input)
and speedups ×svd = t(torch.linalg.svd U Vh)/t and ×muon = t(KellerJordan quintic)/t, both on
the same workload and dtype (the SVD in float32 for bfloat16 rows).

Outputs: the Markdown table on stdout, ``results.json`` (every figure, the environment, the
skipped cases and why) and PNG plots in ``--out`` (default bench/out/, git-ignored).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from polarkernels.svd import svd_polar

from . import cases, flops, jax_peer, report
from .timing import Budget, measure

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True)
class Config:
    """A device's default run (``full``) and its ``--quick`` variant."""

    sizes: tuple[int, ...]
    rect_sizes: tuple[int, ...]
    batches: tuple[tuple[int, int], ...]
    model: tuple[str, ...]
    model_blocks: int | None
    polar_dtypes: tuple[str, ...]
    orthogonalize_dtypes: tuple[str, ...]
    budget: Budget
    max_call_s: float
    compile_: bool


CONFIGS = {
    # bfloat16 is off by default on CPU: without native bf16 (AVX2 here) its matmul runs at ~0.6 GFLOP/s,
    # 100× below float32, and would take most of the run; --dtypes float32,float64,bfloat16 adds it.
    ("cpu", "full"): Config((256, 512, 1024, 2048), (1024,), ((256, 32), (32, 128)), ("gpt2-small",), 1,
                            ("float32", "float64"), ("float32",), Budget(1, 3, 30, 0.5), 8.0, True),
    ("cpu", "quick"): Config((256, 512), (512,), ((64, 32),), (), 1,
                             ("float32",), ("float32",), Budget(1, 3, 10, 0.2), 2.0, False),
    ("cuda", "full"): Config((256, 512, 1024, 2048, 4096, 8192), (1024, 4096), ((4096, 32), (512, 128)),
                             ("gpt2-small", "gpt-1.3b"), None, ("float32", "float64"), ("bfloat16", "float32"),
                             Budget(3, 10, 200, 2.0), 60.0, True),
    ("cuda", "quick"): Config((256, 1024, 4096), (1024,), ((1024, 64),), ("gpt2-small",), None,
                              ("float32",), ("bfloat16",), Budget(2, 5, 50, 0.5), 10.0, True),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.polar", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, float32, few runs, no compile (~1 min on CPU)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    p.add_argument("--sizes", help="square sizes, e.g. 256,512,1024")
    p.add_argument("--rect-sizes", help="n for the 1:4 (n/2 × 2n) and 4:1 (2n × n/2) workloads")
    p.add_argument("--batches", help="batched workloads as BxN pairs, e.g. 256x32,32x128")
    p.add_argument("--models", help=f"model workloads, from {', '.join(cases.MODELS)}; 'none' for none")
    p.add_argument("--model-blocks", type=int, help="only the first N transformer blocks of each model")
    p.add_argument("--workloads", default="square,wide,tall,batched,model", help="kinds to run")
    p.add_argument("--methods", default=",".join(dict.fromkeys(cases.POLAR_METHODS + cases.ORTHOGONALIZE_METHODS)))
    p.add_argument("--backends", default="torch,blas,triton,cuda", help="backends to try (unusable ones are skipped with the reason)")
    p.add_argument("--baselines", default=",".join(cases.BASELINES))
    p.add_argument("--dtypes", help="dtypes to run: float64, float32, bfloat16 (polar() runs float32/float64; "
                                    "orthogonalize runs float32/bfloat16)")
    p.add_argument("--steps", type=int, default=5, help="orthogonalize steps (default 5)")
    p.add_argument("--compile", dest="compile_", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.compile'd variants (default: on, off with --quick on CPU)")
    p.add_argument("--budget-s", type=float, help="seconds of timed runs per case (at least --min-runs runs)")
    p.add_argument("--min-runs", type=int)
    p.add_argument("--max-call-s", type=float,
                   help="skip a case whose predicted time per call (from its previous workload) exceeds this")
    p.add_argument("--threads", type=int, help="CPU threads for torch and the BLAS libraries (default: as set up; "
                                                "1 gives stable figures on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default bench/out/)")
    p.add_argument("--no-plots", action="store_true")
    return p.parse_args(argv)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def build_workloads(args: argparse.Namespace, cfg: Config) -> list[cases.Workload]:
    kinds = set(_names(args.workloads))
    sizes = _ints(args.sizes) if args.sizes else cfg.sizes
    rect = _ints(args.rect_sizes) if args.rect_sizes else cfg.rect_sizes
    batches = (tuple(tuple(int(v) for v in b.split("x")) for b in _names(args.batches))
               if args.batches else cfg.batches)
    models = [] if args.models == "none" else (_names(args.models) if args.models else list(cfg.model))
    blocks = args.model_blocks if args.model_blocks is not None else cfg.model_blocks
    out: list[cases.Workload] = []
    if "square" in kinds:
        out += [cases.square(n) for n in sizes]
    if "wide" in kinds:
        out += [cases.wide(n) for n in rect]
    if "tall" in kinds:
        out += [cases.tall(n) for n in rect]
    if "batched" in kinds:
        out += [cases.batched(b, n) for b, n in batches]
    if "model" in kinds:
        out += [cases.model(name, blocks) for name in models]
    return out


def _model_note(args: argparse.Namespace, cfg: Config) -> list[str]:
    if args.quick and not args.models and not cfg.model and "model" in args.workloads:
        return ["model workload: off with --quick on CPU (one GPT-2 block takes seconds per call here); "
                "pass --models gpt2-small --model-blocks 1"]
    return []


def _work(workload: cases.Workload) -> float:
    """A size proxy that time scales with (for predicting a case's next time): Σ count·(k²N + k³)."""
    return sum(c * (min(m, n) ** 2 * max(m, n) + min(m, n) ** 3) for c, m, n in workload.groups)


class Runner:
    """Runs every applicable (workload, candidate) pair and collects rows and skip reasons."""

    def __init__(self, device: torch.device, budget: Budget, max_call_s: float, seed: int):
        self.device, self.budget, self.max_call_s, self.seed = device, budget, max_call_s, seed
        self.rows: list[dict[str, Any]] = []
        self.skipped: list[str] = []
        self.matmul: list[dict[str, Any]] = []
        self._largest: dict[str, tuple[float, float, str]] = {}  # key -> (seconds, work, workload)
        self._probes: dict[tuple, flops.Count] = {}
        self._broken: set[str] = set()

    def _too_slow(self, key: str, workload: cases.Workload) -> str | None:
        if key not in self._largest:
            return None
        seconds, work, where = self._largest[key]
        predicted = seconds * _work(workload) / work
        if predicted > self.max_call_s:
            return f"predicted {predicted:.3g} s per call ({seconds:.3g} s on {where}) > --max-call-s {self.max_call_s:g}"
        return None

    def matmul_rate(self, workload: cases.Workload, dtype: torch.dtype) -> float | None:
        """FLOP/s of the step's plain product (k×k)·(k×N), same dtype, batch and device."""
        key = f"matmul [{cases.dtype_name(dtype)}]"
        if reason := self._too_slow(key, workload):
            self.skipped.append(f"{workload.name}: matmul reference [{cases.dtype_name(dtype)}]: {reason}")
            return None
        gen = torch.Generator().manual_seed(self.seed)
        pairs = []
        for count, m, n in workload.groups:
            k, big = min(m, n), max(m, n)
            lead = () if count == 1 else (count,)
            pairs.append((torch.randn(*lead, k, k, generator=gen).to(self.device, dtype),
                          torch.randn(*lead, k, big, generator=gen).to(self.device, dtype)))
        timing, _, _ = measure(lambda: [b @ x for b, x in pairs], self.device, self.budget)
        total = sum(c * flops.matmul(m, n) for c, m, n in workload.groups)
        self._remember(key, timing.median, workload)
        # the reference is a peak: the best run (the medians of the candidates are compared with it)
        self.matmul.append({"workload": workload.name, "dtype": cases.dtype_name(dtype), "flops": total,
                            "best_s": timing.best, "median_s": timing.median, "iqr_s": timing.iqr,
                            "runs": timing.runs, "gflop_per_s": total / timing.best / 1e9})
        return total / timing.best

    def _remember(self, key: str, seconds: float, workload: cases.Workload) -> None:
        """Keep the largest workload measured per key: predictions scale up from it."""
        if key not in self._largest or _work(workload) >= self._largest[key][1]:
            self._largest[key] = (seconds, _work(workload), workload.name)

    def count(self, cand: cases.Candidate, workload: cases.Workload, inputs: list[Tensor]) -> tuple[float, list]:
        """FLOPs of ``cand`` on the workload, and the per-group iteration counts behind them."""
        total, details = 0.0, []
        firsts = inputs if workload.stacked else _firsts(workload, inputs)
        for (count, m, n), x in zip(workload.groups, firsts):
            c = self._count_one(cand, workload, x, m, n)
            total += c.flops * count
            details.append({"shape": [count, m, n], "steps": c.steps, "qr_steps": c.qr_steps})
        return total, details

    def _count_one(self, cand: cases.Candidate, workload: cases.Workload, x: Tensor, m: int, n: int) -> flops.Count:
        if cand.method in ("svd", "scipy_polar", "torch_svd_polar"):
            extra = flops.hermitian_from_svd(m, n) if cand.hermitian else 0.0
            return flops.Count(flops.svd_uvt(m, n) + extra)
        key = (workload.name, x.shape, cand.family, cand.method, cand.steps,
               torch.float64 if cand.dtype == torch.float64 else torch.float32)
        if key not in self._probes:
            if cand.method == "qdwh":
                max_iter = cand.steps if cand.family == "orthogonalize" else 10
                self._probes[key] = flops.probe_qdwh(x, max_iter=max_iter, hermitian_factor=cand.hermitian)
            elif cand.family == "polar":
                self._probes[key] = flops.probe_polynomial(x, cand.method, hermitian_factor=True)
            else:
                self._probes[key] = flops.fixed_steps(m, n, cand.steps)
        return self._probes[key]

    def run_case(self, cand: cases.Candidate, workload: cases.Workload, inputs: list[Tensor],
                 refs: list[Tensor], mm_rate: float | None) -> None:
        where = f"{workload.name}: {cand.key}"
        if cand.key in self._broken:
            return
        if reason := self._too_slow(cand.key, workload):
            self.skipped.append(f"{where}: {reason}")
            return
        try:
            timing, outputs, first_s = measure(lambda: cand.run(inputs), self.device, self.budget)
            total_flops, details = self.count(cand, workload, inputs)
        except Exception as exc:  # a failing case (e.g. torch.compile here) must not end the run
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.skipped.append(f"{where}: failed, {type(exc).__name__}: {msg[:300]}")
            self._broken.add(cand.key)
            return
        self._remember(cand.key, timing.median, workload)
        probes = outputs if workload.stacked else _firsts(workload, outputs)
        orth, dist = _accuracy(probes, refs)
        rate = total_flops / timing.median
        self.rows.append({
            "workload": workload.name, "kind": workload.kind, "size": workload.size,
            "groups": [list(g) for g in workload.groups], "device": self.device.type,
            "candidate": cand.name, "family": cand.family, "method": cand.method, "backend": cand.backend,
            "dtype": cases.dtype_name(cand.dtype), "compiled": cand.compiled, "role": cand.role,
            "median_s": timing.median, "q25_s": timing.q25, "q75_s": timing.q75, "iqr_s": timing.iqr,
            "runs": timing.runs, "first_call_s": first_s,
            "flops": total_flops, "gflop": total_flops / 1e9, "gflop_per_s": rate / 1e9,
            "matmul_fraction": None if mm_rate is None else rate / mm_rate, "iterations": details,
            "orthogonality": orth, "distance_to_polar": dist,
        })

    def run(self, workloads: list[cases.Workload], candidates: list[cases.Candidate]) -> None:
        jobs = [(w, c) for w in workloads for c in candidates if cases.applies(c, w)]
        bar = tqdm(total=len(jobs), desc="bench", unit="case", file=sys.stderr, dynamic_ncols=True)
        for workload in workloads:
            masters = workload.inputs(torch.float64, self.device, self.seed)
            refs = [svd_polar(x) for x in (masters if workload.stacked else _firsts(workload, masters))]
            dtypes = list(dict.fromkeys(c.dtype for c in candidates if cases.applies(c, workload)))
            rates = {d: self.matmul_rate(workload, d) for d in dtypes}
            for dtype in dtypes:
                inputs = [x.to(dtype) for x in masters]
                for cand in (c for c in candidates if c.dtype == dtype and cases.applies(c, workload)):
                    bar.set_postfix_str(f"{workload.name} {cand.key}"[:60])
                    self.run_case(cand, workload, inputs, refs, rates[dtype])
                    bar.update()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        bar.close()
        _speedups(self.rows)


def _firsts(workload: cases.Workload, items: list) -> list:
    """The first matrix of each group of an unstacked (model) workload."""
    out, i = [], 0
    for count, _, _ in workload.groups:
        out.append(items[i])
        i += count
    return out


def _accuracy(outputs: list[Tensor], refs: list[Tensor]) -> tuple[float, float]:
    """max over matrices of ‖UᵀU − I‖_F/√k (the k×k Gram) and ‖U − U_ref‖_F/√k, in float64."""
    orth = dist = 0.0
    for u, ref in zip(outputs, refs):
        u = u.double()
        k = min(u.shape[-2:])
        g = u.mT @ u if u.shape[-2] >= u.shape[-1] else u @ u.mT
        eye = torch.eye(k, dtype=torch.float64, device=u.device)
        orth = max(orth, float(torch.linalg.matrix_norm(g - eye).max()) / math.sqrt(k))
        dist = max(dist, float(torch.linalg.matrix_norm(u - ref.to(u.device)).max()) / math.sqrt(k))
    return orth, dist


def _speedups(rows: list[dict[str, Any]]) -> None:
    """×svd and ×muon: baseline time on the same workload (and dtype; SVD in float32 for bf16)."""
    def find(workload: str, role: str, dtype: str) -> float | None:
        hits = [r["median_s"] for r in rows if r["workload"] == workload and r["role"] == role and r["dtype"] == dtype]
        return hits[0] if hits else None

    for r in rows:
        svd_dtype = "float32" if r["dtype"] == "bfloat16" else r["dtype"]
        t_svd, t_muon = find(r["workload"], "svd", svd_dtype), find(r["workload"], "muon", r["dtype"])
        r["speedup_vs_svd"] = None if t_svd is None else t_svd / r["median_s"]
        r["speedup_vs_muon"] = None if t_muon is None else t_muon / r["median_s"]


def _run_jax_peer(runner: Runner, device: torch.device, workloads: list[cases.Workload],
                  dtypes: list[torch.dtype], budget: Budget, args: argparse.Namespace) -> None:
    """JAX's polar on the polar() workloads, timed in its own process (:mod:`bench.jax_peer`)."""
    if device.type != "cpu":
        runner.skipped.append("peer jax.scipy.linalg.polar: timed on CPU only (its GPU build is another install)")
        return
    ok, note = jax_peer.available()
    if not ok:
        runner.skipped.append(f"peer jax.scipy.linalg.polar: {note}")
        return
    specs = [{"name": w.name, "kind": w.kind, "groups": [list(g) for g in w.groups], "stacked": w.stacked}
             for w in workloads if w.kind != "model"]
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        rows = jax_peer.run_peer(specs, [cases.dtype_name(d) for d in dtypes],
                                 {**vars(budget), "cooldown_s": 0.2}, args.seed, args.out / "jax_rows.json",
                                 threads=args.threads)
    except RuntimeError as exc:
        runner.skipped.append(f"peer jax.scipy.linalg.polar: {exc}")
        return
    runner.rows += rows
    _speedups(runner.rows)


def _limit_threads(n: int) -> None:
    """torch's intra-op threads and every BLAS library's (scipy's OpenBLAS too), where readable."""
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("note: threadpoolctl is not installed; scipy's BLAS keeps its own thread count "
              "(pip install threadpoolctl, or set OPENBLAS_NUM_THREADS)", file=sys.stderr)
        return
    threadpool_limits(n)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        _limit_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    cfg = CONFIGS[(device.type, "quick" if args.quick else "full")]
    budget = Budget(cfg.budget.warmup, args.min_runs or cfg.budget.min_runs, cfg.budget.max_runs,
                    cfg.budget.budget_s if args.budget_s is None else args.budget_s)
    compile_ = cfg.compile_ if args.compile_ is None else args.compile_
    wanted = set(_names(args.dtypes)) if args.dtypes else None
    for name in wanted or ():
        if name not in cases.DTYPES:
            raise SystemExit(f"unknown dtype {name!r}; expected some of {', '.join(cases.DTYPES)}")
    polar_dtypes = [cases.DTYPES[d] for d in ("float64", "float32") if d in (wanted or cfg.polar_dtypes)]
    ortho_dtypes = [cases.DTYPES[d] for d in ("float32", "bfloat16") if d in (wanted or cfg.orthogonalize_dtypes)]

    candidates, skipped = cases.build_candidates(
        device, polar_dtypes=polar_dtypes, orthogonalize_dtypes=ortho_dtypes, methods=_names(args.methods),
        backend_names=_names(args.backends), baseline_names=_names(args.baselines), steps=args.steps,
        compile_=compile_)
    if not compile_:
        skipped.append("torch.compile variants: off (--quick on CPU: compiling costs 10-30 s per shape here; "
                       "pass --compile to time them)" if args.quick else "torch.compile variants: off (--no-compile)")
    workloads = build_workloads(args, cfg)
    skipped += _model_note(args, cfg)
    for line in skipped:
        print(f"skip: {line}", file=sys.stderr)

    runner = Runner(device, budget, cfg.max_call_s if args.max_call_s is None else args.max_call_s, args.seed)
    runner.skipped += skipped
    t0 = time.perf_counter()
    env = report.environment(device)
    load = env["load_average_1_5_15min"]
    if device.type == "cpu" and load and load[0] > (os.cpu_count() or 1) and args.threads != 1:
        print(f"note: load average {load[0]:.1f} > {os.cpu_count()} cores: other processes share the CPU and "
              "multi-threaded BLAS stalls on them (10-100x slower small products); --threads 1 gives "
              "steadier figures", file=sys.stderr)
    runner.run(workloads, candidates)
    if "jax_polar" in _names(args.baselines):
        _run_jax_peer(runner, device, workloads, polar_dtypes, budget, args)
    elapsed = time.perf_counter() - t0
    env["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"command": "python -m bench.polar " + " ".join(sys.argv[1:] if argv is None else argv),
               "environment": env, "elapsed_s": elapsed,
               "config": {"budget": vars(budget), "max_call_s": runner.max_call_s, "compile": compile_,
                          "steps": args.steps, "seed": args.seed, "workloads": [w.name for w in workloads]},
               "flop_counts": flops.__doc__, "skipped": runner.skipped, "matmul": runner.matmul,
               "rows": runner.rows}
    json_path = args.out / "results.json"
    report.write_json(json_path, payload)
    pngs = [] if args.no_plots else report.plots(runner.rows, args.out)

    print(f"# polarkernels benchmark: {env.get('gpu') or env['cpu']}, torch {env['torch']}, "
          f"commit {str(env['git_commit'])[:10]}{' (dirty)' if env['git_dirty'] else ''}, {elapsed:.0f} s")
    print("\nTimes per call (all matrices of the workload). ×svd / ×muon: speedup over torch.linalg.svd U Vh / "
          "the KellerJordan quintic on the same workload and dtype (> 1 is faster). Accuracy vs the float64 "
          "SVD polar factor of the same input.")
    print(report.markdown_table(runner.rows))
    if summary := report.auto_vs_peers(runner.rows):
        print("\npolar() with every default vs its CPU peers (×: peer time / polar time; > 1: polar() faster):")
        print("\n".join(summary))
    if runner.skipped:
        print("\nSkipped:")
        print("\n".join(f"- {s}" for s in runner.skipped))
    print(f"\nJSON: {json_path}")
    for p in pngs:
        print(f"plot: {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
