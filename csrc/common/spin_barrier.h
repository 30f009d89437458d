// A barrier for the threads of one at::parallel_for region that stays open
// across many short phases (e.g. the time steps of a recurrence), where an
// OpenMP fork/join per phase would cost more than the phase.
//
// The region is split into `participants` ids; at::parallel_for hands each
// thread a chunk of ids, possibly several (fewer threads than ids) or all of
// them (a nested region runs inline). A thread arrives once per phase for its
// whole chunk, so the barrier opens exactly when every id has arrived, however
// the ids were dealt out: it cannot wait for a thread that does not exist.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace pydl {

class SpinBarrier {
 public:
  explicit SpinBarrier(int64_t participants) : participants_(participants) {}

  // Arrive for `ids` participants; returns once all participants have
  // arrived. Memory written before arriving is visible after returning.
  void arrive_and_wait(int64_t ids) {
    const int64_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(ids, std::memory_order_acq_rel) + ids == participants_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    // Spin briefly (phases are microseconds), then yield: on a busy machine
    // the thread being waited for may not be running.
    for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (spins < 4096) {
        pause();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  static void pause() {
#if defined(__x86_64__) || defined(_M_X64)
    _mm_pause();
#endif
  }

  const int64_t participants_;
  std::atomic<int64_t> arrived_{0};
  std::atomic<int64_t> generation_{0};
};

}  // namespace pydl
