// Attention argument validation, shared by every backend's entry points.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace pydl {

struct AttentionShape {
  int64_t batch, heads_q, heads_kv, len_q, len_kv, dim_qk, dim_v;
  int64_t group() const { return heads_q / heads_kv; }  // query heads per key/value head
};

// query (N, Hq, L, E), key (N, Hk, S, E), value (N, Hk, S, Ev), Hq a multiple
// of Hk; attn_mask bool or the query's dtype, broadcastable to (N, Hq, L, S);
// dropout_seed a one-element int64 tensor on the query's device when
// dropout_p > 0. Every tensor must be on the query's device.
AttentionShape check_attention_args(const at::Tensor& query, const at::Tensor& key,
                                    const at::Tensor& value,
                                    const std::optional<at::Tensor>& attn_mask,
                                    const std::optional<at::Tensor>& dropout_seed,
                                    double dropout_p);

// The backward's extra tensors: grad_out and out (N, Hq, L, Ev) in the
// query's dtype, lse and grad_lse (N, Hq, L) in lse_dtype, all on the query's device.
void check_attention_backward_tensors(const AttentionShape& s, const at::Tensor& query,
                                      const at::Tensor& grad_out, const at::Tensor& out,
                                      const at::Tensor& lse,
                                      const std::optional<at::Tensor>& grad_lse,
                                      at::ScalarType lse_dtype);

// attention_dropout_keep's result, uninitialized, after checking its
// arguments (a one-element int64 seed, sizes >= 0 whose product fits int64,
// dropout_p in [0, 1]): bool (batch, heads, query_len, key_len) on the
// seed's device.
at::Tensor empty_dropout_keep(const at::Tensor& dropout_seed, int64_t batch, int64_t heads,
                              int64_t query_len, int64_t key_len, double dropout_p);

// The mask as an additive (N, Hq, L, S) view of broadcast strides (stride 0
// where broadcast, never materialized) in `dtype` (the kernel's: the query's,
// or float32 where the CPU computes bf16 in float32): a bool mask becomes
// 0 / -inf, a float mask is converted if needed, once, at its own
// (unbroadcast) size. Undefined when no mask.
at::Tensor additive_mask(const std::optional<at::Tensor>& mask, const at::Tensor& query,
                         const AttentionShape& s, at::ScalarType dtype);

}  // namespace pydl
