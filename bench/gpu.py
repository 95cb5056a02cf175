"""The one device check: run this first on any GPU lent (≤ 8 min on an H100/H200).

    python -m bench.gpu                     # on the GPU machine: no network needed
    python -m bench.gpu --dry-run           # on a CPU: the same code paths on tiny sizes (CI runs it)

In order, each part recorded as it finishes (a failure is recorded, never silently skipped):

1. **Correctness** — every backend (torch, triton, cuda through each loader that loads: the
   built extension and CuPy/NVRTC) against plain torch (``torch_ref``) on ragged, batched, tall
   and wide shapes in bf16, fp16 and fp32: ``orthogonalize`` (5 Polar Express steps), the three
   primitives, and ``orthogonalize_many(backend="cuda")`` on a ragged group. Pass: error against
   a float64 run ≤ 2 × the torch loop's own error in the same dtype + one rounding (the bound of
   ``tests/backends/test_cuda.py``). Also: no host synchronisation on ``orthogonalize``
   (``torch.cuda.set_sync_debug_mode("error")``), ``torch.compile(orthogonalize, fullgraph=True)``
   and a CUDA-graph capture of the fixed-step loop, each equal to the eager result.
2. **compute-sanitizer** memcheck, racecheck and synccheck on tiny launches of every csrc/ kernel
   (``python -m bench.cuda_gpu --sanitize``), when the tool is on PATH or in $CUDA_HOME/bin.
3. **Timings** — CUDA events, median of ≥ 5 runs after warm-up, inputs rotated among 4 buffers;
   the bf16 matmul peak (8192³) measured in the same run: 4096² 5-step Polar Express on triton,
   cuda, torch, torch.compile and ``torch.linalg.svd`` polar; 1024²…8192² and 4096×16384 triton
   vs torch; the GPT-2-small parameter set grouped (cuda) vs a per-matrix loop vs batched (bmm
   stacks); QDWH fp32 4096² vs SVD.
4. **Report** — JSON and Markdown under ``bench/results/`` (``gpu_<device>.json|md``), with the
   command, device, versions and commit; the headline ratios printed last.

Thresholds of ``backend="auto"`` (``polarkernels.backends.TRITON_MIN_SIDE``) are then set from
these numbers by whoever runs it. Needs torch ≥ 2.4; Triton and CuPy when present (tested with
torch 2.11, Triton 3.6, CuPy 14 on the GPU machine's software, no network).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import polarkernels
from polarkernels import iterate
from polarkernels.backends import cuda as cuda_backend
from polarkernels.backends import torch_ref
from polarkernels.schedules import fixed_schedule

from .timing import timed_call

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PE5 = fixed_schedule("polar_express", 5)
GPT2_SMALL = ([(768, 768)] * 4 + [(768, 3072), (3072, 768)]) * 12  # q, k, v, o, mlp in/out per block


@dataclass
class Sizes:
    """Problem sizes: the real ones on a GPU, tiny ones for --dry-run (same code paths)."""

    shapes: dict[str, tuple[int, ...]]      # correctness: name → shape
    ragged: list[tuple[int, int]]           # correctness: one ragged group
    peak: int                               # bf16 matmul peak: n³
    headline: int                           # the 4096² case
    squares: list[int]                      # square sweep
    wide: tuple[int, int]                   # the 4096×16384 case
    group: list[tuple[int, int]]            # the GPT-2-small parameter set
    qdwh: int                               # QDWH fp32 n²
    primitives: tuple[int, int, int] = (2, 33, 70)  # correctness of gram/poly/apply alone
    fast_path: tuple[int, int, int] = (2, 96, 160)  # no-sync, torch.compile and CUDA-graph checks
    min_reps: int = 5
    warmup: int = 3
    max_s: float = 2.0                      # time spent per timing (at least min_reps runs)


GPU_SIZES = Sizes(
    shapes={"square-130": (130, 130), "wide-200x600": (200, 600), "tall-600x200": (600, 200),
            "batched-4x96x160": (4, 96, 160), "ragged-odd-1x257": (1, 257), "large-1000x3000": (1000, 3000)},
    ragged=[(1, 1), (1, 7), (9, 1), (16, 16), (33, 65), (64, 576), (576, 64), (128, 129), (200, 300), (300, 200),
            (257, 130), (768, 768), (384, 1536)],
    peak=8192, headline=4096, squares=[1024, 2048, 4096, 8192], wide=(4096, 16384), group=GPT2_SMALL, qdwh=4096)

DRY_SIZES = Sizes(
    shapes={"wide-9x24": (9, 24), "tall-24x9": (24, 9), "batched-2x8x12": (2, 8, 12)},
    ragged=[(1, 5), (7, 3), (9, 20)],
    peak=64, headline=24, squares=[16, 24], wide=(8, 32), group=([(16, 16)] * 2 + [(16, 32), (32, 16)]) * 2,
    qdwh=24, primitives=(2, 9, 20), fast_path=(2, 8, 12), min_reps=2, warmup=1, max_s=0.1)


@dataclass
class Report:
    meta: dict
    checks: list[dict] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)
    sanitizer: list[dict] = field(default_factory=list)
    headlines: list[str] = field(default_factory=list)

    def check(self, name: str, ok: bool | None, detail: str = "") -> None:
        status = "skipped" if ok is None else "pass" if ok else "FAIL"
        self.checks.append(dict(name=name, status=status, detail=detail))
        print(f"[{status:7s}] {name}  {detail}", flush=True)


# ---------------------------------------------------------------- helpers

def rel_err(u: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(u.double() - ref.double()).max()
                 / torch.linalg.matrix_norm(ref.double()).clamp_min(1e-300).max())


def guarded(report: Report, name: str, fn: Callable[[], tuple[bool | None, str]]) -> None:
    """Run one check; an exception is a recorded failure with its last traceback lines."""
    try:
        ok, detail = fn()
    except Exception as exc:  # noqa: BLE001  (every failure is reported, the run goes on)
        ok, detail = False, f"{type(exc).__name__}: {exc} | " + " ".join(traceback.format_exc().splitlines()[-4:-1])
    report.check(name, ok, detail)


def backend_variants(device: str) -> list[tuple[str, str, str | None]]:
    """(label, backend, CUDA loader) for every backend usable here; CUDA once per loader."""
    variants = [("torch", "torch", None)]
    from polarkernels.backends import triton_ops

    ok, why = triton_ops.available()
    if ok and (device == "cuda") == triton_ops.compiles_for_gpu():
        variants.append(("triton", "triton", None))
    for loader in ("ext", "cupy"):
        variants.append((f"cuda[{loader}]", "cuda", loader))
    return variants


def use_loader(loader: str | None) -> tuple[bool, str]:
    """Make POLARKERNELS_CUDA_LOADER=loader current; (available, why not)."""
    if loader is None:
        return True, ""
    os.environ["POLARKERNELS_CUDA_LOADER"] = loader
    cuda_backend._loader_or_reason.cache_clear()
    return cuda_backend.available()


class Timer:
    """Median milliseconds of a call: CUDA events on a GPU, perf_counter on the CPU (dry run)."""

    def __init__(self, device: str, sizes: Sizes, budget_s: float) -> None:
        self.device, self.sizes = device, sizes
        self.deadline = time.time() + budget_s

    def over_budget(self) -> bool:
        return time.time() > self.deadline

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def median_ms(self, fn: Callable, inputs: list[tuple], *, max_s: float | None = None) -> tuple[float, int]:
        max_s = self.sizes.max_s if max_s is None else min(max_s, self.sizes.max_s)
        cycle = itertools.cycle(inputs)
        t0 = time.perf_counter()
        for _ in range(self.sizes.warmup):
            fn(*next(cycle))
            self.sync()
            if time.perf_counter() - t0 > 0.5:  # a slow call (SVD, a compile) is warm after one run
                break
        times: list[float] = []
        while len(times) < self.sizes.min_reps or (sum(times) < max_s * 1e3 and len(times) < 50):
            args = next(cycle)
            times.append(timed_call(lambda: fn(*args), torch.device(self.device))[0] * 1e3)
        return statistics.median(times), len(times)


# ---------------------------------------------------------------- 1. correctness

def check_correctness(report: Report, device: str, sizes: Sizes) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    for label, backend, loader in backend_variants(device):
        ok, why = use_loader(loader)
        if not ok:
            report.check(f"{label}: loads", None, why)
            continue
        for dname, dtype in DTYPES.items():
            for sname, shape in sizes.shapes.items():
                g = torch.randn(shape, device=device, generator=gen)
                guarded(report, f"{label} orthogonalize {sname} {dname}",
                        lambda g=g, dtype=dtype, backend=backend: _check_orthogonalize(g, dtype, backend))
            x = torch.randn(sizes.primitives, device=device, generator=gen) / sizes.primitives[-1] ** 0.5
            guarded(report, f"{label} primitives {'x'.join(map(str, sizes.primitives))} {dname}",
                    lambda x=x, dtype=dtype, backend=backend: _check_primitives(x.to(dtype), backend))
            if backend == "cuda":
                mats = [torch.randn(s, device=device, generator=gen) for s in sizes.ragged]
                guarded(report, f"{label} orthogonalize_many ragged[{len(mats)}] {dname}",
                        lambda mats=mats, dtype=dtype: _check_group(mats, dtype))
    use_loader(None)
    os.environ.pop("POLARKERNELS_CUDA_LOADER", None)
    cuda_backend._loader_or_reason.cache_clear()


def _within(u: torch.Tensor, base: torch.Tensor, ref64: torch.Tensor, dtype: torch.dtype,
            backend: str) -> tuple[bool, str]:
    """The bound of tests/backends/test_cuda.py: error ≤ 2 × torch's own in ``dtype`` + a floor.

    Same loop, same rounding points, only the summation order differs: 2×. Triton's CPU
    interpreter (the dry run) truncates fp32 → bf16 instead of rounding, doubling each rounding
    error: 4× there.
    """
    from polarkernels.backends import triton_ops

    finite = bool(torch.isfinite(u).all())
    err, base_err = rel_err(u, ref64), rel_err(base, ref64)
    floor = 5e-5 if dtype == torch.float32 else torch.finfo(dtype).eps
    truncating = backend == "triton" and triton_ops.INTERPRETED and dtype == torch.bfloat16
    factor = 4.0 if truncating else 2.0
    return finite and err <= factor * base_err + floor, f"err {err:.2e} vs torch {base_err:.2e} (bound {factor:g}x)"


def _check_orthogonalize(g: torch.Tensor, dtype: torch.dtype, backend: str) -> tuple[bool, str]:
    u = polarkernels.orthogonalize(g, dtype=dtype, backend=backend)
    base = polarkernels.orthogonalize(g, dtype=dtype, backend="torch")
    ref64 = polarkernels.orthogonalize(g.double(), dtype=torch.float64, backend="torch")
    return _within(u, base, ref64, dtype, backend)


def _check_primitives(x: torch.Tensor, backend: str) -> tuple[bool, str]:
    ops = polarkernels.backends.get_ops(backend)
    a, b, c = PE5.coeffs[0]
    s = ops.gram(x)
    p = ops.poly(s, b, c)
    y = ops.apply(p, x, a)
    results = []
    for what, got, base, ref in (("gram", s, torch_ref.gram(x), torch_ref.gram(x.double())),
                                 ("poly", p, torch_ref.poly(s, b, c), torch_ref.poly(s.double(), b, c)),
                                 ("apply", y, torch_ref.apply(p, x, a), torch_ref.apply(p.double(), x.double(), a))):
        ok, detail = _within(got, base, ref, x.dtype, backend)
        results.append((ok, f"{what} {detail}"))
    return all(ok for ok, _ in results), "; ".join(d for _, d in results)


def _check_group(mats: list[torch.Tensor], dtype: torch.dtype) -> tuple[bool, str]:
    us = polarkernels.orthogonalize_many(mats, dtype=dtype, backend="cuda")
    worst = []
    for a, u in zip(mats, us):
        base = polarkernels.orthogonalize(a, dtype=dtype, backend="torch")
        ref64 = polarkernels.orthogonalize(a.double(), dtype=torch.float64, backend="torch")
        worst.append(_within(u, base, ref64, dtype, "cuda") + (tuple(a.shape),))
    bad = [f"{shape}: {d}" for ok, d, shape in worst if not ok]
    return not bad, "; ".join(bad) or f"{len(mats)} matrices within bound"


def check_fast_path(report: Report, device: str, sizes: Sizes) -> None:
    """No host sync, torch.compile(fullgraph=True) and a CUDA-graph capture, per backend."""
    gen = torch.Generator(device=device).manual_seed(1)
    g = torch.randn(sizes.fast_path, device=device, generator=gen)
    for label, backend, loader in backend_variants(device):
        if not use_loader(loader)[0]:
            continue
        eager = polarkernels.orthogonalize(g, backend=backend)  # warm-up: autotuning, module loads

        def no_sync(backend=backend):
            if device != "cuda":
                return None, "needs CUDA"
            torch.cuda.set_sync_debug_mode("error")
            try:
                polarkernels.orthogonalize(g, backend=backend)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            return True, "set_sync_debug_mode('error') raised nothing"
        guarded(report, f"{label} orthogonalize: no host sync", no_sync)

        def compiled(backend=backend, eager=eager):
            if backend == "cuda":
                return None, "the cuda backend is eager only (ctypes/CuPy launches)"
            torch._dynamo.reset()
            fn = torch.compile(polarkernels.orthogonalize, fullgraph=True,
                               backend="inductor" if device == "cuda" else "eager")
            out = fn(g, backend=backend)
            return rel_err(out, eager) < 1e-2, f"rel diff to eager {rel_err(out, eager):.1e}"
        guarded(report, f"{label} torch.compile(orthogonalize, fullgraph=True)", compiled)

        def graph(backend=backend, eager=eager):
            if device != "cuda":
                return None, "needs CUDA"
            static = g.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # the documented recipe: warm up on a side stream
                for _ in range(2):
                    polarkernels.orthogonalize(static, backend=backend)
            torch.cuda.current_stream().wait_stream(side)
            cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(cuda_graph):
                out = polarkernels.orthogonalize(static, backend=backend)
            static.copy_(g * 2)  # new input in place; U(2G) = U(G)
            cuda_graph.replay()
            torch.cuda.synchronize()
            return rel_err(out, eager) < 1e-2, f"replay vs eager rel diff {rel_err(out, eager):.1e}"
        guarded(report, f"{label} CUDA graph capture + replay", graph)
    os.environ.pop("POLARKERNELS_CUDA_LOADER", None)
    cuda_backend._loader_or_reason.cache_clear()


# ---------------------------------------------------------------- 2. compute-sanitizer

def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    for home in filter(None, (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda")):
        candidate = Path(home) / "bin" / "compute-sanitizer"
        found = found or (str(candidate) if candidate.is_file() else None)
    return found


def run_sanitizer(report: Report, device: str, timeout_s: float) -> None:
    tool = find_sanitizer()
    if tool is None or device != "cuda":
        for name in ("memcheck", "racecheck", "synccheck"):
            report.sanitizer.append(dict(tool=name, status="skipped",
                                         detail="needs CUDA" if device != "cuda" else "compute-sanitizer not found"))
            report.check(f"compute-sanitizer {name}", None, report.sanitizer[-1]["detail"])
        return
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = {}
    for name in ("memcheck", "racecheck", "synccheck"):  # in parallel: each is mostly start-up and compile
        cmd = [tool, "--tool", name, "--error-exitcode", "1", sys.executable, "-m", "bench.cuda_gpu", "--sanitize"]
        started[name] = (cmd, time.time(), subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                            stderr=subprocess.STDOUT, text=True))
    for name, (cmd, t0, proc) in started.items():
        try:
            output, _ = proc.communicate(timeout=max(1.0, timeout_s - (time.time() - t0)))
            ok, tail = proc.returncode == 0, output[-1500:]
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            ok, tail = None, f"timed out after {timeout_s:.0f} s"
        report.sanitizer.append(dict(tool=name, status="pass" if ok else "skipped" if ok is None else "FAIL",
                                     seconds=round(time.time() - t0, 1), command=" ".join(cmd), output_tail=tail))
        report.check(f"compute-sanitizer {name}", ok, tail.strip().splitlines()[-1] if tail.strip() else "")


# ---------------------------------------------------------------- 3. timings

def polar_express5(g: torch.Tensor, ops) -> torch.Tensor:
    """5 Polar Express steps with backend ops, normalisation included (what orthogonalize runs)."""
    x = iterate.normalize(g.mT if g.shape[-2] > g.shape[-1] else g, PE5)
    for a, b, c in PE5.coeffs:
        x = ops.apply(ops.poly(ops.gram(x), b, c), x, a)
    return x


def svd_polar(g: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    return u @ vh


def time_all(report: Report, device: str, sizes: Sizes, budget_s: float) -> None:
    timer = Timer(device, sizes, budget_s)
    gen = torch.Generator(device=device).manual_seed(2)

    def randn(*shape, dtype=torch.bfloat16):
        return torch.randn(shape, device=device, generator=gen).to(dtype)

    def inputs(*shape, dtype=torch.bfloat16):
        return [(randn(*shape, dtype=dtype),) for _ in range(4)]

    def record(case: str, variant: str, fn: Callable, args: list[tuple], flops: float | None = None,
               optional: bool = False, max_s: float | None = None) -> float | None:
        if optional and timer.over_budget():
            report.timings.append(dict(case=case, variant=variant, skipped="time budget spent"))
            print(f"  {case:28s} {variant:22s} skipped (time budget)", flush=True)
            return None
        try:
            ms, reps = timer.median_ms(fn, args, max_s=max_s)
        except Exception as exc:  # noqa: BLE001
            report.timings.append(dict(case=case, variant=variant, error=f"{type(exc).__name__}: {exc}"))
            print(f"  {case:28s} {variant:22s} ERROR {type(exc).__name__}: {exc}", flush=True)
            return None
        row = dict(case=case, variant=variant, ms=ms, reps=reps)
        if flops:
            row["tflops"] = flops / (ms * 1e-3) / 1e12
        report.timings.append(row)
        print(f"  {case:28s} {variant:22s} {ms:10.3f} ms" + (f"  {row['tflops']:7.1f} TFLOP/s" if flops else ""),
              flush=True)
        return ms

    from polarkernels.backends import triton_ops

    # under the dry run's interpreter a Triton timing says nothing and costs seconds per call
    have_triton = triton_ops.compiles_for_gpu()
    have_cuda = cuda_backend.available()[0]

    n = sizes.peak
    peak_ms = record("bf16 matmul peak", f"{n}^3", torch.matmul, [(randn(n, n), randn(n, n)) for _ in range(4)],
                     2.0 * n**3)
    peak = 2.0 * n**3 / (peak_ms * 1e-3) / 1e12 if peak_ms else None
    report.meta["bf16_matmul_peak_tflops"] = peak

    def step_flops(m: int, k: int) -> float:
        m, k = min(m, k), max(m, k)
        return 5 * (3.0 * m * m * k + float(m) ** 3)  # what the symmetric kernels need (5 steps)

    # 4096² headline: every implementation
    n = sizes.headline
    case = f"orth5 {n}x{n} bf16"
    args = inputs(n, n)
    ms = {"torch": record(case, "torch", lambda g: polarkernels.orthogonalize(g, backend="torch"), args,
                          step_flops(n, n))}
    if have_triton:
        ms["triton"] = record(case, "triton", lambda g: polarkernels.orthogonalize(g, backend="triton"), args,
                              step_flops(n, n))
    if have_cuda:
        ms["cuda"] = record(case, "cuda", lambda g: polarkernels.orthogonalize(g, backend="cuda"), args,
                            step_flops(n, n))
    torch._dynamo.reset()
    compiled = torch.compile(lambda g: polar_express5(g, torch_ref), fullgraph=True,
                             backend="inductor" if device == "cuda" else "eager")
    ms["torch.compile"] = record(case, "torch.compile(torch loop)", compiled, args, step_flops(n, n), optional=True)
    ms["svd"] = record(case, "torch.linalg.svd fp32", svd_polar, inputs(n, n, dtype=torch.float32), optional=True,
                       max_s=1.0)
    best = "triton" if ms.get("triton") else "cuda" if ms.get("cuda") else "torch"
    report.headlines.append(f"{case}: {best} " + ", ".join(
        f"{ms[k] / ms[best]:.2f}x vs {k}" for k in ms if k != best and ms.get(k) and ms.get(best))
        + (f"; {best} at {100 * step_flops(n, n) / (ms[best] * 1e-3) / 1e12 / peak:.0f}% of bf16 matmul peak"
           if peak and ms.get(best) else ""))

    # size sweep: triton vs torch
    for m, k in [(s, s) for s in sizes.squares if s != sizes.headline] + [sizes.wide]:
        case = f"orth5 {m}x{k} bf16"
        args = inputs(m, k)
        t = record(case, "torch", lambda g: polarkernels.orthogonalize(g, backend="torch"), args, step_flops(m, k),
                   optional=True)
        if have_triton:
            tr = record(case, "triton", lambda g: polarkernels.orthogonalize(g, backend="triton"), args,
                        step_flops(m, k), optional=True)
            if t and tr:
                report.headlines.append(f"{case}: triton {t / tr:.2f}x vs torch")

    # GPT-2-small parameter set: grouped vs per-matrix loop vs batched stacks
    case = f"gpt2-small set ({len(sizes.group)} matrices) bf16"
    group_args = [([randn(*s) for s in sizes.group],) for _ in range(2)]
    flops = sum(step_flops(*s) for s in sizes.group)
    loop = record(case, "per-matrix loop (torch)",
                  lambda mats: [polarkernels.orthogonalize(a, backend="torch") for a in mats], group_args, flops)
    batched = record(case, "batched bmm (torch)",
                     lambda mats: polarkernels.orthogonalize_many(mats, backend="torch"), group_args, flops)
    if have_cuda:
        grouped = record(case, "grouped (cuda)", lambda mats: polarkernels.orthogonalize_many(mats, backend="cuda"),
                         group_args, flops)
        if grouped and loop and batched:
            report.headlines.append(f"{case}: grouped cuda {loop / grouped:.2f}x vs per-matrix loop, "
                                    f"{batched / grouped:.2f}x vs batched")
    elif loop and batched:
        report.headlines.append(f"{case}: batched {loop / batched:.2f}x vs per-matrix loop (cuda backend not loaded)")

    # QDWH fp32 vs SVD
    n = sizes.qdwh
    case = f"polar fp32 {n}x{n}"
    args = inputs(n, n, dtype=torch.float32)
    q = record(case, "qdwh", lambda a: polarkernels.polar(a, method="qdwh"), args, optional=True, max_s=1.0)
    s = record(case, "svd", lambda a: polarkernels.polar(a, method="svd"), args, optional=True, max_s=1.0)
    if q and s:
        report.headlines.append(f"{case}: qdwh {s / q:.2f}x vs svd")


# ---------------------------------------------------------------- 4. report

def versions() -> dict:
    out = dict(torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
               numpy=__import__("numpy").__version__)
    for name in ("triton", "cupy"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001  (absent, or present without a usable CUDA)
            out[name] = None
    return out


def write(report: Report, out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(dict(meta=report.meta, checks=report.checks, sanitizer=report.sanitizer,
                                         timings=report.timings, headlines=report.headlines), indent=1))
    m = report.meta
    lines = [f"# Device check: {m['device']}", "",
             f"`{m['command']}` at commit {m['commit']}, {m['date']}; torch {m['versions']['torch']}, "
             f"Triton {m['versions']['triton']}, CuPy {m['versions']['cupy']}, CUDA {m['versions']['cuda']}; "
             f"{m['wall_s']:.0f} s.", "", "## Headlines", ""]
    lines += [f"- {h}" for h in report.headlines] or ["- (none)"]
    counts = {s: sum(c["status"] == s for c in report.checks) for s in ("pass", "FAIL", "skipped")}
    lines += ["", f"## Checks: {counts['pass']} pass, {counts['FAIL']} fail, {counts['skipped']} skipped", "",
              "| check | status | detail |", "|---|---|---|"]
    lines += [f"| {c['name']} | {c['status']} | {c['detail'].replace('|', '/')[:160]} |" for c in report.checks]
    lines += ["", "## Timings (CUDA events, median after warm-up, 4 rotating inputs)", "",
              f"bf16 matmul peak in this run: {m.get('bf16_matmul_peak_tflops') or float('nan'):.0f} TFLOP/s.", "",
              "| case | variant | median ms | runs | TFLOP/s |", "|---|---|---|---|---|"]
    for t in report.timings:
        ms = f"{t['ms']:.3f}" if "ms" in t else t.get("skipped") or t.get("error", "")
        lines.append(f"| {t['case']} | {t['variant']} | {ms} | {t.get('reps', '')} | "
                     f"{t['tflops']:.1f} |" if "tflops" in t else f"| {t['case']} | {t['variant']} | {ms} | "
                     f"{t.get('reps', '')} | |")
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: the same code paths (for CI)")
    parser.add_argument("--out", type=Path, help="output folder (default bench/results/, bench/out/ for --dry-run)")
    parser.add_argument("--budget-s", type=float, default=200.0,
                        help="timing budget: optional cases are skipped (and recorded as such) past it")
    parser.add_argument("--sanitizer-timeout-s", type=float, default=100.0)
    args = parser.parse_args(argv)
    t0 = time.time()
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device is visible; use --dry-run on a CPU")
    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU dry run ({platform.processor() or 'cpu'})"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    report = Report(meta=dict(device=name, command="python -m bench.gpu" + (" --dry-run" if args.dry_run else ""),
                              commit=commit.strip() or "unknown", date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              versions=versions()))
    print(f"== {name}: {report.meta['versions']}", flush=True)
    print("== 1. correctness against torch_ref", flush=True)
    # one Triton config per kernel variant here (no autotuning: dozens of small shapes and three
    # dtypes would spend minutes compiling configs); the timings below autotune as users do
    os.environ["POLARKERNELS_TRITON_AUTOTUNE"] = "0"
    check_correctness(report, device, sizes)
    check_fast_path(report, device, sizes)
    del os.environ["POLARKERNELS_TRITON_AUTOTUNE"]
    print("== 2. compute-sanitizer", flush=True)
    run_sanitizer(report, device, args.sanitizer_timeout_s)
    print("== 3. timings", flush=True)
    time_all(report, device, sizes, args.budget_s)
    report.meta["wall_s"] = time.time() - t0
    slug = "cpu_dry_run" if args.dry_run else "gpu_" + "".join(c if c.isalnum() else "_" for c in name.lower())
    out_dir = args.out or ROOT / "bench" / ("out" if args.dry_run else "results")
    json_path, md_path = write(report, out_dir, slug)
    failed = [c["name"] for c in report.checks if c["status"] == "FAIL"]
    print(f"== wrote {json_path} and {md_path} ({report.meta['wall_s']:.0f} s); "
          f"{len(failed)} failed check(s){': ' + ', '.join(failed) if failed else ''}")
    print("== headlines")
    for line in report.headlines:
        print("  " + line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
