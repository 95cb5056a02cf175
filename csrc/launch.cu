// Host-side launcher for the torch extension polarkernels._C (built by setup.py with nvcc).
//
// The kernels are the same sources CuPy compiles at run time through NVRTC; every one takes a
// single device pointer to its parameter block, so one generic entry point launches them all:
// the Python side (polarkernels/backends/cuda.py) builds the blocks and picks the kernel by name.
#include <cuda_runtime.h>

#include <cstring>
#include <string>

#include "fused_polar.cu"
#include "group_copy.cu"
#include "grouped_gemm.cu"

namespace {

struct KernelEntry {
  const char* name;
  const void* fn;
};

#define PK_KERNEL(name) {#name, reinterpret_cast<const void*>(&name)}
const KernelEntry kKernels[] = {
    PK_KERNEL(pk_gemm_nt_bf16),     PK_KERNEL(pk_gemm_nn_bf16),     PK_KERNEL(pk_gemm_nt_f16),
    PK_KERNEL(pk_gemm_nn_f16),      PK_KERNEL(pk_gemm_nt_f32),      PK_KERNEL(pk_gemm_nn_f32),
    PK_KERNEL(pk_fused_polar_bf16), PK_KERNEL(pk_fused_polar_f16),  PK_KERNEL(pk_absmax_bf16),
    PK_KERNEL(pk_absmax_f16),       PK_KERNEL(pk_absmax_f32),       PK_KERNEL(pk_sumsq_bf16),
    PK_KERNEL(pk_sumsq_f16),        PK_KERNEL(pk_sumsq_f32),        PK_KERNEL(pk_scale_copy_bf16),
    PK_KERNEL(pk_scale_copy_f16),   PK_KERNEL(pk_scale_copy_f32),
};
#undef PK_KERNEL

thread_local std::string last_error;

const char* fail(const char* what, cudaError_t err) {
  last_error = std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  return last_error.c_str();
}

}  // namespace

// Launch kernel `name` on `stream` with `grid` blocks of `block` threads, `smem` bytes of dynamic
// shared memory and the parameter block at device address `params`. Returns null on success,
// else a message naming the failing CUDA call and its error.
const char* pk_launch(const char* name, unsigned grid, unsigned block, unsigned smem,
                      unsigned long long stream, unsigned long long params) {
  const void* fn = nullptr;
  for (const KernelEntry& k : kKernels)
    if (std::strcmp(k.name, name) == 0) fn = k.fn;
  if (fn == nullptr) {
    last_error = std::string("no kernel named ") + name;
    return last_error.c_str();
  }
  cudaError_t err = cudaGetLastError();  // an earlier asynchronous error is reported, not blamed on us
  if (err != cudaSuccess) return fail("pending CUDA error before launch", err);
  if (smem > 48 * 1024) {
    err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return fail("cudaFuncSetAttribute(MaxDynamicSharedMemorySize)", err);
  }
  void* ptr = reinterpret_cast<void*>(params);
  void* args[] = {&ptr};
  err = cudaLaunchKernel(fn, dim3(grid), dim3(block), args, smem, reinterpret_cast<cudaStream_t>(stream));
  if (err != cudaSuccess) return fail("cudaLaunchKernel", err);
  err = cudaGetLastError();
  if (err != cudaSuccess) return fail("after launch", err);
  return nullptr;
}
