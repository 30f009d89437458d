#include "lstm/lstm_gradients.h"

namespace pydl {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_cell_gemm_grads(const at::Tensor& grad_gates, const at::Tensor& grad_cx,
                     const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                     const at::Tensor& w_hh, std::array<bool, 6> output_mask) {
  at::Tensor g_input, g_hx, g_cx, g_w_ih, g_w_hh, g_bias;
  if (output_mask[0]) g_input = at::mm(grad_gates, w_ih);
  if (output_mask[1]) g_hx = at::mm(grad_gates, w_hh);
  if (output_mask[2]) g_cx = grad_cx;
  if (output_mask[3]) g_w_ih = at::mm(grad_gates.t(), input);
  if (output_mask[4]) g_w_hh = at::mm(grad_gates.t(), hx);
  if (output_mask[5]) g_bias = grad_gates.sum(0);
  return {g_input, g_hx, g_cx, g_w_ih, g_w_hh, g_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_layer_gemm_grads(const at::Tensor& grad_gates, const at::Tensor& grad_h0,
                      const at::Tensor& grad_c0, const at::Tensor& input,
                      const at::Tensor& h_prev, const at::Tensor& w_ih,
                      const at::Tensor& grad_h_total, const at::Tensor& hidden_pre,
                      bool projected, std::array<bool, 7> output_mask) {
  at::Tensor g_input, g_hx, g_cx, g_w_ih, g_w_hh, g_bias, g_w_hr;
  if (output_mask[0]) g_input = at::mm(grad_gates, w_ih);
  if (output_mask[1]) g_hx = grad_h0;
  if (output_mask[2]) g_cx = grad_c0;
  if (output_mask[3]) g_w_ih = at::mm(grad_gates.t(), input);
  if (output_mask[4]) g_w_hh = at::mm(grad_gates.t(), h_prev);
  if (output_mask[5]) g_bias = grad_gates.sum(0);
  if (output_mask[6] && projected) g_w_hr = at::mm(grad_h_total.t(), hidden_pre);
  return {g_input, g_hx, g_cx, g_w_ih, g_w_hh, g_bias, g_w_hr};
}

}  // namespace pydl
