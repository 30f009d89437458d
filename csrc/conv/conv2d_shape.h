// conv2d geometry and argument validation, shared by the CPU and CUDA kernels.
//
// Every public conv2d entry point calls check_conv2d_args() first, so bad
// input gets the same actionable message on every backend.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "conv2d_geometry.h"

namespace pydl {

inline std::vector<int64_t> out_sizes(const Conv2dGeometry& g) {
  return {g.batch, g.out_channels, g.out_h, g.out_w};
}

// Validates everything a conv2d call depends on and returns its geometry.
// Defined once in conv2d_shape.cpp (compiled by the host compiler only).
Conv2dGeometry check_conv2d_args(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                 const std::optional<at::Tensor>& residual);

// Output memory format follows the input, as torch's conv2d does.
at::MemoryFormat conv_memory_format(const at::Tensor& input);

}  // namespace pydl
