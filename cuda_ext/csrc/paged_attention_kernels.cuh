// Ragged paged attention kernels (decode and prefill chunks share one kernel).
//
// Work decomposition. The Python wrapper cuts the query rows of every sequence into tiles of at
// most `block_q` consecutive rows and passes the list as `work[num_tiles, 2]` = (sequence or -1,
// first row of the tile within its sequence). Decode uses block_q = 1 (one tile per sequence). One
// program (CTA of kThreads threads) handles grid point (tile, kv head h, kv split):
//   rows m = qi * G + g of the program: query row qi of the tile, query head h * G + g,
//   so all G query heads that share KV head h are served by one read of each KV page.
// The keys the tile may see, [lo, hi), are cut into blocks of BK tokens aligned to multiples of BK;
// split `z` of `num_splits` takes a contiguous run of those blocks (flash-decoding). Each block's K
// and V rows are copied into shared memory with cp.async (double buffered: block b+1 is in flight
// while block b is used), then
//   scores  s[m][r] = (q[m] * sm_scale * log2 e) . k[r]    (masked: causal, window, < hi)
//   online softmax in base 2 per row (running max, running sum, rescale of the accumulator)
//   o[m][:] = o[m][:] * alpha[m] + sum_r p[m][r] v[r][:]
// all in float32. Tokens outside [lo, hi) are never read: their shared-memory rows are zero-filled,
// and page ids are only looked up for tokens inside [lo, hi) (so garbage past a sequence's pages is
// never dereferenced). With one split the program writes its normalised rows straight into `out`;
// with several it writes (o, m, l) partials and `combine_splits_kernel` merges them.
//
// Rows at or past query_start_loc[S] (padding) are zeroed by the split-0 programs (tile i zeroes
// rows query_start_loc[S] + i, + i + num_tiles, ... for its KV head's query heads).
//
// Pages are of the query type T, or float8 e4m3 (KT = __nv_fp8_e4m3, kv_cache_dtype="fp8"): the
// kernels stage and load the bytes and convert them to float as they use them. The per-tensor
// scales are folded in by the caller: k_scale into sm_scale, v_scale into `out_scale`, which
// multiplies the normalised output (split partials stay unscaled; the combine applies it).
#pragma once

#include "device_utils.cuh"

namespace jaxllm {

struct AttentionParams {
  const void* q;  // [T, Hq, D]
  const void* k;  // [L, N, Hkv, bs, D]
  const void* v;  // [L, N, Hkv, bs, D]
  const int32_t* block_tables;  // [S, P]
  const int32_t* kv_lens;  // [S]
  const int32_t* qsl;  // [S + 1]
  const int32_t* layer;  // [] (device scalar; clamped to [0, L))
  const int32_t* work;  // [num_tiles, 2]
  void* out;  // [T, Hq, D]
  float* part_o;  // [num_tiles, Hkv, num_splits, max_rows, D] (num_splits > 1)
  float* part_ml;  // [num_tiles, Hkv, num_splits, max_rows, 2]  (num_splits > 1)
  int T, Hq, Hkv, G, D;
  int L, N, bs, S, P;
  int block_q;  // query rows per tile
  int max_rows;  // block_q * G
  int num_tiles;
  int num_splits;
  int window;  // sliding window (0: none)
  float scale_log2;  // sm_scale * log2(e) (times k_scale for fp8 pages)
  float out_scale;  // multiplies every output row: v_scale for fp8 pages, else 1
  int decode_kernel;  // single-row tiles: kDecodeKernelAuto or kDecodeKernelCudaCores
};

// Which kernel serves single-row tiles (the `decode_kernel` attribute of the FFI call).
constexpr int kDecodeKernelAuto = 0;  // tensor cores where supported (16-bit, D 64/128), else cores
constexpr int kDecodeKernelCudaCores = 1;  // the CUDA-core row kernel (row_attention_kernel.cuh)

// Keys per block: about 8 KiB of K (and as much V) per stage, 16..64 tokens.
template <typename T, int D>
__host__ __device__ constexpr int block_k() {
  constexpr int bk = 8192 / (D * static_cast<int>(sizeof(T)));
  return bk < 16 ? 16 : (bk > 64 ? 64 : bk);
}

// Shared-memory bytes of one attention program (KT: the page type).
template <typename KT, int D>
__host__ __device__ constexpr size_t attention_smem_bytes(int max_rows) {
  constexpr int BK = block_k<KT, D>();
  constexpr int DP = D + 16 / static_cast<int>(sizeof(KT));  // padded row: 16 bytes more
  return size_t(4) * BK * DP * sizeof(KT)  // K and V, two stages each
         + sizeof(float) * (size_t(max_rows) * (2 * D + BK + 3));  // q, o, scores, m, l, alpha
}

// Which rows a program owns. Returns false if the tile is empty.
struct TileRows {
  int seq, q_begin, q_len, off, rows;
};

__device__ __forceinline__ bool tile_rows(const AttentionParams& p, int tile, TileRows& t) {
  t.seq = p.work[2 * tile];
  if (t.seq < 0 || t.seq >= p.S) return false;
  t.off = p.work[2 * tile + 1];
  t.q_begin = p.qsl[t.seq];
  t.q_len = p.qsl[t.seq + 1] - t.q_begin;
  t.rows = min(p.block_q, t.q_len - t.off);
  return t.rows > 0 && t.off >= 0;
}

// Zero the padding rows (>= qsl[S]) of query heads [h*G, (h+1)*G) assigned to this tile.
template <typename T, int D>
__device__ __forceinline__ void zero_padding_rows(const AttentionParams& p, int tile, int h) {
  constexpr int VEC = 16 / static_cast<int>(sizeof(T));
  constexpr int CHUNKS = D / VEC;
  T* out = static_cast<T*>(p.out);
  const int first = max(0, p.qsl[p.S]);
  for (int t = first + tile; t < p.T; t += p.num_tiles) {
    for (int i = threadIdx.x; i < p.G * CHUNKS; i += kThreads) {
      const int g = i / CHUNKS, c = i % CHUNKS;
      *reinterpret_cast<uint4*>(out + (size_t(t) * p.Hq + size_t(h) * p.G + g) * D + c * VEC) =
          make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

template <typename T, typename KT, int D>
__global__ void __launch_bounds__(kThreads) ragged_paged_attention_kernel(const AttentionParams p) {
  constexpr int VEC = 16 / static_cast<int>(sizeof(T));  // q/out elements per 16-byte chunk
  constexpr int CHUNKS = D / VEC;  // 16-byte chunks per q/out row
  constexpr int KVEC = 16 / static_cast<int>(sizeof(KT));  // K/V elements per 16-byte chunk
  constexpr int KCHUNKS = D / KVEC;  // 16-byte chunks per K/V row
  constexpr int DP = D + KVEC;  // padded shared-memory K/V row
  constexpr int BK = block_k<KT, D>();
  constexpr int PV = 4;  // output elements per thread item
  static_assert(D % VEC == 0 && D % KVEC == 0 && D % PV == 0, "head dim");

  const int tile = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  if (split == 0) zero_padding_rows<T, D>(p, tile, h);
  TileRows tr;
  if (!tile_rows(p, tile, tr)) return;  // uniform over the program

  const int G = p.G;
  const int m_rows = tr.rows * G;
  const int kv_len = p.kv_lens[tr.seq];
  const int pos0 = kv_len - tr.q_len + tr.off;  // absolute position of the tile's first row
  const int hi = max(0, min(pos0 + tr.rows, p.P * p.bs));  // keys [lo, hi) may be seen
  const int lo = p.window > 0 ? min(hi, max(0, pos0 - p.window + 1)) : 0;
  const int blk_lo = lo / BK, blk_hi = (hi + BK - 1) / BK;
  const int per_split = (blk_hi - blk_lo + p.num_splits - 1) / p.num_splits;
  const int my_lo = blk_lo + split * per_split;
  const int my_hi = min(blk_hi, my_lo + per_split);

  const int layer = min(max(*p.layer, 0), p.L - 1);
  const KT* __restrict__ k_head = static_cast<const KT*>(p.k);
  const KT* __restrict__ v_head = static_cast<const KT*>(p.v);
  const int32_t* __restrict__ pages = p.block_tables + size_t(tr.seq) * p.P;

  extern __shared__ float4 smem_f4[];
  KT* kbuf = reinterpret_cast<KT*>(smem_f4);  // [2][BK][DP]
  KT* vbuf = kbuf + 2 * BK * DP;  // [2][BK][DP]
  float* qs = reinterpret_cast<float*>(vbuf + 2 * BK * DP);  // [max_rows][D]
  float* os = qs + p.max_rows * D;  // [max_rows][D]
  float* ss = os + p.max_rows * D;  // [max_rows][BK]
  float* row_m = ss + p.max_rows * BK;  // [max_rows]
  float* row_l = row_m + p.max_rows;
  float* row_a = row_l + p.max_rows;

  // Queries (scaled into the base-2 domain) and the accumulators.
  const T* __restrict__ q = static_cast<const T*>(p.q);
  for (int i = tid; i < m_rows * CHUNKS; i += kThreads) {
    const int m = i / CHUNKS, c = i % CHUNKS;
    const int t = tr.q_begin + tr.off + m / G;
    float f[VEC];
    if (t >= 0 && t < p.T) {
      load_as_float<T, VEC>(q + (size_t(t) * p.Hq + size_t(h) * G + m % G) * D + c * VEC, f);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) f[e] = 0.f;
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) qs[m * D + c * VEC + e] = f[e] * p.scale_log2;
  }
  for (int i = tid; i < m_rows * D; i += kThreads) os[i] = 0.f;
  for (int m = tid; m < m_rows; m += kThreads) {
    row_m[m] = -INFINITY;
    row_l[m] = 0.f;
  }

  // Issue the copies of key block b into stage `stage` (zeros outside [lo, hi)).
  auto load_block = [&](int b, int stage) {
    KT* kd = kbuf + stage * BK * DP;
    KT* vd = vbuf + stage * BK * DP;
    for (int i = tid; i < BK * KCHUNKS; i += kThreads) {
      const int r = i / KCHUNKS, c = i % KCHUNKS;
      const int tok = b * BK + r;
      int page = -1;
      if (tok >= lo && tok < hi) page = pages[tok / p.bs];
      KT* kdst = kd + r * DP + c * KVEC;
      KT* vdst = vd + r * DP + c * KVEC;
      if (page >= 0 && page < p.N) {
        const size_t src = ((((size_t(layer) * p.N + page) * p.Hkv + h) * p.bs) + tok % p.bs) * D +
                           size_t(c) * KVEC;
        cp_async16(kdst, k_head + src);
        cp_async16(vdst, v_head + src);
      } else {
        *reinterpret_cast<uint4*>(kdst) = make_uint4(0u, 0u, 0u, 0u);
        *reinterpret_cast<uint4*>(vdst) = make_uint4(0u, 0u, 0u, 0u);
      }
    }
  };

  if (my_lo < my_hi) load_block(my_lo, 0);
  cp_async_commit();
  for (int b = my_lo; b < my_hi; ++b) {
    const int stage = (b - my_lo) & 1;
    if (b + 1 < my_hi) load_block(b + 1, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // this thread's copies of block b have landed
    __syncthreads();  // ... and everyone's; q/o init visible on the first pass

    // Scores (base 2), masked by position.
    const KT* kb = kbuf + stage * BK * DP;
    for (int i = tid; i < m_rows * BK; i += kThreads) {
      const int m = i / BK, r = i % BK;
      const int tok = b * BK + r;
      const int pos = pos0 + m / G;
      const bool live = tok < hi && tok <= pos && (p.window <= 0 || tok > pos - p.window);
      float s = -INFINITY;
      if (live) {
        const float* qr = qs + m * D;
        const KT* kr = kb + r * DP;
        float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int c = 0; c < KCHUNKS; ++c) {
          float kf[KVEC];
          load_as_float<KT, KVEC>(kr + c * KVEC, kf);
#pragma unroll
          for (int e = 0; e < KVEC; e += 4) {
            const float4 qq = *reinterpret_cast<const float4*>(qr + c * KVEC + e);
            acc[0] = fmaf(qq.x, kf[e + 0], acc[0]);
            acc[1] = fmaf(qq.y, kf[e + 1], acc[1]);
            acc[2] = fmaf(qq.z, kf[e + 2], acc[2]);
            acc[3] = fmaf(qq.w, kf[e + 3], acc[3]);
          }
        }
        s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
      }
      ss[m * BK + r] = s;
    }
    __syncthreads();

    // Online softmax, one warp per row.
    for (int m = warp; m < m_rows; m += kWarps) {
      float mx = -INFINITY;
      for (int r = lane; r < BK; r += 32) mx = fmaxf(mx, ss[m * BK + r]);
      mx = warp_max(mx);
      const float m_old = row_m[m];
      const float m_new = fmaxf(m_old, mx);
      float sum = 0.f;
      for (int r = lane; r < BK; r += 32) {
        const float s = ss[m * BK + r];
        const float e = (s == -INFINITY) ? 0.f : exp2f(s - m_new);
        ss[m * BK + r] = e;
        sum += e;
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        const float alpha = (m_old == -INFINITY) ? 0.f : exp2f(m_old - m_new);
        row_a[m] = alpha;
        row_l[m] = row_l[m] * alpha + sum;
        row_m[m] = m_new;
      }
    }
    __syncthreads();

    // o = o * alpha + p @ v
    const KT* vb = vbuf + stage * BK * DP;
    for (int i = tid; i < m_rows * (D / PV); i += kThreads) {
      const int m = i / (D / PV), d = (i % (D / PV)) * PV;
      const float a = row_a[m];
      float4 o = *reinterpret_cast<const float4*>(os + m * D + d);
      float acc[PV] = {o.x * a, o.y * a, o.z * a, o.w * a};
      const float* pr = ss + m * BK;
#pragma unroll 8
      for (int r = 0; r < BK; ++r) {
        const float w = pr[r];
        float vv[PV];
        load_as_float<KT, PV>(vb + r * DP + d, vv);
#pragma unroll
        for (int e = 0; e < PV; ++e) acc[e] = fmaf(w, vv[e], acc[e]);
      }
      *reinterpret_cast<float4*>(os + m * D + d) = make_float4(acc[0], acc[1], acc[2], acc[3]);
    }
    __syncthreads();  // stage is free for block b + 2
  }
  cp_async_wait<0>();
  __syncthreads();  // accumulators final (and initialised, if this split had no blocks)

  if (p.num_splits == 1) {
    T* out = static_cast<T*>(p.out);
    for (int i = tid; i < m_rows * CHUNKS; i += kThreads) {
      const int m = i / CHUNKS, c = i % CHUNKS;
      const int t = tr.q_begin + tr.off + m / G;
      if (t < 0 || t >= p.T) continue;
      const float l = row_l[m];
      const float inv = l > 0.f ? p.out_scale / l : 0.f;
      float f[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) f[e] = os[m * D + c * VEC + e] * inv;
      store_from_float<T, VEC>(out + (size_t(t) * p.Hq + size_t(h) * G + m % G) * D + c * VEC, f);
    }
  } else {
    const size_t slot = (size_t(tile) * p.Hkv + h) * p.num_splits + split;  // * max_rows rows
    float* po = p.part_o + slot * p.max_rows * D;
    float* pml = p.part_ml + slot * p.max_rows * 2;
    for (int i = tid; i < m_rows * (D / 4); i += kThreads) {
      reinterpret_cast<float4*>(po)[i] = reinterpret_cast<const float4*>(os)[i];
    }
    for (int m = tid; m < m_rows; m += kThreads) {
      pml[2 * m] = row_m[m];
      pml[2 * m + 1] = row_l[m];
    }
  }
}

// Merge the per-split partials of one (tile, kv head): out = sum_z w_z o_z / sum_z w_z l_z with
// w_z = 2^(m_z - max_z m_z). Grid (num_tiles, Hkv); shared memory: max_rows * num_splits floats.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) combine_splits_kernel(const AttentionParams p) {
  constexpr int VEC = 16 / static_cast<int>(sizeof(T));
  constexpr int CHUNKS = D / VEC;
  const int tile = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
  TileRows tr;
  if (!tile_rows(p, tile, tr)) return;
  const int G = p.G, Z = p.num_splits;
  const int m_rows = tr.rows * G;
  extern __shared__ float4 smem_f4[];
  float* w = reinterpret_cast<float*>(smem_f4);  // [max_rows][Z]: weight / total
  const size_t slot0 = (size_t(tile) * p.Hkv + h) * Z;

  for (int m = tid; m < m_rows; m += kThreads) {
    float mx = -INFINITY;
    for (int z = 0; z < Z; ++z) mx = fmaxf(mx, p.part_ml[((slot0 + z) * p.max_rows + m) * 2]);
    float total = 0.f;
    for (int z = 0; z < Z; ++z) {
      const float mz = p.part_ml[((slot0 + z) * p.max_rows + m) * 2];
      const float lz = p.part_ml[((slot0 + z) * p.max_rows + m) * 2 + 1];
      const float wz = (mz == -INFINITY) ? 0.f : exp2f(mz - mx);
      w[m * Z + z] = wz;
      total += wz * lz;
    }
    const float inv = total > 0.f ? p.out_scale / total : 0.f;
    for (int z = 0; z < Z; ++z) w[m * Z + z] *= inv;
  }
  __syncthreads();

  T* out = static_cast<T*>(p.out);
  for (int i = tid; i < m_rows * CHUNKS; i += kThreads) {
    const int m = i / CHUNKS, c = i % CHUNKS;
    const int t = tr.q_begin + tr.off + m / G;
    if (t < 0 || t >= p.T) continue;
    float acc[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[e] = 0.f;
    for (int z = 0; z < Z; ++z) {
      const float wz = w[m * Z + z];
      if (wz == 0.f) continue;
      const float* src = p.part_o + ((slot0 + z) * p.max_rows + m) * D + c * VEC;
#pragma unroll
      for (int e = 0; e < VEC; e += 4) {
        const float4 o = *reinterpret_cast<const float4*>(src + e);
        acc[e + 0] = fmaf(wz, o.x, acc[e + 0]);
        acc[e + 1] = fmaf(wz, o.y, acc[e + 1]);
        acc[e + 2] = fmaf(wz, o.z, acc[e + 2]);
        acc[e + 3] = fmaf(wz, o.w, acc[e + 3]);
      }
    }
    store_from_float<T, VEC>(out + (size_t(t) * p.Hq + size_t(h) * G + m % G) * D + c * VEC, acc);
  }
}

}  // namespace jaxllm
