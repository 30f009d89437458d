// Autograd for pydl::lstm_cell and pydl::lstm_layer, in C++ (every backend):
// forward and backward redispatch to the ops and their *_backward ops, so
// fake kernels, torch.compile and opcheck see the same ops as before.
//
// The ops' saved-state outputs (the cell's workspace; the layer's gates,
// cells, hidden_pre) are returned beside the Function, not by it: they get
// no gradient edge, like non-differentiable outputs, without
// mark_non_differentiable (which compiled autograd does not support).
//
// Why C++: a Python loop over LSTMCell steps pays the autograd bridge once
// per step in the forward and once in the backward; in Python
// (torch.library.register_autograd) that cost 25-45 us per step at batch 8,
// hidden 128, more than the step's arithmetic. A layer call paid ~8 us of it
// even under no_grad (batch-1 inference) and ~34 us with gradients.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>
#include <initializer_list>

#include "common/autograd_helpers.h"
#include "lstm/lstm_layer_op.h"

namespace pydl {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using namespace autograd_helpers;

using CellFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&);
using CellBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                  at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, std::array<bool, 6>);
using LayerBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                   at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, bool, std::array<bool, 7>);

// needs_input_grad counts only the tensors given (an absent optional tensor
// has no edge): the edge index of each optional argument, or -1 if absent.
template <size_t N>
std::array<int, N> optional_edges(int first_edge, const std::array<bool, N>& given) {
  std::array<int, N> edges{};
  int next = first_edge;
  for (size_t i = 0; i < N; ++i) edges[i] = given[i] ? next++ : -1;
  return edges;
}

bool needs_grad(AutogradContext* ctx, int edge) {
  return edge >= 0 && ctx->needs_input_grad(edge);
}

// b_ih and b_hh share one gradient; the second gets its own copy when both
// are asked for (autograd.grad would otherwise return one tensor twice).
at::Tensor second_use(const at::Tensor& grad, bool first_used) {
  return first_used ? grad.clone() : grad;
}

// The ops, looked up once each (lstm_layer_op(), shared with lstm_stack.cpp,
// at the end of this file); backward ops are called through these both
// by the Functions and by the backward ops' own Autograd kernels below.
const c10::TypedOperatorHandle<CellFn>& cell_op() {
  static const auto op = find_op<CellFn>("pydl::lstm_cell");
  return op;
}

const c10::TypedOperatorHandle<CellBackwardFn>& cell_backward_op() {
  static const auto op = find_op<CellBackwardFn>("pydl::lstm_cell_backward");
  return op;
}

const c10::TypedOperatorHandle<LayerBackwardFn>& layer_backward_op() {
  static const auto op = find_op<LayerBackwardFn>("pydl::lstm_layer_backward");
  return op;
}

class LstmCellFunction : public torch::autograd::Function<LstmCellFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
                               const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                               const std::optional<at::Tensor>& b_hh, at::Tensor* workspace_out) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [hy, cy, workspace] = cell_op().call(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
    ctx->save_for_backward({input, hx, cx, cy, workspace, w_ih, w_hh});
    ctx->saved_data["has_b_ih"] = present(b_ih);
    ctx->saved_data["has_b_hh"] = present(b_hh);
    ctx->set_materialize_grads(false);  // zeros only where hy/cy's gradient is missing
    *workspace_out = workspace;
    return {hy, cy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const auto bias_edges = optional_edges<2>(
        5, {ctx->saved_data["has_b_ih"].toBool(), ctx->saved_data["has_b_hh"].toBool()});
    const bool need_b_ih = needs_grad(ctx, bias_edges[0]);
    const bool need_b_hh = needs_grad(ctx, bias_edges[1]);
    const std::array<bool, 6> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   ctx->needs_input_grad(2), ctx->needs_input_grad(3),
                                   ctx->needs_input_grad(4), need_b_ih || need_b_hh};
    const at::Tensor& cy = saved[3];
    auto [g_input, g_hx, g_cx, g_w_ih, g_w_hh, g_bias] =
        cell_backward_op().call(or_zeros(grads[0], cy), or_zeros(grads[1], cy), saved[0],
                                saved[1], saved[2], saved[3], saved[4], saved[5], saved[6], mask);
    // One gradient per forward argument: undefined for an absent bias and
    // the workspace pointer.
    return {g_input, g_hx, g_cx, g_w_ih, g_w_hh, need_b_ih ? g_bias : at::Tensor(),
            need_b_hh ? second_use(g_bias, need_b_ih) : at::Tensor(), at::Tensor()};
  }
};

// Forward arguments: input, batch_sizes, hx, cx, w_ih, w_hh, b_ih?, b_hh?,
// w_hr?, reverse. Outputs: output, hy, cy and the saved gates, cells,
// hidden_pre (not differentiable).
class LstmLayerFunction : public torch::autograd::Function<LstmLayerFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& batch_sizes, const at::Tensor& hx,
                               const at::Tensor& cx, const at::Tensor& w_ih,
                               const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                               const std::optional<at::Tensor>& b_hh,
                               const std::optional<at::Tensor>& w_hr, bool reverse,
                               std::array<at::Tensor, 3>* saved_out) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, hy, cy, gates, cells, hidden_pre] =
        lstm_layer_op().call(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse);
    const at::Tensor projection = tensor_or_undefined(w_hr);
    ctx->save_for_backward(
        {input, batch_sizes, hx, cx, w_ih, w_hh, projection, out, gates, cells, hidden_pre});
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["has_b_ih"] = present(b_ih);
    ctx->saved_data["has_b_hh"] = present(b_hh);
    ctx->set_materialize_grads(false);
    *saved_out = {gates, cells, hidden_pre};
    return {out, hy, cy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &batch_sizes = saved[1], &hx = saved[2], &cx = saved[3],
                     &w_ih = saved[4], &w_hh = saved[5], &w_hr = saved[6], &out = saved[7];
    // Edges 0-5: input, batch_sizes, hx, cx, w_ih, w_hh; then the optional ones.
    const auto edges = optional_edges<3>(
        6, {ctx->saved_data["has_b_ih"].toBool(), ctx->saved_data["has_b_hh"].toBool(),
            w_hr.defined()});
    const bool need_b_ih = needs_grad(ctx, edges[0]);
    const bool need_b_hh = needs_grad(ctx, edges[1]);
    const std::array<bool, 7> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(2),
                                   ctx->needs_input_grad(3), ctx->needs_input_grad(4),
                                   ctx->needs_input_grad(5), need_b_ih || need_b_hh,
                                   needs_grad(ctx, edges[2])};
    auto [g_input, g_hx, g_cx, g_w_ih, g_w_hh, g_bias, g_w_hr] =
        layer_backward_op().call(or_zeros(grads[0], out), or_zeros(grads[1], hx),
                                 or_zeros(grads[2], cx), input, batch_sizes, hx, cx, w_ih, w_hh,
                                 optional_of(w_hr), out, saved[8], saved[9], saved[10],
                                 ctx->saved_data["reverse"].toBool(), mask);
    // One gradient per forward argument (none for batch_sizes, reverse and
    // the saved-state pointer).
    return {g_input,
            at::Tensor(),
            g_hx,
            g_cx,
            g_w_ih,
            g_w_hh,
            need_b_ih ? g_bias : at::Tensor(),
            need_b_hh ? second_use(g_bias, need_b_ih) : at::Tensor(),
            g_w_hr,
            at::Tensor(),
            at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_autograd(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh) {
  if (!needs_function({&input, &hx, &cx, &w_ih, &w_hh}, {&b_ih, &b_hh})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return cell_op().call(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  }
  at::Tensor workspace;
  variable_list out =
      LstmCellFunction::apply(input, hx, cx, w_ih, w_hh, b_ih, b_hh, &workspace);
  return {out[0], out[1], workspace};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_layer_autograd(const at::Tensor& input, const at::Tensor& batch_sizes, const at::Tensor& hx,
                    const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                    const std::optional<at::Tensor>& w_hr, bool reverse) {
  if (!needs_function({&input, &hx, &cx, &w_ih, &w_hh}, {&b_ih, &b_hh, &w_hr})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return lstm_layer_op().call(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse);
  }
  std::array<at::Tensor, 3> saved;
  variable_list out = LstmLayerFunction::apply(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh,
                                               w_hr, reverse, &saved);
  return {out[0], out[1], out[2], saved[0], saved[1], saved[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_cell_backward_autograd(const at::Tensor& grad_hy, const at::Tensor& grad_cy,
                            const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                            const at::Tensor& cy, const at::Tensor& workspace,
                            const at::Tensor& w_ih, const at::Tensor& w_hh,
                            std::array<bool, 6> output_mask) {
  refuse_double_backward("pydl.lstm_cell",
                         requires_grad({&grad_hy, &grad_cy, &input, &hx, &cx, &cy, &workspace,
                                        &w_ih, &w_hh}));
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return cell_backward_op().call(grad_hy, grad_cy, input, hx, cx, cy, workspace, w_ih, w_hh,
                                 output_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_layer_backward_autograd(const at::Tensor& grad_output, const at::Tensor& grad_hy,
                             const at::Tensor& grad_cy, const at::Tensor& input,
                             const at::Tensor& batch_sizes, const at::Tensor& hx,
                             const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                             const std::optional<at::Tensor>& w_hr, const at::Tensor& output,
                             const at::Tensor& gates, const at::Tensor& cells,
                             const at::Tensor& hidden_pre, bool reverse,
                             std::array<bool, 7> output_mask) {
  const at::Tensor projection = tensor_or_undefined(w_hr);
  refuse_double_backward("pydl.lstm_layer",
                         requires_grad({&grad_output, &grad_hy, &grad_cy, &input, &hx, &cx,
                                        &w_ih, &w_hh, &projection, &output, &gates, &cells,
                                        &hidden_pre}));
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return layer_backward_op().call(grad_output, grad_hy, grad_cy, input, batch_sizes, hx, cx, w_ih,
                                  w_hh, w_hr, output, gates, cells, hidden_pre, reverse,
                                  output_mask);
}

}  // namespace

const c10::TypedOperatorHandle<LstmLayerFn>& lstm_layer_op() {
  static const auto op = find_op<LstmLayerFn>("pydl::lstm_layer");
  return op;
}

}  // namespace pydl

TORCH_LIBRARY_IMPL(pydl, Autograd, m) {
  m.impl("lstm_cell", &pydl::lstm_cell_autograd);
  m.impl("lstm_layer", &pydl::lstm_layer_autograd);
  m.impl("lstm_cell_backward", &pydl::lstm_cell_backward_autograd);
  m.impl("lstm_layer_backward", &pydl::lstm_layer_backward_autograd);
}
