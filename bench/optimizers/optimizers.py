"""The optimizers under test and how each is built from one sweep point (lr, decay).

Conventions, the same for every optimizer so that one grid means the same thing for all:

- ``lr`` is the optimizer's own learning rate η (its scale differs by family: PolarGrad's step
  is η‖M‖_*·U, so its η is orders of magnitude below Muon's); each optimizer has a per-problem
  centre for its log grid, found by wide pilot sweeps and widened automatically by the sweep.
- ``decay`` is the weight decay as the per-step shrink ηλ, so λ = decay/η. Decoupled for
  AdamW, Muon and PolarGrad (W ← (1 − ηλ)W); L2 (g ← g + λW) for SGD, whose shrink per step
  is then also ηλ before momentum.
- Hybrid optimizers (Muon, PolarGrad) take the polar update on the matrix weights chosen by
  :func:`polarkernels.optim.split_params` (hidden matrices; not embeddings, biases, norms or the
  output head) and AdamW on the rest, at the (lr, decay) AdamW itself was tuned to on the same
  problem: one learning rate is swept per optimizer, and the non-matrix parameters are treated
  identically by all hybrids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from polarkernels.optim import Muon, PolarGrad, split_params


@dataclass(frozen=True)
class Setting:
    """One point of a sweep: learning rate η and per-step weight-decay shrink ηλ."""

    lr: float
    decay: float = 0.0

    @property
    def weight_decay(self) -> float:
        """λ = decay / η."""
        return self.decay / self.lr


class Steppers:
    """Several torch optimizers driven as one (torch.optim.Muon takes only matrices)."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()


Builder = Callable[[nn.Module, Setting, Setting | None], torch.optim.Optimizer | Steppers]


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer under test: how to build it and where its LR grid is centred per problem."""

    name: str
    label: str
    build: Builder
    lr_center: dict[str, float] = field(repr=False)
    #: takes AdamW's tuned (lr, decay) for the non-matrix parameters
    hybrid: bool = False

    def applies_to(self, problem: str) -> bool:
        return problem in self.lr_center


def _groups(model: nn.Module, setting: Setting, adamw: Setting | None) -> list[dict]:
    """split_params' groups, the AdamW one pinned to AdamW's tuned (lr, decay)."""
    groups = split_params(model)
    for g in groups:
        if g["algorithm"] == "adamw":
            if adamw is None:
                raise ValueError("this model has non-matrix parameters: a hybrid optimizer needs AdamW's setting")
            g.update(lr=adamw.lr, weight_decay=adamw.weight_decay)
    return groups


def _sgd(model: nn.Module, s: Setting, adamw: Setting | None) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=s.lr, momentum=0.9, nesterov=True,
                           weight_decay=s.weight_decay)


def _adamw(model: nn.Module, s: Setting, adamw: Setting | None) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)


def _torch_muon(model: nn.Module, s: Setting, adamw: Setting | None) -> Steppers:
    groups = _groups(model, s, adamw)
    opts: list[torch.optim.Optimizer] = []
    for g in groups:
        if g["algorithm"] == "polar":
            opts.append(torch.optim.Muon(g["params"], lr=s.lr, weight_decay=s.weight_decay,
                                         adjust_lr_fn="match_rms_adamw"))
        else:
            opts.append(torch.optim.AdamW(g["params"], lr=g["lr"], weight_decay=g["weight_decay"]))
    return Steppers(opts)


def _pk_muon(model: nn.Module, s: Setting, adamw: Setting | None) -> torch.optim.Optimizer:
    return Muon(_groups(model, s, adamw), lr=s.lr, weight_decay=s.weight_decay,
                method="polar_express", adjust_lr_fn="match_rms_adamw")


def _polargrad(method: str, *, polar_first: bool = False, momentum: float = 0.95) -> Builder:
    steps = 6 if method == "qdwh" else 5    # QDWH: converged (≤ 6 iterations; it stops early)

    def build(model: nn.Module, s: Setting, adamw: Setting | None) -> torch.optim.Optimizer:
        return PolarGrad(_groups(model, s, adamw), lr=s.lr, weight_decay=s.weight_decay,
                         momentum=momentum, polar_first=polar_first, method=method, steps=steps)
    return build


#: Centres of the LR grids, from pilot sweeps over 4 decades at the quick budgets (seed 0):
#: the best pilot point, moved half a decade down where the full budget is much longer.
OPTIMIZERS: dict[str, OptimizerSpec] = {spec.name: spec for spec in (
    OptimizerSpec("adamw", "AdamW", _adamw, {
        "quadratic": 0.3, "logistic": 3e-2, "completion": 0.1, "digits_mlp": 3e-3, "stdlib_lm": 1e-3}),
    OptimizerSpec("sgd", "SGD (momentum 0.9, Nesterov)", _sgd, {
        "quadratic": 1e-7, "logistic": 1e-5, "completion": 10.0, "digits_mlp": 0.1, "stdlib_lm": 3e-2}),
    OptimizerSpec("muon_torch", "torch.optim.Muon", _torch_muon, {
        "quadratic": 0.1, "logistic": 0.1, "completion": 0.1, "digits_mlp": 3e-3, "stdlib_lm": 3e-3},
        hybrid=True),
    OptimizerSpec("muon_pk", "polarkernels Muon (Polar Express)", _pk_muon, {
        "quadratic": 0.1, "logistic": 0.1, "completion": 0.1, "digits_mlp": 3e-3, "stdlib_lm": 3e-3},
        hybrid=True),
    OptimizerSpec("polargrad_qdwh", "PolarGrad (QDWH)", _polargrad("qdwh"), {
        "quadratic": 3e-8, "logistic": 1e-6, "completion": 30.0, "digits_mlp": 3e-2, "stdlib_lm": 0.1},
        hybrid=True),
    OptimizerSpec("polargrad_qdwh_pf", "PolarGrad (QDWH, polar-first)", _polargrad("qdwh", polar_first=True), {
        "quadratic": 1e-7, "logistic": 1e-6, "completion": 10.0, "digits_mlp": 3e-2, "stdlib_lm": 0.1},
        hybrid=True),
    OptimizerSpec("polargrad_pe", "PolarGrad (Polar Express)", _polargrad("polar_express"), {
        "quadratic": 3e-8, "logistic": 1e-6, "completion": 30.0, "digits_mlp": 3e-2, "stdlib_lm": 0.1},
        hybrid=True),
    OptimizerSpec("polargrad_pe_pf", "PolarGrad (Polar Express, polar-first)",
                  _polargrad("polar_express", polar_first=True), {
        "quadratic": 1e-7, "logistic": 1e-6, "completion": 10.0, "digits_mlp": 3e-2, "stdlib_lm": 0.1},
        hybrid=True),
    OptimizerSpec("polarsgd_qdwh", "PolarSGD (QDWH, no momentum; the paper's setting)",
                  _polargrad("qdwh", momentum=0.0), {"quadratic": 3e-8, "logistic": 3e-7, "completion": 10.0},
                  hybrid=True),
)}
