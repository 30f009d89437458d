// conv2d backward, written once with ATen ops so the same code serves CPU
// (MKL) and CUDA (cuBLAS): the input is phase-packed as in the CPU forward
// (see cpu/conv2d_cpu_kernel.h) and both gradients become a few large
// shifted GEMMs, one per kernel tap.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

namespace pydl {

// Returns (grad_input, grad_weight, grad_bias, grad_residual); undefined
// tensors where output_mask is false.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> conv2d_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
    const at::Tensor& out, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
    std::array<bool, 4> output_mask);

}  // namespace pydl
