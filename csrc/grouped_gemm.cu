// Grouped GEMM for the three primitives of one polynomial step, over a ragged group of matrices:
//
//     C_g = alpha · A_g · op(B_g) + beta · D_g        for every matrix g of the group
//
//   op(B) = Bᵀ ("nt", B stored n×k) for S = X Xᵀ (gram) and B = c S Sᵀ + b S (poly: S is symmetric);
//   op(B) = B  ("nn", B stored k×n) for X' = B X + a X (apply).
// One launch covers all matrices: the tiles of every C_g form one grid through a prefix-summed
// tile map (GemmDesc.tile_start). With `symmetric` set (nt only) a block computes an upper-triangle
// tile C[I, J], I ≤ J, and also writes its mirror C[J, I]: half the products of a Gram matrix.
//
// 16-bit path: 128×128×32 tiles, 8 warps of 64×32, ldmatrix + mma.sync (fp32 accumulation),
// a 3-stage cp.async pipeline; partial or misaligned 16-byte chunks are loaded element-wise, so
// any shape and row stride is accepted. The epilogue stages the fp32 tile in shared memory and
// writes C (and its mirror) in coalesced 16-byte rows. fp32 path: a 64×64 SIMT tile (exact fp32
// products, no TF32).
#include "common.cuh"

namespace pk {

struct GemmDesc {
  u64 a, b, c, d;          // element pointers; d = 0 means no D term
  int m, n, k;             // C is m×n, the reduction runs over k
  int lda, ldb, ldc, ldd;  // row strides, in elements
  int tile_start;          // first tile of this matrix in the launch's tile map
  int tiles_n;             // tiles along n (along m too when symmetric)
  int pad[3];
};  // 80 bytes

struct GemmParams {
  int count;        // matrices in the group
  int total_tiles;  // = gridDim.x
  float alpha, beta;
  int symmetric;    // compute the upper triangle of tiles and mirror it
  int pad[3];
  // followed by `count` GemmDesc
};  // 32 bytes

__device__ __forceinline__ const GemmDesc* gemm_descs(const GemmParams* p) {
  return reinterpret_cast<const GemmDesc*>(p + 1);
}

// The tile (row0, col0) this block computes, and whether it is a mirrored off-diagonal tile.
template <int BM>
__device__ __forceinline__ const GemmDesc& gemm_tile(const GemmParams* p, int& row0, int& col0, bool& mirror) {
  const GemmDesc* descs = gemm_descs(p);
  const int g = find_group(descs, p->count, blockIdx.x);
  const GemmDesc& d = descs[g];
  const int local = blockIdx.x - d.tile_start;
  int ti, tj;
  if (p->symmetric) {
    upper_tile(d.tiles_n, local, ti, tj);
  } else {
    ti = local / d.tiles_n;
    tj = local % d.tiles_n;
  }
  row0 = ti * BM;
  col0 = tj * BM;
  mirror = p->symmetric && ti != tj;
  return d;
}

// ------------------------------------------------------------------------------------------
// 16-bit tensor-core path
// ------------------------------------------------------------------------------------------

namespace mma_tile {
constexpr int BM = 128, BN = 128, BK = 32, STAGES = 3, THREADS = 256;
constexpr int A_LD = BK + 8;   // [BM][A_LD]: 80-byte rows, conflict-free ldmatrix
constexpr int BT_LD = BK + 8;  // nt: B tile [BN][BT_LD]
constexpr int BN_LD = BN + 8;  // nn: B tile [BK][BN_LD], 272-byte rows
constexpr int A_ELEMS = BM * A_LD;
constexpr int B_ELEMS = (BN * BT_LD > BK * BN_LD) ? BN * BT_LD : BK * BN_LD;
constexpr int PIPE_BYTES = STAGES * (A_ELEMS + B_ELEMS) * 2;
// fp32 staging tile [BM][C_LD] for the epilogue. A warp stores an accumulator fragment as 8 rows
// × 4 column pairs; with C_LD ≡ 3 (mod 32) those 32 words fall on banks 3q + 2p (+1), 2-way at
// most, the fewest for 4-byte stores of this layout (C_LD = BN + 1 gave 4-way). The epilogue's
// row and mirrored reads stay ≤ 4-way (16 lanes per row reading 8 words apart).
// tests/backends/test_cuda.py counts both from these index formulas.
constexpr int C_LD = BN + 3;
constexpr int EPI_BYTES = BM * C_LD * 4;
constexpr int SMEM_BYTES = PIPE_BYTES > EPI_BYTES ? PIPE_BYTES : EPI_BYTES;
static_assert(SMEM_BYTES == 67072, "cuda.py's GEMM_SMEM_BYTES mirrors this dynamic shared-memory size");
}  // namespace mma_tile

// Copy 8 consecutive elements (one 16-byte chunk) of a row into shared memory: cp.async when
// the chunk is whole and aligned, else element-wise with zero fill past `limit` or when !row_ok.
template <class S>
__device__ __forceinline__ void load_chunk(S* dst, const S* src, bool row_ok, int pos, int limit) {
  if (row_ok && pos + 8 <= limit && aligned16(src)) {
    cp_async16(dst, src);
  } else {
#pragma unroll
    for (int t = 0; t < 8; ++t) dst[t] = (row_ok && pos + t < limit) ? src[t] : S(0);
  }
}

template <class T, bool NN>
__device__ __forceinline__ void gemm_load_stage(const GemmDesc& d, int row0, int col0, int k0,
                                                typename T::storage* As, typename T::storage* Bs) {
  using namespace mma_tile;
  typedef typename T::storage S;
  const S* A = reinterpret_cast<const S*>(d.a);
  const S* B = reinterpret_cast<const S*>(d.b);
#pragma unroll
  for (int i = 0; i < 2; ++i) {  // A tile: BM rows × BK cols = 512 chunks
    const int c = threadIdx.x + i * THREADS;
    const int r = c >> 2, kc = (c & 3) << 3;
    const int gr = row0 + r, gk = k0 + kc;
    load_chunk(As + r * A_LD + kc, A + (long long)gr * d.lda + gk, gr < d.m, gk, d.k);
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int c = threadIdx.x + i * THREADS;
    if (NN) {  // B tile: BK rows (k) × BN cols (n)
      const int r = c >> 4, nc = (c & 15) << 3;
      const int gk = k0 + r, gn = col0 + nc;
      load_chunk(Bs + r * BN_LD + nc, B + (long long)gk * d.ldb + gn, gk < d.k, gn, d.n);
    } else {  // B tile: BN rows (n) × BK cols (k)
      const int r = c >> 2, kc = (c & 3) << 3;
      const int gn = col0 + r, gk = k0 + kc;
      load_chunk(Bs + r * BT_LD + kc, B + (long long)gn * d.ldb + gk, gn < d.n, gk, d.k);
    }
  }
}

// Write rows of the staged fp32 tile to C (transposed: C[col0 + j][row0 + i] = tile[i][j]),
// with C = alpha·tile + beta·D, in 8-element chunks (16-byte stores when whole and aligned).
template <class T>
__device__ __forceinline__ void gemm_store_tile(const GemmDesc& d, const float* tile, float alpha, float beta,
                                                int out_row0, int out_col0, bool transposed) {
  using namespace mma_tile;
  typedef typename T::storage S;
  S* C = reinterpret_cast<S*>(d.c);
  const S* D = reinterpret_cast<const S*>(d.d);
  for (int c = threadIdx.x; c < BM * (BN / 8); c += THREADS) {
    const int r = c >> 4, cc = (c & 15) << 3;  // row r of the output tile, columns cc..cc+7
    const int gr = out_row0 + r, gc = out_col0 + cc;
    if (gr >= d.m || gc >= d.n) continue;
    float v[8];
#pragma unroll
    for (int t = 0; t < 8; ++t) v[t] = alpha * (transposed ? tile[(cc + t) * C_LD + r] : tile[r * C_LD + cc + t]);
    S* crow = C + (long long)gr * d.ldc + gc;
    const S* drow = D ? D + (long long)gr * d.ldd + gc : nullptr;
    const bool whole = gc + 8 <= d.n && aligned16(crow) && (!D || aligned16(drow));
    if (whole) {
      union { uint4 u; S s[8]; } out, din;
      if (D) din.u = *reinterpret_cast<const uint4*>(drow);
#pragma unroll
      for (int t = 0; t < 8; ++t) out.s[t] = T::from_float(D ? v[t] + beta * T::to_float(din.s[t]) : v[t]);
      *reinterpret_cast<uint4*>(crow) = out.u;
    } else {
      for (int t = 0; t < 8 && gc + t < d.n; ++t)
        crow[t] = T::from_float(D ? v[t] + beta * T::to_float(drow[t]) : v[t]);
    }
  }
}

template <class T, bool NN>
__device__ __forceinline__ void gemm_mma(const GemmParams* p) {
  using namespace mma_tile;
  typedef typename T::storage S;
  extern __shared__ __align__(16) unsigned char smem[];
  S* As = reinterpret_cast<S*>(smem);          // [STAGES][A_ELEMS]
  S* Bs = As + STAGES * A_ELEMS;               // [STAGES][B_ELEMS]

  int row0, col0;
  bool mirror;
  const GemmDesc& d = gemm_tile<BM>(p, row0, col0, mirror);

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;  // this warp's 64×32 sub-tile

  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int t = 0; t < 4; ++t) acc[i][j][t] = 0.f;

  const int kt_count = (d.k + BK - 1) / BK;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < kt_count) gemm_load_stage<T, NN>(d, row0, col0, s * BK, As + s * A_ELEMS, Bs + s * B_ELEMS);
    cp_async_commit();
  }
  for (int kt = 0; kt < kt_count; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // stage kt landed; stage kt-1 is free for the prefetch below
    const int next = kt + STAGES - 1;
    if (next < kt_count) {
      const int s = next % STAGES;
      gemm_load_stage<T, NN>(d, row0, col0, next * BK, As + s * A_ELEMS, Bs + s * B_ELEMS);
    }
    cp_async_commit();

    const S* a_s = As + (kt % STAGES) * A_ELEMS;
    const S* b_s = Bs + (kt % STAGES) * B_ELEMS;
#pragma unroll
    for (int ks = 0; ks < BK; ks += 16) {
      unsigned af[4][4], bf[4][2];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
        ldsm_x4(af[mi], a_s + (wm + mi * 16 + frag_a_row(lane)) * A_LD + ks + frag_a_col(lane));
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) {
        unsigned r[4];
        if (NN)
          ldsm_x4_trans(r, b_s + (ks + frag_bkn_row(lane)) * BN_LD + wn + nj * 16 + frag_bkn_col(lane));
        else
          ldsm_x4(r, b_s + (wn + nj * 16 + frag_bnk_row(lane)) * BT_LD + ks + frag_bnk_col(lane));
        bf[2 * nj][0] = r[0];
        bf[2 * nj][1] = r[1];
        bf[2 * nj + 1][0] = r[2];
        bf[2 * nj + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) T::mma(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // pipeline buffers are reused as the staging tile

  float* tile = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
      const int r = wm + mi * 16 + (lane >> 2), c = wn + ni * 8 + ((lane & 3) << 1);
      tile[r * C_LD + c] = acc[mi][ni][0];
      tile[r * C_LD + c + 1] = acc[mi][ni][1];
      tile[(r + 8) * C_LD + c] = acc[mi][ni][2];
      tile[(r + 8) * C_LD + c + 1] = acc[mi][ni][3];
    }
  __syncthreads();
  gemm_store_tile<T>(d, tile, p->alpha, p->beta, row0, col0, false);
  if (mirror) gemm_store_tile<T>(d, tile, p->alpha, p->beta, col0, row0, true);
}

// ------------------------------------------------------------------------------------------
// fp32 SIMT path
// ------------------------------------------------------------------------------------------

namespace simt_tile {
constexpr int BM = 64, BK = 16, THREADS = 256, LD = BM + 4;
}

template <bool NN>
__device__ __forceinline__ void gemm_simt(const GemmParams* p) {
  using namespace simt_tile;
  __shared__ float As[BK][LD];  // As[k][i] = A[row0 + i][k0 + k]
  __shared__ float Bs[BK][LD];  // Bs[k][j] = op(B)[k0 + k][col0 + j]

  int row0, col0;
  bool mirror;
  const GemmDesc& d = gemm_tile<BM>(p, row0, col0, mirror);
  const float* A = reinterpret_cast<const float*>(d.a);
  const float* B = reinterpret_cast<const float*>(d.b);
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;  // owns rows ty + 16i, cols tx + 16j

  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

  for (int k0 = 0; k0 < d.k; k0 += BK) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int e = threadIdx.x + i * THREADS;
      {
        const int r = e / BK, k = e % BK, gr = row0 + r, gk = k0 + k;
        As[k][r] = (gr < d.m && gk < d.k) ? A[(long long)gr * d.lda + gk] : 0.f;
      }
      if (NN) {
        const int k = e / BM, c = e % BM, gk = k0 + k, gc = col0 + c;
        Bs[k][c] = (gk < d.k && gc < d.n) ? B[(long long)gk * d.ldb + gc] : 0.f;
      } else {
        const int c = e / BK, k = e % BK, gc = col0 + c, gk = k0 + k;
        Bs[k][c] = (gc < d.n && gk < d.k) ? B[(long long)gc * d.ldb + gk] : 0.f;
      }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[k][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Bs[k][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }

  float* C = reinterpret_cast<float*>(d.c);
  const float* D = reinterpret_cast<const float*>(d.d);
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int r = row0 + ty + 16 * i, c = col0 + tx + 16 * j;
      if (r < d.m && c < d.n) {
        const long long at = (long long)r * d.ldc + c;
        C[at] = p->alpha * acc[i][j] + (D ? p->beta * D[(long long)r * d.ldd + c] : 0.f);
      }
      if (mirror && c < d.m && r < d.n) {
        const long long at = (long long)c * d.ldc + r;
        C[at] = p->alpha * acc[i][j] + (D ? p->beta * D[(long long)c * d.ldd + r] : 0.f);
      }
    }
}

}  // namespace pk

extern "C" __global__ void __launch_bounds__(256) pk_gemm_nt_bf16(const pk::GemmParams* p) { pk::gemm_mma<pk::BF16, false>(p); }
extern "C" __global__ void __launch_bounds__(256) pk_gemm_nn_bf16(const pk::GemmParams* p) { pk::gemm_mma<pk::BF16, true>(p); }
extern "C" __global__ void __launch_bounds__(256) pk_gemm_nt_f16(const pk::GemmParams* p) { pk::gemm_mma<pk::F16, false>(p); }
extern "C" __global__ void __launch_bounds__(256) pk_gemm_nn_f16(const pk::GemmParams* p) { pk::gemm_mma<pk::F16, true>(p); }
extern "C" __global__ void __launch_bounds__(256) pk_gemm_nt_f32(const pk::GemmParams* p) { pk::gemm_simt<false>(p); }
extern "C" __global__ void __launch_bounds__(256) pk_gemm_nn_f32(const pk::GemmParams* p) { pk::gemm_simt<true>(p); }
