"""Time the CUDA backend's grouped polar iteration against torch loops on one optimizer step.

    python -m bench.cuda_gpu [--out results.json] [--groups gpt2-small,heads,1.3b] [--sanitize]

Groups (bf16, Polar Express 5 steps, the schedule of ``orthogonalize``):
  heads       12 layers × 36 attention-head blocks 64×768 + 48 conv-like 64×576 (fused path)
  gpt2-small  12 layers × {768×768 ×4, 768×3072, 3072×768}                   (per-step path)
  1.3b        24 layers × {2048×2048 ×4, 2048×8192, 8192×2048}                (per-step path)
Baselines, same schedule and rounding points:
  torch-loop     per matrix: normalise, orient, 5 × (gram, poly, apply) with torch_ref ops
  torch-batched  matrices stacked by oriented shape, the same loop with batched matmuls
Times are CUDA-event medians of whole calls (host work included) after warm-up.
``--sanitize`` runs a small ragged group through every kernel once (for compute-sanitizer).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
from collections import defaultdict
from pathlib import Path

import torch

from polarkernels.backends import cuda, torch_ref
from polarkernels.schedules import fixed_schedule

from .timing import timed_call

GROUPS = {
    "heads": [(64, 768)] * (12 * 36) + [(64, 576)] * 48,
    "gpt2-small": ([(768, 768)] * 4 + [(768, 3072), (3072, 768)]) * 12,
    "1.3b": ([(2048, 2048)] * 4 + [(2048, 8192), (8192, 2048)]) * 24,
}


def torch_loop(mats, coeffs, safety):
    """Per-matrix loop: what an optimizer does without a grouped kernel."""
    outs = []
    for a in mats:
        tall = a.shape[0] > a.shape[1]
        x = a.mT if tall else a
        x = (x.float() / (torch.linalg.matrix_norm(x.float()) * safety).clamp_min(1e-30)).to(a.dtype)
        for ca, cb, cc in coeffs:
            x = torch_ref.apply(torch_ref.poly(torch_ref.gram(x), cb, cc), x, ca)
        outs.append(x.mT if tall else x)
    return outs


def torch_batched(mats, coeffs, safety):
    """The same loop on stacks of equal (oriented) shapes."""
    by_shape = defaultdict(list)
    for i, a in enumerate(mats):
        by_shape[tuple(sorted(a.shape))].append(i)
    outs = [None] * len(mats)
    for idx in by_shape.values():
        x = torch.stack([mats[i].mT if mats[i].shape[0] > mats[i].shape[1] else mats[i] for i in idx])
        norm = torch.linalg.matrix_norm(x.float(), keepdim=True) * safety
        x = (x.float() / norm.clamp_min(1e-30)).to(x.dtype)
        for ca, cb, cc in coeffs:
            x = torch_ref.apply(torch_ref.poly(torch_ref.gram(x), cb, cc), x, ca)
        for j, i in enumerate(idx):
            outs[i] = x[j].mT if mats[i].shape[0] > mats[i].shape[1] else x[j]
    return outs


def cuda_group(path):
    def run(mats, coeffs, safety):
        return cuda.orthogonalize_group(mats, coeffs, safety, path=path)
    return run


def time_call(fn, args, *, warmup=3, budget_s=2.0, max_reps=50):
    for _ in range(warmup):
        fn(*args)
    torch.cuda.synchronize()
    times = []
    while len(times) < max_reps and (len(times) < 5 or sum(times) < budget_s * 1e3):
        times.append(timed_call(lambda: fn(*args), torch.device("cuda"))[0] * 1e3)
    return statistics.median(times), len(times)


def step_flops(shapes, steps):
    """Products of the loop as a dense GEMM library computes them: 4m²n + 2m³ per step."""
    return sum(steps * (4 * m * m * n + 2 * m ** 3) for m, n in (sorted(s) for s in shapes))


def rel_err(u, ref):
    return max(float(torch.linalg.matrix_norm(a.double() - b.double()) / torch.linalg.matrix_norm(b.double()))
               for a, b in zip(u, ref))


def sanitize_case():
    """Every kernel once on a small ragged group (fused + stepped, each dtype) and the primitives."""
    sched = fixed_schedule("polar_express", 5)
    shapes = [(1, 5), (7, 3), (33, 65), (64, 200), (130, 40), (150, 260)]
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        mats = [torch.randn(s, device="cuda", dtype=dtype) for s in shapes]
        for path in ("auto", "stepped"):
            cuda.orthogonalize_group(mats, sched.coeffs, sched.norm_safety, path=path)
        x = torch.randn(2, 33, 140, device="cuda", dtype=dtype)
        cuda.apply(cuda.poly(cuda.gram(x), -1.0, 0.5), x, 1.5)
    torch.cuda.synchronize()
    print("sanitize case done")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--groups", default=",".join(GROUPS))
    parser.add_argument("--sanitize", action="store_true")
    args = parser.parse_args()
    if args.sanitize:
        sanitize_case()
        return

    sched = fixed_schedule("polar_express", 5)
    coeffs, safety = sched.coeffs, sched.norm_safety
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
                loader=cuda.loader_name(), python=platform.python_version(), commit=commit or None,
                schedule="polar_express, 5 steps", dtype="bfloat16")
    results = []
    variants = {"torch-loop": torch_loop, "torch-batched": torch_batched, "cuda": cuda_group("auto")}
    for name in args.groups.split(","):
        shapes = GROUPS[name]
        gen = torch.Generator(device="cuda").manual_seed(0)
        mats = [torch.randn(s, device="cuda", generator=gen).to(torch.bfloat16) for s in shapes]
        ref = torch_loop(mats, coeffs, safety)
        row = dict(group=name, matrices=len(shapes), gflop=step_flops(shapes, len(coeffs)) / 1e9, ms={}, reps={})
        runs = dict(variants)
        if name == "heads":
            runs["cuda-stepped"] = cuda_group("stepped")
        for vname, fn in runs.items():
            ms, reps = time_call(fn, (mats, coeffs, safety))
            row["ms"][vname], row["reps"][vname] = ms, reps
            if vname != "torch-loop":
                row.setdefault("max_rel_err_vs_torch_loop", {})[vname] = rel_err(fn(mats, coeffs, safety), ref)
        row["speedup_vs_torch_loop"] = {v: row["ms"]["torch-loop"] / t for v, t in row["ms"].items()}
        row["speedup_vs_torch_batched"] = {v: row["ms"]["torch-batched"] / t for v, t in row["ms"].items()}
        row["tflops"] = {v: row["gflop"] / t for v, t in row["ms"].items()}
        results.append(row)
        print(json.dumps(row), flush=True)

    print(f"\n{meta['device']}, torch {meta['torch']}, loader: {meta['loader']}")
    print(f"{'group':12} {'variant':14} {'median ms':>10} {'TFLOP/s':>8} {'vs loop':>8} {'vs batched':>10}")
    for row in results:
        for v, t in row["ms"].items():
            print(f"{row['group']:12} {v:14} {t:10.3f} {row['tflops'][v]:8.1f} "
                  f"{row['speedup_vs_torch_loop'][v]:7.2f}x {row['speedup_vs_torch_batched'][v]:9.2f}x")
    if args.out:
        args.out.write_text(json.dumps(dict(meta=meta, results=results), indent=1))


if __name__ == "__main__":
    main()
