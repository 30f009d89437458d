// The dispatcher handle of pydl::lstm_layer, looked up once, for C++ callers
// that go through the dispatcher (its autograd in lstm_autograd.cpp, the
// layer stack in lstm_stack.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

namespace pydl {

// lstm_layer(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
// -> (output, hy, cy, gates, cells, hidden_pre); schema in csrc/pydl.cpp.
using LstmLayerFn =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
        const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool);

const c10::TypedOperatorHandle<LstmLayerFn>& lstm_layer_op();

}  // namespace pydl
