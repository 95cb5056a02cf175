"""The launch-free fast path: ``orthogonalize`` under ``torch.compile(fullgraph=True)`` and without
host synchronisation.

- CPU, torch backend: the whole call (validation, backend choice, normalisation, the fixed
  steps) traces as one graph and gives the eager result.
- GPU, Triton backend, without a GPU: the kernels' ``triton_op`` bodies traced with fake CUDA
  tensors record every launch as a ``wrap_triton`` node (what torch.compile hands Inductor), in a
  subprocess because TRITON_INTERPRET must be unset before the kernels are decorated.
- No scalar read-back (``.item()``, ``bool(tensor)``: the host syncs of a CUDA run) on the path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import polarkernels

ROOT = Path(__file__).resolve().parents[2]


def test_orthogonalize_traces_as_one_graph_on_cpu():
    torch._dynamo.reset()
    compiled = torch.compile(polarkernels.orthogonalize, fullgraph=True, backend="eager")  # a break raises
    g = torch.randn(2, 24, 40, generator=torch.Generator().manual_seed(0))
    for backend in ("torch", "auto"):
        # the same float32 ops in the same order: equal to the eager call bit for bit
        assert torch.equal(compiled(g, backend=backend), polarkernels.orthogonalize(g, backend=backend))


class _ScalarReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("gram", [False, True], ids=["plain", "gram-ns"])
def test_orthogonalize_reads_no_scalar_back(gram):
    """On CUDA every scalar read-back waits for the GPU; the fixed-step path has none."""
    g = torch.randn(3, 30, 50, generator=torch.Generator().manual_seed(1))
    with _ScalarReads() as reads:
        polarkernels.orthogonalize(g, backend="torch", gram=gram)
    assert reads.count == 0


TRACE_TRITON_ON_FAKE_CUDA = textwrap.dedent("""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    class H100:  # what autotuning's config pruning asks of the driver while tracing
        class utils:
            @staticmethod
            def get_device_properties(index):
                return {"max_shared_mem": 232448}

        @staticmethod
        def get_current_target():
            return GPUTarget("cuda", 90, 32)

    driver._active = H100()
    torch.cuda.is_available = lambda: True
    from polarkernels.backends import triton_ops

    assert not triton_ops.INTERPRETED
    registered = torch._library.triton.triton_ops_to_kernels
    assert {"polarkernels::triton_gram", "polarkernels::triton_poly", "polarkernels::triton_apply"} <= set(registered)

    def step(x):
        s = triton_ops._gram_impl(x, "tf32")
        return triton_ops._apply_impl(triton_ops._poly_impl(s, -4.7, 2.0, "tf32"), x, 3.4, "tf32")

    with FakeTensorMode():
        x = torch.empty(2, 256, 512, dtype=torch.bfloat16, device="cuda")
        code = make_fx(step)(x).code
    print(code.count("triton_kernel_wrapper_mutation("), "launches traced")
""")


@pytest.mark.skipif(not hasattr(torch.library, "triton_op"), reason="torch.library.triton_op needs torch >= 2.6")
def test_triton_launches_trace_on_fake_cuda_tensors():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT)]))
    run = subprocess.run([sys.executable, "-c", TRACE_TRITON_ON_FAKE_CUDA], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.strip().endswith("3 launches traced"), run.stdout
