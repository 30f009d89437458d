// LSTM argument validation, shared by every backend's entry points.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace pydl {

struct LstmCellShape {
  int64_t batch, input_size, hidden;
};

// input (B, I), hx/cx (B, H), w_ih (4H, I), w_hh (4H, H), b_ih/b_hh (4H).
LstmCellShape check_lstm_cell_args(const at::Tensor& input, const at::Tensor& hx,
                                   const at::Tensor& cx, const at::Tensor& w_ih,
                                   const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                                   const std::optional<at::Tensor>& b_hh);

// One layer, one direction, whole sequence, in PackedSequence's layout:
// input (N, I) holds the rows of step 0, then step 1, ...; step t has
// batch_sizes[t] rows (non-increasing: sequences sorted by length, longest
// first). A padded (T, B, I) batch is the case batch_sizes = [B] * T.
struct LstmLayerShape {
  int64_t rows;        // N = sum(batch_sizes)
  int64_t input_size;  // I
  int64_t batch;       // B: rows of hx/cx (>= batch_sizes[0])
  int64_t hidden;      // H
  int64_t out;         // P: proj_size, or H without a projection
  int64_t steps;       // T
};

// hx (B, P), cx (B, H), w_ih (4H, I), w_hh (4H, P), biases (4H), w_hr (P, H).
// batch_sizes: 1-D int64 on the CPU (as in torch's PackedSequence).
LstmLayerShape check_lstm_layer_args(const at::Tensor& input, const at::Tensor& batch_sizes,
                                     const at::Tensor& hx, const at::Tensor& cx,
                                     const at::Tensor& w_ih, const at::Tensor& w_hh,
                                     const std::optional<at::Tensor>& b_ih,
                                     const std::optional<at::Tensor>& b_hh,
                                     const std::optional<at::Tensor>& w_hr);

// The CPU kernels compute in float32 and float64 only; `op` names the caller.
void check_lstm_cpu_dtype(const at::Tensor& input, const char* op);

// The backward's extra arguments: gradients and what the forward saved,
// shaped as the forward made them, same dtype and device as the input.
void check_lstm_cell_backward_args(const LstmCellShape& s, const at::Tensor& input,
                                   const at::Tensor& grad_hy, const at::Tensor& grad_cy,
                                   const at::Tensor& cy, const at::Tensor& workspace);
void check_lstm_layer_backward_args(const LstmLayerShape& s, bool projected,
                                    const at::Tensor& input, const at::Tensor& grad_output,
                                    const at::Tensor& grad_hy, const at::Tensor& grad_cy,
                                    const at::Tensor& output, const at::Tensor& gates,
                                    const at::Tensor& cells, const at::Tensor& hidden_pre);

}  // namespace pydl
