// Turning the attention ops' tensor arguments into the CPU kernels' Problem
// (operand strides, the mask as an additive view, dropout seed), shared by the
// flash op (attention_cpu.cpp) and the attention-with-weights op
// (attention_weights_cpu.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "attention/attention_checks.h"
#include "attention/cpu/attention_cpu_kernel.h"

namespace pydl {
namespace attention_cpu {

// The flash kernel: float32, float64, and bf16 where libtorch has MKL's bf16 GEMM.
void check_cpu_dtype(const at::Tensor& query);
// The attention-with-weights kernel: float32 and float64.
void check_cpu_dtype_fp32_fp64(const at::Tensor& query);

// The dtype the kernels compute in (and keep lse, masks, accumulators in):
// float32 for bf16 inputs, else the inputs' own.
at::ScalarType compute_dtype(const at::Tensor& query);

// The kernels hand rows to BLAS, which needs a contiguous last dim and rows at
// least a row apart; anything else (rare) is copied once.
at::Tensor gemm_ready(const at::Tensor& t);

// The mask the CPU kernels read: additive_mask (attention_checks.h) in the
// compute dtype. Undefined when there is no mask.
at::Tensor cpu_kernel_mask(const std::optional<at::Tensor>& mask, const at::Tensor& query,
                           const AttentionShape& s);

Problem make_problem(const AttentionShape& s, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& mask,
                     const std::optional<at::Tensor>& dropout_seed, double dropout_p,
                     bool is_causal, bool causal_bottom_right, double scale);

// Which dtypes a CPU entry point takes.
enum class CpuDtypes {
  kFlash,        // check_cpu_dtype: float32, float64, bf16 with MKL
  kWithWeights,  // check_cpu_dtype_fp32_fp64
};

// One CPU attention call's checked arguments in the form the kernels read:
// every entry point (forward and backward of both ops) starts with this.
struct PreparedCall {
  AttentionShape shape;
  at::Tensor q, k, v;  // gemm_ready
  at::Tensor mask;     // cpu_kernel_mask; undefined when there is none

  Problem problem(const std::optional<at::Tensor>& dropout_seed, double dropout_p,
                  bool is_causal, bool causal_bottom_right, double scale) const {
    return make_problem(shape, q, k, v, mask, dropout_seed, dropout_p, is_causal,
                        causal_bottom_right, scale);
  }
};

PreparedCall prepare_cpu_call(const at::Tensor& query, const at::Tensor& key,
                              const at::Tensor& value, const std::optional<at::Tensor>& attn_mask,
                              const std::optional<at::Tensor>& dropout_seed, double dropout_p,
                              CpuDtypes dtypes);

}  // namespace attention_cpu
}  // namespace pydl
