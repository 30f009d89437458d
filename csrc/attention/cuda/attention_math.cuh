// Scalar math of the attention softmax in the accumulator type (float or
// double), shared by the CUDA-core and tensor-core kernels.
#pragma once

#include <cuda_runtime.h>

namespace pydl {
namespace attention_cuda {

template <typename AccT>
__device__ __forceinline__ AccT neg_inf() {
  return -static_cast<AccT>(INFINITY);
}

// Accurate exp / log (not the fast intrinsics): the float path promises
// float32 accuracy, and exp(-inf) must be exactly 0.
__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }

}  // namespace attention_cuda
}  // namespace pydl
