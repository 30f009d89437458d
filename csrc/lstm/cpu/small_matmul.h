// C (rows x n) (+)= A (rows x k) @ B (k x n) for the rows of one recurrent
// step, with B prepacked once per call into column panels.
//
// Why not MKL: sgemm spends 4-7 us on a (1 x 128) @ (128 x 512) product, more
// than a whole oneDNN LSTM step. Why panels: a weight row of an LSTM is 4H
// floats, so walking B down k with a 4 KB stride (H = 256) maps every access
// to the same L1 set; each panel holds kPanel columns contiguously for all k,
// so a tile streams one contiguous block that stays in L1 across row blocks.
//
// Included by lstm_cpu_kernel_isa.cpp only (compiled once per CPU ISA).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

namespace pydl {
namespace lstm_cpu {
namespace CPU_CAPABILITY {

// Accumulator tile: kTileRows rows x kPanelVecs vectors stay in registers.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kPanelVecs = 4;  // 16 accumulators + 4 loads of 32 zmm registers
#else
constexpr int kPanelVecs = 2;  // 8 accumulators + 2 loads of 16 ymm registers
#endif
constexpr int kTileRows = 4;

template <typename T>
constexpr int64_t panel_width() {
  return kPanelVecs * at::vec::Vectorized<T>::size();
}

template <typename T>
int64_t packed_size(int64_t k, int64_t n) {
  const int64_t w = panel_width<T>();
  return (n + w - 1) / w * w * k;
}

// out[panel][p][j] = B(p, panel * width + j), zero past column n; B(p, j) is
// at b[p * stride_k + j * stride_n] (so a transposed B packs without a copy).
template <typename T>
void pack_panels(const T* b, int64_t k, int64_t n, int64_t stride_k, int64_t stride_n, T* out) {
  const int64_t w = panel_width<T>();
  const int64_t panels = (n + w - 1) / w;
  at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t panel = p0; panel < p1; ++panel) {
      T* dst = out + panel * k * w;
      const int64_t cols = std::min(w, n - panel * w);
      if (cols < w) std::fill(dst, dst + k * w, T(0));
      const T* src = b + panel * w * stride_n;
      // Walk whichever of B's dimensions is contiguous in the inner loop.
      if (stride_k == 1) {
        // A transpose: 16 x 16 blocks (at::vec's, in registers on AVX-512).
        for (int64_t j0 = 0; j0 < cols; j0 += 16) {
          const int rows = static_cast<int>(std::min<int64_t>(16, cols - j0));
          for (int64_t p0 = 0; p0 < k; p0 += 16) {
            const int n = static_cast<int>(std::min<int64_t>(16, k - p0));
            at::vec::transpose_mxn<T>(src + j0 * stride_n + p0, stride_n, dst + p0 * w + j0, w,
                                      rows, n);
          }
        }
      } else {
        for (int64_t p = 0; p < k; ++p) {
          for (int64_t j = 0; j < cols; ++j) dst[p * w + j] = src[p * stride_k + j * stride_n];
        }
      }
    }
  });
}

// kRows rows of C (row stride ldc) over one panel (kPanelVecs vectors).
template <typename T, int kRows>
inline void panel_tile(int64_t k, const T* a, int64_t lda, const T* panel, T* c, int64_t ldc,
                       bool accumulate) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t w = kPanelVecs * V::size();
  V sum[kRows][kPanelVecs];
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kPanelVecs; ++v) {
      sum[r][v] = accumulate ? V::loadu(c + r * ldc + v * V::size()) : V(T(0));
    }
  }
  for (int64_t p = 0; p < k; ++p) {
    V bv[kPanelVecs];
    for (int v = 0; v < kPanelVecs; ++v) bv[v] = V::loadu(panel + p * w + v * V::size());
    for (int r = 0; r < kRows; ++r) {
      const V av(a[r * lda + p]);
      for (int v = 0; v < kPanelVecs; ++v) sum[r][v] = at::vec::fmadd(av, bv[v], sum[r][v]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kPanelVecs; ++v) sum[r][v].store(c + r * ldc + v * V::size());
  }
}

// One row (batch 1, the latency case): two accumulator sets over even and odd
// k give twice the independent FMA chains of a one-row tile.
template <typename T>
inline void panel_row(int64_t k, const T* a, const T* panel, T* c, bool accumulate) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t w = kPanelVecs * V::size();
  V even[kPanelVecs], odd[kPanelVecs];
  for (int v = 0; v < kPanelVecs; ++v) {
    even[v] = accumulate ? V::loadu(c + v * V::size()) : V(T(0));
    odd[v] = V(T(0));
  }
  int64_t p = 0;
  for (; p + 2 <= k; p += 2) {
    const V a0(a[p]), a1(a[p + 1]);
    for (int v = 0; v < kPanelVecs; ++v) {
      even[v] = at::vec::fmadd(a0, V::loadu(panel + p * w + v * V::size()), even[v]);
      odd[v] = at::vec::fmadd(a1, V::loadu(panel + (p + 1) * w + v * V::size()), odd[v]);
    }
  }
  if (p < k) {
    const V a0(a[p]);
    for (int v = 0; v < kPanelVecs; ++v) {
      even[v] = at::vec::fmadd(a0, V::loadu(panel + p * w + v * V::size()), even[v]);
    }
  }
  for (int v = 0; v < kPanelVecs; ++v) (even[v] + odd[v]).store(c + v * V::size());
}

// All rows of C's columns [panel * w, panel * w + w) (ldc = row stride).
template <typename T>
void panel_rows(int64_t rows, int64_t k, const T* a, const T* panel, T* c, int64_t ldc,
                bool accumulate) {
  if (rows == 1) {
    panel_row<T>(k, a, panel, c, accumulate);
    return;
  }
  int64_t r = 0;
  for (; r + kTileRows <= rows; r += kTileRows) {
    panel_tile<T, kTileRows>(k, a + r * k, k, panel, c + r * ldc, ldc, accumulate);
  }
  const T* ar = a + r * k;
  T* cr = c + r * ldc;
  switch (rows - r) {
    case 3: panel_tile<T, 3>(k, ar, k, panel, cr, ldc, accumulate); break;
    case 2: panel_tile<T, 2>(k, ar, k, panel, cr, ldc, accumulate); break;
    case 1: panel_tile<T, 1>(k, ar, k, panel, cr, ldc, accumulate); break;
    default: break;
  }
}

template <typename T>
void small_matmul_typed(int64_t rows, int64_t n, int64_t k, const T* a, const T* packed, T* c,
                        bool accumulate) {
  constexpr int64_t w = panel_width<T>();
  const int64_t panels = (n + w - 1) / w;
  // Split the panels over threads once each gets enough work (a thread then
  // keeps streaming the same panels from its own cache, step after step).
  const int64_t work_per_panel = std::max<int64_t>(1, rows * k * w);
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / work_per_panel);
  at::parallel_for(0, panels, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t panel = p0; panel < p1; ++panel) {
      const T* bp = packed + panel * k * w;
      const int64_t col = panel * w;
      if (col + w <= n) {
        panel_rows<T>(rows, k, a, bp, c + col, n, accumulate);
        continue;
      }
      // The last, partial panel: compute full width into a scratch tile and
      // copy back the columns that exist.
      const int64_t valid = n - col;
      for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
        const int64_t block = std::min<int64_t>(kTileRows, rows - r0);
        alignas(64) T tile[kTileRows * w];
        for (int64_t r = 0; r < block; ++r) {
          for (int64_t j = 0; j < w; ++j) {
            tile[r * w + j] = accumulate && j < valid ? c[(r0 + r) * n + col + j] : T(0);
          }
        }
        panel_rows<T>(block, k, a + r0 * k, bp, tile, w, accumulate);
        for (int64_t r = 0; r < block; ++r) {
          std::copy(tile + r * w, tile + r * w + valid, c + (r0 + r) * n + col);
        }
      }
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace lstm_cpu
}  // namespace pydl
