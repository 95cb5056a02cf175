// Shared device helpers for the polarkernels CUDA kernels.
//
// NVRTC-compatible: no system or CUDA headers. 16-bit values are stored as raw `unsigned short`
// and converted with PTX `cvt`; tensor-core products use `ldmatrix` + `mma.sync.m16n8k16`
// (sm_80+), bf16 or fp16 operands with fp32 accumulation.
//
// Every kernel takes one argument, a pointer to a parameter block in device memory whose layout
// the Python launcher (polarkernels/backends/cuda.py) mirrors with NumPy structured dtypes.
#ifndef POLARKERNELS_COMMON_CUH
#define POLARKERNELS_COMMON_CUH

namespace pk {

typedef unsigned long long u64;

// ---- element types: storage type, conversions, and the mma instruction for 16-bit types ----

struct BF16 {
  typedef unsigned short storage;
  static __device__ __forceinline__ float to_float(storage h) {
    return __uint_as_float(static_cast<unsigned>(h) << 16);
  }
  static __device__ __forceinline__ storage from_float(float f) {
    storage h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
  }
  // D = A·B + D for a 16×16 (row) by 16×8 (col) tile, fp32 accumulators.
  static __device__ __forceinline__ void mma(float d[4], const unsigned a[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

struct F16 {
  typedef unsigned short storage;
  static __device__ __forceinline__ float to_float(storage h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
  }
  static __device__ __forceinline__ storage from_float(float f) {
    storage h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
  }
  static __device__ __forceinline__ void mma(float d[4], const unsigned a[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

struct F32 {
  typedef float storage;
  static __device__ __forceinline__ float to_float(storage x) { return x; }
  static __device__ __forceinline__ storage from_float(float f) { return f; }
};

// ---- shared memory, asynchronous copies, fragments ----

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  unsigned r;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
  return r;
}

__device__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<u64>(p) & 15ull) == 0;
}

__device__ __forceinline__ void cp_async16(void* dst_smem, const void* src_global) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(dst_smem)), "l"(src_global));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

// Four 8×8 b16 matrices; lane l gives the row address of matrix l/8.
__device__ __forceinline__ void ldsm_x4(unsigned r[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(unsigned r[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// Fragment addressing for mma.m16n8k16 (PTX ISA, "Matrix fragments for mma.m16n8k16"):
//   A 16×16 tile, row-major rows r0.., cols k0..: lane l reads row r0 + l%16, col k0 + (l/16)·8.
//   B as two n8 tiles stored [n][k] (k contiguous), non-transposed ldmatrix:
//       lane l reads row n0 + l%8 + (l/16)·8, col k0 + ((l/8)%2)·8;  regs {0,1} → n-tile 0, {2,3} → 1.
//   B as two n8 tiles stored [k][n] (n contiguous), transposed ldmatrix:
//       lane l reads row k0 + l%16, col n0 + (l/16)·8;               regs {0,1} → n-tile 0, {2,3} → 1.
//   Accumulator: c0,c1 at (row l/4, cols 2(l%4) + {0,1}); c2,c3 at row l/4 + 8.
__device__ __forceinline__ int frag_a_row(int lane) { return lane & 15; }
__device__ __forceinline__ int frag_a_col(int lane) { return (lane >> 4) << 3; }
__device__ __forceinline__ int frag_bnk_row(int lane) { return (lane & 7) + ((lane >> 4) << 3); }
__device__ __forceinline__ int frag_bnk_col(int lane) { return ((lane >> 3) & 1) << 3; }
__device__ __forceinline__ int frag_bkn_row(int lane) { return lane & 15; }
__device__ __forceinline__ int frag_bkn_col(int lane) { return (lane >> 4) << 3; }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Max over the warp; a NaN in any lane reaches every lane.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = fmaxf(v, w) + (w - w) + (v - v);
  }
  return v;
}

// The block's index into a prefix-summed tile map: the last g with start[g] ≤ tile.
template <class Desc>
__device__ __forceinline__ int find_group(const Desc* desc, int count, int tile) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) >> 1;
    if (desc[mid].tile_start <= tile) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Row-major upper-triangle tile (ti ≤ tj) of a t×t tile grid, from its linear index.
__device__ __forceinline__ void upper_tile(int t, int local, int& ti, int& tj) {
  int r = 0;
  while (local >= t - r) { local -= t - r; ++r; }
  ti = r;
  tj = r + local;
}

}  // namespace pk

#endif  // POLARKERNELS_COMMON_CUH
