// LSTM cell on the CPU: the two GEMMs through ATen (MKL), then one fused
// pointwise pass (lstm/cpu/lstm_cpu_kernel_isa.cpp) instead of torch's eight
// separate elementwise ops per step.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/cpu_isa.h"
#include "lstm/cpu/lstm_cpu_kernel.h"
#include "lstm/lstm_checks.h"
#include "lstm/lstm_gradients.h"

namespace pydl {
namespace lstm_cpu {

const KernelTable& kernel_for_this_cpu() {
  static const KernelTable table =
      select_cpu_isa(&kernel_table_DEFAULT, PYDL_IF_AVX2(kernel_table_AVX2),
                     PYDL_IF_AVX512(kernel_table_AVX512));
  return table;
}

namespace {

// (hy, cy, workspace): workspace holds the activated gates for the backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_cpu(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh) {
  const LstmCellShape s = check_lstm_cell_args(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  check_lstm_cpu_dtype(input, "pydl.lstm_cell");
  // The biases are added by the pointwise pass (no broadcast op per step).
  at::Tensor gates = at::mm(input, w_ih.t());
  gates.addmm_(hx, w_hh.t());
  const at::Tensor bi = b_ih.has_value() ? b_ih->contiguous() : at::Tensor();
  const at::Tensor bh = b_hh.has_value() ? b_hh->contiguous() : at::Tensor();
  const at::Tensor c0 = cx.contiguous();
  at::Tensor hy = at::empty({s.batch, s.hidden}, input.options());
  at::Tensor cy = at::empty({s.batch, s.hidden}, input.options());
  if (s.batch > 0 && s.hidden > 0) {
    CellForwardArgs a{s.batch,
                      s.hidden,
                      input.scalar_type() == at::kDouble,
                      gates.mutable_data_ptr(),
                      bi.defined() ? bi.const_data_ptr() : nullptr,
                      bh.defined() ? bh.const_data_ptr() : nullptr,
                      c0.const_data_ptr(),
                      hy.mutable_data_ptr(),
                      cy.mutable_data_ptr()};
    kernel_for_this_cpu().cell_forward(a);
  }
  return {hy, cy, gates};
}

// Gradients (input, hx, cx, w_ih, w_hh, bias); the bias gradient is the same
// for b_ih and b_hh. output_mask selects which are computed.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_cell_backward_cpu(const at::Tensor& grad_hy, const at::Tensor& grad_cy,
                       const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                       const at::Tensor& cy, const at::Tensor& workspace, const at::Tensor& w_ih,
                       const at::Tensor& w_hh, std::array<bool, 6> output_mask) {
  const LstmCellShape s =
      check_lstm_cell_args(input, hx, cx, w_ih, w_hh, std::nullopt, std::nullopt);
  check_lstm_cpu_dtype(input, "pydl.lstm_cell");
  check_lstm_cell_backward_args(s, input, grad_hy, grad_cy, cy, workspace);
  const at::Tensor dh = grad_hy.contiguous(), dc = grad_cy.contiguous(), c0 = cx.contiguous(),
                   c1 = cy.contiguous(), ws = workspace.contiguous();
  at::Tensor dgates = at::empty({s.batch, 4 * s.hidden}, input.options());
  at::Tensor dcx = at::empty({s.batch, s.hidden}, input.options());
  if (s.batch > 0 && s.hidden > 0) {
    CellBackwardArgs a{s.batch,           s.hidden,
                       input.scalar_type() == at::kDouble,
                       dh.const_data_ptr(), /*grad_h_extra=*/nullptr,
                       dc.const_data_ptr(),
                       c0.const_data_ptr(), c1.const_data_ptr(),
                       ws.const_data_ptr(), dgates.mutable_data_ptr(),
                       dcx.mutable_data_ptr()};
    kernel_for_this_cpu().cell_backward(a);
  }
  return lstm_cell_gemm_grads(dgates, dcx, input, hx, w_ih, w_hh, output_mask);
}

}  // namespace
}  // namespace lstm_cpu
}  // namespace pydl

TORCH_LIBRARY_IMPL(pydl, CPU, m) {
  m.impl("lstm_cell", &pydl::lstm_cpu::lstm_cell_cpu);
  m.impl("lstm_cell_backward", &pydl::lstm_cpu::lstm_cell_backward_cpu);
}
