"""Learning-rate schedules: the multiplier of every group's peak learning rate at each step.

Wen et al. ("Fantastic Pretraining Optimizers and Where to Find Them", arXiv 2509.02046) show
that optimizers' loss curves cross during the decay of the schedule, so a verdict needs a
decaying schedule and the loss at its end. Three kinds, each with an optional linear warm-up
over the first ``warmup`` fraction of the steps (t = 1 … T is the step about to be taken,
W = round(warmup·T)):

- constant: s(t) = 1 after warm-up;
- cosine: s(t) = f + (1 − f)·½(1 + cos πp), p = (t − W)/(T − W), down to the floor f;
- WSD, warm-up–stable–decay (Hägele et al., "Scaling Laws and Compute-Optimal Training Beyond
  Fixed Training Durations", arXiv 2405.18392): s = 1 until the last ``decay`` fraction of the
  steps, then 1 − (1 − f)·p ("linear") or 1 − (1 − f)·√p ("sqrt", their 1-sqrt cooldown), p the
  fraction of the decay done.

During warm-up s(t) = t/W.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

KINDS = ("constant", "cosine", "wsd")
SHAPES = ("linear", "sqrt")


@dataclass(frozen=True)
class LRSchedule:
    """One schedule; :meth:`factor` is the multiplier of the peak learning rate at a step."""

    kind: str
    warmup: float = 0.0
    #: WSD only: fraction of the steps spent decaying, at the end
    decay: float = 0.0
    #: WSD only: "linear" or "sqrt" decay
    shape: str = "linear"
    #: final multiplier (cosine and WSD)
    floor: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"schedule kind must be one of {KINDS}, got {self.kind!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"WSD decay shape must be one of {SHAPES}, got {self.shape!r}")
        for name in ("warmup", "decay", "floor"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {value}")
        if self.kind == "wsd" and not 0.0 < self.decay <= 1.0 - self.warmup:
            raise ValueError(f"WSD needs 0 < decay ≤ 1 − warmup, got decay={self.decay}, warmup={self.warmup}")

    def warmup_steps(self, total: int) -> int:
        return round(self.warmup * total)

    def decay_start(self, total: int) -> int | None:
        """The last step at the peak rate (where the decay begins), or None for constant."""
        if self.kind == "constant":
            return None
        if self.kind == "cosine":
            return self.warmup_steps(total)
        return total - round(self.decay * total)

    def factor(self, step: int, total: int) -> float:
        """s(t) for step t ∈ [1, total] (the formulas of the module docstring)."""
        if not 1 <= step <= total:
            raise ValueError(f"step must be in [1, {total}], got {step}")
        w = self.warmup_steps(total)
        if step <= w:
            return step / w
        if self.kind == "constant":
            return 1.0
        start = self.decay_start(total)
        assert start is not None
        if step <= start:
            return 1.0
        p = (step - start) / (total - start)
        if self.kind == "cosine":
            return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * p))
        return 1.0 - (1.0 - self.floor) * (math.sqrt(p) if self.shape == "sqrt" else p)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def label(self) -> str:
        warm = f", warm-up {self.warmup:.0%}" if self.warmup else ""
        if self.kind == "constant":
            return f"constant{warm}"
        if self.kind == "cosine":
            return f"cosine to {self.floor:g}×{warm}"
        return f"WSD, {self.shape} decay over the last {self.decay:.0%} to {self.floor:g}×{warm}"


#: The named schedules of the CLI and the protocols.
SCHEDULES: dict[str, LRSchedule] = {
    "constant": LRSchedule("constant"),
    "cosine": LRSchedule("cosine", warmup=0.05, floor=0.1),
    "wsd": LRSchedule("wsd", warmup=0.05, decay=0.2, shape="linear"),
    "wsd_sqrt": LRSchedule("wsd", warmup=0.05, decay=0.2, shape="sqrt"),
}
