// A recording stand-in for the CUDA runtime API calls csrc/launcher.cuh makes, so that
// tests/backends/test_cuda.py can run the extension's launch logic on the CPU.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9,
                   cudaErrorIllegalAddress = 700 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
typedef struct CUstream_st* cudaStream_t;
struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };

namespace stub {
inline int current = 0;                        // the current device
inline cudaError_t last = cudaSuccess;         // the runtime's last-error slot
inline cudaError_t launch_result = cudaSuccess;
inline std::vector<std::string> calls;         // "name arg..." per call, in order
}  // namespace stub

inline cudaError_t cudaGetDevice(int* d) { *d = stub::current; return cudaSuccess; }
inline cudaError_t cudaSetDevice(int d) { stub::calls.push_back("cudaSetDevice " + std::to_string(d)); stub::current = d; return cudaSuccess; }
inline cudaError_t cudaGetLastError() { stub::calls.push_back("cudaGetLastError"); cudaError_t e = stub::last; stub::last = cudaSuccess; return e; }
inline cudaError_t cudaPeekAtLastError() { return stub::last; }
inline const char* cudaGetErrorName(cudaError_t e) { return e == cudaErrorInvalidConfiguration ? "cudaErrorInvalidConfiguration" : "cudaError"; }
inline const char* cudaGetErrorString(cudaError_t) { return "stub error"; }
inline cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int value) {
  stub::calls.push_back("cudaFuncSetAttribute device=" + std::to_string(stub::current) + " smem=" + std::to_string(value));
  return cudaSuccess;
}
inline cudaError_t cudaLaunchKernel(const void*, dim3 grid, dim3, void**, std::size_t smem, cudaStream_t) {
  stub::calls.push_back("cudaLaunchKernel device=" + std::to_string(stub::current) + " grid=" + std::to_string(grid.x) +
                        " smem=" + std::to_string(smem));
  if (stub::launch_result != cudaSuccess) stub::last = stub::launch_result;
  return stub::launch_result;
}
