// Dropout keep factors for a run of columns of one score row, on the CPU;
// the decisions themselves come from attention/dropout_philox.h, which the
// CUDA kernels share, so both backends drop the same weights for one seed.
#pragma once

#include <cstdint>

#include "attention/dropout_philox.h"

namespace pydl {
namespace attention_cpu {

// keep[c] = 1 / (1 - p) where weight (head_row, col0 + c) survives, else 0,
// for c in [0, count), whatever col0 is.
template <typename T>
inline void dropout_keep_row(T* keep, int64_t count, uint64_t seed, uint64_t head_row,
                             int64_t col0, double p) {
  const T kept = p >= 1.0 ? T(0) : static_cast<T>(1.0 / (1.0 - p));
  const uint32_t threshold = attention_dropout::keep_threshold(p);
  uint32_t words[4];
  for (int64_t c = 0; c < count; ++c) {
    const uint64_t col = static_cast<uint64_t>(col0 + c);
    if (c == 0 || (col & 3) == 0) attention_dropout::keep_words(words, seed, head_row, col >> 2);
    keep[c] = attention_dropout::is_kept(words[col & 3], threshold) ? kept : T(0);
  }
}

}  // namespace attention_cpu
}  // namespace pydl
