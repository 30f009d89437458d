// Attention that also returns its weights (MultiheadAttention's
// need_weights=True) on the CPU: argument handling and the op registrations;
// the row-block loops live in attention/cpu/attention_weights_kernel_isa.cpp.
#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "attention/attention_checks.h"
#include "attention/attention_cpu_args.h"
#include "attention/cpu/attention_weights_kernel.h"
#include "common/cpu_isa.h"

namespace pydl {
namespace attention_cpu {
namespace weights {

PYDL_DEFINE_KERNEL_FOR_THIS_CPU()

namespace {

// Query rows per task: the task's `tiles` tiles of whole score rows stay in
// L2 (2 MiB per core on this project's machine), 8 to 64 rows (below 8 the
// GEMMs degrade to matrix-vector products; very long rows spill to L3 instead).
int64_t rows_in_cache(const AttentionShape& s, int64_t tiles, int64_t elem_size) {
  constexpr int64_t kTileBytes = 256 * 1024;
  const int64_t row_bytes = std::max<int64_t>(1, s.len_kv * elem_size);
  return std::clamp<int64_t>(kTileBytes / (tiles * row_bytes), 8, 64);
}

// Forward tasks are (batch, row block): fewer rows when there would be too
// few tasks to keep every thread busy.
int64_t forward_rows(const AttentionShape& s, int64_t elem_size) {
  int64_t rows = rows_in_cache(s, 1, elem_size);
  const int64_t want_tasks = 4 * at::get_num_threads();
  while (rows > 8 && s.batch * ((s.len_q + rows - 1) / rows) < want_tasks) rows /= 2;
  return rows;
}

std::vector<int64_t> weights_shape(const AttentionShape& s, bool average_heads) {
  if (average_heads) return {s.batch, s.len_q, s.len_kv};
  return {s.batch, s.heads_q, s.len_q, s.len_kv};
}

// (out (N, Hq, L, Ev), weights (N, L, S) averaged over heads or (N, Hq, L, S),
// lse (N, Hq, L)). The weights are after dropout, as torch's module returns them.
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_with_weights_cpu(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& dropout_seed,
    double dropout_p, bool is_causal, bool causal_bottom_right, double scale,
    bool average_heads) {
  const PreparedCall c = prepare_cpu_call(query, key, value, attn_mask, dropout_seed,
                                          dropout_p, CpuDtypes::kWithWeights);
  const AttentionShape& s = c.shape;
  at::Tensor out = at::empty({s.batch, s.heads_q, s.len_q, s.dim_v}, query.options());
  at::Tensor lse = at::empty({s.batch, s.heads_q, s.len_q}, query.options());
  at::Tensor w = at::empty(weights_shape(s, average_heads), query.options());
  if (lse.numel() == 0) return {out, w.zero_(), lse};
  ForwardArgs a{c.problem(dropout_seed, dropout_p, is_causal, causal_bottom_right, scale),
                out.mutable_data_ptr(), lse.mutable_data_ptr(), w.mutable_data_ptr(),
                average_heads};
  a.p.block_q = forward_rows(s, query.element_size());
  kernel_for_this_cpu().forward(a);
  return {out, w, lse};
}

// Gradients (query, key, value, attn_mask) from the gradients of out and of
// the weights (either may be absent); output_mask selects which.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_with_weights_backward_cpu(
    const std::optional<at::Tensor>& grad_out, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& dropout_seed,
    const at::Tensor& lse, double dropout_p, bool is_causal, bool causal_bottom_right,
    double scale, bool average_heads, std::array<bool, 4> output_mask) {
  const PreparedCall c = prepare_cpu_call(query, key, value, attn_mask, dropout_seed,
                                          dropout_p, CpuDtypes::kWithWeights);
  const AttentionShape& s = c.shape;
  const std::vector<int64_t> out_shape{s.batch, s.heads_q, s.len_q, s.dim_v};
  const std::vector<int64_t> w_shape = weights_shape(s, average_heads);
  TORCH_CHECK(!grad_out.has_value() || (grad_out->sizes() == at::IntArrayRef(out_shape) &&
                                        grad_out->scalar_type() == query.scalar_type()),
              "pydl.attention_with_weights_backward: grad_out must be ", at::IntArrayRef(out_shape),
              " ", query.scalar_type());
  TORCH_CHECK(!grad_weights.has_value() ||
                  (grad_weights->sizes() == at::IntArrayRef(w_shape) &&
                   grad_weights->scalar_type() == query.scalar_type()),
              "pydl.attention_with_weights_backward: grad_weights must be ",
              at::IntArrayRef(w_shape), " ", query.scalar_type());
  TORCH_CHECK(lse.sizes() == at::IntArrayRef({s.batch, s.heads_q, s.len_q}) &&
                  lse.scalar_type() == query.scalar_type(),
              "pydl.attention_with_weights_backward: lse must be (", s.batch, ", ", s.heads_q,
              ", ", s.len_q, ") ", query.scalar_type(), ", got ", lse.sizes());
  const at::Tensor dout = grad_out.has_value() ? grad_out->contiguous() : at::Tensor();
  const at::Tensor dweights = grad_weights.has_value() ? grad_weights->contiguous() : at::Tensor();
  const at::Tensor lse_c = lse.contiguous();

  const int64_t rows = rows_in_cache(s, 3, query.element_size());
  const int64_t blocks = std::max<int64_t>(1, (s.len_q + rows - 1) / rows);
  // Query blocks are split among enough tasks to keep every thread busy when
  // batch * kv-heads is small; each split adds one dK/dV-sized accumulator.
  const int64_t units = std::max<int64_t>(1, s.batch * s.heads_kv);
  const int64_t chunks =
      std::clamp<int64_t>((4 * at::get_num_threads() + units - 1) / units, 1, std::min<int64_t>(blocks, 16));
  at::Tensor grad_q = at::zeros({s.batch, s.heads_q, s.len_q, s.dim_qk}, query.options());
  at::Tensor dk_acc = at::zeros({chunks, s.batch, s.heads_kv, s.len_kv, s.dim_qk}, query.options());
  at::Tensor dv_acc = at::zeros({chunks, s.batch, s.heads_kv, s.len_kv, s.dim_v}, query.options());
  const bool want_mask_grad =
      output_mask[3] && c.mask.defined() && attn_mask->scalar_type() != at::kBool;
  at::Tensor grad_scores;
  if (want_mask_grad) {
    grad_scores = at::zeros({s.batch, s.heads_q, s.len_q, s.len_kv}, query.options());
  }
  if (lse.numel() > 0 && s.len_kv > 0 && (dout.defined() || dweights.defined())) {
    BackwardArgs a{c.problem(dropout_seed, dropout_p, is_causal, causal_bottom_right, scale),
                   dout.defined() ? dout.const_data_ptr() : nullptr,
                   dweights.defined() ? dweights.const_data_ptr() : nullptr,
                   average_heads,
                   lse_c.const_data_ptr(),
                   grad_q.mutable_data_ptr(),
                   dk_acc.mutable_data_ptr(),
                   dv_acc.mutable_data_ptr(),
                   chunks,
                   want_mask_grad ? grad_scores.mutable_data_ptr() : nullptr,
                   output_mask[0],
                   output_mask[1],
                   output_mask[2]};
    a.p.block_q = rows;
    kernel_for_this_cpu().backward(a);
  }
  at::Tensor g_q, g_k, g_v, g_mask;
  if (output_mask[0]) g_q = grad_q;
  if (output_mask[1]) g_k = chunks == 1 ? dk_acc.select(0, 0) : dk_acc.sum(0);
  if (output_mask[2]) g_v = chunks == 1 ? dv_acc.select(0, 0) : dv_acc.sum(0);
  // A broadcast mask's gradient sums over the dims it was broadcast along.
  if (want_mask_grad) g_mask = at::sum_to(grad_scores, attn_mask->sizes());
  return {g_q, g_k, g_v, g_mask};
}

}  // namespace
}  // namespace weights
}  // namespace attention_cpu
}  // namespace pydl

TORCH_LIBRARY_IMPL(pydl, CPU, m) {
  m.impl("attention_with_weights", &pydl::attention_cpu::weights::attention_with_weights_cpu);
  m.impl("attention_with_weights_backward",
         &pydl::attention_cpu::weights::attention_with_weights_backward_cpu);
}
