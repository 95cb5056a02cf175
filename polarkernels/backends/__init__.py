"""Backends: who computes the primitives ``gram``, ``poly`` and ``apply`` of one step.

A backend is a module exposing ``NAME``, ``available() -> tuple[bool, str]`` (the reason when
not, with the exact ``pip install`` hint) and the three primitives with the signatures of
:mod:`polarkernels.backends.torch_ref`, the reference every other backend is tested against.
Import never fails because an optional backend is missing; asking for it does, with the hint.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor

BACKENDS = ("torch", "blas", "triton", "cuda")

_MODULES = {
    "torch": "polarkernels.backends.torch_ref",
    "blas": "polarkernels.backends.blas",
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


#: ``auto`` picks Triton for 16-bit CUDA work at least this large: min(m, n) ≥ 1024, or a batch
#: with batch·min(m, n)²·max(m, n) ≥ 2³⁰ multiply-adds per Gram product. Below it, or in float32
#: (whose "ieee" dots run on the FP32 cores, not the tensor cores), cuBLAS through torch is as
#: fast. Provisional: derived from the FLOP model, not yet from a GPU timing (bench/RESULTS.md).
TRITON_MIN_SIDE = 1024
TRITON_MIN_WORK = 2**30
#: ``auto`` picks BLAS for single CPU float32/float64 matrices with min(m, n) ≥ this, when torch
#: runs one thread (see :func:`resolve`).
BLAS_MIN_SIDE = 512


def resolve(backend: str, x: Tensor) -> str:
    """The backend that ``backend="auto"`` means for ``x`` (in its working dtype); other names
    pass through after a check.

    Rule for ``auto``: on CPU, BLAS for a single float32/float64 matrix with min(m, n) ≥
    :data:`BLAS_MIN_SIDE` when torch runs one intra-op thread; on CUDA, Triton when ``x`` is
    16-bit, large enough (see :data:`TRITON_MIN_SIDE`) and Triton is installed; plain torch
    otherwise.
    """
    if backend != "auto":
        if backend not in _MODULES:
            raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {BACKENDS}")
        return backend
    m, n = sorted(x.shape[-2:])
    if not x.is_cuda and x.device.type == "cpu":
        # BLAS ?syrk halves the Gram FLOPs: with one torch thread, 1.15–2.2× over torch for single
        # matrices from 1024², 0.83–1.6× at 512² depending on the run (bench/RESULTS.md, "One
        # thread"). With more, torch's OpenMP pool and
        # OpenBLAS's pthreads take turns on the cores between the loop's torch ops and the BLAS
        # calls: on 2 cores BLAS lost 1.4–18× below 1024² and on batches, and won 1.2× at 1024²
        # and 1.5× at 2048² (Polar Express, 5 steps).
        # Batches loop over matrices in Python, so they stay on torch.
        if (x.dtype in (torch.float32, torch.float64) and x.ndim == 2 and m >= BLAS_MIN_SIDE
                and torch.get_num_threads() == 1):
            return "blas" if _available("blas") else "torch"
        return "torch"
    if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):
        batch = x.numel() // max(m * n, 1)
        if (m >= TRITON_MIN_SIDE or batch * m * m * n >= TRITON_MIN_WORK) and _available("triton"):
            return "triton"
    return "torch"


def _available(name: str) -> bool:
    try:
        return importlib.import_module(_MODULES[name]).available()[0]
    except ImportError:
        return False
