// XLA FFI handler for XLA:CPU: y = x @ W with W pre-packed into column strips (AVX2 + FMA, f32).
//
// Exported symbol (registered with jax.ffi.register_ffi_target(..., platform="cpu")):
//   JaxllmPackedMatmul   operands x [M, K] f32, w_packed [S, K, 16] or stacked [L, S, K, 16] f32,
//                        layer [] s32 (which of the L kernels; 0 for an unstacked one); result
//                        y [M, N] f32 with 16 * (S - 1) < N <= 16 * S.
// A stacked kernel is read in place at `layer`: a layer scan passes the whole stack and its layer
// index, so no per-layer slice of the weights is ever copied.
// `w_packed[s, k, j] = W[k, 16 * s + j]` (zero where 16 * s + j >= N): each strip of 16 columns is
// one contiguous K x 64-byte run, so the kernel streams it front to back (the hardware prefetcher
// follows it; W's own [K, N] rows would be read at a stride of 4N bytes, past what it follows).
//
// The strip kernel (4 rows of x against one strip in AVX registers) is strip_kernel.h's, shared
// with the grouped matmul. Work: units of (a block of up to kRowBlock rows of x, a run of strips),
// run by `run_units` (ffi_cpu_utils.h) on the calling thread and helpers of XLA's intra-op pool.
//
// Measured (2-core Zen 3, one thread, W in the last-level cache): 82-93 GFLOP/s at M = 16 and
// 94-97 at M = 2048, of a 100 GFLOP/s FMA loop; XLA:CPU's Eigen dot on two threads: 52-84 at
// M = 16 (cpu_ext/README.md).

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "ffi_cpu_utils.h"
#include "strip_kernel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jaxllm {
namespace {

struct MatmulJob {
  const float* x;  // [M, K]
  const float* w;  // [S, K, 16]
  float* y;        // [M, N]
  int64_t M, K, N, S;
  int64_t strips_per_unit, units_per_block;
  WorkUnits units;

  void run_unit(int64_t u) const {
    const int64_t m0 = (u / units_per_block) * kRowBlock, m1 = std::min(M, m0 + kRowBlock);
    const int64_t s0 = (u % units_per_block) * strips_per_unit;
    const int64_t s1 = std::min(S, s0 + strips_per_unit);
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t col = s * kStrip, cols = std::min(kStrip, N - col);
      strip_pass(x, w + s * K * kStrip, y, K, N, m0, m1, col, cols);
    }
  }
};

ffi::Error packed_matmul_impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::S32> layer,
                              ffi::Result<ffi::Buffer<ffi::F32>> y) {
  const auto xd = x.dimensions(), wd_all = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2) return ffi::Error::InvalidArgument("x must be [M, K], got " + dims_str(xd));
  const bool stacked = wd_all.size() == 4;
  const size_t lead = stacked ? 1 : 0;  // wd[i] = wd_all[lead + i]: [S, K, 16]
  if (wd_all.size() != 3 + lead)
    return ffi::Error::InvalidArgument("w_packed must be [S, K, 16] or [L, S, K, 16], got " +
                                       dims_str(wd_all));
  const int64_t wd[3] = {wd_all[lead], wd_all[lead + 1], wd_all[lead + 2]};
  if (wd[1] != xd[1] || wd[2] != kStrip)
    return ffi::Error::InvalidArgument("w_packed must be [S, K, 16] or [L, S, K, 16] with K=" +
                                       std::to_string(xd[1]) + ", got " + dims_str(wd_all));
  if (yd.size() != 2 || yd[0] != xd[0] || yd[1] <= (wd[0] - 1) * kStrip || yd[1] > wd[0] * kStrip)
    return ffi::Error::InvalidArgument("y must be [M, N] with 16 * (S - 1) < N <= 16 * S, got y " +
                                       dims_str(yd) + " for w_packed " + dims_str(wd_all));
  if (layer.element_count() != 1) return ffi::Error::InvalidArgument("layer must be a scalar");
  const int64_t num_layers = stacked ? wd_all[0] : 1, li = layer.typed_data()[0];
  if (li < 0 || li >= num_layers)
    return ffi::Error::InvalidArgument("layer " + std::to_string(li) + " outside [0, " +
                                       std::to_string(num_layers) + ")");
  auto job = std::make_shared<MatmulJob>();
  job->x = x.typed_data();
  job->w = w.typed_data() + li * wd[0] * wd[1] * kStrip;
  job->y = y->typed_data();
  job->M = xd[0];
  job->K = xd[1];
  job->N = yd[1];
  job->S = wd[0];
  if (job->M == 0) return ffi::Error::Success();
  const int64_t row_blocks = (job->M + kRowBlock - 1) / kRowBlock;
  run_strip_job(pool, job, row_blocks);
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxllm

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxllmPackedMatmul, jaxllm::packed_matmul_impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [M, K]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_packed [(L,) S, K, 16]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // layer []
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y [M, N]
);
