"""The CuPy load path's exact program, compiled by NVRTC for sm_80, sm_90 and sm_100 (no GPU needed).

``polarkernels.backends.cuda.nvrtc_program()`` is the text and options the CuPy loader passes to
``cupy.RawModule``; CuPy adds ``-ftz=true`` and ``-arch`` (a cubin for the GPU it runs on), as
here. NVRTC comes from PyPI (``pip install nvidia-cuda-nvrtc cuda-bindings``; .ci/run installs
them); without those packages the test skips and says so.
"""

from __future__ import annotations

import pytest

from polarkernels.backends import cuda

try:
    from cuda.bindings import nvrtc
    _, NVRTC_MAJOR, NVRTC_MINOR = nvrtc.nvrtcVersion()
except Exception as exc:  # ImportError, or the NVRTC library missing at load time
    nvrtc = None
    WHY = f"NVRTC is not available ({type(exc).__name__}: {exc}); pip install nvidia-cuda-nvrtc cuda-bindings"
else:
    WHY = ""

pytestmark = pytest.mark.skipif(nvrtc is None, reason=WHY)

#: The kernels' entry points (extern "C": their names survive compilation unmangled).
KERNELS = [f"pk_gemm_{op}_{t}" for op in ("nt", "nn") for t in ("bf16", "f16", "f32")] + \
    [f"pk_fused_polar_{t}" for t in ("bf16", "f16")] + \
    [f"pk_{k}_{t}" for k in ("absmax", "sumsq", "scale_copy") for t in ("bf16", "f16", "f32")]


def _check(result, what: str, log: str = "") -> None:
    err = result[0] if isinstance(result, tuple) else result
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, f"{what}: {err}\n{log}"


@pytest.mark.parametrize("arch", ["sm_80", "sm_90", "sm_100"])
def test_cupy_program_compiles_with_nvrtc(arch):
    code, options = cuda.nvrtc_program()
    err, prog = nvrtc.nvrtcCreateProgram(code.encode(), b"polarkernels.cu", 0, [], [])
    _check(err, "nvrtcCreateProgram")
    try:
        opts = [o.encode() for o in (*options, "-ftz=true", f"-arch={arch}")]
        compiled = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        log = log.decode(errors="replace").rstrip("\x00 \n")
        _check(compiled, f"NVRTC {NVRTC_MAJOR}.{NVRTC_MINOR} for {arch}", log)
        assert "warning" not in log.lower(), f"NVRTC {NVRTC_MAJOR}.{NVRTC_MINOR} warnings for {arch}:\n{log}"
        _, cubin_size = nvrtc.nvrtcGetCUBINSize(prog)
        cubin = b" " * cubin_size
        _check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        missing = [k for k in KERNELS if k.encode() not in cubin]
        assert not missing, f"kernels missing from the {arch} cubin: {missing}"
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
