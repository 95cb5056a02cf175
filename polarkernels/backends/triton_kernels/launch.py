"""Host-side helpers shared by the launchers: batched views, checks, autotune configs, the interpreter.

Autotuning is for real GPUs only: under ``TRITON_INTERPRET=1`` every launcher uses one small fixed
configuration, so interpreter tests stay fast and deterministic.

One autotuner per *tuning class* (:func:`tuned`): power-of-two buckets of the sizes, the memory
order of every operand and the kernel's compile-time flags. So a new size inside a bucket reuses
the benchmarked config, while a transposed operand or a cubic step (different loads, a skipped
product) gets its own choice instead of inheriting whichever call came first.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch
import triton
from torch import Tensor
from triton.runtime import Autotuner, JITFunction

from . import interpreter_compat

#: Storage dtypes the kernels take; products accumulate in fp32 for all of them.
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: ``tl.dot`` input precisions for fp32 storage: "ieee" (true fp32, the default, so that
#: ``polar()`` reaches fp32 accuracy), "tf32" (tensor cores, ~1e-3 relative), "tf32x3" (~fp32).
FP32_PRECISIONS = ("ieee", "tf32", "tf32x3")

#: Square tiles for the symmetric kernels (gram, poly): (BLOCK, BLOCK_K, stages, warps). The
#: 128-wide tiles suit Hopper's wgmma; 64-wide ones fill 132 SMs when m is small. Configs that do
#: not fit a GPU's shared memory (fp32 with 4 stages, or Ampere sm_86) are skipped by the autotuner.
_SYMMETRIC = ((128, 64, 3, 8), (128, 64, 4, 8), (128, 32, 4, 4), (64, 128, 3, 4), (64, 64, 4, 4))

#: Rectangular tiles for apply: (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps).
_RECTANGULAR = ((128, 128, 64, 3, 8), (128, 256, 64, 3, 8), (128, 128, 64, 4, 4),
                (64, 128, 64, 4, 4), (64, 64, 64, 4, 4))

#: The one configuration used under the interpreter (small blocks: ragged edges get exercised).
INTERPRETER_BLOCK = 32


def symmetric_configs() -> list[triton.Config]:
    return [triton.Config({"BLOCK": b, "BLOCK_K": k}, num_stages=s, num_warps=w)
            for b, k, s, w in _SYMMETRIC]


def rectangular_configs() -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP": 8}, num_stages=s, num_warps=w)
            for bm, bn, bk, s, w in _RECTANGULAR]


def prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Autotune's early pruning: drop configs whose pipelined tiles exceed the device's shared
    memory (they could only fail) or whose tiles are over twice the matrix (wasted lanes and
    compile time for small m). Keeps at least the last, smallest config."""
    t = next(v for v in named_args.values() if isinstance(v, Tensor))
    limit = triton.runtime.driver.active.utils.get_device_properties(t.device.index)["max_shared_mem"]
    m = named_args["M"]
    n = named_args.get("N", m)
    kept = []
    for config in configs:
        meta = config.kwargs
        bm = meta.get("BLOCK", meta.get("BLOCK_M"))
        bn = meta.get("BLOCK", meta.get("BLOCK_N"))
        shared = config.num_stages * (bm + bn) * meta["BLOCK_K"] * t.element_size()
        if shared <= limit and bm <= max(64, triton.next_power_of_2(m)) and bn <= max(64, triton.next_power_of_2(n)):
            kept.append(config)
    return kept or configs[-1:]


def first_fit(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """:func:`prune_configs`, then only the first config left (no benchmarking choice)."""
    return prune_configs(configs, named_args, **kwargs)[:1]


def bucket(n: int) -> int:
    """The autotuning bucket of a size: the next power of two (sizes 513…1024 share one config)."""
    return triton.next_power_of_2(max(int(n), 1))


def layout(t: Tensor) -> str:
    """The memory order of a (..., r, c) operand: "row" (unit stride along a row), "col" (a
    transposed view: unit stride down a column) or "strided" (neither)."""
    if t.stride(-1) == 1 or t.shape[-1] == 1:
        return "row"
    if t.stride(-2) == 1 or t.shape[-2] == 1:
        return "col"
    return "strided"


_TUNERS: dict[tuple, Autotuner] = {}


def tuned(kernel: JITFunction, configs: Callable[[], list[triton.Config]], tuning_class: tuple) -> Autotuner:
    """The autotuner of ``kernel`` for one tuning class (sizes bucketed by :func:`bucket`, operand
    :func:`layout` s, compile-time flags; the launcher builds the tuple). Each benchmarks its
    configs on its first call and keeps the winner (Triton adds the operand dtypes to its own key);
    all share ``kernel``'s compiled binaries. ``POLARKERNELS_TRITON_AUTOTUNE=0`` skips the
    benchmarking: each kernel runs its first config that fits (one compile per kernel variant)."""
    search = os.environ.get("POLARKERNELS_TRITON_AUTOTUNE", "1") != "0"
    key = (kernel.fn.__name__, search, *tuning_class)
    tuner = _TUNERS.get(key)
    if tuner is None:
        tuner = triton.autotune(configs=configs(), key=[],
                                prune_configs_by={"early_config_prune": prune_configs if search else first_fit})(kernel)
        _TUNERS[key] = tuner
    return tuner


def traceable(kernel: Autotuner):
    """``kernel`` behind ``torch.library.wrap_triton`` (torch ≥ 2.6), so that inside a
    ``triton_op`` torch.compile records the launch instead of running it; in eager mode torch
    hands back the kernel itself."""
    wrap = getattr(torch.library, "wrap_triton", None)
    return kernel if wrap is None else wrap(kernel)


def interpreted(kernel: object) -> bool:
    """True when ``triton.jit`` built ``kernel`` for the CPU interpreter (TRITON_INTERPRET=1 at
    import); then also makes an older interpreter accept the kernels' loop bounds
    (:mod:`.interpreter_compat`)."""
    if isinstance(kernel, JITFunction):
        return False
    interpreter_compat.apply()
    return True


def check_operand(t: Tensor, name: str, *, interpreting: bool) -> None:
    """Raise ``ValueError`` unless ``t`` is a (..., r, c) float tensor on a device the kernels run on."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() < 2:
        raise ValueError(f"{name} must have shape (..., rows, cols); got {tuple(t.shape)}")
    if t.dtype not in DTYPES:
        raise ValueError(f"{name} has dtype {t.dtype}; the Triton kernels take {', '.join(map(str, DTYPES))}")
    if interpreting and t.device.type != "cpu":
        raise ValueError(f"{name} is on {t.device}; under TRITON_INTERPRET=1 the kernels take CPU tensors")
    if not interpreting and t.device.type != "cuda":
        raise ValueError(f"{name} is on {t.device}; the Triton kernels need CUDA tensors "
                         "(or TRITON_INTERPRET=1 set before import, for CPU tensors)")


def dot_precision(dtype: torch.dtype, input_precision: str | None) -> str:
    """The ``tl.dot`` input precision: the requested one for fp32 ("ieee" by default); for 16-bit
    operands Triton's default ("tf32", which does not apply to them) on NVIDIA GPUs and "ieee" on
    ROCm, whose Triton backend accepts no other value (asking ROCm for "tf32" raises here)."""
    if input_precision is not None and input_precision not in FP32_PRECISIONS:
        raise ValueError(f"input_precision must be one of {FP32_PRECISIONS} or None; got {input_precision!r}")
    if torch.version.hip is not None:
        if input_precision not in (None, "ieee"):
            raise ValueError(f"input_precision={input_precision!r} is not available on ROCm "
                             "(Triton's AMD backend takes only 'ieee')")
        return "ieee"
    if dtype != torch.float32:
        return "tf32"
    return input_precision or "ieee"


def batched(t: Tensor) -> Tensor:
    """``t`` (..., r, c) as a (B, r, c) view: the leading dims merged, the last two strides kept.

    Leading dims that cannot merge into one stride (a permuted batch) are copied once; the
    matrices themselves (transposed, sliced) are never copied.
    """
    shape = (math.prod(t.shape[:-2]), *t.shape[-2:])
    try:
        return t.view(shape)
    except RuntimeError:
        return t.reshape(shape)


def output(out: Tensor | None, shape: tuple[int, ...], like: Tensor, name: str = "out") -> Tensor:
    """A fresh contiguous output, or ``out`` checked (shape, dtype, device, a batch that views as one)."""
    if out is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    if tuple(out.shape) != tuple(shape) or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(f"{name} must be a {like.dtype} tensor of shape {tuple(shape)} on {like.device}; "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    try:
        out.view(math.prod(shape[:-2]), *shape[-2:])
    except RuntimeError:
        raise ValueError(f"{name}'s leading dims must merge into one stride (strides {out.stride()})") from None
    return out


def check_no_alias(out: Tensor, *inputs: Tensor) -> None:
    """The kernels read their inputs while writing ``out``: the two must not share storage."""
    for t in inputs:
        if out.numel() and t.numel() and out.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
            raise ValueError("out must not share memory with an input")


def check_offsets(t: Tensor, name: str) -> None:
    """In-matrix offsets are 32-bit in the kernels (the batch offset is 64-bit)."""
    r, c = t.shape[-2:]
    if r and c and (r - 1) * t.stride(-2) + (c - 1) * t.stride(-1) >= 2**31:
        raise ValueError(f"{name} is too large for 32-bit offsets within one matrix "
                         f"({r}×{c}, strides {t.stride()[-2:]})")
