// Whole LSTM steps for small batches: the recurrent product and the cell's
// pointwise math in one pass, parallel over blocks of hidden units, and the
// time loop itself inside one parallel region (fused_sequence_typed).
//
// The recurrent weight is packed so that one panel holds all four gates of a
// block of V::size() hidden units (columns i, f, g, o of those units, for
// every k). A thread then computes its units' gate pre-activations in
// registers, adds the input projection and biases, and finishes their c and
// h at once: no second pass over the gates, and no thread idles while
// another runs the pointwise part.
// Included by lstm_cpu_kernel_isa.cpp only (compiled once per CPU ISA).
#pragma once

#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/spin_barrier.h"
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

// out[block][p][q * U + l] = w_hh[q * H + block * U + l][p], zero past H, for
// blocks [block0, block1): 16 x 16 transposes (at::vec's, in registers on
// AVX-512). Serial: the callers split the blocks among threads.
template <typename T>
void pack_gate_blocks(const T* w_hh, int64_t hidden, int64_t k, int64_t block0, int64_t block1,
                      T* out) {
  constexpr int64_t U = units_per_block<T>();
  for (int64_t block = block0; block < block1; ++block) {
    T* dst = out + block * k * 4 * U;
    const int64_t unit0 = block * U, valid = std::min<int64_t>(U, hidden - unit0);
    if (valid < U) std::fill(dst, dst + k * 4 * U, T(0));
    for (int64_t q = 0; q < 4; ++q) {
      const T* src = w_hh + (q * hidden + unit0) * k;
      for (int64_t u0 = 0; u0 < valid; u0 += 16) {
        const int rows = static_cast<int>(std::min<int64_t>(16, valid - u0));
        for (int64_t p0 = 0; p0 < k; p0 += 16) {
          const int cols = static_cast<int>(std::min<int64_t>(16, k - p0));
          at::vec::transpose_mxn<T>(src + u0 * k + p0, k, dst + (p0 * 4 + q) * U + u0, 4 * U,
                                    rows, cols);
        }
      }
    }
  }
}

template <typename T>
struct FusedStep {
  int64_t rows, hidden, k;
  const T* h_prev;    // (rows, k)
  const T* panels;    // pack_gate_blocks
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

// acc[r][q] = row r of a (kRows rows, row stride lda, k columns) times the
// gate q columns of one unit block's panel (k x 4U, pack_gate_blocks), then
// finish(r, acc[r]) for each row.
template <typename T, int kRows, typename Finish>
inline void gate_block_tile(int64_t k, const T* a, int64_t lda, const T* panel,
                            const Finish& finish) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t U = units_per_block<T>();
  V acc[kRows][4];
  for (int r = 0; r < kRows; ++r) {
    for (int q = 0; q < 4; ++q) acc[r][q] = V(T(0));
  }
  for (int64_t p = 0; p < k; ++p) {
    V w[4];
    for (int q = 0; q < 4; ++q) w[q] = V::loadu(panel + (p * 4 + q) * U);
    for (int r = 0; r < kRows; ++r) {
      const V h(a[r * lda + p]);
      for (int q = 0; q < 4; ++q) acc[r][q] = at::vec::fmadd(h, w[q], acc[r][q]);
    }
  }
  for (int r = 0; r < kRows; ++r) finish(r, acc[r]);
}

// tile(r, std::integral_constant<int, n>{}) over `rows` rows in tiles of
// n = kFusedRows, then one tile of the 1-3 rows left.
template <typename Tile>
inline void for_row_tiles(int64_t rows, const Tile& tile) {
  int64_t r = 0;
  for (; r + kFusedRows <= rows; r += kFusedRows) {
    tile(r, std::integral_constant<int, kFusedRows>{});
  }
  switch (rows - r) {
    case 3: tile(r, std::integral_constant<int, 3>{}); break;
    case 2: tile(r, std::integral_constant<int, 2>{}); break;
    case 1: tile(r, std::integral_constant<int, 1>{}); break;
    default: break;
  }
}

// kRows rows starting at r0, one unit block.
template <typename T, int kRows>
inline void fused_tile(const FusedStep<T>& s, int64_t r0, int64_t block) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t U = units_per_block<T>();
  const int64_t unit0 = block * U, valid = std::min<int64_t>(U, s.hidden - unit0);
  gate_block_tile<T, kRows>(s.k, s.h_prev + r0 * s.k, s.k, s.panels + block * s.k * 4 * U,
                            [&](int r, const V(&acc)[4]) {
                              finish_units(s, r0 + r, unit0, valid, acc);
                            });
}

// gates (rows, 4H) = x (rows, I) @ w_ih^T in the columns of unit blocks
// [block0, block1) (all four gates of their units), from w_ih packed like
// w_hh (pack_gate_blocks with k = I): a participant of the fused loop
// computes the input projection of the units it owns before the time loop,
// instead of a separate BLAS call (see FusedSequence::x).
template <typename T>
void project_input_blocks(const T* x, int64_t rows, int64_t input_size, int64_t hidden,
                          const T* panels, int64_t block0, int64_t block1, T* gates) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t U = units_per_block<T>();
  for (int64_t block = block0; block < block1; ++block) {
    const T* panel = panels + block * input_size * 4 * U;
    const int64_t unit0 = block * U, valid = std::min<int64_t>(U, hidden - unit0);
    for_row_tiles(rows, [&](int64_t r0, auto tile_rows) {
      auto store = [&](int r, const V(&acc)[4]) {
        T* g = gates + (r0 + r) * 4 * hidden + unit0;
        for (int q = 0; q < 4; ++q) store_part(acc[q], g + q * hidden, valid);
      };
      constexpr int kRows = decltype(tile_rows)::value;
      gate_block_tile<T, kRows>(input_size, x + r0 * input_size, input_size, panel, store);
    });
  }
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

// All rows of one unit block.
template <typename T>
inline void fused_block(const FusedStep<T>& s, int64_t block) {
  if (s.rows == 1) {
    fused_row(s, 0, block);
    return;
  }
  for_row_tiles(s.rows, [&](int64_t r, auto tile_rows) {
    fused_tile<T, decltype(tile_rows)::value>(s, r, block);
  });
}

// A whole sequence of fused steps (no projection). Step i reads h from
// h_buffers[i % 2] and writes h_buffers[(i + 1) % 2]; c is updated in place
// in c_state (a finished row's c is never touched again).
template <typename T>
struct FusedSequence {
  int64_t steps;              // non-empty steps, in the order they run
  const int64_t* rows;        // [steps] rows of each
  const int64_t* row_offset;  // [steps] its first packed row
  const int64_t* ended_from;  // [steps] rows [ended_from, rows) end there: h -> hy
  int64_t batch, hidden;
  const T* w_hh;    // (4H, H) row-major
  T* panels;        // gate_panels_size(H, H): packed w_hh, filled here
  T* gates;         // (N, 4H): input projection in (or computed here), activated gates out
  // With x (N, I), the participants compute the input projection into gates
  // themselves, w_ih (4H, I) packed into panels_ih (gate_panels_size(H, I)).
  // For an x that fits in L2: a separate BLAS call cost as much as a third of
  // a batch-1 layer (MKL's generic code on an AMD EPYC, B1 H128 T100).
  const T* x;       // (N, I) or nullptr
  int64_t x_rows, input_size;  // N, I
  const T* w_ih;
  T* panels_ih;
  const T* b_ih;    // (4H) or nullptr
  const T* b_hh;    // (4H) or nullptr
  T* c_state;       // (B, H)
  T* cells;         // (N, H)
  T* output;        // (N, H)
  T* h_buffers;     // (2, B, H), both holding h0 (a row joining late, as in a
                    // reversed packed batch, reads h0 from either)
  T* hy;            // (B, H)
};

template <typename T>
FusedStep<T> step_view(const FusedSequence<T>& q, int64_t i) {
  const int64_t H = q.hidden, B = q.batch, off = q.row_offset[i];
  return FusedStep<T>{q.rows[i],          H,
                      H,                  q.h_buffers + (i % 2) * B * H,
                      q.panels,           q.gates + off * 4 * H,
                      q.b_ih,             q.b_hh,
                      q.c_state,          q.cells + off * H,
                      q.output + off * H, q.h_buffers + ((i + 1) % 2) * B * H};
}

// The time loop inside one parallel region: each participant owns a fixed
// range of unit blocks for the whole sequence and packs their weight panels
// itself (no separate packing region, and the panels start in the cache of
// the core that reads them); a spin barrier separates the steps instead of
// an OpenMP fork/join per step. Participants: as many threads as have enough
// work.
template <typename T>
void fused_sequence_typed(const FusedSequence<T>& q) {
  constexpr int64_t U = units_per_block<T>();
  const int64_t H = q.hidden, blocks = (H + U - 1) / U;
  int64_t max_rows = 0;
  for (int64_t i = 0; i < q.steps; ++i) max_rows = std::max(max_rows, q.rows[i]);
  // Enough work per participant and step to be worth a thread: a barrier
  // costs far less than the fork/join a step's own parallel_for paid (which
  // needed 4x this), so batch 1 at hidden 128 now splits, hidden 64 does not.
  const int64_t work_per_block = std::max<int64_t>(1, max_rows * H * 4 * U);
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 14) / work_per_block);
  // Only with OpenMP's fork/join, where every chunk of the region runs at
  // once on its own thread: ATen's native pool runs a region's chunks as
  // queued tasks, and with other callers' tasks ahead of them in the queue a
  // participant could spin for one that never starts.
  const int64_t participants =
      AT_PARALLEL_OPENMP
          ? std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks / grain))
          : 1;
  SpinBarrier barrier(participants);
  // The input projection (with x) of unit blocks [b0, b1), w_ih's panels first.
  auto project = [&](int64_t b0, int64_t b1) {
    pack_gate_blocks(q.w_ih, H, q.input_size, b0, b1, q.panels_ih);
    project_input_blocks(q.x, q.x_rows, q.input_size, H, q.panels_ih, b0, b1, q.gates);
  };
  auto run = [&](int64_t id0, int64_t id1) {
    const int64_t block0 = id0 * blocks / participants, block1 = id1 * blocks / participants;
    const int64_t unit0 = block0 * U, unit1 = std::min(H, block1 * U);
    // Several participants: each packs the panels only it reads (no barrier
    // before step 0). A single one finds them packed (below).
    if (participants > 1) pack_gate_blocks(q.w_hh, H, H, block0, block1, q.panels);
    if (q.x != nullptr && participants > 1) project(block0, block1);  // its gate columns
    for (int64_t i = 0; i < q.steps; ++i) {
      const FusedStep<T> s = step_view(q, i);
      for (int64_t block = block0; block < block1; ++block) fused_block(s, block);
      for (int64_t r = q.ended_from[i]; r < s.rows; ++r) {
        std::copy(s.output + r * H + unit0, s.output + r * H + unit1, q.hy + r * H + unit0);
      }
      if (participants > 1) barrier.arrive_and_wait(id0, id1, i + 1);
    }
  };
  if (participants == 1) {
    // A large weight (e.g. ATen's native thread pool, which runs one
    // participant) is still packed by every thread; a small one inline.
    constexpr int64_t kPackGrainBytes = 256 * 1024;
    const int64_t block_bytes = H * 4 * U * static_cast<int64_t>(sizeof(T));
    at::parallel_for(0, blocks, std::max<int64_t>(1, kPackGrainBytes / block_bytes),
                     [&](int64_t b0, int64_t b1) {
                       pack_gate_blocks(q.w_hh, H, H, b0, b1, q.panels);
                     });
    if (q.x != nullptr) {  // the input projection too, over the threads there are
      const int64_t work_per_block = std::max<int64_t>(1, q.x_rows * q.input_size * 4 * U);
      at::parallel_for(0, blocks, std::max<int64_t>(1, (int64_t(1) << 16) / work_per_block),
                       project);
    }
    run(0, 1);
  } else {
    at::parallel_for(0, participants, 1, run);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace lstm_cpu
}  // namespace pydl
