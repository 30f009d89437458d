// conv2d on the CPU: argument checks, weight/bias preparation and the choice
// of per-ISA kernel; the loops themselves are in cpu/conv2d_cpu_kernel_isa.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "common/activation.h"
#include "common/cpu_isa.h"
#include "common/workspace.h"
#include "conv/conv2d_backward.h"
#include "conv/conv2d_shape.h"
#include "conv/cpu/conv2d_cpu_kernel.h"

namespace pydl {
namespace conv_cpu {

PackedGeometry packed_geometry(const Conv2dGeometry& g) {
  PackedGeometry p{};
  p.grid_h = (g.in_h + 2 * g.pad_h + g.stride_h - 1) / g.stride_h;
  p.grid_w = (g.in_w + 2 * g.pad_w + g.stride_w - 1) / g.stride_w;
  p.image_stride = p.grid_h * p.grid_w * g.in_channels;
  p.phase_stride = g.batch * p.image_stride;
  // Discarded output columns read up to one grid row plus the largest
  // column shift past their image; keep that much zeroed memory at the end.
  const int64_t max_dy = (g.dil_h * (g.kernel_h - 1)) / g.stride_h;
  const int64_t max_dx = (g.dil_w * (g.kernel_w - 1)) / g.stride_w;
  p.tail_pixels = (max_dy + 1) * p.grid_w + max_dx + 1;
  return p;
}

PYDL_DEFINE_KERNEL_FOR_THIS_CPU()

std::string selected_isa() { return kernel_for_this_cpu().isa; }

namespace {

constexpr int64_t kDirectMinPixels = 64;

void copy_strides(const at::Tensor& t, int64_t* dst) {
  for (int i = 0; i < 4; ++i) dst[i] = t.stride(i);
}

// Dense convolutions the direct kernel (isa/direct_avx512.h) runs faster
// than im2col + GEMM (measured 1.0-1.3x on ResNet's 3x3 layers, 5x5, the
// stem): float compute, a kernel larger than 1x1 (1x1 layers read the
// packed input in place already), whole 64-channel output blocks (with a
// 32-channel tail, a 96-channel layer ran 0.8-0.97x of the GEMM path), and a
// block's weights ([taps][Cin][64] floats) within ~1.2 MB so they stay in L2
// across a thread's rows. Few output pixels do not repay the weight
// re-layout (every call, block by block; ~N*OH*OW FLOPs per weight element).
// PYDL_CONV_DIRECT=0 keeps every convolution on the GEMM path (for A/B runs).
bool use_direct(const Conv2dGeometry& g, at::ScalarType acc) {
  static const bool enabled = [] {
    const char* env = std::getenv("PYDL_CONV_DIRECT");
    return env == nullptr || std::string(env) != "0";
  }();
  const int64_t taps = g.kernel_h * g.kernel_w;
  return enabled && conv_cpu::kernel_for_this_cpu().has_direct && acc == at::kFloat &&
         g.groups == 1 && taps > 1 && g.out_channels % 64 == 0 &&
         taps * g.in_channels <= 4608 && g.batch * g.out_h * g.out_w >= kDirectMinPixels;
}

// The input already is the packed layout (no padding, no phases, no shifts).
bool input_is_packed(const at::Tensor& input, const Conv2dGeometry& g, at::ScalarType acc) {
  return g.is_unpadded_pointwise() && input.scalar_type() == acc &&
         input.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      c10::string_view activation, const std::optional<at::Tensor>& residual) {
  const Conv2dGeometry g =
      check_conv2d_args(input, weight, bias, stride, padding, dilation, groups, residual);
  const Activation act = parse_activation(activation);
  at::Tensor out =
      at::empty(out_sizes(g), input.options().memory_format(conv_memory_format(input)));
  if (out.numel() == 0) return out;

  const at::ScalarType acc = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const PackedGeometry p = packed_geometry(g);
  // GEMM path: [Cout, taps, Cin/g] with taps in gemm_tap_order (for stride 1
  // that is [Cout, kh, kw, Cin/g]: free for channels_last weights), or the
  // NCHW weight itself, [Cout, Cin/g, taps], when reordering it would copy
  // more than a channel-minor im2col of the (fewer) output pixels does;
  // depthwise: [kh, kw, C].
  const at::Tensor w = weight.to(acc);
  at::Tensor packed_weight;
  const bool direct = use_direct(g, acc);
  const bool k_channel_major = !direct && !g.is_depthwise() && taps > 1 && w.is_contiguous() &&
                               g.batch * g.out_h * g.out_w < g.out_channels;
  if (direct) {
    packed_weight = w;  // re-laid out block by block inside the kernel
  } else if (g.is_depthwise()) {
    packed_weight = w.reshape({g.out_channels, taps}).t().contiguous();
  } else if (k_channel_major) {
    packed_weight = w;
  } else {
    const std::vector<int64_t> order = gemm_tap_order(g, p);
    packed_weight = w.permute({0, 2, 3, 1}).reshape({g.out_channels, taps, g.in_per_group()});
    if (!std::is_sorted(order.begin(), order.end()))
      packed_weight = packed_weight.index_select(1, at::tensor(order, at::kLong));
    packed_weight = packed_weight.contiguous();
  }
  at::Tensor packed_bias = bias.has_value() ? bias->to(acc).contiguous() : at::Tensor();

  ForwardArgs a{};
  a.g = g;
  a.k_channel_major = k_channel_major;
  a.direct = direct;
  a.p = p;
  a.dtype = input.scalar_type();
  a.act = act;
  // The direct kernel converts each input row once per 64-channel block; from
  // channel planes that is a strided gather per block, so with several
  // blocks the input is made channels-last once, up front.
  const at::Tensor direct_input =
      direct && input.stride(1) != 1 && g.out_channels > 64
          ? input.contiguous(at::MemoryFormat::ChannelsLast)
          : at::Tensor();
  const at::Tensor& read_input = direct_input.defined() ? direct_input : input;
  a.input = read_input.const_data_ptr();
  copy_strides(read_input, a.input_strides);
  a.input_is_packed = input_is_packed(input, g, acc);
  a.input_planes = !a.input_is_packed && !g.is_depthwise() && g.is_unpadded_pointwise() &&
                   input.scalar_type() == acc && input.is_contiguous() && out.is_contiguous();
  a.depthwise_direct = g.is_depthwise() && input.scalar_type() == acc &&
                       input.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                       out.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                       (!residual.has_value() || residual->stride(1) == 1);
  // Plane-wise depthwise vectorizes along output rows: only worth it for wide
  // rows. Measured (AMD EPYC, AVX-512, float, batch 8) against the packed
  // path, which there transposes NCHW rows in and out in blocks and takes
  // 3/5/7-wide kernel rows whole at column stride 1 and dilation 1: in that
  // case the packed path won up to 56-wide rows (3x3: 64@56 1.4x, 96@28 3.6x;
  // 5x5: 240@28 3.2x, 240@56 1.9x) and lost at 112 (32@112, 0.5x). At column
  // stride 2 the planes won or tied (32@112 2.7x, 144@56 1.7x, 120@28 5x5
  // 1.0x). Elsewhere the older rule (rows >= 24 pixels) stands.
  const bool packed_rows_fast = kernel_for_this_cpu().isa == "AVX512" && acc == at::kFloat &&
                                g.stride_w == 1 && depthwise_rows_fit(g.kernel_w, 1, g.dil_w);
  a.depthwise_planes = g.is_depthwise() && !a.depthwise_direct && input.scalar_type() == acc &&
                       input.is_contiguous() && out.is_contiguous() && g.out_w >= 24 &&
                       (!packed_rows_fast || g.out_w >= 96);
  if (a.direct) {
    a.packed = nullptr;  // reads the input through per-thread padded rows
  } else if (a.input_is_packed || a.input_planes || a.depthwise_direct || a.depthwise_planes) {
    a.packed = const_cast<void*>(input.const_data_ptr());
  } else {
    const int64_t count = g.stride_h * g.stride_w * a.p.phase_stride + a.p.tail_pixels * g.in_channels;
    const int64_t bytes = count * static_cast<int64_t>(at::elementSize(acc));
    a.packed = Workspace::get<unsigned char>(WorkspaceSlot::PackedInput, bytes);
  }
  a.weight = packed_weight.const_data_ptr();
  if (direct) copy_strides(packed_weight, a.weight_strides);
  a.bias = packed_bias.defined() ? packed_bias.const_data_ptr() : nullptr;
  if (residual.has_value()) {
    a.residual = residual->const_data_ptr();
    copy_strides(*residual, a.residual_strides);
  }
  a.out = out.mutable_data_ptr();
  copy_strides(out, a.out_strides);
  kernel_for_this_cpu().forward(a);
  return out;
}

}  // namespace
}  // namespace conv_cpu
}  // namespace pydl

TORCH_LIBRARY_IMPL(pydl, CPU, m) {
  m.impl("conv2d", &pydl::conv_cpu::conv2d_cpu);
  m.impl("conv2d_backward", &pydl::conv2d_backward);  // shared with CUDA
}
