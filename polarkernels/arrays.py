"""Array kinds: torch tensors, NumPy arrays and CuPy arrays in, the same kind out.

NumPy arrays share memory with the torch tensor made from them (``torch.from_numpy``) and CuPy
arrays go through DLPack, so conversion is zero-copy both ways where the dtype allows. Integer
inputs are promoted to float64, as ``scipy.linalg.polar`` does. Complex matrices (complex64,
complex128) are taken as they are; nested lists go through ``numpy.asarray``, as in scipy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

REAL_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
COMPLEX_DTYPES = (torch.complex128, torch.complex64)
SUPPORTED_DTYPES = REAL_DTYPES + COMPLEX_DTYPES


@dataclass(frozen=True)
class Kind:
    """Where an input came from, so the result can be returned as the same kind."""

    name: str  # "torch" | "numpy" | "cupy"


def _is_cupy(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def _numpy_to_tensor(arr: np.ndarray, what: str) -> Tensor:
    if arr.dtype.kind == "b":
        raise TypeError(f"{what}: bool arrays are not supported; convert to a floating dtype")
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.float64)
    elif not ((arr.dtype.kind == "f" and arr.dtype.itemsize in (2, 4, 8))
              or (arr.dtype.kind == "c" and arr.dtype.itemsize in (8, 16))):
        raise TypeError(f"{what}: dtype {arr.dtype} is not supported; use float16/32/64, "
                        "complex64/128 or an integer dtype")
    if any(st < 0 for st in arr.strides) or not arr.flags.writeable:
        arr = arr.copy()  # torch.from_numpy rejects negative strides and warns on read-only memory
    return torch.from_numpy(arr)


def to_tensor(x: Any, *, what: str = "input") -> tuple[Tensor, Kind]:
    """The input as a floating torch tensor (no copy where possible) and its kind.

    Raises ``TypeError`` for bool, complex32 and other unsupported dtypes and for objects that
    are not arrays; integer inputs become float64 (scipy's promotion).
    """
    if isinstance(x, Tensor):
        t, kind = x, Kind("torch")
    elif isinstance(x, np.ndarray) or isinstance(x, (list, tuple)):
        t, kind = _numpy_to_tensor(np.asarray(x), what), Kind("numpy")
    elif _is_cupy(x):
        t, kind = torch.from_dlpack(x), Kind("cupy")
    else:
        raise TypeError(f"{what}: expected a torch.Tensor, numpy.ndarray or cupy.ndarray, got {type(x).__name__}")
    if t.dtype == torch.bool:
        raise TypeError(f"{what}: bool arrays are not supported; convert to a floating dtype")
    if not (t.is_floating_point() or t.is_complex()):
        t = t.to(torch.float64)
    elif t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{what}: dtype {t.dtype} is not supported; use one of "
                        f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}")
    return t, kind


def from_tensor(t: Tensor, kind: Kind) -> Any:
    """``t`` converted back to ``kind`` (NumPy: a detached CPU copy if needed; CuPy: DLPack)."""
    if kind.name == "torch":
        return t
    if kind.name == "numpy":
        return t.detach().cpu().numpy()
    import cupy

    return cupy.from_dlpack(t.detach())
