"""GPU timings of the Triton backend against plain torch, torch.compile and cuBLAS peak (bf16).

    PYTHONPATH=. python bench/triton_gpu.py --json bench/results/triton_h100.json

For each shape (m ≤ n, the wide orientation the loop works on) it times, with
``triton.testing.do_bench`` (CUDA events, median after warm-up, L2 flushed before every run,
inputs rotated among several buffers):

- one quintic step and a 5-step Polar Express orthogonalization (normalisation included), with
  the Triton primitives and with torch_ref's, and (on a subset of shapes) torch_ref's loop under
  torch.compile;
- the same 5 steps as Gram Newton–Schulz (restart every 2 steps) on both backends;
- each primitive alone against its torch_ref counterpart (cuBLAS);
- ``torch.linalg.svd`` polar (fp32) on the smaller shapes.

TFLOP/s count the FLOPs the method needs, 3m²n + m³ per step (symmetric products), for every
implementation; "% peak" is against a plain 8192³ bf16 torch matmul timed in the same run.
Needs a CUDA GPU and triton; prints a table and writes all numbers to ``--json``.

Without a GPU, ``--compile-only 80,90`` compiles the bf16 kernels for those compute capabilities
with the block sizes autotuning favours and reports what the code generator made of them (Hopper
wgmma or Ampere mma.sync, pipeline depth, shared memory): a check that the kernels build for real
targets, which the interpreter cannot give (CI runs it under the newest and the oldest supported
Triton: tests/bench/test_triton_gpu.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import subprocess
import time

import torch
import triton
from triton.testing import do_bench

from polarkernels.backends import torch_ref, triton_ops
from polarkernels.gram_newton_schulz import gram_iterate
from polarkernels.schedules import POLAR_EXPRESS_5, POLAR_EXPRESS_5_NORM_SAFETY

DTYPE = torch.bfloat16
#: (batch, m, n)
SHAPES = [((), 256, 256), ((), 512, 512), ((), 1024, 1024), ((), 2048, 2048), ((), 4096, 4096),
          ((), 8192, 8192), ((), 1024, 4096), ((), 4096, 16384), ((16,), 512, 2048)]
COMPILE_SHAPES = {((), 1024, 1024), ((), 4096, 4096), ((), 1024, 4096), ((), 4096, 16384)}
SVD_SHAPES = {((), 1024, 1024), ((), 2048, 2048), ((), 1024, 4096)}
ROTATE = 4  # input buffers cycled through, so no run finds its operands in L2 from the last


def step_flops(m: int, n: int) -> float:
    """FLOPs one quintic step needs on a wide m×n X: 3m²n + m³ (symmetric products)."""
    return 3.0 * m * m * n + float(m) ** 3


def plain_loop(x, coeffs, ops):
    """X ← a X + (b S + c S²) X with S = X Xᵀ, over coeffs."""
    for a, b, c in coeffs:
        x = ops.apply(ops.poly(ops.gram(x), b, c), x, a)
    return x


def orthogonalize5(g, ops):
    """Polar Express, 5 steps: X₀ = G / (1.02 ‖G‖_F) (norm in fp32), then the loop."""
    norm = torch.linalg.matrix_norm(g.float(), keepdim=True)
    x = (g / (POLAR_EXPRESS_5_NORM_SAFETY * norm).to(g.dtype))
    return plain_loop(x, POLAR_EXPRESS_5, ops)


def rotating(make, fn):
    """A zero-argument callable applying ``fn`` to ROTATE input sets in turn."""
    inputs = [make() for _ in range(ROTATE)]
    cycle = itertools.cycle(inputs)
    return lambda: fn(*next(cycle))


def bench_ms(fn) -> float:
    """Median ms of ``fn`` by do_bench, asking for ≥ ~25 runs (40–500 ms of repetitions): do_bench
    flushes L2 before every run, so a fixed long ``rep`` would spend seconds on tiny kernels."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    estimate_ms = (time.perf_counter() - t0) / 3 * 1e3
    rep = min(max(40.0, 25 * estimate_ms), 500.0)
    return float(do_bench(fn, warmup=min(rep / 4, 50.0), rep=rep, return_mode="median"))


def compile_only(arch: int) -> list[dict]:
    """Compile the bf16 kernels for ``sm_<arch>`` (no GPU needed); prints and returns one report
    per kernel (name, mma instruction, pipeline buffers, shared memory in KiB)."""
    import re

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from polarkernels.backends.triton_kernels import apply, gram, poly

    assert not gram.INTERPRETED, "unset TRITON_INTERPRET to compile for a GPU target"
    common = dict(PRECISION="tf32", UPCAST=False)
    cases = [  # kernel, unit-stride args (specialised to 1 at launch), constexprs
        (gram._gram_kernel, ("stride_xk", "stride_sn"), dict(BLOCK=128, BLOCK_K=64, **common)),
        (poly._poly_kernel, ("stride_sn", "stride_on"),
         dict(BLOCK=128, BLOCK_K=64, LINEAR=True, SQUARE=True, **common)),
        (apply._apply_kernel, ("stride_bk", "stride_xn", "stride_on"),
         dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP=8, AXPY=True, **common)),
    ]
    reports = []
    for kernel, unit_strides, constexprs in cases:
        names = kernel.arg_names
        constants = dict(constexprs, **{name: 1 for name in unit_strides})
        signature = {name: "constexpr" if name in constants else "*bf16" if name.startswith("p_")
                     else "fp32" if name in ("a", "b", "c") else "i32" for name in names}
        # sizes and strides divisible by 16, as for the benchmark's shapes
        attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in names
                 if signature[name] in ("i32",) or signature[name].startswith("*")}
        src = ASTSource(kernel, signature, constexprs={(names.index(k),): v for k, v in constants.items()}, attrs=attrs)
        t0 = time.time()
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=8, num_stages=3))
        ptx, ttgir = compiled.asm["ptx"], compiled.asm["ttgir"]
        buffers = sorted({int(d) for d in re.findall(r"memdesc<(\d+)x\d+x\d+x", ttgir)})
        mma = "wgmma" if "wgmma" in ptx else "mma.sync" if "mma.sync" in ptx else "none"
        reports.append(dict(arch=arch, kernel=kernel.__name__, mma=mma, buffers=buffers or [1],
                            shared_kib=compiled.metadata.shared // 1024))
        print(f"sm_{arch} {kernel.__name__:14s} {mma:8s} pipeline buffers {buffers or [1]}  "
              f"shared {compiled.metadata.shared // 1024} KiB  ({time.time() - t0:.1f} s)", flush=True)
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="where to write every measurement")
    parser.add_argument("--compile-only", metavar="ARCHS",
                        help="no GPU: compile for compute capabilities ARCHS (e.g. 80,90) and report")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="skip the optional comparisons (compile, SVD) once this much time is spent")
    args = parser.parse_args()
    if args.compile_only:
        for arch in args.compile_only.split(","):
            compile_only(int(arch))
        return
    if not args.json:
        parser.error("--json is required when timing")
    t_start = time.time()
    assert torch.cuda.is_available() and triton_ops.available()[0], triton_ops.available()
    gen = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape, dtype=DTYPE):
        return torch.randn(shape, device="cuda", dtype=dtype, generator=gen)

    # the bf16 matmul ceiling, same run
    k = 8192
    peak_ms = bench_ms(rotating(lambda: (randn(k, k), randn(k, k)), torch.matmul))
    peak = 2.0 * k**3 / (peak_ms * 1e-3) / 1e12
    print(f"bf16 matmul 8192³: {peak_ms:.3f} ms = {peak:.0f} TFLOP/s", flush=True)

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    result = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "python": platform.python_version(), "commit": commit or "uncommitted working tree",
        "command": "PYTHONPATH=. python bench/triton_gpu.py --json " + args.json, "dtype": "bfloat16",
        "timing": "triton.testing.do_bench median (L2 flushed each run, >= ~25 runs), 4 rotating inputs",
        "flops_per_step": "3 m^2 n + m^3", "matmul_peak": {"shape": [k, k, k], "ms": peak_ms, "tflops": peak},
        "rows": [],
    }

    def record(shape, what, ms, flops=None, **extra):
        row = {"shape": [*shape[0], shape[1], shape[2]], "what": what, "ms": ms, **extra}
        if flops is not None:
            row["tflops"] = flops / (ms * 1e-3) / 1e12
            row["pct_peak"] = 100.0 * row["tflops"] / peak
        result["rows"].append(row)
        line = f"  {what:28s} " + (f"{ms:9.4f} ms" if ms is not None else "")
        if "relerr" in extra:
            line += f"  rel err {extra['relerr']:.2e}"
        if flops is not None:
            line += f"  {row['tflops']:6.1f} TFLOP/s ({row['pct_peak']:.0f}%)"
        print(line, flush=True)
        return ms

    for shape in SHAPES:
        batch, m, n = shape
        nb = math.prod(batch)
        print(f"shape {shape}", flush=True)
        unit = lambda: (randn(*batch, m, n) / (m * n) ** 0.5,)  # noqa: E731  σ = O(1/√m·…): a realistic X
        f1 = nb * step_flops(m, n)
        a, b, c = POLAR_EXPRESS_5[0]
        g = unit()[0]
        ref = orthogonalize5(g.double(), torch_ref)
        for name, ops in (("triton", triton_ops), ("torch", torch_ref)):
            err = (orthogonalize5(g, ops).double() - ref).norm() / ref.norm()
            record(shape, f"orth5_relerr_vs_fp64/{name}", None, relerr=float(err))
        step = {}
        for name, ops in (("triton", triton_ops), ("torch", torch_ref)):
            step[name] = record(shape, f"step/{name}", bench_ms(rotating(
                unit, lambda x, ops=ops: ops.apply(ops.poly(ops.gram(x), b, c), x, a))), f1)
        orth = {}
        for name, ops in (("triton", triton_ops), ("torch", torch_ref)):
            orth[name] = record(shape, f"orth5/{name}", bench_ms(rotating(
                unit, lambda g, ops=ops: orthogonalize5(g, ops))), 5 * f1)
        if shape in COMPILE_SHAPES and time.time() - t_start < args.budget_s:
            torch._dynamo.reset()
            compiled = torch.compile(lambda g: orthogonalize5(g, torch_ref), fullgraph=True)
            t0 = time.time()
            compiled(unit()[0])
            torch.cuda.synchronize()
            orth["compiled"] = record(shape, "orth5/torch.compile", bench_ms(rotating(unit, compiled)), 5 * f1,
                                      compile_s=time.time() - t0)
        for name, ops in (("triton", triton_ops), ("torch", torch_ref)):
            record(shape, f"gram_ns5_r2/{name}", bench_ms(rotating(
                unit, lambda x, ops=ops: gram_iterate(x, POLAR_EXPRESS_5, ops, restart_every=2))), 5 * f1)
        # the primitives alone, against cuBLAS through torch_ref
        s_in = lambda: (torch_ref.gram(unit()[0]),)  # noqa: E731
        for name, ops in (("triton", triton_ops), ("torch", torch_ref)):
            record(shape, f"gram/{name}", bench_ms(rotating(unit, ops.gram)), nb * m * m * n)
            record(shape, f"poly/{name}", bench_ms(rotating(s_in, lambda s, ops=ops: ops.poly(s, b, c))),
                   nb * float(m) ** 3)
            record(shape, f"apply/{name}", bench_ms(rotating(
                lambda: (s_in()[0], unit()[0]), lambda p, x, ops=ops: ops.apply(p, x, a))), nb * 2.0 * m * m * n)
        if shape in SVD_SHAPES and time.time() - t_start < args.budget_s:
            def svd_polar(g):
                u, _, vh = torch.linalg.svd(g, full_matrices=False)
                return u @ vh
            orth["svd"] = record(shape, "svd_polar/fp32", bench_ms(rotating(
                lambda: (randn(*batch, m, n, dtype=torch.float32),), svd_polar)))
        print(f"  => step: triton {step['torch'] / step['triton']:.2f}x torch;  orth5: triton "
              + ", ".join(f"{orth[k] / orth['triton']:.2f}x {k}" for k in orth if k != "triton"), flush=True)

    result["wall_s"] = time.time() - t_start
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"done in {result['wall_s']:.0f} s; wrote {args.json}")


if __name__ == "__main__":
    main()
