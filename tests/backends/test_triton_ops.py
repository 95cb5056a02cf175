"""The Triton kernels against their reference, torch_ref evaluated in float64 on the same inputs.

Without a GPU the kernels run in Triton's CPU interpreter (``conftest.py`` sets TRITON_INTERPRET
when CUDA is absent); on a GPU the same tests compile real kernels. Shapes are chosen to be no
multiple of any block size (1, 17, 65, 130; tall and wide; one and two batch dims); every output
buffer is poisoned with NaN first, so an element the kernel fails to write fails the test.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from matrices import assert_close

from polarkernels.backends import torch_ref
from polarkernels.backends import triton_ops
from polarkernels.schedules import MUON_QUINTIC

OK, WHY = triton_ops.available()
pytestmark = pytest.mark.skipif(not OK, reason=f"triton backend unavailable: {WHY}")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

#: Relative Frobenius error allowed against torch_ref in float64 on the same stored inputs. The
#: kernels accumulate in fp32, so what is left is fp32 accumulation (≤ k·2⁻²⁴ for k ≤ 200 terms,
#: 1.2e-5 worst case, ~1e-7 measured) plus the final rounding to the storage dtype.
RTOL = {
    torch.float32: 2e-5,      # the accumulation bound above
    torch.float16: 2.0**-10,  # one ulp of fp16 (round-to-nearest gives half that)
    torch.bfloat16: 2.0**-7,  # one ulp of bf16: the interpreter truncates fp32 → bf16
}

#: (batch, m, n): wide, square, tall, single element, one and two batch dims.
SHAPES = {
    "1x1": ((), 1, 1),
    "17x17": ((), 17, 17),
    "17x65": ((), 17, 65),
    "65x130": ((), 65, 130),
    "130x65": ((), 130, 65),
    "3x17x40": ((3,), 17, 40),
    "2x2x33x20": ((2, 2), 33, 20),
}
#: (batch, m) for the m×m operand of poly.
SQUARES = {"1": ((), 1), "17": ((), 17), "65": ((), 65), "130": ((), 130), "3x17": ((3,), 17), "2x2x33": ((2, 2), 33)}

A, B, C = MUON_QUINTIC


@pytest.fixture
def gen(request) -> torch.Generator:
    """A generator seeded from the test id: fresh inputs per test, reproducible across runs."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def unit(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Gaussian matrices scaled to unit Frobenius norm (σ ≤ 1, as in the iteration: no fp16 overflow)."""
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    x = x / torch.linalg.matrix_norm(x, keepdim=True).clamp_min(1e-300)
    return x.to(dtype).to(DEVICE)


def symmetric(batch: tuple[int, ...], m: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Exactly symmetric S = X Xᵀ with ‖X‖_F = 1 (symmetrised in float64, then rounded)."""
    x = unit((*batch, m, m + 3), torch.float64, gen).cpu()
    s = x @ x.mT
    return ((s + s.mT) / 2).to(dtype).to(DEVICE)


def poisoned(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_gram_matches_reference(shape, dtype, gen):
    batch, m, n = shape
    x = unit((*batch, m, n), dtype, gen)
    out = poisoned((*batch, m, m), dtype)
    s = triton_ops.gram(x, out=out)
    assert s is out
    assert_close(s, torch_ref.gram(x.double()), rtol=RTOL[dtype], what=f"gram {dtype}")
    assert torch.equal(s, s.mT), "gram: upper and lower triangles differ"


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SQUARES.values(), ids=SQUARES.keys())
def test_poly_matches_reference(shape, dtype, gen):
    batch, m = shape
    s = symmetric(batch, m, dtype, gen)
    out = poisoned(s.shape, dtype)
    p = triton_ops.poly(s, B, C, out=out)
    assert p is out
    assert_close(p, torch_ref.poly(s.double(), B, C), rtol=RTOL[dtype], what=f"poly {dtype}")
    assert torch.equal(p, p.mT), "poly: upper and lower triangles differ"


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_apply_matches_reference(shape, dtype, gen):
    batch, m, n = shape
    bmat = unit((*batch, m, m), dtype, gen)  # general (not symmetric): apply must not assume it
    x = unit((*batch, m, n), dtype, gen)
    out = poisoned(x.shape, dtype)
    y = triton_ops.apply(bmat, x, A, out=out)
    assert y is out
    assert_close(y, torch_ref.apply(bmat.double(), x.double(), A), rtol=RTOL[dtype], what=f"apply {dtype}")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_without_out_returns_fresh_contiguous_tensors(dtype, gen):
    x = unit((2, 20, 33), dtype, gen)
    s = triton_ops.gram(x)
    p = triton_ops.poly(s, B, C)
    y = triton_ops.apply(p, x, A)
    assert s.shape == (2, 20, 20) and s.is_contiguous() and s.dtype == dtype
    assert p.shape == s.shape and p.is_contiguous() and p.dtype == dtype
    assert y.shape == x.shape and y.is_contiguous() and y.dtype == dtype
    x64 = x.double()
    # each stage's reference starts from the kernel's previous (rounded) output, so one rounding each
    assert_close(s, torch_ref.gram(x64), rtol=RTOL[dtype], what="gram")
    assert_close(p, torch_ref.poly(s.double(), B, C), rtol=RTOL[dtype], what="poly")
    assert_close(y, torch_ref.apply(p.double(), x64, A), rtol=RTOL[dtype], what="apply")


@pytest.mark.parametrize("b, c", [(B, 0.0), (0.0, C), (0.0, 0.0)], ids=["cubic", "square-only", "zero"])
def test_poly_skips_absent_terms(b, c, gen):
    s = symmetric((2,), 40, torch.float32, gen)
    p = triton_ops.poly(s, b, c, out=poisoned(s.shape, torch.float32))
    assert_close(p, torch_ref.poly(s.double(), b, c), rtol=RTOL[torch.float32], what=f"poly b={b} c={c}")


def test_apply_without_axpy(gen):
    bmat, x = unit((2, 40, 40), torch.float32, gen), unit((2, 40, 50), torch.float32, gen)
    y = triton_ops.apply(bmat, x, 0.0, out=poisoned(x.shape, torch.float32))
    assert_close(y, bmat.double() @ x.double(), rtol=RTOL[torch.float32], what="apply a=0")


def _column_major(t: torch.Tensor) -> torch.Tensor:
    return t.mT.contiguous().mT


def _every_other_column(t: torch.Tensor) -> torch.Tensor:
    wide = torch.zeros((*t.shape[:-1], 2 * t.shape[-1]), dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    return wide[..., ::2]


def _every_other_matrix(t: torch.Tensor) -> torch.Tensor:
    return torch.stack([t, torch.zeros_like(t)], 1).flatten(0, 1)[::2]


def _permuted_batch(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(0, 1).contiguous().transpose(0, 1)  # leading dims that cannot merge


#: The same logical (2, 3, m, n) input in memory layouts the kernels must read by strides.
LAYOUTS = {
    "column-major": _column_major,
    "column-stride-2": _every_other_column,
    "batch-stride-2": _every_other_matrix,
    "permuted-batch": _permuted_batch,
}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_strided_inputs(layout, gen):
    dtype = torch.float32  # any indexing error shows far above fp32 rounding
    x, bmat = unit((2, 3, 19, 37), dtype, gen), unit((2, 3, 19, 19), dtype, gen)
    s = symmetric((2, 3), 19, dtype, gen)
    xv, bv, sv = layout(x), layout(bmat), layout(s)
    assert torch.equal(xv, x) and not xv.is_contiguous()
    rtol = RTOL[dtype]
    assert_close(triton_ops.gram(xv), torch_ref.gram(x.double()), rtol=rtol, what="gram")
    assert_close(triton_ops.poly(sv, B, C), torch_ref.poly(s.double(), B, C), rtol=rtol, what="poly")
    assert_close(triton_ops.apply(bv, xv, A), torch_ref.apply(bmat.double(), x.double(), A), rtol=rtol, what="apply")


def test_tall_input_read_transposed(gen):
    """gram of Xᵀ for a stored tall X: the wide orientation without a copy."""
    tall = unit((70, 23), torch.bfloat16, gen)
    s = triton_ops.gram(tall.mT)
    assert_close(s, torch_ref.gram(tall.mT.double()), rtol=RTOL[torch.bfloat16], what="gram of a transposed view")


def test_strided_outputs(gen):
    x = unit((2, 19, 37), torch.float32, gen)
    out_s = poisoned((2, 19, 19), torch.float32).mT
    out_x = poisoned((2, 37, 19), torch.float32).mT
    s = triton_ops.gram(x, out=out_s)
    y = triton_ops.apply(s, x, A, out=out_x)
    assert s is out_s and y is out_x
    assert_close(s, torch_ref.gram(x.double()), rtol=RTOL[torch.float32], what="gram into a transposed out")
    assert_close(y, torch_ref.apply(s.double(), x.double(), A), rtol=RTOL[torch.float32],
                 what="apply into a transposed out")


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 4, 6)], ids=["m=0", "n=0", "batch=0"])
def test_empty_inputs(shape):
    x = torch.ones(shape, device=DEVICE)
    s = triton_ops.gram(x)
    assert torch.equal(s, torch_ref.gram(x))  # n = 0: the zero matrix
    assert triton_ops.poly(s, B, C).shape == s.shape
    assert triton_ops.apply(s, x, A).shape == x.shape


def test_fp32_input_precision_option(gen):
    x = unit((30, 50), torch.float32, gen)
    for precision in ("ieee", "tf32", "tf32x3"):
        # tf32 keeps 10 mantissa bits: each product is off by ≤ 2⁻¹⁰ relative (the interpreter computes exactly)
        assert_close(triton_ops.gram(x, input_precision=precision), torch_ref.gram(x.double()),
                     rtol=2.0**-10, what=f"gram input_precision={precision}")


def test_compiles_without_graph_breaks(gen):
    """The custom ops and their fake implementations let torch.compile trace one full step."""

    def step(x: torch.Tensor) -> torch.Tensor:
        return triton_ops.apply(triton_ops.poly(triton_ops.gram(x), B, C), x, A)

    x = unit((2, 24, 40), torch.float32, gen)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")  # fullgraph: a break raises
    assert torch.equal(compiled(x), step(x))  # the same kernels on the same inputs


@pytest.mark.parametrize("op, args", [
    ("triton_gram", lambda x, s: (x, "ieee")),
    ("triton_poly", lambda x, s: (s, B, C, "ieee")),
    ("triton_apply", lambda x, s: (s, x, A, "ieee")),
], ids=["gram", "poly", "apply"])
def test_custom_op_registration(op, args, gen):
    """torch.library's own checks: schema, fake (meta) implementation, autograd registration."""
    x = unit((2, 9, 14), torch.float32, gen)
    s = triton_ops.gram(x)
    torch.library.opcheck(getattr(torch.ops.polarkernels, op).default, args(x, s),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_available_reports_missing_triton(monkeypatch):
    monkeypatch.setattr(triton_ops, "_IMPORT_ERROR", "No module named 'triton'")
    ok, reason = triton_ops.available()
    assert not ok and "pip install triton" in reason
    with pytest.raises(RuntimeError, match="pip install triton"):
        triton_ops.gram(torch.ones(2, 2))


def test_available_reports_missing_gpu(monkeypatch):
    monkeypatch.setattr(triton_ops, "INTERPRETED", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, reason = triton_ops.available()
    assert not ok and "CUDA" in reason and "TRITON_INTERPRET" in reason


def test_available_here():
    assert triton_ops.available()[0]
    assert triton_ops.NAME == "triton"


BAD_CALLS = {
    "float64": (lambda: triton_ops.gram(torch.ones(3, 4, dtype=torch.float64, device=DEVICE)), ValueError, "dtype"),
    "vector": (lambda: triton_ops.gram(torch.ones(4, device=DEVICE)), ValueError, "rows, cols"),
    "not-a-tensor": (lambda: triton_ops.gram([[1.0]]), TypeError, "Tensor"),
    "poly-not-square": (lambda: triton_ops.poly(torch.ones(3, 4, device=DEVICE), B, C), ValueError, "square"),
    "apply-shapes": (lambda: triton_ops.apply(torch.ones(3, 3, device=DEVICE), torch.ones(4, 5, device=DEVICE), A),
                     ValueError, "bmat must have shape"),
    "apply-dtypes": (lambda: triton_ops.apply(torch.ones(3, 3, device=DEVICE),
                                              torch.ones(3, 5, dtype=torch.float16, device=DEVICE), A),
                     ValueError, "must match"),
    "out-shape": (lambda: triton_ops.gram(torch.ones(3, 4, device=DEVICE), out=torch.empty(4, 4, device=DEVICE)),
                  ValueError, "shape"),
    "out-aliases-input": (lambda: (lambda s: triton_ops.poly(s, B, C, out=s))(torch.eye(3, device=DEVICE)),
                          ValueError, "share memory"),
    "precision": (lambda: triton_ops.gram(torch.ones(3, 4, device=DEVICE), input_precision="fp64"),
                  ValueError, "input_precision"),
}


@pytest.mark.parametrize("call, error, match", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_input_raises_clearly(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.fixture
def autotuned_on_cpu(monkeypatch):
    """The GPU launch path (autotuners, config pruning, grid from the chosen config) run on CPU:
    the autotuners wrap the interpreted kernels; triton's active driver is replaced by one whose
    benchmark runs each config once (all tie) and whose shared memory is an H100's. Yields the
    kernel modules and the list of benchmarked runs."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU the other tests take this path for real")
    from triton.runtime import driver

    from polarkernels.backends.triton_kernels import apply, gram, launch, poly

    ran = []

    def bench(fn, quantiles=None, **_):
        fn()
        ran.append(1)
        return [1.0, 1.0, 1.0] if quantiles else 1.0

    class H100:
        class utils:  # noqa: N801  (the attribute name triton uses)
            @staticmethod
            def get_device_properties(index):
                return {"max_shared_mem": 232448}

        @staticmethod
        def get_benchmarker():
            return bench

    monkeypatch.setattr(driver, "_active", H100())
    check = launch.check_operand
    monkeypatch.setattr(launch, "check_operand", lambda t, name, interpreting: check(t, name, interpreting=True))
    for module in (gram, poly, apply):
        monkeypatch.setattr(module, "INTERPRETED", False)
    monkeypatch.setattr(launch, "_TUNERS", {})
    return gram, poly, apply, launch, ran


def test_autotuned_launch_path_in_interpreter(autotuned_on_cpu, gen):
    gram, poly, apply, launch, ran = autotuned_on_cpu
    x = unit((2, 70, 40), torch.float32, gen)  # fp32: the tuned path does not upcast bf16 for the interpreter
    s = gram.gram(x)
    p = poly.poly(s, B, C)
    y = apply.apply(p, x, A)
    rtol = RTOL[torch.float32]
    assert_close(s, torch_ref.gram(x.double()), rtol=rtol, what="gram, autotuned path")
    assert_close(p, torch_ref.poly(s.double(), B, C), rtol=rtol, what="poly, autotuned path")
    assert_close(y, torch_ref.apply(p.double(), x.double(), A), rtol=rtol, what="apply, autotuned path")
    # square configs for m = 70: all but the 4-stage 128-tile one, whose fp32 buffers (256 KiB)
    # exceed an H100's 227 KiB, are benchmarked (apply's n = 40 leaves one config, which Triton
    # may or may not time depending on its version)
    assert len(ran) >= 4 + 4


def test_autotune_off_runs_the_first_fitting_config(autotuned_on_cpu, monkeypatch, gen):
    """POLARKERNELS_TRITON_AUTOTUNE=0: no config search (Triton ≤ 3.6 still times a lone config once)."""
    gram, poly, apply, launch, ran = autotuned_on_cpu
    monkeypatch.setenv("POLARKERNELS_TRITON_AUTOTUNE", "0")
    x = unit((2, 70, 40), torch.float32, gen)
    s = gram.gram(x)
    y = apply.apply(poly.poly(s, B, C), x, A)
    assert len(ran) <= 3
    assert_close(s, torch_ref.gram(x.double()), rtol=RTOL[torch.float32], what="gram, first config")
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_autotune_classes_key_on_layout_flags_and_size_buckets(autotuned_on_cpu, gen):
    """A transposed operand or a cubic step gets its own tuned config; a new size in the same
    power-of-two bucket reuses the one already benchmarked."""
    gram, poly, apply, launch, _ = autotuned_on_cpu

    def classes(kernel):
        return {key for key in launch._TUNERS if key[0] == kernel}

    x = unit((40, 70), torch.float32, gen)
    gram.gram(x)
    gram.gram(unit((36, 66), torch.float32, gen))  # 33…64 × 65…128: the same buckets
    assert len(classes("_gram_kernel")) == 1
    gram.gram(_column_major(x))  # the same shape read down columns
    assert len(classes("_gram_kernel")) == 2
    gram.gram(unit((70, 40), torch.float32, gen))  # another bucket
    assert len(classes("_gram_kernel")) == 3
    s = gram.gram(x)
    poly.poly(s, B, C)
    poly.poly(s, B, 0.0)  # the cubic step skips the product: not the quintic's config
    assert len(classes("_poly_kernel")) == 2
    apply.apply(s, x, A)
    apply.apply(s, x, 0.0)  # no axpy
    apply.apply(s, _column_major(x), A)
    assert len(classes("_apply_kernel")) == 3
    assert_close(apply.apply(s, _column_major(x), A), torch_ref.apply(s.double(), x.double(), A),
                 rtol=RTOL[torch.float32], what="apply of a column-major X, autotuned path")


# --- real GPU only: the compiled, autotuned kernels at sizes the interpreter cannot afford ---------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_large_16bit_gpu(dtype, gen):
    x = unit((1000, 3000), dtype, gen)
    s = triton_ops.gram(x)
    # round-to-nearest on the GPU: half an ulp (2⁻⁸ bf16, 2⁻¹¹ fp16) plus fp32 accumulation (k ≤ 3000)
    rtol = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-10}[dtype]
    assert_close(s, torch_ref.gram(x.double()), rtol=rtol, what="gram")
    assert torch.equal(s, s.mT)
    p = triton_ops.poly(s, B, C)
    assert_close(p, torch_ref.poly(s.double(), B, C), rtol=rtol, what="poly")
    assert torch.equal(p, p.mT)
    y = triton_ops.apply(p, x, A)
    assert_close(y, torch_ref.apply(p.double(), x.double(), A), rtol=rtol, what="apply")


@pytest.mark.gpu
def test_fp32_precisions_gpu(gen):
    x = unit((512, 1536), torch.float32, gen)
    ref = torch_ref.gram(x.double())
    # ieee: true fp32 products, fp32 accumulation over k = 1536: ≤ 1536·2⁻²⁴ ≈ 9e-5 worst case
    assert_close(triton_ops.gram(x), ref, rtol=1e-4, what="gram ieee")
    # tf32: inputs rounded to 10 mantissa bits, ≤ 2⁻¹⁰ relative per product
    assert_close(triton_ops.gram(x, input_precision="tf32"), ref, rtol=2.0**-10, what="gram tf32")


@pytest.mark.gpu
def test_inductor_compiles_step_gpu(gen):
    def step(x: torch.Tensor) -> torch.Tensor:
        return triton_ops.apply(triton_ops.poly(triton_ops.gram(x), B, C), x, A)

    x = unit((4, 256, 768), torch.bfloat16, gen)
    compiled = torch.compile(step, fullgraph=True)
    assert torch.equal(compiled(x), step(x))  # the same kernels on the same inputs
