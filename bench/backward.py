"""Backward benchmark: forward + backward of the polar decomposition on CPU, three ways.

    python -m bench.backward                      # the default run
    python -m bench.backward --shapes 256x256 --dtypes float64 --threads 1 --out bench/out

For a loss L = ⟨G_U, U⟩ + ⟨G_H, H⟩ with fixed random G_U, G_H, times and measures the memory of
computing L and ∂L/∂A:

- ``analytic``: ``polarkernels.polar(a, method=...)``: the forward without autograd, then the
  analytic rule of :mod:`polarkernels.polar_backward` (one k×k ``eigh`` and a few products);
- ``iterations``: autograd through the iterations, the way ``polar()`` was differentiated before
  (``polarkernels.qdwh.qdwh`` or ``polarkernels.iterate.run`` with grad on, H = herm(UᴴA));
- ``torch svd``: autograd through ``torch.linalg.svd`` (U = P Qᴴ, H = Q Σ Qᴴ).

Each input (shape, dtype) runs in its own process: one warm-up call per route, one call per
route whose memory is measured, then timed calls in round robin (every route once per round,
0.2 s of sleep before each call as in :mod:`bench.timing`), so that the load of other processes
falls on every route alike; median, IQR and best of the rounds. Memory, two figures:

- ``saved MiB``: the bytes autograd holds between forward and backward (the distinct tensors
  seen by ``torch.autograd.graph.saved_tensors_hooks``, the loss's G_U and G_H included): exact,
  and what grows with the step count;
- ``peak MiB``: the process's peak resident set during the call above its resident set just
  before (Linux ``VmHWM`` after resetting it through ``/proc/self/clear_refs``, with glibc's
  ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors leave the resident set): temporaries
  included, exact to the kernel's RSS counters (~0.25 MiB).

``rel err``: ‖∂L/∂A − reference‖_F / ‖reference‖_F, the reference being the analytic rule on the
float64 SVD's factors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.timing import CPU_COOLDOWN_S, Timing

ROUTES = (("analytic", "svd"), ("analytic", "qdwh"), ("analytic", "polar_express"),
          ("analytic", "newton_schulz"), ("iterations", "qdwh"), ("iterations", "polar_express"),
          ("iterations", "newton_schulz"), ("torch svd", "svd"))
DEFAULT_SHAPES = ("256x256", "512x512", "1024x256", "32x64x64")
DEFAULT_DTYPES = ("float64", "float32")


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split("x"))


def _inputs(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(shape, generator=gen, dtype=torch.float64)
    n = shape[-1]
    gu = torch.randn(shape, generator=gen, dtype=torch.float64)
    gh = torch.randn((*shape[:-2], n, n), generator=gen, dtype=torch.float64)
    return a.to(dtype), gu.to(dtype), gh.to(dtype)


def _herm(x: Tensor) -> Tensor:
    return (x + x.mH) / 2


def _through_iterations(a: Tensor, method: str) -> tuple[Tensor, Tensor]:
    """(U, H) with autograd recording every iteration (polar()'s derivative before the rule)."""
    from polarkernels import backends, iterate, schedules
    from polarkernels.qdwh import qdwh

    if method == "qdwh":
        u = qdwh(a).u
    else:
        schedule = schedules.convergent_schedule(method)
        ops = backends.get_ops("torch")
        wide = a.mH if a.shape[-2] > a.shape[-1] else a
        u = iterate.run(iterate.normalize(wide, schedule), schedule, ops).u
        u = u.mH if a.shape[-2] > a.shape[-1] else u
    return u, _herm(u.mH @ a)


def _through_svd(a: Tensor) -> tuple[Tensor, Tensor]:
    p, s, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh, _herm((qh.mH * s[..., None, :].to(a.dtype)) @ qh)


def _factors(route: str, method: str, a: Tensor) -> tuple[Tensor, Tensor]:
    import polarkernels as pk

    if route == "analytic":
        return pk.polar(a, method=method)
    if route == "iterations":
        return _through_iterations(a, method)
    return _through_svd(a)


def _reference_gradient(a: Tensor, gu: Tensor, gh: Tensor) -> Tensor:
    """The analytic rule on the float64 SVD's factors."""
    from polarkernels.polar_backward import attach

    a64 = a.double().requires_grad_()
    with torch.no_grad():
        u, h = _through_svd(a64)
    u, h = attach(a64, u, h)
    (g,) = torch.autograd.grad(((u * gu.double()).sum() + (h * gh.double()).sum()), a64)
    return g


def _peak_rss_reset() -> int:
    """Reset the peak resident set (VmHWM) to the current one; return the current RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _step(route: str, method: str, a0: Tensor, gu: Tensor, gh: Tensor) -> Tensor:
    """One forward + backward: ∂L/∂A for L = ⟨G_U, U⟩ + ⟨G_H, H⟩."""
    a = a0.clone().requires_grad_()
    u, h = _factors(route, method, a)
    (g,) = torch.autograd.grad((u * gu).sum() + (h * gh).sum(), a)
    return g


def _memory(step) -> tuple[Tensor, int, int, int]:
    """(result, saved tensors, saved bytes, peak RSS increase in bytes) of one call of step()."""
    sizes: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        sizes[t.data_ptr()] = t.numel() * t.element_size()
        return t

    before = _peak_rss_reset()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        g = step()
    # the kernel's RSS counters lag by a few pages per thread: clamp the noise at 0
    return g, len(sizes), sum(sizes.values()), max(_status_bytes("VmHWM") - before, 0)


def _worker(shape: list[int], dtype_name: str, rounds: int, budget_s: float) -> list[dict[str, Any]]:
    """Every route on one input: a warm-up call each, a memory call each, then timed calls in
    round robin (each round calls every route once), so that load from other processes falls on
    all routes alike."""
    a0, gu, gh = _inputs(tuple(shape), getattr(torch, dtype_name))
    steps = [lambda r=r, m=m: _step(r, m, a0, gu, gh) for r, m in ROUTES]
    first = []
    for step in steps:
        t0 = time.perf_counter()
        step()
        first.append(time.perf_counter() - t0)
    memory = [_memory(step) for step in steps]
    samples: list[list[float]] = [[] for _ in steps]
    t_start = time.perf_counter()
    while len(samples[0]) < rounds or (time.perf_counter() - t_start < budget_s and len(samples[0]) < 30):
        for step, times in zip(steps, samples):
            time.sleep(CPU_COOLDOWN_S)
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    ref = _reference_gradient(a0, gu, gh)
    rows = []
    for (route, method), (g, n_saved, saved, peak), times, first_s in zip(ROUTES, memory, samples, first):
        timing = Timing.of(times)
        rel = float(torch.linalg.vector_norm(g.double() - ref) / torch.linalg.vector_norm(ref))
        rows.append({"shape": shape, "dtype": dtype_name, "route": route, "method": method,
                     "median_s": timing.median, "q25_s": timing.q25, "q75_s": timing.q75,
                     "best_s": timing.best, "runs": timing.runs, "first_s": first_s,
                     "saved_tensors": n_saved, "saved_bytes": saved, "peak_rss_bytes": peak,
                     "rel_err": rel, "finite": bool(torch.isfinite(g).all())})
    return rows


def _run_worker(shape: list[int], dtype_name: str, rounds: int, budget_s: float,
                threads: int | None) -> list[dict[str, Any]]:
    job = json.dumps({"shape": shape, "dtype": dtype_name, "rounds": rounds, "budget_s": budget_s})
    cmd = [sys.executable, "-m", "bench.backward", "--worker", job]
    # every allocation ≥ 64 KiB gets its own mapping, returned on free, so the resident set
    # follows the live tensors (glibc's default raises this threshold as memory is freed and then
    # keeps freed blocks resident, hiding later peaks)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    if threads is not None:  # torch (OpenMP, MKL) and SciPy's OpenBLAS alike
        env.update({name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        error = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
        return [{"shape": shape, "dtype": dtype_name, "route": r, "method": m, "error": error} for r, m in ROUTES]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| shape | dtype | route | method | median ms (IQR) | best ms | saved MiB | peak MiB | rel err |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shape = "×".join(map(str, r["shape"]))
        if "error" in r:
            lines.append(f"| {shape} | {r['dtype']} | {r['route']} | {r['method']} | error: {r['error']} | | | | |")
            continue
        lines.append(f"| {shape} | {r['dtype']} | {r['route']} | {r['method']} | "
                     f"{r['median_s'] * 1e3:.3g} ({(r['q75_s'] - r['q25_s']) * 1e3:.2g}) | {r['best_s'] * 1e3:.3g} | "
                     f"{r['saved_bytes'] / 2**20:.3g} | {r['peak_rss_bytes'] / 2**20:.3g} | {r['rel_err']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(DEFAULT_SHAPES),
                        help="comma-separated m×n or batch×m×n, e.g. 512x512,32x64x64")
    parser.add_argument("--dtypes", default=",".join(DEFAULT_DTYPES))
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch, OpenMP and BLAS (default: their own defaults)")
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per route, at least")
    parser.add_argument("--budget", type=float, default=5.0,
                        help="keep timing (≤ 30 rounds) until this many seconds have passed")
    parser.add_argument("--out", type=Path, default=Path("bench/out"),
                        help="folder for backward_cpu_results.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(_worker(job["shape"], job["dtype"], job["rounds"], job["budget_s"])))
        return

    from bench.report import environment

    rows = []
    for shape in args.shapes.split(","):
        for dtype in args.dtypes.split(","):
            new = _run_worker(list(_shape(shape)), dtype, args.rounds, args.budget, args.threads)
            rows += new
            print("\n".join(_table(new).splitlines()[2:]), flush=True)
    print()
    print(_table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "backward_cpu_results.json"
    payload = {"command": "python -m bench.backward " + " ".join(argv if argv is not None else sys.argv[1:]),
               "environment": environment(torch.device("cpu")),
               "threads": args.threads or torch.get_num_threads(), "rows": rows}
    path.write_text(json.dumps(payload, indent=1))
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
