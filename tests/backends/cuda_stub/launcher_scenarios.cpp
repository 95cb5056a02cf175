// Scenarios for csrc/launcher.cuh against the recording stub; prints the calls made and results.
#include <cstdio>

#include "launcher.cuh"

static void kernel_a() {}
static void kernel_b() {}
static const pk_host::KernelEntry kTable[] = {{"a", reinterpret_cast<const void*>(&kernel_a)},
                                              {"b", reinterpret_cast<const void*>(&kernel_b)}};

static void launch(const char* name, int device, unsigned smem) {
  const char* err = pk_host::launch(kTable, 2, name, device, 7, 256, smem, nullptr, nullptr);
  std::printf("result %s\n", err ? err : "ok");
}

int main() {
  stub::current = 0;
  stub::last = cudaErrorIllegalAddress;  // left by earlier asynchronous work: torch's to report
  launch("a", 1, 67072);                 // another device, large shared memory
  launch("a", 1, 67072);                 // same kernel, device and size: no attribute call
  launch("a", 0, 67072);                 // the current device
  launch("b", 1, 1024);                  // small: no attribute call
  std::printf("pending %d\n", static_cast<int>(stub::last));
  stub::last = cudaSuccess;
  stub::launch_result = cudaErrorInvalidConfiguration;
  launch("a", 1, 67072);
  std::printf("pending %d\n", static_cast<int>(stub::last));
  launch("nope", 0, 0);
  std::printf("current %d\n", stub::current);
  for (const std::string& c : stub::calls) std::printf("call %s\n", c.c_str());
}
