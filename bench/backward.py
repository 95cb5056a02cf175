"""Backward benchmark: forward + backward of the polar decomposition on CPU, three ways.

    python -m bench.backward                      # the default run (~5 minutes on 2 cores)
    python -m bench.backward --shapes 256x256 --dtypes float64 --out bench/out

For a loss L = ⟨G_U, U⟩ + ⟨G_H, H⟩ with fixed random G_U, G_H, times and measures the memory of
computing L and ∂L/∂A:

- ``analytic``: ``polarkernels.polar(a, method=...)``: the forward without autograd, then the
  analytic rule of :mod:`polarkernels.polar_backward` (one k×k ``eigh`` and a few products);
- ``iterations``: autograd through the iterations, the way ``polar()`` was differentiated before
  (``polarkernels.qdwh.qdwh`` or ``polarkernels.iterate.run`` with grad on, H = herm(UᴴA));
- ``torch svd``: autograd through ``torch.linalg.svd`` (U = P Qᴴ, H = Q Σ Qᴴ).

Every case runs in its own process: one warm-up call, the timed calls (:func:`bench.timing.measure`:
median and IQR), then one call whose memory is measured. Memory, two figures:
``saved MiB``, the bytes autograd holds between forward and backward (distinct tensors seen by
``torch.autograd.graph.saved_tensors_hooks``: exact, and what grows with the step count), and
``peak MiB``, the process's peak resident set during the call above its resident set just before
(Linux ``VmHWM`` after resetting it through ``/proc/self/clear_refs``, with glibc's
``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors leave the resident set; counts
temporaries too, rounded to pages). ``rel err``: ‖∂L/∂A − reference‖_F / ‖reference‖_F, the
reference being the analytic rule on float64 factors of the float64 SVD.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

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


def _worker(case: dict[str, Any], budget_s: float) -> dict[str, Any]:
    from bench.timing import Budget, measure

    dtype = getattr(torch, case["dtype"])
    a0, gu, gh = _inputs(tuple(case["shape"]), dtype)

    def step() -> Tensor:
        a = a0.clone().requires_grad_()
        u, h = _factors(case["route"], case["method"], a)
        (g,) = torch.autograd.grad((u * gu).sum() + (h * gh).sum(), a)
        return g

    sizes: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        sizes[t.data_ptr()] = t.numel() * t.element_size()
        return t

    timing, _, first_s = measure(step, torch.device("cpu"), Budget(warmup=1, min_runs=3, max_runs=30,
                                                                   budget_s=budget_s))
    before = _peak_rss_reset()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        g = step()
    peak = _status_bytes("VmHWM") - before
    ref = _reference_gradient(a0, gu, gh)
    rel = float(torch.linalg.vector_norm(g.double() - ref) / torch.linalg.vector_norm(ref))
    return {**case, "median_s": timing.median, "q25_s": timing.q25, "q75_s": timing.q75, "best_s": timing.best,
            "runs": timing.runs, "first_s": first_s, "saved_bytes": sum(sizes.values()),
            "saved_tensors": len(sizes), "peak_rss_bytes": peak, "rel_err": rel,
            "finite": bool(torch.isfinite(g).all())}


def _run_case(case: dict[str, Any], budget_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.backward", "--worker", json.dumps(case), "--budget", str(budget_s)]
    # every allocation ≥ 64 KiB gets its own mapping, returned on free, so the resident set
    # follows the live tensors (glibc's default raises this threshold as memory is freed and then
    # keeps freed blocks resident, hiding later peaks)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        return {**case, "error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
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
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timed calls per case")
    parser.add_argument("--out", type=Path, default=Path("bench/out"),
                        help="folder for backward_cpu_results.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker), args.budget)))
        return

    from bench.report import environment

    rows = []
    for shape in args.shapes.split(","):
        for dtype in args.dtypes.split(","):
            for route, method in ROUTES:
                case = {"shape": list(_shape(shape)), "dtype": dtype, "route": route, "method": method}
                rows.append(_run_case(case, args.budget))
                print(_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(_table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "backward_cpu_results.json"
    payload = {"command": "python -m bench.backward " + " ".join(argv if argv is not None else sys.argv[1:]),
               "environment": environment(torch.device("cpu")), "torch_threads": torch.get_num_threads(),
               "rows": rows}
    path.write_text(json.dumps(payload, indent=1))
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
