"""Timing: warm-up, then many timed runs; median and interquartile range.

On CUDA each run is bracketed by CUDA events (the GPU's own clock, no host overhead beyond the
launch); on CPU by ``time.perf_counter``. Runs repeat until both ``min_runs`` runs and
``budget_s`` seconds are reached, or ``max_runs`` runs.

On CPU each case starts after :data:`CPU_COOLDOWN_S` of sleep: OpenBLAS's worker threads spin
for about 2²⁸ cycles (~0.1 s) after a call, and on a 2-core machine they slowed whatever ran next
in another thread pool (torch's OpenMP, the other OpenBLAS of NumPy or SciPy) by up to 3× — a
cost of the previous case, not of the one being timed. Within a case, calls run back to back, so
a candidate that alternates thread pools itself still pays for it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``runs`` timed calls."""

    median: float
    q25: float
    q75: float
    best: float
    runs: int

    @property
    def iqr(self) -> float:
        return self.q75 - self.q25

    @classmethod
    def of(cls, samples: list[float]) -> Timing:
        if len(samples) == 1:
            return cls(samples[0], samples[0], samples[0], samples[0], 1)
        q = statistics.quantiles(samples, n=4, method="inclusive")
        return cls(statistics.median(samples), q[0], q[2], min(samples), len(samples))


@dataclass(frozen=True)
class Budget:
    """How many runs: ``warmup`` untimed, then ``min_runs``..``max_runs`` timed within ``budget_s``."""

    warmup: int = 1
    min_runs: int = 3
    max_runs: int = 50
    budget_s: float = 1.0


def timed_call(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(seconds, output) of one call of ``fn``: CUDA events around it on CUDA (the GPU's time,
    host work included), ``time.perf_counter`` elsewhere."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, out
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


#: Seconds of sleep before each CPU case (see the module docstring).
CPU_COOLDOWN_S = 0.2


def measure(fn: Callable[[], Any], device: torch.device, budget: Budget) -> tuple[Timing, Any, float]:
    """Time ``fn``: returns the timing, the output of the first (warm-up) call and its duration
    (which includes compilation and first-call allocation; reported separately)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    else:
        time.sleep(CPU_COOLDOWN_S)
    first_s, first_out = timed_call(fn, device)
    for _ in range(budget.warmup - 1):
        timed_call(fn, device)
    samples: list[float] = []
    t_start = time.perf_counter()
    while len(samples) < budget.max_runs and (len(samples) < budget.min_runs
                                               or time.perf_counter() - t_start < budget.budget_s):
        samples.append(timed_call(fn, device)[0])
    return Timing.of(samples), first_out, first_s
