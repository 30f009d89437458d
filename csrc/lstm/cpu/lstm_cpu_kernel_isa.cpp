// LSTM cell pointwise loops, compiled once per ISA (see setup.py): after the
// two GEMMs, one pass computes the four activations, the c/h update and the
// workspace the backward needs; the backward's pointwise part is one pass too.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>

#include "common/cpu_isa.h"
#include "lstm/cpu/activations.h"
#include "lstm/cpu/fused_step.h"
#include "lstm/cpu/lstm_cpu_kernel.h"
#include "lstm/cpu/row_dot_matmul.h"
#include "lstm/cpu/small_matmul.h"
#include "lstm/cpu/weight_grad_matmul.h"

#ifndef CPU_CAPABILITY
#error "lstm_cpu_kernel_isa.cpp is compiled through setup.py's per-ISA wrappers"
#endif

namespace pydl {
namespace lstm_cpu {
namespace CPU_CAPABILITY {
namespace {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// Row b's units [j0, j1) (j0 a multiple of the vector width): the biases
// added to their four gate pre-activations, the activations, c and h; the
// activated gates stored back (the backward's workspace).
template <typename T>
void cell_forward_units(const CellForwardArgs& a, int64_t b, int64_t j0, int64_t j1) {
  using V = Vec<T>;
  const int64_t H = a.hidden;
  T* gi = static_cast<T*>(a.gates) + b * 4 * H;
  T *gf = gi + H, *gg = gi + 2 * H, *go = gi + 3 * H;
  const T* b_ih = static_cast<const T*>(a.b_ih);
  const T* b_hh = static_cast<const T*>(a.b_hh);
  if (b_ih || b_hh) {
    for (int64_t q = 0; q < 4; ++q) {
      for (int64_t k = q * H + j0; k < q * H + j1; k += V::size()) {
        const int64_t n = std::min<int64_t>(V::size(), q * H + j1 - k);
        V v = V::loadu(gi + k, n);
        if (b_ih) v = v + V::loadu(b_ih + k, n);
        if (b_hh) v = v + V::loadu(b_hh + k, n);
        v.store(gi + k, n);
      }
    }
  }
  const T* c0 = static_cast<const T*>(a.cx) + b * H;
  T* h1 = static_cast<T*>(a.hy) + b * H;
  T* c1 = static_cast<T*>(a.cy) + b * H;
  int64_t j = j0;
  for (; j + V::size() <= j1; j += V::size()) {
    const V i = sigmoid(V::loadu(gi + j)), f = sigmoid(V::loadu(gf + j));
    const V g = tanh_act<T>(V::loadu(gg + j)), o = sigmoid(V::loadu(go + j));
    const V c = f * V::loadu(c0 + j) + i * g;
    c.store(c1 + j);
    (o * tanh_act<T>(c)).store(h1 + j);
    i.store(gi + j);
    f.store(gf + j);
    g.store(gg + j);
    o.store(go + j);
  }
  for (; j < j1; ++j) {
    const T i = sigmoid(gi[j]), f = sigmoid(gf[j]), g = std::tanh(gg[j]), o = sigmoid(go[j]);
    const T c = f * c0[j] + i * g;
    c1[j] = c;
    h1[j] = o * std::tanh(c);
    gi[j] = i;
    gf[j] = f;
    gg[j] = g;
    go[j] = o;
  }
}

// Rows of the batch are split over threads; within a row, vectors run along H.
template <typename T>
void cell_forward_typed(const CellForwardArgs& a) {
  const int64_t grain = std::max<int64_t>(1, 16384 / (4 * a.hidden));
  at::parallel_for(0, a.batch, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) cell_forward_units<T>(a, b, 0, a.hidden);
  });
}

template <typename T, bool kExtraGradH>
void cell_backward_typed(const CellBackwardArgs& a) {
  using V = Vec<T>;
  const int64_t H = a.hidden;
  const T* dh = static_cast<const T*>(a.grad_hy);
  const T* dh_extra = static_cast<const T*>(a.grad_h_extra);
  const T* dc = static_cast<const T*>(a.grad_cy);
  const T* cx = static_cast<const T*>(a.cx);
  const T* cy = static_cast<const T*>(a.cy);
  const T* ws = static_cast<const T*>(a.workspace);
  T* dgates = static_cast<T*>(a.grad_gates);
  T* dcx = static_cast<T*>(a.grad_cx);
  const int64_t grain = std::max<int64_t>(1, 16384 / (4 * H));
  at::parallel_for(0, a.batch, grain, [&](int64_t begin, int64_t end) {
    const V one(T(1));
    for (int64_t b = begin; b < end; ++b) {
      const T* wi = ws + b * 4 * H;
      const T *wf = wi + H, *wg = wi + 2 * H, *wo = wi + 3 * H;
      T* di = dgates + b * 4 * H;
      T *df = di + H, *dg = di + 2 * H, *dout = di + 3 * H;
      const int64_t r = b * H;
      int64_t j = 0;
      for (; j + V::size() <= H; j += V::size()) {
        const V i = V::loadu(wi + j), f = V::loadu(wf + j), g = V::loadu(wg + j),
                o = V::loadu(wo + j);
        const V tc = tanh_act<T>(V::loadu(cy + r + j));
        V gh = V::loadu(dh + r + j);
        if constexpr (kExtraGradH) gh = gh + V::loadu(dh_extra + r + j);
        // d loss / d c: through h = o * tanh(c), plus the incoming cell gradient.
        const V gc = V::loadu(dc + r + j) + gh * o * (one - tc * tc);
        (gc * g * i * (one - i)).store(di + j);
        (gc * V::loadu(cx + r + j) * f * (one - f)).store(df + j);
        (gc * i * (one - g * g)).store(dg + j);
        (gh * tc * o * (one - o)).store(dout + j);
        (gc * f).store(dcx + r + j);
      }
      for (; j < H; ++j) {
        const T i = wi[j], f = wf[j], g = wg[j], o = wo[j];
        const T tc = std::tanh(cy[r + j]);
        T gh = dh[r + j];
        if constexpr (kExtraGradH) gh += dh_extra[r + j];
        const T gc = dc[r + j] + gh * o * (T(1) - tc * tc);
        di[j] = gc * g * i * (T(1) - i);
        df[j] = gc * cx[r + j] * f * (T(1) - f);
        dg[j] = gc * i * (T(1) - g * g);
        dout[j] = gh * tc * o * (T(1) - o);
        dcx[r + j] = gc * f;
      }
    }
  });
}

void cell_forward(const CellForwardArgs& a) {
  a.is_double ? cell_forward_typed<double>(a) : cell_forward_typed<float>(a);
}

void cell_backward(const CellBackwardArgs& a) {
  if (a.grad_h_extra != nullptr) {
    a.is_double ? cell_backward_typed<double, true>(a) : cell_backward_typed<float, true>(a);
  } else {
    a.is_double ? cell_backward_typed<double, false>(a) : cell_backward_typed<float, false>(a);
  }
}

// One region: a thread owns hidden units [u0, u1) in blocks of a vector
// width, computes all four gates of them (rows q * H + u of the weights) and
// finishes them; no serial pointwise pass after the products.
template <typename T>
void cell_step_typed(const CellStepArgs& a) {
  constexpr int64_t U = Vec<T>::size();
  const int64_t H = a.hidden, blocks = (H + U - 1) / U;
  const RowDotOperand<T> ops[2] = {
      {static_cast<const T*>(a.h), static_cast<const T*>(a.w_hh), H, H, H},
      {static_cast<const T*>(a.x), static_cast<const T*>(a.w_ih), a.input_size, a.input_size,
       a.input_size}};
  const int num_ops = a.input_size > 0 ? 2 : 1;
  T* gates = static_cast<T*>(a.pointwise.gates);
  // Parallel once a thread gets ~64K FMA lanes.
  const int64_t work_per_block = std::max<int64_t>(1, a.batch * (a.input_size + H) * 4 * U);
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / work_per_block);
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    const int64_t u0 = b0 * U, u1 = std::min(H, b1 * U);
    for (int64_t q = 0; q < 4; ++q) {
      row_dot_range<T>(a.batch, ops, num_ops, q * H + u0, q * H + u1, gates, 4 * H);
    }
    for (int64_t b = 0; b < a.batch; ++b) cell_forward_units<T>(a.pointwise, b, u0, u1);
  });
}

void cell_step(const CellStepArgs& a) {
  a.is_double ? cell_step_typed<double>(a) : cell_step_typed<float>(a);
}

template <typename T>
void weight_grad_typed(const WeightGradArgs& a) {
  WeightGradProduct<T> products[2];
  for (int i = 0; i < a.count; ++i) {
    products[i] = WeightGradProduct<T>{a.rows, a.n, a.operands[i].k,
                                       static_cast<const T*>(a.grad_gates),
                                       static_cast<const T*>(a.operands[i].a),
                                       static_cast<T*>(a.operands[i].grad_w)};
  }
  weight_grad_products<T>(products, a.count);
}

void weight_grad(const WeightGradArgs& a) {
  a.is_double ? weight_grad_typed<double>(a) : weight_grad_typed<float>(a);
}

template <typename T>
void column_sums_typed(int64_t rows, int64_t n, const T* src, T* out) {
  using V = Vec<T>;
  int64_t j = 0;
  for (; j + V::size() <= n; j += V::size()) {
    V sum(T(0));
    for (int64_t r = 0; r < rows; ++r) sum = sum + V::loadu(src + r * n + j);
    sum.store(out + j);
  }
  for (; j < n; ++j) {
    T sum(0);
    for (int64_t r = 0; r < rows; ++r) sum += src[r * n + j];
    out[j] = sum;
  }
}

void column_sums(int64_t rows, int64_t n, bool is_double, const void* src, void* out) {
  if (is_double) {
    column_sums_typed<double>(rows, n, static_cast<const double*>(src), static_cast<double*>(out));
  } else {
    column_sums_typed<float>(rows, n, static_cast<const float*>(src), static_cast<float*>(out));
  }
}

int64_t packed_size_any(int64_t k, int64_t n, bool is_double) {
  return is_double ? packed_size<double>(k, n) : packed_size<float>(k, n);
}

void pack(const PackArgs& a) {
  if (a.is_double) {
    pack_panels<double>(static_cast<const double*>(a.b), a.k, a.n, a.stride_k, a.stride_n,
                        static_cast<double*>(a.out));
  } else {
    pack_panels<float>(static_cast<const float*>(a.b), a.k, a.n, a.stride_k, a.stride_n,
                       static_cast<float*>(a.out));
  }
}

int64_t gate_panels_size_any(int64_t hidden, int64_t k, bool is_double) {
  return is_double ? gate_panels_size<double>(hidden, k) : gate_panels_size<float>(hidden, k);
}

template <typename T>
void fused_sequence_cast(const FusedSequenceArgs& a) {
  fused_sequence_typed<T>(FusedSequence<T>{
      a.steps, a.rows, a.row_offset, a.ended_from, a.batch, a.hidden,
      static_cast<const T*>(a.w_hh), static_cast<T*>(a.panels), static_cast<T*>(a.gates),
      static_cast<const T*>(a.x), a.x_rows, a.input_size, static_cast<const T*>(a.w_ih),
      static_cast<T*>(a.panels_ih), static_cast<const T*>(a.b_ih), static_cast<const T*>(a.b_hh), static_cast<T*>(a.c_state),
      static_cast<T*>(a.cells), static_cast<T*>(a.output), static_cast<T*>(a.h_buffers), static_cast<T*>(a.hy)});
}

void fused_sequence(const FusedSequenceArgs& a) {
  a.is_double ? fused_sequence_cast<double>(a) : fused_sequence_cast<float>(a);
}

void small_matmul(const SmallMatmulArgs& a) {
  if (a.is_double) {
    small_matmul_typed<double>(a.rows, a.n, a.k, static_cast<const double*>(a.a),
                               static_cast<const double*>(a.packed), static_cast<double*>(a.c),
                               a.accumulate);
  } else {
    small_matmul_typed<float>(a.rows, a.n, a.k, static_cast<const float*>(a.a),
                              static_cast<const float*>(a.packed), static_cast<float*>(a.c),
                              a.accumulate);
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY

KernelTable PYDL_ISA_TABLE_FN() {
  return {&CPU_CAPABILITY::cell_forward,
          &CPU_CAPABILITY::cell_backward,
          &CPU_CAPABILITY::cell_step,
          &CPU_CAPABILITY::weight_grad,
          &CPU_CAPABILITY::column_sums,
          &CPU_CAPABILITY::packed_size_any,
          &CPU_CAPABILITY::pack,
          &CPU_CAPABILITY::small_matmul,
          &CPU_CAPABILITY::gate_panels_size_any,
          &CPU_CAPABILITY::fused_sequence,
          C10_STRINGIZE(CPU_CAPABILITY)};
}

}  // namespace lstm_cpu
}  // namespace pydl
