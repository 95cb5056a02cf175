// Host side of the extension's launcher (csrc/launch.cu): launch a kernel by name on a given
// device and stream. Only the CUDA runtime API, no kernels, so tests/backends/test_cuda.py
// compiles it on the CPU against a recording stand-in for cuda_runtime.h.
//
// - Device guard: the tensor's device is made current for the attribute call and the launch (a
//   stream belongs to one device; cudaFuncSetAttribute acts on the current one), then restored.
// - cudaFuncSetAttribute(MaxDynamicSharedMemorySize) once per kernel, device and size, not on
//   every launch.
// - Errors: cudaLaunchKernel's own return value. The runtime's last-error slot is neither read
//   before the launch (an error left there by earlier work is torch's to report) nor after a
//   successful one; after a failed launch it is cleared, as that error is reported here.
#ifndef POLARKERNELS_LAUNCHER_CUH
#define POLARKERNELS_LAUNCHER_CUH

#include <cuda_runtime.h>

#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace pk_host {

struct KernelEntry {
  const char* name;
  const void* fn;
};

inline thread_local std::string last_error;

inline const char* fail(const char* what, cudaError_t err) {
  last_error = std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  return last_error.c_str();
}

// Makes `device` current for its lifetime (when it is not already) and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : target_(device) {
    status_ = cudaGetDevice(&previous_);
    if (status_ == cudaSuccess && previous_ != device) status_ = cudaSetDevice(device);
  }
  ~DeviceGuard() {
    if (status_ == cudaSuccess && previous_ != target_) cudaSetDevice(previous_);
  }
  cudaError_t status() const { return status_; }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int target_, previous_ = -1;
  cudaError_t status_;
};

// The dynamic shared memory `fn` may use on `device` has been raised to at least `smem`.
inline cudaError_t ensure_smem(const void* fn, int device, unsigned smem) {
  static std::mutex lock;
  static std::map<std::pair<const void*, int>, unsigned> granted;
  std::lock_guard<std::mutex> hold(lock);
  unsigned& have = granted[{fn, device}];
  if (have >= smem) return cudaSuccess;
  const cudaError_t err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err == cudaSuccess) have = smem;
  return err;
}

// Launch `name` from `table` with `grid` blocks of `block` threads and `smem` bytes of dynamic
// shared memory on `stream` of `device`; the kernel's one argument is the device pointer `params`.
// Returns null on success, else a message naming the failing call and its error.
inline const char* launch(const KernelEntry* table, int count, const char* name, int device, unsigned grid,
                          unsigned block, unsigned smem, cudaStream_t stream, void* params) {
  const void* fn = nullptr;
  for (int i = 0; i < count; ++i)
    if (std::strcmp(table[i].name, name) == 0) fn = table[i].fn;
  if (fn == nullptr) {
    last_error = std::string("no kernel named ") + name;
    return last_error.c_str();
  }
  DeviceGuard guard(device);
  if (guard.status() != cudaSuccess) return fail("cudaSetDevice", guard.status());
  cudaError_t err;
  if (smem > 48 * 1024 && (err = ensure_smem(fn, device, smem)) != cudaSuccess)
    return fail("cudaFuncSetAttribute(MaxDynamicSharedMemorySize)", err);
  void* args[] = {&params};
  err = cudaLaunchKernel(fn, dim3(grid), dim3(block), args, smem, stream);
  if (err != cudaSuccess) {
    cudaGetLastError();  // this launch's own error, reported here: not left for torch to find
    return fail("cudaLaunchKernel", err);
  }
  return nullptr;
}

}  // namespace pk_host

#endif  // POLARKERNELS_LAUNCHER_CUH
