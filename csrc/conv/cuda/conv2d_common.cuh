// Small device helpers shared by the conv2d CUDA kernels: the fused epilogue
// and the implicit-GEMM index decoding (storage <-> accumulator conversions
// come from common/cuda_storage.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "../../common/activation.h"
#include "../../common/cuda_storage.cuh"
#include "conv2d_kernels.h"

namespace pydl {
namespace conv_cuda {

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

// Implicit GEMM row m (an output pixel) of group g: where its image starts in
// the NHWC input and the top-left input coordinates of its window. Rows past
// M get a window outside every image, so all their taps load zeros.
struct PixelWindow {
  int64_t base;
  int ih0, iw0;
};

__device__ __forceinline__ PixelWindow pixel_window(const ConvParams& p, int64_t m, int g) {
  if (m >= p.M) return {0, -(1 << 30), -(1 << 30)};
  const int64_t hw = static_cast<int64_t>(p.OH) * p.OW;
  const int64_t img = m / hw;
  const int rem = static_cast<int>(m - img * hw);
  const int oh = rem / p.OW;
  const int ow = rem - oh * p.OW;
  return {img * p.H * p.W * p.C + static_cast<int64_t>(g) * p.cin_g,
          oh * p.stride_h - p.pad_h, ow * p.stride_w - p.pad_w};
}

// Implicit GEMM column k < K: kernel tap (r, s) and input channel c within the group.
struct KernelTap {
  int r, s, c;
};

__device__ __forceinline__ KernelTap kernel_tap(const ConvParams& p, int k) {
  const int kwc = p.KW * p.cin_g;
  const int r = k / kwc;
  const int rem = k - r * kwc;
  const int s = rem / p.cin_g;
  return {r, s, rem - s * p.cin_g};
}

}  // namespace conv_cuda
}  // namespace pydl
