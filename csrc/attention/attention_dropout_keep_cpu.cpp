// attention_dropout_keep on the CPU: the keep decisions the CPU (and CUDA)
// attention kernels make for a dropout seed, as a bool tensor.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "attention/attention_checks.h"
#include "attention/cpu/dropout_mask_kernel.h"
#include "common/cpu_isa.h"

namespace pydl {
namespace attention_cpu {
namespace keep_mask {

PYDL_DEFINE_KERNEL_FOR_THIS_CPU()

namespace {

at::Tensor attention_dropout_keep_cpu(const at::Tensor& dropout_seed, int64_t batch,
                                      int64_t heads, int64_t query_len, int64_t key_len,
                                      double dropout_p) {
  at::Tensor keep = empty_dropout_keep(dropout_seed, batch, heads, query_len, key_len, dropout_p);
  if (keep.numel() == 0) return keep;
  kernel_for_this_cpu().fill(keep.data_ptr<bool>(), batch * heads * query_len, key_len,
                             static_cast<uint64_t>(dropout_seed.item<int64_t>()), dropout_p);
  return keep;
}

}  // namespace
}  // namespace keep_mask
}  // namespace attention_cpu
}  // namespace pydl

TORCH_LIBRARY_IMPL(pydl, CPU, m) {
  m.impl("attention_dropout_keep", &pydl::attention_cpu::keep_mask::attention_dropout_keep_cpu);
}
