#include "lstm/lstm_checks.h"

namespace pydl {

LstmCellShape check_lstm_cell_args(const at::Tensor& input, const at::Tensor& hx,
                                   const at::Tensor& cx, const at::Tensor& w_ih,
                                   const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                                   const std::optional<at::Tensor>& b_hh) {
  TORCH_CHECK(input.dim() == 2, "pydl.lstm_cell: expected a 2-D input (batch, input_size), got ",
              input.dim(), "-D of shape ", input.sizes());
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) % 4 == 0,
              "pydl.lstm_cell: w_ih must be (4*hidden, input_size), got ", w_ih.sizes());
  const int64_t hidden = w_ih.size(0) / 4;
  LstmCellShape s{input.size(0), input.size(1), hidden};
  TORCH_CHECK(w_ih.size(1) == s.input_size, "pydl.lstm_cell: input has ", s.input_size,
              " features but w_ih expects ", w_ih.size(1));
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * hidden && w_hh.size(1) == hidden,
              "pydl.lstm_cell: w_hh must be (", 4 * hidden, ", ", hidden, "), got ", w_hh.sizes());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"hx", hx},
                                std::pair<const char*, const at::Tensor&>{"cx", cx}}) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == s.batch && t.size(1) == hidden, "pydl.lstm_cell: ",
                name, " must be (", s.batch, ", ", hidden, "), got ", t.sizes());
  }
  for (const at::Tensor* t : {&hx, &cx, &w_ih, &w_hh}) {
    TORCH_CHECK(t->scalar_type() == input.scalar_type() && t->device() == input.device(),
                "pydl.lstm_cell: every tensor must match the input's dtype and device (",
                input.scalar_type(), " on ", input.device(), "), got ", t->scalar_type(), " on ",
                t->device());
  }
  for (const auto* b : {&b_ih, &b_hh}) {
    if (!b->has_value()) continue;
    const at::Tensor& t = **b;
    TORCH_CHECK(t.dim() == 1 && t.size(0) == 4 * hidden, "pydl.lstm_cell: biases must be (",
                4 * hidden, "), got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == input.scalar_type() && t.device() == input.device(),
                "pydl.lstm_cell: biases must match the input's dtype and device");
  }
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "pydl.lstm_cell: expected floating-point tensors, got ", input.scalar_type());
  return s;
}

namespace {

void check_same_dtype_device(const at::Tensor& t, const at::Tensor& input, const char* name) {
  TORCH_CHECK(t.scalar_type() == input.scalar_type() && t.device() == input.device(),
              "pydl.lstm_layer: ", name, " must match the input's dtype and device (",
              input.scalar_type(), " on ", input.device(), "), got ", t.scalar_type(), " on ",
              t.device());
}

}  // namespace

LstmLayerShape check_lstm_layer_args(const at::Tensor& input, const at::Tensor& batch_sizes,
                                     const at::Tensor& hx, const at::Tensor& cx,
                                     const at::Tensor& w_ih, const at::Tensor& w_hh,
                                     const std::optional<at::Tensor>& b_ih,
                                     const std::optional<at::Tensor>& b_hh,
                                     const std::optional<at::Tensor>& w_hr) {
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "pydl.lstm_layer: expected floating-point tensors, got ", input.scalar_type());
  TORCH_CHECK(input.dim() == 2,
              "pydl.lstm_layer: expected input rows (N, input_size) in PackedSequence layout, got ",
              input.dim(), "-D of shape ", input.sizes());
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) % 4 == 0 && w_ih.size(0) > 0,
              "pydl.lstm_layer: w_ih must be (4*hidden, input_size), got ", w_ih.sizes());
  const int64_t hidden = w_ih.size(0) / 4;
  const bool projected = w_hr.has_value() && w_hr->defined();
  const int64_t out = projected ? w_hr->size(0) : hidden;
  if (projected) {
    TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(1) == hidden && w_hr->size(0) > 0 &&
                    w_hr->size(0) < hidden,
                "pydl.lstm_layer: w_hr must be (proj_size, ", hidden,
                ") with 0 < proj_size < hidden, got ", w_hr->sizes());
    check_same_dtype_device(*w_hr, input, "w_hr");
  }
  TORCH_CHECK(w_ih.size(1) == input.size(1), "pydl.lstm_layer: input has ", input.size(1),
              " features but w_ih expects ", w_ih.size(1));
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * hidden && w_hh.size(1) == out,
              "pydl.lstm_layer: w_hh must be (", 4 * hidden, ", ", out, "), got ", w_hh.sizes());
  TORCH_CHECK(hx.dim() == 2 && hx.size(1) == out, "pydl.lstm_layer: hx must be (batch, ", out,
              "), got ", hx.sizes());
  const int64_t batch = hx.size(0);
  TORCH_CHECK(cx.dim() == 2 && cx.size(0) == batch && cx.size(1) == hidden,
              "pydl.lstm_layer: cx must be (", batch, ", ", hidden, "), got ", cx.sizes());
  check_same_dtype_device(hx, input, "hx");
  check_same_dtype_device(cx, input, "cx");
  check_same_dtype_device(w_ih, input, "w_ih");
  check_same_dtype_device(w_hh, input, "w_hh");
  for (const auto* b : {&b_ih, &b_hh}) {
    if (!b->has_value()) continue;
    TORCH_CHECK((*b)->dim() == 1 && (*b)->size(0) == 4 * hidden,
                "pydl.lstm_layer: biases must be (", 4 * hidden, "), got ", (*b)->sizes());
    check_same_dtype_device(**b, input, "biases");
  }

  TORCH_CHECK(batch_sizes.dim() == 1 && batch_sizes.scalar_type() == at::kLong &&
                  batch_sizes.device().is_cpu(),
              "pydl.lstm_layer: batch_sizes must be a 1-D int64 CPU tensor (as in "
              "PackedSequence), got ", batch_sizes.scalar_type(), " of shape ",
              batch_sizes.sizes(), " on ", batch_sizes.device());
  const at::Tensor sizes = batch_sizes.contiguous();
  const int64_t* bs = sizes.const_data_ptr<int64_t>();
  int64_t rows = 0;
  for (int64_t t = 0; t < sizes.numel(); ++t) {
    TORCH_CHECK(bs[t] >= 0 && bs[t] <= batch && (t == 0 || bs[t] <= bs[t - 1]),
                "pydl.lstm_layer: batch_sizes must be non-increasing and within [0, batch=",
                batch, "] (sequences sorted longest first), got ", batch_sizes);
    rows += bs[t];
  }
  TORCH_CHECK(rows == input.size(0), "pydl.lstm_layer: batch_sizes sum to ", rows,
              " rows but the input has ", input.size(0));
  return {rows, input.size(1), batch, hidden, out, sizes.numel()};
}

namespace {

void expect_saved(const char* op, const at::Tensor& t, at::IntArrayRef shape, const char* name,
                  const at::Tensor& input) {
  TORCH_CHECK(t.sizes() == shape && t.scalar_type() == input.scalar_type() &&
                  t.device() == input.device(),
              op, ": ", name, " must be ", shape, " ", input.scalar_type(), " on ",
              input.device(), ", got ", t.sizes(), " ", t.scalar_type(), " on ", t.device());
}

}  // namespace

void check_lstm_cell_backward_args(const LstmCellShape& s, const at::Tensor& input,
                                   const at::Tensor& grad_hy, const at::Tensor& grad_cy,
                                   const at::Tensor& cy, const at::Tensor& workspace) {
  const char* op = "pydl.lstm_cell_backward";
  expect_saved(op, grad_hy, {s.batch, s.hidden}, "grad_hy", input);
  expect_saved(op, grad_cy, {s.batch, s.hidden}, "grad_cy", input);
  expect_saved(op, cy, {s.batch, s.hidden}, "cy", input);
  expect_saved(op, workspace, {s.batch, 4 * s.hidden}, "workspace", input);
}

void check_lstm_layer_backward_args(const LstmLayerShape& s, bool projected,
                                    const at::Tensor& input, const at::Tensor& grad_output,
                                    const at::Tensor& grad_hy, const at::Tensor& grad_cy,
                                    const at::Tensor& output, const at::Tensor& gates,
                                    const at::Tensor& cells, const at::Tensor& hidden_pre) {
  const char* op = "pydl.lstm_layer_backward";
  expect_saved(op, grad_output, {s.rows, s.out}, "grad_output", input);
  expect_saved(op, grad_hy, {s.batch, s.out}, "grad_hy", input);
  expect_saved(op, grad_cy, {s.batch, s.hidden}, "grad_cy", input);
  expect_saved(op, output, {s.rows, s.out}, "output", input);
  expect_saved(op, gates, {s.rows, 4 * s.hidden}, "gates", input);
  expect_saved(op, cells, {s.rows, s.hidden}, "cells", input);
  expect_saved(op, hidden_pre, {projected ? s.rows : 0, s.hidden}, "hidden_pre", input);
}

void check_lstm_cpu_dtype(const at::Tensor& input, const char* op) {
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              " (CPU): supports float32 and float64, got ", input.scalar_type());
}

}  // namespace pydl
