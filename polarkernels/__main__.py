"""``python -m polarkernels``: a short demo of every method against scipy.linalg.polar.

For a few square sizes on the default device (CUDA if visible, else CPU), times ``polar()`` with
each method and ``orthogonalize()`` with the optimizer schedules, and reports the distance of U
to the float64 SciPy factor. Timings here are indicative (median of 3); see ``bench/`` for the
real benchmark.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.linalg
import torch

from . import orthogonalize, polar


def _median_time(f, repeats: int, sync) -> float:
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        f()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m polarkernels", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--cond", type=float, default=1e3, help="condition number of the test matrices")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    cases = [("polar", m) for m in ("svd", "qdwh", "polar_express", "newton_schulz")]
    cases += [("orthogonalize", m) for m in ("polar_express", "muon")]
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; tolerate its absence in vendored copies
        tqdm = None
    jobs = [(n, c) for n in args.sizes for c in [("scipy", "polar")] + cases]
    bar = tqdm(jobs, desc="demo", unit="run", leave=False) if tqdm else jobs
    rows = []
    rng = np.random.default_rng(0)
    for n, (fn, method) in bar:
        if fn == "scipy":
            p, _ = np.linalg.qr(rng.standard_normal((n, n)))
            q, _ = np.linalg.qr(rng.standard_normal((n, n)))
            a64 = (p * np.geomspace(1, 1 / args.cond, n)) @ q.T
            a = torch.from_numpy(a64).to(device=device, dtype=dtype)
            t = _median_time(lambda: scipy.linalg.polar(a64), 3, lambda: None)
            u_ref = torch.from_numpy(scipy.linalg.polar(a64)[0])
            rows.append((n, "scipy.linalg.polar (float64)", t, 0.0))
            continue
        if fn == "polar":
            run = lambda: polar(a, method=method)[0]  # noqa: E731
        else:
            run = lambda: orthogonalize(a, method=method, steps=5)  # noqa: E731
        run()  # warm-up
        t = _median_time(run, 3, sync)
        err = float(torch.linalg.matrix_norm(run().double().cpu() - u_ref) / n**0.5)
        rows.append((n, f"{fn}(method={method!r})", t, err))

    print(f"device={device} dtype={args.dtype} cond={args.cond:g}; error = ‖U − U_scipy‖_F/√n")
    print(f"{'n':>6}  {'call':<40} {'time [s]':>10} {'error':>10}")
    for n, name, t, err in rows:
        print(f"{n:>6}  {name:<40} {t:>10.4f} {err:>10.2e}")
    print("orthogonalize() is the optimizer fast path (5 fixed steps): its U is approximate by design.")


if __name__ == "__main__":
    main()
