"""Muon (Keller Jordan, 2024; ``torch.optim.Muon``) on polarkernels' ``orthogonalize``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ..schedules import MUON_NORM_EPS, MUON_QUINTIC
from .param_groups import ADAMW, POLAR
from .polargrad import PolarGrad

#: torch.optim.Muon's ``adjust_lr_fn`` → PolarGrad's ``scale``.
ADJUST_LR_SCALES = {None: "shape", "original": "shape", "match_rms_adamw": "rms"}
#: torch.optim.Muon's defaults for the iteration (its ``DEFAULT_NS_STEPS`` and the constants above).
MUON_NS_STEPS = 5
#: The polar-group keys Muon adds to PolarGrad's: torch.optim.Muon's iteration parameters.
MUON_KEYS = ("ns_coefficients", "ns_eps")
#: The AdamW part's defaults: KellerJordan/Muon's ``MuonWithAuxAdam`` (lr 3e-4, betas (0.9, 0.95),
#: eps 1e-10, no weight decay), never Muon's own lr and weight decay.
AUX_ADAMW = dict(adamw_lr=3e-4, adamw_betas=(0.9, 0.95), adamw_eps=1e-10, adamw_weight_decay=0.0)
#: Keys of a torch.optim.Muon param group.
TORCH_MUON_KEYS = ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps",
                   "adjust_lr_fn")


class Muon(PolarGrad):
    r"""Muon: SGD-momentum whose matrix updates are replaced by their (approximate) polar factor.

    For each matrix W ∈ ℝ^{m×n} of a parameter's :class:`~polarkernels.optim.MatrixView` with
    gradient G:

    .. math::
       \begin{aligned}
       &M \leftarrow \beta M + (1-\beta) G, \qquad
        X = \begin{cases} (1-\beta) G + \beta M & \text{nesterov (default)} \\ M & \text{else}\end{cases} \\
       &X_0 = X / \max(\|X\|_F, \varepsilon), \qquad
        X_{k+1} = a X_k + (b S_k + c S_k^2) X_k, \quad S_k = X_k X_k^\top
            \quad (k < \texttt{ns\_steps}) \\
       &W \leftarrow (1 - \eta\lambda)\, W - \eta\, s\, O, \qquad
        s = \begin{cases} \sqrt{\max(1, m/n)} & \texttt{adjust\_lr\_fn="original"} \\
                          0.2\sqrt{\max(m, n)} & \texttt{adjust\_lr\_fn="match\_rms\_adamw"}
            \end{cases}
       \end{aligned}

    with O the last iterate and (a, b, c) = ``ns_coefficients``, (3.4445, −4.7750, 2.0315) by
    default. This is :class:`PolarGrad` with ``scale="shape"`` or ``"rms"``, Nesterov momentum and
    Muon's quintic (``method="muon"``; another ``method`` replaces the iteration); everything else
    (matrix views, AdamW groups, batching, distributed use, checkpoints, non-finite gradients)
    is PolarGrad's. The step does not vanish with the gradient (O has singular values near 1 for
    any nonzero X): see PolarGrad.

    **torch.optim.Muon compatibility.** The positional arguments and their defaults are
    ``torch.optim.Muon``'s (``lr``, ``weight_decay``, ``momentum``, ``nesterov``,
    ``ns_coefficients``, ``eps``, ``ns_steps``, ``adjust_lr_fn``); ``lr`` may be a one-element
    tensor. ``load_state_dict`` accepts a ``torch.optim.Muon`` state_dict (its momentum buffers
    and hyperparameters; the loaded groups iterate in bfloat16, as torch's always does). Exactly
    where the two agree:

    - *Bitwise*, step for step, with ``dtype=torch.bfloat16`` (or after loading torch's
      state_dict) on CPU tensors with ``backend="auto"`` or ``"torch"``: the same normalisation
      X / max(‖X‖_F, eps) in bfloat16, the same products in the same order, the same
      ``lr * adjust`` factor and decay (tests/optim/test_muon.py checks 10 steps, and a resumed
      run). A tensor ``lr`` agrees bitwise too.
    - *Not bitwise* on CUDA when ``backend="auto"`` picks the Triton or CUDA kernels (fused
      products, another summation order: the results agree to bfloat16 rounding, not bit for
      bit); ``backend="torch"`` runs torch's own matmuls there. With the default ``dtype=None``
      the iteration runs in float32 on CPU (more accurate, not torch's trajectory).
    - Beyond torch: N-d weights through their matrix view (torch refuses them), and < 2-D
      parameters in an AdamW group with **their own defaults** (KellerJordan/Muon's
      ``MuonWithAuxAdam``: lr 3e-4, betas (0.9, 0.95), eps 1e-10, weight decay 0), never Muon's
      lr and weight decay; set ``adamw_lr`` etc. to choose (Moonlight's recipe, with
      ``adjust_lr_fn="match_rms_adamw"``, uses ``adamw_lr=lr, adamw_weight_decay=weight_decay``).

    Args:
        params: parameters or param groups (≥ 2-D → Muon, the rest → AdamW by default).
        lr, weight_decay, momentum, nesterov: as torch.optim.Muon (same defaults).
        ns_coefficients: (a, b, c) of every step; another value than Muon's needs ``method="muon"``.
        eps: the floor of ‖X‖_F in X₀ (torch.optim.Muon's; ``method="muon"`` only).
        ns_steps: number of steps (``steps`` is accepted as PolarGrad's name for it).
        adjust_lr_fn: None / "original" (Keller Jordan) or "match_rms_adamw" (Moonlight).
        method, dtype, backend: passed to :func:`polarkernels.orthogonalize`.
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: the AdamW part (defaults above).
        **kwargs: ``nonfinite``, ``state_dtype``, ``process_group``: see :class:`PolarGrad`.
    """

    def __init__(self, params: ParamsT, lr: float | Tensor = 1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple[float, float, float] = MUON_QUINTIC, eps: float = MUON_NORM_EPS,
                 ns_steps: int = MUON_NS_STEPS, adjust_lr_fn: str | None = None, *, method: str = "muon",
                 steps: int | None = None, dtype: torch.dtype | None = None, backend: str = "auto",
                 adamw_lr: float | Tensor = AUX_ADAMW["adamw_lr"],
                 adamw_betas: tuple[float, float] = AUX_ADAMW["adamw_betas"],
                 adamw_eps: float = AUX_ADAMW["adamw_eps"],
                 adamw_weight_decay: float = AUX_ADAMW["adamw_weight_decay"], **kwargs: Any) -> None:
        if adjust_lr_fn not in ADJUST_LR_SCALES:
            raise ValueError(f"adjust_lr_fn must be one of {tuple(ADJUST_LR_SCALES)}, got {adjust_lr_fn!r}")
        if steps is not None and steps != ns_steps and ns_steps != MUON_NS_STEPS:
            raise ValueError(f"steps={steps!r} and ns_steps={ns_steps!r} name the same thing; give one")
        self._muon_defaults = {"ns_coefficients": ns_coefficients, "ns_eps": eps}
        check_muon_keys({"method": method, **self._muon_defaults})
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                         polar_first=False, scale=ADJUST_LR_SCALES[adjust_lr_fn], method=method,
                         steps=ns_steps if steps is None else steps, dtype=dtype, backend=backend,
                         adamw_lr=adamw_lr, adamw_betas=adamw_betas, adamw_eps=adamw_eps,
                         adamw_weight_decay=adamw_weight_decay, **kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """PolarGrad's, plus ``ns_coefficients`` and ``ns_eps`` in every polar group."""
        start = len(self.param_groups)
        super().add_param_group(param_group)
        for group in self.param_groups[start:]:
            if group["algorithm"] == POLAR:
                for key in MUON_KEYS:
                    group.setdefault(key, self._muon_defaults[key])
                check_muon_keys(group)
            elif group["algorithm"] == ADAMW:
                for key in MUON_KEYS:
                    group.pop(key, None)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of this class, or of ``torch.optim.Muon`` (see the class docstring)."""
        groups = state_dict["param_groups"]
        if groups and all("algorithm" not in g and "ns_steps" in g for g in groups):
            if len(groups) != len(self.param_groups):
                raise ValueError(f"the torch.optim.Muon state_dict has {len(groups)} param groups, this "
                                 f"optimizer {len(self.param_groups)}; build it from the same parameter list")
            groups = [from_torch_muon_group(g, ours) for g, ours in zip(groups, self.param_groups)]
            state_dict = {**state_dict, "param_groups": groups}
        super().load_state_dict(state_dict)

def check_muon_keys(group: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming a bad ``ns_coefficients`` / ``ns_eps`` of a polar group."""
    coefficients, eps = group["ns_coefficients"], group["ns_eps"]
    if not (isinstance(coefficients, Sequence) and len(coefficients) == 3
            and all(isinstance(c, float | int) and not isinstance(c, bool) for c in coefficients)):
        raise ValueError(f"ns_coefficients must be three numbers (a, b, c), got {coefficients!r}")
    if isinstance(eps, bool) or not isinstance(eps, float | int) or not eps >= 0:
        raise ValueError(f"eps must be a number ≥ 0, got {eps!r}")
    if group["method"] != "muon" and (tuple(coefficients) != MUON_QUINTIC or eps != MUON_NORM_EPS):
        raise ValueError(f"ns_coefficients and eps set Muon's own iteration (method='muon'); method "
                         f"{group['method']!r} has its own")


def from_torch_muon_group(theirs: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """A ``torch.optim.Muon`` param group as a Muon polar group: torch's hyperparameters, with
    this optimizer's other settings (view, backend) and bfloat16 iteration, as torch's."""
    if ours["algorithm"] != POLAR:
        raise ValueError("a torch.optim.Muon param group can only load into a polar group (torch's Muon "
                         "holds matrices only); build this optimizer from the same parameter list")
    if theirs["adjust_lr_fn"] not in ADJUST_LR_SCALES:
        raise ValueError(f"adjust_lr_fn {theirs['adjust_lr_fn']!r} of the torch.optim.Muon state_dict is not "
                         f"one of {tuple(ADJUST_LR_SCALES)}")
    extra = {k: v for k, v in theirs.items() if k not in TORCH_MUON_KEYS}    # "params", "initial_lr", …
    group = {k: v for k, v in ours.items() if k != "params"}
    group.update(lr=theirs["lr"], weight_decay=theirs["weight_decay"], momentum=theirs["momentum"],
                 nesterov=theirs["nesterov"], steps=theirs["ns_steps"], scale=ADJUST_LR_SCALES[theirs["adjust_lr_fn"]],
                 method="muon", dtype=torch.bfloat16, polar_first=False,
                 ns_coefficients=tuple(theirs["ns_coefficients"]), ns_eps=theirs["eps"], **extra)
    check_muon_keys(group)
    return group
