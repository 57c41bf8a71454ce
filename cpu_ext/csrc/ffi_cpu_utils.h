// Helpers shared by the CPU FFI handlers: shape text for error messages, and running a job's work
// units on the calling thread plus helpers scheduled on XLA's intra-op thread pool.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace jaxllm {

inline std::string dims_str(xla::ffi::Span<const int64_t> dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + (dims.size() == 1 ? ",)" : ")");
}

// Units 0 .. count - 1, claimed from `next`; `done` counts finished ones.
struct WorkUnits {
  int64_t count = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

// Job: a `WorkUnits units` member and `void run_unit(int64_t) const`. The caller and up to
// num_threads - 1 helpers claim units until none are left; the caller then waits only for units
// that helpers claimed, so this finishes (and is right) whether or not XLA runs the helpers in
// parallel, late, or on the caller's thread. The shared_ptr keeps the job alive for late helpers.
template <typename Job>
void run_units(xla::ffi::ThreadPool& pool, const std::shared_ptr<Job>& job) {
  auto work = [job] {
    WorkUnits& u = job->units;
    for (int64_t i; (i = u.next.fetch_add(1, std::memory_order_relaxed)) < u.count;) {
      job->run_unit(i);
      u.done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers =
      std::min<int64_t>(std::max<int64_t>(1, pool.num_threads()), job->units.count) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));  // a copy each
  work();
  while (job->units.done.load(std::memory_order_acquire) < job->units.count) _mm_pause();
}

}  // namespace jaxllm
