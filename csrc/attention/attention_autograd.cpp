// Autograd for pydl::attention and pydl::attention_with_weights in C++
// (every backend): the forward calls the op below autograd and saves what
// its backward op needs; the backward calls the *_backward op. Fake kernels,
// torch.compile and opcheck see the same ops as before.
//
// Why C++: registered from Python (torch.library.register_autograd), every
// call of the op paid the Python autograd bridge, no_grad included: about
// 8 us of a 64 us decoding step (one query row, 8 heads, 1024 keys) on this
// project's 2-core Xeon, where torch's own SDPA pays none.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>

#include "common/autograd_helpers.h"

namespace pydl {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using namespace autograd_helpers;

using AttentionFn = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, double, bool, bool, double);
using AttentionBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const at::Tensor&,
    const at::Tensor&, const std::optional<at::Tensor>&, double, bool, bool, double,
    std::array<bool, 4>);

using WeightsFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, double, bool, bool, double, bool);
using WeightsBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const at::Tensor&, double, bool, bool, double, bool,
    std::array<bool, 4>);

const c10::TypedOperatorHandle<AttentionFn>& attention_op() {
  static const auto op = find_op<AttentionFn>("pydl::attention");
  return op;
}

const c10::TypedOperatorHandle<AttentionBackwardFn>& attention_backward_op() {
  static const auto op = find_op<AttentionBackwardFn>("pydl::attention_backward");
  return op;
}

const c10::TypedOperatorHandle<WeightsFn>& weights_op() {
  static const auto op = find_op<WeightsFn>("pydl::attention_with_weights");
  return op;
}

const c10::TypedOperatorHandle<WeightsBackwardFn>& weights_backward_op() {
  static const auto op = find_op<WeightsBackwardFn>("pydl::attention_with_weights_backward");
  return op;
}

// The op's scalar arguments, saved by both Functions for their backward op.
struct Flags {
  double dropout_p;
  bool is_causal, bottom_right;
  double scale;

  void save(AutogradContext* ctx) const {
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["is_causal"] = is_causal;
    ctx->saved_data["bottom_right"] = bottom_right;
    ctx->saved_data["scale"] = scale;
  }
  static Flags load(AutogradContext* ctx) {
    return {ctx->saved_data["dropout_p"].toDouble(), ctx->saved_data["is_causal"].toBool(),
            ctx->saved_data["bottom_right"].toBool(), ctx->saved_data["scale"].toDouble()};
  }
};

// The backward op's output_mask: query, key, value (edges 0-2) and a float
// mask's gradient (edge 3, which exists only when the mask was given).
std::array<bool, 4> wanted_grads(AutogradContext* ctx, const at::Tensor& mask) {
  return {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2),
          mask.defined() && mask.scalar_type() != at::kBool && ctx->needs_input_grad(3)};
}

// Forward arguments: query, key, value, attn_mask?, dropout_seed?,
// dropout_p, is_causal, causal_bottom_right, scale. Outputs: out and lse,
// both differentiable (lse's gradient reaches q, k and a float mask).
class AttentionFunction : public torch::autograd::Function<AttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& query,
                               const at::Tensor& key, const at::Tensor& value,
                               const std::optional<at::Tensor>& attn_mask,
                               const std::optional<at::Tensor>& dropout_seed, double dropout_p,
                               bool is_causal, bool bottom_right, double scale) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, lse] = attention_op().call(query, key, value, attn_mask, dropout_seed, dropout_p,
                                          is_causal, bottom_right, scale);
    ctx->save_for_backward({query, key, value, tensor_or_undefined(attn_mask),
                            tensor_or_undefined(dropout_seed), out, lse});
    Flags{dropout_p, is_causal, bottom_right, scale}.save(ctx);
    ctx->set_materialize_grads(false);  // grad_lse stays None when lse was unused
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &mask = saved[3], &out = saved[5];
    const std::array<bool, 4> wanted = wanted_grads(ctx, mask);
    const Flags f = Flags::load(ctx);
    auto [g_q, g_k, g_v, g_mask] = attention_backward_op().call(
        or_zeros(grads[0], out), saved[0], saved[1], saved[2], optional_of(mask),
        optional_of(saved[4]), out, saved[6], optional_of(grads[1]), f.dropout_p, f.is_causal,
        f.bottom_right, f.scale, wanted);
    // One gradient per forward argument (none for the seed and the scalars).
    return {g_q,          g_k,          g_v,          wanted[3] ? g_mask : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

// Forward arguments: those of AttentionFunction plus average_heads. Outputs:
// out and weights; the lse (saved for the backward) is returned beside the
// Function, not by it, so it gets no gradient edge, as a non-differentiable
// output, without mark_non_differentiable (which compiled autograd does not
// support).
class WeightsFunction : public torch::autograd::Function<WeightsFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& query,
                               const at::Tensor& key, const at::Tensor& value,
                               const std::optional<at::Tensor>& attn_mask,
                               const std::optional<at::Tensor>& dropout_seed, double dropout_p,
                               bool is_causal, bool bottom_right, double scale,
                               bool average_heads, at::Tensor* lse_out) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, weights, lse] = weights_op().call(query, key, value, attn_mask, dropout_seed,
                                                 dropout_p, is_causal, bottom_right, scale,
                                                 average_heads);
    ctx->save_for_backward({query, key, value, tensor_or_undefined(attn_mask),
                            tensor_or_undefined(dropout_seed), lse});
    Flags{dropout_p, is_causal, bottom_right, scale}.save(ctx);
    ctx->saved_data["average_heads"] = average_heads;
    ctx->set_materialize_grads(false);  // either output's gradient may be None
    *lse_out = lse;
    return {out, weights};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& mask = saved[3];
    const std::array<bool, 4> wanted = wanted_grads(ctx, mask);
    const Flags f = Flags::load(ctx);
    auto [g_q, g_k, g_v, g_mask] = weights_backward_op().call(
        optional_of(grads[0]), optional_of(grads[1]), saved[0], saved[1], saved[2],
        optional_of(mask), optional_of(saved[4]), saved[5], f.dropout_p, f.is_causal,
        f.bottom_right, f.scale, ctx->saved_data["average_heads"].toBool(), wanted);
    // One gradient per forward argument (none for the seed, the scalars and
    // the lse pointer).
    return {g_q,          g_k,          g_v,          wanted[3] ? g_mask : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> attention_autograd(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& dropout_seed,
    double dropout_p, bool is_causal, bool bottom_right, double scale) {
  if (!needs_function({&query, &key, &value}, {&attn_mask})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return attention_op().call(query, key, value, attn_mask, dropout_seed, dropout_p, is_causal,
                               bottom_right, scale);
  }
  variable_list out = AttentionFunction::apply(query, key, value, attn_mask, dropout_seed,
                                               dropout_p, is_causal, bottom_right, scale);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_autograd(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& attn_mask,
    const std::optional<at::Tensor>& dropout_seed, const at::Tensor& out, const at::Tensor& lse,
    const std::optional<at::Tensor>& grad_lse, double dropout_p, bool is_causal,
    bool bottom_right, double scale, std::array<bool, 4> output_mask) {
  const at::Tensor mask = tensor_or_undefined(attn_mask);
  const at::Tensor g_lse = tensor_or_undefined(grad_lse);
  refuse_double_backward("pydl.attention", requires_grad({&grad_out, &query, &key, &value, &mask,
                                                           &out, &lse, &g_lse}));
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return attention_backward_op().call(grad_out, query, key, value, attn_mask, dropout_seed, out,
                                      lse, grad_lse, dropout_p, is_causal, bottom_right, scale,
                                      output_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_with_weights_autograd(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& dropout_seed,
    double dropout_p, bool is_causal, bool bottom_right, double scale, bool average_heads) {
  if (!needs_function({&query, &key, &value}, {&attn_mask})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return weights_op().call(query, key, value, attn_mask, dropout_seed, dropout_p, is_causal,
                             bottom_right, scale, average_heads);
  }
  at::Tensor lse;
  variable_list out = WeightsFunction::apply(query, key, value, attn_mask, dropout_seed,
                                             dropout_p, is_causal, bottom_right, scale,
                                             average_heads, &lse);
  return {out[0], out[1], lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_with_weights_backward_autograd(
    const std::optional<at::Tensor>& grad_out, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& dropout_seed,
    const at::Tensor& lse, double dropout_p, bool is_causal, bool bottom_right, double scale,
    bool average_heads, std::array<bool, 4> output_mask) {
  const at::Tensor g_out = tensor_or_undefined(grad_out);
  const at::Tensor g_weights = tensor_or_undefined(grad_weights);
  const at::Tensor mask = tensor_or_undefined(attn_mask);
  refuse_double_backward("pydl.attention_with_weights",
                         requires_grad({&g_out, &g_weights, &query, &key, &value, &mask, &lse}));
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return weights_backward_op().call(grad_out, grad_weights, query, key, value, attn_mask,
                                    dropout_seed, lse, dropout_p, is_causal, bottom_right, scale,
                                    average_heads, output_mask);
}

}  // namespace
}  // namespace pydl

TORCH_LIBRARY_IMPL(pydl, Autograd, m) {
  m.impl("attention", &pydl::attention_autograd);
  m.impl("attention_backward", &pydl::attention_backward_autograd);
  m.impl("attention_with_weights", &pydl::attention_with_weights_autograd);
  m.impl("attention_with_weights_backward", &pydl::attention_with_weights_backward_autograd);
}
