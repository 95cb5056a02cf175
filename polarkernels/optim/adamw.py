"""The AdamW update for the parameters that are not matrices (Loshchilov & Hutter, ICLR 2019).

    t ← t + 1
    θ ← (1 − ηλ) θ                                  decoupled weight decay
    m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²
    θ ← θ − η/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)

in torch.optim.AdamW's operation order (``foreach=False``), so the fallback groups of
PolarGrad and Muon reproduce torch's AdamW bitwise (for parameters whose moments share their
dtype). The moments may be wider than the parameter (float32 for bfloat16 weights): the
gradient is widened to them, and the final update rounds once into the parameter.
"""

from __future__ import annotations

import torch
from torch import Tensor


def init_adamw_state(state: dict, p: Tensor, dtype: torch.dtype | None = None) -> None:
    """Zero moments (in ``dtype``, default ``p``'s) and step count (a float32 CPU tensor), under
    torch.optim.AdamW's names."""
    state["step"] = torch.tensor(0.0, dtype=torch.float32)
    state["exp_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
    state["exp_avg_sq"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)


def adamw_update(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: Tensor, *,
                 lr: float | Tensor, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """One AdamW step on plain (local) tensors, in place; the module docstring has the equations."""
    step += 1
    grad = grad.to(exp_avg.dtype)
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    # Eager: a Python number, for torch's exact rounding. Compiled: stay a tensor, as torch's
    # own AdamW does (a float from .item() makes Dynamo recompile per step).
    t = step if torch.compiler.is_compiling() else step.item()
    bias_correction1 = 1 - beta1**t
    bias_correction2 = 1 - beta2**t
    denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-(lr / bias_correction1))
