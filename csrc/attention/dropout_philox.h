// Attention dropout keep decisions as a pure function of (seed, row id,
// column): the Philox4x32-10 counter-based generator (Salmon et al., SC'11).
// Shared by the CPU and CUDA kernels (host and device code), so for the same
// seed both backends drop exactly the same weights, and a backward pass
// regenerates its forward's mask in any tile order without storing it.
//
// Counter = (column group, column group >> 32, head_row, head_row >> 32) with
// column group = col / 4: one Philox call serves columns 4g .. 4g + 3, column
// col taking word col % 4. head_row = (n * Hq + h) * L + i names the score row.
// A weight is kept when the word's top 24 bits, read as an integer u, satisfy
// u >= ceil(p * 2^24), i.e. the uniform u / 2^24 in [0, 1) is >= p.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define PYDL_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PYDL_HOST_DEVICE inline
#endif

namespace pydl {
namespace attention_dropout {

// Philox4x32-10's round multipliers and key increments (the vectorized CPU
// rounds in cpu/dropout_keep_simd.h use them too).
constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

// Four 32-bit random words for counter (c0, c1, c2, c3) under key (k0, k1).
PYDL_HOST_DEVICE void philox4x32_10(uint32_t ctr[4], uint32_t k0, uint32_t k1) {
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const uint64_t p0 = uint64_t{kPhiloxM0} * ctr[0];
    const uint64_t p1 = uint64_t{kPhiloxM1} * ctr[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    ctr[0] = hi1 ^ ctr[1] ^ k0;
    ctr[1] = lo1;
    ctr[2] = hi0 ^ ctr[3] ^ k1;
    ctr[3] = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

// The four words for columns 4 * group .. 4 * group + 3 of row head_row.
PYDL_HOST_DEVICE void keep_words(uint32_t words[4], uint64_t seed, uint64_t head_row,
                                 uint64_t group) {
  words[0] = static_cast<uint32_t>(group);
  words[1] = static_cast<uint32_t>(group >> 32);
  words[2] = static_cast<uint32_t>(head_row);
  words[3] = static_cast<uint32_t>(head_row >> 32);
  philox4x32_10(words, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// ceil(p * 2^24): exact in double for p in [0, 1]; 2^24 (p = 1) keeps nothing.
inline uint32_t keep_threshold(double p) {
  return static_cast<uint32_t>(std::ceil(p * 16777216.0));
}

PYDL_HOST_DEVICE bool is_kept(uint32_t word, uint32_t threshold) {
  return (word >> 8) >= threshold;
}

// Whether column col (any column; its word is col % 4) of the group whose
// words are given survives. Selects instead of words[col & 3], which would put
// the array in (slow) local memory on the GPU.
PYDL_HOST_DEVICE bool is_kept(const uint32_t words[4], uint64_t col, uint32_t threshold) {
  const uint32_t lane = static_cast<uint32_t>(col & 3);
  const uint32_t word = lane == 0 ? words[0] : lane == 1 ? words[1] : lane == 2 ? words[2] : words[3];
  return is_kept(word, threshold);
}

}  // namespace attention_dropout
}  // namespace pydl
