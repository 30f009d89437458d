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
// dropout_seed a one-element int64 CPU tensor when dropout_p > 0.
AttentionShape check_attention_args(const at::Tensor& query, const at::Tensor& key,
                                    const at::Tensor& value,
                                    const std::optional<at::Tensor>& attn_mask,
                                    const std::optional<at::Tensor>& dropout_seed,
                                    double dropout_p);

}  // namespace pydl
