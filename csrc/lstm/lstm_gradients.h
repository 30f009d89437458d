// The LSTM gradients that are plain GEMMs over all rows once the pointwise
// backward has produced the gate gradients: the same ATen calls on every
// backend (MKL on the CPU, cuBLAS on CUDA).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

namespace pydl {

// (input, hx, cx, w_ih, w_hh, bias) of one cell step; grad_cx comes from the
// pointwise pass. output_mask selects which are computed.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_cell_gemm_grads(const at::Tensor& grad_gates, const at::Tensor& grad_cx,
                     const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                     const at::Tensor& w_hh, std::array<bool, 6> output_mask);

// (input, hx, cx, w_ih, w_hh, bias, w_hr) of a layer: grad_h0/grad_c0 are the
// running gradients left after the first step; h_prev (N, P) holds every
// row's previous h (only read when w_hh's gradient is asked for);
// grad_h_total (N, P) the gradient reaching each output row (with w_hr).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_layer_gemm_grads(const at::Tensor& grad_gates, const at::Tensor& grad_h0,
                      const at::Tensor& grad_c0, const at::Tensor& input,
                      const at::Tensor& h_prev, const at::Tensor& w_ih,
                      const at::Tensor& grad_h_total, const at::Tensor& hidden_pre,
                      bool projected, std::array<bool, 7> output_mask);

}  // namespace pydl
