// Single-row tiles (decode): one program per (tile, KV head, KV split) for tiles of ONE query row,
// with all G <= GM query heads of the KV head, so each K/V row is read once per tile.
//
// Memory path (what makes decode fast; it is memory-bound). No shared-memory staging and no
// __syncthreads in the main loop: each warp streams its own tokens straight from global memory into
// registers with 16-byte loads (`TPT` lanes cover one K or V row of D elements; a warp covers `TPW`
// consecutive tokens per load, so a warp's loads are contiguous within a page). Every step a lane
// issues UNROLL independent K loads and UNROLL V loads (and the next step's page ids) before it
// uses any of them, so many bytes are in flight per SM. Scores are reduced across the TPT lanes of
// a token with shuffles; each token subgroup keeps its own online softmax (base 2, float32) with
// one rescale per step; at the end subgroups merge by shuffles, warps through shared memory.
//
// fp8 pages (KT = __nv_fp8_e4m3): 8-byte loads of 8 elements, so a lane's share of a row and its
// registers are those of a 16-bit cache; the elements are converted to float as they are used.
//
// Output: with one KV split the program normalises and writes its G rows into `out`; with several
// it writes (o, m, l) partials in the layout of `combine_splits_kernel`, which merges them. Tokens
// outside the row's visible range [lo, hi) (causal, window, min(kv_len, P * bs)) are never read,
// and a page id outside [0, N) makes its token invisible instead of being dereferenced.
#pragma once

#include <type_traits>

#include "paged_attention_kernels.cuh"

namespace jaxllm {

constexpr int kRowKernelMaxG = 8;  // query heads per KV head the single-row kernel serves

// KT: the page type. Loads of 16 bytes (8 for 1-byte pages: 8 elements, as for 16-bit pages).
template <typename KT, int D, int GM>
struct RowGeometry {
  using Vec = std::conditional_t<sizeof(KT) == 1, uint2, uint4>;  // one load
  static constexpr int VEC = sizeof(Vec) / static_cast<int>(sizeof(KT));  // elements per load
  static constexpr int CHUNKS = D / VEC;  // loads per K/V row
  static constexpr int TPT = CHUNKS < 32 ? CHUNKS : 32;  // lanes per token
  static constexpr int CPT = CHUNKS / TPT;  // chunks per lane
  static constexpr int E = CPT * VEC;  // row elements per lane
  static constexpr int TPW = 32 / TPT;  // tokens per warp load
  // Tokens per subgroup per step: 4 (2 with 8 query heads, to keep q/acc/loads in registers),
  // halved again when a lane owns two chunks of a row.
  static constexpr int U0 = (GM >= 8 ? 2 : 4) / CPT;
  static constexpr int UNROLL = U0 < 1 ? 1 : U0;
  static constexpr int STEP = kWarps * TPW * UNROLL;  // tokens per program per step
  static_assert(CHUNKS * VEC == D && CPT * TPT == CHUNKS && TPW * TPT == 32, "row geometry");
};

// The 32-bit words of one load.
template <typename Vec>
__device__ __forceinline__ const uint32_t* vec_words(const Vec& w) {
  return reinterpret_cast<const uint32_t*>(&w);
}

// Multiply-accumulate the elements of KT packed in one load `w` with floats `x`.
template <typename KT, typename Vec>
__device__ __forceinline__ float dot_vec(const Vec& w, const float* x, float acc) {
  constexpr int kPer = Words<KT>::kPerWord;
  constexpr int kWords = sizeof(Vec) / 4;
  const uint32_t* words = vec_words(w);
#pragma unroll
  for (int i = 0; i < kWords; ++i) {
    float f[kPer];
    Words<KT>::unpack(words[i], f);
#pragma unroll
    for (int e = 0; e < kPer; ++e) acc = fmaf(x[i * kPer + e], f[e], acc);
  }
  return acc;
}

// acc[e] += p * (the elements of KT packed in one load `w`).
template <typename KT, typename Vec>
__device__ __forceinline__ void axpy_vec(const Vec& w, float p, float* acc) {
  constexpr int kPer = Words<KT>::kPerWord;
  constexpr int kWords = sizeof(Vec) / 4;
  const uint32_t* words = vec_words(w);
#pragma unroll
  for (int i = 0; i < kWords; ++i) {
    float f[kPer];
    Words<KT>::unpack(words[i], f);
#pragma unroll
    for (int e = 0; e < kPer; ++e) acc[i * kPer + e] = fmaf(p, f[e], acc[i * kPer + e]);
  }
}

__device__ __forceinline__ float exp2_or_zero(float x, float m) {
  return x == -INFINITY ? 0.f : exp2f(x - m);
}

// The end of a single-row program: merge the kWarps partial softmax states of its G rows
// (red_o [kWarps][GM][D], red_m and red_l [kWarps][GM] in shared memory, written before a
// __syncthreads) and write the normalised rows into `out` (one split) or the split's (o, m, l)
// partials in the layout of `combine_splits_kernel`. Four output elements per work item.
template <typename T, int D, int GM>
__device__ __forceinline__ void merge_warps_and_store(const AttentionParams& p, const float* red_o,
                                                      const float* red_m, const float* red_l,
                                                      int tile, int h, int split, int row) {
  const int G = p.G;
  for (int i = threadIdx.x; i < G * (D / 4); i += kThreads) {
    const int g = i / (D / 4), d = (i % (D / 4)) * 4;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, red_m[w * GM + g]);
    float o[4] = {0.f, 0.f, 0.f, 0.f};
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float ww = exp2_or_zero(red_m[w * GM + g], mx);
      total += ww * red_l[w * GM + g];
#pragma unroll
      for (int e = 0; e < 4; ++e) o[e] = fmaf(ww, red_o[(w * GM + g) * D + d + e], o[e]);
    }
    if (p.num_splits == 1) {
      const float inv = total > 0.f ? p.out_scale / total : 0.f;
#pragma unroll
      for (int e = 0; e < 4; ++e) o[e] *= inv;
      store_from_float<T, 4>(
          static_cast<T*>(p.out) + (size_t(row) * p.Hq + size_t(h) * G + g) * D + d, o);
    } else {
      const size_t slot =
          (size_t(tile) * p.Hkv + h) * p.num_splits + split;  // * max_rows (= G) rows
      float* po = p.part_o + (slot * p.max_rows + g) * D + d;
      *reinterpret_cast<float4*>(po) = make_float4(o[0], o[1], o[2], o[3]);
      if (d == 0) {
        float* pml = p.part_ml + (slot * p.max_rows + g) * 2;
        pml[0] = mx;
        pml[1] = total;
      }
    }
  }
}

template <typename T, typename KT, int D, int GM>
__global__ void __launch_bounds__(kThreads) row_attention_kernel(const AttentionParams p) {
  using Geo = RowGeometry<KT, D, GM>;
  using Vec = typename Geo::Vec;
  constexpr int VEC = Geo::VEC, TPT = Geo::TPT, CPT = Geo::CPT, E = Geo::E, TPW = Geo::TPW;
  constexpr int U = Geo::UNROLL, STEP = Geo::STEP;
  __shared__ float red_o[kWarps][GM][D];
  __shared__ float red_m[kWarps][GM];
  __shared__ float red_l[kWarps][GM];

  const int tile = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int sub = lane / TPT, cl = lane % TPT;

  if (split == 0) zero_padding_rows<T, D>(p, tile, h);
  TileRows tr;
  if (!tile_rows(p, tile, tr)) return;  // uniform over the program
  const int row = tr.q_begin + tr.off;  // the tile's single query row
  if (row < 0 || row >= p.T) return;  // malformed offsets: nothing to write

  const int G = p.G;  // <= GM
  const int kv_len = p.kv_lens[tr.seq];
  const int pos = kv_len - tr.q_len + tr.off;  // the row's absolute position
  const int hi = max(0, min(pos + 1, p.P * p.bs));
  const int lo = p.window > 0 ? min(hi, max(0, pos - p.window + 1)) : 0;
  const int per_split = ((hi - lo + p.num_splits - 1) / p.num_splits + STEP - 1) / STEP * STEP;
  const int my_lo = lo + split * per_split;  // >= hi: an empty split
  const int my_hi = min(hi, my_lo + per_split);

  const int layer = min(max(*p.layer, 0), p.L - 1);
  const KT* __restrict__ kbase = static_cast<const KT*>(p.k);
  const KT* __restrict__ vbase = static_cast<const KT*>(p.v);
  const int32_t* __restrict__ pages = p.block_tables + size_t(tr.seq) * p.P;
  const size_t head_stride = size_t(p.bs) * D;  // one (page, KV head) block
  const size_t page_stride = size_t(p.Hkv) * head_stride;  // one page of one layer
  const KT* kl = kbase + size_t(layer) * p.N * page_stride + size_t(h) * head_stride;
  const KT* vl = vbase + size_t(layer) * p.N * page_stride + size_t(h) * head_stride;

  // This lane's slice of the G query rows, scaled into the base-2 domain.
  float qf[GM][E];
  {
    const T* qrow = static_cast<const T*>(p.q) + (size_t(row) * p.Hq + size_t(h) * G) * D;
#pragma unroll
    for (int g = 0; g < GM; ++g) {
#pragma unroll
      for (int j = 0; j < CPT; ++j) {
        float f[VEC];
        if (g < G) {
          load_row_as_float<T, VEC>(qrow + size_t(g) * D + (j * TPT + cl) * VEC, f);
        } else {
#pragma unroll
          for (int e = 0; e < VEC; ++e) f[e] = 0.f;
        }
#pragma unroll
        for (int e = 0; e < VEC; ++e) qf[g][j * VEC + e] = f[e] * p.scale_log2;
      }
    }
  }
  float m[GM], l[GM], acc[GM][E];
#pragma unroll
  for (int g = 0; g < GM; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[g][e] = 0.f;
  }

  // Token u of this lane's subgroup in the step starting at `base`; -1: not visible or bad page.
  auto offset_of = [&](int base, int u) -> long long {
    const int tok = base + (warp * U + u) * TPW + sub;
    if (tok >= my_hi) return -1;
    const int page = __ldg(pages + tok / p.bs);
    if (page < 0 || page >= p.N) return -1;
    return static_cast<long long>(page) * page_stride + static_cast<long long>(tok % p.bs) * D;
  };

  long long off[U];
#pragma unroll
  for (int u = 0; u < U; ++u) off[u] = my_lo < my_hi ? offset_of(my_lo, u) : -1;

  for (int base = my_lo; base < my_hi; base += STEP) {  // uniform trip count over the program
    Vec kr[U][CPT], vr[U][CPT];
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int j = 0; j < CPT; ++j) {
        if (off[u] >= 0) {
          const size_t o = size_t(off[u]) + size_t(j * TPT + cl) * VEC;
          kr[u][j] = __ldg(reinterpret_cast<const Vec*>(kl + o));
          vr[u][j] = __ldg(reinterpret_cast<const Vec*>(vl + o));
        } else {
          kr[u][j] = Vec{};
          vr[u][j] = Vec{};
        }
      }
    }
    bool live[U];
#pragma unroll
    for (int u = 0; u < U; ++u) live[u] = off[u] >= 0;
    // Next step's page ids, in flight while this step computes.
#pragma unroll
    for (int u = 0; u < U; ++u) off[u] = base + STEP < my_hi ? offset_of(base + STEP, u) : -1;

    // Scores s[u][g] (base 2), summed over the TPT lanes of each token.
    float s[U][GM];
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int g = 0; g < GM; ++g) {
        float a = 0.f;
#pragma unroll
        for (int j = 0; j < CPT; ++j) a = dot_vec<KT>(kr[u][j], &qf[g][j * VEC], a);
#pragma unroll
        for (int o = TPT / 2; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
        s[u][g] = live[u] ? a : -INFINITY;
      }
    }
    // Online softmax: one rescale per step.
#pragma unroll
    for (int g = 0; g < GM; ++g) {
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < U; ++u) mx = fmaxf(mx, s[u][g]);
      const float alpha = exp2_or_zero(m[g], mx);
      float psum = 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[g][e] *= alpha;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float pu = exp2_or_zero(s[u][g], mx);
        psum += pu;
#pragma unroll
        for (int j = 0; j < CPT; ++j) axpy_vec<KT>(vr[u][j], pu, &acc[g][j * VEC]);
      }
      l[g] = l[g] * alpha + psum;
      m[g] = mx;
    }
  }

  // Merge the TPW subgroups of the warp (lanes sub * TPT + cl hold the same slice of the row).
#pragma unroll
  for (int o = TPT; o < 32; o <<= 1) {
#pragma unroll
    for (int g = 0; g < GM; ++g) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[g], o);
      const float lo_ = __shfl_xor_sync(0xffffffffu, l[g], o);
      const float mn = fmaxf(m[g], mo);
      const float wa = exp2_or_zero(m[g], mn), wb = exp2_or_zero(mo, mn);
      l[g] = l[g] * wa + lo_ * wb;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const float ao = __shfl_xor_sync(0xffffffffu, acc[g][e], o);
        acc[g][e] = acc[g][e] * wa + ao * wb;
      }
      m[g] = mn;
    }
  }
  if (sub == 0) {
#pragma unroll
    for (int g = 0; g < GM; ++g) {
#pragma unroll
      for (int j = 0; j < CPT; ++j) {
#pragma unroll
        for (int e = 0; e < VEC; ++e)
          red_o[warp][g][(j * TPT + cl) * VEC + e] = acc[g][j * VEC + e];
      }
      if (cl == 0) {
        red_m[warp][g] = m[g];
        red_l[warp][g] = l[g];
      }
    }
  }
  __syncthreads();

  merge_warps_and_store<T, D, GM>(p, &red_o[0][0][0], &red_m[0][0], &red_l[0][0], tile, h, split,
                                  row);
}

}  // namespace jaxllm
