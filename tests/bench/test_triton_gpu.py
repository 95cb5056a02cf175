"""``bench/triton_gpu.py --compile-only``: every Triton kernel compiled ahead of time for sm_80
(Ampere, mma.sync) and sm_90 (Hopper, wgmma) by the installed Triton, without a GPU.

The interpreter tests cannot show that the kernels build for real targets; this does. .ci/run
runs it under the newest Triton and again under the oldest supported one (3.6, the GPU
machine's). In a subprocess: TRITON_INTERPRET must be unset before triton decorates the kernels.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
triton = pytest.importorskip("triton")

KERNELS = ("_gram_kernel", "_poly_kernel", "_apply_kernel")


def test_every_kernel_compiles_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 is its default
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT)]))
    run = subprocess.run([sys.executable, "-m", "bench.triton_gpu", "--compile-only", "80,90"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    lines = [line.split() for line in run.stdout.splitlines() if line.startswith("sm_")]
    made = {(arch, kernel): mma for arch, kernel, mma, *_ in lines}
    expected = {("sm_80", k): "mma.sync" for k in KERNELS} | {("sm_90", k): "wgmma" for k in KERNELS}
    assert made == expected, f"triton {triton.__version__}:\n{run.stdout}"
