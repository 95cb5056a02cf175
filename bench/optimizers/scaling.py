"""Model sizes, data/model ratios and the speedup over AdamW the way Wen et al. measure it.

A training budget is a data/model ratio: tokens seen per model parameter, where the parameters
counted are all but the token and position embeddings (their rows are looked up, not
multiplied). Chinchilla's compute-optimal ratio is about 20 tokens per parameter (Hoffmann et
al., arXiv 2203.15556); on 2 CPU cores the protocols use fractions of it, stated in every table.

Speedup (Wen et al., arXiv 2509.02046, §3): an optimizer that ends at loss L after a budget of
D tokens is worth D_AdamW(L)/D, where D_AdamW(L) is the budget tuned AdamW would need to end at
L, read off AdamW's own final-loss-vs-budget curve (each point a separate run with its schedule
completed, not a point along one run). The curve is interpolated linearly in log D between the
measured budgets; outside them only a bound is known.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

#: Chinchilla's compute-optimal tokens per parameter
CHINCHILLA_TOKENS_PER_PARAM = 20.0


@dataclass(frozen=True)
class ModelSize:
    """A byte-level transformer size of :class:`bench.optimizers.problems.StdlibCharLM`."""

    tag: str
    width: int
    layers: int
    heads: int


def counted_params(model: nn.Module) -> int:
    """Parameters outside the token and position embeddings (``nn.Embedding`` modules)."""
    embedded = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedded)


def steps_for_ratio(params: int, tokens_per_param: float, tokens_per_step: int) -> int:
    """Steps that show ``tokens_per_param × params`` tokens, ``tokens_per_step`` at a time."""
    if tokens_per_param <= 0 or tokens_per_step <= 0:
        raise ValueError(f"need positive ratio and tokens per step, got {tokens_per_param}, {tokens_per_step}")
    return max(1, round(tokens_per_param * params / tokens_per_step))


@dataclass(frozen=True)
class Speedup:
    """D_AdamW(L)/D, or a bound on it (``bound`` is ">" or "<") when L is outside AdamW's curve."""

    value: float
    bound: str = ""

    def __str__(self) -> str:
        return f"{self.bound}{self.value:.2f}×"


def adamw_equivalent_speedup(budgets: Sequence[float], adamw_losses: Sequence[float], budget: float,
                             loss: float) -> Speedup | None:
    """Speedup at ``budget`` for final ``loss`` on AdamW's curve ``(budgets, adamw_losses)``.

    The curve is AdamW's final loss at each budget (sorted by budget). It is interpolated
    piecewise linearly in (log D, L) on its monotone decreasing hull (a non-decreasing point,
    seed noise at a longer budget, is dropped: more data never hurts a tuned run in
    expectation). Returns None for a non-finite loss or when AdamW has fewer than 2 points.
    """
    if not math.isfinite(loss):
        return None
    points = sorted((b, l) for b, l in zip(budgets, adamw_losses) if math.isfinite(l))
    hull: list[tuple[float, float]] = []
    for b, l in points:
        if not hull or l < hull[-1][1]:
            hull.append((b, l))
    if len(hull) < 2:
        return None
    if loss <= hull[-1][1]:
        return Speedup(hull[-1][0] / budget, ">" if loss < hull[-1][1] else "")
    if loss > hull[0][1]:
        return Speedup(hull[0][0] / budget, "<")
    for (b0, l0), (b1, l1) in zip(hull, hull[1:]):
        if l1 <= loss <= l0:
            t = (l0 - loss) / (l0 - l1)
            return Speedup(math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0))) / budget)
    raise AssertionError("unreachable: loss lies within the hull's range")
