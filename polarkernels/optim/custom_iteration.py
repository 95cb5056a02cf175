"""``orthogonalize_many`` for a caller's own coefficients (torch.optim.Muon's ``ns_coefficients``).

:func:`polarkernels.orthogonalize` runs the package's named schedules; torch.optim.Muon lets a
user pick any quintic (a, b, c) and the ε of its normalisation X / max(‖X‖_F, ε). Such a
schedule runs here, through the same loop (:func:`polarkernels.iterate.run`) and backends.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import backends, iterate
from ..schedules import Coeffs, Schedule


def muon_schedule(coefficients: Coeffs, steps: int, eps: float) -> Schedule:
    """``steps`` steps of (a, b, c) after Muon's normalisation X / max(‖X‖_F, eps)."""
    return Schedule("muon", (tuple(coefficients),) * steps, norm_eps=eps)


def orthogonalize_schedule_many(mats: Sequence[Tensor], schedule: Schedule, dtype: torch.dtype | None,
                                backend: str) -> list[Tensor]:
    """U = ``schedule``'s iterate for every matrix: batched per shape, on the wide side, in
    ``dtype`` (default: bfloat16 on CUDA, float32 on CPU, as ``orthogonalize``), returned in each
    matrix's dtype. With Muon's own coefficients this is ``orthogonalize_many(method="muon")``."""
    by_shape: dict[tuple, list[int]] = {}
    for i, x in enumerate(mats):
        by_shape.setdefault((tuple(x.shape), x.dtype, x.device), []).append(i)
    out: list[Tensor | None] = [None] * len(mats)
    for idx in by_shape.values():
        x = torch.stack([mats[i] for i in idx])
        w = x.to(dtype or (torch.bfloat16 if x.is_cuda else torch.float32))
        tall = w.shape[-2] > w.shape[-1]
        w = w.mT if tall else w
        ops = backends.get_ops(backends.resolve(backend, w))
        u = iterate.run(iterate.normalize(w, schedule), schedule, ops).u
        for i, ui in zip(idx, (u.mT if tall else u).to(x.dtype).unbind(0)):
            out[i] = ui
    return out  # type: ignore[return-value]
