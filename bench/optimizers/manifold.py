"""Riemannian SGD on the Stiefel manifold, the first-order baseline of the manifold optimizers.

The other manifold optimizers of the benchmark are :class:`polarkernels.optim.StiefelMuon` with
its solvers (``fixed_point``, ``dual_ascent``, ``admm``, ``spel``); this one steps along the
projected momentum itself, so its learning rate has the gradient's scale (not Muon's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from polarkernels import polar
from polarkernels.optim.stiefel_direction import project_tangent


class RiemannianSGD(torch.optim.Optimizer):
    r"""Heavy-ball SGD on St(m, n) with the polar retraction (a wide W is treated as Wᵀ):

    .. math::
       M \leftarrow \beta M + G, \qquad
       W \leftarrow \operatorname{polar}\bigl(W - \eta\, P_T(M)\bigr), \qquad
       P_T(M) = M - W \operatorname{sym}(W^\top M)

    (Absil, Mahony and Sepulchre, *Optimization Algorithms on Matrix Manifolds*, 2008, §4.2 and
    eq. 3.35 for the tangent projection). No weight decay: the norm is fixed on the manifold.
    """

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float = 0.9) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum))
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"RiemannianSGD takes matrices, got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"].mul_(group["momentum"]).add_(p.grad)
                tall = p.shape[0] >= p.shape[1]
                w, m = (p, buf) if tall else (p.mT, buf.mT)
                new = polar(w - group["lr"] * project_tangent(w, m))[0]
                p.copy_(new if tall else new.mT)
        return loss
