"""The optimizers under test and how each is built from one sweep point (lr, λ, β).

Conventions, the same for every optimizer so that one grid means the same thing for all:

- ``lr`` is the optimizer's own peak learning rate η (its scale differs by family:
  PolarGrad's step is η‖M‖_*·U, so its η is orders of magnitude away from Muon's); each
  optimizer has a per-problem starting point for the coordinate descent of
  :mod:`bench.optimizers.sweep`, from pilot sweeps. The schedule multiplies η (and, for the
  decoupled decays, the shrink ηλ) at every step.
- ``weight_decay`` is λ: decoupled for AdamW, Muon and PolarGrad (W ← (1 − ηλ)W), L2
  (g ← g + λW) for SGD.
- ``beta`` is the one momentum coefficient each optimizer is most sensitive to: AdamW's β₂,
  the momentum of SGD, Muon and PolarGrad. Its grid is per optimizer (:attr:`OptimizerSpec.betas`).
- Hybrid optimizers (Muon, PolarGrad) take the polar update on the matrix weights chosen by
  :func:`polarkernels.optim.split_params` (hidden matrices; not embeddings, biases, norms or the
  output head) and AdamW on the rest, at the (lr, λ, β₂) AdamW itself was tuned to on the same
  problem and budget: the non-matrix parameters are treated identically by all hybrids.
- The polar-accuracy ablation (``*_pe_bf16``, ``*_quintic``, ``*_cubic``, ``*_svd``) runs
  Muon and polar-first PolarGrad with four polar factors, from a 5-step bfloat16 approximation
  to the exact (SVD) factor. PolarGrad's variants take the exact ν = ‖X‖_* (``scale=
  "nuclear_exact"``), so that only the direction U differs between them (with ``scale=
  "nuclear"``, ν = ⟨X, U⟩ inherits U's error, and polarkernels refuses it for the quintic).
- The manifold optimizers (``stiefel_muon``, ``stiefel_dual``, ``stiefel_admm``, ``spel``,
  ``rsgd``; for :class:`bench.optimizers.problems.StiefelProblem`) keep the hidden matrices
  (``split_params``' polar ones) on the Stiefel manifold and give the rest to AdamW as the
  hybrids do. There is no weight decay on the manifold (the norm is fixed), so λ is 0 and not
  tuned for them; lr and their momentum β are. The StiefelMuon solvers are capped at 10 polar
  factors per step (warm-started), as in their earlier standalone benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from polarkernels.optim import Muon, PolarGrad, StiefelMuon, split_params

from .manifold import RiemannianSGD


@dataclass(frozen=True)
class Setting:
    """One point of a sweep: peak learning rate η, weight decay λ, momentum coefficient β
    (None: the optimizer's default, :attr:`OptimizerSpec.beta`)."""

    lr: float
    weight_decay: float = 0.0
    beta: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {"lr": self.lr, "weight_decay": self.weight_decay, "beta": self.beta}


class Steppers:
    """Several torch optimizers driven as one (torch.optim.Muon takes only matrices)."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()


Builder = Callable[[nn.Module, Setting, Setting | None], torch.optim.Optimizer | Steppers]

#: AdamW's β₂ where it is not tuned (the start of its grid)
ADAMW_BETA2 = 0.98


@dataclass(frozen=True)
class PolarFactor:
    """How a hybrid computes its polar factor (the ablation's variable)."""

    method: str
    steps: int = 5
    dtype: torch.dtype | None = None

    @property
    def label(self) -> str:
        dtype = {torch.bfloat16: "bf16", None: "fp32"}[self.dtype]
        return "SVD (exact)" if self.method == "svd" else f"{self.method} × {self.steps}, {dtype}"


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer under test: how to build it and where its tuning starts per problem."""

    name: str
    label: str
    build: Builder
    #: peak lr the coordinate descent starts from, by problem family
    lr_center: dict[str, float] = field(repr=False)
    #: grid of the tuned momentum coefficient (AdamW: β₂); the start is ``betas[len(betas) // 2]``
    betas: tuple[float, ...] = (0.8, 0.9, 0.95, 0.98)
    #: λ the coordinate descent starts from (an entry of the protocol's λ grid)
    weight_decay: float = 0.0
    #: takes AdamW's tuned setting for the non-matrix parameters
    hybrid: bool = False
    polar: PolarFactor | None = None
    #: keeps the hidden matrices on the Stiefel manifold: λ = 0 there, not tuned
    manifold: bool = False

    @property
    def beta(self) -> float:
        return self.betas[len(self.betas) // 2]

    def applies_to(self, family: str) -> bool:
        return family in self.lr_center


def _beta(s: Setting, spec_beta: float) -> float:
    return spec_beta if s.beta is None else s.beta


def _groups(model: nn.Module, adamw: Setting | None) -> list[dict]:
    """split_params' groups, the AdamW one pinned to AdamW's tuned (lr, λ, β₂)."""
    groups = split_params(model)
    for g in groups:
        if g["algorithm"] == "adamw":
            if adamw is None:
                raise ValueError("this model has non-matrix parameters: a hybrid optimizer needs AdamW's setting")
            g.update(lr=adamw.lr, weight_decay=adamw.weight_decay,
                     betas=(0.9, _beta(adamw, ADAMW_BETA2)))
    return groups


def _sgd(model: nn.Module, s: Setting, adamw: Setting | None) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=s.lr, momentum=_beta(s, 0.9), nesterov=True,
                           weight_decay=s.weight_decay)


def _adamw(model: nn.Module, s: Setting, adamw: Setting | None) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay,
                             betas=(0.9, _beta(s, ADAMW_BETA2)))


def _torch_muon(model: nn.Module, s: Setting, adamw: Setting | None) -> Steppers:
    opts: list[torch.optim.Optimizer] = []
    for g in _groups(model, adamw):
        if g["algorithm"] == "polar":
            opts.append(torch.optim.Muon(g["params"], lr=s.lr, weight_decay=s.weight_decay,
                                         momentum=_beta(s, 0.95), adjust_lr_fn="match_rms_adamw"))
        else:
            opts.append(torch.optim.AdamW(g["params"], lr=g["lr"], weight_decay=g["weight_decay"],
                                          betas=g["betas"]))
    return Steppers(opts)


def _muon(factor: PolarFactor) -> Builder:
    def build(model: nn.Module, s: Setting, adamw: Setting | None) -> torch.optim.Optimizer:
        return Muon(_groups(model, adamw), lr=s.lr, weight_decay=s.weight_decay, momentum=_beta(s, 0.95),
                    method=factor.method, steps=factor.steps, dtype=factor.dtype,
                    adjust_lr_fn="match_rms_adamw")
    return build


def _polargrad(factor: PolarFactor, *, polar_first: bool = False, momentum: float = 0.95,
               scale: str = "nuclear") -> Builder:
    def build(model: nn.Module, s: Setting, adamw: Setting | None) -> torch.optim.Optimizer:
        return PolarGrad(_groups(model, adamw), lr=s.lr, weight_decay=s.weight_decay,
                         momentum=_beta(s, momentum), polar_first=polar_first, method=factor.method,
                         steps=factor.steps, dtype=factor.dtype, scale=scale)
    return build


def _split_manifold(model: nn.Module, adamw: Setting | None) -> tuple[list[nn.Parameter], list[dict]]:
    """The hidden matrices (put on the manifold) and the AdamW groups pinned to AdamW's setting."""
    groups = _groups(model, adamw)
    return ([p for g in groups if g["algorithm"] == "polar" for p in g["params"]],
            [g for g in groups if g["algorithm"] == "adamw"])


def _stiefel_muon(solver: str) -> Builder:
    def build(model: nn.Module, s: Setting, adamw: Setting | None) -> torch.optim.Optimizer:
        on, rest = _split_manifold(model, adamw)
        return StiefelMuon(rest, lr=s.lr, weight_decay=0.0, momentum=_beta(s, 0.95), stiefel=on, solver=solver,
                           max_iter=10)
    return build


def _rsgd(model: nn.Module, s: Setting, adamw: Setting | None) -> Steppers:
    on, rest = _split_manifold(model, adamw)
    return Steppers([RiemannianSGD(on, lr=s.lr, momentum=_beta(s, 0.9)),
                     *(torch.optim.AdamW(g["params"], lr=g["lr"], weight_decay=g["weight_decay"], betas=g["betas"])
                       for g in rest)])


QDWH = PolarFactor("qdwh", 6)             # converged (≤ 6 iterations; it stops early)
PE = PolarFactor("polar_express")
#: PolarGrad's default: 6 steps keep ν = ⟨X, U⟩ within 0.5% of ‖X‖_* (polarkernels.optim)
PE6 = PolarFactor("polar_express", 6)
#: the ablation's four polar factors, least to most accurate
#: (Polar Express in bfloat16, as on a GPU; the others in float32: this CPU computes bfloat16
#: products ~3× slower than float32, and bf16 rounding, ~4e-3, is far below the quintic's and
#: the cubic's own errors, 0.3 and 0.7 on the report's test matrix)
ABLATION = {"pe_bf16": PolarFactor("polar_express", 5, torch.bfloat16),
            "quintic": PolarFactor("muon", 5),
            "cubic": PolarFactor("newton_schulz", 5),
            "svd": PolarFactor("svd")}

#: Starting learning rates, from pilot sweeps (seed 0) at the quick budgets; "stdlib_lm" is the
#: byte-level transformer family (every model size and data ratio), under the cosine schedule.
_MUON_LR = {"quadratic": 0.1, "logistic": 0.1, "completion": 0.1, "digits_mlp": 3e-3, "stdlib_lm": 1e-2,
            "stiefel_trace": 0.1, "stiefel_digits": 0.1}
#: the manifold optimizers': StiefelMuon's solvers (best of a fixed grid, 2 seeds, in a pilot) and
#: Riemannian SGD's (its step has the gradient's scale)
_STIEFEL_LR = {"stiefel_trace": 0.3, "stiefel_digits": 0.1}
_RSGD_LR = {"stiefel_trace": 10.0, "stiefel_digits": 1.0}
_PG_PF_LR = {"quadratic": 1e-7, "logistic": 1e-6, "completion": 10.0, "digits_mlp": 3e-2, "stdlib_lm": 0.1}
_LM = {"stdlib_lm"}

OPTIMIZERS: dict[str, OptimizerSpec] = {spec.name: spec for spec in (
    OptimizerSpec("adamw", "AdamW", _adamw, {
        "quadratic": 0.3, "logistic": 3e-2, "completion": 0.1, "digits_mlp": 3e-3, "stdlib_lm": 3e-3,
        "stiefel_trace": 1e-2, "stiefel_digits": 3e-3},
        betas=(0.9, 0.95, ADAMW_BETA2, 0.995), weight_decay=0.1),
    OptimizerSpec("sgd", "SGD (Nesterov)", _sgd, {
        "quadratic": 1e-7, "logistic": 1e-5, "completion": 10.0, "digits_mlp": 0.1},
        betas=(0.8, 0.9, 0.95)),
    OptimizerSpec("muon_torch", "torch.optim.Muon", _torch_muon, dict(_MUON_LR), weight_decay=0.1, hybrid=True),
    OptimizerSpec("muon", "Muon (polarkernels, Polar Express fp32)", _muon(PE), dict(_MUON_LR),
                  weight_decay=0.1, hybrid=True, polar=PE),
    OptimizerSpec("polargrad_qdwh", "PolarGrad (QDWH)", _polargrad(QDWH), {
        "quadratic": 3e-8, "logistic": 1e-6, "completion": 30.0, "digits_mlp": 3e-2},
        hybrid=True, polar=QDWH),
    OptimizerSpec("polargrad_pe", "PolarGrad (Polar Express)", _polargrad(PE6), {
        "quadratic": 3e-8, "logistic": 1e-6, "completion": 30.0, "digits_mlp": 3e-2},
        hybrid=True, polar=PE6),
    OptimizerSpec("polargrad", "PolarGrad (polar-first, Polar Express × 6 fp32)",
                  _polargrad(PE6, polar_first=True), dict(_PG_PF_LR), weight_decay=0.01, hybrid=True, polar=PE6),
    OptimizerSpec("polarsgd_qdwh", "PolarSGD (QDWH, no momentum; the paper's setting)",
                  _polargrad(QDWH, momentum=0.0), {"quadratic": 3e-8, "logistic": 3e-7, "completion": 10.0},
                  betas=(0.0,), hybrid=True, polar=QDWH),
    *(OptimizerSpec(f"muon_{key}", f"Muon, {factor.label}", _muon(factor),
                    {k: v for k, v in _MUON_LR.items() if k in _LM}, weight_decay=0.1, hybrid=True,
                    polar=factor) for key, factor in ABLATION.items()),
    *(OptimizerSpec(f"polargrad_{key}", f"PolarGrad (polar-first, exact ν), {factor.label}",
                    _polargrad(factor, polar_first=True, scale="nuclear_exact"),
                    {k: v for k, v in _PG_PF_LR.items() if k in _LM},
                    weight_decay=0.01, hybrid=True, polar=factor) for key, factor in ABLATION.items()),
    *(OptimizerSpec(name, label, _stiefel_muon(solver), dict(_STIEFEL_LR), hybrid=True, manifold=True)
      for name, label, solver in (("stiefel_muon", "StiefelMuon, fixed point", "fixed_point"),
                                  ("stiefel_dual", "StiefelMuon, dual ascent", "dual_ascent"),
                                  ("stiefel_admm", "StiefelMuon, ADMM", "admm"),
                                  ("spel", "MCSD/SPEL (StiefelMuon, one msign)", "spel"))),
    OptimizerSpec("rsgd", "Riemannian SGD (polar retraction)", _rsgd, dict(_RSGD_LR), betas=(0.8, 0.9, 0.95),
                  hybrid=True, manifold=True),
)}
