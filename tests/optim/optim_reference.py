"""Tiny hand-written float64 references of the optimizers' equations, one loop per paper.

Written from the equations (PolarGrad, arXiv 2505.21799; Muon, Keller Jordan 2024), not
from the package: the polar factor comes from the SVD and ν from the singular values, so the
identity ν = ⟨X, U⟩ = ‖X‖_* is checked too whenever the optimizer is compared against these.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MUON_QUINTIC = (3.4445, -4.7750, 2.0315)


def polar_svd(x: Tensor) -> Tensor:
    """U = P Qᵀ from X = P Σ Qᵀ."""
    p, _, qh = torch.linalg.svd(x, full_matrices=False)
    return p @ qh


def nuclear_norm(x: Tensor) -> Tensor:
    """‖X‖_* = Σ σᵢ."""
    return torch.linalg.svdvals(x).sum()


def as_matrix(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def polargrad(w0: Tensor, grads: list[Tensor], *, lr: float, beta: float, wd: float, nesterov: bool,
              polar_first: bool, scale: str) -> tuple[Tensor, Tensor]:
    """PolarGrad on one parameter; returns (W, M) after all steps."""
    w, m = w0.clone(), torch.zeros_like(w0)
    rows, cols = w0.shape[0], math.prod(w0.shape[1:])
    for g in grads:
        if polar_first:
            u = polar_svd(as_matrix(g)).reshape(g.shape)
            nu = nuclear_norm(as_matrix(g))
            m = beta * m + (1 - beta) * u
            d = (1 - beta) * u + beta * m if nesterov else m
        else:
            m = beta * m + (1 - beta) * g
            x = (1 - beta) * g + beta * m if nesterov else m
            d = polar_svd(as_matrix(x)).reshape(x.shape)
            nu = nuclear_norm(as_matrix(x))
        if scale == "none":
            nu = 1.0
        elif scale == "rms":
            nu = 0.2 * math.sqrt(max(rows, cols))
        elif scale == "shape":
            nu = math.sqrt(max(1.0, rows / cols))
        w = (1 - lr * wd) * w - lr * nu * d
    return w, m


def newton_schulz_quintic(g: Tensor, steps: int) -> Tensor:
    """Muon's orthogonalization: X = G/‖G‖_F on the wide side, then X ← aX + (bS + cS²)X."""
    a, b, c = MUON_QUINTIC
    x = g.mT if g.shape[0] > g.shape[1] else g
    x = x / x.norm()
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * s @ s) @ x
    return x.mT if g.shape[0] > g.shape[1] else x


def muon(w0: Tensor, grads: list[Tensor], *, lr: float, beta: float, wd: float, nesterov: bool,
         steps: int, adjust_lr_fn: str | None) -> Tensor:
    """Muon on one parameter; returns W after all steps."""
    w, m = w0.clone(), torch.zeros_like(w0)
    rows, cols = w0.shape[0], math.prod(w0.shape[1:])
    ratio = 0.2 * math.sqrt(max(rows, cols)) if adjust_lr_fn == "match_rms_adamw" else math.sqrt(max(1, rows / cols))
    for g in grads:
        m = beta * m + (1 - beta) * g
        x = (1 - beta) * g + beta * m if nesterov else m
        o = newton_schulz_quintic(as_matrix(x), steps).reshape(x.shape)
        w = (1 - lr * wd) * w - lr * ratio * o
    return w
