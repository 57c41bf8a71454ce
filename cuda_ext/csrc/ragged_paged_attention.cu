// XLA FFI handlers for ragged paged attention (see row_attention_kernel.cuh for the single-row
// (decode) kernel, paged_attention_kernels.cuh for the multi-row kernel and the split combine, and
// cuda_ext/attention.py for the Python side that builds `work` and picks block_q / num_splits).
// Tiles of one row (block_q == 1) with G <= kRowKernelMaxG query heads per KV head run the
// single-row kernel; everything else the multi-row kernel. Pages are q's dtype, or float8 e4m3
// (kv_cache_dtype="fp8"; as f8e4m3fn or its bytes, u8), which the CUDA-core kernels read (the
// tensor-core decode kernel takes 16-bit pages only).
//
// Exported symbols (registered with jax.ffi.register_ffi_target(..., platform="CUDA")):
//   JaxllmRaggedPagedAttention      operands q, k_pages, v_pages, block_tables, kv_lens,
//                                   query_start_loc, layer, work
//   JaxllmRaggedPagedAttentionInit  the same plus `out_init` (aliased to the output by the caller,
//                                   so rows the kernel does not own keep their values; tests)
// Results: out [T, Hq, D] (q's dtype), part_o and part_ml (float32 scratch for kv splits).
// Attributes: sm_scale (f32; the caller folds an fp8 cache's k_scale in), sliding_window (i32,
// 0 = none), block_q (i32), num_splits (i32), decode_kernel (i32), out_scale (f32: an fp8
// cache's v_scale, else 1).

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "mma_decode_kernel.cuh"
#include "paged_attention_kernels.cuh"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jaxllm {
namespace {

std::string dims_str(ffi::Span<const int64_t> dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + (dims.size() == 1 ? ",)" : ")");
}

ffi::Error cuda_error(const std::string& what, cudaError_t err) {
  return ffi::Error::Internal(std::string("jaxllm cuda_ext: ") + what + " failed: " +
                              cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

#define JAXLLM_CUDA_CHECK(what, expr)                                     \
  do {                                                                    \
    cudaError_t jaxllm_err_ = (expr);                                     \
    if (jaxllm_err_ != cudaSuccess) return cuda_error(what, jaxllm_err_); \
  } while (0)

template <typename T, int D>
ffi::Error launch_combine(cudaStream_t stream, const AttentionParams& p) {
  const size_t csmem = sizeof(float) * size_t(p.max_rows) * p.num_splits;
  auto combine = combine_splits_kernel<T, D>;
  JAXLLM_CUDA_CHECK("cudaFuncSetAttribute(combine, MaxDynamicSharedMemorySize)",
                    cudaFuncSetAttribute(combine, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(csmem)));
  combine<<<dim3(p.num_tiles, p.Hkv), kThreads, csmem, stream>>>(p);
  JAXLLM_CUDA_CHECK("launch of combine_splits_kernel", cudaGetLastError());
  return ffi::Error::Success();
}

// Launch `kernel` over the (tile, KV head, KV split) grid with `smem` bytes of dynamic shared
// memory (raising the kernel's limit first when it uses any; `max_carveout`: also ask for the
// largest shared-memory carveout), check the launch, then merge the splits with the combine kernel
// when there are several. `name` names the kernel in errors.
template <typename T, int D, typename Kernel>
ffi::Error launch_split_grid(cudaStream_t stream, const AttentionParams& p, Kernel kernel,
                             size_t smem, const std::string& name, bool max_carveout = false) {
  if (smem > 0) {
    JAXLLM_CUDA_CHECK("cudaFuncSetAttribute(" + name + ", MaxDynamicSharedMemorySize)",
                      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem)));
  }
  if (max_carveout) {
    JAXLLM_CUDA_CHECK("cudaFuncSetAttribute(" + name + ", PreferredSharedMemoryCarveout)",
                      cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                           static_cast<int>(cudaSharedmemCarveoutMaxShared)));
  }
  cudaGetLastError();  // clear any stale error so the check below sees only ours
  const dim3 grid(p.num_tiles, p.Hkv, p.num_splits);
  kernel<<<grid, kThreads, smem, stream>>>(p);
  JAXLLM_CUDA_CHECK("launch of " + name, cudaGetLastError());
  return p.num_splits > 1 ? launch_combine<T, D>(stream, p) : ffi::Error::Success();
}

// Single-row tiles (decode): the register-streaming kernel of row_attention_kernel.cuh.
template <typename T, typename KT, int D, int GM>
ffi::Error launch_rows(cudaStream_t stream, const AttentionParams& p) {
  return launch_split_grid<T, D>(stream, p, row_attention_kernel<T, KT, D, GM>, 0,
                                 "row_attention_kernel");
}

// Single-row tiles on the tensor cores (mma_decode_kernel.cuh): 16-bit types, D 64 or 128. Three
// ~70 KiB programs per SM need the largest shared-memory carveout.
template <typename T, int D, int GM>
ffi::Error launch_mma_rows(cudaStream_t stream, const AttentionParams& p) {
  return launch_split_grid<T, D>(stream, p, mma_decode_kernel<T, D, GM>,
                                 mma_decode_smem_bytes<T, D, GM>(), "mma_decode_kernel",
                                 /*max_carveout=*/true);
}

template <typename T, typename KT, int D, int GM>
ffi::Error launch_single_row(cudaStream_t stream, const AttentionParams& p) {
  if constexpr (std::is_same_v<T, KT> && sizeof(T) == 2 && (D == 64 || D == 128)) {
    if (p.decode_kernel != kDecodeKernelCudaCores) return launch_mma_rows<T, D, GM>(stream, p);
  }
  return launch_rows<T, KT, D, GM>(stream, p);
}

template <typename T, typename KT, int D>
ffi::Error launch(cudaStream_t stream, const AttentionParams& p) {
  if (p.block_q == 1 && p.G <= kRowKernelMaxG) {
    if (p.G == 1) return launch_single_row<T, KT, D, 1>(stream, p);
    if (p.G == 2) return launch_single_row<T, KT, D, 2>(stream, p);
    if (p.G <= 4) return launch_single_row<T, KT, D, 4>(stream, p);
    return launch_single_row<T, KT, D, 8>(stream, p);
  }
  int device = 0;
  JAXLLM_CUDA_CHECK("cudaGetDevice", cudaGetDevice(&device));
  int max_smem = 0;
  JAXLLM_CUDA_CHECK(
      "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)",
      cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const size_t smem = attention_smem_bytes<KT, D>(p.max_rows);
  if (smem > static_cast<size_t>(max_smem)) {
    return ffi::Error::InvalidArgument(
        "jaxllm cuda_ext: one program needs " + std::to_string(smem) + " bytes of shared memory (" +
        std::to_string(p.max_rows) + " rows = block_q " + std::to_string(p.block_q) + " x G " +
        std::to_string(p.G) + ", D " + std::to_string(D) + "), more than the device's " +
        std::to_string(max_smem) + "; use fewer query heads per KV head or a smaller block_q");
  }
  return launch_split_grid<T, D>(stream, p, ragged_paged_attention_kernel<T, KT, D>, smem,
                                 "ragged_paged_attention_kernel");
}

template <typename T, typename KT>
ffi::Error dispatch_head_dim(cudaStream_t stream, const AttentionParams& p) {
  switch (p.D) {
    case 64:
      return launch<T, KT, 64>(stream, p);
    case 128:
      return launch<T, KT, 128>(stream, p);
    case 256:
      return launch<T, KT, 256>(stream, p);
    default:
      return ffi::Error::InvalidArgument("jaxllm cuda_ext: head dim D=" + std::to_string(p.D) +
                                         " unsupported; use 64, 128 or 256");
  }
}

ffi::Error ragged_paged_attention_impl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k,
                                       ffi::AnyBuffer v, ffi::Buffer<ffi::S32> block_tables,
                                       ffi::Buffer<ffi::S32> kv_lens, ffi::Buffer<ffi::S32> qsl,
                                       ffi::Buffer<ffi::S32> layer, ffi::Buffer<ffi::S32> work,
                                       ffi::Result<ffi::AnyBuffer> out,
                                       ffi::Result<ffi::Buffer<ffi::F32>> part_o,
                                       ffi::Result<ffi::Buffer<ffi::F32>> part_ml, float sm_scale,
                                       int32_t sliding_window, int32_t block_q, int32_t num_splits,
                                       int32_t decode_kernel, float out_scale) {
  const auto qd = q.dimensions(), kd = k.dimensions(), od = out->dimensions();
  if (qd.size() != 3)
    return ffi::Error::InvalidArgument("q must be [T, Hq, D], got " + dims_str(qd));
  if (kd.size() != 5 || !(kd == v.dimensions()))
    return ffi::Error::InvalidArgument("k_pages/v_pages must be equal [L, N, Hkv, bs, D], got " +
                                       dims_str(kd) + " and " + dims_str(v.dimensions()));
  const bool fp8 =
      k.element_type() == ffi::DataType::F8E4M3FN || k.element_type() == ffi::DataType::U8;
  if ((!fp8 && q.element_type() != k.element_type()) || k.element_type() != v.element_type() ||
      out->element_type() != q.element_type())
    return ffi::Error::InvalidArgument(
        "q and out must share one dtype, and k_pages and v_pages be of it or float8_e4m3fn (or "
        "its bytes, uint8)");
  if (!(od == qd))
    return ffi::Error::InvalidArgument("out shape " + dims_str(od) + " != q shape " + dims_str(qd));
  const auto bt = block_tables.dimensions();
  if (bt.size() != 2)
    return ffi::Error::InvalidArgument("block_tables must be [S, P], got " + dims_str(bt));
  const int64_t S = bt[0];
  if (kv_lens.element_count() != size_t(S) || qsl.element_count() != size_t(S + 1))
    return ffi::Error::InvalidArgument("kv_lens must be [S] and query_start_loc [S + 1] with S=" +
                                       std::to_string(S));
  if (layer.element_count() != 1) return ffi::Error::InvalidArgument("layer must be a scalar");
  const auto wd = work.dimensions();
  if (wd.size() != 2 || wd[1] != 2)
    return ffi::Error::InvalidArgument("work must be [num_tiles, 2], got " + dims_str(wd));

  AttentionParams p{};
  p.q = q.untyped_data();
  p.k = k.untyped_data();
  p.v = v.untyped_data();
  p.block_tables = block_tables.typed_data();
  p.kv_lens = kv_lens.typed_data();
  p.qsl = qsl.typed_data();
  p.layer = layer.typed_data();
  p.work = work.typed_data();
  p.out = out->untyped_data();
  p.part_o = part_o->typed_data();
  p.part_ml = part_ml->typed_data();
  p.T = static_cast<int>(qd[0]);
  p.Hq = static_cast<int>(qd[1]);
  p.D = static_cast<int>(qd[2]);
  p.L = static_cast<int>(kd[0]);
  p.N = static_cast<int>(kd[1]);
  p.Hkv = static_cast<int>(kd[2]);
  p.bs = static_cast<int>(kd[3]);
  p.S = static_cast<int>(S);
  p.P = static_cast<int>(bt[1]);
  p.block_q = block_q;
  p.num_tiles = static_cast<int>(wd[0]);
  p.num_splits = num_splits;
  p.window = sliding_window > 0 ? sliding_window : 0;
  p.scale_log2 = sm_scale * 1.4426950408889634f;
  p.out_scale = out_scale;
  p.decode_kernel = decode_kernel;

  if (kd[4] != qd[2]) return ffi::Error::InvalidArgument("head dim of q and k_pages differ");
  if (p.Hkv < 1 || p.Hq % p.Hkv != 0)
    return ffi::Error::InvalidArgument("Hq=" + std::to_string(p.Hq) +
                                       " must be a multiple of Hkv=" + std::to_string(p.Hkv));
  p.G = p.Hq / p.Hkv;
  if (block_q < 1 || num_splits < 1 || num_splits > 64)
    return ffi::Error::InvalidArgument("block_q must be >= 1 and num_splits in [1, 64]");
  p.max_rows = block_q * p.G;
  if (num_splits > 1) {
    const size_t rows = size_t(p.num_tiles) * p.Hkv * num_splits * p.max_rows;
    if (part_o->element_count() < rows * p.D || part_ml->element_count() < rows * 2)
      return ffi::Error::InvalidArgument("part_o/part_ml scratch too small for num_splits=" +
                                         std::to_string(num_splits));
  }
  if (p.T == 0 || p.S == 0 || p.num_tiles == 0) return ffi::Error::Success();

  switch (q.element_type()) {
    case ffi::DataType::F32:
      return fp8 ? dispatch_head_dim<float, __nv_fp8_e4m3>(stream, p)
                 : dispatch_head_dim<float, float>(stream, p);
    case ffi::DataType::BF16:
      return fp8 ? dispatch_head_dim<__nv_bfloat16, __nv_fp8_e4m3>(stream, p)
                 : dispatch_head_dim<__nv_bfloat16, __nv_bfloat16>(stream, p);
    case ffi::DataType::F16:
      return fp8 ? dispatch_head_dim<__half, __nv_fp8_e4m3>(stream, p)
                 : dispatch_head_dim<__half, __half>(stream, p);
    default:
      return ffi::Error::InvalidArgument(
          "jaxllm cuda_ext: dtype unsupported; use float32, bfloat16 or float16");
  }
}

ffi::Error ragged_paged_attention_init_impl(
    cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
    ffi::Buffer<ffi::S32> block_tables, ffi::Buffer<ffi::S32> kv_lens, ffi::Buffer<ffi::S32> qsl,
    ffi::Buffer<ffi::S32> layer, ffi::Buffer<ffi::S32> work, ffi::AnyBuffer /*out_init*/,
    ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> part_o,
    ffi::Result<ffi::Buffer<ffi::F32>> part_ml, float sm_scale, int32_t sliding_window,
    int32_t block_q, int32_t num_splits, int32_t decode_kernel, float out_scale) {
  return ragged_paged_attention_impl(stream, q, k, v, block_tables, kv_lens, qsl, layer, work, out,
                                     part_o, part_ml, sm_scale, sliding_window, block_q, num_splits,
                                     decode_kernel, out_scale);
}

}  // namespace
}  // namespace jaxllm

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxllmRaggedPagedAttention, jaxllm::ragged_paged_attention_impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()           // q
                                  .Arg<ffi::AnyBuffer>()           // k_pages
                                  .Arg<ffi::AnyBuffer>()           // v_pages
                                  .Arg<ffi::Buffer<ffi::S32>>()    // block_tables
                                  .Arg<ffi::Buffer<ffi::S32>>()    // kv_lens
                                  .Arg<ffi::Buffer<ffi::S32>>()    // query_start_loc
                                  .Arg<ffi::Buffer<ffi::S32>>()    // layer
                                  .Arg<ffi::Buffer<ffi::S32>>()    // work
                                  .Ret<ffi::AnyBuffer>()           // out
                                  .Ret<ffi::Buffer<ffi::F32>>()    // part_o
                                  .Ret<ffi::Buffer<ffi::F32>>()    // part_ml
                                  .Attr<float>("sm_scale")
                                  .Attr<int32_t>("sliding_window")
                                  .Attr<int32_t>("block_q")
                                  .Attr<int32_t>("num_splits")
                                  .Attr<int32_t>("decode_kernel")
                                  .Attr<float>("out_scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxllmRaggedPagedAttentionInit,
                              jaxllm::ragged_paged_attention_init_impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()           // q
                                  .Arg<ffi::AnyBuffer>()           // k_pages
                                  .Arg<ffi::AnyBuffer>()           // v_pages
                                  .Arg<ffi::Buffer<ffi::S32>>()    // block_tables
                                  .Arg<ffi::Buffer<ffi::S32>>()    // kv_lens
                                  .Arg<ffi::Buffer<ffi::S32>>()    // query_start_loc
                                  .Arg<ffi::Buffer<ffi::S32>>()    // layer
                                  .Arg<ffi::Buffer<ffi::S32>>()    // work
                                  .Arg<ffi::AnyBuffer>()           // out_init (aliased to out)
                                  .Ret<ffi::AnyBuffer>()           // out
                                  .Ret<ffi::Buffer<ffi::F32>>()    // part_o
                                  .Ret<ffi::Buffer<ffi::F32>>()    // part_ml
                                  .Attr<float>("sm_scale")
                                  .Attr<int32_t>("sliding_window")
                                  .Attr<int32_t>("block_q")
                                  .Attr<int32_t>("num_splits")
                                  .Attr<int32_t>("decode_kernel")
                                  .Attr<float>("out_scale"));
