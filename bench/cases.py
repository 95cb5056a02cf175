"""The benchmark's one registry: workloads (what is orthogonalized) and candidates (who does it).

A *workload* is a list of input tensors: one matrix, one batch ``(B, m, n)``, or every hidden
weight matrix of a model (a list, as an optimizer sees it). A *candidate* is a function from
one tensor to its (approximate) polar factor, optionally with a grouped entry point for lists
(``orthogonalize_many``); its ``method`` and ``family`` pick the FLOP count
(:mod:`bench.flops`). Both the CLI (:mod:`bench.polar`) and the pytest-benchmark suite
(:mod:`bench.test_polar_bench`) build their cases from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

import polarkernels as pk
from polarkernels import backends
from polarkernels.api import auto_polar_method

from . import baselines

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
POLAR_METHODS = ("auto", "svd", "qdwh", "polar_express", "newton_schulz", "muon")
ORTHOGONALIZE_METHODS = ("polar_express", "muon", "newton_schulz", "qdwh")
BASELINES = ("torch_svd", "torch_svd_polar", "scipy_polar", "jax_polar", "torch_muon", "kj_muon")
#: Baselines that run in a process of their own (bench.jax_peer), not as a Candidate here.
OWN_PROCESS_BASELINES = ("jax_polar",)
#: Backends worth timing per device. On CPU the Triton kernels run only in Triton's interpreter
#: (a correctness tool, ~1000× slower), so they are not timed there.
DEVICE_BACKENDS = {"cpu": ("torch", "blas"), "cuda": ("torch", "triton", "cuda")}

#: Hidden weight matrices (nn.Linear's out × in) per transformer block, and block counts: the
#: matrices Muon orthogonalizes (embeddings and the head go to AdamW). GPT-2 small (124M):
#: d = 768, 12 blocks, fused q/k/v. The 1.3B model: GPT-3 XL / GPT-Neo 1.3B, d = 2048, 24 blocks.
MODELS = {
    "gpt2-small": (((2304, 768), (768, 768), (3072, 768), (768, 3072)), 12),
    "gpt-1.3b": (((6144, 2048), (2048, 2048), (8192, 2048), (2048, 8192)), 24),
}


@dataclass(frozen=True)
class Workload:
    """``groups``: (count, m, n) triples. ``stacked``: the inputs are one tensor per group
    (a single matrix when count is 1, else a (count, m, n) batch); otherwise ``count`` separate
    matrices per group, as an optimizer holds its parameters (the model workload)."""

    name: str
    kind: str  # square | wide | tall | batched | model
    groups: tuple[tuple[int, int, int], ...]
    stacked: bool = True

    @property
    def size(self) -> int:
        """The x-axis of the time-vs-size plot: the largest dimension."""
        return max(max(m, n) for _, m, n in self.groups)

    def inputs(self, dtype: torch.dtype, device: torch.device, seed: int) -> list[Tensor]:
        """Gaussian matrices, rounded to bfloat16-representable values so that every dtype of
        the run sees exactly the same matrices (and the same float64 polar factor)."""
        gen = torch.Generator().manual_seed(seed)
        out = []
        for count, m, n in self.groups:
            shape = ((m, n) if count == 1 else (count, m, n)) if self.stacked else (count, m, n)
            g = torch.randn(shape, generator=gen, dtype=torch.float32).bfloat16().to(dtype).to(device)
            out.extend([g] if self.stacked else list(g.unbind(0)))
        return out


def square(n: int) -> Workload:
    return Workload(f"square {n}", "square", ((1, n, n),))


def wide(n: int) -> Workload:
    """1:4, as many entries as an n×n matrix."""
    return Workload(f"wide {n // 2}x{2 * n}", "wide", ((1, n // 2, 2 * n),))


def tall(n: int) -> Workload:
    """4:1, as many entries as an n×n matrix."""
    return Workload(f"tall {2 * n}x{n // 2}", "tall", ((1, 2 * n, n // 2),))


def batched(batch: int, n: int) -> Workload:
    return Workload(f"batch {batch}x{n}x{n}", "batched", ((batch, n, n),))


def model(name: str, blocks: int | None = None) -> Workload:
    """Every hidden weight matrix of ``name`` (or of its first ``blocks`` blocks), grouped by shape."""
    shapes, total = MODELS[name]
    blocks = total if blocks is None else min(blocks, total)
    label = name if blocks == total else f"{name} ({blocks}/{total} blocks)"
    return Workload(label, "model", tuple((blocks, m, n) for m, n in shapes), stacked=False)


@dataclass(frozen=True)
class Candidate:
    """One timed implementation.

    ``family``: "polar" (converged factor, compared with the SVD) or "orthogonalize" (a fixed
    number of steps, compared with Muon). ``role``: "svd" / "muon" marks the baselines the
    speedup columns divide by. ``fn`` maps one tensor (a matrix or a batch) to its factor;
    ``fn_many`` (optional) maps a list of matrices to theirs in one grouped call.
    """

    name: str
    family: str
    method: str
    backend: str
    dtype: torch.dtype
    fn: Callable[[Tensor], Tensor]
    fn_many: Callable[[Sequence[Tensor]], list[Tensor]] | None = None
    role: str | None = None
    compiled: bool = False
    hermitian: bool = False  # also computes H (polar())
    steps: int | None = None  # fixed step count, None for converged methods

    @property
    def key(self) -> str:
        return f"{self.name} [{dtype_name(self.dtype)}]"

    def run(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        if self.fn_many is not None and len(inputs) > 1:
            return self.fn_many(inputs)
        return [self.fn(g) for g in inputs]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def usable_backends(device: torch.device, wanted: Sequence[str]) -> tuple[list[str], list[str]]:
    """The backends of ``wanted`` that run on ``device``, and a printed reason for each other."""
    ok, skipped = [], []
    for name in wanted:
        if name not in DEVICE_BACKENDS[device.type]:
            skipped.append(f"backend {name}: not timed on {device.type} "
                           f"(timed there: {', '.join(DEVICE_BACKENDS[device.type])})")
            continue
        try:
            backends.get_ops(name)
        except (ValueError, RuntimeError) as exc:
            skipped.append(f"backend {name}: {exc}")
            continue
        ok.append(name)
    return ok, skipped


def build_candidates(device: torch.device, *, polar_dtypes: Sequence[torch.dtype],
                     orthogonalize_dtypes: Sequence[torch.dtype], methods: Sequence[str],
                     backend_names: Sequence[str], baseline_names: Sequence[str], steps: int,
                     compile_: bool) -> tuple[list[Candidate], list[str]]:
    """Every (method × backend × dtype) candidate plus the baselines; and why others are missing."""
    names, skipped = usable_backends(device, backend_names)
    out: list[Candidate] = []
    for dtype in polar_dtypes:
        if "torch_svd" in baseline_names:
            out.append(Candidate("torch.linalg.svd U Vh", "polar", "svd", "-", dtype, baselines.svd_uvt, role="svd"))
        if "torch_svd_polar" in baseline_names:
            out.append(Candidate("torch.linalg.svd polar (U, H)", "polar", "torch_svd_polar", "-", dtype,
                                 _torch_svd_polar_u, hermitian=True))
        if "scipy_polar" in baseline_names:
            if device.type == "cpu":
                out.append(Candidate("scipy.linalg.polar", "polar", "scipy_polar", "-", dtype,
                                     baselines.scipy_polar, hermitian=True))
            elif dtype == polar_dtypes[0]:
                skipped.append("baseline scipy.linalg.polar: CPU only")
        if "auto" in methods:
            # what a user gets from pk.polar(a) with every default (check_finite included)
            out.append(Candidate("polar(auto)", "polar", auto_polar_method(device), "auto", dtype, _polar_auto,
                                 hermitian=True))
        for method in methods:
            if method not in POLAR_METHODS or method == "auto":
                continue
            for backend in names:
                if method == "svd" and backend not in ("torch", "blas"):
                    continue  # the SVD runs on torch.linalg.svd or (blas) SciPy's LAPACK
                fn = partial(_polar_u, method=method, backend=backend)
                out.append(Candidate(f"polar({method}, {backend})", "polar", method, backend, dtype, fn,
                                     hermitian=True))
    for dtype in orthogonalize_dtypes:
        if "kj_muon" in baseline_names:
            fn = partial(baselines.keller_jordan_quintic, dtype=dtype, steps=steps)
            out.append(Candidate("KellerJordan quintic", "orthogonalize", "muon", "-", dtype, fn, role="muon",
                                 steps=steps))
            if compile_:
                out.append(Candidate("KellerJordan quintic, compiled", "orthogonalize", "muon", "-", dtype,
                                     torch.compile(fn), compiled=True, steps=steps))
        if "torch_muon" in baseline_names and dtype == torch.bfloat16:
            if baselines.TORCH_MUON_REASON:
                skipped.append(f"baseline torch.optim.Muon: {baselines.TORCH_MUON_REASON}")
            else:
                out.append(Candidate("torch.optim.Muon (NS5)", "orthogonalize", "muon", "-", dtype,
                                     baselines.torch_muon, steps=baselines.MUON_STEPS))
        for method in methods:
            if method not in ORTHOGONALIZE_METHODS:
                continue
            if method == "qdwh" and dtype != torch.float32:
                continue  # QDWH runs half precision in float32 (and float64 is polar()'s case)
            for backend in names:
                if backend == "blas" and dtype == torch.bfloat16:
                    continue  # BLAS has no bfloat16 routines
                fn = partial(pk.orthogonalize, method=method, steps=steps, dtype=dtype, backend=backend)
                many = partial(pk.orthogonalize_many, method=method, steps=steps, dtype=dtype, backend=backend)
                out.append(Candidate(f"orthogonalize({method}, {backend})", "orthogonalize", method, backend,
                                     dtype, fn, many, steps=steps))
                if compile_ and backend == "torch" and method == "polar_express":
                    out.append(Candidate(f"orthogonalize({method}, {backend}), compiled", "orthogonalize", method,
                                         backend, dtype, torch.compile(fn), compiled=True, steps=steps))
    if "torch_muon" in baseline_names and torch.bfloat16 not in orthogonalize_dtypes:
        skipped.append("baseline torch.optim.Muon: runs in bfloat16 only; add bfloat16 to --dtypes to time it")
    if "blas" in names and torch.bfloat16 in orthogonalize_dtypes:
        skipped.append("backend blas: no bfloat16 routines (float32/float64 only)")
    return out, skipped


def _torch_svd_polar_u(a: Tensor) -> Tensor:
    """U of :func:`baselines.torch_svd_polar` (which computes H too)."""
    return baselines.torch_svd_polar(a)[0]


def _polar_auto(a: Tensor) -> Tensor:
    """``polar(a)``'s U with every default."""
    return pk.polar(a)[0]


def _polar_u(a: Tensor, *, method: str, backend: str) -> Tensor:
    """``polar()``'s U (H is computed too, as every caller of polar() pays for it)."""
    return pk.polar(a, method=method, backend=backend, check_finite=False)[0]


def applies(candidate: Candidate, workload: Workload) -> bool:
    """Polar (converged) candidates are not run on the model workload: one optimizer step is
    ``orthogonalize``'s job."""
    return not (candidate.family == "polar" and workload.kind == "model")
