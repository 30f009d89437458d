// The shape of one conv2d call, as plain integers (no ATen), so the per-ISA
// CPU kernels and the CUDA kernels can include it cheaply.
#pragma once

#include <cstdint>

namespace pydl {

struct Conv2dGeometry {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, kernel_h, kernel_w;
  int64_t out_h, out_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t groups;

  int64_t in_per_group() const { return in_channels / groups; }
  int64_t out_per_group() const { return out_channels / groups; }
  // A 1x1, stride-1, unpadded convolution: a plain matmul over pixels.
  bool is_unpadded_pointwise() const {
    return kernel_h == 1 && kernel_w == 1 && stride_h == 1 && stride_w == 1 && pad_h == 0 &&
           pad_w == 0;
  }
  bool is_depthwise() const {
    return groups == in_channels && groups == out_channels && groups > 1;
  }
};

}  // namespace pydl
