"""Build hooks for polarkernels; the metadata lives in pyproject.toml.

- The CUDA sources of ``csrc/`` are copied into the package (``polarkernels/csrc/``) so that an
  installed package can compile them at run time through CuPy (NVRTC).
- The extension ``polarkernels._C`` (csrc/launch.cu + csrc/ext.cpp) is built only when torch is
  a CUDA build and nvcc is found. ``POLARKERNELS_BUILD_CUDA=1`` insists (and fails with the
  reason when it cannot), ``=0`` skips it. Build it against the installed torch with
  ``POLARKERNELS_BUILD_CUDA=1 pip install --no-build-isolation .``; a plain ``pip install .``
  (isolated build, no torch inside) installs the pure-Python package and never fails for want of
  CUDA. ``TORCH_CUDA_ARCH_LIST`` picks the GPU architectures (default here: "8.0;9.0+PTX", SASS
  for sm_80 and sm_90 plus compute_90 PTX that the driver compiles for newer GPUs; the kernels
  need sm_80 or newer).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
KERNEL_SOURCES = ("*.cu", "*.cuh")


class BuildPyWithKernels(build_py):
    """build_py that also ships csrc/*.cu and *.cuh as polarkernels/csrc/ package data."""

    def run(self) -> None:
        super().run()
        dest = Path(self.build_lib) / "polarkernels" / "csrc"
        dest.mkdir(parents=True, exist_ok=True)
        for pattern in KERNEL_SOURCES:
            for src in CSRC.glob(pattern):
                shutil.copy2(src, dest / src.name)


def cuda_build_decision(flag: str | None = None) -> tuple[bool, str]:
    """(build the extension?, why) from POLARKERNELS_BUILD_CUDA (or ``flag``) and the environment.

    Raises ``RuntimeError`` when the flag is "1" and the extension cannot be built.
    """
    flag = (os.environ.get("POLARKERNELS_BUILD_CUDA", "") if flag is None else flag).strip()
    if flag not in ("", "0", "1"):
        raise RuntimeError(f"POLARKERNELS_BUILD_CUDA must be 0 or 1, got {flag!r}")
    if flag == "0":
        return False, "POLARKERNELS_BUILD_CUDA=0"
    reason = _cuda_missing()
    if reason is None:
        return True, "torch is a CUDA build and nvcc is present"
    if flag == "1":
        raise RuntimeError(f"POLARKERNELS_BUILD_CUDA=1 but the CUDA extension cannot be built: {reason}")
    return False, reason


def _cuda_missing() -> str | None:
    """Why the extension cannot be built here, or None when it can."""
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError as exc:
        return f"torch is not importable in the build environment ({exc}); use --no-build-isolation"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    nvcc = Path(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    if nvcc is None or not nvcc.is_file():
        return "nvcc not found (set CUDA_HOME to the CUDA toolkit)"
    return None


def arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST for the build: the user's, else sm_80 and sm_90 SASS plus compute_90
    PTX (nvcc ``-gencode arch=compute_90,code=compute_90``), so the extension also loads on GPUs
    newer than sm_90 (the driver compiles the PTX at first use)."""
    return os.environ.get("TORCH_CUDA_ARCH_LIST") or "8.0;9.0+PTX"


def _extension_kwargs() -> dict:
    build, reason = cuda_build_decision()
    if not build:
        print(f"polarkernels: not building the CUDA extension ({reason}); the kernels load through CuPy instead")
        return {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list()
    ext = CUDAExtension(
        "polarkernels._C",
        sources=["csrc/ext.cpp", "csrc/launch.cu"],
        depends=[str(p) for p in sorted(CSRC.glob("*.cu*"))],
        include_dirs=[str(CSRC)],
        extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "-std=c++17"]},
    )
    return {"ext_modules": [ext], "cmdclass": {"build_py": BuildPyWithKernels, "build_ext": BuildExtension}}


if __name__ == "__main__":
    kwargs = {"cmdclass": {"build_py": BuildPyWithKernels}}
    kwargs.update(_extension_kwargs())
    setup(**kwargs)
