// The kernel table of the torch extension polarkernels._C (built by setup.py with nvcc).
//
// The kernels are the same sources CuPy compiles at run time through NVRTC; every one takes a
// single device pointer to its parameter block, so one generic entry point launches them all:
// the Python side (polarkernels/backends/cuda.py) builds the blocks and picks the kernel by name.
// The launch itself (device guard, shared-memory attribute, errors) is in launcher.cuh.
#include "fused_polar.cu"
#include "group_copy.cu"
#include "grouped_gemm.cu"
#include "launcher.cuh"

namespace {

#define PK_KERNEL(name) {#name, reinterpret_cast<const void*>(&name)}
const pk_host::KernelEntry kKernels[] = {
    PK_KERNEL(pk_gemm_nt_bf16),     PK_KERNEL(pk_gemm_nn_bf16),     PK_KERNEL(pk_gemm_nt_f16),
    PK_KERNEL(pk_gemm_nn_f16),      PK_KERNEL(pk_gemm_nt_f32),      PK_KERNEL(pk_gemm_nn_f32),
    PK_KERNEL(pk_fused_polar_bf16), PK_KERNEL(pk_fused_polar_f16),  PK_KERNEL(pk_absmax_bf16),
    PK_KERNEL(pk_absmax_f16),       PK_KERNEL(pk_absmax_f32),       PK_KERNEL(pk_sumsq_bf16),
    PK_KERNEL(pk_sumsq_f16),        PK_KERNEL(pk_sumsq_f32),        PK_KERNEL(pk_scale_copy_bf16),
    PK_KERNEL(pk_scale_copy_f16),   PK_KERNEL(pk_scale_copy_f32),
};
#undef PK_KERNEL

}  // namespace

// Launch kernel `name` on `stream` of `device` (see pk_host::launch). Returns null on success,
// else a message naming the failing CUDA call and its error.
const char* pk_launch(const char* name, int device, unsigned grid, unsigned block, unsigned smem,
                      unsigned long long stream, unsigned long long params) {
  return pk_host::launch(kKernels, sizeof(kKernels) / sizeof(kKernels[0]), name, device, grid, block, smem,
                         reinterpret_cast<cudaStream_t>(stream), reinterpret_cast<void*>(params));
}
