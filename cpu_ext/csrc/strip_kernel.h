// The float32 strip kernel shared by the packed and grouped matmuls (AVX2 + FMA): rows of y = x @ W
// for one strip of W packed in 16-column strips, `strip[k, j] = W[k, 16 * s + j]` (one contiguous
// K x 64-byte run, streamed front to back).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <memory>

#include "ffi_cpu_utils.h"

namespace jaxllm {

inline constexpr int64_t kStrip = 16;  // columns per packed strip: two 8-float AVX registers

// y[0:MR, 0:16] = x[0:MR, 0:K] @ strip (w: [K, 16]); ldx, ldy: row strides in floats.
template <int MR>
inline void strip_kernel(const float* x, int64_t ldx, const float* w, int64_t K, float* y,
                         int64_t ldy) {
  __m256 acc[MR][2];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k, w += kStrip) {
    const __m256 b0 = _mm256_loadu_ps(w), b1 = _mm256_loadu_ps(w + 8);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(x + i * ldx + k);
      acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
    _mm256_storeu_ps(y + i * ldy, acc[i][0]);
    _mm256_storeu_ps(y + i * ldy + 8, acc[i][1]);
  }
}

// Rows [m, m + MR) of y for one strip: full columns go straight to y, a partial last strip
// (cols < 16) through a scratch tile.
template <int MR>
inline void strip_rows(const float* x, const float* w, float* y, int64_t K, int64_t N, int64_t m,
                       int64_t col, int64_t cols) {
  if (cols == kStrip) {
    strip_kernel<MR>(x + m * K, K, w, K, y + m * N + col, N);
    return;
  }
  float tile[MR * kStrip];
  strip_kernel<MR>(x + m * K, K, w, K, tile, kStrip);
  for (int i = 0; i < MR; ++i) std::copy_n(tile + i * kStrip, cols, y + (m + i) * N + col);
}

// Rows [m0, m1) of y (x [M, K], y [M, N]) for the strip w [K, 16] of columns [col, col + cols):
// 4 rows at a time, then 3, 2 or 1.
inline void strip_pass(const float* x, const float* w, float* y, int64_t K, int64_t N, int64_t m0,
                       int64_t m1, int64_t col, int64_t cols) {
  int64_t m = m0;
  for (; m + 4 <= m1; m += 4) strip_rows<4>(x, w, y, K, N, m, col, cols);
  switch (m1 - m) {
    case 3:
      strip_rows<3>(x, w, y, K, N, m, col, cols);
      break;
    case 2:
      strip_rows<2>(x, w, y, K, N, m, col, cols);
      break;
    case 1:
      strip_rows<1>(x, w, y, K, N, m, col, cols);
      break;
    default:
      break;
  }
}

// Rows of x per work unit (64 x K floats stay in L2) and work units wanted per pool thread.
inline constexpr int64_t kRowBlock = 64;
inline constexpr int64_t kUnitsPerThread = 4;

// How `row_blocks` blocks of rows times S strips split into work units, each a run of
// `strips_per_unit` strips of one row block: about kUnitsPerThread units per thread, whole strips.
struct StripSplit {
  int64_t units_per_block, strips_per_unit;
};
inline StripSplit split_strips(int64_t row_blocks, int64_t S, int64_t threads) {
  const int64_t want = (kUnitsPerThread * threads + row_blocks - 1) / row_blocks;
  const int64_t units = std::clamp<int64_t>(want, 1, S);
  const int64_t strips = (S + units - 1) / units;
  return {(S + strips - 1) / strips, strips};
}

// Split a job of `row_blocks` row blocks over its S strips (`split_strips`) and run its units on
// the pool. Job: `run_units`' job with `S`, `units_per_block` and `strips_per_unit` members.
template <typename Job>
void run_strip_job(xla::ffi::ThreadPool& pool, const std::shared_ptr<Job>& job,
                   int64_t row_blocks) {
  const StripSplit split =
      split_strips(row_blocks, job->S, std::max<int64_t>(1, pool.num_threads()));
  job->units_per_block = split.units_per_block;
  job->strips_per_unit = split.strips_per_unit;
  job->units.count = row_blocks * job->units_per_block;
  run_units(pool, job);
}

}  // namespace jaxllm
