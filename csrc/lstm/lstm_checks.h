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

}  // namespace pydl
