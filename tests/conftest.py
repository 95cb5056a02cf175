"""Test-session setup shared by every folder.

Without a GPU the Triton kernels run in Triton's CPU interpreter: ``triton.jit`` decides
interpreter-or-compiler when it decorates a kernel (when ``polarkernels.backends.triton_ops`` is
first imported), so ``TRITON_INTERPRET`` is set here, before any test module is imported. On a GPU
the same tests compile real kernels.
"""

import os
import sys
import zlib
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))  # tests/matrices.py, importable from subfolders


@pytest.fixture(autouse=True)
def _seed_torch(request):
    """Every test draws its random inputs from a seed of its own (its node id), so a failure
    reproduces alone and under any test order or ``-k`` selection."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
