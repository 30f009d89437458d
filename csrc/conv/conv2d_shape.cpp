// conv2d argument validation: one definition, so every backend reports bad
// input with the same message.
#include "conv/conv2d_shape.h"

namespace pydl {

namespace {

int64_t single_or_pair(at::IntArrayRef v, size_t i, const char* name) {
  TORCH_CHECK(v.size() == 1 || v.size() == 2, "pydl.conv2d: ", name,
              " must have 1 or 2 elements, got ", v.size());
  return v.size() == 1 ? v[0] : v[i];
}

}  // namespace

Conv2dGeometry check_conv2d_args(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                 const std::optional<at::Tensor>& residual) {
  TORCH_CHECK(input.dim() == 4, "pydl.conv2d: expected a 4-D input (N, C, H, W), got ",
              input.dim(), "-D input of shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 4,
              "pydl.conv2d: expected a 4-D weight (out_channels, in_channels/groups, kH, kW), got ",
              weight.dim(), "-D weight of shape ", weight.sizes());
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(),
              "pydl.conv2d: input and weight must have the same dtype, got ",
              input.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(input.device() == weight.device(),
              "pydl.conv2d: input and weight must be on the same device, got ",
              input.device(), " and ", weight.device());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "pydl.conv2d: expected a floating-point input, got ", input.scalar_type());
  TORCH_CHECK(groups > 0, "pydl.conv2d: groups must be positive, got ", groups);

  Conv2dGeometry g{};
  g.batch = input.size(0);
  g.in_channels = input.size(1);
  g.in_h = input.size(2);
  g.in_w = input.size(3);
  g.out_channels = weight.size(0);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.groups = groups;
  g.stride_h = single_or_pair(stride, 0, "stride");
  g.stride_w = single_or_pair(stride, 1, "stride");
  g.pad_h = single_or_pair(padding, 0, "padding");
  g.pad_w = single_or_pair(padding, 1, "padding");
  g.dil_h = single_or_pair(dilation, 0, "dilation");
  g.dil_w = single_or_pair(dilation, 1, "dilation");
  TORCH_CHECK(g.stride_h > 0 && g.stride_w > 0, "pydl.conv2d: stride must be positive, got ",
              stride);
  TORCH_CHECK(g.pad_h >= 0 && g.pad_w >= 0, "pydl.conv2d: padding must be non-negative, got ",
              padding);
  TORCH_CHECK(g.dil_h > 0 && g.dil_w > 0, "pydl.conv2d: dilation must be positive, got ",
              dilation);
  TORCH_CHECK(g.in_channels % groups == 0, "pydl.conv2d: in_channels (", g.in_channels,
              ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(g.out_channels % groups == 0, "pydl.conv2d: out_channels (", g.out_channels,
              ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(weight.size(1) * groups == g.in_channels, "pydl.conv2d: weight of shape ",
              weight.sizes(), " expects ", weight.size(1) * groups,
              " input channels with groups=", groups, ", but input has ", g.in_channels);
  TORCH_CHECK(g.kernel_h > 0 && g.kernel_w > 0 && g.out_channels > 0,
              "pydl.conv2d: weight has an empty dimension: ", weight.sizes());

  const int64_t eff_kh = g.dil_h * (g.kernel_h - 1) + 1;
  const int64_t eff_kw = g.dil_w * (g.kernel_w - 1) + 1;
  const int64_t padded_h = g.in_h + 2 * g.pad_h;
  const int64_t padded_w = g.in_w + 2 * g.pad_w;
  TORCH_CHECK(padded_h >= eff_kh && padded_w >= eff_kw, "pydl.conv2d: input of spatial size (",
              g.in_h, ", ", g.in_w, ") with padding (", g.pad_h, ", ", g.pad_w,
              ") is smaller than the dilated kernel (", eff_kh, ", ", eff_kw,
              "): the output would be empty");
  g.out_h = (padded_h - eff_kh) / g.stride_h + 1;
  g.out_w = (padded_w - eff_kw) / g.stride_w + 1;

  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 1 && b.size(0) == g.out_channels, "pydl.conv2d: bias must have shape (",
                g.out_channels, "), got ", b.sizes());
    TORCH_CHECK(b.scalar_type() == input.scalar_type() && b.device() == input.device(),
                "pydl.conv2d: bias must match the input's dtype and device, got ", b.scalar_type(),
                " on ", b.device(), " for input ", input.scalar_type(), " on ", input.device());
  }
  if (residual.has_value()) {
    const at::Tensor& r = *residual;
    TORCH_CHECK(r.sizes() == at::IntArrayRef(out_sizes(g)),
                "pydl.conv2d: residual must have the output's shape ", at::IntArrayRef(out_sizes(g)),
                ", got ", r.sizes());
    TORCH_CHECK(r.scalar_type() == input.scalar_type() && r.device() == input.device(),
                "pydl.conv2d: residual must match the input's dtype and device, got ",
                r.scalar_type(), " on ", r.device());
  }
  return g;
}

at::MemoryFormat conv_memory_format(const at::Tensor& input) {
  return input.suggest_memory_format() == at::MemoryFormat::ChannelsLast
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

}  // namespace pydl
