// Interface between the attention CUDA entry points (attention_cuda.cu, which
// sees ATen) and the kernels under cuda/ (which see only these structs).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/env_switch.h"

namespace pydl {
namespace attention_cuda {

enum class DType { Half, BFloat16, Float, Double };

// Element strides of an (N, H, rows, cols) operand; 0 where broadcast.
struct Strides {
  int64_t n, h, row, col;
};

// What forward and backward share. Key j is visible to query row i when
// j < S, the additive mask (if any) allows it and, if causal,
// j <= i + causal_offset (0: top-left alignment, S - L: bottom-right).
struct Problem {
  DType dtype;
  int batch, heads_q, heads_kv, len_q, len_kv, dim_qk, dim_v;
  int group;  // heads_q / heads_kv: query heads sharing one key/value head
  double scale;
  bool causal;
  int causal_offset;
  const void *q, *k, *v;  // the storage dtype
  Strides sq, sk, sv;
  // Additive mask in the storage dtype viewed as (N, Hq, L, S); nullptr if none.
  const void* mask;
  Strides smask;
  // Dropout: a weight is kept when dropout_philox.h's hash of
  // (*seed, head_row, col) clears keep_threshold, and is then scaled by keep_scale.
  bool dropout;
  const int64_t* seed;  // device memory, read by the kernels (no host sync)
  uint32_t keep_threshold;
  // 1 without dropout: the tensor-core kernels multiply by it unconditionally
  // (a value-initialized Problem{} would otherwise zero their output and dV).
  double keep_scale = 1.0;
};

struct ForwardArgs {
  Problem p;
  void* out;  // (N, Hq, L, Ev) contiguous, storage dtype
  void* lse;  // (N, Hq, L) contiguous, accumulator dtype (float; double for double)
  // Tensor-core forward only: the whole-tile softmax (attention_tc_forward.cuh).
  bool whole_tiles = false;
};

struct BackwardArgs {
  Problem p;
  const void* grad_out;  // (N, Hq, L, Ev) contiguous, storage dtype
  const void* lse;       // (N, Hq, L) contiguous, accumulator dtype
  const void* delta;     // (N, Hq, L) contiguous, accumulator dtype: rowsum(dO * O) - grad_lse
  void* grad_q;          // (N, Hq, L, E) contiguous, storage dtype, or nullptr
  void* grad_k;          // (N, Hk, S, E) contiguous, storage dtype, or nullptr
  void* grad_v;          // (N, Hk, S, Ev) contiguous, storage dtype, or nullptr
  void* grad_scores;     // (N, Hq, L, S) contiguous zeroed, accumulator dtype, or nullptr
  // Tensor-core backward only: the whole-tile softmax (attention_tc_forward.cuh).
  bool whole_tiles = false;
  // Tensor-core backward only, or nullptr: (N, Hq, L, E) float, zeroed. The
  // dK / dV kernel then also adds each query tile's dS K into it (atomics)
  // and no dQ kernel runs (attention_tc_backward.cuh, kAtomicDq).
  float* dq_accum = nullptr;
};

// PYDL_ATTENTION_TC_DQ_ATOMIC=1: the tensor-core backward accumulates dQ in
// its dK / dV kernel with float atomics (FlashAttention-2's scheme) instead of
// a second kernel that recomputes S and dP per query tile: 5 tile products of
// the backward's 7, at the price of atomics and a result that depends on
// their order. Opt-in A/B switch (scripts/attention_tc_ab.py), read per call.
// Timed on an H200 (bf16, B16 H16 L4096, 2026-11-28, with its vector
// reductions): forward + backward 1.07x faster than the two kernels at head
// dim 128 (full), 1.12x slower at 64 (causal); one case each, so not yet the
// default anywhere.
inline bool tc_dq_atomic_requested() { return env_switch_on("PYDL_ATTENTION_TC_DQ_ATOMIC"); }

// delta[r] = sum_c grad_out[r, c] * out[r, c] - grad_lse[r] (grad_lse may be
// nullptr) for `rows` contiguous rows of `dim`; grad_lse and delta in the
// accumulator dtype. T: __half, __nv_bfloat16, float, double.
template <typename T>
void row_delta(const T* grad_out, const T* out, const void* grad_lse, void* delta, int64_t rows,
               int dim, cudaStream_t stream);

// keep[r * cols + c] = whether dropout keeps weight (head_row r, column c)
// for the seed at *seed (device memory) and dropout_philox.h's threshold; at
// most 2^31 - 1 blocks of 256 threads (the caller checks rows * ceil(cols / 4)).
void dropout_keep_mask(bool* keep, const int64_t* seed, int64_t rows, int64_t cols,
                       uint32_t threshold, cudaStream_t stream);

// CUDA-core kernels, exact accumulator math, any head dim up to kMaxHeadDim,
// any strides. T: __half, __nv_bfloat16, float or double (one .cu file each).
constexpr int kMaxHeadDim = 256;
template <typename T>
void simt_forward(const ForwardArgs& a, cudaStream_t stream);
template <typename T>
void simt_backward(const BackwardArgs& a, cudaStream_t stream);
#define PYDL_DECLARE_SIMT(T)                                          \
  template <>                                                         \
  void simt_forward<T>(const ForwardArgs& a, cudaStream_t stream);    \
  template <>                                                         \
  void simt_backward<T>(const BackwardArgs& a, cudaStream_t stream);
PYDL_DECLARE_SIMT(__half)
PYDL_DECLARE_SIMT(__nv_bfloat16)
PYDL_DECLARE_SIMT(float)
PYDL_DECLARE_SIMT(double)
#undef PYDL_DECLARE_SIMT

// Tensor-core kernels (fp16 / bf16 only), head dims bucketed to 64 / 128 / 256
// (head_dim_bucket >= max(E, Ev)). Need E, Ev multiples of 8, unit last-dim
// strides, other strides multiples of 8 elements and 16-byte aligned data.
template <typename T>
void tc_forward(const ForwardArgs& a, int head_dim_bucket, cudaStream_t stream);
template <>
void tc_forward<__half>(const ForwardArgs& a, int head_dim_bucket, cudaStream_t stream);
template <>
void tc_forward<__nv_bfloat16>(const ForwardArgs& a, int head_dim_bucket, cudaStream_t stream);
// head_dim_bucket 64, 128 or 256. lse and delta float.
template <typename T>
void tc_backward(const BackwardArgs& a, int head_dim_bucket, cudaStream_t stream);
template <>
void tc_backward<__half>(const BackwardArgs& a, int head_dim_bucket, cudaStream_t stream);
template <>
void tc_backward<__nv_bfloat16>(const BackwardArgs& a, int head_dim_bucket, cudaStream_t stream);

}  // namespace attention_cuda
}  // namespace pydl
