// Small device helpers shared by the conv2d CUDA kernels: conversions between
// storage types and the accumulator type, and the fused epilogue.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "../../common/activation.h"
#include "conv2d_kernels.h"

namespace pydl {
namespace conv_cuda {

__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T>
struct Acc { using type = float; };
template <>
struct Acc<double> { using type = double; };

template <typename T>
__device__ __forceinline__ T from_acc(typename Acc<T>::type v);
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }

// out = act(acc + bias[co] + residual[idx]), the order torch's unfused
// reference uses.
template <typename T, typename A>
__device__ __forceinline__ A epilogue(A acc, const T* __restrict__ bias,
                                      const T* __restrict__ residual, int co, int64_t idx,
                                      Activation act) {
  if (bias != nullptr) acc += to_acc(bias[co]);
  if (residual != nullptr) acc += to_acc(residual[idx]);
  return apply_activation<A>(act, acc);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace conv_cuda
}  // namespace pydl
