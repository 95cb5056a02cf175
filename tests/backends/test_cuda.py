"""The CUDA backend (csrc/ + polarkernels/backends/cuda.py) against the torch reference.

Without a GPU: every .cu compiles with nvcc for sm_80 and sm_90 with warnings as errors, the
kernel sources stay NVRTC-compatible, the parameter blocks match the C structs, the loader's
errors say what to install, and setup.py installs without CUDA.
The real kernels also run on the CPU, compiled against csrc/testing/host_emulation.h (small
shapes). With a GPU (``gpu`` marker): every kernel against torch on fresh random inputs of many
shapes, each dtype, outputs poisoned beforehand. ``POLARKERNELS_CUDA_LOADER=ext`` or ``=cupy`` picks the
load path under test.
"""

from __future__ import annotations

import os
import ctypes
import re
import runpy
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from matrices import rel_err
from polarkernels.backends import cuda, get_ops, torch_ref
from polarkernels.schedules import NEWTON_SCHULZ_CUBIC, fixed_schedule

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
CU_FILES = sorted(p.name for p in CSRC.glob("*.cu"))
KERNEL_FILES = ["common.cuh", "grouped_gemm.cu", "fused_polar.cu", "group_copy.cu"]  # what NVRTC compiles
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH; the CUDA compile checks need it")


# ---------------------------------------------------------------- no GPU needed

ARCHS = ["sm_80", "sm_90"]
#: nvcc's -gencode flags for TORCH_CUDA_ARCH_LIST="8.0;9.0+PTX" (setup.py's default)
SETUP_GENCODE = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
                 "-gencode", "arch=compute_90,code=compute_90"]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
DTYPE_IDS = ["bf16", "f16", "f32"]
LAYOUT_STRUCTS = ["GemmParams", "GemmDesc", "FusedParams", "FusedDesc", "SumsqParams", "SumsqDesc", "CopyParams",
                  "CopyDesc"]


def _mirror(struct: str):
    return getattr(cuda, "_" + re.sub(r"(?<!^)(?=[A-Z])", "_", struct).upper())


def _layout_program() -> str:
    """A host program printing sizeof and every field offset of the parameter-block structs."""
    lines = [f'printf("{s} sizeof %zu\\n", sizeof(pk::{s}));' for s in LAYOUT_STRUCTS]
    lines += [f'printf("{s} {f} %zu\\n", offsetof(pk::{s}, {f}));'
              for s in LAYOUT_STRUCTS for f in _mirror(s).names if not f.startswith("pad")]
    return ("#include <cstdio>\n#include <cstddef>\n" + "".join(f'#include "{f}"\n' for f in KERNEL_FILES[1:])
            + "int main() {\n" + "\n".join(lines) + "\n}\n")


@pytest.fixture(scope="module")
def nvcc_runs(tmp_path_factory):
    """All nvcc jobs of this module at once (they dominate its run time), keyed by test id."""
    out = tmp_path_factory.mktemp("nvcc")
    strict = ["-std=c++17", "--Werror", "all-warnings", f"-I{CSRC}"]
    jobs = {}
    for src in CU_FILES:
        for arch in ARCHS:
            # Kernel files are device-only (what NVRTC compiles): a cubin per architecture.
            if src != "launch.cu":
                jobs[src, arch] = [NVCC, "-cubin", f"-arch={arch}", *strict, str(CSRC / src), "-o",
                                   str(out / f"{src}.{arch}")]
    # launch.cu (host code too) as setup.py builds the extension: SASS for sm_80 and sm_90 plus
    # compute_90 PTX, which the driver compiles for any newer GPU; one nvcc run checks every arch
    jobs["launch.cu", "all"] = [NVCC, "-c", "-Xcompiler", "-Wall,-Wextra,-Werror", *strict, *SETUP_GENCODE,
                                str(CSRC / "launch.cu"), "-o", str(out / "launch.o")]
    (out / "layout.cu").write_text(_layout_program())
    jobs["layout"] = [NVCC, "-std=c++17", "-gencode", "arch=compute_90,code=compute_90", f"-I{CSRC}",
                      str(out / "layout.cu"), "-o", str(out / "layout")]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {key: pool.submit(subprocess.run, cmd, capture_output=True, text=True) for key, cmd in jobs.items()}
    runs = {key: (jobs[key], f.result()) for key, f in futures.items()}
    runs.update({("launch.cu", arch): runs["launch.cu", "all"] for arch in ARCHS})
    runs["layout_exe"] = out / "layout"
    return runs


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", CU_FILES)
def test_cu_compiles_without_warnings(nvcc_runs, source, arch):
    cmd, run = nvcc_runs[source, arch]
    assert run.returncode == 0, f"{' '.join(cmd)}\n{run.stdout}\n{run.stderr}"


def test_kernel_sources_are_nvrtc_compatible():
    """NVRTC has no system or CUDA headers: kernel files may include only common.cuh."""
    for name in KERNEL_FILES:
        includes = re.findall(r'^\s*#\s*include\s*([<"][^>"]+[>"])', (CSRC / name).read_text(), re.M)
        assert set(includes) <= {'"common.cuh"'}, f"{name} includes {includes}"


def test_setup_builds_ptx_by_default(setup_module_ns, monkeypatch):
    """Without TORCH_CUDA_ARCH_LIST, setup.py asks torch for sm_80 and sm_90 SASS plus compute_90
    PTX, exactly the -gencode flags the launch.cu compile check above uses."""
    from torch.utils.cpp_extension import _get_cuda_arch_flags

    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", setup_module_ns["arch_list"]())
    flags = _get_cuda_arch_flags()
    assert sorted(flags) == sorted(f"-gencode={v}" for v in SETUP_GENCODE[1::2])
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert setup_module_ns["arch_list"]() == "9.0"  # an explicit list is the user's


@needs_nvcc
def test_parameter_blocks_match_the_c_structs(nvcc_runs):
    """Every field offset and struct size of cuda.py's NumPy mirrors equals the C layout."""
    cmd, build = nvcc_runs["layout"]
    assert build.returncode == 0, f"{' '.join(cmd)}\n{build.stderr}"
    printed = subprocess.run([str(nvcc_runs["layout_exe"])], capture_output=True, text=True, check=True).stdout
    checked = 0
    for line in printed.splitlines():
        struct, field, value = line.split()
        mirror = _mirror(struct)
        expected = mirror.itemsize if field == "sizeof" else mirror.fields[field][1]
        assert int(value) == expected, f"{struct}.{field}: C says {value}, cuda.py says {expected}"
        checked += 1
    assert checked == len(LAYOUT_STRUCTS) + sum(
        len([f for f in _mirror(s).names if not f.startswith("pad")]) for s in LAYOUT_STRUCTS)


def test_unavailable_without_gpu_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, reason = cuda.available()
    assert not ok and "no CUDA device" in reason


def test_unavailable_without_loader_gives_install_hint(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    monkeypatch.setitem(sys.modules, "polarkernels._C", None)
    monkeypatch.delenv("POLARKERNELS_CUDA_LOADER", raising=False)
    cuda._loader_or_reason.cache_clear()
    try:
        ok, reason = cuda.available()
        assert not ok
        for needed in ("polarkernels._C is not built", "CuPy is not importable", "pip install cupy-cuda12x",
                       "POLARKERNELS_BUILD_CUDA=1 pip install --no-build-isolation"):
            assert needed in reason, f"{needed!r} missing from: {reason}"
        with pytest.raises(RuntimeError, match="pip install cupy"):
            get_ops("cuda")
    finally:
        cuda._loader_or_reason.cache_clear()


def test_bad_loader_choice_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("POLARKERNELS_CUDA_LOADER", "nvcc")
    cuda._loader_or_reason.cache_clear()
    try:
        ok, reason = cuda.available()
        assert not ok and "POLARKERNELS_CUDA_LOADER='nvcc'" in reason
    finally:
        cuda._loader_or_reason.cache_clear()


@pytest.mark.parametrize("call", [
    lambda: cuda.orthogonalize_group([torch.ones(3, 4)], [(1.0, 0.0, 0.0)], 1.0),
    lambda: cuda.gram(torch.ones(3, 4)),
], ids=["group", "gram"])
def test_cpu_tensors_are_refused(call):
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        call()


# ---------------------------------------------------------------- the launch path, on the CPU

GXX = shutil.which("g++")
needs_gxx = pytest.mark.skipif(GXX is None, reason="g++ is not on PATH")


@needs_gxx
def test_extension_launcher_guards_device_caches_attribute_and_leaves_errors(tmp_path):
    """csrc/launcher.cuh against a recording stand-in for the CUDA runtime (tests/backends/cuda_stub)."""
    stub = Path(__file__).parent / "cuda_stub"
    exe = tmp_path / "scenarios"
    build = subprocess.run([GXX, "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{stub}", f"-I{CSRC}",
                            str(stub / "launcher_scenarios.cpp"), "-o", str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    lines = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines()
    results = [line.removeprefix("result ") for line in lines if line.startswith("result ")]
    calls = [line.removeprefix("call ") for line in lines if line.startswith("call ")]
    assert results[:4] == ["ok"] * 4
    assert results[4].startswith("cudaLaunchKernel: cudaErrorInvalidConfiguration"), results[4]
    assert results[5] == "no kernel named nope"
    # an error pending before our launches is left for torch; our own failed launch is cleared
    assert [line for line in lines if line.startswith("pending")] == ["pending 700", "pending 0"]
    assert calls.count("cudaGetLastError") == 1
    # every launch runs on the tensor's device, and the caller's device comes back
    assert all(c.startswith("cudaLaunchKernel device=1") or c.startswith("cudaLaunchKernel device=0")
               for c in calls if c.startswith("cudaLaunchKernel"))
    assert [c.split()[1] for c in calls if c.startswith("cudaLaunchKernel")] == ["device=1", "device=1", "device=0",
                                                                                 "device=1", "device=1"]
    assert "current 0" in lines
    # the shared-memory attribute once per kernel and device, not per launch
    assert [c for c in calls if c.startswith("cudaFuncSetAttribute")] == [
        "cudaFuncSetAttribute device=1 smem=67072", "cudaFuncSetAttribute device=0 smem=67072"]


class _RecordOps(TorchDispatchMode):
    """Records every aten call; serves pinned-memory requests with ordinary memory on a CPU-only torch."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple, dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls.append((str(func), args, kwargs))
        if func is torch.ops.aten.empty.memory_format and kwargs.get("pin_memory"):
            kwargs = dict(kwargs, pin_memory=False)
        return func(*args, **kwargs)


@pytest.fixture
def recorded_launches(monkeypatch):
    """cuda.py's whole host path on CPU tensors: every check and block built for real, the
    launches recorded instead of run."""
    launched = []

    class Loader:
        name = "recorder"

        def launch(self, kernel, grid, smem, params, device):
            launched.append(kernel)

    monkeypatch.setattr(cuda, "_check_cuda", lambda x, what: None)
    monkeypatch.setattr(cuda, "_loader", lambda: Loader())
    monkeypatch.setattr(cuda, "available", lambda: (True, ""))
    monkeypatch.setattr(cuda, "_smem_optin", lambda index: 232448)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    return launched


def test_orthogonalize_cuda_path_never_waits_for_the_device(recorded_launches):
    """polarkernels.orthogonalize(backend="cuda") issues no host synchronisation: no .item() or
    other scalar read-back, and the parameter blocks go up from pinned memory with
    non_blocking=True (a .to(device) from pageable memory blocks the host: a sync per launch
    group, and no CUDA-graph capture)."""
    import polarkernels

    g = torch.randn(3, 40, 70).to(torch.bfloat16)
    with _RecordOps() as ops:
        polarkernels.orthogonalize(g, backend="cuda", dtype=torch.bfloat16)
        cuda.orthogonalize_group([torch.randn(300, 200).bfloat16()], PE5.coeffs, PE5.norm_safety)
    names = [name for name, _, _ in ops.calls]
    assert "aten._local_scalar_dense.default" not in names, "a scalar was read back to the host"
    pinned = [kw for name, _, kw in ops.calls if name == "aten.empty.memory_format" and kw.get("pin_memory")]
    copies = [args for name, args, _ in ops.calls if name == "aten.copy_.default"]
    assert len(pinned) == 2, "the parameter blocks of each call are staged in pinned host memory"
    assert len(copies) == 2 and all(len(args) > 2 and args[2] is True for args in copies), \
        "the upload must be non_blocking"
    assert "pk_fused_polar_bf16" in recorded_launches and "pk_gemm_nn_bf16" in recorded_launches


def test_cupy_loader_compiles_nvrtc_program_once_and_raises_smem_once(monkeypatch):
    """The CuPy path hands NVRTC exactly cuda.nvrtc_program() (what test_nvrtc.py compiles), one
    module per device, and sets a kernel's shared-memory attribute once per size."""
    made, smem_sets = [], []

    class Function:
        def __setattr__(self, name, value):
            smem_sets.append((name, value))

    class Module:
        def __init__(self, code, options):
            made.append((code, options))

        def get_function(self, name):
            return Function()

    fake_cp = type("cupy", (), {"RawModule": Module})
    loader = cuda._CupyLoader(fake_cp)
    for _ in range(3):
        loader._function("pk_gemm_nt_bf16", 0, 67072)
    loader._function("pk_gemm_nt_bf16", 0, 1024)
    loader._function("pk_gemm_nt_bf16", 1, 67072)
    assert made == [cuda.nvrtc_program()] * 2
    assert smem_sets == [("max_dynamic_shared_size_bytes", 67072)] * 2


def _staging_wavefronts(ld: int) -> dict[str, int]:
    """Worst shared-memory wavefronts per warp access of grouped_gemm.cu's epilogue staging tile
    (4-byte words, 32 banks; one wavefront is conflict-free), from the kernel's index formulas:
    the fragment stores ``tile[r * C_LD + c]`` (r = wm + 16 mi + lane/4 (+8), c = wn + 8 ni +
    2 (lane % 4) (+1)) and gemm_store_tile's reads ``tile[r * C_LD + cc + t]`` and, mirrored,
    ``tile[(cc + t) * C_LD + r]`` (r = thread / 16, cc = 8 (thread % 16))."""
    def wavefronts(words):
        banks: dict[int, set[int]] = {}
        for w in words:
            banks.setdefault(w % 32, set()).add(w)
        return max(len(v) for v in banks.values())

    store = max(wavefronts([(wm + 16 * mi + lane // 4 + dr) * ld + wn + 8 * ni + 2 * (lane % 4) + dc
                            for lane in range(32)])
                for wm in (0, 64) for wn in (0, 32, 64, 96) for mi in range(4) for ni in range(4)
                for dr in (0, 8) for dc in (0, 1))
    reads = {}
    for mirrored in (False, True):
        reads[mirrored] = max(wavefronts([((8 * (t % 16) + k) * ld + t // 16) if mirrored else
                                          (t // 16) * ld + 8 * (t % 16) + k for t in range(32 * w, 32 * w + 32)])
                              for w in range(8) for k in range(8))
    return {"store": store, "read": reads[False], "mirrored read": reads[True]}


def test_epilogue_staging_tile_padding_limits_bank_conflicts():
    text = (CSRC / "grouped_gemm.cu").read_text()
    bn = int(re.search(r"constexpr int BM = \d+, BN = (\d+)", text).group(1))
    ld = bn + int(re.search(r"constexpr int C_LD = BN \+ (\d+);", text).group(1))
    # 4-byte stores of the m16n8 accumulator layout cannot beat 2-way (8 rows × 4 even column
    # pairs share 32 banks); C_LD = BN + 1 gave 4-way. The reads are 4-way by their thread map
    # (16 lanes per row, 8 words apart) whatever the padding, and must not get worse.
    assert _staging_wavefronts(ld) == {"store": 2, "read": 4, "mirrored read": 4}


@pytest.fixture(scope="module")
def setup_module_ns():
    return runpy.run_path(str(ROOT / "setup.py"), run_name="polarkernels_setup_under_test")


@pytest.mark.skipif(torch.version.cuda is not None, reason="checks the decision on a CPU-only torch")
def test_setup_skips_extension_on_cpu_torch(setup_module_ns):
    decide = setup_module_ns["cuda_build_decision"]
    assert decide("") == (False, f"torch {torch.__version__} is a CPU-only build")
    assert decide("0") == (False, "POLARKERNELS_BUILD_CUDA=0")
    with pytest.raises(RuntimeError, match="POLARKERNELS_BUILD_CUDA=1 but .* CPU-only"):
        decide("1")


def test_setup_rejects_bad_flag(setup_module_ns):
    with pytest.raises(RuntimeError, match="must be 0 or 1"):
        setup_module_ns["cuda_build_decision"]("yes")


def test_setup_ships_kernel_sources(tmp_path):
    """build_py on a copy of the project: the package gets csrc/*.cu(h), and no CUDA is needed."""
    proj = tmp_path / "proj"
    proj.mkdir()
    for item in ("setup.py", "pyproject.toml", "README.md", "polarkernels", "csrc"):
        if (ROOT / item).is_dir():
            shutil.copytree(ROOT / item, proj / item, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        elif (ROOT / item).exists():
            shutil.copy2(ROOT / item, proj / item)
    env = dict(os.environ, POLARKERNELS_BUILD_CUDA="0")
    run = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path / "lib")],
                         cwd=proj, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    shipped = sorted(p.name for p in (tmp_path / "lib" / "polarkernels" / "csrc").iterdir())
    assert shipped == sorted(p.name for p in CSRC.iterdir() if p.suffix in (".cu", ".cuh"))


# ---------------------------------------------------------------- checks shared by CPU and GPU runs

def _poison_allocator(device) -> None:
    """Leave NaN in the blocks the allocator hands out next (torch's caching allocator on CUDA:
    small and large pools; glibc's on the CPU, likely), so that an output element no kernel
    wrote shows up as non-finite."""
    for numel in (1 << 18, 1 << 24):
        torch.full((numel,), float("nan"), device=device)


def _assert_within(actual, ref64, baseline, *, factor: float, floor: float, what: str) -> None:
    """rel_err(actual, ref64) ≤ factor · rel_err(baseline, ref64) + floor, all finite."""
    assert torch.isfinite(actual).all(), f"{what}: non-finite values (unwritten or overflowed output)"
    err, base = rel_err(actual, ref64), rel_err(baseline, ref64)
    assert err <= factor * base + floor, f"{what}: error {err:.3e} vs torch's {base:.3e} on the same inputs"


def _rounding_floor(dtype, k: int, magnitude, ref64) -> float:
    """What any correct kernel may lose, relative to ‖ref64‖_F: one rounding to ``dtype`` plus the
    a-priori bound of a length-k fp32-accumulated dot product, |fl(xᵀy) − xᵀy| ≤ γ_k |x|ᵀ|y| with
    γ_k = ku/(1 − ku) (Higham, Accuracy and Stability, eq. 3.5); ``magnitude`` is that |x|ᵀ|y|
    entrywise. Torch's own error can be far below this by luck of summation order (a 3×3 fp32
    S² measured 0.6 eps for torch against 2.7 eps for the kernel), so 2× torch alone is flaky."""
    u = torch.finfo(torch.float32).eps / 2
    gamma = k * u / (1 - k * u)
    return torch.finfo(dtype).eps + gamma * float(magnitude.norm() / ref64.norm())


def _check_primitives(shape, dtype, device):
    gen = torch.Generator(device=device).manual_seed(0)  # reproducible; the bound holds for any seed (1,350 checked)
    x = (torch.randn(shape, device=device, generator=gen) / shape[-1] ** 0.5).to(dtype)  # S = X Xᵀ ≈ 1: no fp16 overflow
    # Each output entry is one fp32-accumulated dot product rounded once to `dtype`, as in torch;
    # only the summation order differs: allow 2× torch's error plus the rounding floor above.
    m, n = x.shape[-2:]
    x64 = x.double()
    s_ref = torch_ref.gram(x64)
    _poison_allocator(device)
    _assert_within(cuda.gram(x), s_ref, torch_ref.gram(x), factor=2.0,
                   floor=_rounding_floor(dtype, n, x64.abs() @ x64.abs().mT, s_ref), what=f"gram {shape} {dtype}")
    sym = s_ref.to(dtype)  # an exactly symmetric input in the working dtype
    b, c = -2.5, 1.7
    s64 = sym.double()
    p_ref = torch_ref.poly(s64, b, c)
    _poison_allocator(device)
    _assert_within(cuda.poly(sym, b, c), p_ref, torch_ref.poly(sym, b, c), factor=2.0,
                   floor=_rounding_floor(dtype, m + 2, abs(b) * s64.abs() + abs(c) * s64.abs() @ s64.abs(), p_ref),
                   what=f"poly {shape} {dtype}")
    bmat = (s64 / max(1.0, float(s64.abs().max()))).to(dtype)
    y_ref = torch_ref.apply(bmat.double(), x64, 1.5)
    _poison_allocator(device)
    _assert_within(cuda.apply(bmat, x, 1.5), y_ref, torch_ref.apply(bmat, x, 1.5), factor=2.0,
                   floor=_rounding_floor(dtype, m + 2, 1.5 * x64.abs() + bmat.double().abs() @ x64.abs(), y_ref),
                   what=f"apply {shape} {dtype}")


def _torch_loop(a, coeffs, safety, dtype):
    """The per-matrix reference loop in ``dtype`` (torch_ref ops), normalised in fp32/fp64."""
    tall = a.shape[0] > a.shape[1]
    x = a.mT if tall else a
    wide = x.double() if dtype == torch.float64 else x.float()
    norm = torch.linalg.matrix_norm(wide) * safety
    x = (wide / norm if norm > 0 else wide * 0).to(dtype)
    for ca, cb, cc in coeffs:
        x = torch_ref.apply(torch_ref.poly(torch_ref.gram(x), cb, cc), x, ca)
    return x.mT if tall else x


# (name, coeffs, norm_safety): both quintic schedules, and the cubic (c = 0: poly is skipped).
PE5 = fixed_schedule("polar_express", 5)
SCHEDULES = [("polar_express", PE5.coeffs, PE5.norm_safety),
             ("muon", fixed_schedule("muon", 5).coeffs, 1.0),
             ("cubic", (NEWTON_SCHULZ_CUBIC,) * 6, 1.0)]


def _check_group(shapes, dtype, name, coeffs, safety, path, device):
    mats = [torch.randn(s, device=device).to(dtype) for s in shapes] + [torch.zeros(8, 12, device=device,
                                                                                   dtype=dtype)]
    _poison_allocator(device)
    outs = cuda.orthogonalize_group(mats, coeffs, safety, path=path)
    for a, u in zip(mats, outs):
        what = f"{tuple(a.shape)} {dtype} {name} {path}"
        assert u.shape == a.shape and u.dtype == dtype, what
        if not a.any():
            assert (u == 0).all(), f"{what}: zero input must give zero output"
            continue
        ref64 = _torch_loop(a.double(), coeffs, safety, torch.float64)
        # Same loop, same rounding points, so bound by 2× the torch loop's own error in the same
        # dtype (measured ≤ 1.25× for 16-bit). fp32 floor: the steep first Polar Express steps
        # amplify a last-bit difference in ‖A‖ up to ~100× on a 1×n matrix (measured 1.9e-5
        # while torch's own error happened to be 1.9e-7).
        floor = 5e-5 if dtype == torch.float32 else torch.finfo(dtype).eps
        _assert_within(u, ref64, _torch_loop(a, coeffs, safety, dtype), factor=2.0, floor=floor, what=what)


# ---------------------------------------------------------------- kernels on the CPU
# The real kernel sources, compiled for the host against csrc/testing/host_emulation.h (threads
# for GPU threads, PTX ldmatrix/mma semantics emulated), run on CPU tensors through the same
# Python launcher: CI without a GPU still checks every kernel against torch. Slow (a block is
# 256 OS threads), so the shapes are small; they still cover odd sizes, misaligned rows (the
# element-wise loads), aligned rows (the 16-byte path), batches, both orientations and zero input.


def _emulator_source() -> str:
    common = (CSRC / "common.cuh").read_text()
    portable = common[common.index("// Fragment addressing"):common.index("}  // namespace pk")]
    parts = [(CSRC / "testing" / "host_emulation.h").read_text(), "namespace pk {\n" + portable + "}\n"]
    names = []
    for name in KERNEL_FILES[1:]:
        text = (CSRC / name).read_text().replace('#include "common.cuh"', "")
        text = text.replace("extern __shared__ __align__(16) unsigned char smem[];", "unsigned char* smem = emu::smem;")
        text = text.replace("__shared__", "static")  # one block runs at a time
        names += re.findall(r'extern "C" __global__ void __launch_bounds__\(256\) (\w+)\(', text)
        parts.append(text.replace('extern "C" __global__ void __launch_bounds__(256) ', "void "))
    table = ",\n".join(f'{{"{n}", reinterpret_cast<void (*)(const void*)>(&{n})}}' for n in names)
    parts.append('#include <string>\nstruct Entry { const char* name; void (*fn)(const void*); };\n'
                 f"static const Entry kTable[] = {{{table}}};\n"
                 'extern "C" int emu_launch(const char* name, unsigned grid, const void* params) {\n'
                 "  for (const Entry& e : kTable)\n"
                 "    if (std::string(e.name) == name) { emu::run_grid(e.fn, grid, params); return 0; }\n"
                 "  return 1;\n}\n")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    if GXX is None:
        pytest.skip("g++ is not on PATH; the host emulation of the kernels needs it")
    out = tmp_path_factory.mktemp("emu")
    (out / "kernels.cpp").write_text(_emulator_source())
    build = subprocess.run([GXX, "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", str(out / "kernels.cpp"),
                            "-o", str(out / "libkernels.so")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    lib = ctypes.CDLL(str(out / "libkernels.so"))
    lib.emu_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_void_p]
    return lib


@pytest.fixture
def on_host(host_kernels, monkeypatch):
    """Route cuda.py's launches to the host-compiled kernels; CPU tensors stand in for CUDA ones."""
    def run(launches):
        blob = b"".join(launches._blobs)
        buf = ctypes.create_string_buffer(blob, len(blob))
        for kernel, grid, smem, offset in launches._items:
            assert smem <= 232448, f"{kernel} asks {smem} B of shared memory, more than an H100 block has"
            assert host_kernels.emu_launch(kernel.encode(), grid, ctypes.addressof(buf) + offset) == 0, kernel

    monkeypatch.setattr(cuda._Launches, "run", run)
    monkeypatch.setattr(cuda, "_check_cuda", lambda x, what: None)
    monkeypatch.setattr(cuda, "_smem_optin", lambda index: 232448)  # H100's opt-in limit per block
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(3, 5), (17, 40), (2, 33, 65)], ids=lambda s: "x".join(map(str, s)))
def test_host_kernels_primitives_match_torch(on_host, shape, dtype):
    _check_primitives(shape, dtype, "cpu")


@pytest.mark.parametrize("path", ["auto", "stepped"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_host_kernels_group_matches_torch_loop(on_host, dtype, path):
    if dtype == torch.float32 and path == "auto":
        pytest.skip("fp32 never fuses: 'auto' is 'stepped'")
    shapes = [(1, 7), (9, 1), (33, 65), (40, 20)]
    # Two steps of a quintic (c ≠ 0) and of the cubic (c = 0) reach every branch; more steps
    # would only repeat the same launches (each emulated block costs 256 OS threads).
    for name, coeffs, safety in (SCHEDULES[0], SCHEDULES[2]):
        _check_group(shapes, dtype, name, coeffs[:2], safety, path, "cpu")


# ---------------------------------------------------------------- GPU

PRIM_SHAPES = [(1, 1), (3, 5), (17, 40), (64, 576), (130, 257), (128, 128), (2, 3, 33, 65), (4, 200, 300)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", PRIM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_primitives_match_torch(shape, dtype):
    _check_primitives(shape, dtype, "cuda")


# A ragged group: odd, tiny, tall and wide, fused-size and stepped-size (plus one zero matrix).
GROUP_SHAPES = [(1, 1), (1, 7), (9, 1), (7, 3), (16, 16), (33, 65), (64, 576), (576, 64), (100, 300), (128, 129),
                (129, 128), (200, 300), (300, 200), (257, 130), (768, 768), (384, 1536)]


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["auto", "stepped"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=[s[0] for s in SCHEDULES])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_orthogonalize_group_matches_torch_loop(dtype, schedule, path):
    _check_group(GROUP_SHAPES, dtype, *schedule, path, "cuda")


@pytest.mark.gpu
def test_fused_path_takes_small_and_refuses_large():
    sched = fixed_schedule("polar_express", 5)
    small = [torch.randn(s, device="cuda", dtype=torch.bfloat16) for s in [(64, 576), (576, 64), (128, 300)]]
    assert [u.shape for u in cuda.orthogonalize_group(small, sched.coeffs, sched.norm_safety, path="fused")] == \
        [a.shape for a in small]
    with pytest.raises(ValueError, match="does not fit the fused kernel"):
        cuda.orthogonalize_group([torch.randn(200, 300, device="cuda", dtype=torch.bfloat16)], sched.coeffs,
                                 sched.norm_safety, path="fused")
    with pytest.raises(ValueError, match="does not fit the fused kernel"):
        cuda.orthogonalize_group([torch.randn(64, 64, device="cuda")], sched.coeffs, sched.norm_safety,
                                 path="fused")


@pytest.mark.gpu
def test_mixed_dtypes_are_refused():
    with pytest.raises(ValueError, match="one dtype and device"):
        cuda.orthogonalize_group([torch.randn(4, 4, device="cuda"), torch.randn(4, 4, device="cuda").half()],
                                 [(1.5, -0.5, 0.0)], 1.0)
