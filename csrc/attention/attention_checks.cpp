#include "attention/attention_checks.h"

#include <limits>
#include <vector>

namespace pydl {

AttentionShape check_attention_args(const at::Tensor& query, const at::Tensor& key,
                                    const at::Tensor& value,
                                    const std::optional<at::Tensor>& attn_mask,
                                    const std::optional<at::Tensor>& dropout_seed,
                                    double dropout_p) {
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"query", query},
                                std::pair<const char*, const at::Tensor&>{"key", key},
                                std::pair<const char*, const at::Tensor&>{"value", value}}) {
    TORCH_CHECK(t.dim() == 4, "pydl.attention: ", name,
                " must be 4-D (batch, heads, length, head_dim), got shape ", t.sizes());
  }
  for (const at::Tensor* t : {&key, &value}) {
    TORCH_CHECK(t->scalar_type() == query.scalar_type() && t->device() == query.device(),
                "pydl.attention: key and value must match the query's dtype and device (",
                query.scalar_type(), " on ", query.device(), "), got ", t->scalar_type(), " on ",
                t->device());
  }
  TORCH_CHECK(at::isFloatingType(query.scalar_type()),
              "pydl.attention: expected floating-point tensors, got ", query.scalar_type());
  const AttentionShape s{query.size(0), query.size(1), key.size(1), query.size(2),
                         key.size(2),   query.size(3), value.size(3)};
  TORCH_CHECK(key.size(0) == s.batch && value.size(0) == s.batch,
              "pydl.attention: query, key and value must share the batch size; got ", s.batch,
              ", ", key.size(0), ", ", value.size(0));
  TORCH_CHECK(key.size(3) == s.dim_qk, "pydl.attention: key head dim ", key.size(3),
              " differs from the query's ", s.dim_qk);
  TORCH_CHECK(value.size(1) == s.heads_kv && value.size(2) == s.len_kv,
              "pydl.attention: value must have key's heads and length (", s.heads_kv, ", ",
              s.len_kv, "), got (", value.size(1), ", ", value.size(2), ")");
  TORCH_CHECK(s.heads_kv > 0 && s.heads_q % s.heads_kv == 0, "pydl.attention: query heads (",
              s.heads_q, ") must be a multiple of key/value heads (", s.heads_kv, ")");
  if (attn_mask.has_value()) {
    const at::Tensor& m = *attn_mask;
    TORCH_CHECK(m.scalar_type() == at::kBool || m.scalar_type() == query.scalar_type(),
                "pydl.attention: attn_mask must be bool or the query's dtype (",
                query.scalar_type(), "), got ", m.scalar_type());
    TORCH_CHECK(m.device() == query.device(), "pydl.attention: attn_mask is on ", m.device(),
                ", query on ", query.device());
    const int64_t full[4] = {s.batch, s.heads_q, s.len_q, s.len_kv};
    bool ok = m.dim() <= 4;
    for (int64_t d = 0; ok && d < m.dim(); ++d) {
      const int64_t size = m.size(m.dim() - 1 - d), want = full[3 - d];
      ok = size == want || size == 1;
    }
    TORCH_CHECK(ok, "pydl.attention: attn_mask of shape ", m.sizes(),
                " does not broadcast to (batch, heads, L, S) = (", s.batch, ", ", s.heads_q, ", ",
                s.len_q, ", ", s.len_kv, ")");
  }
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p <= 1.0,
              "pydl.attention: dropout_p must be in [0, 1], got ", dropout_p);
  if (dropout_p > 0.0) {
    TORCH_CHECK(dropout_seed.has_value() && dropout_seed->numel() == 1 &&
                    dropout_seed->scalar_type() == at::kLong,
                "pydl.attention: dropout_p > 0 needs dropout_seed, a one-element int64 tensor "
                "drawn from torch's generator");
    // CPU kernels read the seed on the host; CUDA kernels read it in device
    // memory (no host sync, safe under CUDA graph capture).
    TORCH_CHECK(dropout_seed->device() == query.device(), "pydl.attention: dropout_seed is on ",
                dropout_seed->device(), " but must be on the query's device (", query.device(),
                ")");
  }
  return s;
}

at::Tensor empty_dropout_keep(const at::Tensor& dropout_seed, int64_t batch, int64_t heads,
                              int64_t query_len, int64_t key_len, double dropout_p) {
  TORCH_CHECK(dropout_seed.numel() == 1 && dropout_seed.scalar_type() == at::kLong,
              "pydl.attention_dropout_keep: dropout_seed must be a one-element int64 tensor, got ",
              dropout_seed.scalar_type(), " of shape ", dropout_seed.sizes());
  TORCH_CHECK(batch >= 0 && heads >= 0 && query_len >= 0 && key_len >= 0,
              "pydl.attention_dropout_keep: sizes must be non-negative, got (batch, heads, "
              "query_len, key_len) = (", batch, ", ", heads, ", ", query_len, ", ", key_len, ")");
  int64_t numel = 1;
  for (const int64_t size : {batch, heads, query_len, key_len}) {
    TORCH_CHECK(size == 0 || numel <= std::numeric_limits<int64_t>::max() / size,
                "pydl.attention_dropout_keep: (", batch, ", ", heads, ", ", query_len, ", ",
                key_len, ") has more elements than int64 can count");
    numel *= size;
  }
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p <= 1.0,
              "pydl.attention_dropout_keep: dropout_p must be in [0, 1], got ", dropout_p);
  return at::empty({batch, heads, query_len, key_len}, dropout_seed.options().dtype(at::kBool));
}

void check_attention_backward_tensors(const AttentionShape& s, const at::Tensor& query,
                                      const at::Tensor& grad_out, const at::Tensor& out,
                                      const at::Tensor& lse,
                                      const std::optional<at::Tensor>& grad_lse,
                                      at::ScalarType lse_dtype) {
  const std::vector<int64_t> out_shape{s.batch, s.heads_q, s.len_q, s.dim_v};
  const std::vector<int64_t> lse_shape{s.batch, s.heads_q, s.len_q};
  for (const at::Tensor* t : {&grad_out, &out}) {
    TORCH_CHECK(t->sizes() == at::IntArrayRef(out_shape) && t->scalar_type() == query.scalar_type(),
                "pydl.attention_backward: grad_out and out must be ", at::IntArrayRef(out_shape),
                " ", query.scalar_type(), ", got ", t->sizes(), " ", t->scalar_type());
  }
  TORCH_CHECK(lse.sizes() == at::IntArrayRef(lse_shape) && lse.scalar_type() == lse_dtype &&
                  (!grad_lse.has_value() || (grad_lse->sizes() == at::IntArrayRef(lse_shape) &&
                                             grad_lse->scalar_type() == lse_dtype)),
              "pydl.attention_backward: lse and grad_lse must be ", at::IntArrayRef(lse_shape), " ",
              lse_dtype, ", got ", lse.sizes(), " ", lse.scalar_type());
  for (const at::Tensor* t : {&grad_out, &out, &lse}) {
    TORCH_CHECK(t->device() == query.device(), "pydl.attention_backward: grad_out, out and lse "
                "must be on the query's device (", query.device(), "), got ", t->device());
  }
  TORCH_CHECK(!grad_lse.has_value() || grad_lse->device() == query.device(),
              "pydl.attention_backward: grad_lse is on ", grad_lse->device(), ", query on ",
              query.device());
}

at::Tensor additive_mask(const std::optional<at::Tensor>& mask, const at::Tensor& query,
                         const AttentionShape& s, at::ScalarType dtype) {
  if (!mask.has_value()) return {};
  at::Tensor m = *mask;
  if (m.scalar_type() == at::kBool) {
    m = at::zeros(m.sizes(), query.options().dtype(dtype))
            .masked_fill_(m.logical_not(), -std::numeric_limits<double>::infinity());
  } else {
    m = m.to(dtype);  // no copy when it already has the dtype
  }
  return m.expand({s.batch, s.heads_q, s.len_q, s.len_kv});
}

}  // namespace pydl
