// Dropout keep decisions as a pure function of (seed, row id, column): the
// Philox4x32-10 counter-based generator (Salmon et al., SC'11), so the
// backward regenerates exactly the forward's mask without storing it, in any
// tile order and on any thread. The seed is drawn from torch's generator by
// the Python entry, so torch.manual_seed reproduces a run.
#pragma once

#include <cstdint>

namespace pydl {
namespace attention_cpu {

// Four 32-bit random words for counter (c0, c1, c2, c3) under key (k0, k1).
inline void philox4x32_10(uint32_t ctr[4], uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t{0xD2511F53u} * ctr[0];
    const uint64_t p1 = uint64_t{0xCD9E8D57u} * ctr[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    ctr[0] = hi1 ^ ctr[1] ^ k0;
    ctr[1] = lo1;
    ctr[2] = hi0 ^ ctr[3] ^ k1;
    ctr[3] = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// keep[c] = 1 / (1 - p) where weight (head_row, col0 + c) survives, else 0,
// for c in [0, count). One Philox call serves four adjacent columns (4g ..
// 4g + 3), whatever col0 is. head_row = (n * Hq + h) * L + i identifies the row.
template <typename T>
inline void dropout_keep_row(T* keep, int64_t count, uint64_t seed, uint64_t head_row,
                             int64_t col0, double p) {
  const T kept = p >= 1.0 ? T(0) : static_cast<T>(1.0 / (1.0 - p));
  // keep when a uniform in [0, 1) (24 random bits) is >= p
  const double threshold = p * 16777216.0;
  uint32_t words[4];
  for (int64_t c = 0; c < count; ++c) {
    const uint64_t col = static_cast<uint64_t>(col0 + c);
    if (c == 0 || (col & 3) == 0) {
      const uint64_t group = col >> 2;
      words[0] = static_cast<uint32_t>(group);
      words[1] = static_cast<uint32_t>(group >> 32);
      words[2] = static_cast<uint32_t>(head_row);
      words[3] = static_cast<uint32_t>(head_row >> 32);
      philox4x32_10(words, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    }
    keep[c] = static_cast<double>(words[col & 3] >> 8) >= threshold ? kept : T(0);
  }
}

}  // namespace attention_cpu
}  // namespace pydl
