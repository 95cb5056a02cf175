"""``torch.linalg.svd(a, full_matrices=False)`` with a CPU batch of small matrices spread over threads.

torch's CPU SVD walks a batch one matrix at a time on the calling thread (one LAPACK call per
matrix), however many threads torch was given; JAX's vmapped SVD spreads the batch. Here the
batch is split into one chunk per torch thread and the chunks are decomposed concurrently in a
thread pool (torch releases the GIL inside LAPACK). Each matrix still goes through the same
LAPACK call, so the factors are bitwise torch's.

The pool's threads run with one intra-op thread each (``torch.set_num_threads(1)`` in the
worker only): otherwise every worker's LAPACK call starts an OpenMP team of its own, the process
holds more OpenMP threads than cores, and every later multithreaded torch call in it runs 3-5×
slower. The split is only taken where nothing thread-local could be lost on the way: plain
``torch.Tensor`` inputs, no autograd recording, no functorch transform (vmap, grad, jvp), no
forward-mode tangent, no jit/fx tracing, ``torch.compile``, TorchFunction or TorchDispatch mode.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import torch
from torch import Tensor
from torch.autograd import forward_ad
from torch.utils._python_dispatch import _get_current_dispatch_mode

#: Batches of matrices with min(m, n) up to this are split. Measured with 2 threads on 2 cores
#: (bench/RESULTS.md, "CPU routes with two threads"): polar(a) 1.06-1.70× faster at 256×32² and
#: 32×128²; no gain at 8×256² and a loss at 4×512², where LAPACK's own threading takes over.
BATCH_PARALLEL_MAX_SIDE = 128


def thin_svd(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(P, σ, Qᴴ) of the thin SVD A = P diag(σ) Qᴴ, batched, as ``torch.linalg.svd(a,
    full_matrices=False)`` returns them (bitwise), split over threads where that is safe."""
    threads = torch.get_num_threads()
    if not _splittable(a, threads):
        return torch.linalg.svd(a, full_matrices=False)
    flat = a.flatten(0, -3)
    try:
        futures = [_pool(threads).submit(_svd_chunk, c) for c in flat.tensor_split(min(threads, flat.shape[0]))]
    except RuntimeError:  # the interpreter is shutting down: the pool takes no more work
        return torch.linalg.svd(a, full_matrices=False)
    try:
        parts = [f.result() for f in futures]
    except RuntimeError:
        # e.g. non-finite input: the plain call raises the same error with the batch index of
        # the whole batch, not of a chunk
        return torch.linalg.svd(a, full_matrices=False)
    batch = a.shape[:-2]
    p, s, qh = (torch.cat(x) for x in zip(*parts))
    return p.reshape(*batch, *p.shape[-2:]), s.reshape(*batch, s.shape[-1]), qh.reshape(*batch, *qh.shape[-2:])


def _splittable(a: Tensor, threads: int) -> bool:
    if (threads < 2 or type(a) is not torch.Tensor or a.device.type != "cpu" or a.dim() < 3 or a.numel() == 0
            or math.prod(a.shape[:-2]) < 2 or min(a.shape[-2:]) > BATCH_PARALLEL_MAX_SIDE):
        return False
    recorded = a.requires_grad and torch.is_grad_enabled()
    transformed = (torch._C._functorch.is_functorch_wrapped_tensor(a)
                   or forward_ad.unpack_dual(a).tangent is not None)
    traced = torch.jit.is_tracing() or torch.compiler.is_compiling()
    modes = _get_current_dispatch_mode() is not None or torch._C._is_torch_function_mode_enabled()
    return not (recorded or transformed or traced or modes)


def _svd_chunk(chunk: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    with torch.no_grad():  # a worker thread's grad mode is its own (on): record nothing
        return torch.linalg.svd(chunk, full_matrices=False)


@cache
def _pool(threads: int) -> ThreadPoolExecutor:
    """One pool per torch thread count, created on first use (and anew in a forked child, e.g. a
    DataLoader worker, which inherits the pool object but not its threads); its workers run
    with one intra-op thread each (see the module docstring)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="polarkernels-svd", initializer=torch.set_num_threads,
                              initargs=(1,))


os.register_at_fork(after_in_child=_pool.cache_clear)
