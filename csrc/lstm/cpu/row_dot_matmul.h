// c (rows x n) = a1 @ b1^T (+ a2 @ b2^T) for a few rows: a (rows x k) against
// the rows of a weight b (n x k) as torch stores it, no packing.
//
// Why: MKL's sgemm runs an LSTMCell step's x @ w_ih^T (8 x 128 @ 128 x 512)
// in ~14 us, the "NN" product of the same size in ~6 us; packing w per call
// costs as much as the product, and a cached pack cannot see a `.data` write.
// Here both operands are walked along k (contiguous): a tile of R rows x C
// weight rows keeps R * C vector accumulators, the weight is streamed once
// per R rows, and the accumulators are summed across lanes once per tile.
// The caller splits the weight rows over threads (row_dot_range runs one
// range; the cell step gives each thread all four gates of its units).
//
// Included by lstm_cpu_kernel_isa.cpp only (compiled once per CPU ISA).
#pragma once

#include <ATen/cpu/vec/vec.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace pydl {
namespace lstm_cpu {
namespace CPU_CAPABILITY {

// Accumulators per tile: 16 of 32 zmm registers, 8 of 16 ymm.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kDotAccumulators = 16;
#else
constexpr int kDotAccumulators = 8;
#endif

// One operand pair of the sum: a (rows x k, row stride lda), b (n x k, row stride ldb).
template <typename T>
struct RowDotOperand {
  const T* a;
  const T* b;
  int64_t k, lda, ldb;
};

// sums[i] = the sum of acc[i]'s lanes, i < kCount.
template <typename T, int kCount>
C10_ALWAYS_INLINE void lane_sums(const at::vec::Vectorized<T> (&acc)[kCount], T* sums) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float> && kCount == 16) {
    // A tree of in-register shuffles: 15 adds for 16 sums instead of 16
    // separate reductions. Lane i of the result ends up as acc[i]'s sum.
    __m512 t[8], u[4], v[2];
    for (int j = 0; j < 8; ++j) {
      const __m512 x = acc[2 * j], y = acc[2 * j + 1];
      t[j] = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
    }
    for (int m = 0; m < 4; ++m) {
      const __m512d x = _mm512_castps_pd(t[2 * m]), y = _mm512_castps_pd(t[2 * m + 1]);
      u[m] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                           _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    for (int p = 0; p < 2; ++p) {
      v[p] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * p], u[2 * p + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_shuffle_f32x4(u[2 * p], u[2 * p + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    }
    _mm512_storeu_ps(sums, _mm512_add_ps(_mm512_shuffle_f32x4(v[0], v[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                         _mm512_shuffle_f32x4(v[0], v[1], _MM_SHUFFLE(3, 1, 3, 1))));
    return;
  }
#endif
  for (int i = 0; i < kCount; ++i) {
    alignas(64) T lanes[at::vec::Vectorized<T>::size()];
    acc[i].store(lanes);
    T sum(0);
    for (const T lane : lanes) sum += lane;
    sums[i] = sum;
  }
}

// Adds a (kRows rows) . w_rows (kCols rows) over k into acc.
template <typename T, int kRows, int kCols>
C10_ALWAYS_INLINE void dot_accumulate(const T* a, int64_t lda, const T* const (&w_rows)[kCols],
                                      int64_t k, at::vec::Vectorized<T> (&acc)[kRows * kCols]) {
  using V = at::vec::Vectorized<T>;
  int64_t p = 0;
  for (; p + V::size() <= k; p += V::size()) {
    V w[kCols];
#pragma GCC unroll 16
    for (int c = 0; c < kCols; ++c) w[c] = V::loadu(w_rows[c] + p);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const V av = V::loadu(a + r * lda + p);
#pragma GCC unroll 16
      for (int c = 0; c < kCols; ++c) {
        acc[r * kCols + c] = at::vec::fmadd(av, w[c], acc[r * kCols + c]);
      }
    }
  }
  if (p < k) {  // the k tail: partial loads fill the rest with zeros
    const int64_t left = k - p;
    V w[kCols];
    for (int c = 0; c < kCols; ++c) w[c] = V::loadu(w_rows[c] + p, left);
    for (int r = 0; r < kRows; ++r) {
      const V av = V::loadu(a + r * lda + p, left);
      for (int c = 0; c < kCols; ++c) {
        acc[r * kCols + c] = at::vec::fmadd(av, w[c], acc[r * kCols + c]);
      }
    }
  }
}

// Rows [r0, r0 + kRows) of c for weight rows [n_begin, n_end). The
// accumulators stay in this function (at::vec's stores may alias anything:
// an array whose address escapes is reloaded around every store).
template <typename T, int kRows>
void dot_rows(const RowDotOperand<T>* ops, int num_ops, int64_t r0, int64_t n_begin,
              int64_t n_end, T* c, int64_t ldc) {
  using V = at::vec::Vectorized<T>;
  constexpr int kCols = std::max(1, kDotAccumulators / kRows);
  const RowDotOperand<T> op0 = ops[0];
  const RowDotOperand<T> op1 = num_ops > 1 ? ops[1] : RowDotOperand<T>{nullptr, nullptr, 0, 0, 0};
  const T* a0 = op0.a + r0 * op0.lda;
  const T* a1 = op1.a != nullptr ? op1.a + r0 * op1.lda : nullptr;
  T* out = c + r0 * ldc;
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kCols) {
    const int64_t valid = std::min<int64_t>(kCols, n_end - n0);
    V acc[kRows * kCols];
    for (int i = 0; i < kRows * kCols; ++i) acc[i] = V(T(0));
    // Past n_end, repeat the last weight row (its sums are not stored).
    const T* w_rows[kCols];
    for (int j = 0; j < kCols; ++j) w_rows[j] = op0.b + std::min<int64_t>(n0 + j, n_end - 1) * op0.ldb;
    dot_accumulate<T, kRows, kCols>(a0, op0.lda, w_rows, op0.k, acc);
    if (op1.k > 0) {
      for (int j = 0; j < kCols; ++j) {
        w_rows[j] = op1.b + std::min<int64_t>(n0 + j, n_end - 1) * op1.ldb;
      }
      dot_accumulate<T, kRows, kCols>(a1, op1.lda, w_rows, op1.k, acc);
    }
    alignas(64) T sums[kRows * kCols];
    lane_sums<T, kRows * kCols>(acc, sums);
    for (int r = 0; r < kRows; ++r) {
      for (int64_t j = 0; j < valid; ++j) out[r * ldc + n0 + j] = sums[r * kCols + j];
    }
  }
}

// Columns [n_begin, n_end) of c (row stride ldc), all rows, on this thread.
template <typename T>
void row_dot_range(int64_t rows, const RowDotOperand<T>* ops, int num_ops, int64_t n_begin,
                   int64_t n_end, T* c, int64_t ldc) {
  int64_t r = 0;
  for (; r + 8 <= rows; r += 8) dot_rows<T, 8>(ops, num_ops, r, n_begin, n_end, c, ldc);
  if (rows - r >= 4) {
    dot_rows<T, 4>(ops, num_ops, r, n_begin, n_end, c, ldc);
    r += 4;
  }
  if (rows - r >= 2) {
    dot_rows<T, 2>(ops, num_ops, r, n_begin, n_end, c, ldc);
    r += 2;
  }
  if (rows - r >= 1) dot_rows<T, 1>(ops, num_ops, r, n_begin, n_end, c, ldc);
}

}  // namespace CPU_CAPABILITY
}  // namespace lstm_cpu
}  // namespace pydl
