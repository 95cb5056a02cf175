"""CUDA backend: the kernels of ``csrc/``, for single products and for whole ragged groups.

Two load paths for the same kernel sources, tried in this order (the environment variable
``POLARKERNELS_CUDA_LOADER=ext`` or ``=cupy`` picks one):

1. the extension ``polarkernels._C``, built by ``setup.py`` with nvcc when torch is a CUDA build;
2. CuPy, which compiles the shipped ``csrc/*.cu`` with NVRTC (``cupy.RawModule``) at first use.

Either way the kernels run on torch's current stream and read torch's memory in place (device
pointers; nothing is copied). Every kernel takes one argument, a parameter block in device
memory; this module builds the blocks with NumPy structured dtypes that mirror the C structs
(``GemmParams``, ``FusedParams``, ... in ``csrc/*.cu``), uploads all the blocks of a call in one
asynchronous copy from pinned memory, and launches: no call on this path waits for the GPU, so
the launches can be captured in a CUDA graph (``torch.cuda.graph``; see the README).

Entry points:

- ``gram``, ``poly``, ``apply``: the primitives of :mod:`polarkernels.backends.torch_ref`, same
  signatures and semantics, as grouped tensor-core GEMMs (``csrc/grouped_gemm.cu``);
- :func:`orthogonalize_group`: the whole iteration for a list of matrices of different shapes,
  the small ones in one fused launch (``csrc/fused_polar.cu``), the rest through one launch per
  primitive per step for the whole group.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

NAME = "cuda"

INSTALL_HINT = (
    "install CuPy for your CUDA version (`pip install cupy-cuda12x` or `pip install cupy-cuda13x`), "
    "or build the extension from source with nvcc and a CUDA build of torch: "
    "`POLARKERNELS_BUILD_CUDA=1 pip install --no-build-isolation polarkernels`"
)

_SUFFIX = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32"}
_THREADS = 256  # every kernel runs 256-thread blocks

# Tile sizes and shared memory of csrc/grouped_gemm.cu (mma_tile::BM, simt_tile::BM, SMEM_BYTES).
_GEMM_TILE = {torch.bfloat16: 128, torch.float16: 128, torch.float32: 64}
_GEMM_SMEM_BYTES = {torch.bfloat16: 67072, torch.float16: 67072, torch.float32: 0}
_CHUNK = 4096  # copy_tile::CHUNK in csrc/group_copy.cu
_COPY_TILE = 32  # copy_tile::TILE
_FUSED_MAX_STEPS = 32  # PK_FUSED_MAX_STEPS in csrc/fused_polar.cu
_FUSED_MAX_M = 128  # PK_FUSED_MAX_M16

# ---- parameter blocks: mirrors of the C structs (sizes checked below) ----

_GEMM_PARAMS = np.dtype([("count", "<i4"), ("total_tiles", "<i4"), ("alpha", "<f4"), ("beta", "<f4"),
                         ("symmetric", "<i4"), ("pad", "<i4", 3)])
_GEMM_DESC = np.dtype([("a", "<u8"), ("b", "<u8"), ("c", "<u8"), ("d", "<u8"), ("m", "<i4"), ("n", "<i4"),
                       ("k", "<i4"), ("lda", "<i4"), ("ldb", "<i4"), ("ldc", "<i4"), ("ldd", "<i4"),
                       ("tile_start", "<i4"), ("tiles_n", "<i4"), ("pad", "<i4", 3)])
_FUSED_PARAMS = np.dtype([("count", "<i4"), ("steps", "<i4"), ("norm_safety", "<f4"), ("pad", "<i4"),
                          ("coeffs", "<f4", 3 * _FUSED_MAX_STEPS)])
_FUSED_DESC = np.dtype([("src", "<u8"), ("dst", "<u8"), ("rows", "<i4"), ("cols", "<i4"), ("trans", "<i4"),
                        ("pad", "<i4")])
_SUMSQ_PARAMS = np.dtype([("count", "<i4"), ("total_tiles", "<i4"), ("amax", "<u8"), ("sumsq", "<u8")])
_SUMSQ_DESC = np.dtype([("src", "<u8"), ("numel", "<i8"), ("tile_start", "<i4"), ("pad", "<i4", 3)])
_COPY_PARAMS = np.dtype([("count", "<i4"), ("total_tiles", "<i4"), ("norm_safety", "<f4"), ("pad", "<i4"),
                         ("amax", "<u8"), ("sumsq", "<u8")])
_COPY_DESC = np.dtype([("src", "<u8"), ("dst", "<u8"), ("rows", "<i4"), ("cols", "<i4"), ("lds", "<i4"),
                       ("ldd", "<i4"), ("trans", "<i4"), ("tiles_c", "<i4"), ("tile_start", "<i4"),
                       ("pad", "<i4")])
assert [d.itemsize for d in (_GEMM_PARAMS, _GEMM_DESC, _FUSED_PARAMS, _FUSED_DESC, _SUMSQ_PARAMS, _SUMSQ_DESC,
                             _COPY_PARAMS, _COPY_DESC)] == [32, 80, 400, 32, 24, 32, 32, 48]


# ---- loaders ----

def _csrc_dir() -> Path:
    """The kernel sources: shipped inside the package, or the repository's csrc/ in a checkout."""
    for candidate in (Path(__file__).parent.parent / "csrc", Path(__file__).parents[2] / "csrc"):
        if (candidate / "common.cuh").is_file():
            return candidate
    raise RuntimeError("polarkernels: the CUDA kernel sources (csrc/*.cu) are missing from this installation")


class _ExtensionLoader:
    """Launches through ``polarkernels._C`` (csrc/launch.cu + csrc/ext.cpp)."""

    name = "extension polarkernels._C"

    def __init__(self, module) -> None:
        self._c = module

    def launch(self, kernel: str, grid: int, smem: int, params: int, device: torch.device) -> None:
        stream = torch.cuda.current_stream(device).cuda_stream
        self._c.launch(kernel, _device_index(device), grid, _THREADS, smem, stream, params)


#: The kernel files NVRTC compiles, in order (common.cuh first: its include guard then skips the
#: other files' #include lines).
NVRTC_FILES = ("common.cuh", "grouped_gemm.cu", "fused_polar.cu", "group_copy.cu")


def nvrtc_program() -> tuple[str, tuple[str, ...]]:
    """The program text and options the CuPy loader hands to NVRTC (``cupy.RawModule``; CuPy adds
    ``-ftz=true`` and the GPU's ``-arch``). The full text rather than #include lines, so that
    CuPy's compile cache keys on every source it depends on. NVRTC defaults to C++17."""
    src = _csrc_dir()
    return "\n".join((src / f).read_text() for f in NVRTC_FILES), (f"-I{src}",)


class _CupyLoader:
    """Compiles csrc/*.cu once per device with NVRTC through ``cupy.RawModule``."""

    name = "CuPy (NVRTC)"

    def __init__(self, cupy) -> None:
        self._cp = cupy
        self._modules: dict[int, object] = {}
        self._functions: dict[tuple[int, str], object] = {}
        self._smem: dict[tuple[int, str], int] = {}  # dynamic shared memory granted so far

    def _function(self, kernel: str, index: int, smem: int):
        fn = self._functions.get((index, kernel))
        if fn is None:
            module = self._modules.get(index)
            if module is None:
                code, options = nvrtc_program()
                module = self._cp.RawModule(code=code, options=options)
                self._modules[index] = module
            fn = module.get_function(kernel)
            self._functions[(index, kernel)] = fn
        if smem > 48 * 1024 and self._smem.get((index, kernel), 0) < smem:  # one driver call per size
            fn.max_dynamic_shared_size_bytes = smem
            self._smem[(index, kernel)] = smem
        return fn

    def launch(self, kernel: str, grid: int, smem: int, params: int, device: torch.device) -> None:
        cp = self._cp
        index = _device_index(device)
        with cp.cuda.Device(index):
            fn = self._function(kernel, index, smem)
            with cp.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream, index):
                fn((grid,), (_THREADS,), (np.uint64(params),), shared_mem=smem)


@lru_cache(maxsize=None)
def _loader_or_reason(choice: str) -> tuple[object | None, str]:
    """The first working loader for ``choice`` ('', 'ext' or 'cupy'), or why there is none."""
    reasons = []
    if choice in ("", "ext"):
        try:
            ext = importlib.import_module("polarkernels._C")
        except ImportError as exc:
            reasons.append(f"the extension polarkernels._C is not built ({exc})")
        else:
            return _ExtensionLoader(ext), ""
    if choice in ("", "cupy"):
        try:
            import cupy
        except Exception as exc:  # ImportError, or a CUDA-library error raised while importing
            reasons.append(f"CuPy is not importable ({type(exc).__name__}: {exc})")
        else:
            return _CupyLoader(cupy), ""
    if choice not in ("", "ext", "cupy"):
        reasons.append(f"POLARKERNELS_CUDA_LOADER={choice!r} is neither 'ext' nor 'cupy'")
    return None, "; ".join(reasons)


def available() -> tuple[bool, str]:
    """Whether the CUDA kernels can run here; else the reason, with what to install."""
    if not torch.cuda.is_available():
        return False, "no CUDA device is visible to torch (torch.cuda.is_available() is False)"
    loader, reason = _loader_or_reason(os.environ.get("POLARKERNELS_CUDA_LOADER", ""))
    if loader is None:
        return False, f"no way to load the CUDA kernels: {reason}. To fix: {INSTALL_HINT}"
    return True, ""


def loader_name() -> str:
    """Which load path the kernels run through (for benchmarks and reports)."""
    return _loader().name


def _loader():
    ok, reason = available()
    if not ok:
        raise RuntimeError(f"backend 'cuda' is not available: {reason}")
    return _loader_or_reason(os.environ.get("POLARKERNELS_CUDA_LOADER", ""))[0]


# ---- one call's launches: parameter blocks uploaded in one copy ----

class _Launches:
    """Kernels to launch in order, each with its parameter block (header + descriptors)."""

    _ALIGN = 16

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._blobs: list[bytes] = []
        self._items: list[tuple[str, int, int, int]] = []
        self._size = 0

    def add(self, kernel: str, grid: int, smem: int, header: np.ndarray, descs: np.ndarray) -> None:
        if grid == 0:
            return
        blob = header.tobytes() + descs.tobytes()
        blob += b"\0" * (-len(blob) % self._ALIGN)
        self._items.append((kernel, grid, smem, self._size))
        self._blobs.append(blob)
        self._size += len(blob)

    def run(self) -> None:
        if not self._items:
            return
        loader = _loader()
        params = _upload(b"".join(self._blobs), self.device)
        base = params.data_ptr()
        for kernel, grid, smem, offset in self._items:
            loader.launch(kernel, grid, smem, base + offset, self.device)


#: Parameter blocks uploaded while a CUDA graph was being captured: the graph's copy node reads
#: the pinned host bytes and writes the device block again on every replay, so both live as long
#: as the process (one pair per captured call; capture once per shape).
_CAPTURED: list[tuple[Tensor, Tensor]] = []


def _upload(blob: bytes, device: torch.device) -> Tensor:
    """The parameter blocks on ``device``, copied without blocking the host.

    The bytes go to page-locked host memory from torch's caching host allocator, which records
    the copy on the current stream and hands that block out again only after the copy has run;
    the device buffer is freed to the caching allocator after the launches, which orders its
    reuse on the same stream. (A ``.to(device)`` from pageable memory synchronises the stream:
    three host round trips per polar step, and no CUDA-graph capture.)
    """
    host = torch.empty(len(blob), dtype=torch.uint8, pin_memory=True)
    host.numpy()[:] = np.frombuffer(blob, np.uint8)
    params = torch.empty(len(blob), dtype=torch.uint8, device=device)
    params.copy_(host, non_blocking=True)
    if params.is_cuda and torch.cuda.is_current_stream_capturing():
        _CAPTURED.append((host, params))
    return params


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _header(dtype: np.dtype, **fields) -> np.ndarray:
    h = np.zeros(1, dtype)
    for name, value in fields.items():
        h[name] = value
    return h


def _descs(dtype: np.dtype, count: int, **columns) -> np.ndarray:
    """``count`` descriptors with the given fields (scalars or length-``count`` arrays), rest zero."""
    d = np.zeros(count, dtype)
    for name, value in columns.items():
        d[name] = value
    return d


def _cdiv(a, b):
    return -(-a // b)


def _gemm_descs(dtype: torch.dtype, symmetric: bool, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, int]:
    """GemmDesc rows (with the prefix-summed tile map) for problems given as field columns."""
    tile = _GEMM_TILE[dtype]
    count = max(np.size(value) for value in cols.values())
    m, n = (np.broadcast_to(np.asarray(cols[key], np.int64), (count,)) for key in ("m", "n"))
    tm, tn = _cdiv(m, tile), _cdiv(n, tile)
    tiles = tm * (tm + 1) // 2 if symmetric else tm * tn
    keep = tiles > 0
    starts = np.concatenate(([0], np.cumsum(tiles[keep])))
    fields = {name: np.broadcast_to(value, (count,))[keep] for name, value in cols.items()}
    return _descs(_GEMM_DESC, int(keep.sum()), tile_start=starts[:-1], tiles_n=tn[keep], **fields), int(starts[-1])


def _add_gemm(launches: _Launches, dtype: torch.dtype, nn: bool, symmetric: bool, alpha: float, beta: float,
              descs: tuple[np.ndarray, int]) -> None:
    """One grouped GEMM launch: C = alpha·A·op(B) + beta·D for every descriptor."""
    rows, total = descs
    header = _header(_GEMM_PARAMS, count=len(rows), total_tiles=total, alpha=alpha, beta=beta,
                     symmetric=int(symmetric))
    kernel = f"pk_gemm_{'nn' if nn else 'nt'}_{_SUFFIX[dtype]}"
    launches.add(kernel, total, _GEMM_SMEM_BYTES[dtype], header, rows)


# ---- the backend primitives ----

def _check_cuda(x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor) or not x.is_cuda:
        raise ValueError(f"cuda backend: {what} must be a CUDA tensor, got {type(x).__name__}"
                         f"{'' if not isinstance(x, Tensor) else ' on ' + str(x.device)}")
    if x.dtype not in _SUFFIX:
        raise TypeError(f"cuda backend: {what} has dtype {x.dtype}; supported: bfloat16, float16, float32")
    if x.ndim < 2:
        raise ValueError(f"cuda backend: {what} must have at least 2 dimensions, got shape {tuple(x.shape)}")


def _batched(x: Tensor) -> Tensor:
    return x.reshape(-1, *x.shape[-2:]).contiguous()


def _batch_gemm(a: Tensor, b: Tensor, d: Tensor | None, out: Tensor, *, nn: bool, symmetric: bool,
                alpha: float, beta: float) -> Tensor:
    """out[i] = alpha·a[i]·op(b[i]) + beta·d[i] over contiguous (B, ·, ·) batches, one launch."""
    m, n = out.shape[-2:]
    es, i = a.element_size(), np.arange(out.shape[0], dtype=np.int64)
    cols = dict(a=a.data_ptr() + i * (a[0].numel() * es), b=b.data_ptr() + i * (b[0].numel() * es),
                c=out.data_ptr() + i * (m * n * es), d=0 if d is None else d.data_ptr() + i * (m * n * es),
                m=m, n=n, k=a.shape[-1], lda=a.shape[-1], ldb=b.shape[-1], ldc=n, ldd=n)
    launches = _Launches(out.device)
    _add_gemm(launches, out.dtype, nn, symmetric, alpha, beta, _gemm_descs(out.dtype, symmetric, cols))
    launches.run()
    return out


def gram(x: Tensor) -> Tensor:
    """S = X Xᵀ, shape (..., m, m); matches :func:`torch_ref.gram` (one triangle computed, mirrored)."""
    _check_cuda(x, "x")
    x3 = _batched(x)
    m = x.shape[-2]
    out = torch.empty(x3.shape[0], m, m, dtype=x.dtype, device=x.device)
    return _batch_gemm(x3, x3, None, out, nn=False, symmetric=True, alpha=1.0, beta=0.0).reshape(
        *x.shape[:-1], m)


def poly(s: Tensor, b: float, c: float) -> Tensor:
    """B = b S + c S² for symmetric S; matches :func:`torch_ref.poly` (computed as c S Sᵀ + b S)."""
    _check_cuda(s, "s")
    if c == 0.0:
        return s * b
    s3 = _batched(s)
    out = torch.empty_like(s3)
    return _batch_gemm(s3, s3, s3, out, nn=False, symmetric=True, alpha=float(c), beta=float(b)).reshape(s.shape)


def apply(bmat: Tensor, x: Tensor, a: float) -> Tensor:
    """X' = a X + B X; matches :func:`torch_ref.apply`."""
    _check_cuda(bmat, "bmat")
    _check_cuda(x, "x")
    if bmat.shape[:-2] != x.shape[:-2] or bmat.shape[-1] != x.shape[-2] or bmat.dtype != x.dtype:
        raise ValueError(f"cuda backend apply: bmat {tuple(bmat.shape)} {bmat.dtype} does not fit "
                         f"x {tuple(x.shape)} {x.dtype}")
    b3, x3 = _batched(bmat), _batched(x)
    out = torch.empty_like(x3)
    return _batch_gemm(b3, x3, x3, out, nn=True, symmetric=False, alpha=1.0, beta=float(a)).reshape(x.shape)


# ---- the grouped iteration ----

def fused_smem_bytes(m: int, n: int, dtype: torch.dtype) -> int:
    """Shared memory the fused kernel needs for a wide m×n matrix (csrc/fused_polar.cu's layout)."""
    m16, n16 = -(-m // 16) * 16, -(-n // 16) * 16
    return dtype.itemsize * (m16 * (n16 + 8) + 2 * m16 * (m16 + 8)) + 4 * 8


@lru_cache(maxsize=None)
def _smem_optin(index: int) -> int:
    props = torch.cuda.get_device_properties(index)
    return int(getattr(props, "shared_memory_per_block_optin", 101376))


def _fusable(m: int, n: int, dtype: torch.dtype, steps: int, index: int) -> bool:
    return (dtype != torch.float32 and m <= _FUSED_MAX_M and steps <= _FUSED_MAX_STEPS
            and fused_smem_bytes(m, n, dtype) <= _smem_optin(index))


def orthogonalize_group(mats: Sequence[Tensor], coeffs: Sequence[tuple[float, float, float]],
                        norm_safety: float, *, path: str = "auto") -> list[Tensor]:
    """The fixed-schedule polar iteration for every matrix of a ragged group, in few launches.

    For each 2-D A (any shape; tall ones are iterated as Aᵀ and transposed back)::

        X₀ = A / (norm_safety · ‖A‖_F)          (‖A‖ in fp32; A = 0 gives U = 0)
        for (a, b, c) in coeffs:  S = X Xᵀ;  X ← a X + (b S + c S²) X
        U = X

    computed in A's dtype (bf16 / fp16 on tensor cores with fp32 accumulation; fp32 exactly),
    rounding S, B = b S + c S² and X to that dtype as the per-step torch loop does.

    Matrices with min(m, n) ≤ 128 whose iterate fits in one block's shared memory go through one
    fused launch (``path="fused"`` insists on it; fp32 never fuses); the rest through one launch
    per primitive per step for the whole group (``path="stepped"`` sends every matrix there).

    Args:
        mats: 2-D CUDA tensors of one dtype (bfloat16, float16 or float32) on one device.
        coeffs: the schedule's (a, b, c) per step.
        norm_safety: the schedule's safety factor (≥ 1).
        path: "auto", "fused" or "stepped".

    Returns:
        U per matrix: new contiguous tensors of the input shapes and dtype.
    """
    mats = list(mats)
    if path not in ("auto", "fused", "stepped"):
        raise ValueError(f"path must be 'auto', 'fused' or 'stepped', got {path!r}")
    if not mats:
        return []
    for i, a in enumerate(mats):
        _check_cuda(a, f"mats[{i}]")
        if a.ndim != 2:
            raise ValueError(f"orthogonalize_group takes 2-D matrices; mats[{i}] has shape {tuple(a.shape)}")
        if a.dtype != mats[0].dtype or a.device != mats[0].device:
            raise ValueError(f"orthogonalize_group needs one dtype and device; mats[{i}] is {a.dtype} on "
                             f"{a.device}, mats[0] is {mats[0].dtype} on {mats[0].device}")
    steps = [tuple(float(v) for v in step) for step in coeffs]
    if any(len(step) != 3 for step in steps):
        raise ValueError("coeffs must be a sequence of (a, b, c) triples")
    if not (norm_safety > 0 and math.isfinite(norm_safety)):
        raise ValueError(f"norm_safety must be positive and finite, got {norm_safety}")
    dtype, device = mats[0].dtype, mats[0].device
    index = _device_index(device)

    outs = [torch.empty(a.shape, dtype=dtype, device=device) for a in mats]
    fused, stepped = [], []
    for i, a in enumerate(mats):
        if a.numel() == 0:
            continue
        m, n = sorted(a.shape)
        if path != "stepped" and _fusable(m, n, dtype, len(steps), index):
            fused.append(i)
        elif path == "fused":
            raise ValueError(f"mats[{i}] ({tuple(a.shape)}, {dtype}) does not fit the fused kernel "
                             f"(min side ≤ {_FUSED_MAX_M}, 16-bit dtype, ≤ {_FUSED_MAX_STEPS} steps, shared memory)")
        else:
            stepped.append(i)
    srcs = {i: mats[i].contiguous() for i in fused + stepped}

    launches = _Launches(device)
    if fused:
        _add_fused(launches, [srcs[i] for i in fused], [outs[i] for i in fused], steps, norm_safety)
    keep = _add_stepped(launches, [srcs[i] for i in stepped], [outs[i] for i in stepped], steps,
                        norm_safety) if stepped else None
    launches.run()
    del keep  # work buffers: released to the caching allocator, reused only after these launches
    return outs


def _add_fused(launches: _Launches, srcs: list[Tensor], outs: list[Tensor], steps: list[tuple[float, float, float]],
               norm_safety: float) -> None:
    dtype = srcs[0].dtype
    coeffs = np.zeros(3 * _FUSED_MAX_STEPS, np.float32)
    coeffs[: 3 * len(steps)] = np.asarray(steps, np.float32).reshape(-1)
    header = _header(_FUSED_PARAMS, count=len(srcs), steps=len(steps), norm_safety=norm_safety, coeffs=coeffs)
    shape = np.array([a.shape for a in srcs], np.int64).reshape(-1, 2)
    descs = _descs(_FUSED_DESC, len(srcs), src=[a.data_ptr() for a in srcs], dst=[u.data_ptr() for u in outs],
                   rows=shape[:, 0], cols=shape[:, 1], trans=shape[:, 0] > shape[:, 1])
    smem = max(fused_smem_bytes(*sorted(a.shape), dtype) for a in srcs)
    launches.add(f"pk_fused_polar_{_SUFFIX[dtype]}", len(srcs), smem, header, descs)


def _add_stepped(launches: _Launches, srcs: list[Tensor], outs: list[Tensor],
                 steps: list[tuple[float, float, float]], norm_safety: float) -> list[Tensor]:
    """Normalise, iterate and write back ``srcs`` with grouped launches; returns the work buffers."""
    dtype, device = srcs[0].dtype, srcs[0].device
    suffix, es = _SUFFIX[dtype], srcs[0].element_size()
    order = sorted(range(len(srcs)), key=lambda i: -srcs[i].numel())  # big tiles first: less tail
    srcs, outs = [srcs[i] for i in order], [outs[i] for i in order]
    shape = np.array([a.shape for a in srcs], np.int64)
    trans = shape[:, 0] > shape[:, 1]
    m, n = shape.min(axis=1), shape.max(axis=1)  # wide orientation: X is m×n, m ≤ n
    # Work layout per matrix: X, X' [m][ldx] and S, B [m][ldm], rows padded to 8 elements so
    # that 16-byte loads stay aligned.
    ldx, ldm = _cdiv(n, 8) * 8, _cdiv(m, 8) * 8
    size = 2 * m * ldx + 2 * m * ldm
    work = torch.empty(int(size.sum()), dtype=dtype, device=device)
    stats = torch.zeros(2, len(srcs), dtype=torch.float32, device=device)  # amax, sumsq
    x0 = work.data_ptr() + (np.cumsum(size) - size) * es
    x = (x0, x0 + m * ldx * es)
    s_ptr = x0 + 2 * m * ldx * es
    b_ptr = s_ptr + m * ldm * es
    src = np.array([a.data_ptr() for a in srcs], np.int64)
    dst = np.array([u.data_ptr() for u in outs], np.int64)

    # X₀ = A / (safety ‖A‖_F), oriented wide (csrc/group_copy.cu)
    chunks = _cdiv(shape[:, 0] * shape[:, 1], _CHUNK)
    starts = np.concatenate(([0], np.cumsum(chunks)))
    header = _header(_SUMSQ_PARAMS, count=len(srcs), total_tiles=starts[-1], amax=stats[0].data_ptr(),
                     sumsq=stats[1].data_ptr())
    descs = _descs(_SUMSQ_DESC, len(srcs), src=src, numel=shape[:, 0] * shape[:, 1], tile_start=starts[:-1])
    launches.add(f"pk_absmax_{suffix}", int(starts[-1]), 0, header, descs)
    launches.add(f"pk_sumsq_{suffix}", int(starts[-1]), 0, header, descs)
    _add_copy(launches, suffix, dict(src=src, rows=shape[:, 0], cols=shape[:, 1], lds=shape[:, 1], dst=x[0],
                                     ldd=ldx, trans=trans), norm_safety, stats)

    # Steps, eq. (1) of polarkernels.schedules: three grouped launches each (two when c = 0).
    gram = [_gemm_descs(dtype, True, dict(a=x[p], b=x[p], c=s_ptr, m=m, n=m, k=n, lda=ldx, ldb=ldx, ldc=ldm))
            for p in (0, 1)]
    poly = _gemm_descs(dtype, True, dict(a=s_ptr, b=s_ptr, c=b_ptr, d=s_ptr, m=m, n=m, k=m, lda=ldm, ldb=ldm,
                                         ldc=ldm, ldd=ldm))
    apply_ = {(p, q): _gemm_descs(dtype, False, dict(a=mat, b=x[p], c=x[1 - p], d=x[p], m=m, n=n, k=m, lda=ldm,
                                                     ldb=ldx, ldc=ldx, ldd=ldx))
              for p in (0, 1) for q, mat in ((True, b_ptr), (False, s_ptr))}
    cur = 0
    for a, b, c in steps:
        _add_gemm(launches, dtype, False, True, 1.0, 0.0, gram[cur])                # S = X Xᵀ
        if c != 0.0:
            _add_gemm(launches, dtype, False, True, c, b, poly)                     # B = c S² + b S
            _add_gemm(launches, dtype, True, False, 1.0, a, apply_[cur, True])      # X' = B X + a X
        else:
            _add_gemm(launches, dtype, True, False, b, a, apply_[cur, False])       # X' = b S X + a X
        cur = 1 - cur

    # U = X (transposed back for tall inputs)
    _add_copy(launches, suffix, dict(src=x[cur], rows=m, cols=n, lds=ldx, dst=dst, ldd=shape[:, 1], trans=trans),
              1.0, None)
    return [work, stats]


def _add_copy(launches: _Launches, suffix: str, cols: dict[str, np.ndarray], norm_safety: float,
              stats: Tensor | None) -> None:
    """Grouped dst = s·op(src) (CopyDesc fields as columns); s from ``stats``, or 1 without."""
    tiles_c = _cdiv(np.asarray(cols["cols"], np.int64), _COPY_TILE)
    tiles = _cdiv(np.asarray(cols["rows"], np.int64), _COPY_TILE) * tiles_c
    starts = np.concatenate(([0], np.cumsum(tiles)))
    header = _header(_COPY_PARAMS, count=len(tiles), total_tiles=starts[-1], norm_safety=norm_safety,
                     amax=0 if stats is None else stats[0].data_ptr(),
                     sumsq=0 if stats is None else stats[1].data_ptr())
    descs = _descs(_COPY_DESC, len(tiles), tiles_c=tiles_c, tile_start=starts[:-1], **cols)
    launches.add(f"pk_scale_copy_{suffix}", int(starts[-1]), 0, header, descs)
