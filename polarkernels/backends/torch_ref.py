"""The three primitives of one polynomial step, in plain torch: the reference for every kernel.

One step of eq. (1) in :mod:`polarkernels.schedules`, on a wide X (m ≤ n), is

    S = X Xᴴ                    gram(X)          Hermitian m×m (X Xᵀ for real X)
    B = b S + c S²              poly(S, b, c)    symmetric m×m
    X ← a X + B X               apply(B, X, a)

Every backend (Triton, CUDA) implements these three functions with the same names, signatures
and semantics; its tests compare against this module. All take batched ``(..., m, n)`` inputs,
return a fresh tensor of the input dtype and never write to their arguments.
"""

from __future__ import annotations

import torch
from torch import Tensor

NAME = "torch"


def gram(x: Tensor) -> Tensor:
    """S = X Xᴴ (X Xᵀ for real X), shape (..., m, m)."""
    return x @ x.mH


def poly(s: Tensor, b: float, c: float) -> Tensor:
    """B = b S + c S² for Hermitian S (c = 0 gives the cubic step's B = b S)."""
    if c == 0.0:
        return s * b
    s3 = _as_batch(s)
    return torch.baddbmm(s3, s3, s3, beta=b, alpha=c).reshape(s.shape)


def apply(bmat: Tensor, x: Tensor, a: float) -> Tensor:
    """X' = a X + B X."""
    x3 = _as_batch(x)
    return torch.baddbmm(x3, _as_batch(bmat), x3, beta=a, alpha=1.0).reshape(x.shape)


def _as_batch(t: Tensor) -> Tensor:
    """(..., m, n) viewed as (batch, m, n); explicit batch size, so empty matrices work too."""
    return t.reshape(t.shape[:-2].numel(), *t.shape[-2:])
