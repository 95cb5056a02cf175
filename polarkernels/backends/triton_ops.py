"""The Triton backend: ``gram``, ``poly`` and ``apply`` as Triton kernels, registered as torch ops.

Same names, signatures and semantics as :mod:`polarkernels.backends.torch_ref` (the reference
every kernel is tested against), plus keyword-only ``out=`` and ``input_precision=``:

    gram(x)            S = X Xᵀ              upper-triangle tiles, mirrored stores   m²n FLOPs
    poly(s, b, c)      B = b S + c S²        one triangle of S S, mirrored stores    m³ FLOPs
    apply(bmat, x, a)  X' = a X + B X        axpy fused into the epilogue            2m²n FLOPs

so one quintic step on a wide m×n X costs 3m²n + m³ FLOPs instead of 4m²n + 2m³. Products
accumulate in fp32; storage is bf16, fp16 or fp32 (fp32 dots use ``input_precision="ieee"``
unless asked otherwise). Batched over leading dims; any strides; any m, n.

Where it runs: CUDA tensors on a GPU (kernels autotuned per shape and dtype), or CPU tensors in
Triton's interpreter when ``TRITON_INTERPRET=1`` was set before this module was imported (for
tests: slow, one fixed block size).

torch.compile: without ``out=``, each function calls a torch op (``polarkernels::triton_gram``,
``…_poly``, ``…_apply``): on a GPU a ``torch.library.triton_op`` whose kernel launches go through
``torch.library.wrap_triton``, so compiled code traces into them (Inductor schedules the launches
and CUDA graphs capture them); under the interpreter an opaque custom op with a fake
implementation. Either way no graph breaks. ``out=`` calls the launcher directly (eager only).
"""

from __future__ import annotations

import torch
from torch import Tensor

NAME = "triton"

try:
    import triton  # noqa: F401  (the import guard: this module imports without triton)
except ImportError as exc:
    _IMPORT_ERROR: str | None = str(exc)
else:
    _IMPORT_ERROR = None
    from .triton_kernels import apply as _apply
    from .triton_kernels import launch as _launch
    from .triton_kernels import gram as _gram
    from .triton_kernels import poly as _poly

    INTERPRETED = _gram.INTERPRETED

    def _register(name: str, fn, fake):
        """``polarkernels::<name>`` as a torch op. Compiled kernels: ``torch.library.triton_op``,
        whose launches (``wrap_triton``) torch.compile traces into its graph, so Inductor and
        CUDA graphs own them; ``fn`` itself is the fake implementation. Interpreted kernels take
        CPU tensors and cannot run on fake ones: an opaque ``custom_op`` with ``fake`` instead."""
        if INTERPRETED or not hasattr(torch.library, "triton_op"):  # triton_op: torch ≥ 2.6
            op = torch.library.custom_op(f"polarkernels::{name}", mutates_args=())(fn)
            op.register_fake(fake)
            return op
        return torch.library.triton_op(f"polarkernels::{name}", mutates_args=())(fn)

    def _gram_impl(x: Tensor, input_precision: str) -> Tensor:
        return _gram.gram(x, input_precision=input_precision)

    def _poly_impl(s: Tensor, b: float, c: float, input_precision: str) -> Tensor:
        return _poly.poly(s, b, c, input_precision=input_precision)

    def _apply_impl(bmat: Tensor, x: Tensor, a: float, input_precision: str) -> Tensor:
        return _apply.apply(bmat, x, a, input_precision=input_precision)

    _gram_op = _register("triton_gram", _gram_impl,
                         lambda x, input_precision: x.new_empty((*x.shape[:-1], x.shape[-2])))
    _poly_op = _register("triton_poly", _poly_impl, lambda s, b, c, input_precision: s.new_empty(s.shape))
    _apply_op = _register("triton_apply", _apply_impl, lambda bmat, x, a, input_precision: x.new_empty(x.shape))


def available() -> tuple[bool, str]:
    """(True, note) when the kernels can run here, else (False, why and what to install)."""
    if _IMPORT_ERROR is not None:
        return False, (f"triton is not installed ({_IMPORT_ERROR}); "
                       "pip install triton  (or pip install 'polarkernels[triton]')")
    if INTERPRETED:
        return True, "TRITON_INTERPRET=1: kernels run on CPU tensors in Triton's interpreter (slow)"
    if not torch.cuda.is_available():
        return False, ("the Triton kernels need a CUDA GPU and none is visible; set TRITON_INTERPRET=1 "
                       "before importing polarkernels to run them (slowly) on CPU tensors")
    return True, ""


def compiles_for_gpu() -> bool:
    """True when the kernels compile for a visible GPU: Triton installed, a CUDA (or ROCm) device
    present, and not ``TRITON_INTERPRET=1`` (whose interpreted kernels take CPU tensors only)."""
    return _IMPORT_ERROR is None and not INTERPRETED and torch.cuda.is_available()


def _require() -> None:
    ok, reason = available()
    if not ok:
        raise RuntimeError(f"backend 'triton' is not available: {reason}")


def _dot_precision(t: Tensor, input_precision: str | None) -> str:
    """The precision resolved for ``t``'s dtype, so the op's schema holds a plain string."""
    if not isinstance(t, Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(t).__name__}")
    return _launch.dot_precision(t.dtype, input_precision)


def gram(x: Tensor, *, out: Tensor | None = None, input_precision: str | None = None) -> Tensor:
    """S = X Xᵀ, shape (..., m, m). Matches :func:`torch_ref.gram`; exactly symmetric output."""
    _require()
    if out is not None:
        return _gram.gram(x, out=out, input_precision=input_precision)
    return _gram_op(x, _dot_precision(x, input_precision))


def poly(s: Tensor, b: float, c: float, *, out: Tensor | None = None,
         input_precision: str | None = None) -> Tensor:
    """B = b S + c S² for symmetric S. Matches :func:`torch_ref.poly`; exactly symmetric output."""
    _require()
    if out is not None:
        return _poly.poly(s, b, c, out=out, input_precision=input_precision)
    return _poly_op(s, float(b), float(c), _dot_precision(s, input_precision))


def apply(bmat: Tensor, x: Tensor, a: float, *, out: Tensor | None = None,
          input_precision: str | None = None) -> Tensor:
    """X' = a X + B X. Matches :func:`torch_ref.apply`."""
    _require()
    if out is not None:
        return _apply.apply(bmat, x, a, out=out, input_precision=input_precision)
    return _apply_op(bmat, x, float(a), _dot_precision(x, input_precision))
