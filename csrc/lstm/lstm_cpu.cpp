// LSTM cell on the CPU: the GEMMs, then one fused pointwise pass
// (lstm/cpu/lstm_cpu_kernel_isa.cpp) instead of torch's eight separate
// elementwise ops per step. Up to cell_small_batch_limit() rows the GEMMs are
// pydl's register kernels on the weights as stored (row_dot_matmul.h for the
// gates, weight_grad_matmul.h for the weight gradients); otherwise ATen (MKL).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>

#include "common/cpu_isa.h"
#include "lstm/cpu/lstm_cpu_kernel.h"
#include "lstm/lstm_checks.h"
#include "lstm/lstm_gradients.h"

namespace pydl {
namespace lstm_cpu {

PYDL_DEFINE_KERNEL_FOR_THIS_CPU()

namespace {

// Rows up to which the register kernels replace MKL in the cell (MKL's fixed
// cost per call dominates products this small). PYDL_LSTM_CELL_SMALL_BATCH
// overrides it (for measuring the switch, and for the tests of both sides).
int64_t cell_small_batch_limit() {
  static const int64_t limit = [] {
    const char* env = std::getenv("PYDL_LSTM_CELL_SMALL_BATCH");
    return env ? std::atoll(env) : int64_t(8);
  }();
  return limit;
}

bool cell_takes_register_kernels(const LstmCellShape& s) {
  return s.batch >= 1 && s.hidden >= 1 && s.batch <= cell_small_batch_limit();
}

// lstm_cell_gemm_grads for a few rows: the weight gradients (inner dimension
// = the batch, slow in MKL) by the register kernel, the rest as there.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
cell_gemm_grads_small(const LstmCellShape& s, const at::Tensor& grad_gates,
                      const at::Tensor& grad_cx, const at::Tensor& input, const at::Tensor& hx,
                      const at::Tensor& w_ih, const at::Tensor& w_hh,
                      std::array<bool, 6> output_mask) {
  const KernelTable& kernel = kernel_for_this_cpu();
  const bool is_double = input.scalar_type() == at::kDouble;
  const int64_t N = 4 * s.hidden;
  at::Tensor g_input, g_hx, g_cx, g_w_ih, g_w_hh, g_bias;
  if (output_mask[0]) g_input = at::mm(grad_gates, w_ih);
  if (output_mask[1]) g_hx = at::mm(grad_gates, w_hh);
  if (output_mask[2]) g_cx = grad_cx;
  // Both weight gradients in one call (one parallel region); k = 0 has none.
  WeightGradArgs args{s.batch, N, is_double, grad_gates.const_data_ptr(), {}, 0};
  const at::Tensor x = input.contiguous(), h = hx.contiguous();
  auto add = [&](at::Tensor& grad_w, const at::Tensor& a, int64_t k) {
    grad_w = at::empty({N, k}, input.options());
    if (k > 0) args.operands[args.count++] = {k, a.const_data_ptr(), grad_w.mutable_data_ptr()};
  };
  if (output_mask[3]) add(g_w_ih, x, s.input_size);
  if (output_mask[4]) add(g_w_hh, h, s.hidden);
  if (args.count > 0) kernel.weight_grad(args);
  if (output_mask[5]) {
    g_bias = at::empty({N}, input.options());
    kernel.column_sums(s.batch, N, is_double, grad_gates.const_data_ptr(),
                       g_bias.mutable_data_ptr());
  }
  return {g_input, g_hx, g_cx, g_w_ih, g_w_hh, g_bias};
}

// (hy, cy, workspace): workspace holds the activated gates for the backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_cpu(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh) {
  const LstmCellShape s = check_lstm_cell_args(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  check_lstm_cpu_dtype(input, "pydl.lstm_cell");
  // The biases are added by the pointwise pass (no broadcast op per step).
  const bool small = cell_takes_register_kernels(s);
  at::Tensor gates;
  if (small) {
    gates = at::empty({s.batch, 4 * s.hidden}, input.options());
  } else {
    gates = at::mm(input, w_ih.t());
    gates.addmm_(hx, w_hh.t());
  }
  const at::Tensor bi = b_ih.has_value() ? b_ih->contiguous() : at::Tensor();
  const at::Tensor bh = b_hh.has_value() ? b_hh->contiguous() : at::Tensor();
  const at::Tensor c0 = cx.contiguous();
  at::Tensor hy = at::empty({s.batch, s.hidden}, input.options());
  at::Tensor cy = at::empty({s.batch, s.hidden}, input.options());
  if (s.batch > 0 && s.hidden > 0) {
    const bool is_double = input.scalar_type() == at::kDouble;
    const CellForwardArgs pointwise{s.batch,
                                    s.hidden,
                                    is_double,
                                    gates.mutable_data_ptr(),
                                    bi.defined() ? bi.const_data_ptr() : nullptr,
                                    bh.defined() ? bh.const_data_ptr() : nullptr,
                                    c0.const_data_ptr(),
                                    hy.mutable_data_ptr(),
                                    cy.mutable_data_ptr()};
    if (small) {
      // Products and pointwise pass in one parallel region (register kernel).
      const at::Tensor x = input.contiguous(), h = hx.contiguous(), wi = w_ih.contiguous(),
                       wh = w_hh.contiguous();
      kernel_for_this_cpu().cell_step(CellStepArgs{s.batch, s.input_size, s.hidden, is_double,
                                                   x.const_data_ptr(), h.const_data_ptr(),
                                                   wi.const_data_ptr(), wh.const_data_ptr(),
                                                   pointwise});
    } else {
      kernel_for_this_cpu().cell_forward(pointwise);
    }
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
  if (cell_takes_register_kernels(s)) {
    return cell_gemm_grads_small(s, dgates, dcx, input, hx, w_ih, w_hh, output_mask);
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
