"""PolarGrad (Lau, Long and Su, "PolarGrad", arXiv 2505.21799) as a torch.optim optimizer.

The class also carries the machinery :class:`~polarkernels.optim.Muon` reuses: an AdamW group
for non-matrix parameters in the same object, matrix views of N-d weights (:mod:`.views`), one batched
``orthogonalize_many`` call per group, distributed polar factors, all-or-nothing steps.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from .. import api
from .adamw import adamw_update, init_adamw_state
from .distributed import (DTensor, Layout, layout_of, local, orthogonalize_replicated,
                          orthogonalize_sharded, sum_over_groups)
from .grad_checks import NONFINITE, NonFiniteGradientError, all_finite, check_grad_kinds, nonfinite_message
from .param_groups import (ADAMW, POLAR, POLAR_KEYS, build_groups, check_group_keys,
                           check_hyperparameters, keys_for)
from .views import MatrixView

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

#: Moonlight's target update RMS (Liu et al., "Muon is Scalable for LLM Training", 2025): the
#: RMS of AdamW's update in practice; an m×n polar factor has RMS 1/√max(m, n).
MOONLIGHT_RMS = 0.2


def shape_scale(scale: str, rows: int, cols: int) -> float:
    """ν that depends on the shape only: Moonlight's "rms", Keller Jordan's "shape", or "none"."""
    if scale == "rms":
        return MOONLIGHT_RMS * math.sqrt(max(rows, cols))      # RMS(ν U) = 0.2 for exact U
    if scale == "shape":
        return math.sqrt(max(1.0, rows / cols))                # Muon: √max(1, m/n)
    return 1.0


def nuclear_scale(x: Tensor, u: Tensor) -> Tensor:
    """ν = ⟨X, U⟩ = tr(Uᵀ X) = tr H = ‖X‖_* for U = polar(X): no SVD needed (Lau, Long and Su).

    Summed in float32 (float64 for float64 inputs); a 0-d tensor, the partial sum for a slice.
    """
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (x.to(wide) * u.to(wide)).sum()


class PolarGrad(Optimizer):
    r"""PolarGrad: steps along the polar factor of the momentum, scaled by its nuclear norm.

    For each matrix W of a parameter's :class:`~polarkernels.optim.MatrixView` (the parameter
    itself if 2-D; conv kernels flattened; each expert, Q/K/V block or head) with gradient G:

    .. math::
       \begin{aligned}
       &\textbf{momentum first (default)}                                                      \\
       &\quad M \leftarrow \beta M + (1-\beta) G, \qquad
             X = \begin{cases} (1-\beta) G + \beta M & \text{nesterov} \\ M & \text{else}\end{cases} \\
       &\quad U = \operatorname{polar}(X), \qquad \nu = \langle X, U\rangle = \|X\|_* = \operatorname{tr} H \\
       &\quad W \leftarrow (1 - \eta\lambda)\, W - \eta\, \nu\, U                                  \\[1ex]
       &\textbf{polar first} \ (\texttt{polar\_first=True}, \text{ the official code's variant})\\
       &\quad U = \operatorname{polar}(G), \qquad \nu = \langle G, U\rangle = \|G\|_*             \\
       &\quad M \leftarrow \beta M + (1-\beta) U, \qquad
             D = \begin{cases} (1-\beta) U + \beta M & \text{nesterov} \\ M & \text{else}\end{cases} \\
       &\quad W \leftarrow (1 - \eta\lambda)\, W - \eta\, \nu\, D
       \end{aligned}

    ``scale`` chooses ν: ``"nuclear"`` (above; null-gradient consistent: the step vanishes with
    the gradient, which Muon's does not), ``"none"`` (ν = 1, plain polar descent), ``"rms"``
    (ν = 0.2·√max(m, n), Moonlight's AdamW-matched update RMS) or ``"shape"`` (ν = √max(1, m/n),
    Keller Jordan's Muon). ``polar`` is :func:`polarkernels.orthogonalize` with ``method``,
    ``steps``, ``dtype`` and ``backend``; parameters of equal shape go through one batched call.

    Parameters with fewer than 2 dimensions (biases, norm gains) take AdamW in the same object
    (one ``step()``, one ``state_dict()``), with ``adamw_*`` hyperparameters; pass groups with
    ``"algorithm": "polar" | "adamw"`` (e.g. from :func:`~polarkernels.optim.split_params`) to
    choose per parameter, and to send embeddings and the output head to AdamW. A polar group's
    ``"view"`` (a :class:`~polarkernels.optim.MatrixView`; ``split_params`` sets it for expert
    stacks and for its ``views=`` patterns) says which matrices of each parameter are
    orthogonalized, each with its own ν.

    Args:
        params: parameters or param groups, as for any torch optimizer (named parameters too).
        lr: η for the polar groups (and AdamW groups unless ``adamw_lr`` is given).
        momentum: β ∈ [0, 1).
        weight_decay: λ, decoupled (AdamW-style, multiplied by η).
        nesterov: use the Nesterov blend above.
        polar_first: orthogonalize the gradient, then average (see above).
        scale: "nuclear" | "none" | "rms" | "shape".
        method, steps, dtype, backend: passed to :func:`polarkernels.orthogonalize`.
        adamw_lr, adamw_weight_decay: for AdamW groups; ``None`` means ``lr``/``weight_decay``.
        adamw_betas, adamw_eps: for AdamW groups (torch.optim.AdamW's defaults).
        nonfinite: "raise" (default) raises :class:`NonFiniteGradientError` when any gradient
            holds NaN/inf, or "skip" to skip such steps (counted in ``skipped_steps``); either way
            no parameter or state is touched.
        process_group: for DDP (every rank holds the same gradients, and steps the same
            parameters): share the polar factors out among this group's ranks, all-gather them. DTensor (FSDP2) parameters are
            handled whatever this is: the owner rank gathers each matrix and scatters U back.

    Sparse gradients and complex parameters raise. Checkpoint with ``state_dict()`` /
    ``load_state_dict()`` as usual: resuming reproduces the uninterrupted run bitwise.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, momentum: float = 0.95,
                 weight_decay: float = 0.0, *, nesterov: bool = False, polar_first: bool = False,
                 scale: str = "nuclear", method: str = "polar_express", steps: int = 5,
                 dtype: torch.dtype | None = None, backend: str = "auto",
                 adamw_lr: float | None = None, adamw_betas: tuple[float, float] = (0.9, 0.999),
                 adamw_eps: float = 1e-8, adamw_weight_decay: float | None = None,
                 nonfinite: str = "raise", process_group: ProcessGroup | None = None) -> None:
        if nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite must be one of {NONFINITE}, got {nonfinite!r}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                        polar_first=polar_first, scale=scale, method=method, steps=steps, dtype=dtype,
                        backend=backend, view=None, adamw_lr=adamw_lr, adamw_betas=adamw_betas,
                        adamw_eps=adamw_eps, adamw_weight_decay=adamw_weight_decay)
        check_hyperparameters({"algorithm": POLAR, **{k: defaults[k] for k in POLAR_KEYS}})
        check_hyperparameters({"algorithm": ADAMW, "lr": adamw_lr if adamw_lr is not None else lr,
                               "weight_decay": weight_decay if adamw_weight_decay is None else adamw_weight_decay,
                               "betas": adamw_betas, "eps": adamw_eps})
        self.nonfinite = nonfinite
        self.process_group = process_group
        self.skipped_steps = 0
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; without ``"algorithm"`` it splits into a polar and an AdamW group."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        for group in build_groups(param_group, self.defaults):
            given = set(group)
            super().add_param_group(group)
            # torch filled in every default; keep only the keys this group's algorithm reads.
            for key in set(self.defaults) - given - set(keys_for(group["algorithm"])):
                group.pop(key)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One step for every group; all-or-nothing (see ``nonfinite``). Returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._collect()
        grads = [g for _, _, gs, _ in work for g in gs]
        if not all_finite(grads):
            if self.nonfinite == "skip":
                self.skipped_steps += 1
                return loss
            names = [name for _, _, _, ns in work for name in ns]
            raise NonFiniteGradientError(nonfinite_message(names, grads))
        for group, params, grads, _ in work:
            self._step_group(group, params, grads)
        return loss

    def _check_group(self, group: dict, index: int) -> None:
        """Raise for a group this optimizer cannot step; subclasses with more algorithms extend it."""
        check_group_keys(group, index)

    def _step_group(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        """Step one group by its algorithm; subclasses with more algorithms extend it."""
        if group["algorithm"] == ADAMW:
            self._adamw_step(group, params, grads)
        else:
            self._polar_step(group, params, grads)

    def _collect(self) -> list[tuple[dict, list[Tensor], list[Tensor], list[str]]]:
        """(group, params with grad, grads, names) per group, after every check that can fail."""
        work = []
        for i, group in enumerate(self.param_groups):
            self._check_group(group, i)
            params, grads, names = [], [], []
            for j, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                name = (group["param_names"][j] if "param_names" in group
                        else f"param_groups[{i}]['params'][{j}] (shape {tuple(p.shape)})")
                check_grad_kinds(p, p.grad, name)
                if isinstance(p, DTensor) and (not isinstance(p.grad, DTensor) or p.grad.placements != p.placements):
                    raise RuntimeError(f"{name}: the gradient of a DTensor parameter must be a DTensor with "
                                       f"the same placements {p.placements}")
                params.append(p)
                grads.append(p.grad)
                names.append(name)
            work.append((group, params, grads, names))
        return work

    def _adamw_step(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        beta1, beta2 = group["betas"]
        for p, g in zip(params, grads):
            state = self.state[p]
            if not state:
                init_adamw_state(state, p)
            adamw_update(local(p), local(g), local(state["exp_avg"]), local(state["exp_avg_sq"]),
                         state["step"], lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                         weight_decay=group["weight_decay"])

    def _polar_step(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        beta, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
        nesterov, polar_first = group["nesterov"], group["polar_first"]
        view = MatrixView.from_spec(group["view"])
        bufs, xs, layouts, shapes, counts = [], [], [], [], []
        for p, g in zip(params, grads):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf, g = local(state["momentum_buffer"]), local(g)
            if polar_first:
                x = g
            else:
                buf.lerp_(g, 1 - beta)                             # M ← βM + (1−β)G
                x = g.lerp(buf, beta) if nesterov else buf         # (1−β)G + βM
            layout = layout_of(p, self.process_group)
            if layout.kind == "sharded" and not view.is_default:
                raise NotImplementedError(f"a sharded parameter of shape {tuple(p.shape)} takes the default "
                                          f"matrix view only, not {view}")
            mats = view.to_matrices(x)
            bufs.append(buf)
            xs += mats
            layouts += [layout] * len(mats)
            shapes += view.matrix_shapes(p.shape)                  # global (m, n), also for shards
            counts.append(len(mats))
        us = self._orthogonalize(xs, layouts, group)
        nus = self._scales(xs, us, shapes, layouts, group["scale"])
        start = 0
        for p, buf, k in zip(params, bufs, counts):
            u_mats, nu_mats = us[start:start + k], nus[start:start + k]
            start += k
            u = view.from_matrices(u_mats, buf.shape)
            if polar_first:
                buf.lerp_(u, 1 - beta)                             # M ← βM + (1−β)U
                d = u.lerp(buf, beta) if nesterov else buf
            else:
                d = u
            w = local(p)
            w.mul_(1 - lr * wd)                                    # W ← (1 − ηλ)W
            if k == 1 and isinstance(nu_mats[0], Tensor):
                w.add_(d * nu_mats[0].to(d.dtype), alpha=-lr)      # W ← W − η ν D
            elif k == 1:
                w.add_(d, alpha=-(lr * nu_mats[0]))
            else:                                                  # ν per matrix of the view
                scaled = [m * (nu.to(m.dtype) if isinstance(nu, Tensor) else nu)
                          for m, nu in zip(view.to_matrices(d), nu_mats)]
                w.add_(view.from_matrices(scaled, buf.shape), alpha=-lr)

    def _orthogonalize(self, mats: list[Tensor], layouts: list[Layout], group: dict) -> list[Tensor]:
        """U for every matrix, batched per layout (local, replicated per group, sharded)."""
        orth = functools.partial(api.orthogonalize_many, method=group["method"], steps=group["steps"],
                                 dtype=group["dtype"], backend=group["backend"])
        out: list[Tensor | None] = [None] * len(mats)
        parts: dict[tuple, list[int]] = {}
        for i, lay in enumerate(layouts):
            parts.setdefault((lay.kind, id(lay.group)), []).append(i)
        for (kind, _), idx in parts.items():
            sub = [mats[i] for i in idx]
            if kind == "local":
                us = orth(sub)
            elif kind == "replicated":
                us = orthogonalize_replicated(sub, orth, layouts[idx[0]].group)
            else:
                us = orthogonalize_sharded(sub, [layouts[i].sharding for i in idx], orth)
            for i, u in zip(idx, us):
                out[i] = u
        return out  # type: ignore[return-value]

    @staticmethod
    def _scales(xs: Sequence[Tensor], us: Sequence[Tensor], shapes: Sequence[tuple[int, int]],
                layouts: Sequence[Layout], scale: str) -> list[Tensor | float]:
        """ν per matrix: a 0-d tensor for "nuclear" (summed over shards), else a float."""
        if scale == "nuclear":
            partial = [nuclear_scale(x, u) for x, u in zip(xs, us)]
            return sum_over_groups(partial, [lay.group if lay.kind == "sharded" else None for lay in layouts])
        return [shape_scale(scale, m, n) for m, n in shapes]
