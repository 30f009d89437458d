// dropout_keep_row (dropout_hash.h) with the Philox rounds run on 16 (AVX-512)
// or 8 (AVX2) counters at once: the scalar generator took ~65% of a dropout
// training step. Bit-identical to the scalar one (same counters, constants and
// keep rule from attention/dropout_philox.h), so forward and backward, the flash kernel and the
// weights kernel, and every ISA build all agree on which weights survive.
// Included only by *_kernel_isa.cpp files (lives in CPU_CAPABILITY).
#pragma once

#include <algorithm>
#include <cstdint>

#include "attention/cpu/dropout_hash.h"
#include "attention/dropout_philox.h"

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#ifndef CPU_CAPABILITY
#error "dropout_keep_simd.h belongs to a per-ISA translation unit"
#endif

namespace pydl {
namespace attention_cpu {
namespace CPU_CAPABILITY {

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)

#if defined(CPU_CAPABILITY_AVX512)
struct PhiloxLanes {
  using V = __m512i;
  static constexpr int kLanes = 16;
  static V set1(uint32_t x) { return _mm512_set1_epi32(static_cast<int>(x)); }
  static V iota() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
  static V add(V a, V b) { return _mm512_add_epi32(a, b); }
  static V xor3(V a, V b, V c) { return _mm512_xor_si512(_mm512_xor_si512(a, b), c); }
  static void store(uint32_t* p, V a) { _mm512_storeu_si512(p, a); }
  // (hi, lo) halves of the 64-bit products a[i] * m, lane by lane: vpmuludq
  // multiplies the even lanes; the odd ones are shifted down and multiplied too.
  static void mul_wide(V a, V m, V& hi, V& lo) {
    const V even = _mm512_mul_epu32(a, m);
    const V odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
    hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
    lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  }
};
#else
struct PhiloxLanes {
  using V = __m256i;
  static constexpr int kLanes = 8;
  static V set1(uint32_t x) { return _mm256_set1_epi32(static_cast<int>(x)); }
  static V iota() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
  static V add(V a, V b) { return _mm256_add_epi32(a, b); }
  static V xor3(V a, V b, V c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
  static void store(uint32_t* p, V a) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), a); }
  static void mul_wide(V a, V m, V& hi, V& lo) {
    const V even = _mm256_mul_epu32(a, m);
    const V odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  }
};
#endif

// The four Philox words of groups g0 .. g0 + kLanes - 1 (row head_row), as
// attention_dropout::keep_words gives them one group at a time: words[w][j]
// for column 4 (g0 + j) + w.
inline void philox_words(uint32_t words[4][PhiloxLanes::kLanes], uint64_t seed, uint64_t head_row,
                         uint64_t g0) {
  using namespace attention_dropout;
  using P = PhiloxLanes;
  P::V c0 = P::add(P::set1(static_cast<uint32_t>(g0)), P::iota());
  P::V c1 = P::set1(static_cast<uint32_t>(g0 >> 32));
  P::V c2 = P::set1(static_cast<uint32_t>(head_row));
  P::V c3 = P::set1(static_cast<uint32_t>(head_row >> 32));
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const P::V m0 = P::set1(kPhiloxM0), m1 = P::set1(kPhiloxM1);
  for (int round = 0; round < kPhiloxRounds; ++round) {
    P::V hi0, lo0, hi1, lo1;
    P::mul_wide(c0, m0, hi0, lo0);
    P::mul_wide(c2, m1, hi1, lo1);
    c0 = P::xor3(hi1, c1, P::set1(k0));
    c1 = lo1;
    c2 = P::xor3(hi0, c3, P::set1(k1));
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  P::store(words[0], c0);
  P::store(words[1], c1);
  P::store(words[2], c2);
  P::store(words[3], c3);
}

// keep[c] for c in [0, count): 1 / (1 - p) where weight (head_row, col0 + c)
// survives, else 0 — exactly what dropout_keep_row writes.
template <typename T>
void dropout_keep_row_simd(T* keep, int64_t count, uint64_t seed, uint64_t head_row,
                           int64_t col0, double p) {
  constexpr int64_t kCols = 4 * PhiloxLanes::kLanes;
  // Up to the first column of a group, and any tail, the scalar generator.
  const int64_t lead = std::min<int64_t>(count, (4 - (col0 & 3)) & 3);
  if (lead > 0) dropout_keep_row(keep, lead, seed, head_row, col0, p);
  const T kept = p >= 1.0 ? T(0) : static_cast<T>(1.0 / (1.0 - p));
  const uint32_t threshold = attention_dropout::keep_threshold(p);
  int64_t c = lead;
  uint32_t words[4][PhiloxLanes::kLanes];
  for (; c + kCols <= count; c += kCols) {
    const uint64_t g0 = static_cast<uint64_t>(col0 + c) >> 2;
    if ((g0 & 0xFFFFFFFFu) + PhiloxLanes::kLanes - 1 > 0xFFFFFFFFu) break;  // word 0 would carry
    philox_words(words, seed, head_row, g0);
    T* out = keep + c;
    for (int j = 0; j < PhiloxLanes::kLanes; ++j) {
      for (int w = 0; w < 4; ++w) {
        out[4 * j + w] = attention_dropout::is_kept(words[w][j], threshold) ? kept : T(0);
      }
    }
  }
  if (c < count) dropout_keep_row(keep + c, count - c, seed, head_row, col0 + c, p);
}

#else

template <typename T>
void dropout_keep_row_simd(T* keep, int64_t count, uint64_t seed, uint64_t head_row,
                           int64_t col0, double p) {
  dropout_keep_row(keep, count, seed, head_row, col0, p);
}

#endif

}  // namespace CPU_CAPABILITY
}  // namespace attention_cpu
}  // namespace pydl
