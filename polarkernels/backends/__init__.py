"""Backends: who computes the primitives ``gram``, ``poly`` and ``apply`` of one step.

A backend is a module exposing ``NAME``, ``available() -> tuple[bool, str]`` (the reason when
not, with the exact ``pip install`` hint) and the three primitives with the signatures of
:mod:`polarkernels.backends.torch_ref`, the reference every other backend is tested against.
Import never fails because an optional backend is missing; asking for it does, with the hint.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from torch import Tensor

BACKENDS = ("torch", "triton", "cuda")

_MODULES = {
    "torch": "polarkernels.backends.torch_ref",
    "triton": "polarkernels.backends.triton_ops",
    "cuda": "polarkernels.backends.cuda",
}


def get_ops(name: str) -> ModuleType:
    """The backend module ``name``; raises ``ValueError`` (unknown) or ``RuntimeError`` (missing)."""
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; expected 'auto' or one of {BACKENDS}")
    module = importlib.import_module(_MODULES[name])
    ok, reason = module.available() if hasattr(module, "available") else (True, "")
    if not ok:
        raise RuntimeError(f"backend {name!r} is not available: {reason}")
    return module


def resolve(backend: str, x: Tensor) -> str:
    """The backend that ``backend="auto"`` means for this input; other names pass through.

    Rule: plain torch everywhere for now (later issues add Triton/CUDA selection on GPU).
    """
    if backend != "auto":
        if backend not in _MODULES:
            raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {BACKENDS}")
        return backend
    return "torch"
