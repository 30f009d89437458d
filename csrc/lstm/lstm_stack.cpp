// pydl::lstm: a multi-layer, (bi)directional LSTM over a padded batch or
// PackedSequence rows, as torch's _VF.lstm — each layer and direction one
// pydl::lstm_layer call, the directions' outputs side by side, dropout
// between layers (training only). Sizes are read as SymInts, so that
// torch.compile(dynamic=True) traces one graph for every T and B.
//
// Composite (CompositeImplicitAutograd): autograd, fake tensors and every
// backend come from lstm_layer's own kernels. In C++ rather than Python
// because the stack's bookkeeping (zero states, batch sizes, reshapes, state
// views, per-layer lists) cost ~10 us of Python per call; here ~4 us, against
// ~20 us for a whole one-step batch-1 layer (measured, hidden 128).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "common/blas.h"
#include "lstm/lstm_layer_op.h"

namespace pydl {
namespace {

constexpr int64_t kWeightsPerLayer = 5;  // w_ih, w_hh, b_ih, b_hh, w_hr

// The weight at `index` of the flat list, which must be given.
at::Tensor required_weight(const c10::List<std::optional<at::Tensor>>& weights, int64_t index) {
  const std::optional<at::Tensor> w = weights.get(index);
  TORCH_CHECK(w.has_value() && w->defined(), "pydl.lstm: weights[", index, "] (",
              index % kWeightsPerLayer == 0 ? "w_ih" : "w_hh", " of layer-direction ",
              index / kWeightsPerLayer, ") is None");
  return *w;
}

// Up to this many rows per step, a bidirectional layer's directions run at
// once, one per thread. A small batch's step is latency-bound: split over two
// cores, each direction pays a barrier per step and streams half its weights,
// while side by side each core streams one direction's weights (in its own
// L2) with no barrier at all (batch 1, hidden 128: ~1.5x faster).
constexpr int64_t kConcurrentDirectionsMaxRows = 16;

// Whether both directions may run on their own threads: an eager CPU call
// that records no graph (autograd from worker threads is avoided, not
// relied on) under no tensor-subclass or dispatch mode, on a small batch.
bool directions_concurrently(const at::Tensor& rows, const at::Tensor& sizes,
                             const at::Tensor& hx, const at::Tensor& cx,
                             const c10::List<std::optional<at::Tensor>>& weights) {
  if (!rows.is_cpu() || at::get_num_threads() < 2 || at::in_parallel_region() ||
      c10::impl::TorchDispatchModeTLS::any_modes_set()) {
    return false;
  }
  std::vector<at::Tensor> tensors{rows, sizes, hx, cx};
  for (size_t i = 0; i < weights.size(); ++i) {
    const std::optional<at::Tensor> w = weights.get(i);
    if (w.has_value() && w->defined()) tensors.push_back(*w);
  }
  const bool graph = at::GradMode::is_enabled();
  for (const at::Tensor& t : tensors) {
    // A tensor subclass's Python handler must not run on a worker thread (an
    // exception raised there would reach the caller as a SystemError).
    if (t.key_set().has(c10::DispatchKey::Python) || (graph && t.requires_grad())) return false;
  }
  // (Malformed batch sizes are left to lstm_layer's checks and messages.)
  return sizes.is_cpu() && sizes.scalar_type() == at::kLong && sizes.dim() == 1 &&
         sizes.numel() > 0 && sizes.const_data_ptr<int64_t>()[0] <= kConcurrentDirectionsMaxRows;
}

// (output, h_n (L*D, B, P), c_n (L*D, B, H)). Either a padded batch, input
// (T, B, I) time-major and batch_sizes None, output (T, B, D*P); or packed
// rows, input (N, I) with batch_sizes, output (N, D*P). hx/cx None: zeros
// (a padded batch only: a packed one's B is a value inside batch_sizes).
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_stack(
    const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& hx_arg, const std::optional<at::Tensor>& cx_arg,
    const c10::List<std::optional<at::Tensor>>& weights, int64_t num_layers, double dropout,
    bool train, bool bidirectional) {
  const int64_t directions = bidirectional ? 2 : 1, states = num_layers * directions;
  TORCH_CHECK(num_layers >= 1, "pydl.lstm: num_layers must be >= 1, got ", num_layers);
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == states * kWeightsPerLayer,
              "pydl.lstm: expected ", states * kWeightsPerLayer,
              " weights (w_ih, w_hh, b_ih, b_hh, w_hr per layer and direction, None where "
              "absent), got ", weights.size());
  TORCH_CHECK(dropout >= 0 && dropout <= 1, "pydl.lstm: dropout must be in [0, 1], got ",
              dropout);
  const bool packed = batch_sizes.has_value() && batch_sizes->defined();
  TORCH_CHECK(input.dim() == (packed ? 2 : 3), "pydl.lstm: expected ",
              packed ? "packed rows (N, I) with batch_sizes" : "a padded batch (T, B, I)",
              ", got input of shape ", input.sym_sizes());
  // As torch.nn.LSTM, which refuses an empty sequence (a packed one cannot be).
  TORCH_CHECK(packed || input.sym_size(0) > 0,
              "pydl.lstm: expected sequence length to be larger than 0, got input of shape ",
              input.sym_sizes());
  const bool has_hx = hx_arg.has_value() && hx_arg->defined();
  TORCH_CHECK(has_hx == (cx_arg.has_value() && cx_arg->defined()),
              "pydl.lstm: give both hx and cx, or neither");
  TORCH_CHECK(has_hx || !packed, "pydl.lstm: packed rows need hx and cx");
  at::Tensor hx, cx;
  if (has_hx) {
    hx = *hx_arg;
    cx = *cx_arg;
    TORCH_CHECK(hx.dim() == 3 && cx.dim() == 3 && hx.sym_size(0) == states &&
                    cx.sym_size(0) == states,
                "pydl.lstm: hx and cx must be (num_layers * num_directions, batch, size) = (",
                states, ", B, *), got ", hx.sym_sizes(), " and ", cx.sym_sizes());
  } else {
    const at::Tensor w_hh = required_weight(weights, 1);
    const std::optional<at::Tensor> w_hr = weights.get(4);
    const c10::SymInt hidden = w_hh.sym_size(0) / 4;
    const c10::SymInt out =
        (w_hr.has_value() && w_hr->defined()) ? w_hr->sym_size(0) : hidden;
    hx = at::zeros_symint({states, input.sym_size(1), out}, input.options());
    cx = at::zeros_symint({states, input.sym_size(1), hidden}, input.options());
  }
  at::Tensor sizes, rows = input;
  if (packed) {
    sizes = *batch_sizes;
  } else {
    const c10::SymInt steps = input.sym_size(0), batch = input.sym_size(1);
    sizes = at::full_symint({steps}, batch, at::TensorOptions().dtype(at::kLong));
    rows = input.reshape_symint({steps * batch, input.sym_size(2)});
  }

  // (output, h, c) of one layer and direction.
  using LayerResult = std::array<at::Tensor, 3>;
  const auto run_layer = [&](const at::Tensor& layer_input, int64_t layer,
                             int64_t direction) -> LayerResult {
    const int64_t k = layer * directions + direction, first = k * kWeightsPerLayer;
    auto [out, h, c, gates, cells, hidden_pre] = lstm_layer_op().call(
        layer_input, sizes, hx.select(0, k), cx.select(0, k), required_weight(weights, first),
        required_weight(weights, first + 1), weights.get(first + 2), weights.get(first + 3),
        weights.get(first + 4), direction == 1);
    return {std::move(out), std::move(h), std::move(c)};
  };
  const bool concurrent =
      directions == 2 && directions_concurrently(rows, sizes, hx, cx, weights);

  std::vector<at::Tensor> h_n, c_n;
  h_n.reserve(num_layers * directions);
  c_n.reserve(num_layers * directions);
  at::Tensor layer_input = rows;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    std::array<LayerResult, 2> results;
    if (concurrent) {
      // Worker threads start with default thread-local state (grad mode,
      // autocast, ...): give them the caller's.
      const at::ThreadLocalState state;
      at::parallel_for(0, 2, 1, [&](int64_t d0, int64_t d1) {
        const at::ThreadLocalStateGuard guard(state);
        const SingleThreadedBlas one_thread;  // each direction's MKL calls stay on its core
        for (int64_t d = d0; d < d1; ++d) results[d] = run_layer(layer_input, layer, d);
      });
    } else {
      for (int64_t d = 0; d < directions; ++d) results[d] = run_layer(layer_input, layer, d);
    }
    for (int64_t d = 0; d < directions; ++d) {
      h_n.push_back(results[d][1]);
      c_n.push_back(results[d][2]);
    }
    layer_input = directions == 2 ? at::cat({results[0][0], results[1][0]}, 1) : results[0][0];
    if (dropout > 0 && train && layer < num_layers - 1) {
      layer_input = at::dropout(layer_input, dropout, /*train=*/true);
    }
  }
  at::Tensor output =
      packed ? layer_input
             : layer_input.view_symint(
                   {input.sym_size(0), input.sym_size(1), layer_input.sym_size(1)});
  if (h_n.size() == 1) {  // one layer, one direction: views, no stack (a copy)
    return {output, h_n[0].unsqueeze(0), c_n[0].unsqueeze(0)};
  }
  return {output, at::stack(h_n), at::stack(c_n)};
}

}  // namespace
}  // namespace pydl

TORCH_LIBRARY_IMPL(pydl, CompositeImplicitAutograd, m) {
  m.impl("lstm", &pydl::lstm_stack);
}
