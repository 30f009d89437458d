// Vectorized row operations of the attention softmax (score tile rows):
// masking, max, exp-and-sum, scaling. Included only by
// attention_cpu_kernel_isa.cpp, once per ISA build: everything lives in that
// build's CPU_CAPABILITY namespace.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#ifndef CPU_CAPABILITY
#error "softmax_rows.h belongs to a per-ISA translation unit"
#endif

namespace pydl {
namespace attention_cpu {
namespace CPU_CAPABILITY {

template <typename T>
using Vec = at::vec::Vectorized<T>;


template <typename T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

#if defined(CPU_CAPABILITY_AVX512)
// exp(x) = 2^n * 2^f, n = round(x log2 e), |f| <= 1/2; 2^f by its Taylor
// series to degree 6 (relative error < 2e-7) and 2^n by vscalefps: 13
// instructions against exp_u20's ~19, on the softmax's hottest line. Results
// below 2^-125 (masked scores are -inf) are exactly 0, so hidden keys add
// nothing; the clamp keeps vscalefps from ever producing a subnormal, which
// costs a microcode assist (it made diagonal tiles, full of -inf, 3x slower).
inline Vec<float> exp_avx512(const Vec<float>& x) {
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  // max_ps returns its second operand when either is NaN: NaN stays NaN.
  const __m512 tc = _mm512_max_ps(_mm512_set1_ps(-125.f), t);
  const __m512 n = _mm512_roundscale_ps(tc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(tc, n);
  __m512 p = _mm512_set1_ps(1.5403530393381606e-4f);  // ln2^k / k!, k = 6 .. 0
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  const __m512 r = _mm512_scalef_ps(p, n);
  const __mmask16 tiny = _mm512_cmp_ps_mask(t, _mm512_set1_ps(-125.f), _CMP_LT_OQ);
  return _mm512_mask_mov_ps(r, tiny, _mm512_setzero_ps());
}
#endif

// float: a fast exp (AVX-512 above; elsewhere ATen's 20-ulp one), far inside
// float32's tolerance after the softmax sums; double: the exact one. NaN in,
// NaN out (exp_u20 clamps NaN to a finite argument): a NaN or +inf score
// must make its row NaN, as in torch, never a silently finite result.
template <typename T>
inline Vec<T> vexp(const Vec<T>& x) {
  if constexpr (std::is_same_v<T, float>) {
#if defined(CPU_CAPABILITY_AVX512)
    return exp_avx512(x);
#else
    return Vec<float>::blendv(x.exp_u20(), x, x != x);
#endif
  } else {
    return x.exp();
  }
}

// True when the mask hides every entry of the tile: the tile is skipped.
template <typename T>
bool tile_all_masked(const T* m, int64_t row_stride, int64_t col_stride, int64_t rows,
                     int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      if (m[r * row_stride + c * col_stride] != neg_inf<T>()) return false;
    }
  }
  return true;
}

// row[0, nk) holds scale * q.k: add the mask row and hide columns >= visible.
template <typename T>
void mask_row(T* row, int64_t nk, int64_t visible, const T* mrow, int64_t mcol) {
  using V = Vec<T>;
  if (mrow != nullptr) {
    if (mcol == 1) {
      int64_t c = 0;
      for (; c + V::size() <= visible; c += V::size()) {
        (V::loadu(row + c) + V::loadu(mrow + c)).store(row + c);
      }
      for (; c < visible; ++c) row[c] += mrow[c];
    } else {
      for (int64_t c = 0; c < visible; ++c) row[c] += mrow[c * mcol];
    }
  }
  for (int64_t c = visible; c < nk; ++c) row[c] = neg_inf<T>();
}

// max that returns NaN when either is NaN (std::max drops a NaN second
// argument): a NaN score makes its row's max, and so the row, NaN.
template <typename T>
inline T nan_max(T a, T b) {
  return std::isnan(a) || a > b ? a : b;
}

// The lanes' max (NaN if any lane is NaN) and sum. On AVX-512 float a
// shuffle tree: a score row of 128 keys is only 8 vectors, and a scalar pass
// over 16 lanes (the sum a 16-add dependency chain) cost about as much.
template <typename T>
inline T horizontal_max(const Vec<T>& acc) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    const __m512 v = acc;
    if (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) != 0) return std::numeric_limits<T>::quiet_NaN();
    return _mm512_reduce_max_ps(v);
  }
#endif
  T lanes[Vec<T>::size()];
  acc.store(lanes);
  T best = lanes[0];
  for (int64_t w = 1; w < Vec<T>::size(); ++w) best = nan_max(best, lanes[w]);
  return best;
}

template <typename T>
inline T horizontal_sum(const Vec<T>& acc) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) return _mm512_reduce_add_ps(acc);
#endif
  T lanes[Vec<T>::size()];
  acc.store(lanes);
  T sum = T(0);
  for (int64_t w = 0; w < Vec<T>::size(); ++w) sum += lanes[w];
  return sum;
}

// Four independent accumulators (at::vec::maximum propagates NaN): one chain
// would wait on each max's latency.
template <typename T>
T row_max(const T* row, int64_t n) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  V a0(neg_inf<T>()), a1 = a0, a2 = a0, a3 = a0;
  int64_t c = 0;
  for (; c + 4 * W <= n; c += 4 * W) {
    a0 = at::vec::maximum(a0, V::loadu(row + c));
    a1 = at::vec::maximum(a1, V::loadu(row + c + W));
    a2 = at::vec::maximum(a2, V::loadu(row + c + 2 * W));
    a3 = at::vec::maximum(a3, V::loadu(row + c + 3 * W));
  }
  V acc = at::vec::maximum(at::vec::maximum(a0, a1), at::vec::maximum(a2, a3));
  for (; c + W <= n; c += W) acc = at::vec::maximum(acc, V::loadu(row + c));
  if (c < n) acc = at::vec::maximum(acc, V::set(V(neg_inf<T>()), V::loadu(row + c, n - c), n - c));
  return horizontal_max(acc);
}

// row[c] = exp(row[c] - ref) in place; returns the sum.
template <typename T>
T exp_sum(T* row, int64_t n, T ref) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const V r(ref);
  V acc(T(0)), acc1(T(0));  // two sum chains, as in row_max
  int64_t c = 0;
  for (; c + 2 * W <= n; c += 2 * W) {
    const V e0 = vexp(V::loadu(row + c) - r);
    const V e1 = vexp(V::loadu(row + c + W) - r);
    e0.store(row + c);
    e1.store(row + c + W);
    acc = acc + e0;
    acc1 = acc1 + e1;
  }
  acc = acc + acc1;
  for (; c + W <= n; c += W) {
    const V e = vexp(V::loadu(row + c) - r);
    e.store(row + c);
    acc = acc + e;
  }
  if (c < n) {
    const V e = V::set(V(T(0)), vexp(V::loadu(row + c, n - c) - r), n - c);
    e.store(row + c, n - c);
    acc = acc + e;
  }
  return horizontal_sum(acc);
}

template <typename T>
void scale_row(T* row, int64_t n, T factor) {
  using V = Vec<T>;
  const V f(factor);
  int64_t c = 0;
  for (; c + V::size() <= n; c += V::size()) (V::loadu(row + c) * f).store(row + c);
  for (; c < n; ++c) row[c] *= factor;
}

template <typename T>
void mul_rows(T* a, const T* b, int64_t n) {
  using V = Vec<T>;
  int64_t c = 0;
  for (; c + V::size() <= n; c += V::size()) (V::loadu(a + c) * V::loadu(b + c)).store(a + c);
  for (; c < n; ++c) a[c] *= b[c];
}

}  // namespace CPU_CAPABILITY
}  // namespace attention_cpu
}  // namespace pydl
