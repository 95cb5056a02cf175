// The whole polar iteration for a group of small matrices in one launch: one block per matrix,
// the iterate X kept in shared memory across every step.
//
//     X₀ = A / (safety · ‖A‖_F)            (A transposed first when tall: X is m×n with m ≤ n;
//                                            ‖A‖ = 0 gives X₀ = 0; the norm is taken on A/max|A|)
//     for (a, b, c) in the schedule:
//         S = X Xᵀ                          (upper-triangle 16×16 tiles, mirrored)
//         B = c S Sᵀ + b S                  (S symmetric, so S Sᵀ = S²; skipped when c = 0)
//         X ← a X + B X                     (16-column panels, updated in place: panel j of the
//                                            product reads only panel j of X)
//     U = X (transposed back when A was tall)
//
// Shared memory per matrix (16-bit elements): X [m16][n16 + 8], S and B [m16][m16 + 8], with
// m16, n16 = m, n rounded up to 16 and zero padding (which every product keeps zero). Row strides
// are odd multiples of 16 bytes, so ldmatrix is conflict-free. m16 ≤ 128 (acc registers of a
// panel); the launcher (cuda.py, `fused_smem_bytes`) mirrors this size formula to pick which
// matrices come here. 8 warps, mma.sync m16n8k16, fp32 accumulation, every product rounded to
// the storage type as the per-step path does.
#include "common.cuh"

#define PK_FUSED_MAX_STEPS 32
#define PK_FUSED_MAX_M16 128

namespace pk {

struct FusedDesc {
  u64 src, dst;           // A (rows×cols, contiguous) and U (rows×cols, contiguous)
  int rows, cols, trans;  // trans = rows > cols: iterate on Aᵀ
  int pad;
};  // 32 bytes

struct FusedParams {
  int count;  // matrices = gridDim.x
  int steps;  // ≤ PK_FUSED_MAX_STEPS
  float norm_safety;
  int pad;
  float coeffs[3 * PK_FUSED_MAX_STEPS];  // (a, b, c) per step
  // followed by `count` FusedDesc
};  // 400 bytes

namespace fused {
constexpr int THREADS = 256, WARPS = THREADS / 32;
}

// dst = alpha · src·srcᵀ + beta · D over the upper-triangle 16×16 tiles of an mt×mt tile grid,
// each written with its mirror (the result is symmetric). src is [mt·16][K], ld_src; D may be null.
template <class T>
__device__ __forceinline__ void fused_sym_product(const typename T::storage* src, int ld_src, int K,
                                                  typename T::storage* dst, const typename T::storage* D,
                                                  int ld_dst, int mt, float alpha, float beta) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int tiles = mt * (mt + 1) / 2;
  for (int t = warp; t < tiles; t += fused::WARPS) {
    int ti, tj;
    upper_tile(mt, t, ti, tj);
    float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    for (int k0 = 0; k0 < K; k0 += 16) {
      unsigned af[4], bf[4];
      ldsm_x4(af, src + (ti * 16 + frag_a_row(lane)) * ld_src + k0 + frag_a_col(lane));
      ldsm_x4(bf, src + (tj * 16 + frag_bnk_row(lane)) * ld_src + k0 + frag_bnk_col(lane));
      T::mma(acc[0], af, bf[0], bf[1]);
      T::mma(acc[1], af, bf[2], bf[3]);
    }
#pragma unroll
    for (int ni = 0; ni < 2; ++ni)
#pragma unroll
      for (int h = 0; h < 4; ++h) {
        const int i = ti * 16 + (lane >> 2) + ((h >> 1) << 3);
        const int j = tj * 16 + ni * 8 + ((lane & 3) << 1) + (h & 1);
        float v = alpha * acc[ni][h];
        if (D) v += beta * T::to_float(D[i * ld_dst + j]);
        const typename T::storage o = T::from_float(v);
        dst[i * ld_dst + j] = o;
        if (ti != tj) dst[j * ld_dst + i] = o;
      }
  }
}

// X ← a X + alpha · M X, in place, one 16-column panel per warp at a time. M is [mt·16][mt·16].
template <class T>
__device__ __forceinline__ void fused_apply(const typename T::storage* M, int ldm, typename T::storage* X, int ldx,
                                            int mt, int panels, float a, float alpha) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int pnl = warp; pnl < panels; pnl += fused::WARPS) {
    float acc[PK_FUSED_MAX_M16 / 16][2][4];
#pragma unroll
    for (int ri = 0; ri < PK_FUSED_MAX_M16 / 16; ++ri)
#pragma unroll
      for (int ni = 0; ni < 2; ++ni)
#pragma unroll
        for (int h = 0; h < 4; ++h) acc[ri][ni][h] = 0.f;
    for (int kk = 0; kk < mt; ++kk) {
      unsigned bf[4];
      ldsm_x4_trans(bf, X + (kk * 16 + frag_bkn_row(lane)) * ldx + pnl * 16 + frag_bkn_col(lane));
#pragma unroll
      for (int ri = 0; ri < PK_FUSED_MAX_M16 / 16; ++ri) {
        if (ri < mt) {
          unsigned af[4];
          ldsm_x4(af, M + (ri * 16 + frag_a_row(lane)) * ldm + kk * 16 + frag_a_col(lane));
          T::mma(acc[ri][0], af, bf[0], bf[1]);
          T::mma(acc[ri][1], af, bf[2], bf[3]);
        }
      }
    }
    __syncwarp();  // every lane's reads of this panel are done before it is overwritten
#pragma unroll
    for (int ri = 0; ri < PK_FUSED_MAX_M16 / 16; ++ri) {
      if (ri < mt) {
#pragma unroll
        for (int ni = 0; ni < 2; ++ni)
#pragma unroll
          for (int h = 0; h < 4; ++h) {
            const int i = ri * 16 + (lane >> 2) + ((h >> 1) << 3);
            const int j = pnl * 16 + ni * 8 + ((lane & 3) << 1) + (h & 1);
            typename T::storage* x = X + i * ldx + j;
            *x = T::from_float(a * T::to_float(*x) + alpha * acc[ri][ni][h]);
          }
      }
    }
    __syncwarp();
  }
}

// Max (kMax) or sum of v over the block, returned to every thread; `partial` holds WARPS floats.
template <bool kMax>
__device__ __forceinline__ float block_reduce(float v, float* partial) {
  v = kMax ? warp_max(v) : warp_sum(v);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
  __syncthreads();
  float t = partial[0];
#pragma unroll
  for (int w = 1; w < fused::WARPS; ++w) t = kMax ? fmaxf(t, partial[w]) + (partial[w] - partial[w]) : t + partial[w];
  __syncthreads();  // partial is reused by the next reduction
  return t;
}

template <class T>
__device__ __forceinline__ void fused_polar(const FusedParams* p) {
  typedef typename T::storage S;
  extern __shared__ __align__(16) unsigned char smem[];
  const FusedDesc& d = reinterpret_cast<const FusedDesc*>(p + 1)[blockIdx.x];
  const int m = d.trans ? d.cols : d.rows, n = d.trans ? d.rows : d.cols;
  const int m16 = (m + 15) & ~15, n16 = (n + 15) & ~15;
  const int ldx = n16 + 8, ldm = m16 + 8, mt = m16 / 16;
  S* X = reinterpret_cast<S*>(smem);  // [m16][ldx]
  S* Sm = X + m16 * ldx;              // [m16][ldm]
  S* Bm = Sm + m16 * ldm;             // [m16][ldm]
  float* partial = reinterpret_cast<float*>(Bm + m16 * ldm);  // [WARPS]
  const S* A = reinterpret_cast<const S*>(d.src);
  S* U = reinterpret_cast<S*>(d.dst);
  const int count = d.rows * d.cols;

  for (int e = threadIdx.x; e < m16 * ldx; e += fused::THREADS) X[e] = S(0);
  __syncthreads();

  // X₀ = A (or Aᵀ), read in A's order (coalesced); then ‖A‖_F in fp32 on A / max|A|, so that it
  // stays finite for any finite A (as iterate.frobenius_normalize does).
  float amax = 0.f;
  for (int e = threadIdx.x; e < count; e += fused::THREADS) {
    const int r = e / d.cols, c = e - r * d.cols;
    const S v = A[e];
    const float f = T::to_float(v);
    amax = fmaxf(amax, fabsf(f)) + (f - f);  // (f - f): a NaN or inf in A makes amax NaN
    X[d.trans ? c * ldx + r : r * ldx + c] = v;
  }
  amax = block_reduce<true>(amax, partial);
  const float inv = 1.f / amax;
  float sumsq = 0.f;
  for (int e = threadIdx.x; e < m * n; e += fused::THREADS) {
    const int i = e / n, j = e - i * n;
    const float f = T::to_float(X[i * ldx + j]) * inv;
    sumsq = fmaf(f, f, sumsq);
  }
  sumsq = block_reduce<false>(sumsq, partial);
  const float scale = amax == 0.f ? 0.f : inv / (p->norm_safety * sqrtf(sumsq));
  for (int e = threadIdx.x; e < m * n; e += fused::THREADS) {
    const int i = e / n, j = e - i * n;
    X[i * ldx + j] = T::from_float(T::to_float(X[i * ldx + j]) * scale);
  }
  __syncthreads();

  for (int s = 0; s < p->steps; ++s) {
    const float a = p->coeffs[3 * s], b = p->coeffs[3 * s + 1], c = p->coeffs[3 * s + 2];
    fused_sym_product<T>(X, ldx, n16, Sm, nullptr, ldm, mt, 1.f, 0.f);  // S = X Xᵀ
    __syncthreads();
    if (c != 0.f) {
      fused_sym_product<T>(Sm, ldm, m16, Bm, Sm, ldm, mt, c, b);  // B = c S² + b S
      __syncthreads();
      fused_apply<T>(Bm, ldm, X, ldx, mt, n16 / 16, a, 1.f);  // X ← a X + B X
    } else {
      fused_apply<T>(Sm, ldm, X, ldx, mt, n16 / 16, a, b);  // X ← a X + b S X
    }
    __syncthreads();
  }

  for (int e = threadIdx.x; e < count; e += fused::THREADS) {
    const int r = e / d.cols, c = e - r * d.cols;
    U[e] = X[d.trans ? c * ldx + r : r * ldx + c];
  }
}

}  // namespace pk

extern "C" __global__ void __launch_bounds__(256) pk_fused_polar_bf16(const pk::FusedParams* p) { pk::fused_polar<pk::BF16>(p); }
extern "C" __global__ void __launch_bounds__(256) pk_fused_polar_f16(const pk::FusedParams* p) { pk::fused_polar<pk::F16>(p); }
