"""Muon (Keller Jordan, 2024; ``torch.optim.Muon``) on polarkernels' ``orthogonalize``."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.optimizer import ParamsT

from .polargrad import PolarGrad

#: torch.optim.Muon's ``adjust_lr_fn`` → PolarGrad's ``scale``.
ADJUST_LR_SCALES = {None: "shape", "original": "shape", "match_rms_adamw": "rms"}


class Muon(PolarGrad):
    r"""Muon: SGD-momentum whose matrix updates are replaced by their (approximate) polar factor.

    For each matrix W ∈ ℝ^{m×n} of a parameter's :class:`~polarkernels.optim.MatrixView` with gradient G:

    .. math::
       \begin{aligned}
       &M \leftarrow \beta M + (1-\beta) G, \qquad
        X = \begin{cases} (1-\beta) G + \beta M & \text{nesterov (default)} \\ M & \text{else}\end{cases} \\
       &O = \operatorname{orthogonalize}(X) \quad \text{(5 steps of } (3.4445, -4.7750, 2.0315)
            \text{ by default)} \\
       &W \leftarrow (1 - \eta\lambda)\, W - \eta\, s\, O, \qquad
        s = \begin{cases} \sqrt{\max(1, m/n)} & \texttt{adjust\_lr\_fn="original"} \\
                          0.2\sqrt{\max(m, n)} & \texttt{adjust\_lr\_fn="match\_rms\_adamw"}
            \end{cases}
       \end{aligned}

    This is :class:`PolarGrad` with ``scale="shape"`` or ``"rms"``, Nesterov momentum and
    Muon's quintic; everything else (AdamW groups, batching, distributed use, checkpoints,
    non-finite gradients) is PolarGrad's. With ``dtype=torch.bfloat16`` it follows the
    trajectory of ``torch.optim.Muon`` (which always iterates in bfloat16); the default
    ``dtype=None`` iterates in bfloat16 on CUDA and float32 on CPU. The step does not vanish
    with the gradient (O has singular values near 1 for any nonzero X): see PolarGrad.

    Args:
        params: parameters or param groups (≥ 2-D → Muon, the rest → AdamW by default).
        lr, weight_decay, momentum, nesterov: as torch.optim.Muon (same defaults).
        method, steps, dtype, backend: passed to :func:`polarkernels.orthogonalize`.
        adjust_lr_fn: None / "original" (Keller Jordan) or "match_rms_adamw" (Moonlight).
        **kwargs: ``adamw_*``, ``nonfinite``, ``process_group``: see :class:`PolarGrad`.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True, *, method: str = "muon", steps: int = 5,
                 dtype: torch.dtype | None = None, backend: str = "auto", adjust_lr_fn: str | None = None,
                 **kwargs: Any) -> None:
        if adjust_lr_fn not in ADJUST_LR_SCALES:
            raise ValueError(f"adjust_lr_fn must be one of {tuple(ADJUST_LR_SCALES)}, got {adjust_lr_fn!r}")
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                         polar_first=False, scale=ADJUST_LR_SCALES[adjust_lr_fn], method=method, steps=steps,
                         dtype=dtype, backend=backend, **kwargs)
