// The LSTM cell's pointwise part on CUDA, forward and backward: one thread
// per (row, hidden unit), all four gates of that unit in registers. The math
// runs in `Acc` (float for half/bfloat16/float, double for double); the
// activated gates are stored in the tensor's dtype as the backward's workspace.
// Gate order (i, f, g, o), as torch.nn.LSTM.
#pragma once

#include <cstdint>

namespace pydl {
namespace lstm_cuda {

template <typename Acc>
__device__ __forceinline__ Acc sigmoid(Acc x) {
  return Acc(1) / (Acc(1) + exp(-x));
}

// The previous cell state of a step's rows: rows below `split` from
// c_prev, the rest (sequences that start at this step: a reversed packed
// batch) from c_rest, the initial state; both row-major with H columns and
// indexed by the step's row, so the layer loop reads them where they lie
// instead of gathering them first. c_rest may be null when split == rows.
struct PreviousCells {
  int64_t split;
  const void* c_prev;
  const void* c_rest;
};

template <typename T>
__device__ __forceinline__ T previous_cell(const PreviousCells& c, int64_t row, int64_t idx) {
  return static_cast<const T*>(row < c.split ? c.c_prev : c.c_rest)[idx];
}

// gates (rows, 4H): pre-activations in, activated gates out. Biases may be
// null. cx is read before hy/cy are written; they must not alias.
template <typename T, typename Acc>
__global__ void cell_forward_kernel(int64_t rows, int64_t hidden, T* __restrict__ gates,
                                    const T* __restrict__ b_ih, const T* __restrict__ b_hh,
                                    PreviousCells cx, T* __restrict__ hy, T* __restrict__ cy) {
  const int64_t total = rows * hidden;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / hidden, j = idx - r * hidden;
    T* g = gates + r * 4 * hidden;
    Acc pre[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t col = q * hidden + j;
      Acc v = static_cast<Acc>(g[col]);
      if (b_ih != nullptr) v += static_cast<Acc>(b_ih[col]);
      if (b_hh != nullptr) v += static_cast<Acc>(b_hh[col]);
      pre[q] = v;
    }
    const Acc i = sigmoid(pre[0]), f = sigmoid(pre[1]), gg = tanh(pre[2]), o = sigmoid(pre[3]);
    const Acc c = f * static_cast<Acc>(previous_cell<T>(cx, r, idx)) + i * gg;
    cy[idx] = static_cast<T>(c);
    hy[idx] = static_cast<T>(o * tanh(c));
    g[j] = static_cast<T>(i);
    g[hidden + j] = static_cast<T>(f);
    g[2 * hidden + j] = static_cast<T>(gg);
    g[3 * hidden + j] = static_cast<T>(o);
  }
}

// grad_gates (rows, 4H) and grad_cx (rows, H) from the gradients reaching h
// (grad_hy + grad_h_extra, the latter may be null) and c. grad_cy may alias
// grad_cx: each element is read before it is written, by the same thread.
template <typename T, typename Acc>
__global__ void cell_backward_kernel(int64_t rows, int64_t hidden, const T* grad_hy,
                                     const T* grad_h_extra, const T* grad_cy, PreviousCells cx,
                                     const T* __restrict__ cy,
                                     const T* __restrict__ workspace,
                                     T* __restrict__ grad_gates, T* grad_cx) {
  const int64_t total = rows * hidden;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / hidden, j = idx - r * hidden;
    const T* w = workspace + r * 4 * hidden;
    const Acc i = static_cast<Acc>(w[j]), f = static_cast<Acc>(w[hidden + j]);
    const Acc g = static_cast<Acc>(w[2 * hidden + j]), o = static_cast<Acc>(w[3 * hidden + j]);
    const Acc tc = tanh(static_cast<Acc>(cy[idx]));
    Acc gh = static_cast<Acc>(grad_hy[idx]);
    if (grad_h_extra != nullptr) gh += static_cast<Acc>(grad_h_extra[idx]);
    const Acc gc = static_cast<Acc>(grad_cy[idx]) + gh * o * (Acc(1) - tc * tc);
    T* d = grad_gates + r * 4 * hidden;
    d[j] = static_cast<T>(gc * g * i * (Acc(1) - i));
    const Acc c_prev = static_cast<Acc>(previous_cell<T>(cx, r, idx));
    d[hidden + j] = static_cast<T>(gc * c_prev * f * (Acc(1) - f));
    d[2 * hidden + j] = static_cast<T>(gc * i * (Acc(1) - g * g));
    d[3 * hidden + j] = static_cast<T>(gh * tc * o * (Acc(1) - o));
    grad_cx[idx] = static_cast<T>(gc * f);
  }
}

}  // namespace lstm_cuda
}  // namespace pydl
