"""PolarGrad (Lau, Long and Su, "PolarGrad", arXiv 2505.21799) as a torch.optim optimizer.

The class also carries the machinery :class:`~polarkernels.optim.Muon` reuses: an AdamW group
for non-matrix parameters in the same object, matrix views of N-d weights (:mod:`.views`), one batched
``orthogonalize_many`` call per step (all polar groups together), distributed polar factors
(:mod:`.distributed`), all-or-nothing steps.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from .. import api
from ..schedules import MUON_NORM_EPS, MUON_QUINTIC
from .adamw import adamw_update, init_adamw_state
from .custom_iteration import muon_schedule, orthogonalize_schedule_many
from .distributed import DTensor, PolarJob, layout_of, local, polar_factors
from .grad_checks import NONFINITE, NonFiniteGradientError, all_finite, check_grad_kinds, nonfinite_message
from .owners import polar_flops
from .param_groups import (ADAMW, NUCLEAR_SCALES, POLAR, POLAR_KEYS, build_groups, check_group_keys,
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

    Summed in float32 (float64 for float64 inputs); a 0-d tensor. For an approximate U = p(X)
    it is Σσᵢ p(σᵢ/‖X‖): its accuracy is the iteration's, measured by ``python -m
    bench.nuclear_scale`` (bench/RESULTS.md, "PolarGrad's ν"): ν/‖X‖_* − 1 within ±0.2% for
    Polar Express with ≥ 6 steps in bfloat16 and float32 (the stated bound,
    :data:`~.param_groups.NUCLEAR_BOUND`, is 0.5%), −9.9% to +13% with its 5-step table, −31%
    to +8% for Muon's quintic (which never converges: −32% to +13% at 10 steps).
    """
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (x.to(wide) * u.to(wide)).sum()


def exact_nuclear_norm(x: Tensor) -> Tensor:
    """ν = ‖X‖_* = Σσᵢ from the singular values (``scale="nuclear_exact"``), in float32 or float64."""
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.linalg.svdvals(x.to(wide)).sum()


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
    the gradient, which Muon's does not), ``"nuclear_exact"`` (ν = ‖X‖_* from the singular
    values: exact, one SVD per matrix), ``"none"`` (ν = 1, plain polar descent), ``"rms"``
    (ν = 0.2·√max(m, n), Moonlight's AdamW-matched update RMS) or ``"shape"`` (ν = √max(1, m/n),
    Keller Jordan's Muon). ``polar`` is :func:`polarkernels.orthogonalize` with ``method``,
    ``steps``, ``dtype`` and ``backend``; parameters of equal shape go through one batched call.

    **ν means the nuclear norm.** With an approximate U, ⟨X, U⟩ = Σσᵢ p(σᵢ) is off from ‖X‖_*
    by the iteration's error. The default, 6 Polar Express steps, keeps it within 0.5%
    (measured ≤ 0.25% in bfloat16 and float32 on Gaussian, power-law, flat and low-rank spectra:
    ``python -m bench.nuclear_scale``, bench/RESULTS.md); 5 steps (the published table) were off
    by −9.9% to +13%, so fewer steps than the bound needs warn, and ``method="muon"`` (its
    quintic never converges: −31% to +8%) is refused under ``scale="nuclear"``.

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
        scale: "nuclear" | "nuclear_exact" | "none" | "rms" | "shape".
        method, steps, dtype, backend: passed to :func:`polarkernels.orthogonalize` (6 steps
            by default: see "ν means the nuclear norm").
        adamw_lr, adamw_weight_decay: for AdamW groups; ``None`` means ``lr``/``weight_decay``.
        adamw_betas, adamw_eps: for AdamW groups (torch.optim.AdamW's defaults).
        nonfinite: "raise" (default) raises :class:`NonFiniteGradientError` when any gradient
            holds NaN/inf, or "skip" to skip such steps (counted in ``skipped_steps``); either way
            no parameter or state is touched. The check is one fused reduction over every
            gradient and one host synchronisation per step; "propagate" turns it off (for users
            who guard elsewhere, e.g. a GradScaler): NaN/inf then flow into the step as in torch's
            optimizers, and the step never synchronises with the host.
        state_dtype: dtype of the momentum and AdamW moments; ``None`` (default): float32 for
            bfloat16/float16 parameters, the parameter's dtype otherwise. A loaded state_dict
            keeps the dtypes it was saved with.
        process_group: for DDP (every rank holds the same gradients, and steps the same
            parameters): share the polar factors out among this group's ranks, all-gather them.
            DTensor parameters (FSDP2, HSDP, tensor parallel) are handled whatever this is: each
            whole matrix is gathered on its owner rank and U's pieces are sent back
            (:mod:`polarkernels.optim.distributed`).

    Sparse gradients and complex parameters raise. Checkpoint with ``state_dict()`` /
    ``load_state_dict()`` as usual: resuming reproduces the uninterrupted run bitwise.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, momentum: float = 0.95,
                 weight_decay: float = 0.0, *, nesterov: bool = False, polar_first: bool = False,
                 scale: str = "nuclear", method: str = "polar_express", steps: int = 6,
                 dtype: torch.dtype | None = None, backend: str = "auto",
                 adamw_lr: float | None = None, adamw_betas: tuple[float, float] = (0.9, 0.999),
                 adamw_eps: float = 1e-8, adamw_weight_decay: float | None = None,
                 nonfinite: str = "raise", state_dtype: torch.dtype | None = None,
                 process_group: ProcessGroup | None = None) -> None:
        if nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite must be one of {NONFINITE}, got {nonfinite!r}")
        if state_dtype is not None and not (isinstance(state_dtype, torch.dtype) and state_dtype.is_floating_point):
            raise ValueError(f"state_dtype must be a floating torch.dtype or None, got {state_dtype!r}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                        polar_first=polar_first, scale=scale, method=method, steps=steps, dtype=dtype,
                        backend=backend, view=None, adamw_lr=adamw_lr, adamw_betas=adamw_betas,
                        adamw_eps=adamw_eps, adamw_weight_decay=adamw_weight_decay)
        check_hyperparameters({"algorithm": POLAR, **{k: defaults[k] for k in POLAR_KEYS}})
        check_hyperparameters({"algorithm": ADAMW, "lr": adamw_lr if adamw_lr is not None else lr,
                               "weight_decay": weight_decay if adamw_weight_decay is None else adamw_weight_decay,
                               "betas": adamw_betas, "eps": adamw_eps})
        self.nonfinite = nonfinite
        self.state_dtype = state_dtype
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
        if self.nonfinite != "propagate" and not all_finite(grads):
            if self.nonfinite == "skip":
                self.skipped_steps += 1
                return loss
            names = [name for _, _, _, ns in work for name in ns]
            raise NonFiniteGradientError(nonfinite_message(names, grads))
        # All polar groups at once: one owner assignment and one set of collectives per step.
        self._polar_step([(group, params, grads) for group, params, grads, _ in work if group["algorithm"] == POLAR])
        for group, params, grads, _ in work:
            if group["algorithm"] != POLAR:
                self._step_group(group, params, grads)
        return loss

    def _state_dtype(self, p: Tensor) -> torch.dtype:
        """The dtype of ``p``'s momentum / moments: ``state_dtype``, or float32 for 16-bit ``p``."""
        if self.state_dtype is not None:
            return self.state_dtype
        return torch.float32 if p.dtype in (torch.bfloat16, torch.float16) else p.dtype

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``, keeping every state tensor's saved dtype.

        torch casts floating state to the parameter's dtype, which would turn the float32
        momentum of a bfloat16 parameter into bfloat16: those tensors are put back as saved.
        """
        super().load_state_dict(state_dict)
        saved = itertools.chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        ours = itertools.chain.from_iterable(g["params"] for g in self.param_groups)
        for key, p in zip(saved, ours):
            state = self.state[p]
            for name, value in state_dict["state"].get(key, {}).items():
                if isinstance(value, Tensor) and name in state and state[name].dtype != value.dtype:
                    state[name] = value.to(device=state[name].device, copy=True)

    def _check_group(self, group: dict, index: int) -> None:
        """Raise for a group this optimizer cannot step; subclasses with more algorithms extend it."""
        check_group_keys(group, index)

    def _step_group(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        """Step one group by its algorithm; subclasses with more algorithms extend it."""
        if group["algorithm"] == ADAMW:
            self._adamw_step(group, params, grads)
        else:
            self._polar_step([(group, params, grads)])

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
                init_adamw_state(state, p, self._state_dtype(p))
            adamw_update(local(p), local(g), local(state["exp_avg"]), local(state["exp_avg_sq"]),
                         state["step"], lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                         weight_decay=group["weight_decay"])

    def _polar_step(self, work: list[tuple[dict, list[Tensor], list[Tensor]]]) -> None:
        """Step polar groups: X per parameter, their polar factors in one call, then the updates."""
        entries, jobs = [], []
        for group, params, grads in work:
            beta, nesterov, polar_first = group["momentum"], group["nesterov"], group["polar_first"]
            view = MatrixView.from_spec(group["view"])
            for p, g in zip(params, grads):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, dtype=self._state_dtype(p),
                                                                memory_format=torch.preserve_format)
                buf, g = local(state["momentum_buffer"]), local(g)
                if polar_first:
                    x = g
                else:
                    g = g.to(buf.dtype)                            # float32 state: work in it
                    buf.lerp_(g, 1 - beta)                         # M ← βM + (1−β)G
                    x = g.lerp(buf, beta) if nesterov else buf     # (1−β)G + βM
                entries.append((group, view, p, buf))
                jobs.append(_polar_job(group, view, p, x, self.process_group))
        results = polar_factors(jobs, functools.partial(_polar_of_whole, [(g, v) for g, v, _, _ in entries]))
        for (group, view, p, buf), res in zip(entries, results):
            beta, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
            u = res[0].to(buf.dtype)
            if group["polar_first"]:
                buf.lerp_(u, 1 - beta)                             # M ← βM + (1−β)U
                d = u.lerp(buf, beta) if group["nesterov"] else buf
            else:
                d = u
            w = local(p)
            w.mul_(1 - lr * wd)                                    # W ← (1 − ηλ)W
            if len(res) == 2:                                      # ν per matrix of the view
                w.add_(d * res[1].to(d.dtype), alpha=-lr)          # W ← W − η ν D
            else:
                (m, n), = view.matrix_shapes(p.shape)
                w.add_(d, alpha=-(lr * shape_scale(group["scale"], m, n)))


def _work_dtype(group: dict, x: Tensor) -> torch.dtype:
    """The dtype X travels and is orthogonalized in: the iteration's, or X's own if narrower."""
    work = group["dtype"] or (torch.bfloat16 if x.is_cuda else torch.float32)   # orthogonalize's default
    return x.dtype if x.dtype.itemsize < work.itemsize else work


def _polar_job(group: dict, view: MatrixView, p: Tensor, x: Tensor, process_group: ProcessGroup | None) -> PolarJob:
    """The distributed job of parameter ``p`` whose (local) X is ``x``; see :func:`_polar_of_whole`."""
    shape = tuple(p.shape)
    dtype = _work_dtype(group, x)
    outputs = ((shape, dtype),)
    if group["scale"] in NUCLEAR_SCALES or len(view.matrix_shapes(shape)) > 1:
        wide = torch.float64 if dtype == torch.float64 else torch.float32
        outputs += ((_scale_shape(view, shape), wide),)
    return PolarJob(x, shape, layout_of(p, process_group), polar_flops(view.matrix_shapes(shape), group["steps"]),
                    dtype, outputs)


def _polar_of_whole(settings: Sequence[tuple[dict, MatrixView]], idx: Sequence[int],
                    xs: list[Tensor]) -> list[tuple[Tensor, ...]]:
    """(U,) or (U, ν) for whole tensors ``xs`` of parameters ``idx`` (``settings[i]``: group, view).

    Every matrix of every view goes through one ``orthogonalize_many`` call per distinct
    (method, steps, dtype, backend). ν is spread over the parameter (:func:`_scale_field`).
    """
    by_key: dict[tuple, list[int]] = {}
    calls = {}
    for t, i in enumerate(idx):
        key, calls[key] = _orthogonalize_call(settings[i][0])
        by_key.setdefault(key, []).append(t)
    out: list[tuple[Tensor, ...] | None] = [None] * len(idx)
    for key, ts in by_key.items():
        mats = [settings[idx[t]][1].to_matrices(xs[t]) for t in ts]
        flat = calls[key]([m for ms in mats for m in ms])
        start = 0
        for t, ms in zip(ts, mats):
            group, view = settings[idx[t]]
            us, start = flat[start:start + len(ms)], start + len(ms)
            u = view.from_matrices(us, xs[t].shape)
            if group["scale"] == "nuclear":
                nus = [nuclear_scale(x, v) for x, v in zip(ms, us)]
            elif group["scale"] == "nuclear_exact":
                nus = [exact_nuclear_norm(x) for x in ms]
            elif len(ms) > 1:
                wide = torch.float64 if u.dtype == torch.float64 else torch.float32    # as nuclear_scale's
                nus = [torch.tensor(shape_scale(group["scale"], m, n), dtype=wide, device=u.device)
                       for m, n in view.matrix_shapes(u.shape)]
            else:
                out[t] = (u,)
                continue
            out[t] = (u, _scale_field(view, tuple(u.shape), nus))
    return out  # type: ignore[return-value]


def _orthogonalize_call(group: dict) -> tuple[tuple, Callable[[list[Tensor]], list[Tensor]]]:
    """(key, call): the polar factor call of a group; groups with equal keys share one call.

    ``orthogonalize_many`` with the group's method, steps, dtype and backend; a Muon group with
    its own ``ns_coefficients`` or ``ns_eps`` (torch.optim.Muon's) runs that schedule instead.
    """
    method, steps, dtype, backend = group["method"], group["steps"], group["dtype"], group["backend"]
    coefficients = tuple(group.get("ns_coefficients", MUON_QUINTIC))
    eps = group.get("ns_eps", MUON_NORM_EPS)
    if method == "muon" and (coefficients, eps) != (MUON_QUINTIC, MUON_NORM_EPS):
        schedule = muon_schedule(coefficients, steps, eps)
        return (schedule, dtype, backend), functools.partial(orthogonalize_schedule_many, schedule=schedule,
                                                             dtype=dtype, backend=backend)
    return (method, steps, dtype, backend), functools.partial(api.orthogonalize_many, method=method, steps=steps,
                                                              dtype=dtype, backend=backend)


def _scale_shape(view: MatrixView, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of :func:`_scale_field`: () for one matrix, else one value per row (or column) of each."""
    batch, m, n = view.batch_shape(shape)
    if batch * len(view.parts(shape)) == 1:
        return ()
    if view.layout == "batch":
        return (*shape[:-2], m, 1) if view.axis == 0 else (*shape[:-2], 1, n)
    return (shape[0],) + (1,) * (len(shape) - 1) if view.axis == 0 else (1, *shape[1:])


def _scale_field(view: MatrixView, shape: tuple[int, ...], nus: Sequence[Tensor]) -> Tensor:
    """The per-matrix ν of ``view`` as a tensor that broadcasts over the parameter.

    A 0-d tensor for one matrix; else each row (or column, for ``axis=1``) of each matrix
    carries its matrix's ν, so the distributed path can cut it like the parameter.
    """
    if len(nus) == 1:
        return nus[0]
    batch, _, _ = view.batch_shape(shape)
    parts = view.parts(shape)
    per_line = torch.stack(nus).reshape(batch, len(parts)).repeat_interleave(
        torch.tensor(parts, device=nus[0].device), dim=1)            # (batch, rows or cols)
    return per_line.reshape(_scale_shape(view, shape))
