"""Checks on the gradients of a step, all made before the step mutates anything.

A step either updates every parameter and every state buffer, or (on a bad gradient) none:
:func:`check_grad_kinds` rejects sparse and complex gradients, :func:`all_finite` tests every
gradient of every group with one fused reduction and one host synchronisation (agreed across
ranks for sharded gradients, so that no rank enters a collective another rank skips).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .distributed import local, mesh_group

NONFINITE = ("raise", "skip", "propagate")


class NonFiniteGradientError(RuntimeError):
    """A gradient holds NaN or ±inf; no parameter or state was modified."""


def check_grad_kinds(p: Tensor, grad: Tensor, where: str) -> None:
    """Raise ``RuntimeError`` for a sparse or complex gradient of parameter ``where``."""
    if grad.is_sparse:
        raise RuntimeError(f"{where}: sparse gradients are not supported (shape {tuple(p.shape)}); "
                           f"use a dense gradient, e.g. nn.Embedding(sparse=False)")
    if torch.is_complex(grad) or torch.is_complex(p):
        raise RuntimeError(f"{where}: complex parameters/gradients are not supported "
                           f"(dtype {grad.dtype})")


def all_finite(grads: Sequence[Tensor]) -> bool:
    """True when every gradient is finite: one fused reduction and one host synchronisation.

    ``torch._foreach_norm(·, ∞)`` gives max|g| of every gradient in one multi-tensor kernel per
    device and dtype (NaN and ±inf propagate into it; a finite max never overflows), then one
    ``isfinite(...).all()`` and one ``.item()``. Sharded (DTensor) gradients see only their local
    shard, so the verdict is reduced (MIN) over each mesh's process group: every rank then agrees
    to step or not.
    """
    if not grads:
        return True
    device = local(grads[0]).device
    nonempty = [t for t in map(local, grads) if t.numel()]          # ∞-norm has no identity for empty
    maxima = torch._foreach_norm(nonempty, math.inf) if nonempty else []
    verdict = torch.isfinite(torch.stack([m.to(device, torch.float32) for m in maxima])).all() if maxima \
        else torch.ones((), dtype=torch.bool, device=device)         # a rank holding only empty shards
    verdict = verdict.to(torch.int32).reshape(1)
    groups = {id(grp): (grp, local(g).device) for g in grads if (grp := mesh_group(g)) is not None}
    for grp, grp_device in groups.values():
        verdict = verdict.to(grp_device)
        dist.all_reduce(verdict, op=dist.ReduceOp.MIN, group=grp)
    return bool(verdict.item())


def nonfinite_message(names: Sequence[str], grads: Sequence[Tensor]) -> str:
    """Name the parameters whose (local) gradient is not finite; called only on the error path."""
    bad = [name for name, g in zip(names, grads) if not bool(torch.isfinite(local(g)).all())]
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    where = shown or "a shard on another rank"
    return (f"non-finite gradient (NaN or inf) in {where}; no parameter or optimizer state was "
            f"modified. Pass nonfinite='skip' to skip such steps instead of raising.")
