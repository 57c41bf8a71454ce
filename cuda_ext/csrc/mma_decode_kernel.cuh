// Single-row tiles (decode) on the tensor cores: bf16/fp16, head dims 64 and 128, G <= 8.
//
// One program (4 warps) per (tile, KV head, KV split), as in row_attention_kernel.cuh, holding the
// tile's G query heads as rows 0..G-1 of a 16-row mma tile (rows G..15 are zeros), so each K/V row
// is read once per tile. The split's tokens are cut into chunks of 16; warp w takes chunks w,
// w + 4, ... and keeps its own online softmax (base 2, float32). Per chunk:
//   - K and V rows (16 tokens x D) are copied with cp.async into the warp's own slots of a
//     kMmaStages-deep shared-memory ring, kMmaStages - 1 chunks ahead of the one computed (the
//     warp's lanes read each other's rows, so a __syncwarp follows each wait; no __syncthreads);
//   - S = Q K^T: 2 x (D / 16) mma.m16n8k16 (K fragments by ldmatrix);
//   - P = exp2(S * scale - m) in registers, packed to the input type as the A operand of
//   - O += P V: D / 8 mma.m16n8k16 (V fragments by ldmatrix.trans).
// Tokens outside the row's visible range or with a page id outside [0, N) are masked to -inf and
// their ring rows zeroed, never read from global memory. At the end the warps merge through shared
// memory (the ring's space) in `merge_warps_and_store`, exactly as the CUDA-core row kernel does,
// so the output and split partials have the same layout.
//
// Why: the CUDA-core row kernel spends ~150 instructions per K/V row on unpacking, FMAs and
// shuffle reductions for G heads, and with 3 programs (12 warps) per SM it stays latency-bound at
// 0.53-0.77 of copy bandwidth at batch 16 x context 2048 on an H200 (ncu: DRAM 34-36% of peak).
// The tensor cores do the G x 16-token dot products and the P V update in a few instructions;
// this kernel reaches 0.85 there (bench/gpu_runs/2026-11-28_h200x2_kernels.md). 168 registers
// (__launch_bounds__(128, 3), no spills) and a ~70 KiB ring at D = 128 let 3 programs share an SM;
// at 170 registers only 2 fit and the same row measured 0.77-0.81.
#pragma once

#include <type_traits>

#include "row_attention_kernel.cuh"

namespace jaxllm {

#ifndef JAXLLM_MMA_STAGES
#define JAXLLM_MMA_STAGES 2  // a build flag only for measuring other depths
#endif
constexpr int kMmaStages = JAXLLM_MMA_STAGES;  // ring depth: chunks in flight + the one computed
constexpr int kMmaChunk = 16;  // tokens per warp step (one k16 of P V, two n8 tiles of Q K^T)

// Two floats as the packed pair of T (lo in the low half), the A operand's element type.
template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

// c += a b, one m16n8k16 tensor-core step with float32 accumulators; TYPE is "bf16" or "f16".
#define JAXLLM_MMA_M16N8K16(TYPE)                                             \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TYPE "." TYPE         \
               ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n" \
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])               \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))

template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    JAXLLM_MMA_M16N8K16("f16");
  } else {
    static_assert(std::is_same_v<T, __nv_bfloat16>, "mma decode: bfloat16 or float16");
    JAXLLM_MMA_M16N8K16("bf16");
  }
}
#undef JAXLLM_MMA_M16N8K16

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

template <typename T, int D>
struct MmaGeometry {
  static constexpr int VEC = 8;  // elements per 16-byte copy
  static constexpr int DP = D + VEC;  // padded ring row (conflict-free ldmatrix)
  static constexpr int KC = D / 16;  // k16 chunks of Q K^T
  static constexpr int NT = D / 8;  // n8 tiles of O
  static constexpr int COPIES = kMmaChunk * D / VEC / 32;  // 16-byte copies per lane per K (or V)
  static constexpr size_t WARP_RING = size_t(kMmaStages) * 2 * kMmaChunk * DP * sizeof(T);
  static_assert(sizeof(T) == 2 && (D == 64 || D == 128), "mma decode: 16-bit types, D 64 or 128");
};

// Dynamic shared memory of one program: the warps' rings, reused for the warp merge at the end.
template <typename T, int D, int GM>
__host__ __device__ constexpr size_t mma_decode_smem_bytes() {
  constexpr size_t ring = kWarps * MmaGeometry<T, D>::WARP_RING;
  constexpr size_t merge = sizeof(float) * kWarps * GM * (D + 2);
  return ring > merge ? ring : merge;
}

template <typename T, int D, int GM>
__global__ void __launch_bounds__(kThreads, 3) mma_decode_kernel(const AttentionParams p) {
  using Geo = MmaGeometry<T, D>;
  constexpr int VEC = Geo::VEC, DP = Geo::DP, KC = Geo::KC, NT = Geo::NT, COPIES = Geo::COPIES;
  static_assert(GM <= 8, "rows 8..15 of the mma tile stay zero");
  extern __shared__ uint4 mma_smem[];

  const int tile = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int grp = lane >> 2, tig = lane & 3;  // mma fragment coordinates

  if (split == 0) zero_padding_rows<T, D>(p, tile, h);
  TileRows tr;
  if (!tile_rows(p, tile, tr)) return;  // uniform over the program
  const int row = tr.q_begin + tr.off;  // the tile's single query row
  if (row < 0 || row >= p.T) return;

  const int G = p.G;  // <= GM
  const int kv_len = p.kv_lens[tr.seq];
  const int pos = kv_len - tr.q_len + tr.off;
  const int hi = max(0, min(pos + 1, p.P * p.bs));
  const int lo = p.window > 0 ? min(hi, max(0, pos - p.window + 1)) : 0;
  const int per_split =
      ((hi - lo + p.num_splits - 1) / p.num_splits + kMmaChunk - 1) / kMmaChunk * kMmaChunk;
  const int my_lo = lo + split * per_split;
  const int my_hi = min(hi, my_lo + per_split);
  const int num_chunks = my_lo < my_hi ? (my_hi - my_lo + kMmaChunk - 1) / kMmaChunk : 0;
  const int my_steps = num_chunks > warp ? (num_chunks - warp + kWarps - 1) / kWarps : 0;

  const int layer = min(max(*p.layer, 0), p.L - 1);
  const int32_t* __restrict__ pages = p.block_tables + size_t(tr.seq) * p.P;
  const size_t head_stride = size_t(p.bs) * D;
  const size_t page_stride = size_t(p.Hkv) * head_stride;
  const T* kl = static_cast<const T*>(p.k) + size_t(layer) * p.N * page_stride + h * head_stride;
  const T* vl = static_cast<const T*>(p.v) + size_t(layer) * p.N * page_stride + h * head_stride;

  // Q as A fragments: row grp < G holds query head h * G + grp; rows >= G and 8..15 are zero.
  uint32_t qa[KC][4];
  {
    const T* qrow = static_cast<const T*>(p.q) + (size_t(row) * p.Hq + size_t(h) * G + grp) * D;
#pragma unroll
    for (int kc = 0; kc < KC; ++kc) {
      const bool ok = grp < G;
      qa[kc][0] = ok ? *reinterpret_cast<const uint32_t*>(qrow + kc * 16 + tig * 2) : 0u;
      qa[kc][1] = 0u;
      qa[kc][2] = ok ? *reinterpret_cast<const uint32_t*>(qrow + kc * 16 + 8 + tig * 2) : 0u;
      qa[kc][3] = 0u;
    }
  }

  T* ring = reinterpret_cast<T*>(mma_smem) + size_t(warp) * (Geo::WARP_RING / sizeof(T));
  auto ring_k = [&](int stage) { return ring + size_t(stage * 2) * kMmaChunk * DP; };
  auto ring_v = [&](int stage) { return ring + size_t(stage * 2 + 1) * kMmaChunk * DP; };

  // Chunk `c` of the split starts at token my_lo + c * 16. Lane l < 16 owns token l of a chunk:
  // its page id (loaded a chunk early) and whether it is visible.
  auto page_of = [&](int step) -> int {
    const int tok = my_lo + (warp + step * kWarps) * kMmaChunk + (lane & 15);
    if (step >= my_steps || tok >= my_hi) return -1;
    const int page = __ldg(pages + tok / p.bs);
    return (page < 0 || page >= p.N) ? -1 : page;
  };
  // Copy the K and V rows of this warp's step `step` into ring stage `stage` (page ids in `pg`:
  // lane l < 16 holds token l's). Returns this lane's token's visibility bit.
  auto stage_chunk = [&](int step, int stage, int pg) -> uint32_t {
    T* ks = ring_k(stage);
    T* vs = ring_v(stage);
    const int base = my_lo + (warp + step * kWarps) * kMmaChunk;
#pragma unroll
    for (int i = 0; i < COPIES; ++i) {
      const int idx = i * 32 + lane;
      const int t = idx / (D / VEC), c = idx % (D / VEC);  // token of the chunk, 16-byte column
      const int page = __shfl_sync(0xffffffffu, pg, t);
      T* kd = ks + t * DP + c * VEC;
      T* vd = vs + t * DP + c * VEC;
      if (page >= 0) {
        const size_t off = size_t(page) * page_stride + size_t((base + t) % p.bs) * D + c * VEC;
        cp_async16(kd, kl + off);
        cp_async16(vd, vl + off);
      } else {
        *reinterpret_cast<uint4*>(kd) = make_uint4(0u, 0u, 0u, 0u);
        *reinterpret_cast<uint4*>(vd) = make_uint4(0u, 0u, 0u, 0u);
      }
    }
    return pg >= 0 ? 1u : 0u;
  };

  float o[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m_row = -INFINITY;  // row grp's running max (base 2), the same in the 4 lanes of a quad
  float l_part = 0.f;  // this lane's share of row grp's running sum

  uint32_t vis = 0;  // bit s: this lane's token (l < 16) of the chunk in stage s is visible
  int pg_next = page_of(0);
#pragma unroll
  for (int i = 0; i < kMmaStages - 1; ++i) {
    if (i < my_steps) {
      const uint32_t bit = stage_chunk(i, i, pg_next);
      vis = (vis & ~(1u << i)) | (bit << i);
      pg_next = page_of(i + 1);
    }
    cp_async_commit();
  }

  for (int it = 0; it < my_steps; ++it) {
    const int ahead = it + kMmaStages - 1;
    if (ahead < my_steps) {
      const int st = ahead % kMmaStages;
      const uint32_t bit = stage_chunk(ahead, st, pg_next);
      vis = (vis & ~(1u << st)) | (bit << st);
      pg_next = page_of(ahead + 1);
    }
    cp_async_commit();
    cp_async_wait<kMmaStages - 1>();
    __syncwarp();  // the chunk's rows were copied by all lanes of the warp

    const int stage = it % kMmaStages;
    const T* ks = ring_k(stage);
    const T* vs = ring_v(stage);

    // S = Q K^T for the chunk's two n8 tiles (tokens 0-7, 8-15).
    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int kc = 0; kc < KC; kc += 2) {
        // Matrices: (kc, lo 8 dims), (kc, hi 8), (kc + 1, lo), (kc + 1, hi) of tokens nt*8..+7.
        uint32_t b[4];
        ldmatrix_x4(b, ks + (nt * 8 + (lane & 7)) * DP + kc * 16 + (lane >> 3) * 8);
        mma_m16n8k16<T>(s[nt], qa[kc], b[0], b[1]);
        mma_m16n8k16<T>(s[nt], qa[kc + 1], b[2], b[3]);
      }
    }
    // Mask, scale into base 2, online softmax of row grp (rows 8..15: values unused).
    float mx = m_row;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int t = nt * 8 + tig * 2 + e;
        const bool live = (__shfl_sync(0xffffffffu, vis, t) >> stage) & 1u;
        s[nt][e] = live ? s[nt][e] * p.scale_log2 : -INFINITY;
        mx = fmaxf(mx, s[nt][e]);
      }
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float base = mx == -INFINITY ? 0.f : mx;
    const float alpha = exp2f(m_row - base);  // m_row = -inf: 0
    m_row = mx;
    float pr[2][2];
    l_part *= alpha;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        pr[nt][e] = exp2f(s[nt][e] - base);  // -inf: 0
        l_part += pr[nt][e];
      }
    }
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      o[n][0] *= alpha;
      o[n][1] *= alpha;
    }
    // O += P V: P as the A operand (rows 8..15 zero), V fragments by ldmatrix.trans.
    uint32_t pa[4];
    pa[0] = pack_pair<T>(pr[0][0], pr[0][1]);
    pa[1] = 0u;
    pa[2] = pack_pair<T>(pr[1][0], pr[1][1]);
    pa[3] = 0u;
#pragma unroll
    for (int n = 0; n < NT; n += 2) {
      // Matrices: (tokens 0-7, dims n*8..), (tokens 8-15, n*8..), (0-7, n*8+8..), (8-15, n*8+8..).
      uint32_t b[4];
      ldmatrix_x4_trans(b,
                        vs + ((lane & 7) + ((lane >> 3) & 1) * 8) * DP + n * 8 + (lane >> 4) * 8);
      mma_m16n8k16<T>(o[n], pa, b[0], b[1]);
      mma_m16n8k16<T>(o[n + 1], pa, b[2], b[3]);
    }
    __syncwarp();  // every lane is done with this stage before it is refilled
  }
  cp_async_wait<0>();

  // Row grp's sum over the quad; then the warps merge through shared memory (the rings' space).
  float l_row = l_part;
  l_row += __shfl_xor_sync(0xffffffffu, l_row, 1);
  l_row += __shfl_xor_sync(0xffffffffu, l_row, 2);
  __syncthreads();  // all warps are done with their rings
  float* red_o = reinterpret_cast<float*>(mma_smem);  // [kWarps][GM][D]
  float* red_m = red_o + kWarps * GM * D;  // [kWarps][GM]
  float* red_l = red_m + kWarps * GM;  // [kWarps][GM]
  if (grp < GM) {
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      float* dst = red_o + (warp * GM + grp) * D + n * 8 + tig * 2;
      dst[0] = o[n][0];
      dst[1] = o[n][1];
    }
    if (tig == 0) {
      red_m[warp * GM + grp] = m_row;
      red_l[warp * GM + grp] = l_row;
    }
  }
  __syncthreads();
  merge_warps_and_store<T, D, GM>(p, red_o, red_m, red_l, tile, h, split, row);
}

}  // namespace jaxllm
