// Device helpers shared by the paged-attention kernels: element conversions over 16-, 8- and
// 4-byte vectors, cp.async (sm_80+), warp reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace jaxllm {

constexpr int kThreads = 128;  // threads per program (4 warps)
constexpr int kWarps = kThreads / 32;

// Unpacking 32-bit words into floats, per element type.
template <typename T>
struct Words;

template <>
struct Words<float> {
  static constexpr int kPerWord = 1;
  __device__ __forceinline__ static void unpack(uint32_t w, float* out) {
    out[0] = __uint_as_float(w);
  }
  __device__ __forceinline__ static uint32_t pack(const float* in) {
    return __float_as_uint(in[0]);
  }
};

template <>
struct Words<__nv_bfloat16> {
  static constexpr int kPerWord = 2;
  __device__ __forceinline__ static void unpack(uint32_t w, float* out) {
    out[0] = __uint_as_float(w << 16);  // bf16 is the top half of an f32
    out[1] = __uint_as_float(w & 0xffff0000u);
  }
  __device__ __forceinline__ static uint32_t pack(const float* in) {
    const uint32_t lo = __bfloat16_as_ushort(__float2bfloat16_rn(in[0]));
    const uint32_t hi = __bfloat16_as_ushort(__float2bfloat16_rn(in[1]));
    return lo | (hi << 16);
  }
};

template <>
struct Words<__half> {
  static constexpr int kPerWord = 2;
  __device__ __forceinline__ static void unpack(uint32_t w, float* out) {
    out[0] = __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu)));
    out[1] = __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16)));
  }
  __device__ __forceinline__ static uint32_t pack(const float* in) {
    const uint32_t lo = __half_as_ushort(__float2half_rn(in[0]));
    const uint32_t hi = __half_as_ushort(__float2half_rn(in[1]));
    return lo | (hi << 16);
  }
};

// float8 e4m3 (fn) KV pages (kv_cache_dtype="fp8"): four per word, read only (never stored).
// Every e4m3 value is a half, so the conversion (pairs through the cvt intrinsics: one
// instruction on sm_89+) is exact.
template <>
struct Words<__nv_fp8_e4m3> {
  static constexpr int kPerWord = 4;
  __device__ __forceinline__ static void unpack(uint32_t w, float* out) {
    const __half2_raw lo =
        __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w & 0xffffu), __NV_E4M3);
    const __half2_raw hi =
        __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w >> 16), __NV_E4M3);
    const float2 a = __half22float2(__half2(lo)), b = __half22float2(__half2(hi));
    out[0] = a.x;
    out[1] = a.y;
    out[2] = b.x;
    out[3] = b.y;
  }
};

// Load N elements of T (4, 8 or 16 bytes, aligned) from global or shared memory as floats.
template <typename T, int N>
__device__ __forceinline__ void load_as_float(const T* p, float (&out)[N]) {
  constexpr int kBytes = N * static_cast<int>(sizeof(T));
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "vector loads are 4, 8 or 16 bytes");
  constexpr int kPer = Words<T>::kPerWord;
  if constexpr (kBytes == 4) {
    Words<T>::unpack(*reinterpret_cast<const uint32_t*>(p), out);
  } else if constexpr (kBytes == 16) {
    const uint4 r = *reinterpret_cast<const uint4*>(p);
    Words<T>::unpack(r.x, out + 0 * kPer);
    Words<T>::unpack(r.y, out + 1 * kPer);
    Words<T>::unpack(r.z, out + 2 * kPer);
    Words<T>::unpack(r.w, out + 3 * kPer);
  } else {
    const uint2 r = *reinterpret_cast<const uint2*>(p);
    Words<T>::unpack(r.x, out + 0 * kPer);
    Words<T>::unpack(r.y, out + 1 * kPer);
  }
}

// Load N elements of T (a multiple of 16 bytes, 16-byte aligned) as floats, 16 bytes at a time.
template <typename T, int N>
__device__ __forceinline__ void load_row_as_float(const T* p, float (&out)[N]) {
  constexpr int kPer16 = 16 / static_cast<int>(sizeof(T));
  static_assert(N % kPer16 == 0, "whole 16-byte vectors");
#pragma unroll
  for (int i = 0; i < N / kPer16; ++i) {
    float f[kPer16];
    load_as_float<T, kPer16>(p + i * kPer16, f);
#pragma unroll
    for (int e = 0; e < kPer16; ++e) out[i * kPer16 + e] = f[e];
  }
}

// Store N floats as N elements of T (8 or 16 bytes, aligned).
template <typename T, int N>
__device__ __forceinline__ void store_from_float(T* p, const float (&in)[N]) {
  constexpr int kBytes = N * static_cast<int>(sizeof(T));
  static_assert(kBytes == 8 || kBytes == 16, "vector stores are 8 or 16 bytes");
  constexpr int kPer = Words<T>::kPerWord;
  if constexpr (kBytes == 16) {
    uint4 r;
    r.x = Words<T>::pack(in + 0 * kPer);
    r.y = Words<T>::pack(in + 1 * kPer);
    r.z = Words<T>::pack(in + 2 * kPer);
    r.w = Words<T>::pack(in + 3 * kPer);
    *reinterpret_cast<uint4*>(p) = r;
  } else {
    uint2 r;
    r.x = Words<T>::pack(in + 0 * kPer);
    r.y = Words<T>::pack(in + 1 * kPer);
    *reinterpret_cast<uint2*>(p) = r;
  }
}

// 16-byte global -> shared copy that does not wait (cp.async, L2 only).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

}  // namespace jaxllm
