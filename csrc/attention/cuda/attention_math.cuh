// Scalar math of the attention softmax in the accumulator type (float or
// double), shared by the CUDA-core and tensor-core kernels.
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

#include "attention/cuda/attention_kernels.h"

namespace pydl {
namespace attention_cuda {

template <typename AccT>
__device__ __forceinline__ AccT neg_inf() {
  return -static_cast<AccT>(INFINITY);
}

// fn(std::true_type{}) when flag holds, else fn(std::false_type{}): a test
// made once, at run time, for a loop that takes its outcome as a compile-time
// constant (the tensor-core kernels' whole-tile loops: with dropout's test
// inside, its inline Philox code sat between their exponentials).
template <typename Fn>
__device__ __forceinline__ void with_static_flag(bool flag, Fn&& fn) {
  if (flag) {
    fn(std::true_type{});
  } else {
    fn(std::false_type{});
  }
}

// Whether query row i of a head sees key j: both exist and, causal, j is at
// most i + causal_offset (the alignment's offset).
__device__ __forceinline__ bool sees_key(const Problem& p, int i, int j) {
  return i < p.len_q && j < p.len_kv && (!p.causal || j <= i + p.causal_offset);
}

// The keys a block of query rows [i0, i0 + rows) can see end here: the causal
// limit of its last row, else every key.
__device__ __forceinline__ int block_key_end(const Problem& p, int i0, int rows) {
  return p.causal ? max(0, min(p.len_kv, i0 + rows + p.causal_offset)) : p.len_kv;
}

// Whether rows i0 and later see every key of [j0, j0 + keys): all of them
// exist and, causal, the last is within row i0's limit (so within every later
// row's). The tensor-core kernels' whole-tile test; rows past L are theirs to
// handle (never stored, or lse = -inf).
__device__ __forceinline__ bool sees_whole_key_tile(const Problem& p, int i0, int j0, int keys) {
  return j0 + keys <= p.len_kv && (!p.causal || j0 + keys - 1 <= i0 + p.causal_offset);
}

// Accurate exp / log (not the fast intrinsics): the float path promises
// float32 accuracy, and exp(-inf) must be exactly 0.
__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }

}  // namespace attention_cuda
}  // namespace pydl
