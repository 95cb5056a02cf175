// Host (CPU) emulation of the CUDA features the polarkernels kernels use: a test harness only.
//
// tests/backends/test_cuda.py compiles the real kernel sources (csrc/*.cu, with the PTX-free
// parts of csrc/common.cuh) against this header with g++, so that CI without a GPU still runs
// every kernel, its fragment addressing and its tile maps, against torch. A block is 256
// std::threads; __syncthreads and __syncwarp are std::barriers; ldmatrix and mma.sync are
// warp collectives that exchange registers through shared slots and follow the PTX ISA's
// fragment layouts ("Matrix fragments for mma.m16n8k16", "ldmatrix"); cp.async copies at once.
// Nothing here is shipped or used at run time.
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <thread>
#include <vector>

#define __device__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(x)
#define __align__(x) alignas(x)
struct uint4 { unsigned x, y, z, w; };
struct EmuDim { unsigned x; };
inline thread_local EmuDim threadIdx, blockIdx;
namespace emu {
alignas(16) inline unsigned char smem[256 * 1024];
inline std::barrier<>* block_bar;
inline std::barrier<>* warp_bar[8];
struct Slots { const void* addr[32]; unsigned a[32][4]; unsigned b[32][2]; float v[32]; };
inline Slots slots[8];
inline int warp() { return threadIdx.x >> 5; }
inline int lane() { return threadIdx.x & 31; }
inline void wsync() { warp_bar[warp()]->arrive_and_wait(); }

// Run a kernel over `grid` blocks of 256 threads, one block after another.
inline void run_grid(void (*kernel)(const void*), unsigned grid, const void* params) {
  for (unsigned b = 0; b < grid; ++b) {
    std::barrier<> block(256);
    std::deque<std::barrier<>> warps;  // barriers cannot move: a deque never moves them
    block_bar = &block;
    for (int w = 0; w < 8; ++w) warp_bar[w] = &warps.emplace_back(32);
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < 256; ++t)
      threads.emplace_back([=] { threadIdx.x = t; blockIdx.x = b; kernel(params); });
    for (std::thread& t : threads) t.join();
  }
}
}  // namespace emu
inline void __syncthreads() { emu::block_bar->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::wsync(); }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline int __float_as_int(float f) { int u; std::memcpy(&u, &f, 4); return u; }
inline float __shfl_xor_sync(unsigned, float v, int o) {
  emu::slots[emu::warp()].v[emu::lane()] = v; emu::wsync();
  float r = emu::slots[emu::warp()].v[emu::lane() ^ o]; emu::wsync(); return r;
}
inline float atomicAdd(float* p, float v) {
  std::atomic_ref<float> a(*p); float old = a.load();
  while (!a.compare_exchange_weak(old, old + v)) {}
  return old;
}
inline int atomicMax(int* p, int v) { std::atomic_ref<int> a(*p); int old = a.load(); while (old < v && !a.compare_exchange_weak(old, v)) {} return old; }

namespace pk {
typedef unsigned long long u64;
inline unsigned short emu_bf16(float f) {
  unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40;
  u += 0x7fffu + ((u >> 16) & 1u); return u >> 16;
}
inline float emu_half_to_float(unsigned short h) { _Float16 x; std::memcpy(&x, &h, 2); return (float)x; }
inline unsigned short emu_float_to_half(float f) { _Float16 x = (_Float16)f; unsigned short h; std::memcpy(&h, &x, 2); return h; }
// mma.m16n8k16 row.col: gather the warp's fragments, each lane computes its 4 outputs (PTX ISA layout).
template <class Conv>
inline void emu_mma(float d[4], const unsigned a[4], unsigned b0, unsigned b1, Conv conv) {
  auto& s = emu::slots[emu::warp()]; int l = emu::lane();
  for (int i = 0; i < 4; ++i) s.a[l][i] = a[i];
  s.b[l][0] = b0; s.b[l][1] = b1;
  emu::wsync();
  auto A = [&](int r, int k) {  // a0:(g,2c) a1:(g+8,2c) a2:(g,2c+8) a3:(g+8,2c+8), two halves per reg
    int reg = (r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0); int g = r & 7, kk = k & 7;
    unsigned w = s.a[g * 4 + kk / 2][reg]; return conv((unsigned short)(kk & 1 ? w >> 16 : w & 0xffff)); };
  auto B = [&](int k, int n) {  // b0:(k=2c..,n=g) b1:(k=2c+8..,n=g)
    int reg = k >= 8 ? 1 : 0; int kk = k & 7;
    unsigned w = s.b[n * 4 + kk / 2][reg]; return conv((unsigned short)(kk & 1 ? w >> 16 : w & 0xffff)); };
  int g = l >> 2, c = l & 3;
  for (int h = 0; h < 4; ++h) {
    int r = g + (h >= 2 ? 8 : 0), n = 2 * c + (h & 1);
    float acc = d[h];
    for (int k = 0; k < 16; ++k) acc += A(r, k) * B(k, n);
    d[h] = acc;
  }
  emu::wsync();
}
struct BF16 {
  typedef unsigned short storage;
  static float to_float(storage h) { return __uint_as_float(static_cast<unsigned>(h) << 16); }
  static storage from_float(float f) { return emu_bf16(f); }
  static void mma(float d[4], const unsigned a[4], unsigned b0, unsigned b1) { emu_mma(d, a, b0, b1, to_float); }
};
struct F16 {
  typedef unsigned short storage;
  static float to_float(storage h) { return emu_half_to_float(h); }
  static storage from_float(float f) { return emu_float_to_half(f); }
  static void mma(float d[4], const unsigned a[4], unsigned b0, unsigned b1) { emu_mma(d, a, b0, b1, to_float); }
};
struct F32 {
  typedef float storage;
  static float to_float(storage x) { return x; }
  static storage from_float(float f) { return f; }
};
inline bool aligned16(const void* p) { return (reinterpret_cast<u64>(p) & 15ull) == 0; }
inline void cp_async16(void* dst, const void* src) { std::memcpy(dst, src, 16); }
inline void cp_async_commit() {}
template <int N> inline void cp_async_wait() {}
// ldmatrix x4: lane l gives the row address of matrix l/8; lane t receives row t/4, cols 2(t%4)+{0,1}
// of each matrix (.trans: rows 2(t%4)+{0,1}, col t/4).
inline void emu_ldsm(unsigned r[4], const void* p, bool trans) {
  auto& s = emu::slots[emu::warp()]; int l = emu::lane();
  s.addr[l] = p; emu::wsync();
  for (int i = 0; i < 4; ++i) {
    unsigned short e[2];
    for (int j = 0; j < 2; ++j) {
      int row = trans ? 2 * (l & 3) + j : l >> 2, col = trans ? l >> 2 : 2 * (l & 3) + j;
      e[j] = static_cast<const unsigned short*>(s.addr[8 * i + row])[col];
    }
    r[i] = e[0] | (unsigned(e[1]) << 16);
  }
  emu::wsync();
}
inline void ldsm_x4(unsigned r[4], const void* p) { emu_ldsm(r, p, false); }
inline void ldsm_x4_trans(unsigned r[4], const void* p) { emu_ldsm(r, p, true); }
}  // namespace pk
