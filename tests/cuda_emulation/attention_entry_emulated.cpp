// The CUDA attention entry (csrc/attention/attention_cuda.cu) compiled for the
// emulator, registered as ops of the test-only library `pydl_emulated` that
// take CPU tensors: the same argument handling, path choice and kernels as on
// a GPU, with host memory standing in for device memory.
#include "attention/attention_cuda.cu"

#include <torch/library.h>

#include "op_schemas.h"

namespace {

std::tuple<at::Tensor, at::Tensor> attention_emulated(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& dropout_seed,
    double dropout_p, bool is_causal, bool causal_bottom_right, double scale) {
  return pydl::attention_cuda::forward_on_stream(query, key, value, attn_mask, dropout_seed,
                                                 dropout_p, is_causal, causal_bottom_right,
                                                 scale, nullptr);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_emulated(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& attn_mask,
    const std::optional<at::Tensor>& dropout_seed, const at::Tensor& out, const at::Tensor& lse,
    const std::optional<at::Tensor>& grad_lse, double dropout_p, bool is_causal,
    bool causal_bottom_right, double scale, std::array<bool, 4> output_mask) {
  return pydl::attention_cuda::backward_on_stream(grad_out, query, key, value, attn_mask,
                                                  dropout_seed, out, lse, grad_lse, dropout_p,
                                                  is_causal, causal_bottom_right, scale,
                                                  output_mask, nullptr);
}

at::Tensor attention_dropout_keep_emulated(const at::Tensor& dropout_seed, int64_t batch,
                                           int64_t heads, int64_t query_len, int64_t key_len,
                                           double dropout_p) {
  return pydl::attention_cuda::dropout_keep_on_stream(dropout_seed, batch, heads, query_len,
                                                      key_len, dropout_p, nullptr);
}

void configure(int64_t sm_count, int64_t max_smem_optin, bool warp_greedy, bool block_greedy,
               bool reverse_order, bool eager_async_copies) {
  auto& d = pydl::emulation::device();
  d.sm_count = static_cast<int>(sm_count);
  d.max_smem_optin = static_cast<int>(max_smem_optin);
  d.warp_greedy = warp_greedy;
  d.block_greedy = block_greedy;
  d.reverse_order = reverse_order;
  d.eager_async_copies = eager_async_copies;
}

void guard_host_allocations(bool on) { pydl::emulation::guard_host_allocations(on); }

int64_t launch_count() { return pydl::emulation::launch_count(); }
int64_t block_count() { return pydl::emulation::block_count(); }
int64_t mma_count() { return pydl::emulation::mma_count(); }
int64_t grid_barrier_count() { return pydl::emulation::grid_barrier_count(); }
std::tuple<int64_t, int64_t> smem_wavefronts() { return pydl::emulation::smem_wavefronts(); }

}  // namespace

TORCH_LIBRARY(pydl_emulated, m) {
  m.def(
        "configure(int sm_count, int max_smem_optin, bool warp_greedy, bool block_greedy, "
        "bool reverse_order, bool eager_async_copies) -> ()", &configure);
  m.def("guard_host_allocations(bool on) -> ()", &guard_host_allocations);
  m.def("launch_count() -> int", &launch_count);
  m.def("block_count() -> int", &block_count);
  m.def("mma_count() -> int", &mma_count);
  m.def("grid_barrier_count() -> int", &grid_barrier_count);
  m.def("smem_wavefronts() -> (int, int)", &smem_wavefronts);
  m.def(pydl::schema::kAttention);
  m.def(pydl::schema::kAttentionBackward);
  m.def(pydl::schema::kAttentionDropoutKeep);
}

TORCH_LIBRARY_IMPL(pydl_emulated, CPU, m) {
  m.impl("attention", &attention_emulated);
  m.impl("attention_backward", &attention_backward_emulated);
  m.impl("attention_dropout_keep", &attention_dropout_keep_emulated);
}
