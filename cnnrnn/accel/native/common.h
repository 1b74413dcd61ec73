// Shared by the native kernels (kernels.cc, recurrent.cc, matmul.cc): the vector abstraction
// (simd.h), huge-page advice, and the loops that spread work over XLA's intra-op thread pool.

#ifndef CNNRNN_NN_NATIVE_COMMON_H_
#define CNNRNN_NN_NATIVE_COMMON_H_

#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <utility>

#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace cnnrnn {

namespace ffi = xla::ffi;

inline int64_t NumWorkers(ffi::ThreadPool& pool) {
  return std::max<int64_t>(1, pool.num_threads());
}

// Asks Linux to back the buffers with transparent huge pages when they are first touched.
// XLA:CPU allocates a step's temporaries afresh (malloc mmaps large buffers), so a kernel
// that fills large outputs would otherwise take a page fault every 4 KB (~1 us each). The
// advice covers the whole 2 MB pages inside the span from the lowest to the highest buffer
// (a call's outputs are usually slices of one XLA allocation, so the span also covers what
// lies between them), or inside each buffer alone where the span is mostly other memory.
// It is advice: contents never change, only speed, and nothing at all happens where
// transparent huge pages are off.
inline void AdviseHugePagesIn(uintptr_t begin, uintptr_t end) {
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  begin = (begin + kHuge - 1) & ~(kHuge - 1);
  end &= ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

template <typename... Buffers>
void AdviseHugePages(Buffers&... buffers) {
  const std::pair<uintptr_t, size_t> spans[] = {
      {reinterpret_cast<uintptr_t>(buffers->untyped_data()), buffers->size_bytes()}...};
  uintptr_t begin = UINTPTR_MAX, end = 0;
  size_t total = 0;
  for (const auto& [data, bytes] : spans) {
    begin = std::min(begin, data);
    end = std::max(end, data + bytes);
    total += bytes;
  }
  if (end - begin <= total + (uintptr_t{4} << 20)) {
    AdviseHugePagesIn(begin, end);
  } else {
    for (const auto& [data, bytes] : spans) AdviseHugePagesIn(data, data + bytes);
  }
}

// Calls fn(worker, step, i) for every step in [0, steps) and i in [0, n); every call of a
// step starts after all calls of the previous step have returned (a barrier between steps).
//
// The work runs on the calling thread and up to num_workers - 1 tasks of XLA's pool. Items
// are handed out in order through an atomic counter and a worker waits only for items that
// other running workers have already claimed, so the caller finishes the work alone if the
// pool is busy (no deadlock whatever the pool does); it returns when all are done. Which
// worker runs an item varies, but each item writes its own outputs, so results do not.
template <typename F>
void ParallelSteps(ffi::ThreadPool& pool, int64_t num_workers, int64_t steps, int64_t n,
                   const F& fn) {
  num_workers = std::max<int64_t>(1, std::min(num_workers, n));
  if (num_workers == 1) {
    for (int64_t s = 0; s < steps; ++s)
      for (int64_t i = 0; i < n; ++i) fn(0, s, i);
    return;
  }
  struct State {
    alignas(64) std::atomic<int64_t> next{0};
    alignas(64) std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  const int64_t total = steps * n;
  auto work = [state, total, n, &fn](int64_t worker) {
    for (int64_t k; (k = state->next.fetch_add(1, std::memory_order_relaxed)) < total;) {
      const int64_t s = k / n;
      for (int64_t spins = 0; state->done.load(std::memory_order_acquire) < s * n; ++spins) {
        // The items of the previous step are running on other workers: wait for them, and
        // give the core away if that takes long (an oversubscribed machine).
        if (spins < (1 << 14)) {
          _mm_pause();
        } else {
          std::this_thread::yield();
        }
      }
      fn(worker, s, k - s * n);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  // A task that starts after all items are taken touches only `state`, which it owns.
  for (int64_t t = 1; t < num_workers; ++t) pool.Schedule([work, t]() { work(t); });
  work(0);
  while (state->done.load(std::memory_order_acquire) < total) _mm_pause();
}

// Calls fn(worker, i) for every i in [0, n), in parallel as ParallelSteps.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t num_workers, int64_t n, const F& fn) {
  ParallelSteps(pool, num_workers, 1, n,
                [&fn](int64_t worker, int64_t, int64_t i) { fn(worker, i); });
}

}  // namespace cnnrnn

#endif  // CNNRNN_NN_NATIVE_COMMON_H_
