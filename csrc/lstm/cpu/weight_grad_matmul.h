// An LSTM cell's weight gradient for a few rows, without MKL:
//   grad_w (n x k) = grad_gates^T (n x rows) @ a (rows x k)
// (a is x for w_ih, h for w_hh). A job holds the rows of `a` for a few
// vectors of columns in registers; each grad_w row piece is a sum of `rows`
// broadcast-FMAs written once. MKL runs this product, whose inner dimension
// is only the batch, at 9.4 us for batch 8, 512 x 128 (one thread); the
// one-vector loop at 6.8 us. (grad_a = grad_gates @ w stays with MKL: 6.7 us
// there, 13 us for a register loop walking w's columns.) With threads owning
// row ranges and two vectors per job, a trained LSTMCell step at batch 8,
// hidden 128 went from ~117 to ~92 us (two threads).//
// Included by lstm_cpu_kernel_isa.cpp only (compiled once per CPU ISA).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>

namespace pydl {
namespace lstm_cpu {
namespace CPU_CAPABILITY {

// Rows of `a` held in registers per pass (of 32 zmm / 16 ymm).
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kWeightGradRows = 8;
#else
constexpr int kWeightGradRows = 4;
#endif

template <typename T>
struct WeightGradProduct {
  int64_t rows, n, k;   // all >= 1
  const T* grad_gates;  // (rows, n)
  const T* a;           // (rows, k)
  T* grad_w;            // (n, k)
};

template <typename T>
C10_ALWAYS_INLINE at::vec::Vectorized<T> load_strip(const T* ptr, int64_t width) {
  using V = at::vec::Vectorized<T>;
  return width == V::size() ? V::loadu(ptr) : V::loadu(ptr, width);
}

template <typename T>
C10_ALWAYS_INLINE void store_strip(at::vec::Vectorized<T> v, T* ptr, int64_t width) {
  if (width == at::vec::Vectorized<T>::size()) {
    v.store(ptr);
  } else {
    v.store(ptr, width);
  }
}

// Vectors of columns per job: each broadcast feeds kStrips FMAs (with one
// per FMA the loop was bound by the broadcasts), and each grad_w row gets
// kStrips adjacent vectors (its rows are k apart: one vector per row walked
// only a few L1 sets).
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kWeightGradStrips = 2;
#else
constexpr int kWeightGradStrips = 1;
#endif

// Columns [p, p + kStrips vectors) (the last one `width` wide) over kRows
// rows from r0; first: written, else added to (later row blocks). The loop
// reads only locals: at::vec's stores may alias anything, so a field read
// through a pointer is reloaded at every store.
template <typename T, int kRows, int kStrips>
void weight_grad_strip(const WeightGradProduct<T>& s, int64_t j0, int64_t j1, int64_t r0,
                       int64_t p, int64_t width, bool first) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t n = s.n, k = s.k;
  const T* g = s.grad_gates + r0 * n;
  T* out = s.grad_w + p;
  V a[kRows][kStrips];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kStrips; ++v) {
      a[r][v] = load_strip(s.a + (r0 + r) * k + p + v * L, v + 1 < kStrips ? L : width);
    }
  }
  for (int64_t j = j0; j < j1; ++j) {
    // The sum over rows in two chains (even, odd rows): half the FMA latency.
    V even[kStrips], odd[kStrips];
    for (int v = 0; v < kStrips; ++v) even[v] = odd[v] = V(T(0));
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const V gv(g[r * n + j]);
      for (int v = 0; v < kStrips; ++v) {
        if (r % 2 == 0) {
          even[v] = at::vec::fmadd(gv, a[r][v], even[v]);
        } else {
          odd[v] = at::vec::fmadd(gv, a[r][v], odd[v]);
        }
      }
    }
    T* row = out + j * k;
    for (int v = 0; v < kStrips; ++v) {
      const V sum = even[v] + odd[v];
      const int64_t w = v + 1 < kStrips ? L : width;
      store_strip(first ? sum : sum + load_strip(row + v * L, w), row + v * L, w);
    }
  }
}

template <typename T, int kStrips>
void weight_grad_rows(const WeightGradProduct<T>& s, int64_t j0, int64_t j1, int64_t r0,
                      int64_t rows, int64_t p, int64_t width, bool first) {
  switch (rows) {
#if defined(CPU_CAPABILITY_AVX512)
    case 8: weight_grad_strip<T, 8, kStrips>(s, j0, j1, r0, p, width, first); break;
    case 7: weight_grad_strip<T, 7, kStrips>(s, j0, j1, r0, p, width, first); break;
    case 6: weight_grad_strip<T, 6, kStrips>(s, j0, j1, r0, p, width, first); break;
    case 5: weight_grad_strip<T, 5, kStrips>(s, j0, j1, r0, p, width, first); break;
#endif
    case 4: weight_grad_strip<T, 4, kStrips>(s, j0, j1, r0, p, width, first); break;
    case 3: weight_grad_strip<T, 3, kStrips>(s, j0, j1, r0, p, width, first); break;
    case 2: weight_grad_strip<T, 2, kStrips>(s, j0, j1, r0, p, width, first); break;
    default: weight_grad_strip<T, 1, kStrips>(s, j0, j1, r0, p, width, first); break;
  }
}

// Threads split grad_w by rows (n), each writing one contiguous range: split
// by columns, two threads wrote the same rows k apart, and batch 8, 512 x 128
// ran slower on two threads than on one (neighbouring lines of a row pulled
// back and forth, likely by the hardware prefetchers). The same rows of every
// product (w_ih's and w_hh's gradients) in one parallel region: one join per
// cell backward, and autograd's later accumulation, split by rows the same
// way, finds each thread's rows in its own cache.
template <typename T>
void weight_grad_products(const WeightGradProduct<T>* products, int count) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t L = V::size();
  constexpr int64_t kRowsPerUnit = 16;  // rows of grad_w per unit of parallel work
  const int64_t job_cols = kWeightGradStrips * L;
  const int64_t n = products[0].n, rows = products[0].rows;
  int64_t k_total = 0;
  for (int i = 0; i < count; ++i) k_total += products[i].k;
  const int64_t units = (n + kRowsPerUnit - 1) / kRowsPerUnit;
  // Parallel once a thread gets ~64K FMA lanes.
  const int64_t work_per_unit = std::max<int64_t>(1, rows * kRowsPerUnit * k_total);
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / work_per_unit);
  at::parallel_for(0, units, grain, [&](int64_t u0, int64_t u1) {
    const int64_t j0 = u0 * kRowsPerUnit, j1 = std::min(n, u1 * kRowsPerUnit);
    for (int i = 0; i < count; ++i) {
      const WeightGradProduct<T>& s = products[i];
      for (int64_t p0 = 0; p0 < s.k; p0 += job_cols) {
        const int64_t cols = std::min(job_cols, s.k - p0);
        for (int64_t r0 = 0; r0 < rows; r0 += kWeightGradRows) {
          const int64_t block_rows = std::min<int64_t>(kWeightGradRows, rows - r0);
          const bool first = r0 == 0;
          if (cols > (kWeightGradStrips - 1) * L) {  // every vector but the last is full
            weight_grad_rows<T, kWeightGradStrips>(s, j0, j1, r0, block_rows, p0,
                                                   cols - (kWeightGradStrips - 1) * L, first);
          } else {  // a narrower last job: one vector at a time
            for (int64_t p = p0; p < p0 + cols; p += L) {
              weight_grad_rows<T, 1>(s, j0, j1, r0, block_rows, p, std::min(L, p0 + cols - p),
                                     first);
            }
          }
        }
      }
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace lstm_cpu
}  // namespace pydl
