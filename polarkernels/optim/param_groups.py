"""Parameter groups: which parameters take the polar update and which the AdamW fallback.

Every group of a :class:`~polarkernels.optim.PolarGrad` (or :class:`~polarkernels.optim.Muon`)
carries ``algorithm``: ``"polar"`` for matrices (and N-d weights, through the group's ``view``) or
``"adamw"`` for everything else, and exactly the hyperparameters its algorithm reads
(:data:`POLAR_KEYS`, :data:`ADAMW_KEYS`). A group given without ``algorithm`` is split by
dimension: ≥ 2-D parameters → polar, the rest → AdamW. :func:`split_params` makes the usual
finer choice for a whole model (embeddings and the output head to AdamW, as Muon recommends).
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..api import ORTHOGONALIZE_METHODS
from .views import MatrixView, view_for

POLAR = "polar"
ADAMW = "adamw"
ALGORITHMS = (POLAR, ADAMW)

#: Keys a polar group reads (see PolarGrad's docstring for their meaning).
POLAR_KEYS = ("lr", "weight_decay", "momentum", "nesterov", "polar_first", "scale", "method",
              "steps", "dtype", "backend", "view")
#: Keys an AdamW group reads (torch.optim.AdamW's meaning).
ADAMW_KEYS = ("lr", "weight_decay", "betas", "eps")
#: The optimizer-wide defaults that fill an AdamW group's keys (None: use the polar value).
ADAMW_DEFAULT_NAMES = {"lr": "adamw_lr", "weight_decay": "adamw_weight_decay",
                       "betas": "adamw_betas", "eps": "adamw_eps"}

#: ν in W ← (1 − ηλ) W − η ν U: ⟨X, U⟩ (PolarGrad), ‖X‖_* from the SVD, 1, Moonlight's
#: 0.2·√max(m, n), or Keller Jordan's √max(1, m/n).
SCALES = ("nuclear", "nuclear_exact", "none", "rms", "shape")
#: The scales that estimate ‖X‖_*.
NUCLEAR_SCALES = ("nuclear", "nuclear_exact")
#: The stated bound on |⟨X, U⟩/‖X‖_* − 1| for ``scale="nuclear"`` with a method at or above its
#: :data:`NUCLEAR_MIN_STEPS` (measured ≤ 0.25% by ``python -m bench.nuclear_scale``, bfloat16 and
#: float32, on Gaussian, power-law, flat and low-rank spectra; bench/RESULTS.md).
NUCLEAR_BOUND = 5e-3
#: Fewest steps for which ⟨X, U⟩ stays within :data:`NUCLEAR_BOUND` of ‖X‖_*; below, a warning
#: quotes the measured bias. Muon's quintic never converges, so "muon" is refused outright.
NUCLEAR_MIN_STEPS = {"polar_express": 6, "newton_schulz": 10, "qdwh": 4, "svd": 1}
#: The measured ν/‖X‖_* − 1 at the package's 5-step defaults (bench/RESULTS.md).
NUCLEAR_BIAS_AT_5 = {"polar_express": "−9.9% to +13%", "newton_schulz": "−30% to 0%",
                     "muon": "−31% to +8%"}

#: Module names (last component) treated as the output head by :func:`split_params`.
HEAD_NAMES = ("lm_head", "head", "classifier", "output", "fc_out")


def keys_for(algorithm: str) -> tuple[str, ...]:
    """The hyperparameter keys a group of ``algorithm`` reads."""
    return POLAR_KEYS if algorithm == POLAR else ADAMW_KEYS


def default_algorithm(p: torch.Tensor) -> str:
    """Polar for matrices and N-d weights, AdamW for scalars and vectors."""
    return POLAR if p.ndim >= 2 else ADAMW


def build_groups(param_group: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Turn one user param group into complete polar / AdamW groups (one or two).

    Explicit keys of the user's group win over the optimizer's defaults; a group without
    ``algorithm`` is split by :func:`default_algorithm` and each part keeps the keys its
    algorithm reads (keys neither algorithm reads, such as ``initial_lr``, are kept as given).
    """
    params = param_group["params"]
    if isinstance(params, torch.Tensor):
        params = [params]
    elif isinstance(params, set):
        raise TypeError("optimizer parameters need to be organized in ordered collections, but "
                        "the ordering of tensors in sets will change between runs; use a list")
    params = list(params)
    for p in map(_tensor, params):
        if isinstance(p, torch.Tensor) and torch.is_complex(p):
            raise ValueError(f"complex parameters are not supported (got one of shape {tuple(p.shape)} "
                             f"and dtype {p.dtype}); optimize torch.view_as_real(p) instead")
    algorithm = param_group.get("algorithm")
    if algorithm is None:
        parts = {a: [p for p in params if default_algorithm(_tensor(p)) == a] for a in ALGORITHMS}
        return [_complete({**param_group, "params": ps, "algorithm": a}, defaults, split=True)
                for a, ps in parts.items() if ps]
    if algorithm not in ALGORITHMS:
        raise ValueError(f"param group 'algorithm' must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == POLAR:
        for p in map(_tensor, params):
            if p.ndim < 2:
                raise ValueError(f"a 'polar' group needs parameters with ≥ 2 dimensions, got shape "
                                 f"{tuple(p.shape)}; put it in an 'adamw' group")
    return [_complete({**param_group, "params": params}, defaults, split=False)]


def _tensor(item: Any) -> Any:
    """The tensor of a params entry, which torch allows to be a (name, tensor) pair."""
    return item[1] if isinstance(item, tuple) else item


def _complete(group: dict[str, Any], defaults: Mapping[str, Any], *, split: bool) -> dict[str, Any]:
    """Fill the keys ``group['algorithm']`` reads from ``defaults``; drop or reject the others."""
    algorithm = group["algorithm"]
    own = keys_for(algorithm)
    foreign = sorted((set(POLAR_KEYS) | set(ADAMW_KEYS)) - set(own) & set(group))
    if foreign and not split:
        raise ValueError(f"param group with algorithm {algorithm!r} got key(s) {foreign} that only "
                         f"{'adamw' if algorithm == POLAR else 'polar'} groups read")
    out = {k: v for k, v in group.items() if k not in foreign}
    for key in own:
        if key in out:
            continue
        if algorithm == ADAMW and defaults.get(ADAMW_DEFAULT_NAMES[key]) is not None:
            out[key] = defaults[ADAMW_DEFAULT_NAMES[key]]
        else:
            out[key] = defaults[key]
    if algorithm == POLAR:
        warn_inexact_nuclear(out)
        view = MatrixView.from_spec(out["view"])
        for p in map(_tensor, out["params"]):
            view.matrix_shapes(p.shape)                     # a view that does not fit raises here
        # Plain data in the group, so that state_dict() loads with torch.load(weights_only=True).
        out["view"] = None if view.is_default else view.spec()
    check_hyperparameters(out)
    return out


def check_hyperparameters(group: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the bad value of any hyperparameter of ``group``."""
    where = f"({group['algorithm']} group)"
    _check_nonneg_finite("lr", group["lr"], where)
    _check_nonneg_finite("weight_decay", group["weight_decay"], where)
    if group["algorithm"] == ADAMW:
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2
                and all(isinstance(b, float | int) and 0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"betas {where} must be two floats in [0, 1), got {betas!r}")
        if not (isinstance(group["eps"], float | int) and group["eps"] >= 0.0):
            raise ValueError(f"eps {where} must be a non-negative float, got {group['eps']!r}")
        return
    momentum = group["momentum"]
    if not (isinstance(momentum, float | int) and 0.0 <= momentum < 1.0):
        raise ValueError(f"momentum {where} must be in [0, 1), got {momentum!r}")
    for flag in ("nesterov", "polar_first"):
        if not isinstance(group[flag], bool):
            raise ValueError(f"{flag} {where} must be a bool, got {group[flag]!r}")
    if group["scale"] not in SCALES:
        raise ValueError(f"scale {where} must be one of {SCALES}, got {group['scale']!r}")
    if group["scale"] == "nuclear" and group["method"] == "muon":
        raise ValueError(f"scale='nuclear' with method='muon' {where}: Muon's quintic never converges, so "
                         f"ν = ⟨X, U⟩ is off from ‖X‖_* by {NUCLEAR_BIAS_AT_5['muon']} (measured); use "
                         f"method='polar_express' (≥ 6 steps) or scale='nuclear_exact'")
    if group["method"] not in ORTHOGONALIZE_METHODS:
        raise ValueError(f"method {where} must be one of {ORTHOGONALIZE_METHODS}, got {group['method']!r}")
    steps = group["steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps {where} must be a positive int, got {steps!r}")
    if group["dtype"] is not None and not isinstance(group["dtype"], torch.dtype):
        raise ValueError(f"dtype {where} must be a torch.dtype or None, got {group['dtype']!r}")
    if not isinstance(group["backend"], str):
        raise ValueError(f"backend {where} must be a str, got {group['backend']!r}")
    try:
        MatrixView.from_spec(group["view"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"view {where}: {e}") from None


def warn_inexact_nuclear(group: Mapping[str, Any]) -> None:
    """Warn when a polar group's ``scale="nuclear"`` ν is outside :data:`NUCLEAR_BOUND` (too few steps)."""
    need = NUCLEAR_MIN_STEPS.get(group["method"])
    if group["scale"] == "nuclear" and need is not None and group["steps"] < need:
        measured = NUCLEAR_BIAS_AT_5.get(group["method"]) if group["steps"] == 5 else None
        warnings.warn(f"scale='nuclear' with method={group['method']!r} and steps={group['steps']}: ν = ⟨X, U⟩ "
                      f"is within {NUCLEAR_BOUND:.1%} of ‖X‖_* only from {need} steps"
                      + (f" (measured {measured} at 5)" if measured else "")
                      + "; raise steps or use scale='nuclear_exact'", stacklevel=4)


def _check_nonneg_finite(name: str, value: Any, where: str) -> None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"{name} {where} as a tensor must have one real element, got shape "
                             f"{tuple(value.shape)} and dtype {value.dtype}")
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, float | int) or not (0.0 <= value < math.inf):
        raise ValueError(f"{name} {where} must be a finite number ≥ 0, got {value!r}")


def check_group_keys(group: Mapping[str, Any], index: int) -> None:
    """Raise ``KeyError`` with a readable message when a group lacks a key its algorithm reads.

    Groups lose keys when edited by hand or loaded from a checkpoint of another optimizer.
    """
    algorithm = group.get("algorithm")
    if algorithm not in ALGORITHMS:
        raise KeyError(f"param group {index} has no valid 'algorithm' (got {algorithm!r}; expected one "
                       f"of {ALGORITHMS}); was this state_dict saved by another optimizer?")
    missing = [k for k in keys_for(algorithm) if k not in group]
    if missing:
        raise KeyError(f"param group {index} ({algorithm}) is missing required key(s) {missing}")


def split_params(model: nn.Module, *, embeddings: str = ADAMW, head: str = ADAMW,
                 head_names: Iterable[str] = HEAD_NAMES,
                 overrides: Mapping[str, str] | None = None,
                 views: Mapping[str, MatrixView | Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Split ``model``'s parameters into polar groups (one per matrix view) and an AdamW group.

    Default rule (Muon's advice): ≥ 2-D weights → polar; biases, norms and other < 2-D
    parameters → AdamW; ``nn.Embedding``/``nn.EmbeddingBag`` weights → ``embeddings``; the
    weights of modules whose last name component is in ``head_names`` → ``head``. Tied
    parameters count once, under the first module that holds them.

    Each polar parameter gets the matrix view of :func:`~polarkernels.optim.views.view_for`
    for its module (conv kernels flattened, ≥ 3-D weights of user modules as expert stacks),
    or the view of the last pattern in ``views`` that matches its name.

    Args:
        model: the module whose ``named_parameters()`` are split (frozen ones are skipped).
        embeddings: "adamw" (default) or "polar".
        head: "adamw" (default) or "polar".
        head_names: module-name components that mark the output head.
        overrides: ``{pattern: "polar" | "adamw"}``, ``fnmatch`` patterns on parameter names
            ("blocks.*.attn.*.weight"); the last matching pattern wins. A pattern that matches
            no parameter, or "polar" for a < 2-D parameter, raises ``ValueError``.
        views: ``{pattern: MatrixView}`` for polar parameters, e.g.
            ``{"*.qkv.weight": MatrixView(blocks=("q", "k", "v"), head_dim=64)}``; the last
            matching pattern wins. A pattern that matches no polar parameter, or a view that
            does not fit a matched shape, raises ``ValueError``.

    Returns:
        ``[{"params": [...], "algorithm": "polar"}, {"params": [...], "algorithm": "polar",
        "view": {...}}, …, {"params": [...], "algorithm": "adamw"}]``: the default-view polar
        group first, one group per other view, empty groups left out; pass it to the optimizer
        (extra keys per group are allowed).
    """
    for name, choice in (("embeddings", embeddings), ("head", head), *(overrides or {}).items()):
        if choice not in ALGORITHMS:
            raise ValueError(f"choice for {name!r} must be one of {ALGORITHMS}, got {choice!r}")
    views = {pattern: MatrixView.from_spec(v) for pattern, v in (views or {}).items()}
    head_names = set(head_names)
    role: dict[int, str] = {}
    owner: dict[int, nn.Module] = {}
    for module_name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            if id(p) in owner:
                continue
            owner[id(p)] = module
            if isinstance(module, nn.Embedding | nn.EmbeddingBag):
                role[id(p)] = embeddings
            elif module_name.rsplit(".", 1)[-1] in head_names and p.ndim >= 2:
                role[id(p)] = head
    polar: dict[MatrixView, list[nn.Parameter]] = {MatrixView(): []}
    adamw: list[nn.Parameter] = []
    matched: set[str] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        algorithm = role.get(id(p), default_algorithm(p))
        for pattern, choice in (overrides or {}).items():
            if fnmatch.fnmatchcase(name, pattern):
                algorithm = choice
                matched.add(pattern)
        if algorithm == ADAMW:
            adamw.append(p)
            continue
        if p.ndim < 2:
            raise ValueError(f"parameter {name!r} of shape {tuple(p.shape)} cannot take the polar "
                             f"update (it needs ≥ 2 dimensions)")
        override = None
        for pattern, view in views.items():
            if fnmatch.fnmatchcase(name, pattern):
                override = view
                matched.add(pattern)
        polar.setdefault(view_for(p, name, owner.get(id(p)), override), []).append(p)
    unmatched = sorted(set(overrides or {}) - matched)
    if unmatched:
        raise ValueError(f"override pattern(s) {unmatched} match no parameter name of the model")
    unmatched = sorted(set(views) - matched)
    if unmatched:
        raise ValueError(f"view pattern(s) {unmatched} match no polar parameter name of the model")
    groups = [{"params": ps, "algorithm": POLAR, **({} if view.is_default else {"view": view.spec()})}
              for view, ps in polar.items() if ps]
    return groups + ([{"params": adamw, "algorithm": ADAMW}] if adamw else [])
