#include "attention/attention_cpu_args.h"

#include "attention/cpu/tile_gemm.h"

#include <algorithm>

namespace pydl {
namespace attention_cpu {

void check_cpu_dtype(const at::Tensor& query) {
  const at::ScalarType t = query.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || (t == at::kBFloat16 && bf16_gemm_available()),
              "pydl.attention (CPU): supports float32, float64 and (with MKL) bfloat16, got ", t);
}

void check_cpu_dtype_fp32_fp64(const at::Tensor& query) {
  TORCH_CHECK(query.scalar_type() == at::kFloat || query.scalar_type() == at::kDouble,
              "pydl.attention_with_weights (CPU): supports float32 and float64, got ",
              query.scalar_type());
}

at::ScalarType compute_dtype(const at::Tensor& query) {
  return query.scalar_type() == at::kBFloat16 ? at::kFloat : query.scalar_type();
}

at::Tensor gemm_ready(const at::Tensor& t) {
  const bool cols_ok = t.size(3) <= 1 || t.stride(3) == 1;
  const bool rows_ok = t.size(2) <= 1 || t.stride(2) >= t.size(3);
  return cols_ok && rows_ok ? t : t.contiguous();
}

namespace {

Operand operand(const at::Tensor& t) {
  // A single row's stride is arbitrary in torch; BLAS wants at least its width.
  const int64_t row = t.size(2) <= 1 ? std::max<int64_t>(t.size(3), 1) : t.stride(2);
  return {t.const_data_ptr(), t.stride(0), t.stride(1), row};
}

}  // namespace

at::Tensor cpu_kernel_mask(const std::optional<at::Tensor>& mask, const at::Tensor& query,
                           const AttentionShape& s) {
  return additive_mask(mask, query, s, compute_dtype(query));
}

Problem make_problem(const AttentionShape& s, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& mask,
                     const std::optional<at::Tensor>& dropout_seed, double dropout_p,
                     bool is_causal, bool causal_bottom_right, double scale) {
  Problem p{};
  p.batch = s.batch;
  p.heads_q = s.heads_q;
  p.heads_kv = s.heads_kv;
  p.len_q = s.len_q;
  p.len_kv = s.len_kv;
  p.dim_qk = s.dim_qk;
  p.dim_v = s.dim_v;
  p.storage = q.scalar_type() == at::kDouble     ? Storage::Double
              : q.scalar_type() == at::kBFloat16 ? Storage::BFloat16
                                                 : Storage::Float;
  p.scale = scale;
  p.causal = is_causal;
  p.causal_offset = causal_bottom_right ? s.len_kv - s.len_q : 0;
  p.q = operand(q);
  p.k = operand(k);
  p.v = operand(v);
  if (mask.defined()) {
    p.mask = {mask.const_data_ptr(), mask.stride(0), mask.stride(1), mask.stride(2)};
    p.mask_stride_col = mask.stride(3);
  }
  p.dropout_p = dropout_p;
  p.dropout_seed = dropout_p > 0.0 ? static_cast<uint64_t>(dropout_seed->item<int64_t>()) : 0;
  return p;
}

PreparedCall prepare_cpu_call(const at::Tensor& query, const at::Tensor& key,
                              const at::Tensor& value, const std::optional<at::Tensor>& attn_mask,
                              const std::optional<at::Tensor>& dropout_seed, double dropout_p,
                              CpuDtypes dtypes) {
  const AttentionShape s =
      check_attention_args(query, key, value, attn_mask, dropout_seed, dropout_p);
  if (dtypes == CpuDtypes::kFlash) {
    check_cpu_dtype(query);
  } else {
    check_cpu_dtype_fp32_fp64(query);
  }
  return {s, gemm_ready(query), gemm_ready(key), gemm_ready(value),
          cpu_kernel_mask(attn_mask, query, s)};
}

}  // namespace attention_cpu
}  // namespace pydl
