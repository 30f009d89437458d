// A barrier for the threads of one at::parallel_for region that stays open
// across many short phases (e.g. the time steps of a recurrence), where an
// OpenMP fork/join per phase would cost more than the phase.
//
// The region is split into `participants` ids; at::parallel_for hands each
// thread a chunk of ids, possibly several (fewer threads than ids) or all of
// them (a nested region runs inline). A thread arrives once per phase for its
// whole chunk, so the barrier opens exactly when every id has arrived, however
// the ids were dealt out: it cannot wait for a thread that does not exist.
// That holds for OpenMP's fork/join (every chunk runs at once); with ATen's
// native thread pool, chunks are queued tasks that may wait behind others,
// so callers use this barrier only under AT_PARALLEL_OPENMP.
//
// Each id owns a cache line holding the last phase it reached; a thread
// publishes its ids' phase and polls the others'. Why not one shared counter:
// an arrival counter plus a generation word costs two dependent cross-core
// transfers per phase (measured ~270 ns with two cores here), a flag per id
// one (~140 ns): at batch 1 a time step is ~2 us, so this is 5-7% of it.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace pydl {

class SpinBarrier {
 public:
  explicit SpinBarrier(int64_t participants)
      : participants_(participants), slots_(new Slot[participants]) {}

  // Arrive for ids [id0, id1) at `phase` (1, 2, 3, ... in order, the same
  // sequence on every thread); returns once every id has reached it. Memory
  // written before arriving is visible after returning.
  void arrive_and_wait(int64_t id0, int64_t id1, int64_t phase) {
    for (int64_t i = id0; i < id1; ++i) slots_[i].phase.store(phase, std::memory_order_release);
    for (int64_t j = 0; j < participants_; ++j) {
      if (j == id0) {
        j = id1 - 1;  // our own ids
        continue;
      }
      // Spin briefly (phases are microseconds), then yield: on a busy
      // machine the thread being waited for may not be running. A slot may
      // already be past `phase` (its thread ran ahead into the next phase).
      for (int spins = 0; slots_[j].phase.load(std::memory_order_acquire) < phase; ++spins) {
        if (spins < 4096) {
          pause();
        } else {
          std::this_thread::yield();
        }
      }
    }
  }

 private:
  struct alignas(64) Slot {
    std::atomic<int64_t> phase{0};
  };

  static void pause() {
#if defined(__x86_64__) || defined(_M_X64)
    _mm_pause();
#endif
  }

  const int64_t participants_;
  std::unique_ptr<Slot[]> slots_;
};

}  // namespace pydl
