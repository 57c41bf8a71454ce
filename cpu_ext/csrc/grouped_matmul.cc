// XLA FFI handler for XLA:CPU: a grouped (mixture-of-experts) matmul over strip-packed weights.
//
// Exported symbol (registered with jax.ffi.register_ffi_target(..., platform="cpu")):
//   JaxllmGroupedMatmul   operands x [M, K] f32 (rows sorted by group), w_packed [G, S, K, 16]
//                         f32 (group g's W_g [K, N] packed as packed_matmul.cc's strips),
//                         group_sizes [G] s32 (>= 0, sum <= M); result y [M, N] f32 with
//                         16 * (S - 1) < N <= 16 * S.
// Group g owns rows [off_g, off_g + group_sizes[g]) with off_g = sum(group_sizes[:g]); those rows
// of y are x @ W_g. Rows at or past sum(group_sizes) are 0.
//
// Work: units of (a group, a block of up to kRowBlock of its rows, a run of strips), made only for
// groups with rows, so an empty group's weights are never read (no dense all-experts compute).
// Each unit streams its strips through strip_kernel.h's kernel (shared with the packed matmul),
// run by `run_units` (ffi_cpu_utils.h) on the calling thread and helpers of XLA's intra-op pool.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ffi_cpu_utils.h"
#include "strip_kernel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jaxllm {
namespace {

struct RowBlock {
  int64_t g, m0, m1;  // rows [m0, m1) of x and y, all of group g
};

struct GroupedJob {
  const float* x;  // [M, K]
  const float* w;  // [G, S, K, 16]
  float* y;        // [M, N]
  int64_t K, N, S;
  int64_t strips_per_unit, units_per_block;
  std::vector<RowBlock> blocks;  // of the groups with rows, in row order
  WorkUnits units;

  void run_unit(int64_t u) const {
    const RowBlock& b = blocks[u / units_per_block];
    const int64_t s0 = (u % units_per_block) * strips_per_unit;
    const int64_t s1 = std::min(S, s0 + strips_per_unit);
    const float* wg = w + b.g * S * K * kStrip;
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t col = s * kStrip, cols = std::min(kStrip, N - col);
      strip_pass(x, wg + s * K * kStrip, y, K, N, b.m0, b.m1, col, cols);
    }
  }
};

ffi::Error grouped_matmul_impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                               ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::S32> group_sizes,
                               ffi::Result<ffi::Buffer<ffi::F32>> y) {
  const auto xd = x.dimensions(), wd = w.dimensions(), gd = group_sizes.dimensions();
  const auto yd = y->dimensions();
  if (xd.size() != 2) return ffi::Error::InvalidArgument("x must be [M, K], got " + dims_str(xd));
  if (wd.size() != 4 || wd[2] != xd[1] || wd[3] != kStrip)
    return ffi::Error::InvalidArgument(
        "w_packed must be [G, S, K, 16] with K=" + std::to_string(xd[1]) + ", got " + dims_str(wd));
  if (gd.size() != 1 || gd[0] != wd[0])
    return ffi::Error::InvalidArgument("group_sizes must be [G] with G=" + std::to_string(wd[0]) +
                                       " groups of w_packed, got " + dims_str(gd));
  if (yd.size() != 2 || yd[0] != xd[0] || yd[1] <= (wd[1] - 1) * kStrip || yd[1] > wd[1] * kStrip)
    return ffi::Error::InvalidArgument("y must be [M, N] with 16 * (S - 1) < N <= 16 * S, got y " +
                                       dims_str(yd) + " for w_packed " + dims_str(wd));
  const int64_t M = xd[0], G = wd[0];
  const int32_t* sizes = group_sizes.typed_data();
  int64_t total = 0;
  for (int64_t g = 0; g < G; ++g) {
    if (sizes[g] < 0)
      return ffi::Error::InvalidArgument("group_sizes[" + std::to_string(g) +
                                         "]=" + std::to_string(sizes[g]) + " is negative");
    total += sizes[g];
  }
  if (total > M)
    return ffi::Error::InvalidArgument("sum(group_sizes)=" + std::to_string(total) +
                                       " is more than the M=" + std::to_string(M) + " rows of x");

  auto job = std::make_shared<GroupedJob>();
  job->x = x.typed_data();
  job->w = w.typed_data();
  job->y = y->typed_data();
  job->K = xd[1];
  job->N = yd[1];
  job->S = wd[1];
  std::fill(job->y + total * job->N, job->y + M * job->N, 0.0f);  // rows of no group
  for (int64_t g = 0, off = 0; g < G; off += sizes[g++])
    for (int64_t m0 = off; m0 < off + sizes[g]; m0 += kRowBlock)
      job->blocks.push_back({g, m0, std::min<int64_t>(off + sizes[g], m0 + kRowBlock)});
  const int64_t row_blocks = static_cast<int64_t>(job->blocks.size());
  if (row_blocks == 0 || job->S == 0) return ffi::Error::Success();
  run_strip_job(pool, job, row_blocks);
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxllm

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxllmGroupedMatmul, jaxllm::grouped_matmul_impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [M, K]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_packed [G, S, K, 16]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // group_sizes [G]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y [M, N]
);
