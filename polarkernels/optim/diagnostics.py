"""Opt-in diagnostics: per-group update and weight RMS, and the equilibrium the theory predicts.

With decoupled weight decay, θ ← (1 − ηλ) θ − η u. When the updates are uncorrelated with θ
(noise-dominated training), ‖θ‖² settles where decay and growth balance (Kosson et al.,
"Rotational Equilibrium", ICML 2024; Su Jianlin's analysis of AdamW):

    ‖θ‖² (2ηλ − η²λ²) = η² ‖u‖²     ⇒     ‖θ‖_RMS ≈ RMS(u) · √(η / 2λ)                   (1)

For AdamW, the per-step updates m̂/√v̂ are correlated through the momentum, but their running
sum behaves like Σ g/√v, of RMS 1 per element, so the prediction is ‖θ‖_RMS ≈ √(η/2λ).
Under lr and weight-decay schedules the weights lag that equilibrium; ``schedule_weight_rms``
runs the recurrence behind (1) step by step over the rates the monitor sees
(:mod:`polarkernels.optim.schedule_theory`).

:class:`EquilibriumMonitor` measures, never prints: it hooks ``optimizer.step`` and reports
:class:`GroupStats` through ``latest`` and an optional callback.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

from .distributed import layout_of, local
from .schedule_theory import WeightRMSTracker, gaussian_spectral_norm


@dataclass(frozen=True)
class GroupStats:
    """One param group after one step.

    Attributes:
        group: index into ``optimizer.param_groups``.
        algorithm: the group's ``algorithm`` ("polar" / "adamw"), or "" for other optimizers.
        update_rms: RMS of the step without its weight decay, θ' − (1 − ηλ)θ, over the group.
        weight_rms: RMS of the group's weights after the step.
        predicted_weight_rms: AdamW's equilibrium √(η/2λ) of eq. (1) for AdamW groups with
            λ > 0; ``None`` for other groups, whose updates (orthogonalized momentum) stay
            correlated across steps, so that eq. (1) with the per-step RMS does not apply.
    """

    group: int
    algorithm: str
    update_rms: float
    weight_rms: float
    predicted_weight_rms: float | None
    #: eq. (1) of :mod:`~polarkernels.optim.schedule_theory` for AdamW groups: the weight RMS
    #: predicted under the lr and weight-decay *schedule* the monitor has seen step by step, from
    #: the RMS at its first step (equals the equilibrium above once constant rates settle).
    schedule_weight_rms: float | None = None
    #: weight RMS · (√m + √n) of the group's largest matrix: its spectral norm if its weights were
    #: i.i.d. noise of that RMS (a sanity scale, not a bound on trained weights); None without matrices.
    noise_spectral_norm: float | None = None
    #: the optimizer skipped this step (``nonfinite="skip"`` saw a NaN/inf gradient): nothing
    #: moved, so ``update_rms`` is 0 (the formula above would report ηλ·RMS(θ)).
    skipped: bool = False


def adamw_equilibrium_rms(lr: float, weight_decay: float) -> float:
    """‖θ‖_RMS ≈ √(η / 2λ): eq. (1) with AdamW's unit-RMS normalized gradient."""
    return math.sqrt(lr / (2.0 * weight_decay))


class EquilibriumMonitor:
    """Measure :class:`GroupStats` every ``every`` steps of ``optimizer`` (any torch optimizer).

    Example::

        monitor = EquilibriumMonitor(opt, every=100, callback=lambda stats: log(stats))
        ...                                   # train as usual
        monitor.latest                        # list[GroupStats] of the last measured step
        monitor.remove()

    A measured step costs one copy of the parameters that have gradients and one host
    synchronisation (every sum of squares stays on its device until one transfer at the end);
    unmeasured steps cost none (for float learning rates).
    """

    def __init__(self, optimizer: Optimizer, every: int = 1,
                 callback: Callable[[list[GroupStats]], None] | None = None) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.optimizer = optimizer
        self.every = every
        self.callback = callback
        self.latest: list[GroupStats] = []
        self._steps = 0
        self._trackers: dict[int, WeightRMSTracker] = {}
        self._rates: list[tuple[int, float, float]] = []
        self._skipped_at_pre: int | None = None
        self._before: list[list[Tensor]] | None = None
        self._skipped_before: int | None = None
        self._handles = [optimizer.register_step_pre_hook(self._pre_hook),
                         optimizer.register_step_post_hook(self._post_hook)]

    def remove(self) -> None:
        """Detach from the optimizer."""
        for handle in self._handles:
            handle.remove()

    def _pre_hook(self, optimizer: Optimizer, args: tuple, kwargs: dict) -> None:
        self._before = None
        self._rates = []                                     # eq. (1) advances every step taken
        for i, group in enumerate(optimizer.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not _is_adamw(optimizer, group) or not params:
                continue
            if i not in self._trackers:
                self._trackers[i] = WeightRMSTracker(_rms([(local(p), p) for p in params]))
            self._rates.append((i, float(group["lr"]), float(group.get("weight_decay", 0.0))))
        self._skipped_at_pre = getattr(optimizer, "skipped_steps", None)
        if self._steps % self.every == 0:
            self._before = [[local(p).detach().clone() for p in g["params"] if p.grad is not None]
                            for g in optimizer.param_groups]
            self._skipped_before = getattr(optimizer, "skipped_steps", None)
        self._steps += 1

    @torch.no_grad()
    def _post_hook(self, optimizer: Optimizer, args: tuple, kwargs: dict) -> None:
        if getattr(optimizer, "skipped_steps", None) == self._skipped_at_pre:
            for i, lr, wd in self._rates:
                self._trackers[i].update(lr, wd)
        if self._before is None:
            return
        skipped = getattr(optimizer, "skipped_steps", None) != self._skipped_before
        measured, sums = [], []
        for i, (group, before) in enumerate(zip(optimizer.param_groups, self._before)):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, wd = float(group["lr"]), float(group.get("weight_decay", 0.0))
            if not skipped:
                sums.append(_sum_squares([(local(p) - (1 - lr * wd) * b, p) for p, b in zip(params, before)]))
            sums.append(_sum_squares([(local(p), p) for p in params]))
            measured.append((i, group, params, lr, wd, sum(p.numel() for p in params)))
        device = sums[0].device if sums else torch.device("cpu")
        values = iter(torch.stack([t.to(device) for t in sums]).tolist() if sums else [])   # the one sync
        stats = []
        for i, group, params, lr, wd, count in measured:
            update = 0.0 if skipped else math.sqrt(next(values) / count)
            weight = math.sqrt(next(values) / count)
            algorithm = group.get("algorithm", "")
            predicted = adamw_equilibrium_rms(lr, wd) if algorithm == "adamw" and wd > 0 else None
            tracker = self._trackers.get(i)
            sides = [(p.shape[0], p.numel() // p.shape[0]) for p in params if p.ndim >= 2]
            noise = weight * max(gaussian_spectral_norm(m, n) for m, n in sides) if sides else None
            stats.append(GroupStats(i, algorithm, update, weight, predicted,
                                    tracker.rms if tracker is not None else None, noise, skipped))
        self._before = None
        self.latest = stats
        if self.callback is not None:
            self.callback(stats)


def _is_adamw(optimizer: Optimizer, group: dict) -> bool:
    """An AdamW group of this package's optimizers, or any group of ``torch.optim.AdamW``."""
    return group.get("algorithm") == "adamw" or ("algorithm" not in group and isinstance(optimizer, torch.optim.AdamW))


def _sum_squares(pieces: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Σ x² over all elements of the (local piece, parameter) pairs, a float64 0-d tensor on the
    first piece's device (no host synchronisation); slices of sharded parameters are summed over
    their process group."""
    device = pieces[0][0].device
    total = torch.zeros((), dtype=torch.float64, device=device)
    for piece, p in pieces:
        sq = piece.detach().double().square().sum()
        lay = layout_of(p, None)
        if lay.kind == "sharded":
            dist.all_reduce(sq, group=lay.group)
        total += sq.to(device)
    return total


def _rms(pieces: list[tuple[Tensor, Tensor]]) -> float:
    """RMS over all elements of the (local piece, parameter) pairs (one host synchronisation)."""
    return math.sqrt(float(_sum_squares(pieces)) / max(sum(p.numel() for _, p in pieces), 1))
