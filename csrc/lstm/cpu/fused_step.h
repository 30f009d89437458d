// One whole LSTM step for small batches: the recurrent product and the cell's
// pointwise math in one pass, parallel over blocks of hidden units.
//
// The recurrent weight is packed so that one panel holds all four gates of a
// block of V::size() hidden units (columns i, f, g, o of those units, for
// every k). A thread then computes its units' gate pre-activations in
// registers, adds the input projection and biases, and finishes their c and
// h at once: one parallel region per step, no second pass over the gates,
// and no thread idles while another runs the pointwise part.
// Included by lstm_cpu_kernel_isa.cpp only (compiled once per CPU ISA).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

#include "lstm/cpu/activations.h"

namespace pydl {
namespace lstm_cpu {
namespace CPU_CAPABILITY {

template <typename T>
constexpr int64_t units_per_block() {
  return at::vec::Vectorized<T>::size();
}

// Rows per register tile: 4 x 4 accumulators of 32 zmm registers, 2 x 4 of 16 ymm.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kFusedRows = 4;
#else
constexpr int kFusedRows = 2;
#endif

template <typename T>
int64_t gate_panels_size(int64_t hidden, int64_t k) {
  const int64_t u = units_per_block<T>();
  return (hidden + u - 1) / u * k * 4 * u;
}

// out[block][p][q * U + l] = w_hh[q * H + block * U + l][p], zero past H:
// 16 x 16 transposes (at::vec's, in registers on AVX-512).
template <typename T>
void pack_gate_panels(const T* w_hh, int64_t hidden, int64_t k, T* out) {
  constexpr int64_t U = units_per_block<T>();
  const int64_t blocks = (hidden + U - 1) / U;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t block = b0; block < b1; ++block) {
      T* dst = out + block * k * 4 * U;
      const int64_t unit0 = block * U, valid = std::min<int64_t>(U, hidden - unit0);
      if (valid < U) std::fill(dst, dst + k * 4 * U, T(0));
      for (int64_t q = 0; q < 4; ++q) {
        const T* src = w_hh + (q * hidden + unit0) * k;
        for (int64_t u0 = 0; u0 < valid; u0 += 16) {
          const int rows = static_cast<int>(std::min<int64_t>(16, valid - u0));
          for (int64_t p0 = 0; p0 < k; p0 += 16) {
            const int cols = static_cast<int>(std::min<int64_t>(16, k - p0));
            at::vec::transpose_mxn<T>(src + u0 * k + p0, k, dst + (p0 * 4 + q) * U + u0,
                                      4 * U, rows, cols);
          }
        }
      }
    }
  });
}

template <typename T>
struct FusedStep {
  int64_t rows, hidden, k;
  const T* h_prev;    // (rows, k)
  const T* panels;    // pack_gate_panels
  T* gates;           // (rows, 4H): input projection in, activated gates out
  const T* b_ih;      // (4H) or nullptr
  const T* b_hh;      // (4H) or nullptr
  T* c_state;         // (rows, H): c_prev in, c out
  T* cells;           // (rows, H): c out (the step's rows of the saved cells)
  T* output;          // (rows, H): h out
  T* h_next;          // (rows, H): h out, for the next step's product
};

template <typename T>
inline at::vec::Vectorized<T> load_part(const T* p, int64_t n) {
  using V = at::vec::Vectorized<T>;
  return n == V::size() ? V::loadu(p) : V::loadu(p, n);
}

template <typename T>
inline void store_part(const at::vec::Vectorized<T>& v, T* p, int64_t n) {
  if (n == at::vec::Vectorized<T>::size()) {
    v.store(p);
  } else {
    v.store(p, n);
  }
}

// Finishes row r's `valid` units of one block from their four accumulated
// recurrent products.
template <typename T>
inline void finish_units(const FusedStep<T>& s, int64_t r, int64_t unit0, int64_t valid,
                         const at::vec::Vectorized<T> (&acc)[4]) {
  using V = at::vec::Vectorized<T>;
  const int64_t H = s.hidden;
  T* g = s.gates + r * 4 * H + unit0;
  V pre[4];
  for (int q = 0; q < 4; ++q) {
    V v = acc[q] + load_part(g + q * H, valid);
    if (s.b_ih != nullptr) v = v + load_part(s.b_ih + q * H + unit0, valid);
    if (s.b_hh != nullptr) v = v + load_part(s.b_hh + q * H + unit0, valid);
    pre[q] = v;
  }
  const V i = sigmoid(pre[0]), f = sigmoid(pre[1]), gg = tanh_act<T>(pre[2]),
          o = sigmoid(pre[3]);
  const int64_t at = r * H + unit0;
  const V c = f * load_part(s.c_state + at, valid) + i * gg;
  const V h = o * tanh_act<T>(c);
  store_part(i, g, valid);
  store_part(f, g + H, valid);
  store_part(gg, g + 2 * H, valid);
  store_part(o, g + 3 * H, valid);
  store_part(c, s.c_state + at, valid);
  store_part(c, s.cells + at, valid);
  store_part(h, s.output + at, valid);
  store_part(h, s.h_next + at, valid);
}

// kRows rows starting at r0, one unit block.
template <typename T, int kRows>
inline void fused_tile(const FusedStep<T>& s, int64_t r0, int64_t block) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t U = units_per_block<T>();
  const T* panel = s.panels + block * s.k * 4 * U;
  V acc[kRows][4];
  for (int r = 0; r < kRows; ++r) {
    for (int q = 0; q < 4; ++q) acc[r][q] = V(T(0));
  }
  const T* a = s.h_prev + r0 * s.k;
  for (int64_t p = 0; p < s.k; ++p) {
    V w[4];
    for (int q = 0; q < 4; ++q) w[q] = V::loadu(panel + (p * 4 + q) * U);
    for (int r = 0; r < kRows; ++r) {
      const V h(a[r * s.k + p]);
      for (int q = 0; q < 4; ++q) acc[r][q] = at::vec::fmadd(h, w[q], acc[r][q]);
    }
  }
  const int64_t unit0 = block * U, valid = std::min<int64_t>(U, s.hidden - unit0);
  for (int r = 0; r < kRows; ++r) finish_units(s, r0 + r, unit0, valid, acc[r]);
}

// One row (batch 1, the latency case): even and odd k in separate
// accumulators, so eight independent FMA chains instead of four.
template <typename T>
inline void fused_row(const FusedStep<T>& s, int64_t r, int64_t block) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t U = units_per_block<T>();
  const T* panel = s.panels + block * s.k * 4 * U;
  const T* a = s.h_prev + r * s.k;
  V even[4], odd[4];
  for (int q = 0; q < 4; ++q) even[q] = odd[q] = V(T(0));
  int64_t p = 0;
  for (; p + 2 <= s.k; p += 2) {
    const V a0(a[p]), a1(a[p + 1]);
    for (int q = 0; q < 4; ++q) {
      even[q] = at::vec::fmadd(a0, V::loadu(panel + (p * 4 + q) * U), even[q]);
      odd[q] = at::vec::fmadd(a1, V::loadu(panel + ((p + 1) * 4 + q) * U), odd[q]);
    }
  }
  if (p < s.k) {
    const V a0(a[p]);
    for (int q = 0; q < 4; ++q) {
      even[q] = at::vec::fmadd(a0, V::loadu(panel + (p * 4 + q) * U), even[q]);
    }
  }
  V acc[4];
  for (int q = 0; q < 4; ++q) acc[q] = even[q] + odd[q];
  const int64_t unit0 = block * U, valid = std::min<int64_t>(U, s.hidden - unit0);
  finish_units(s, r, unit0, valid, acc);
}

template <typename T>
void fused_step_typed(const FusedStep<T>& s) {
  constexpr int64_t U = units_per_block<T>();
  const int64_t blocks = (s.hidden + U - 1) / U;
  // Enough work per task to be worth a thread (the whole step may run inline).
  const int64_t work_per_block = std::max<int64_t>(1, s.rows * s.k * 4 * U);
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / work_per_block);
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t block = b0; block < b1; ++block) {
      if (s.rows == 1) {
        fused_row(s, 0, block);
        continue;
      }
      int64_t r = 0;
      for (; r + kFusedRows <= s.rows; r += kFusedRows) fused_tile<T, kFusedRows>(s, r, block);
      switch (s.rows - r) {
        case 3: fused_tile<T, 3>(s, r, block); break;
        case 2: fused_tile<T, 2>(s, r, block); break;
        case 1: fused_tile<T, 1>(s, r, block); break;
        default: break;
      }
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace lstm_cpu
}  // namespace pydl
