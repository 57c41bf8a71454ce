// XLA FFI handler for XLA:CPU: ragged paged attention (prefill chunks and decodes mixed), float32
// queries over float32 or float8 e4m3 (e4m3fn) pages.
//
// Exported symbol (registered with jax.ffi.register_ffi_target(..., platform="cpu")):
//   JaxllmPagedAttention  operands q [T, Hq, D] f32; k_pages [L, N, Hkv, bs, D] f32, or e4m3fn
//                         (f8e4m3fn or its bytes, u8); v_pages (the same); block_tables [S, P]
//                         s32; kv_lens [S] s32; query_start_loc [S + 1] s32; layer [] s32;
//                         result out [T, Hq, D] f32; attributes sm_scale (f32), sliding_window
//                         (i32, 0 = none), k_scale and v_scale (f32: fp8 pages hold K / k_scale
//                         and V / v_scale).
// The contract of pallas_kernels/reference.py: sequence s owns rows query_start_loc[s] ..
// query_start_loc[s + 1] - 1, the last of them at position kv_lens[s] - 1, and row i attends
// causally to the positions up to its own (within the window). Rows no sequence owns are 0.
// Grouped query heads: query head h reads KV head h / G, G = Hq / Hkv.
//
// One work unit is one (query row, KV head): its G query heads walk the row's visible pages once,
// a page of bs tokens at a time (K and V of one KV head in a page are bs x D contiguous floats),
// with an online softmax in float32: scores of the page, the new running max, rescale, add
// exp * V. A decode row is one unit per KV head; the rows of a prefill chunk re-read their
// sequence's pages from the caches (SmolLM2: 3 KV heads x 250 tokens x 512 B = 375 KiB, within
// L2). Units run through `run_units` (ffi_cpu_utils.h): the caller and helpers of XLA's intra-op
// pool. Keys past a row's position (and before its window) are never read, so stale cache slots
// cannot leak in.
//
// fp8 pages: each unit converts a page's live K and V rows to float32 (times the scale) once into
// per-thread buffers, and its G query heads then run the float32 code on them. The conversion
// widens e4m3 to IEEE half with integer ops, then to float with F16C's vcvtph2ps: exact for every
// finite e4m3 value, subnormals included (tests/kernels/test_kv_fp8.py reads all of them).

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "ffi_cpu_utils.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jaxllm {
namespace {

constexpr int64_t kMaxGroup = 16;  // query heads per KV head
constexpr int64_t kMaxHeadDim = 256;  // D, a multiple of 8
constexpr int64_t kMaxBlock = 128;  // bs

// A thread's float32 copies of fp8 pages: 32-byte aligned (aligned AVX stores), grown on demand,
// freed when the thread exits.
struct PageBuffer {
  float* data = nullptr;
  size_t size = 0;
  float* get(size_t n) {  // n * 4 bytes: a multiple of 32 (D is a multiple of 8)
    if (n > size) {
      std::free(data);
      data = static_cast<float*>(std::aligned_alloc(32, n * sizeof(float)));
      size = data ? n : 0;
    }
    return data;
  }
  ~PageBuffer() { std::free(data); }
};

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The four lane sums of a, b, c, d as one __m128 (a's first).
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);  // per 128-bit half: a b c d partial sums
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// e^x for x <= 0 (x < -87 gives ~1e-38, not 0): x = n ln2 + r, |r| <= ln2 / 2, e^r by a degree-7
// polynomial (the Taylor terms' coefficients refit for float32 on that range), times 2^n from
// the exponent bits. Within 2 ulp of expf.
inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// 8 e4m3fn values at p as floats, each 2^-8 times its value: the sign moves to bit 15 and the
// exponent and mantissa bits to bits 7..13 of an IEEE half, whose exponent bias (15) is 8 more
// than e4m3's (7); subnormals map to half subnormals the same way. (0x7f / 0xff, e4m3fn's NaN,
// become 480: the cache never holds them, writes clamp to +-448.)
inline __m256 e4m3x8_times_2m8(const uint8_t* p) {
  const __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m128i sign = _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x80)), 8);
  const __m128i rest = _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x7f)), 7);
  return _mm256_cvtph_ps(_mm_or_si128(sign, rest));
}

// dst[0:n] = float(src[0:n]) * scale for e4m3fn src; n a multiple of 8.
inline void e4m3_to_f32(const uint8_t* src, int64_t n, float scale, float* dst) {
  const __m256 sv = _mm256_set1_ps(scale * 256.0f);  // exact: undoes the 2^-8 above
  for (int64_t i = 0; i < n; i += 8)
    _mm256_store_ps(dst + i, _mm256_mul_ps(e4m3x8_times_2m8(src + i), sv));
}

struct AttentionJob {
  const float* q;
  const void *k, *v;  // float or uint8_t (e4m3fn) pages
  bool fp8;
  float k_scale, v_scale;  // fp8 pages only
  const int32_t *tables, *lens, *qsl;
  std::vector<int32_t> row_seq;  // [T]: the sequence owning each row, -1 for none
  float* out;
  int64_t T, Hq, D, N, Hkv, bs, S, P, G;
  int64_t layer, window;
  float scale;
  WorkUnits units;

  // sc[t] = scale * q . k_t for t in [t0, t1); kp: the page's [bs, D] keys of this KV head.
  void page_scores(const float* qg, const float* kp, int64_t t0, int64_t t1, float* sc) const {
    const int64_t nv = D / 8;
    int64_t t = t0;
    for (; t + 4 <= t1; t += 4) {  // four tokens: four independent FMA chains
      const float* k0 = kp + t * D;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t c = 0; c < nv; ++c) {
        const __m256 qv = _mm256_loadu_ps(qg + 8 * c);
        a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 8 * c), a0);
        a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + D + 8 * c), a1);
        a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 2 * D + 8 * c), a2);
        a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 3 * D + 8 * c), a3);
      }
      _mm_storeu_ps(sc + t, _mm_mul_ps(hsum4(a0, a1, a2, a3), _mm_set1_ps(scale)));
    }
    for (; t < t1; ++t) {
      __m256 a = _mm256_setzero_ps();
      for (int64_t c = 0; c < nv; ++c)
        a = _mm256_fmadd_ps(_mm256_loadu_ps(qg + 8 * c), _mm256_loadu_ps(kp + t * D + 8 * c), a);
      sc[t] = hsum(a) * scale;
    }
  }

  // acc[0:D] = acc * corr + sum_{t in [t0, t1)} p[t] v_t, 64 columns (8 registers) at a time.
  void accumulate_pv(const float* p, const float* vp, int64_t t0, int64_t t1, float corr,
                     float* acc) const {
    const __m256 cv = _mm256_set1_ps(corr);
    for (int64_t c0 = 0; c0 < D; c0 += 64) {
      const int64_t nc = std::min<int64_t>(8, (D - c0) / 8);
      __m256 a[8];
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j)
        if (j < nc) a[j] = _mm256_mul_ps(_mm256_load_ps(acc + c0 + 8 * j), cv);
      for (int64_t t = t0; t < t1; ++t) {
        const __m256 pv = _mm256_broadcast_ss(p + t);
        const float* vt = vp + t * D + c0;
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j)
          if (j < nc) a[j] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vt + 8 * j), a[j]);
      }
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j)
        if (j < nc) _mm256_store_ps(acc + c0 + 8 * j, a[j]);
    }
  }

  void run_unit(int64_t u) const {
    const int64_t row = u / Hkv, h = u % Hkv, nv = D / 8, s = row_seq[row];
    if (s < 0) return;  // no sequence owns the row: stays 0
    // the row's position + 1: the keys it sees
    const int64_t len = lens[s] - (qsl[s + 1] - qsl[s]) + (row - qsl[s]) + 1;
    const int64_t start = window > 0 ? std::max<int64_t>(0, len - window) : 0;
    float* o = out + (row * Hq + h * G) * D;  // [G, D]
    const float* qs = q + (row * Hq + h * G) * D;  // [G, D]
    alignas(32) float acc[kMaxGroup][kMaxHeadDim];
    float m[kMaxGroup], l[kMaxGroup];
    alignas(32) float sc[kMaxGroup][kMaxBlock + 8];
    for (int64_t g = 0; g < G; ++g) {
      m[g] = -INFINITY;
      l[g] = 0.0f;
      std::fill_n(acc[g], D, 0.0f);
    }
    const int64_t page_stride = Hkv * bs * D;  // elements
    const int64_t elem = fp8 ? 1 : 4;  // bytes per page element
    const char* kl = static_cast<const char*>(k) + (layer * N * page_stride + h * bs * D) * elem;
    const char* vl = static_cast<const char*>(v) + (layer * N * page_stride + h * bs * D) * elem;
    // fp8: this thread's float32 copies of the current page's K and V rows ([bs, D] each)
    static thread_local PageBuffer page_buffer;
    float* const page_f32 = fp8 ? page_buffer.get(2 * bs * D) : nullptr;
    for (int64_t p = start / bs; p * bs < len; ++p) {
      const int64_t blk = tables[s * P + p];
      const char* kb = kl + blk * page_stride * elem;  // [bs, D]
      const char* vb = vl + blk * page_stride * elem;
      if ((p + 1) * bs < len) {  // the next page's K and V: a new 4 KiB run the hardware
        const int64_t next = tables[s * P + p + 1];  // prefetcher would only find after misses
        const char* kn = kl + next * page_stride * elem;
        const char* vn = vl + next * page_stride * elem;
        for (int64_t off = 0; off < bs * D * elem; off += 64) {
          _mm_prefetch(kn + off, _MM_HINT_T0);
          _mm_prefetch(vn + off, _MM_HINT_T0);
        }
      }
      const int64_t t0 = std::max(start, p * bs) - p * bs,
                    t1 = std::min(len, (p + 1) * bs) - p * bs;
      const float* kp = reinterpret_cast<const float*>(kb);
      const float* vp = reinterpret_cast<const float*>(vb);
      if (fp8) {  // rows [t0, t1) to float32 once, for all G query heads
        float* kf = page_f32;
        float* vf = kf + bs * D;
        const auto* k8 = reinterpret_cast<const uint8_t*>(kb);
        const auto* v8 = reinterpret_cast<const uint8_t*>(vb);
        e4m3_to_f32(k8 + t0 * D, (t1 - t0) * D, k_scale, kf + t0 * D);
        e4m3_to_f32(v8 + t0 * D, (t1 - t0) * D, v_scale, vf + t0 * D);
        kp = kf;
        vp = vf;
      }
      for (int64_t g = 0; g < G; ++g) {
        float* sg = sc[g];
        page_scores(qs + g * D, kp, t0, t1, sg);
        float page_max = -INFINITY;
        for (int64_t t = t0; t < t1; ++t) page_max = std::max(page_max, sg[t]);
        const float m_new = std::max(m[g], page_max);
        const float corr = std::exp(m[g] - m_new);  // 0 on the first page (m = -inf)
        m[g] = m_new;
        // probabilities of the page's live tokens, 8 at a time (slots outside [t0, t1) unused)
        const __m256 mv = _mm256_set1_ps(m_new);
        for (int64_t t = t0 & ~int64_t{7}; t < t1; t += 8)
          _mm256_store_ps(sg + t, exp_nonpositive(_mm256_sub_ps(_mm256_load_ps(sg + t), mv)));
        float lsum = 0.0f;
        for (int64_t t = t0; t < t1; ++t) lsum += sg[t];
        l[g] = l[g] * corr + lsum;
        accumulate_pv(sg, vp, t0, t1, corr, acc[g]);
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      const __m256 inv = _mm256_set1_ps(1.0f / l[g]);
      for (int64_t c = 0; c < nv; ++c)
        _mm256_storeu_ps(o + g * D + 8 * c, _mm256_mul_ps(_mm256_load_ps(acc[g] + 8 * c), inv));
    }
  }
};

ffi::Error paged_attention_impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::AnyBuffer k,
                                ffi::AnyBuffer v, ffi::Buffer<ffi::S32> block_tables,
                                ffi::Buffer<ffi::S32> kv_lens,
                                ffi::Buffer<ffi::S32> query_start_loc, ffi::Buffer<ffi::S32> layer,
                                ffi::Result<ffi::Buffer<ffi::F32>> out, float sm_scale,
                                int32_t sliding_window, float k_scale, float v_scale) {
  const auto qd = q.dimensions(), kd = k.dimensions(), bt = block_tables.dimensions();
  const ffi::DataType kv_type = k.element_type();
  const bool fp8 = kv_type == ffi::DataType::F8E4M3FN || kv_type == ffi::DataType::U8;
  if (kv_type != v.element_type() || (kv_type != ffi::DataType::F32 && !fp8))
    return ffi::Error::InvalidArgument(
        "k_pages and v_pages must both be float32 or both float8_e4m3fn (or its bytes, uint8)");
  if (qd.size() != 3)
    return ffi::Error::InvalidArgument("q must be [T, Hq, D], got " + dims_str(qd));
  if (kd.size() != 5 || !(kd == v.dimensions()) || kd[4] != qd[2])
    return ffi::Error::InvalidArgument(
        "k_pages/v_pages must be equal [L, N, Hkv, bs, D] with D=" + std::to_string(qd[2]) +
        ", got " + dims_str(kd) + " and " + dims_str(v.dimensions()));
  if (!(out->dimensions() == qd))
    return ffi::Error::InvalidArgument("out must have q's shape " + dims_str(qd));
  if (bt.size() != 2 || kv_lens.dimensions().size() != 1 || kv_lens.dimensions()[0] != bt[0])
    return ffi::Error::InvalidArgument("block_tables must be [S, P] and kv_lens [S], got " +
                                       dims_str(bt) + " and " + dims_str(kv_lens.dimensions()));
  if (query_start_loc.element_count() != bt[0] + 1)
    return ffi::Error::InvalidArgument("query_start_loc must be [S + 1] with S=" +
                                       std::to_string(bt[0]));
  if (layer.element_count() != 1) return ffi::Error::InvalidArgument("layer must be a scalar");
  const int64_t Hq = qd[1], D = qd[2], Hkv = kd[2], bs = kd[3];
  if (Hkv == 0 || Hq % Hkv != 0 || Hq / Hkv > kMaxGroup || D % 8 != 0 || D > kMaxHeadDim ||
      bs > kMaxBlock)
    return ffi::Error::InvalidArgument(
        "unsupported shape: need Hq a multiple of Hkv with Hq / Hkv <= 16, D a multiple of 8 up "
        "to 256, block size up to 128; got q " +
        dims_str(qd) + ", k_pages " + dims_str(kd));
  const int32_t layer_index = layer.typed_data()[0];
  if (layer_index < 0 || layer_index >= kd[0])
    return ffi::Error::InvalidArgument("layer " + std::to_string(layer_index) + " outside [0, " +
                                       std::to_string(kd[0]) + ")");
  auto job = std::make_shared<AttentionJob>();
  job->q = q.typed_data();
  job->k = k.untyped_data();
  job->v = v.untyped_data();
  job->fp8 = fp8;
  job->k_scale = k_scale;
  job->v_scale = v_scale;
  job->tables = block_tables.typed_data();
  job->lens = kv_lens.typed_data();
  job->qsl = query_start_loc.typed_data();
  job->out = out->typed_data();
  job->T = qd[0];
  job->Hq = Hq;
  job->D = D;
  job->N = kd[1];
  job->Hkv = Hkv;
  job->bs = bs;
  job->S = bt[0];
  job->P = bt[1];
  job->G = Hq / Hkv;
  job->layer = layer_index;
  job->window = sliding_window;
  job->scale = sm_scale;
  const int64_t S = job->S, P = job->P, N = job->N;
  job->row_seq.assign(job->T, -1);
  for (int64_t s = 0; s < S; ++s) {  // rows in order within T, each at a position >= 0; pages exist
    const int64_t a = job->qsl[s], b = job->qsl[s + 1], len = job->lens[s];
    if (a < 0 || b < a || b > job->T || (s > 0 && a < job->qsl[s - 1]))
      return ffi::Error::InvalidArgument(
          "query_start_loc must rise from 0 to at most T=" + std::to_string(job->T) +
          ": query_start_loc[" + std::to_string(s) + ":" + std::to_string(s + 2) +
          "] = " + std::to_string(a) + ", " + std::to_string(b));
    if (b > a && len < b - a)
      return ffi::Error::InvalidArgument("kv_lens[" + std::to_string(s) +
                                         "]=" + std::to_string(len) + " is shorter than its " +
                                         std::to_string(b - a) + " query rows");
    for (int64_t r = a; r < b; ++r) job->row_seq[r] = static_cast<int32_t>(s);
    const int64_t pages = b > a ? (len + bs - 1) / bs : 0;  // a sequence without rows reads none
    if (pages > P)
      return ffi::Error::InvalidArgument(
          "kv_lens[" + std::to_string(s) + "]=" + std::to_string(len) +
          " needs more than P=" + std::to_string(P) + " pages of " + std::to_string(bs));
    for (int64_t p = 0; p < pages; ++p) {
      const int32_t blk = job->tables[s * P + p];
      if (blk < 0 || blk >= N)
        return ffi::Error::InvalidArgument("block_tables[" + std::to_string(s) + ", " +
                                           std::to_string(p) + "]=" + std::to_string(blk) +
                                           " outside [0, " + std::to_string(N) + ")");
    }
  }
  std::fill_n(job->out, job->T * Hq * D, 0.0f);  // rows no unit writes stay 0
  job->units.count = job->T * job->Hkv;
  run_units(pool, job);
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxllm

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxllmPagedAttention, jaxllm::paged_attention_impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q [T, Hq, D]
                                  .Arg<ffi::AnyBuffer>()  // k_pages [L, N, Hkv, bs, D]
                                  .Arg<ffi::AnyBuffer>()  // v_pages
                                  .Arg<ffi::Buffer<ffi::S32>>()  // block_tables [S, P]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // kv_lens [S]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // query_start_loc [S + 1]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // layer []
                                  .Ret<ffi::Buffer<ffi::F32>>()  // out [T, Hq, D]
                                  .Attr<float>("sm_scale")
                                  .Attr<int32_t>("sliding_window")
                                  .Attr<float>("k_scale")
                                  .Attr<float>("v_scale"));
