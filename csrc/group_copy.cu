// Grouped normalisation and layout kernels for the per-step path (one launch each per group):
//
//   pk_absmax_*:     amax[g] = max |A_g|                     (amax zeroed by the caller)
//   pk_sumsq_*:      sumsq[g] = Σ (A_g / amax[g])²  in fp32   (sumsq zeroed by the caller)
//   pk_scale_copy_*: Y_g = s_g · op(A_g), op = transpose when trans, through 32×32 shared tiles
//                    so that reads and writes are both coalesced, with
//                    s_g = 1 / (amax[g] · safety · √sumsq[g])  (0 when A_g = 0; 1 for a plain copy)
// X₀ = A / (safety‖A‖_F) is absmax, sumsq, scale_copy into the work buffer: dividing by max|A|
// first keeps ‖·‖_F finite for any finite A (as iterate.frobenius_normalize does). U is a plain
// scale_copy from the work buffer back to the caller's layout.
#include "common.cuh"

namespace pk {

struct SumsqDesc {
  u64 src;         // contiguous elements
  long long numel;
  int tile_start;  // first chunk of this matrix
  int pad[3];
};  // 32 bytes

struct SumsqParams {
  int count, total_tiles;
  u64 amax;   // float[count]: written by pk_absmax, read by pk_sumsq
  u64 sumsq;  // float[count]: written by pk_sumsq
  // followed by `count` SumsqDesc (absmax and sumsq share the parameter block)
};  // 24 bytes

struct CopyDesc {
  u64 src, dst;
  int rows, cols;  // of the source
  int lds, ldd;    // row strides, in elements
  int trans;       // dst[j][i] = src[i][j]
  int tiles_c;     // 32-wide tiles along cols
  int tile_start;
  int pad;
};  // 48 bytes

struct CopyParams {
  int count, total_tiles;
  float norm_safety;
  int pad;
  u64 amax;   // float[count] from pk_absmax_*, or 0 for a plain copy
  u64 sumsq;  // float[count] from pk_sumsq_*
  // followed by `count` CopyDesc
};  // 32 bytes

namespace copy_tile {
constexpr int THREADS = 256, CHUNK = THREADS * 16, TILE = 32;
}

// One 4096-element chunk of one matrix per block: max |a| (kMax) or Σ (a / amax)² (!kMax),
// reduced over the block and combined across blocks with one atomic per block.
template <class T, bool kMax>
__device__ __forceinline__ void reduce_chunk(const SumsqParams* p) {
  using namespace copy_tile;
  __shared__ float partial[THREADS / 32];
  const SumsqDesc* descs = reinterpret_cast<const SumsqDesc*>(p + 1);
  const int g = find_group(descs, p->count, blockIdx.x);
  const SumsqDesc& d = descs[g];
  const typename T::storage* A = reinterpret_cast<const typename T::storage*>(d.src);
  float* amax = reinterpret_cast<float*>(p->amax);
  const float inv = kMax ? 0.f : 1.f / amax[g];
  const long long base = (long long)(blockIdx.x - d.tile_start) * CHUNK;
  float s = 0.f;
#pragma unroll 4
  for (int i = 0; i < CHUNK / THREADS; ++i) {
    const long long e = base + threadIdx.x + (long long)i * THREADS;
    if (e < d.numel) {
      const float f = T::to_float(A[e]);
      s = kMax ? fmaxf(s, fabsf(f)) + (f - f) : fmaf(f * inv, f * inv, s);  // (f - f): NaN stays
    }
  }
  s = kMax ? warp_max(s) : warp_sum(s);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = partial[0];
#pragma unroll
    for (int w = 1; w < THREADS / 32; ++w) t = kMax ? fmaxf(t, partial[w]) + (partial[w] - partial[w]) : t + partial[w];
    if (kMax)  // non-negative floats (and NaN above them) order as their bit patterns do
      atomicMax(reinterpret_cast<int*>(amax) + g, __float_as_int(t));
    else
      atomicAdd(reinterpret_cast<float*>(p->sumsq) + g, t);
  }
}

template <class T>
__device__ __forceinline__ void scale_copy(const CopyParams* p) {
  using namespace copy_tile;
  typedef typename T::storage S;
  __shared__ float tile[TILE][TILE + 1];
  const CopyDesc* descs = reinterpret_cast<const CopyDesc*>(p + 1);
  const int g = find_group(descs, p->count, blockIdx.x);
  const CopyDesc& d = descs[g];
  const int local = blockIdx.x - d.tile_start;
  const int r0 = (local / d.tiles_c) * TILE, c0 = (local % d.tiles_c) * TILE;
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const S* src = reinterpret_cast<const S*>(d.src);
  S* dst = reinterpret_cast<S*>(d.dst);

  float scale = 1.f;
  if (p->amax) {  // amax = 0 only for A = 0; NaN in A propagates through amax or sumsq
    const float am = reinterpret_cast<const float*>(p->amax)[g];
    const float ss = reinterpret_cast<const float*>(p->sumsq)[g];
    scale = am == 0.f ? 0.f : (1.f / am) / (p->norm_safety * sqrtf(ss));
  }
#pragma unroll
  for (int i = 0; i < TILE; i += THREADS / 32) {
    const int r = r0 + ty + i, c = c0 + tx;
    tile[ty + i][tx] = (r < d.rows && c < d.cols) ? T::to_float(src[(long long)r * d.lds + c]) * scale : 0.f;
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < TILE; i += THREADS / 32) {
    if (d.trans) {  // dst row = source column
      const int r = c0 + ty + i, c = r0 + tx;
      if (r < d.cols && c < d.rows) dst[(long long)r * d.ldd + c] = T::from_float(tile[tx][ty + i]);
    } else {
      const int r = r0 + ty + i, c = c0 + tx;
      if (r < d.rows && c < d.cols) dst[(long long)r * d.ldd + c] = T::from_float(tile[ty + i][tx]);
    }
  }
}

}  // namespace pk

extern "C" __global__ void __launch_bounds__(256) pk_absmax_bf16(const pk::SumsqParams* p) { pk::reduce_chunk<pk::BF16, true>(p); }
extern "C" __global__ void __launch_bounds__(256) pk_absmax_f16(const pk::SumsqParams* p) { pk::reduce_chunk<pk::F16, true>(p); }
extern "C" __global__ void __launch_bounds__(256) pk_absmax_f32(const pk::SumsqParams* p) { pk::reduce_chunk<pk::F32, true>(p); }
extern "C" __global__ void __launch_bounds__(256) pk_sumsq_bf16(const pk::SumsqParams* p) { pk::reduce_chunk<pk::BF16, false>(p); }
extern "C" __global__ void __launch_bounds__(256) pk_sumsq_f16(const pk::SumsqParams* p) { pk::reduce_chunk<pk::F16, false>(p); }
extern "C" __global__ void __launch_bounds__(256) pk_sumsq_f32(const pk::SumsqParams* p) { pk::reduce_chunk<pk::F32, false>(p); }
extern "C" __global__ void __launch_bounds__(256) pk_scale_copy_bf16(const pk::CopyParams* p) { pk::scale_copy<pk::BF16>(p); }
extern "C" __global__ void __launch_bounds__(256) pk_scale_copy_f16(const pk::CopyParams* p) { pk::scale_copy<pk::F16>(p); }
extern "C" __global__ void __launch_bounds__(256) pk_scale_copy_f32(const pk::CopyParams* p) { pk::scale_copy<pk::F32>(p); }
