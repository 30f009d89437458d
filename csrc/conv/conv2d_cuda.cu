// conv2d forward on CUDA: argument handling, layout, and kernel choice. The
// kernels themselves live in cuda/ and see no ATen (see cuda/conv2d_kernels.h).
//
// Everything runs in NHWC: the input is made channels_last, the weight
// [Cout, KH, KW, Cin/groups] (depthwise: [KH*KW, C]), the residual
// channels_last, and the output is written channels_last, then returned in
// the input's memory format.
//
// Paths:
//   depthwise (groups == C == Cout > 1)   direct kernel, all float dtypes
//   fp16 / bf16                           implicit GEMM, tensor cores (wmma)
//   fp32, TF32 allowed for cuDNN convs    implicit GEMM, TF32 tensor cores
//   fp32 (TF32 off), fp64                 implicit GEMM, CUDA cores, exact
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <climits>
#include <cstdint>
#include <optional>

#include "../common/activation.h"
#include "conv2d_backward.h"
#include "conv2d_shape.h"
#include "cuda/conv2d_kernels.h"

namespace pydl {

namespace {

bool aligned_to(const void* p, size_t bytes) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

conv_cuda::DType to_kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return conv_cuda::DType::Half;
    case at::kBFloat16: return conv_cuda::DType::BFloat16;
    case at::kFloat: return conv_cuda::DType::Float;
    case at::kDouble: return conv_cuda::DType::Double;
    default:
      TORCH_CHECK(false, "pydl.conv2d (CUDA): unsupported dtype ", t,
                  "; expected float16, bfloat16, float32 or float64");
  }
}

int narrow(int64_t v, const char* what) {
  TORCH_CHECK(v <= INT_MAX, "pydl.conv2d (CUDA): ", what, " = ", v,
              " is too large for the CUDA kernels (at most ", INT_MAX, ")");
  return static_cast<int>(v);
}

}  // namespace

at::Tensor conv2d_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                               c10::string_view activation,
                               const std::optional<at::Tensor>& residual) {
  const Conv2dGeometry g =
      check_conv2d_args(input, weight, bias, stride, padding, dilation, groups, residual);
  const Activation act = parse_activation(activation);
  TORCH_CHECK(input.is_cuda(), "pydl.conv2d (CUDA): expected CUDA tensors, got input on ",
              input.device());
  const conv_cuda::DType dtype = to_kernel_dtype(input.scalar_type());
  const c10::cuda::CUDAGuard guard(input.device());

  const at::MemoryFormat fmt = conv_memory_format(input);
  at::Tensor out = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                             input.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out.contiguous(fmt);

  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(prop->major >= 8, "pydl.conv2d (CUDA): the kernels need compute capability 8.0 or "
              "newer, this device has ", prop->major, ".", prop->minor);

  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  const bool depthwise = g.is_depthwise();
  // Depthwise: [C, 1, KH, KW] -> [KH*KW, C]; otherwise [Cout, KH, KW, Cin_g].
  const at::Tensor w =
      depthwise ? weight.reshape({g.out_channels, g.kernel_h * g.kernel_w}).t().contiguous()
                : weight.permute({0, 2, 3, 1}).contiguous();
  at::Tensor b, r;
  if (bias.has_value()) b = bias->contiguous();
  if (residual.has_value()) r = residual->contiguous(at::MemoryFormat::ChannelsLast);

  conv_cuda::ConvParams p{};
  p.input = x.const_data_ptr();
  p.weight = w.const_data_ptr();
  p.bias = b.defined() ? b.const_data_ptr() : nullptr;
  p.residual = r.defined() ? r.const_data_ptr() : nullptr;
  p.output = out.mutable_data_ptr();
  p.M = g.batch * g.out_h * g.out_w;
  p.K = g.kernel_h * g.kernel_w * g.in_per_group();
  p.N = narrow(g.batch, "batch");
  p.H = narrow(g.in_h, "input height");
  p.W = narrow(g.in_w, "input width");
  p.C = narrow(g.in_channels, "in_channels");
  p.OH = narrow(g.out_h, "output height");
  p.OW = narrow(g.out_w, "output width");
  p.Cout = narrow(g.out_channels, "out_channels");
  p.KH = narrow(g.kernel_h, "kernel height");
  p.KW = narrow(g.kernel_w, "kernel width");
  p.stride_h = narrow(g.stride_h, "stride");
  p.stride_w = narrow(g.stride_w, "stride");
  p.pad_h = narrow(g.pad_h, "padding");
  p.pad_w = narrow(g.pad_w, "padding");
  p.dil_h = narrow(g.dil_h, "dilation");
  p.dil_w = narrow(g.dil_w, "dilation");
  p.groups = narrow(g.groups, "groups");
  p.cin_g = narrow(g.in_per_group(), "in_channels / groups");
  p.cout_g = narrow(g.out_per_group(), "out_channels / groups");
  p.activation = static_cast<int>(act);
  narrow(p.K, "kernel_h * kernel_w * in_channels / groups");
  // Pixel coordinates are int inside the kernels: keep the padded extents in range.
  narrow(g.in_h + 2 * g.pad_h + g.stride_h * g.out_h + g.dil_h * g.kernel_h, "padded height");
  narrow(g.in_w + 2 * g.pad_w + g.stride_w * g.out_w + g.dil_w * g.kernel_w, "padded width");

  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const size_t esize = x.element_size();

  if (depthwise) {
    const size_t quad = 4 * esize;
    const bool vec = p.C % 4 == 0 && aligned_to(p.input, quad) && aligned_to(p.weight, quad) &&
                     aligned_to(p.bias, quad) && aligned_to(p.residual, quad) &&
                     aligned_to(p.output, quad);
    conv_cuda::launch_depthwise(p, dtype, vec, stream);
  } else {
    TORCH_CHECK(g.groups <= 65535, "pydl.conv2d (CUDA): at most 65535 groups (non-depthwise), got ",
                g.groups);
    TORCH_CHECK(conv_cuda::ceil_div_host(p.M, 64) <= INT_MAX,
                "pydl.conv2d (CUDA): too many output pixels (", p.M, ")");
    // 16-byte operand loads need whole 16-byte chunks of Cin_g and aligned bases.
    const int64_t chunk = 16 / static_cast<int64_t>(esize);
    const bool vec = g.in_per_group() % chunk == 0 && aligned_to(p.input, 16) &&
                     aligned_to(p.weight, 16);
    switch (dtype) {
      case conv_cuda::DType::Half: conv_cuda::launch_igemm_tc_half(p, vec, stream); break;
      case conv_cuda::DType::BFloat16: conv_cuda::launch_igemm_tc_bf16(p, vec, stream); break;
      case conv_cuda::DType::Float:
        if (at::globalContext().allowTF32CuDNN()) {
          conv_cuda::launch_igemm_tc_tf32(p, vec, stream);
        } else {
          conv_cuda::launch_igemm_simt(p, dtype, stream);
        }
        break;
      case conv_cuda::DType::Double: conv_cuda::launch_igemm_simt(p, dtype, stream); break;
    }
  }
  return fmt == at::MemoryFormat::ChannelsLast ? out : out.contiguous(fmt);
}

}  // namespace pydl

TORCH_LIBRARY_IMPL(pydl, CUDA, m) {
  m.impl("conv2d", &pydl::conv2d_forward_cuda);
  m.impl("conv2d_backward", &pydl::conv2d_backward);
}
