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

}  // namespace pydl
