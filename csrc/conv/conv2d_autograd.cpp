// Autograd for pydl::conv2d in C++ (every backend): the forward calls the op
// below autograd and saves its inputs and output; the backward calls
// pydl::conv2d_backward. Fake kernels, torch.compile and opcheck see the same
// two ops as before.
//
// Why C++: registered from Python (torch.library.register_autograd), every
// call paid the Python autograd bridge, no_grad included: ~7 us a layer, a
// sixth of a batch-1 depthwise layer (MobileNetV2, 384 channels at 14 x 14,
// ~45 us) on this project's 2-core Xeon.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <vector>

#include "common/autograd_helpers.h"

namespace pydl {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using namespace autograd_helpers;

using Conv2dFn = at::Tensor(const at::Tensor&, const at::Tensor&,
                            const std::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef,
                            at::IntArrayRef, int64_t, c10::string_view,
                            const std::optional<at::Tensor>&);
using Conv2dBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
    at::IntArrayRef, int64_t, c10::string_view, std::array<bool, 4>);

const c10::TypedOperatorHandle<Conv2dFn>& conv2d_op() {
  static const auto op = find_op<Conv2dFn>("pydl::conv2d");
  return op;
}

const c10::TypedOperatorHandle<Conv2dBackwardFn>& conv2d_backward_op() {
  static const auto op = find_op<Conv2dBackwardFn>("pydl::conv2d_backward");
  return op;
}

// Forward arguments: input, weight, bias?, stride, padding, dilation, groups,
// activation, residual?. One output.
class Conv2dFunction : public torch::autograd::Function<Conv2dFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups,
                               c10::string_view activation,
                               const std::optional<at::Tensor>& residual) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor out = conv2d_op().call(input, weight, bias, stride, padding, dilation, groups,
                                      activation, residual);
    ctx->save_for_backward(
        {input, weight, tensor_or_undefined(bias), tensor_or_undefined(residual), out});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["activation"] = std::string(activation);
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &bias = saved[2], &residual = saved[3];
    // Edges: input 0, weight 1, then bias and residual where given.
    const int bias_edge = bias.defined() ? 2 : -1;
    const int residual_edge = residual.defined() ? (bias.defined() ? 3 : 2) : -1;
    const bool need_bias = bias_edge >= 0 && ctx->needs_input_grad(bias_edge);
    const bool need_residual = residual_edge >= 0 && ctx->needs_input_grad(residual_edge);
    const std::array<bool, 4> wanted{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                     need_bias, need_residual};
    const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector();
    const std::vector<int64_t> padding = ctx->saved_data["padding"].toIntVector();
    const std::vector<int64_t> dilation = ctx->saved_data["dilation"].toIntVector();
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    auto [g_input, g_weight, g_bias, g_residual] = conv2d_backward_op().call(
        grads[0], saved[0], saved[1], optional_of(bias), optional_of(residual), saved[4], stride,
        padding, dilation, ctx->saved_data["groups"].toInt(), activation, wanted);
    // One gradient per forward argument (none for the geometry and activation).
    return {g_input,      g_weight,     need_bias ? g_bias : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), need_residual ? g_residual : at::Tensor()};
  }
};

at::Tensor conv2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           c10::string_view activation,
                           const std::optional<at::Tensor>& residual) {
  if (!needs_function({&input, &weight}, {&bias, &residual})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return conv2d_op().call(input, weight, bias, stride, padding, dilation, groups, activation,
                            residual);
  }
  return Conv2dFunction::apply(input, weight, bias, stride, padding, dilation, groups, activation,
                               residual)[0];
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> conv2d_backward_autograd(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
    const at::Tensor& out, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
    std::array<bool, 4> output_mask) {
  const at::Tensor b = tensor_or_undefined(bias);
  const at::Tensor r = tensor_or_undefined(residual);
  refuse_double_backward("pydl.conv2d",
                         requires_grad({&grad_out, &input, &weight, &b, &r, &out}));
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return conv2d_backward_op().call(grad_out, input, weight, bias, residual, out, stride, padding,
                                   dilation, groups, activation, output_mask);
}

}  // namespace
}  // namespace pydl

TORCH_LIBRARY_IMPL(pydl, Autograd, m) {
  m.impl("conv2d", &pydl::conv2d_autograd);
  m.impl("conv2d_backward", &pydl::conv2d_backward_autograd);
}
