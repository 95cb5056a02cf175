"""Backends: who computes the primitives ``gram``, ``poly`` and ``apply`` of one step.

A backend is a module exposing ``NAME``, ``available() -> tuple[bool, str]`` (the reason when
not, with the exact ``pip install`` hint) and the three primitives with the signatures of
:mod:`polarkernels.backends.torch_ref`, the reference every other backend is tested against.
Import never fails because an optional backend is missing; asking for it does, with the hint.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

BACKENDS = ("torch", "blas", "triton", "cuda")
#: Backends whose kernels compute in real arithmetic only: ``auto`` never picks them for complex
#: input (their rules below ask for 16-bit dtypes) and naming them explicitly raises ``TypeError``.
REAL_ONLY = ("triton", "cuda")

def _module(name: str) -> ModuleType:
    """The module of backend ``name``, imported on first use. Import statements rather than
    ``importlib``: torch.compile traces them (even a first import), so ``orthogonalize`` compiles
    with ``fullgraph=True``."""
    if name == "torch":
        from polarkernels.backends import torch_ref as module
    elif name == "blas":
        from polarkernels.backends import blas as module
    elif name == "triton":
        from polarkernels.backends import triton_ops as module
    else:
        from polarkernels.backends import cuda as module
    return module


def get_ops(name: str) -> ModuleType:
    """The backend module ``name``; raises ``ValueError`` (unknown) or ``RuntimeError`` (missing)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected 'auto' or one of {BACKENDS}")
    module = _module(name)
    ok, reason = module.available() if hasattr(module, "available") else (True, "")
    if not ok:
        raise RuntimeError(f"backend {name!r} is not available: {reason}")
    return module


#: ``auto`` picks Triton for 16-bit CUDA work with min(m, n) ≥ 2048 and max(m, n) ≤ 4·min(m, n)
#: (batches of such matrices too). Conservative on purpose, until ``python -m bench.gpu`` has
#: timed the kernels on a GPU (none has run yet): at 2048 the Gram triangle is 136 tiles of
#: 128², about one wave on a 132-SM H100 (at 1024 it is 36 tiles, and the FLOP model itself
#: predicts no gain); the symmetric products save (4a + 2)/(3a + 1) of the FLOPs at aspect a
#: (1.5× square, 1.38× at a = 4, → 4/3 as apply's plain 2m²n GEMM dominates), too little past 4
#: to count on against cuBLAS through torch. Never in float32
#: (the "ieee" dots run on the FP32 cores) and never on ROCm (the kernels are tuned for NVIDIA).
TRITON_MIN_SIDE = 2048
TRITON_MAX_ASPECT = 4
#: ``auto`` picks BLAS for single CPU float32/float64 matrices with min(m, n) ≥ this, when torch
#: runs one thread (see :func:`resolve`).
BLAS_MIN_SIDE = 512


def resolve(backend: str, x: Tensor) -> str:
    """The backend that ``backend="auto"`` means for ``x`` (in its working dtype); other names
    pass through after a check.

    Rule for ``auto``: on CPU, BLAS for a single float32/float64 matrix with min(m, n) ≥
    :data:`BLAS_MIN_SIDE` when torch runs one intra-op thread; on an NVIDIA GPU, Triton when ``x``
    is 16-bit, large and square enough (:data:`TRITON_MIN_SIDE`, :data:`TRITON_MAX_ASPECT`) and the
    kernels compile there (Triton installed, ``TRITON_INTERPRET`` unset); plain torch otherwise.
    """
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {BACKENDS}")
        if x.is_complex() and backend in REAL_ONLY:
            raise TypeError(f"backend {backend!r} computes in real arithmetic only and cannot take complex "
                            f"{x.dtype} input; use backend='torch', 'blas' (CPU) or 'auto'")
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
        if (x.dtype in (torch.float32, torch.float64, torch.complex64, torch.complex128)
                and x.ndim == 2 and m >= BLAS_MIN_SIDE
                and torch.get_num_threads() == 1):
            return "blas" if _available("blas") else "torch"
        return "torch"
    if (x.is_cuda and torch.version.hip is None and x.dtype in (torch.bfloat16, torch.float16)
            and m >= TRITON_MIN_SIDE and n <= TRITON_MAX_ASPECT * m and _triton_compiles()):
        return "triton"
    return "torch"


def _triton_compiles() -> bool:
    """Whether the Triton kernels compile for the GPU here (under TRITON_INTERPRET=1 they take
    CPU tensors only, so ``auto`` must not send CUDA tensors to them)."""
    try:
        return _module("triton").compiles_for_gpu()
    except ImportError:
        return False


def _available(name: str) -> bool:
    try:
        return _module(name).available()[0]
    except ImportError:
        return False
