// Device helpers shared by the paged-attention kernels: element conversions over 16-byte and
// 8-byte vectors, cp.async (sm_80+), warp reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
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

// Load N elements of T (8 or 16 bytes, aligned) from global or shared memory as floats.
template <typename T, int N>
__device__ __forceinline__ void load_as_float(const T* p, float (&out)[N]) {
  constexpr int kBytes = N * static_cast<int>(sizeof(T));
  static_assert(kBytes == 8 || kBytes == 16, "vector loads are 8 or 16 bytes");
  constexpr int kPer = Words<T>::kPerWord;
  if constexpr (kBytes == 16) {
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
