// Fused attention on the CPU: argument handling and the op registrations;
// the tiled loops live in attention/cpu/attention_cpu_kernel_isa.cpp.
#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "attention/attention_checks.h"
#include "attention/attention_cpu_args.h"
#include "attention/cpu/attention_cpu_kernel.h"
#include "common/cpu_isa.h"

namespace pydl {
namespace attention_cpu {

PYDL_DEFINE_KERNEL_FOR_THIS_CPU()

namespace {

// Forward tile: 128 query rows x 512 keys (256 KiB of float scores, in L2)
// measured fastest here (1 thread, d 64/128, L 256-1024: 10-15% over 64 x 256);
// fewer rows when that would leave threads without a query block.
void choose_forward_blocks(Problem& p) {
  p.block_k = 512;
  p.block_q = 128;
  const int64_t want_tasks = 4 * at::get_num_threads();
  while (p.block_q > 16 &&
         p.batch * p.heads_q * ((p.len_q + p.block_q - 1) / p.block_q) < want_tasks) {
    p.block_q /= 2;
  }
}

// (out (N, Hq, L, Ev), lse (N, Hq, L)).
std::tuple<at::Tensor, at::Tensor> attention_cpu(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& dropout_seed,
    double dropout_p, bool is_causal, bool causal_bottom_right, double scale) {
  const PreparedCall c = prepare_cpu_call(query, key, value, attn_mask, dropout_seed,
                                          dropout_p, CpuDtypes::kFlash);
  const AttentionShape& s = c.shape;
  at::Tensor out = at::empty({s.batch, s.heads_q, s.len_q, s.dim_v}, query.options());
  // lse in the compute dtype (float32 for bf16: it feeds the backward's exp).
  at::Tensor lse = at::empty({s.batch, s.heads_q, s.len_q}, query.options().dtype(compute_dtype(query)));
  if (lse.numel() == 0) return {out, lse};
  ForwardArgs a{c.problem(dropout_seed, dropout_p, is_causal, causal_bottom_right, scale),
                out.mutable_data_ptr(), lse.mutable_data_ptr()};
  choose_forward_blocks(a.p);
  kernel_for_this_cpu().forward(a);
  return {out, lse};
}

// Backward tile: its five GEMMs per tile ran best at 64 query rows x 128 keys
// in float32; MKL's bf16 GEMMs want larger tiles (128 rows: 15-18% faster at
// L2048, d 64/128, one thread).
constexpr int64_t kBackwardBlockQ = 64, kBackwardBlockQBf16 = 128, kBackwardBlockK = 128;

// Gradients (query, key, value, attn_mask); output_mask selects which.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& attn_mask,
    const std::optional<at::Tensor>& dropout_seed, const at::Tensor& out, const at::Tensor& lse,
    const std::optional<at::Tensor>& grad_lse, double dropout_p, bool is_causal,
    bool causal_bottom_right, double scale, std::array<bool, 4> output_mask) {
  const PreparedCall c = prepare_cpu_call(query, key, value, attn_mask, dropout_seed,
                                          dropout_p, CpuDtypes::kFlash);
  const AttentionShape& s = c.shape;
  // lse, grad_lse and the accumulators in the compute dtype (float32 for bf16).
  const at::ScalarType acc = compute_dtype(query);
  check_attention_backward_tensors(s, query, grad_out, out, lse, grad_lse, acc);
  const at::Tensor dout = grad_out.contiguous();
  // delta_i = rowsum(dO * O) - dlse_i: the row term of the softmax backward
  // (d lse_i / d s_ij = P_ij folds the lse gradient into the same place).
  at::Tensor delta = (dout.to(acc) * out.to(acc)).sum(-1);
  if (grad_lse.has_value()) delta = delta - grad_lse->to(acc);
  delta = delta.contiguous();
  const at::Tensor lse_c = lse.contiguous();

  // Key blocks are split among enough tasks to keep every thread busy when
  // batch * kv-heads is small; each split adds one dQ-sized accumulator.
  const int64_t units = std::max<int64_t>(1, s.batch * s.heads_kv);
  const int64_t key_blocks = std::max<int64_t>(1, (s.len_kv + kBackwardBlockK - 1) / kBackwardBlockK);
  const int64_t chunks = output_mask[0] ? std::clamp<int64_t>(
      (4 * at::get_num_threads() + units - 1) / units, 1, std::min<int64_t>(key_blocks, 16)) : 1;
  // Accumulators in the compute dtype (float32 for bf16), cast at the end.
  const auto acc_options = query.options().dtype(acc);
  at::Tensor dq_acc = at::zeros({chunks, s.batch, s.heads_q, s.len_q, s.dim_qk}, acc_options);
  at::Tensor grad_k = at::zeros({s.batch, s.heads_kv, s.len_kv, s.dim_qk}, acc_options);
  at::Tensor grad_v = at::zeros({s.batch, s.heads_kv, s.len_kv, s.dim_v}, acc_options);
  const bool want_mask_grad = output_mask[3] && c.mask.defined() &&
                              attn_mask->scalar_type() != at::kBool;
  at::Tensor grad_scores;
  if (want_mask_grad) {
    grad_scores = at::zeros({s.batch, s.heads_q, s.len_q, s.len_kv}, acc_options);
  }
  if (lse.numel() > 0 && s.len_kv > 0) {
    BackwardArgs a{c.problem(dropout_seed, dropout_p, is_causal, causal_bottom_right, scale),
                   dout.const_data_ptr(),
                   lse_c.const_data_ptr(),
                   delta.const_data_ptr(),
                   dq_acc.mutable_data_ptr(),
                   chunks,
                   grad_k.mutable_data_ptr(),
                   grad_v.mutable_data_ptr(),
                   want_mask_grad ? grad_scores.mutable_data_ptr() : nullptr,
                   output_mask[0],
                   output_mask[1],
                   output_mask[2]};
    a.p.block_q = query.scalar_type() == at::kBFloat16 ? kBackwardBlockQBf16 : kBackwardBlockQ;
    a.p.block_k = kBackwardBlockK;
    kernel_for_this_cpu().backward(a);
  }
  at::Tensor g_q, g_k, g_v, g_mask;
  const at::ScalarType dtype = query.scalar_type();
  if (output_mask[0]) g_q = (chunks == 1 ? dq_acc.select(0, 0) : dq_acc.sum(0)).to(dtype);
  if (output_mask[1]) g_k = grad_k.to(dtype);
  if (output_mask[2]) g_v = grad_v.to(dtype);
  // A broadcast mask's gradient sums over the dims it was broadcast along.
  if (want_mask_grad) g_mask = at::sum_to(grad_scores, attn_mask->sizes()).to(attn_mask->scalar_type());
  return {g_q, g_k, g_v, g_mask};
}

}  // namespace
}  // namespace attention_cpu
}  // namespace pydl

TORCH_LIBRARY_IMPL(pydl, CPU, m) {
  m.impl("attention", &pydl::attention_cpu::attention_cpu);
  m.impl("attention_backward", &pydl::attention_cpu::attention_backward_cpu);
}
