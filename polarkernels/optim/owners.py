"""Which rank computes which polar factor: one FLOP-balanced assignment for a whole step.

The polar factors of a step are independent jobs of very different cost (a 4d×d MLP weight
costs 3× a d×d attention weight, an expert stack E× one expert). Owners are assigned once
for all of them, across every param group, by the greedy *longest processing time* rule
(Graham, "Bounds on multiprocessing timing anomalies", 1969): jobs in decreasing cost, each
to the rank with the least work so far. Its makespan is at most (4/3 − 1/(3W))× the optimum,
and at most mean + the largest job.

One group per transformer layer (q, k, v, o of d×d, fc1 of 4d×d, fc2 of d×4d) on 16 ranks,
12 layers: owners by count within each group (the assignment this replaced) leave 10 ranks
idle and give the busiest 4.8× the mean FLOPs; this assignment gives 1.07×, the optimum
(loads come in whole d×d units: 8 against a mean of 7.5; tested in
``tests/optim/test_owners.py``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def polar_flops(shapes: Iterable[tuple[int, int]], steps: int) -> float:
    """FLOPs of ``steps`` polynomial polar steps on each (m, n) matrix of ``shapes``, summed.

    With a = min(m, n), b = max(m, n) (the iteration runs on the wide side), one step forms
    S = X Xᵀ (2a²b), the polynomial in S (2a³) and its product with X (2a²b). QDWH and the
    SVD scale the same way in a and b, so this also ranks their costs.
    """
    total = 0.0
    for m, n in shapes:
        a, b = min(m, n), max(m, n)
        total += steps * (4.0 * a * a * b + 2.0 * a ** 3)
    return total


@dataclass(frozen=True)
class OwnerAssignment:
    """``owners[i]``: the rank (0 … world − 1) that computes job i; ``loads[r]``: rank r's cost."""

    owners: tuple[int, ...]
    loads: tuple[float, ...]

    @property
    def imbalance(self) -> float:
        """Busiest rank's cost over the mean (1.0 is perfect balance; 1.0 when there is no work)."""
        mean = sum(self.loads) / len(self.loads)
        return max(self.loads) / mean if mean > 0 else 1.0

    @property
    def idle(self) -> int:
        """Number of ranks with no work."""
        return sum(load == 0 for load in self.loads)


def assign_owners(costs: Sequence[float], world: int) -> OwnerAssignment:
    """Longest-processing-time owners for jobs of ``costs`` on ``world`` ranks.

    Deterministic (ties go to the earlier job and the lower rank), so every rank computes the
    same assignment from the same costs without communicating.
    """
    if world < 1:
        raise ValueError(f"world must be a positive int, got {world!r}")
    if any(not c >= 0 for c in costs):
        raise ValueError(f"costs must be finite numbers ≥ 0, got {list(costs)!r}")
    loads = [0.0] * world
    owners = [0] * len(costs)
    least = [(0.0, r) for r in range(world)]                # heap of (load, rank)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, r = heapq.heappop(least)
        owners[i] = r
        loads[r] = load + costs[i]
        heapq.heappush(least, (loads[r], r))
    return OwnerAssignment(tuple(owners), tuple(loads))
