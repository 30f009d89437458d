// Autograd for pydl::lstm_cell, in C++ (every backend): forward and backward
// redispatch to the lstm_cell / lstm_cell_backward ops, so fake kernels,
// torch.compile and opcheck see the same ops as before.
//
// Why C++: a Python loop over LSTMCell steps pays the autograd bridge once
// per step in the forward and once in the backward; in Python
// (torch.library.register_autograd) that cost 25-45 us per step at batch 8,
// hidden 128, more than the step's arithmetic.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>

namespace pydl {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using CellFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&);
using CellBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                  at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, std::array<bool, 6>);

bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

class LstmCellFunction : public torch::autograd::Function<LstmCellFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
                               const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                               const std::optional<at::Tensor>& b_hh) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("pydl::lstm_cell", "")
                               .typed<CellFn>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [hy, cy, workspace] = op.call(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
    ctx->save_for_backward({input, hx, cx, cy, workspace, w_ih, w_hh});
    ctx->saved_data["has_b_ih"] = present(b_ih);
    ctx->saved_data["has_b_hh"] = present(b_hh);
    ctx->mark_non_differentiable({workspace});
    // Zeros only where hy/cy's gradient is missing, never for the workspace's.
    ctx->set_materialize_grads(false);
    return {hy, cy, workspace};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("pydl::lstm_cell_backward", "")
                               .typed<CellBackwardFn>();
    const variable_list saved = ctx->get_saved_variables();
    const bool has_b_ih = ctx->saved_data["has_b_ih"].toBool();
    const bool has_b_hh = ctx->saved_data["has_b_hh"].toBool();
    // needs_input_grad counts only the tensors given: an absent b_ih shifts b_hh's index.
    const bool need_b_ih = has_b_ih && ctx->needs_input_grad(5);
    const bool need_b_hh = has_b_hh && ctx->needs_input_grad(has_b_ih ? 6 : 5);
    const std::array<bool, 6> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   ctx->needs_input_grad(2), ctx->needs_input_grad(3),
                                   ctx->needs_input_grad(4), need_b_ih || need_b_hh};
    const at::Tensor& cy = saved[3];
    const at::Tensor grad_hy = grads[0].defined() ? grads[0] : at::zeros_like(cy);
    const at::Tensor grad_cy = grads[1].defined() ? grads[1] : at::zeros_like(cy);
    auto [g_input, g_hx, g_cx, g_w_ih, g_w_hh, g_bias] =
        op.call(grad_hy, grad_cy, saved[0], saved[1], saved[2], saved[3], saved[4], saved[5],
                saved[6], mask);
    // One gradient per forward argument: undefined for an absent bias.
    return {g_input, g_hx, g_cx, g_w_ih, g_w_hh, need_b_ih ? g_bias : at::Tensor(),
            need_b_hh ? g_bias : at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_autograd(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh) {
  variable_list out = LstmCellFunction::apply(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  return {out[0], out[1], out[2]};
}

}  // namespace
}  // namespace pydl

TORCH_LIBRARY_IMPL(pydl, Autograd, m) {
  m.impl("lstm_cell", &pydl::lstm_cell_autograd);
}
