// XLA FFI handlers for XLA:CPU: y = x @ W, x float32, W stored quantized (AVX2, FMA, F16C).
//
// Exported symbols (registered with jax.ffi.register_ffi_target(..., platform="cpu")):
//   JaxllmInt8Matmul   operands x [M, K] f32, w [S, K, 16] s8, scale [N] f32; result
//                      y [M, N] f32 = (x @ Wq) * scale[None, :], 16 * (S - 1) < N <= 16 * S. The
//                      int8 weights Wq [K, N] come packed in 16-column strips like the float packed
//                      matmul's: `w[s, k, j] = Wq[k, 16 * s + j]`, zero past column N.
//   JaxllmGgufMatmul   operands x [M, K] f32, w [N, row_bytes] u8: llama.cpp's block bytes of a
//                      weight W [N, K] (row n is K / block_elems blocks), as a GGUF file stores it;
//                      attribute ggml_type (GGML's enum: Q4_0 = 2, Q4_1 = 3, Q8_0 = 8, Q4_K = 12,
//                      Q6_K = 14); result y [M, N] f32, y[m, n] = sum_k x[m, k] * W[n, k].
//
// Dequantization is bit for bit that of gguf-py's `gguf.quants.dequantize` (same float32 values).
//
// GGUF work, by the rows of x: M <= 4 (decode, bound by reading W): each block is dequantized in
// registers and dotted with the x rows at once, W is never written out as floats; a unit is a run
// of output rows. M > 4 (prefill): 16 output rows at a time are dequantized into a thread-local
// float strip [K, 16], which the strip kernel (the float packed matmul's) streams 4 rows of x at a
// time; a unit is (a block of rows of x, a run of strips). The int8 kernel always runs the strip
// kernel on its int8 strips, converting each strip row in registers. Units run through
// `run_units` (ffi_cpu_utils.h) on the calling thread and helpers of XLA's intra-op thread pool.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "ffi_cpu_utils.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jaxllm {
namespace {

constexpr int64_t kStrip = 16;  // columns per strip: two 8-float AVX registers
constexpr int64_t kRowBlock = 64;  // rows of x per strip work unit (64 x K floats stay in L2)
constexpr int64_t kUnitsPerThread = 4;
// GGUF with few rows of x: a call lasts tens of microseconds, so units are smaller (runs of output
// rows) and even out a helper thread that starts late.
constexpr int64_t kRowUnitsPerThread = 16;
constexpr int64_t kMaxDotRows = 4;  // GGUF: up to this many rows of x take the register path
constexpr int kChunk = 32;  // elements a dequantizer yields at a time (4 vectors)
// The register path reads W once a call, from DRAM in a model's decode step: it prefetches this far
// ahead in its unit's rows (one contiguous stream), so memory latency hides behind dequantization.
constexpr int64_t kPrefetchBytes = 2048;

// ------------------------------------------------------------------------- dequantizers

// IEEE half (2 little-endian bytes at p) -> float (exact).
inline float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof h);
  return _cvtsh_ss(h);
}
// The halves at p and p + 2, each broadcast to 8 floats.
inline void half_pair(const uint8_t* p, __m256& a, __m256& b) {
  int32_t u;
  std::memcpy(&u, p, sizeof u);
  const __m256 v = _mm256_castps128_ps256(_mm_cvtph_ps(_mm_cvtsi32_si128(u)));
  a = _mm256_permutevar8x32_ps(v, _mm256_setzero_si256());
  b = _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(1));
}

inline __m128i load8(const uint8_t* p) {
  return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
}
inline __m256i load32(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
inline __m128i high8(__m128i v) {
  return _mm_unpackhi_epi64(v, v);
}
// The low 8 bytes of v as 8 signed ints, as floats.
inline __m256 s8_to_ps(__m128i v) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
}
// The low / high nibbles of 8 bytes zero-extended to int32 lanes (the high ones need no mask).
inline __m256 low4_ps(__m256i b) {
  return _mm256_cvtepi32_ps(_mm256_and_si256(b, _mm256_set1_epi32(15)));
}
inline __m256 high4_ps(__m256i b) {
  return _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
}
inline __m256i u8x8(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(load8(p));
}

// Each format: kElems values in kBytes bytes a block; chunk(b, c, w) writes values
// [32 c, 32 c + 32) of the block at b into w[0..3] (8 each, in order), equal to gguf-py's.
// Where gguf-py computes d * q + m in two roundings, one FMA gives the same value: d is a float16
// (11 significant bits) and q < 16, so d * q (at most 15 bits) is exact in float and only the sum
// rounds.

struct Q8_0 {  // d f16, qs[32] s8: w = q * d
  static constexpr int64_t kType = 8, kElems = 32, kBytes = 34;
  static inline void chunk(const uint8_t* b, int64_t, __m256 w[4]) {
    const __m256 d = _mm256_set1_ps(half_at(b));
    for (int i = 0; i < 4; ++i) w[i] = _mm256_mul_ps(s8_to_ps(load8(b + 2 + 8 * i)), d);
  }
};

// d f16, qs[16]: value j < 16 is the low nibble of qs[j], value j + 16 its high one; w = d (q - 8)
struct Q4_0 {
  static constexpr int64_t kType = 2, kElems = 32, kBytes = 18;
  static inline void chunk(const uint8_t* b, int64_t, __m256 w[4]) {
    const __m256 d = _mm256_set1_ps(half_at(b));
    const __m256i lo = u8x8(b + 2), hi = u8x8(b + 10), eight = _mm256_set1_epi32(8);
    const auto signed4 = [&](__m256i q) { return _mm256_cvtepi32_ps(_mm256_sub_epi32(q, eight)); };
    const __m256i mask = _mm256_set1_epi32(15);
    w[0] = _mm256_mul_ps(d, signed4(_mm256_and_si256(lo, mask)));
    w[1] = _mm256_mul_ps(d, signed4(_mm256_and_si256(hi, mask)));
    w[2] = _mm256_mul_ps(d, signed4(_mm256_srli_epi32(lo, 4)));
    w[3] = _mm256_mul_ps(d, signed4(_mm256_srli_epi32(hi, 4)));
  }
};

struct Q4_1 {  // d f16, m f16, qs[16] as Q4_0's: w = d q + m
  static constexpr int64_t kType = 3, kElems = 32, kBytes = 20;
  static inline void chunk(const uint8_t* b, int64_t, __m256 w[4]) {
    __m256 d, m;
    half_pair(b, d, m);
    const __m256i lo = u8x8(b + 4), hi = u8x8(b + 12);
    w[0] = _mm256_fmadd_ps(d, low4_ps(lo), m);
    w[1] = _mm256_fmadd_ps(d, low4_ps(hi), m);
    w[2] = _mm256_fmadd_ps(d, high4_ps(lo), m);
    w[3] = _mm256_fmadd_ps(d, high4_ps(hi), m);
  }
};

// d f16, dmin f16, scales[12] (8 6-bit scales and mins, llama.cpp's get_scale_min_k4), qs[128]:
// sub-block c (32 values) is the low (c even) or high nibbles of qs[32 (c / 2) ..][0, 32);
// w = (d sc) q - (dmin m).
struct Q4_K {
  static constexpr int64_t kType = 12, kElems = 256, kBytes = 144;
  static inline void chunk(const uint8_t* b, int64_t c, __m256 w[4]) {
    const uint8_t* s = b + 4;
    const int sc = c < 4 ? s[c] & 63 : (s[c + 4] & 0x0F) | ((s[c - 4] >> 6) << 4);
    const int mn = c < 4 ? s[c + 4] & 63 : (s[c + 4] >> 4) | ((s[c] >> 6) << 4);
    __m256 d, m;
    half_pair(b, d, m);
    // d sc and dmin m are exact (17 bits), and so is (d sc) q (21 bits): only the FMA's sum rounds.
    d = _mm256_mul_ps(d, _mm256_set1_ps(float(sc)));
    m = _mm256_mul_ps(m, _mm256_set1_ps(float(-mn)));
    const uint8_t* qs = b + 16 + 32 * (c / 2);
    for (int i = 0; i < 4; ++i) {
      const __m256i q = u8x8(qs + 8 * i);
      w[i] = _mm256_fmadd_ps(d, c % 2 ? high4_ps(q) : low4_ps(q), m);
    }
  }
};

// ql[128], qh[64], scales[16] s8, d f16. Chunk c = 4 h + g of half h: the low 4 bits are nibble
// g / 2 of ql[64 h + 32 (g % 2) ..], the high 2 bits are bits 2 g, 2 g + 1 of qh[32 h ..];
// w = (d sc) (q - 32), a scale per 16 values.
struct Q6_K {
  static constexpr int64_t kType = 14, kElems = 256, kBytes = 210;
  static inline void chunk(const uint8_t* b, int64_t c, __m256 w[4]) {
    const int64_t h = c / 4, g = c % 4;
    const __m256i ql = load32(b + 64 * h + 32 * (g % 2)), qh = load32(b + 128 + 32 * h);
    const __m256i low =
        _mm256_and_si256(_mm256_srli_epi16(ql, int(4 * (g / 2))), _mm256_set1_epi8(0x0F));
    const __m256i high = _mm256_and_si256(_mm256_srli_epi16(qh, int(2 * g)), _mm256_set1_epi8(3));
    const __m256i q = _mm256_sub_epi8(_mm256_or_si256(low, _mm256_slli_epi16(high, 4)),
                                      _mm256_set1_epi8(32));  // 32 values in [-32, 32), a byte each
    const __m128i q0 = _mm256_castsi256_si128(q), q1 = _mm256_extracti128_si256(q, 1);
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + 2 * c;
    const float d = half_at(b + 208);
    const __m256 d0 = _mm256_set1_ps(d * float(sc[0])), d1 = _mm256_set1_ps(d * float(sc[1]));
    w[0] = _mm256_mul_ps(d0, s8_to_ps(q0));
    w[1] = _mm256_mul_ps(d0, s8_to_ps(high8(q0)));
    w[2] = _mm256_mul_ps(d1, s8_to_ps(q1));
    w[3] = _mm256_mul_ps(d1, s8_to_ps(high8(q1)));
  }
};

// ------------------------------------------------------------------------- strip kernel

// Strip row k's 16 weights as two 8-float vectors: float strips load, int8 strips convert.
inline void strip_row(const float* w, __m256& b0, __m256& b1) {
  b0 = _mm256_loadu_ps(w);
  b1 = _mm256_loadu_ps(w + 8);
}
inline void strip_row(const int8_t* w, __m256& b0, __m256& b1) {
  b0 = s8_to_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w)));
  b1 = s8_to_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + 8)));
}

// acc = x[0:MR, 0:K] @ strip (w: [K, 16]); ldx: x's row stride in floats. With one or two rows,
// KU interleaved chains over k keep 8 FMAs in flight (one chain would wait on each FMA's latency).
template <int MR, typename T>
inline void strip_kernel(const float* x, int64_t ldx, const T* w, int64_t K, __m256 (&out)[MR][2]) {
  constexpr int KU = MR == 1 ? 4 : MR == 2 ? 2 : 1;
  __m256 acc[KU][MR][2];
#pragma GCC unroll 4
  for (int u = 0; u < KU; ++u)
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) acc[u][i][0] = acc[u][i][1] = _mm256_setzero_ps();
  const auto step = [&](int u, int64_t k) {
    __m256 b0, b1;
    strip_row(w + k * kStrip, b0, b1);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(x + i * ldx + k);
      acc[u][i][0] = _mm256_fmadd_ps(a, b0, acc[u][i][0]);
      acc[u][i][1] = _mm256_fmadd_ps(a, b1, acc[u][i][1]);
    }
  };
  int64_t k = 0;
  for (; k + KU <= K; k += KU) {
#pragma GCC unroll 4
    for (int u = 0; u < KU; ++u) step(u, k + u);
  }
  for (; k < K; ++k) step(0, k);
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
    out[i][0] = acc[0][i][0];
    out[i][1] = acc[0][i][1];
#pragma GCC unroll 4
    for (int u = 1; u < KU; ++u) {
      out[i][0] = _mm256_add_ps(out[i][0], acc[u][i][0]);
      out[i][1] = _mm256_add_ps(out[i][1], acc[u][i][1]);
    }
  }
}

// Rows [m, m + MR) of y, columns [col, col + cols) from one strip, times scale[0:16] if given:
// full strips go straight to y, a partial last strip (cols < 16) through a scratch tile.
template <int MR, typename T>
inline void strip_rows(const float* x, const T* w, const float* scale, float* y, int64_t K,
                       int64_t N, int64_t m, int64_t col, int64_t cols) {
  __m256 acc[MR][2];
  strip_kernel<MR>(x + m * K, K, w, K, acc);
  if (scale) {
    const __m256 s0 = _mm256_loadu_ps(scale), s1 = _mm256_loadu_ps(scale + 8);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      acc[i][0] = _mm256_mul_ps(acc[i][0], s0);
      acc[i][1] = _mm256_mul_ps(acc[i][1], s1);
    }
  }
  float tile[MR * kStrip];
  const bool full = cols == kStrip;
  for (int i = 0; i < MR; ++i) {
    float* out = full ? y + (m + i) * N + col : tile + i * kStrip;
    _mm256_storeu_ps(out, acc[i][0]);
    _mm256_storeu_ps(out + 8, acc[i][1]);
    if (!full) std::copy_n(out, cols, y + (m + i) * N + col);
  }
}

// Rows [m0, m1) of y against one strip, 4 rows of x at a time.
template <typename T>
void strip_pass(const float* x, const T* w, const float* scale, float* y, int64_t K, int64_t N,
                int64_t m0, int64_t m1, int64_t col, int64_t cols) {
  int64_t m = m0;
  for (; m + 4 <= m1; m += 4) strip_rows<4>(x, w, scale, y, K, N, m, col, cols);
  switch (m1 - m) {
    case 3:
      strip_rows<3>(x, w, scale, y, K, N, m, col, cols);
      break;
    case 2:
      strip_rows<2>(x, w, scale, y, K, N, m, col, cols);
      break;
    case 1:
      strip_rows<1>(x, w, scale, y, K, N, m, col, cols);
      break;
    default:
      break;
  }
}

// Units of (a block of kRowBlock rows of x, a run of strips), about kUnitsPerThread a thread.
struct StripGrid {
  int64_t S = 0, strips_per_unit = 1, units_per_block = 1;

  int64_t init(int64_t M, int64_t num_strips, int64_t threads) {
    S = num_strips;
    const int64_t row_blocks = (M + kRowBlock - 1) / kRowBlock;
    const int64_t want = (kUnitsPerThread * threads + row_blocks - 1) / row_blocks;
    units_per_block = std::clamp<int64_t>(want, 1, std::max<int64_t>(S, 1));
    strips_per_unit = (S + units_per_block - 1) / units_per_block;
    units_per_block = (S + strips_per_unit - 1) / strips_per_unit;
    return row_blocks * units_per_block;
  }
  // Unit u's rows [m0, m1) and strips [s0, s1).
  void unit(int64_t u, int64_t M, int64_t& m0, int64_t& m1, int64_t& s0, int64_t& s1) const {
    m0 = (u / units_per_block) * kRowBlock;
    m1 = std::min(M, m0 + kRowBlock);
    s0 = (u % units_per_block) * strips_per_unit;
    s1 = std::min(S, s0 + strips_per_unit);
  }
};

// ------------------------------------------------------------------------- int8

struct Int8Job {
  const float* x;  // [M, K]
  const int8_t* w;  // [S, K, 16]
  const float* scale;  // [N]
  float* y;  // [M, N]
  int64_t M, K, N;
  StripGrid grid;
  WorkUnits units;

  void run_unit(int64_t u) const {
    int64_t m0, m1, s0, s1;
    grid.unit(u, M, m0, m1, s0, s1);
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t col = s * kStrip, cols = std::min(kStrip, N - col);
      float sc[kStrip] = {};  // the strip's scales, zero past column N
      std::copy_n(scale + col, cols, sc);
      strip_pass(x, w + s * K * kStrip, sc, y, K, N, m0, m1, col, cols);
    }
  }
};

// The layer a stacked weight [L, ...] is read at (0 for an unstacked one), or an error naming it.
ffi::Error layer_index(ffi::Buffer<ffi::S32> layer, int64_t num_layers, int64_t* out) {
  if (layer.element_count() != 1) return ffi::Error::InvalidArgument("layer must be a scalar");
  *out = layer.typed_data()[0];
  if (*out < 0 || *out >= num_layers)
    return ffi::Error::InvalidArgument("layer " + std::to_string(*out) + " outside [0, " +
                                       std::to_string(num_layers) + ")");
  return ffi::Error::Success();
}

ffi::Error int8_matmul_impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> w,
                            ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::S32> layer,
                            ffi::Result<ffi::Buffer<ffi::F32>> y) {
  const auto xd = x.dimensions(), wd_all = w.dimensions(), sd = scale.dimensions();
  const auto yd = y->dimensions();
  if (xd.size() != 2) return ffi::Error::InvalidArgument("x must be [M, K], got " + dims_str(xd));
  const size_t lead = wd_all.size() == 4 ? 1 : 0;  // a stacked [L, S, K, 16] is read at `layer`
  if (wd_all.size() != 3 + lead)
    return ffi::Error::InvalidArgument("w must be [S, K, 16] or [L, S, K, 16], got " +
                                       dims_str(wd_all));
  const int64_t wd[3] = {wd_all[lead], wd_all[lead + 1], wd_all[lead + 2]};
  if (wd[1] != xd[1] || wd[2] != kStrip)
    return ffi::Error::InvalidArgument("w must be [(L,) S, K, 16] with K=" + std::to_string(xd[1]) +
                                       ", got " + dims_str(wd_all));
  int64_t li = 0;
  if (auto err = layer_index(layer, lead ? wd_all[0] : 1, &li); err.failure()) return err;
  if (yd.size() != 2 || yd[0] != xd[0] || yd[1] <= (wd[0] - 1) * kStrip || yd[1] > wd[0] * kStrip)
    return ffi::Error::InvalidArgument("y must be [M, N] with 16 * (S - 1) < N <= 16 * S, got y " +
                                       dims_str(yd) + " for w " + dims_str(wd_all));
  if (sd.size() != 1 || sd[0] != yd[1])
    return ffi::Error::InvalidArgument("scale must be [N] with N=" + std::to_string(yd[1]) +
                                       ", got " + dims_str(sd));
  auto job = std::make_shared<Int8Job>();
  job->x = x.typed_data();
  job->w = w.typed_data() + li * wd[0] * wd[1] * kStrip;
  job->scale = scale.typed_data();
  job->y = y->typed_data();
  job->M = xd[0];
  job->K = xd[1];
  job->N = yd[1];
  if (job->M == 0 || job->N == 0) return ffi::Error::Success();
  job->units.count = job->grid.init(job->M, wd[0], std::max<int64_t>(1, pool.num_threads()));
  run_units(pool, job);
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------- GGUF

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// y[0:MR, n] for n in [n0, n1): each output row's blocks dequantized in registers and dotted
// with the MR rows of x (row stride K) as they come. A independent chains per x row keep the
// FMAs' latency covered when the rows are few.
template <class Q, int MR>
void dot_rows(const float* x, const uint8_t* w, float* y, int64_t K, int64_t N, int64_t row_bytes,
              int64_t n0, int64_t n1) {
  constexpr int A = MR <= 2 ? 4 : 2;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* block = w + n * row_bytes;
    __m256 acc[MR][A];
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
      for (int a = 0; a < A; ++a) acc[m][a] = _mm256_setzero_ps();
    for (int64_t k0 = 0; k0 < K; k0 += Q::kElems, block += Q::kBytes) {
      _mm_prefetch(reinterpret_cast<const char*>(block + kPrefetchBytes), _MM_HINT_T0);
#pragma GCC unroll 8
      for (int64_t c = 0; c < Q::kElems / kChunk; ++c) {
        __m256 v[4];
        Q::chunk(block, c, v);
        const float* xc = x + k0 + kChunk * c;
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i)
#pragma GCC unroll 4
          for (int m = 0; m < MR; ++m)
            acc[m][i % A] =
                _mm256_fmadd_ps(_mm256_loadu_ps(xc + m * K + 8 * i), v[i], acc[m][i % A]);
      }
    }
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      __m256 s = acc[m][0];
#pragma GCC unroll 4
      for (int a = 1; a < A; ++a) s = _mm256_add_ps(s, acc[m][a]);
      y[m * N + n] = hsum(s);
    }
  }
}

// 8 x 8 floats: dst[c * ldd + r] = src[r * lds + c]. Rows r and r + 4 share a register from the
// loads on (128-bit halves), so two in-lane 4 x 4 transposes finish it: no cross-lane shuffles.
inline void transpose8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 a[8];
  for (int i = 0; i < 4; ++i)
    for (int h = 0; h < 2; ++h)  // columns 4 h .. 4 h + 3 of rows i and i + 4
      a[4 * h + i] =
          _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(src + i * lds + 4 * h)),
                               _mm_loadu_ps(src + (i + 4) * lds + 4 * h), 1);
  for (int h = 0; h < 8; h += 4) {
    const __m256 t0 = _mm256_unpacklo_ps(a[h], a[h + 1]), t1 = _mm256_unpackhi_ps(a[h], a[h + 1]);
    const __m256 t2 = _mm256_unpacklo_ps(a[h + 2], a[h + 3]);
    const __m256 t3 = _mm256_unpackhi_ps(a[h + 2], a[h + 3]);
    _mm256_storeu_ps(dst + (h + 0) * ldd, _mm256_shuffle_ps(t0, t2, 0x44));
    _mm256_storeu_ps(dst + (h + 1) * ldd, _mm256_shuffle_ps(t0, t2, 0xEE));
    _mm256_storeu_ps(dst + (h + 2) * ldd, _mm256_shuffle_ps(t1, t3, 0x44));
    _mm256_storeu_ps(dst + (h + 3) * ldd, _mm256_shuffle_ps(t1, t3, 0xEE));
  }
}

// strip[k * 16 + j] = W[n0 + j, k] for the 16 output rows from n0 (zero past row N): 32 values
// of each row into a tile, then the tile transposed into the strip.
template <class Q>
void dequantize_strip(const uint8_t* w, int64_t K, int64_t N, int64_t row_bytes, int64_t n0,
                      float* strip) {
  alignas(32) float tile[kStrip][kChunk];
  const int64_t rows = std::min(kStrip, N - n0);
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    const int64_t offset = (k0 / Q::kElems) * Q::kBytes, c = (k0 % Q::kElems) / kChunk;
    for (int64_t j = 0; j < kStrip; ++j) {
      __m256 v[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
      if (j < rows) Q::chunk(w + (n0 + j) * row_bytes + offset, c, v);
      for (int i = 0; i < 4; ++i) _mm256_store_ps(&tile[j][8 * i], v[i]);
    }
    for (int64_t j = 0; j < kStrip; j += 8)
      for (int64_t e = 0; e < kChunk; e += 8)
        transpose8(&tile[j][e], kChunk, strip + (k0 + e) * kStrip + j, kStrip);
  }
}

template <class Q>
struct GgufJob {
  const float* x;  // [M, K]
  const uint8_t* w;  // [N, row_bytes]
  float* y;  // [M, N]
  int64_t M, K, N, row_bytes;
  int64_t rows_per_unit = 1;  // M <= kMaxDotRows: a unit is a run of output rows
  StripGrid grid;  // else: (rows of x, strips) units
  WorkUnits units;

  void run_unit(int64_t u) const {
    if (M <= kMaxDotRows) {
      const int64_t n0 = u * rows_per_unit, n1 = std::min(N, n0 + rows_per_unit);
      switch (M) {
        case 4:
          return dot_rows<Q, 4>(x, w, y, K, N, row_bytes, n0, n1);
        case 3:
          return dot_rows<Q, 3>(x, w, y, K, N, row_bytes, n0, n1);
        case 2:
          return dot_rows<Q, 2>(x, w, y, K, N, row_bytes, n0, n1);
        default:
          return dot_rows<Q, 1>(x, w, y, K, N, row_bytes, n0, n1);
      }
    }
    // The strip is rebuilt for each block of rows of x: cheap against 64 rows of FMAs over it.
    thread_local std::vector<float> strip;
    if (strip.size() < size_t(K * kStrip)) strip.resize(K * kStrip);
    int64_t m0, m1, s0, s1;
    grid.unit(u, M, m0, m1, s0, s1);
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t col = s * kStrip, cols = std::min(kStrip, N - col);
      dequantize_strip<Q>(w, K, N, row_bytes, col, strip.data());
      strip_pass(x, strip.data(), static_cast<const float*>(nullptr), y, K, N, m0, m1, col, cols);
    }
  }
};

template <class Q>
ffi::Error gguf_matmul_run(ffi::ThreadPool& pool, const float* x, const uint8_t* w, float* y,
                           int64_t M, int64_t K, int64_t N, int64_t row_bytes) {
  if (K % Q::kElems != 0)
    return ffi::Error::InvalidArgument("K=" + std::to_string(K) + " is not a multiple of " +
                                       std::to_string(Q::kElems) + " (the block of ggml_type " +
                                       std::to_string(Q::kType) + ")");
  if (row_bytes != K / Q::kElems * Q::kBytes)
    return ffi::Error::InvalidArgument(
        "w rows must be K / " + std::to_string(Q::kElems) + " * " + std::to_string(Q::kBytes) +
        " = " + std::to_string(K / Q::kElems * Q::kBytes) + " bytes for K=" + std::to_string(K) +
        ", got " + std::to_string(row_bytes));
  if (M == 0 || N == 0) return ffi::Error::Success();
  auto job = std::make_shared<GgufJob<Q>>();
  job->x = x;
  job->w = w;
  job->y = y;
  job->M = M;
  job->K = K;
  job->N = N;
  job->row_bytes = row_bytes;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  if (M <= kMaxDotRows) {
    const int64_t want = kRowUnitsPerThread * threads;
    job->rows_per_unit = std::max<int64_t>(1, (N + want - 1) / want);
    job->units.count = (N + job->rows_per_unit - 1) / job->rows_per_unit;
  } else {
    job->units.count = job->grid.init(M, (N + kStrip - 1) / kStrip, threads);
  }
  run_units(pool, job);
  return ffi::Error::Success();
}

ffi::Error gguf_matmul_impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::U8> w,
                            ffi::Buffer<ffi::S32> layer, ffi::Result<ffi::Buffer<ffi::F32>> y,
                            int32_t ggml_type) {
  const auto xd = x.dimensions(), wd_all = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2) return ffi::Error::InvalidArgument("x must be [M, K], got " + dims_str(xd));
  const size_t lead = wd_all.size() == 3 ? 1 : 0;  // a stacked [L, N, row_bytes] is read at `layer`
  if (wd_all.size() != 2 + lead)
    return ffi::Error::InvalidArgument("w must be [N, row_bytes] or [L, N, row_bytes], got " +
                                       dims_str(wd_all));
  const int64_t wd[2] = {wd_all[lead], wd_all[lead + 1]};
  int64_t li = 0;
  if (auto err = layer_index(layer, lead ? wd_all[0] : 1, &li); err.failure()) return err;
  if (yd.size() != 2 || yd[0] != xd[0] || yd[1] != wd[0])
    return ffi::Error::InvalidArgument("y must be [M, N] = (" + std::to_string(xd[0]) + ", " +
                                       std::to_string(wd[0]) + "), got " + dims_str(yd));
  const float* xp = x.typed_data();
  const uint8_t* wp = w.typed_data() + li * wd[0] * wd[1];
  float* yp = y->typed_data();
  const int64_t M = xd[0], K = xd[1], N = wd[0], row_bytes = wd[1];
  switch (ggml_type) {
    case Q8_0::kType:
      return gguf_matmul_run<Q8_0>(pool, xp, wp, yp, M, K, N, row_bytes);
    case Q4_0::kType:
      return gguf_matmul_run<Q4_0>(pool, xp, wp, yp, M, K, N, row_bytes);
    case Q4_1::kType:
      return gguf_matmul_run<Q4_1>(pool, xp, wp, yp, M, K, N, row_bytes);
    case Q4_K::kType:
      return gguf_matmul_run<Q4_K>(pool, xp, wp, yp, M, K, N, row_bytes);
    case Q6_K::kType:
      return gguf_matmul_run<Q6_K>(pool, xp, wp, yp, M, K, N, row_bytes);
    default:
      return ffi::Error::InvalidArgument("ggml_type " + std::to_string(ggml_type) +
                                         " is not one of Q4_0 (2), Q4_1 (3), Q8_0 (8), Q4_K (12), "
                                         "Q6_K (14)");
  }
}

}  // namespace
}  // namespace jaxllm

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxllmInt8Matmul, jaxllm::int8_matmul_impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [M, K]
                                  .Arg<ffi::Buffer<ffi::S8>>()  // w [(L,) S, K, 16]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale [N]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // layer []
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y [M, N]
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxllmGgufMatmul, jaxllm::gguf_matmul_impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [M, K]
                                  .Arg<ffi::Buffer<ffi::U8>>()  // w [(L,) N, row_bytes]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // layer []
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y [M, N]
                                  .Attr<int32_t>("ggml_type"));
