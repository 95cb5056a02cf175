r"""Muon on the Stiefel manifold: weights kept semi-orthogonal, steps steepest in the spectral norm.

:class:`StiefelMuon` is :class:`~polarkernels.optim.Muon` with one more kind of param group,
``"stiefel"``: its matrices stay on St(m, n) = {W : WᵀW = I} (orthonormal rows for wide W) to
working precision for ever, because every step ends in the polar retraction. Everything else
(AdamW and Muon groups, checkpoints, non-finite gradients) is Muon's. The direction solvers are
in :mod:`polarkernels.optim.stiefel_direction`; here are the optimizer, the projector that puts
existing weights on the manifold, and the check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from .. import api
from .distributed import DTensor
from .grad_checks import NonFiniteGradientError, all_finite
from .muon import Muon
from .stiefel_direction import SOLVERS, project_tangent, stiefel_direction
from .views import MatrixView

STIEFEL = "stiefel"
#: The single-loop alternative to the solvers: msign of the Riemannian gradient (MCSD/SPEL).
SPEL = "spel"
STIEFEL_SOLVERS = (*SOLVERS, SPEL)
#: Keys a "stiefel" group reads.
STIEFEL_KEYS = ("lr", "momentum", "nesterov", "solver", "tol", "max_iter", "step_size", "method", "backend",
                "view")


def stiefel_error(w: Tensor, view: MatrixView | None = None) -> Tensor:
    """‖WᵀW − I‖_F/√n of each matrix of ``w`` (on the tall side: WWᵀ for wide W), in float64.

    ``view`` (a :class:`~polarkernels.optim.MatrixView`; default: a matrix as is, an N-d weight
    as (out, rest)) says which matrices of ``w`` are on the manifold, as in the optimizer.
    Returns one value per matrix, in the view's order.
    """
    return torch.stack([_error(m.detach().double()) for m in _matrices(w, view)])


def on_stiefel(w: Tensor, tol: float | None = None, view: MatrixView | None = None) -> bool:
    """True when every matrix of ``w`` (see :func:`stiefel_error`) is on the manifold.

    ``tol`` defaults to 40 ε √max(m, n) for the dtype of ``w``: the bound the package's tests
    assert on ``polar``'s orthogonality, so a freshly projected or retracted ``w`` passes.
    """
    mats = _matrices(w, view)
    if tol is None:
        tol = 40 * torch.finfo(w.dtype).eps * math.sqrt(max(max(m.shape) for m in mats))
    return bool((stiefel_error(w, view) <= tol).all())


@torch.no_grad()
def project_to_stiefel_(params: Tensor | Iterable[Tensor], *, view: MatrixView | None = None,
                        method: str = "auto", backend: str = "auto") -> None:
    """Put each tensor on the manifold in place: W ← polar(W) for each matrix of its ``view``.

    The polar factor is the nearest semi-orthogonal matrix (in every unitarily invariant norm),
    so the weights keep their directions; for a fresh layer ``nn.init.orthogonal_`` gives the
    same kind of matrix.
    """
    for p in [params] if isinstance(params, Tensor) else list(params):
        v = MatrixView.from_spec(view)
        mats = _matrices(p, v)
        work = [m.float() if m.dtype in (torch.bfloat16, torch.float16) else m for m in mats]
        us = [api.polar(m, method=method, backend=backend)[0].to(p.dtype) for m in work]
        p.copy_(v.from_matrices(us, p.shape))


class StiefelMuon(Muon):
    r"""Muon whose ``stiefel`` parameters stay on the Stiefel manifold (manifold Muon).

    For each matrix W ∈ St(m, n) of a parameter's view (m ≥ n; a wide W is treated as Wᵀ; N-d
    weights read as (out, rest) by default) with gradient G:

    .. math::
       \begin{aligned}
       &M \leftarrow \beta M + (1-\beta) G, \qquad
        B = \begin{cases} (1-\beta) G + \beta M & \text{nesterov (default)} \\ M & \text{else}\end{cases} \\
       &\Phi = \operatorname*{arg\,max}_{\|\Phi\|_2 \le 1,\ W^\top\Phi + \Phi^\top W = 0}
             \operatorname{tr}(B^\top \Phi)
             \quad (\texttt{solver="dual\_ascent" | "fixed\_point"}) \\
       &\quad\text{or}\quad \Phi = \operatorname{msign}(B - W \operatorname{sym}(W^\top B))
             \quad (\texttt{solver="spel"}: \text{MCSD/SPEL, one msign}) \\
       &W \leftarrow \operatorname{polar}(W - \eta\, \Phi)
       \end{aligned}

    The retraction is :func:`polarkernels.polar`, converged to working precision, so WᵀW = I
    holds to rounding after every step and errors do not accumulate. There is no weight decay on
    the manifold (the norm is fixed). Non-finite gradients follow ``nonfinite`` as in Muon, except
    that with ``"propagate"`` a NaN reaching a manifold group raises
    :class:`~polarkernels.optim.NonFiniteGradientError` before that group moves (the manifold holds
    no NaN). DTensor (FSDP2) parameters are not supported on the manifold yet; under DDP every rank
    computes the same directions (no sharing out).

    **Momentum on the raw gradient.** M accumulates Euclidean gradients and is projected only
    where it is used (the solvers see only B's tangent part: tr(BᵀΦ) = tr(P_T(B)ᵀΦ) for tangent Φ).
    This is the stochastic MCSD of Yang and Lai ("Manifold constrained steepest descent", ICML
    2026: momentum on the gradient, then the LMO of its Riemannian projection), the projection
    vector transport of Riemannian momentum methods (Absil, Mahony and Sepulchre, 2008, §8.1), and
    what Muon does off the manifold, so both kinds of group share one buffer rule.

    **Solvers.** ``"dual_ascent"`` (Bernstein) and ``"fixed_point"`` (Su) solve the tangent-space
    problem to ``tol`` (tangent residual and relative duality gap) within ``max_iter`` polar factors,
    warm-started from the previous step's multiplier; ``"spel"`` costs one polar factor and is exact
    only for square W. See :mod:`polarkernels.optim.stiefel_direction` for when each solver wins.
    Every step costs the solver's polar factors plus one for the retraction, all batched over the
    group's matrices of equal shape. ``last_solves`` holds, after each step, one
    ``(shape, iterations, max residual, max gap)`` per batch of a solver group.

    Args:
        params: parameters or param groups, as for :class:`~polarkernels.optim.Muon`; groups with
            ``"algorithm": "stiefel"`` are manifold groups.
        lr, weight_decay, momentum, nesterov: Muon's (and the manifold groups' lr and momentum).
        stiefel: the parameters to keep on the manifold (taken out of ``params``); they must be on
            it already (see :func:`project_to_stiefel_`), else the first step raises. Each is
            read as a matrix, N-d weights as (out, rest); for other :class:`~polarkernels.optim.MatrixView`\ s
            (expert stacks, fused QKV blocks: every matrix of the view on its own manifold) pass a
            group ``{"params": [...], "algorithm": "stiefel", "view": MatrixView("batch").spec()}``.
        stiefel_lr: η for the manifold groups (``None``: ``lr``). The step has spectral norm η.
        solver: "dual_ascent", "fixed_point" or "spel".
        tol, max_iter, step_size: the solver's (see
            :func:`~polarkernels.optim.stiefel_direction.stiefel_direction`).
        stiefel_method, stiefel_backend: :func:`polarkernels.polar`'s ``method``/``backend`` for
            every msign and the retraction.
        **kwargs: Muon's (``method``, ``steps``, ``adjust_lr_fn``, ``adamw_*``, ``nonfinite``, ...).
    """

    def __init__(self, params: ParamsT, lr: float = 0.02, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True, *, stiefel: Iterable[Tensor] = (),
                 stiefel_lr: float | None = None, solver: str = "fixed_point", tol: float = 1e-3,
                 max_iter: int = 20, step_size: float = 0.2, stiefel_method: str = "auto",
                 stiefel_backend: str = "auto", **kwargs: Any) -> None:
        self._stiefel_defaults = dict(lr=lr if stiefel_lr is None else stiefel_lr, momentum=momentum,
                                      nesterov=nesterov, solver=solver, tol=tol, max_iter=max_iter,
                                      step_size=step_size, method=stiefel_method, backend=stiefel_backend,
                                      view=None)
        _check_stiefel_group({"params": [], **self._stiefel_defaults})
        self.last_solves: list[tuple[tuple[int, ...], int, float, float]] = []
        on_manifold = list(stiefel)
        groups = _without(params, {id(p) for p in on_manifold})
        if on_manifold:
            groups.append({"params": on_manifold, "algorithm": STIEFEL})
        super().__init__(groups, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                         **kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; ``"algorithm": "stiefel"`` makes a manifold group, the rest is Muon's."""
        if not (isinstance(param_group, dict) and param_group.get("algorithm") == STIEFEL):
            return super().add_param_group(param_group)
        group = {**self._stiefel_defaults, **param_group}
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        _check_stiefel_group(group)
        given = set(group)
        Optimizer.add_param_group(self, group)
        for key in set(self.defaults) - given:                  # torch filled in Muon's defaults
            group.pop(key)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One step for every group (see :class:`~polarkernels.optim.PolarGrad`); refreshes ``last_solves``."""
        self.last_solves = []
        return super().step(closure)

    def _check_group(self, group: dict, index: int) -> None:
        if group.get("algorithm") != STIEFEL:
            return super()._check_group(group, index)
        missing = [k for k in STIEFEL_KEYS if k not in group]
        if missing:
            raise KeyError(f"param group {index} (stiefel) is missing required key(s) {missing}")
        for p in group["params"]:
            if isinstance(p, DTensor):
                raise NotImplementedError("sharded (DTensor) parameters on the Stiefel manifold are not "
                                          "supported yet")
            view = MatrixView.from_spec(group["view"])
            if p.grad is not None and not self.state[p] and not on_stiefel(p.detach(), view=view):
                raise ValueError(f"a parameter of shape {tuple(p.shape)} in param group {index} is not on "
                                 f"the Stiefel manifold (‖WᵀW − I‖_F/√n = "
                                 f"{float(stiefel_error(p, view).max()):.2e}); call "
                                 f"polarkernels.optim.project_to_stiefel_ on it first (with the group's view)")

    def _step_group(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        if group["algorithm"] != STIEFEL:
            return super()._step_group(group, params, grads)
        beta, nesterov = group["momentum"], group["nesterov"]
        if self.nonfinite == "propagate" and not all_finite(grads):
            # The manifold holds no NaN: refuse before this group's state moves (other groups of
            # this step may have stepped already: "propagate" gives up the all-or-nothing step).
            raise NonFiniteGradientError("non-finite gradient in a 'stiefel' group (nonfinite='propagate' "
                                         "lets NaN reach it); its parameters and state were not modified")
        blends = []
        for p, g in zip(params, grads):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.lerp_(g, 1 - beta)                                   # M ← βM + (1−β)G
            blends.append(g.lerp(buf, beta) if nesterov else buf)    # (1−β)G + βM
        view = MatrixView.from_spec(group["view"])
        # Every matrix of every parameter's view; matrices of one shape are solved as one batch.
        mats = [(i, j, w, b) for i, (p, x) in enumerate(zip(params, blends))
                for j, (w, b) in enumerate(zip(view.to_matrices(p), view.to_matrices(x)))]
        new: list[list[Tensor | None]] = [[None] * len(view.matrix_shapes(p.shape)) for p in params]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for k, (_, _, w, _) in enumerate(mats):
            by_shape.setdefault(tuple(w.shape), []).append(k)
        for shape, ks in by_shape.items():
            batch = [mats[k] for k in ks]
            us = self._stiefel_batch(group, params, batch, shape)
            for (i, j, _, _), u in zip(batch, us.unbind(0)):
                new[i][j] = u
        for p, us in zip(params, new):
            p.copy_(view.from_matrices(us, p.shape))

    def _stiefel_batch(self, group: dict, params: Sequence[Tensor], batch: Sequence[tuple[int, int, Tensor, Tensor]],
                       shape: tuple[int, ...]) -> Tensor:
        """New W for matrices (param index, matrix index, W, B) of one shape, batched: direction
        and retraction. A parameter's solver state holds one warm start per matrix of its view."""
        work = torch.float64 if params[0].dtype == torch.float64 else torch.float32
        w = torch.stack([m.to(work) for _, _, m, _ in batch])
        b = torch.stack([x.to(work) for _, _, _, x in batch])
        method, backend = group["method"], group["backend"]
        if group["solver"] == SPEL:
            phi = _spel_direction(w, b, method, backend)
        else:
            states = [self.state[params[i]] for i, _, _, _ in batch]
            warm = (torch.stack([s["multiplier"][j] for s, (_, j, _, _) in zip(states, batch)])
                    if all("multiplier" in s for s in states) else None)
            solve = stiefel_direction(w, b, solver=group["solver"], tol=group["tol"], max_iter=group["max_iter"],
                                      step_size=group["step_size"], multiplier=warm, method=method,
                                      backend=backend)
            for s, (i, j, _, _), x in zip(states, batch, solve.multiplier.unbind(0)):
                if "multiplier" not in s:
                    count = len(MatrixView.from_spec(group["view"]).matrix_shapes(params[i].shape))
                    s["multiplier"] = x.new_zeros((count, *x.shape))
                s["multiplier"][j] = x
            phi = solve.direction
            self.last_solves.append((shape, solve.iterations, float(solve.residual.max()), float(solve.gap.max())))
        return api.polar(w - group["lr"] * phi, method=method, backend=backend)[0]     # W ← polar(W − ηΦ)


def _spel_direction(w: Tensor, b: Tensor, method: str, backend: str) -> Tensor:
    """msign(P_T B) (Yang and Lai's SPEL); 0 where the Riemannian gradient is 0."""
    tall = w.shape[-2] >= w.shape[-1]
    wt, bt = (w, b) if tall else (w.mT, b.mT)
    r = project_tangent(wt, bt)
    nonzero = torch.linalg.matrix_norm(r) > 0
    phi = api.polar(r, method=method, backend=backend)[0] * nonzero[..., None, None]
    return phi if tall else phi.mT


def _matrices(t: Tensor, view: MatrixView | dict | None) -> list[Tensor]:
    """The matrices of ``t`` under ``view`` (default: itself if 2-D, else (out, rest))."""
    if t.ndim < 2:
        raise ValueError(f"only matrices (≥ 2-D tensors) live on the Stiefel manifold, got shape {tuple(t.shape)}")
    return MatrixView.from_spec(view).to_matrices(t)


def _error(w: Tensor) -> Tensor:
    if w.shape[-2] < w.shape[-1]:
        w = w.mT
    n = w.shape[-1]
    return torch.linalg.matrix_norm(w.mT @ w - torch.eye(n, dtype=w.dtype, device=w.device)) / math.sqrt(n)


def _without(params: ParamsT, drop: set[int]) -> list[dict[str, Any]]:
    """``params`` as a list of groups without the tensors whose id is in ``drop``; empty groups removed."""
    items = list(params)
    if not items:
        return []
    groups = items if isinstance(items[0], dict) else [{"params": items}]
    out = []
    for group in groups:
        ps = group["params"]
        ps = [ps] if isinstance(ps, Tensor) else list(ps)
        kept = [p for p in ps if id(p[1] if isinstance(p, tuple) else p) not in drop]
        if kept:
            out.append({**group, "params": kept})
    return out


def _check_stiefel_group(group: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the bad value of a manifold group's hyperparameter or parameter."""
    lr, momentum = group["lr"], group["momentum"]
    if isinstance(lr, bool) or not isinstance(lr, float | int) or not 0 <= lr < math.inf:
        raise ValueError(f"lr (stiefel group) must be a finite number ≥ 0, got {lr!r}")
    if isinstance(momentum, bool) or not isinstance(momentum, float | int) or not 0 <= momentum < 1:
        raise ValueError(f"momentum (stiefel group) must be in [0, 1), got {momentum!r}")
    if not isinstance(group["nesterov"], bool):
        raise ValueError(f"nesterov (stiefel group) must be a bool, got {group['nesterov']!r}")
    if group["solver"] not in STIEFEL_SOLVERS:
        raise ValueError(f"solver must be one of {STIEFEL_SOLVERS}, got {group['solver']!r}")
    for key in ("tol", "step_size"):
        v = group[key]
        if isinstance(v, bool) or not isinstance(v, float | int) or not 0 < v < math.inf:
            raise ValueError(f"{key} (stiefel group) must be a positive number, got {v!r}")
    max_iter = group["max_iter"]
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter (stiefel group) must be a positive int, got {max_iter!r}")
    if group["method"] not in api.POLAR_METHODS:
        raise ValueError(f"stiefel_method must be one of {api.POLAR_METHODS}, got {group['method']!r}")
    if not isinstance(group["backend"], str):
        raise ValueError(f"stiefel_backend must be a str, got {group['backend']!r}")
    view = MatrixView.from_spec(group["view"])
    for p in group["params"]:
        p = p[1] if isinstance(p, tuple) else p
        if not isinstance(p, Tensor) or p.ndim < 2:
            shape = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
            raise ValueError(f"a 'stiefel' group needs matrices (≥ 2-D parameters), got {shape}")
        if torch.is_complex(p):
            raise ValueError(f"complex parameters are not supported on the Stiefel manifold (dtype {p.dtype})")
        view.matrix_shapes(p.shape)                                 # raises for a view that does not fit
