// An LSTM cell's weight gradient for a few rows, without MKL:
//   grad_w (n x k) = grad_gates^T (n x rows) @ a (rows x k)
// (a is x for w_ih, h for w_hh). A thread owns a strip of one vector of
// columns: the rows of `a` stay in registers, each grad_w row strip is a sum
// of `rows` broadcast-FMAs written once. MKL runs this product, whose inner
// dimension is only the batch, at 9.4 us for batch 8, 512 x 128 (one thread);
// this loop at 6.8 us. (grad_a = grad_gates @ w stays with MKL: 6.7 us there,
// 13 us for the same register loop walking w's columns.)
//
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

// Columns [p, p + width) over kRows rows from r0; first: written, else added
// to (later row blocks). The loop reads only locals: at::vec's stores may
// alias anything, so a field read through a pointer is reloaded at every store.
template <typename T, int kRows>
void weight_grad_strip(const WeightGradProduct<T>& s, int64_t r0, int64_t p, int64_t width,
                       bool first) {
  using V = at::vec::Vectorized<T>;
  const int64_t n = s.n, k = s.k;
  const T* g = s.grad_gates + r0 * n;
  T* out = s.grad_w + p;
  V a[kRows];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) a[r] = load_strip(s.a + (r0 + r) * k + p, width);
  for (int64_t j = 0; j < n; ++j) {
    // The sum over rows in two chains (even, odd rows): half the FMA latency.
    V even(T(0)), odd(T(0));
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const V gv(g[r * n + j]);
      if (r % 2 == 0) {
        even = at::vec::fmadd(gv, a[r], even);
      } else {
        odd = at::vec::fmadd(gv, a[r], odd);
      }
    }
    const V sum = even + odd;
    T* row = out + j * k;
    store_strip(first ? sum : sum + load_strip(row, width), row, width);
  }
}

template <typename T>
void weight_grad_rows(const WeightGradProduct<T>& s, int64_t r0, int64_t rows, int64_t p,
                      int64_t width, bool first) {
  switch (rows) {
#if defined(CPU_CAPABILITY_AVX512)
    case 8: weight_grad_strip<T, 8>(s, r0, p, width, first); break;
    case 7: weight_grad_strip<T, 7>(s, r0, p, width, first); break;
    case 6: weight_grad_strip<T, 6>(s, r0, p, width, first); break;
    case 5: weight_grad_strip<T, 5>(s, r0, p, width, first); break;
#endif
    case 4: weight_grad_strip<T, 4>(s, r0, p, width, first); break;
    case 3: weight_grad_strip<T, 3>(s, r0, p, width, first); break;
    case 2: weight_grad_strip<T, 2>(s, r0, p, width, first); break;
    default: weight_grad_strip<T, 1>(s, r0, p, width, first); break;
  }
}

template <typename T>
void weight_grad_product(const WeightGradProduct<T>& s) {
  using V = at::vec::Vectorized<T>;
  const int64_t strips = (s.k + V::size() - 1) / V::size();
  // Parallel once a thread gets ~64K FMA lanes.
  const int64_t work_per_strip = std::max<int64_t>(1, s.rows * s.n * V::size());
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / work_per_strip);
  at::parallel_for(0, strips, grain, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t p = q * V::size(), width = std::min<int64_t>(V::size(), s.k - p);
      for (int64_t r0 = 0; r0 < s.rows; r0 += kWeightGradRows) {
        const int64_t rows = std::min<int64_t>(kWeightGradRows, s.rows - r0);
        weight_grad_rows<T>(s, r0, rows, p, width, /*first=*/r0 == 0);
      }
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace lstm_cpu
}  // namespace pydl
