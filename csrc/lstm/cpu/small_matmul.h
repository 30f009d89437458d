// C (rows x n) (+)= A (rows x k) @ B (k x n), all row-major, for the few rows
// of a recurrent step (batch 1..16). MKL's sgemm spends 4-7 us on a
// (1 x 128) @ (128 x 512) product, more than a whole oneDNN LSTM step; this
// register-blocked loop streams B once per block of rows instead.
// Included by lstm_cpu_kernel_isa.cpp only (compiled once per CPU ISA).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

namespace pydl {
namespace lstm_cpu {
namespace CPU_CAPABILITY {

// Accumulator tile: kRows rows x kVecs vectors stay in registers over k.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kTileVecs = 4;  // 16 accumulators + 4 loads of 32 zmm registers
#else
constexpr int kTileVecs = 2;  // 8 accumulators + 2 loads of 16 ymm registers
#endif
constexpr int kTileRows = 4;

template <typename T, int kRows, int kVecs>
inline void matmul_tile(int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c,
                        int64_t ldc, bool accumulate) {
  using V = at::vec::Vectorized<T>;
  V sum[kRows][kVecs];
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kVecs; ++v) {
      sum[r][v] = accumulate ? V::loadu(c + r * ldc + v * V::size()) : V(T(0));
    }
  }
  for (int64_t p = 0; p < k; ++p) {
    V bv[kVecs];
    for (int v = 0; v < kVecs; ++v) bv[v] = V::loadu(b + p * ldb + v * V::size());
    for (int r = 0; r < kRows; ++r) {
      const V av(a[r * lda + p]);
      for (int v = 0; v < kVecs; ++v) sum[r][v] = at::vec::fmadd(av, bv[v], sum[r][v]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kVecs; ++v) sum[r][v].store(c + r * ldc + v * V::size());
  }
}

// Columns [n_begin, n_end) of every row; whole tiles, then single vectors,
// then scalar columns for the tail.
template <typename T, int kRows>
void matmul_rows(int64_t n_begin, int64_t n_end, int64_t k, const T* a, int64_t lda, const T* b,
                 int64_t ldb, T* c, int64_t ldc, bool accumulate) {
  using V = at::vec::Vectorized<T>;
  int64_t j = n_begin;
  for (; j + kTileVecs * V::size() <= n_end; j += kTileVecs * V::size()) {
    matmul_tile<T, kRows, kTileVecs>(k, a, lda, b + j, ldb, c + j, ldc, accumulate);
  }
  for (; j + V::size() <= n_end; j += V::size()) {
    matmul_tile<T, kRows, 1>(k, a, lda, b + j, ldb, c + j, ldc, accumulate);
  }
  for (; j < n_end; ++j) {
    for (int r = 0; r < kRows; ++r) {
      T s = accumulate ? c[r * ldc + j] : T(0);
      for (int64_t p = 0; p < k; ++p) s += a[r * lda + p] * b[p * ldb + j];
      c[r * ldc + j] = s;
    }
  }
}

template <typename T>
void small_matmul_typed(int64_t rows, int64_t n, int64_t k, const T* a, const T* b, T* c,
                        bool accumulate) {
  using V = at::vec::Vectorized<T>;
  // Split the columns over threads once there is enough work per thread (each
  // thread then keeps streaming the same slice of B from its own cache).
  const int64_t tile = kTileVecs * V::size();
  const int64_t work_per_tile = std::max<int64_t>(1, rows * k * tile);
  const int64_t grain_tiles = std::max<int64_t>(1, (int64_t(1) << 16) / work_per_tile);
  const int64_t tiles = (n + tile - 1) / tile;
  at::parallel_for(0, tiles, grain_tiles, [&](int64_t t0, int64_t t1) {
    const int64_t j0 = t0 * tile, j1 = std::min(n, t1 * tile);
    int64_t r = 0;
    for (; r + kTileRows <= rows; r += kTileRows) {
      matmul_rows<T, kTileRows>(j0, j1, k, a + r * k, k, b, n, c + r * n, n, accumulate);
    }
    const T* ar = a + r * k;
    T* cr = c + r * n;
    switch (rows - r) {
      case 3: matmul_rows<T, 3>(j0, j1, k, ar, k, b, n, cr, n, accumulate); break;
      case 2: matmul_rows<T, 2>(j0, j1, k, ar, k, b, n, cr, n, accumulate); break;
      case 1: matmul_rows<T, 1>(j0, j1, k, ar, k, b, n, cr, n, accumulate); break;
      default: break;
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace lstm_cpu
}  // namespace pydl
