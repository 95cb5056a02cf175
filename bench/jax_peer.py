"""JAX's ``jax.scipy.linalg.polar`` as a peer of the kernel benchmark, timed in its own process.

    python -m bench.jax_peer --spec spec.json --out rows.json      # what bench.polar runs

JAX brings its own thread pool (XLA's Eigen pool), which slowed torch and SciPy by up to 2× when
it lived in the same process on the 2-core machine (../shared/DESIGN.md): so ``bench.polar``
starts this module in a subprocess, hands it the workloads, dtypes and timing budget as JSON, and
reads back rows in its own schema. Inside, the inputs are made by the same generator as
``bench.cases`` (torch is imported only for that and for the float64 reference factor, both
before and after the timed loop, never during it). Times exclude the first call (``jax.jit``'s
compilation), as for the torch.compile rows; every call ends with ``block_until_ready``.

Timed: ``polar(a, method="qdwh")`` (JAX's default: QDWH plus one Newton–Schulz step) and
``polar(a, method="svd")``, both returning (U, H), as float64 only with ``jax_enable_x64``.
Batches map ``polar`` over the leading dimension with ``jax.vmap``.
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

#: ``jax.scipy.linalg.polar`` methods timed, as (row name, method).
METHODS = (("jax.scipy.linalg.polar (qdwh)", "qdwh"), ("jax.scipy.linalg.polar (svd)", "svd"))


def available() -> tuple[bool, str]:
    """Whether JAX is importable here (checked in a subprocess: importing it here would start
    its thread pool in the benchmark's own process)."""
    probe = subprocess.run([sys.executable, "-c", "import jax, jax.scipy.linalg; print(jax.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return False, "JAX is not installed (pip install 'jax[cpu]'; or the extra .[peers])"
    return True, probe.stdout.strip()


def run_peer(workloads: list[dict[str, Any]], dtypes: list[str], budget: dict[str, Any],
             seed: int, out: Path, threads: int | None = None) -> list[dict[str, Any]]:
    """Time JAX on ``workloads`` (``bench.cases.Workload`` fields) in a fresh process; its rows.

    ``threads=1`` makes XLA's CPU backend single-threaded, as ``--threads 1`` does torch and the
    BLAS libraries; otherwise XLA uses every core (it has no flag for another count).
    """
    spec = out.with_suffix(".spec.json")
    spec.write_text(json.dumps({"workloads": workloads, "dtypes": dtypes, "budget": budget, "seed": seed}))
    env = dict(os.environ)
    if threads == 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                            "intra_op_parallelism_threads=1").strip()
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "bench.jax_peer", "--spec", str(spec), "--out", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"JAX peer process failed: {tail}")
    return json.loads(out.read_text())


def _time(fn, budget: dict[str, Any]) -> tuple[list[float], Any, float]:
    """First call (compiles), then ``min_runs``.. ``max_runs`` timed calls within ``budget_s``."""
    time.sleep(budget.get("cooldown_s", 0.2))
    t0 = time.perf_counter()
    first = fn()
    first_s = time.perf_counter() - t0
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < budget["max_runs"] and (len(samples) < budget["min_runs"]
                                                  or time.perf_counter() - start < budget["budget_s"]):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples, first, first_s


def _main(spec_path: Path, out_path: Path) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jax.scipy.linalg
    import numpy as np
    import torch

    from polarkernels.svd import svd_polar

    from . import cases
    from .polar import _accuracy
    from .timing import Timing

    spec = json.loads(spec_path.read_text())
    budget = spec["budget"]
    rows = []
    for w in spec["workloads"]:
        workload = cases.Workload(w["name"], w["kind"], tuple(tuple(g) for g in w["groups"]), w["stacked"])
        masters = workload.inputs(torch.float64, torch.device("cpu"), spec["seed"])
        refs = [svd_polar(x) for x in masters]
        for dtype in spec["dtypes"]:
            arrays = [jnp.asarray(x.numpy().astype(dtype)) for x in masters]  # copies: JAX owns its buffers
            for name, method in METHODS:
                single = jax.jit(lambda a, method=method: _jax_polar(jax.scipy.linalg.polar, a, method))
                fns = [jax.jit(jax.vmap(single)) if a.ndim == 3 else single for a in arrays]

                def call(fns=fns):
                    outs = [f(a) for f, a in zip(fns, arrays)]
                    for u, h in outs:
                        u.block_until_ready(), h.block_until_ready()
                    return outs

                samples, outs, first_s = _time(call, budget)
                t = Timing.of(samples)
                orth, dist = _accuracy([torch.from_numpy(np.array(u)) for u, _ in outs], refs)
                rows.append({
                    "workload": workload.name, "kind": workload.kind, "size": workload.size,
                    "groups": [list(g) for g in workload.groups], "device": "cpu", "candidate": name,
                    "family": "polar", "method": f"jax_{method}", "backend": "-", "dtype": dtype,
                    "compiled": True, "role": None, "median_s": t.median, "q25_s": t.q25, "q75_s": t.q75,
                    "iqr_s": t.iqr, "runs": t.runs, "first_call_s": first_s, "flops": None, "gflop": None,
                    "gflop_per_s": None, "matmul_fraction": None, "iterations": [],
                    "orthogonality": orth, "distance_to_polar": dist, "peer": f"jax {jax.__version__}",
                    "process": "own"})
    out_path.write_text(json.dumps(rows))


def _jax_polar(polar, a, method: str):
    """(U, H) by JAX: A = U H, or A = H U for a wide A, the one side JAX's QDWH takes a wide
    matrix for (H then m×m, smaller than polar()'s n×n: a cheaper call than the one it is timed
    against, which only favours the peer)."""
    return polar(a, side="left" if a.shape[-2] < a.shape[-1] else "right", method=method)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.jax_peer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    _main(args.spec, args.out)
