"""``backend="auto"`` on GPUs (polarkernels.backends.resolve), with a stand-in CUDA tensor.

No GPU is needed: the rule reads only a tensor's shape, dtype and device, so a stand-in object
says "CUDA" and ``torch.cuda.is_available`` / ``torch.version.hip`` are patched to play an NVIDIA
or a ROCm machine.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from polarkernels import backends
from polarkernels.backends import triton_ops

pytestmark = pytest.mark.skipif(triton_ops._IMPORT_ERROR is not None, reason="triton is not installed")


def cuda_tensor(*shape: int, dtype: torch.dtype = torch.bfloat16) -> SimpleNamespace:
    """What resolve() reads of a CUDA tensor."""
    return SimpleNamespace(shape=torch.Size(shape), dtype=dtype, is_cuda=True, device=torch.device("cuda", 0),
                           ndim=len(shape), numel=lambda: torch.Size(shape).numel(), is_complex=lambda: False)


@pytest.fixture
def nvidia(monkeypatch):
    """A machine with an NVIDIA GPU on which the Triton kernels compile (TRITON_INTERPRET unset)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(triton_ops, "INTERPRETED", False)


@pytest.mark.parametrize("shape, expected", [
    ((2048, 2048), "triton"),
    ((2048, 8192), "triton"),        # aspect 4: still in
    ((8192, 2048), "triton"),        # tall: the same matrix transposed
    ((2048, 8200), "torch"),         # aspect > 4: the symmetric products save < 1.38×
    ((1024, 1024), "torch"),         # 36 Gram tiles: under one wave of SMs
    ((1024, 4096), "torch"),
    ((16, 512, 2048), "torch"),      # batches of small matrices stay on cuBLAS
    ((4, 2048, 4096), "triton"),
], ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_auto_thresholds_are_conservative(nvidia, shape, expected):
    assert backends.resolve("auto", cuda_tensor(*shape)) == expected


def test_auto_keeps_float32_on_torch(nvidia):
    assert backends.resolve("auto", cuda_tensor(4096, 4096, dtype=torch.float32)) == "torch"


def test_auto_never_picks_triton_on_rocm(nvidia, monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")
    assert backends.resolve("auto", cuda_tensor(4096, 4096)) == "torch"
    assert backends.resolve("triton", cuda_tensor(4096, 4096)) == "triton"  # asked for: allowed


def test_auto_skips_the_interpreter_for_cuda_tensors(monkeypatch):
    """TRITON_INTERPRET=1 on a machine with a GPU: the interpreted kernels take CPU tensors only."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(triton_ops, "INTERPRETED", True)
    assert triton_ops.available()[0]  # still usable, on CPU tensors
    assert not triton_ops.compiles_for_gpu()
    assert backends.resolve("auto", cuda_tensor(4096, 4096)) == "torch"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_rocm_dots_use_ieee(monkeypatch, dtype):
    """Triton's AMD backend accepts only input_precision="ieee"; "tf32" failed every compile there."""
    from polarkernels.backends.triton_kernels import launch

    monkeypatch.setattr(torch.version, "hip", None)
    assert launch.dot_precision(dtype, None) == ("ieee" if dtype == torch.float32 else "tf32")
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")
    assert launch.dot_precision(dtype, None) == "ieee"
    assert launch.dot_precision(dtype, "ieee") == "ieee"
    with pytest.raises(ValueError, match="not available on ROCm"):
        launch.dot_precision(dtype, "tf32")
