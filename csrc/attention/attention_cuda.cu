// Fused attention on CUDA: argument handling and the op registrations; the
// kernels live in cuda/ and see no ATen (cuda/attention_kernels.h).
//
// Paths:
//   float16, bfloat16, E and Ev multiples of 8:
//       forward   tensor cores, FlashAttention-2 style (cuda/attention_tc_forward.cuh)
//       backward  tensor cores (cuda/attention_tc_backward.cuh)
//   float32, float64, and half types with head dims not multiples of 8:
//       CUDA-core flash kernels (cuda/attention_simt.cuh), exact accumulator math
// lse is returned in the accumulator dtype: float32 for fp16/bf16 inputs.
// Kernels launch on the current stream and never synchronize the host: the
// dropout seed is read by the kernels from device memory. Every path is
// deterministic (each output element has one writer, no atomics), so
// torch.use_deterministic_algorithms(True) needs no separate path.
#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <optional>

#include "attention/attention_checks.h"
#include "attention/cuda/attention_kernels.h"
#include "attention/dropout_philox.h"

namespace pydl {
namespace attention_cuda {
namespace {

DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return DType::Half;
    case at::kBFloat16: return DType::BFloat16;
    case at::kFloat: return DType::Float;
    case at::kDouble: return DType::Double;
    default:
      TORCH_CHECK(false, "pydl.attention (CUDA): unsupported dtype ", t,
                  "; expected float16, bfloat16, float32 or float64");
  }
}

// float32 for the half types, else the dtype itself: lse, delta, dS buffers.
at::ScalarType accumulator_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

int narrow(int64_t v, const char* what) {
  TORCH_CHECK(v <= INT_MAX, "pydl.attention (CUDA): ", what, " = ", v,
              " is too large for the CUDA kernels (at most ", INT_MAX, ")");
  return static_cast<int>(v);
}

Strides strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// What the kernels support (the device itself is checked by the op entries).
void check_kernel_limits(const at::Tensor& query, const AttentionShape& s) {
  kernel_dtype(query.scalar_type());
  TORCH_CHECK(s.dim_qk <= kMaxHeadDim && s.dim_v <= kMaxHeadDim,
              "pydl.attention (CUDA): head dims up to ", kMaxHeadDim, " are supported, got E = ",
              s.dim_qk, ", Ev = ", s.dim_v);
  narrow(s.batch * s.heads_q, "batch * heads");
  narrow(s.len_q, "L");
  narrow(s.len_kv, "S");
  // head_row = (n * Hq + h) * L + i and dS offsets fit int64 by far; the
  // mask-gradient buffer (N, Hq, L, S) is indexed in int64.
}

Problem make_problem(const AttentionShape& s, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& mask,
                     const std::optional<at::Tensor>& dropout_seed, double dropout_p,
                     bool is_causal, bool causal_bottom_right, double scale) {
  Problem p{};
  p.dtype = kernel_dtype(q.scalar_type());
  p.batch = narrow(s.batch, "batch");
  p.heads_q = narrow(s.heads_q, "query heads");
  p.heads_kv = narrow(s.heads_kv, "key/value heads");
  p.len_q = narrow(s.len_q, "L");
  p.len_kv = narrow(s.len_kv, "S");
  p.dim_qk = narrow(s.dim_qk, "E");
  p.dim_v = narrow(s.dim_v, "Ev");
  p.group = narrow(s.group(), "group");
  p.scale = scale;
  p.causal = is_causal;
  p.causal_offset = causal_bottom_right ? p.len_kv - p.len_q : 0;
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.v = v.const_data_ptr();
  p.sq = strides_of(q);
  p.sk = strides_of(k);
  p.sv = strides_of(v);
  if (mask.defined()) {
    p.mask = mask.const_data_ptr();
    p.smask = strides_of(mask);
  }
  p.dropout = dropout_p > 0.0;
  p.keep_scale = 1.0;
  if (p.dropout) {
    p.seed = dropout_seed->const_data_ptr<int64_t>();
    p.keep_threshold = attention_dropout::keep_threshold(dropout_p);
    p.keep_scale = dropout_p >= 1.0 ? 0.0 : 1.0 / (1.0 - dropout_p);
  }
  return p;
}

// Tensor-core kernels: half types, head dims multiples of 8 (16-byte rows).
bool tensor_core_path(const at::Tensor& query, const AttentionShape& s) {
  return (query.scalar_type() == at::kHalf || query.scalar_type() == at::kBFloat16) &&
         s.dim_qk % 8 == 0 && s.dim_v % 8 == 0;
}

// The layout the tensor-core loads need (16-byte chunks of a row): unit
// last-dim stride, other strides multiples of 8 elements, 16-byte aligned
// data; anything else is copied once into a fresh (aligned) contiguous tensor.
// (A contiguous view at an odd storage offset is misaligned: contiguous()
// would return it as it is, hence clone.)
at::Tensor tensor_core_ready(const at::Tensor& t) {
  bool ok = t.stride(3) == 1 && reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
  for (int d = 0; d < 3; ++d) ok = ok && (t.size(d) <= 1 || t.stride(d) % 8 == 0);
  if (ok) return t;
  return t.is_contiguous() ? t.clone() : t.contiguous();
}

int head_dim_bucket(const AttentionShape& s) {
  const int64_t d = std::max(s.dim_qk, s.dim_v);
  return d <= 64 ? 64 : d <= 128 ? 128 : 256;
}

template <typename Fn>
void dispatch(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Half: fn(__half{}); break;
    case DType::BFloat16: fn(__nv_bfloat16{}); break;
    case DType::Float: fn(float{}); break;
    case DType::Double: fn(double{}); break;
  }
}

// (out (N, Hq, L, Ev), lse (N, Hq, L) in the accumulator dtype), computed on
// `stream` of the current device. Apart from the stream nothing here is
// CUDA-specific, so the tests' CPU emulator of the kernels runs it as it is.
std::tuple<at::Tensor, at::Tensor> forward_on_stream(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& dropout_seed,
    double dropout_p, bool is_causal, bool causal_bottom_right, double scale,
    cudaStream_t stream) {
  const AttentionShape s =
      check_attention_args(query, key, value, attn_mask, dropout_seed, dropout_p);
  check_kernel_limits(query, s);
  const at::Tensor mask = additive_mask(attn_mask, query, s, query.scalar_type());
  at::Tensor out = at::empty({s.batch, s.heads_q, s.len_q, s.dim_v}, query.options());
  at::Tensor lse = at::empty({s.batch, s.heads_q, s.len_q},
                             query.options().dtype(accumulator_dtype(query.scalar_type())));
  if (lse.numel() == 0) return {out, lse};
  if (tensor_core_path(query, s)) {
    const at::Tensor q = tensor_core_ready(query), k = tensor_core_ready(key),
                     v = tensor_core_ready(value);
    ForwardArgs a{make_problem(s, q, k, v, mask, dropout_seed, dropout_p, is_causal,
                               causal_bottom_right, scale),
                  out.mutable_data_ptr(), lse.mutable_data_ptr()};
    if (query.scalar_type() == at::kHalf) {
      tc_forward<__half>(a, head_dim_bucket(s), stream);
    } else {
      tc_forward<__nv_bfloat16>(a, head_dim_bucket(s), stream);
    }
    return {out, lse};
  }
  ForwardArgs a{make_problem(s, query, key, value, mask, dropout_seed, dropout_p, is_causal,
                             causal_bottom_right, scale),
                out.mutable_data_ptr(), lse.mutable_data_ptr()};
  dispatch(a.p.dtype, [&](auto tag) { simt_forward<decltype(tag)>(a, stream); });
  return {out, lse};
}

// Gradients (query, key, value, attn_mask); output_mask selects which. On
// `stream`, like forward_on_stream.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_on_stream(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& attn_mask,
    const std::optional<at::Tensor>& dropout_seed, const at::Tensor& out, const at::Tensor& lse,
    const std::optional<at::Tensor>& grad_lse, double dropout_p, bool is_causal,
    bool causal_bottom_right, double scale, std::array<bool, 4> output_mask,
    cudaStream_t stream) {
  const AttentionShape s =
      check_attention_args(query, key, value, attn_mask, dropout_seed, dropout_p);
  check_kernel_limits(query, s);
  const at::ScalarType acc = accumulator_dtype(query.scalar_type());
  check_attention_backward_tensors(s, query, grad_out, out, lse, grad_lse, acc);
  const at::Tensor mask = additive_mask(attn_mask, query, s, query.scalar_type());
  // Contiguous; for the tensor-core kernels also 16-byte aligned (see tensor_core_ready).
  const at::Tensor dout =
      tensor_core_path(query, s) ? tensor_core_ready(grad_out.contiguous()) : grad_out.contiguous();
  const at::Tensor out_c = out.contiguous();
  const at::Tensor lse_c = lse.contiguous();
  const at::Tensor grad_lse_c = grad_lse.has_value() ? grad_lse->contiguous() : at::Tensor();
  // delta_i = rowsum(dO * O) - dlse_i: the row term of the softmax backward.
  const at::Tensor delta = at::empty({s.batch, s.heads_q, s.len_q}, lse.options());
  dispatch(kernel_dtype(query.scalar_type()), [&](auto tag) {
    using T = decltype(tag);
    row_delta<T>(static_cast<const T*>(dout.const_data_ptr()),
                 static_cast<const T*>(out_c.const_data_ptr()),
                 grad_lse_c.defined() ? grad_lse_c.const_data_ptr() : nullptr,
                 delta.mutable_data_ptr(), delta.numel(), narrow(s.dim_v, "Ev"), stream);
  });

  at::Tensor g_q, g_k, g_v, g_mask;
  if (output_mask[0]) g_q = at::empty({s.batch, s.heads_q, s.len_q, s.dim_qk}, query.options());
  // Zeroed: with S = 0 or L = 0 no kernel writes them.
  if (output_mask[1]) g_k = at::zeros({s.batch, s.heads_kv, s.len_kv, s.dim_qk}, query.options());
  if (output_mask[2]) g_v = at::zeros({s.batch, s.heads_kv, s.len_kv, s.dim_v}, query.options());
  const bool want_mask_grad = output_mask[3] && mask.defined() &&
                              attn_mask->scalar_type() != at::kBool;
  at::Tensor grad_scores;
  if (want_mask_grad) {
    grad_scores = at::zeros({s.batch, s.heads_q, s.len_q, s.len_kv}, query.options().dtype(acc));
  }
  if (s.len_q > 0 && s.len_kv > 0 && s.batch * s.heads_q > 0) {
    BackwardArgs a{make_problem(s, query, key, value, mask, dropout_seed, dropout_p, is_causal,
                                causal_bottom_right, scale),
                   dout.const_data_ptr(),
                   lse_c.const_data_ptr(),
                   delta.const_data_ptr(),
                   g_q.defined() ? g_q.mutable_data_ptr() : nullptr,
                   g_k.defined() ? g_k.mutable_data_ptr() : nullptr,
                   g_v.defined() ? g_v.mutable_data_ptr() : nullptr,
                   want_mask_grad ? grad_scores.mutable_data_ptr() : nullptr};
    if (tensor_core_path(query, s)) {
      const at::Tensor q = tensor_core_ready(query), k = tensor_core_ready(key),
                       v = tensor_core_ready(value);
      a.p = make_problem(s, q, k, v, mask, dropout_seed, dropout_p, is_causal,
                         causal_bottom_right, scale);
      // The atomic dQ's float sums (PYDL_ATTENTION_TC_DQ_ATOMIC=1); never
      // under torch.use_deterministic_algorithms (the atomics' order varies).
      at::Tensor dq_accum;
      if (g_q.defined() && tc_dq_atomic_requested() &&
          !at::globalContext().deterministicAlgorithms()) {
        dq_accum = at::zeros({s.batch, s.heads_q, s.len_q, s.dim_qk},
                             query.options().dtype(at::kFloat));
        a.dq_accum = dq_accum.mutable_data_ptr<float>();
      }
      if (query.scalar_type() == at::kHalf) {
        tc_backward<__half>(a, head_dim_bucket(s), stream);
      } else {
        tc_backward<__nv_bfloat16>(a, head_dim_bucket(s), stream);
      }
    } else {
      dispatch(a.p.dtype, [&](auto tag) { simt_backward<decltype(tag)>(a, stream); });
    }
  } else if (g_q.defined()) {
    g_q.zero_();
  }
  // A broadcast mask's gradient sums over the dims it was broadcast along.
  if (want_mask_grad) g_mask = at::sum_to(grad_scores, attn_mask->sizes()).to(attn_mask->scalar_type());
  return {g_q, g_k, g_v, g_mask};
}

// The dropout keep decisions of the kernels above for dropout_seed (device
// memory, read by the kernel: no host sync).
at::Tensor dropout_keep_on_stream(const at::Tensor& dropout_seed, int64_t batch, int64_t heads,
                                  int64_t query_len, int64_t key_len, double dropout_p,
                                  cudaStream_t stream) {
  at::Tensor keep = empty_dropout_keep(dropout_seed, batch, heads, query_len, key_len, dropout_p);
  if (keep.numel() == 0) return keep;
  const int64_t rows = batch * heads * query_len;
  TORCH_CHECK(rows * ((key_len + 3) / 4) <= int64_t{INT_MAX} * 256,
              "pydl.attention_dropout_keep (CUDA): ", keep.numel(),
              " weights are more than one launch covers");
  dropout_keep_mask(keep.data_ptr<bool>(), dropout_seed.const_data_ptr<int64_t>(), rows, key_len,
                    attention_dropout::keep_threshold(dropout_p), stream);
  return keep;
}

#ifndef PYDL_CUDA_EMULATION
void check_device(const at::Tensor& query) {
  TORCH_CHECK(query.is_cuda(), "pydl.attention (CUDA): query must be a CUDA tensor, got ",
              query.device());
}

std::tuple<at::Tensor, at::Tensor> attention_cuda(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& dropout_seed,
    double dropout_p, bool is_causal, bool causal_bottom_right, double scale) {
  check_device(query);
  const c10::cuda::CUDAGuard guard(query.device());
  return forward_on_stream(query, key, value, attn_mask, dropout_seed, dropout_p, is_causal,
                           causal_bottom_right, scale, at::cuda::getCurrentCUDAStream());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& attn_mask,
    const std::optional<at::Tensor>& dropout_seed, const at::Tensor& out, const at::Tensor& lse,
    const std::optional<at::Tensor>& grad_lse, double dropout_p, bool is_causal,
    bool causal_bottom_right, double scale, std::array<bool, 4> output_mask) {
  check_device(query);
  const c10::cuda::CUDAGuard guard(query.device());
  return backward_on_stream(grad_out, query, key, value, attn_mask, dropout_seed, out, lse,
                            grad_lse, dropout_p, is_causal, causal_bottom_right, scale,
                            output_mask, at::cuda::getCurrentCUDAStream());
}

at::Tensor attention_dropout_keep_cuda(const at::Tensor& dropout_seed, int64_t batch,
                                       int64_t heads, int64_t query_len, int64_t key_len,
                                       double dropout_p) {
  TORCH_CHECK(dropout_seed.is_cuda(), "pydl.attention_dropout_keep (CUDA): dropout_seed must be "
              "a CUDA tensor, got ", dropout_seed.device());
  const c10::cuda::CUDAGuard guard(dropout_seed.device());
  return dropout_keep_on_stream(dropout_seed, batch, heads, query_len, key_len, dropout_p,
                                at::cuda::getCurrentCUDAStream());
}
#endif  // PYDL_CUDA_EMULATION

}  // namespace
}  // namespace attention_cuda
}  // namespace pydl

#ifndef PYDL_CUDA_EMULATION
TORCH_LIBRARY_IMPL(pydl, CUDA, m) {
  m.impl("attention", &pydl::attention_cuda::attention_cuda);
  m.impl("attention_backward", &pydl::attention_cuda::attention_backward_cuda);
  m.impl("attention_dropout_keep", &pydl::attention_cuda::attention_dropout_keep_cuda);
}
#endif  // PYDL_CUDA_EMULATION
