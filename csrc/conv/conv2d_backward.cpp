// conv2d backward with ATen ops, so CPU (MKL) and CUDA (cuBLAS) share it; on
// the CPU, a stride-1 dense layer's input gradient is a pydl conv2d call
// (input_grad_by_conv below), and depthwise layers have their own kernel.
//
// With the input phase-packed (cpu/conv2d_cpu_kernel.h), tap (r, s) of the
// forward is  Z[q] += X[q + off(r, s)] * W_rs  over output-grid rows q, so
//   dW_rs = G^T X[. + off]          (one GEMM per tap, K = every grid row)
//   dX[p] += G[p - off] * W_rs^T    (one GEMM per tap into its phase)
// where G is the output gradient scattered onto the grid (zero at the
// discarded columns/rows, so nothing leaks across images).
#include "conv/conv2d_backward.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <array>

#include "common/activation.h"
#include "conv/conv2d_shape.h"
#include "conv/cpu/conv2d_cpu_kernel.h"

namespace pydl {
namespace {

at::Tensor call_conv2d(const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                       c10::string_view activation, const std::optional<at::Tensor>& residual) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pydl::conv2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef, int64_t,
                                         c10::string_view, const std::optional<at::Tensor>&)>();
  return op.call(input, weight, bias, stride, padding, dilation, groups, activation, residual);
}

// Gradient with respect to the pre-activation z = conv + bias + residual.
at::Tensor preactivation_grad(const at::Tensor& grad_out, const at::Tensor& out, Activation act,
                              const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                              const std::optional<at::Tensor>& residual) {
  switch (act) {
    case Activation::None:
      return grad_out;
    case Activation::Relu:  // relu'(z) is readable off the output
      return at::threshold_backward(grad_out, out, 0);
    default: {
      // Smooth activations need z: recompute it rather than keep it alive.
      const at::Tensor z =
          call_conv2d(input, weight, bias, stride, padding, dilation, groups, "none", residual);
      if (act == Activation::Silu) return at::silu_backward(grad_out, z);
      return at::gelu_backward(grad_out, z, act == Activation::GeluTanh ? "tanh" : "none");
    }
  }
}

// The input (N, C, H, W) as [phase, n, grid_h, grid_w, C] rows plus zero tail rows.
at::Tensor pack_phases(const at::Tensor& input, const Conv2dGeometry& g,
                       const conv_cpu::PackedGeometry& p, at::ScalarType acc) {
  const int64_t sh = g.stride_h, sw = g.stride_w;
  const int64_t rows = sh * sw * g.batch * p.grid_h * p.grid_w;
  at::Tensor padded = at::constant_pad_nd(
      input.to(acc), {g.pad_w, p.grid_w * sw - g.in_w - g.pad_w, g.pad_h,
                      p.grid_h * sh - g.in_h - g.pad_h});
  at::Tensor phases = padded.reshape({g.batch, g.in_channels, p.grid_h, sh, p.grid_w, sw})
                          .permute({3, 5, 0, 2, 4, 1});
  at::Tensor buffer = at::zeros({rows + p.tail_pixels, g.in_channels}, input.options().dtype(acc));
  buffer.narrow(0, 0, rows).view({sh, sw, g.batch, p.grid_h, p.grid_w, g.in_channels}).copy_(phases);
  return buffer;
}

// Inverse of pack_phases for a gradient: sums nothing, drops padding.
at::Tensor unpack_phases(const at::Tensor& buffer, const Conv2dGeometry& g,
                         const conv_cpu::PackedGeometry& p) {
  const int64_t sh = g.stride_h, sw = g.stride_w;
  const int64_t rows = sh * sw * g.batch * p.grid_h * p.grid_w;
  return buffer.narrow(0, 0, rows)
      .view({sh, sw, g.batch, p.grid_h, p.grid_w, g.in_channels})
      .permute({2, 5, 3, 0, 4, 1})
      .reshape({g.batch, g.in_channels, p.grid_h * sh, p.grid_w * sw})
      .narrow(2, g.pad_h, g.in_h)
      .narrow(3, g.pad_w, g.in_w);
}

// A stride-1 dense convolution's input gradient is itself a convolution:
// of the output gradient with the weight flipped in space and transposed
// in channels, padded by dil * (k - 1) - pad (so that padding must not
// exceed dil * (k - 1)). On the CPU that runs through pydl's forward
// kernels (the direct kernel for 64-channel blocks) instead of one GEMM per
// tap over a packed grid: 3x3 64 @56, 1.3 -> ~0.7 ms.
bool takes_transposed_conv(const at::Tensor& input, const Conv2dGeometry& g) {
  return input.is_cpu() && g.groups == 1 && g.stride_h == 1 && g.stride_w == 1 &&
         g.kernel_h * g.kernel_w > 1 && g.pad_h <= g.dil_h * (g.kernel_h - 1) &&
         g.pad_w <= g.dil_w * (g.kernel_w - 1);
}

at::Tensor input_grad_by_conv(const at::Tensor& gz, const at::Tensor& input,
                              const at::Tensor& weight, const Conv2dGeometry& g,
                              at::IntArrayRef dilation) {
  const at::Tensor flipped = weight.flip({2, 3}).transpose(0, 1);  // [C, K, kh, kw]
  const std::array<int64_t, 2> unit{1, 1};
  const std::array<int64_t, 2> pad{g.dil_h * (g.kernel_h - 1) - g.pad_h,
                                   g.dil_w * (g.kernel_w - 1) - g.pad_w};
  return call_conv2d(gz.to(input.scalar_type()), flipped, std::nullopt, unit, pad, dilation, 1,
                     "none", std::nullopt);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> conv2d_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
    const at::Tensor& out, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
    std::array<bool, 4> output_mask) {
  const Conv2dGeometry g =
      check_conv2d_args(input, weight, bias, stride, padding, dilation, groups, residual);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(out_sizes(g)) && out.sizes() == grad_out.sizes(),
              "pydl.conv2d_backward: grad_out and out must have the output's shape ",
              at::IntArrayRef(out_sizes(g)), ", got ", grad_out.sizes(), " and ", out.sizes());
  TORCH_CHECK(grad_out.device() == input.device(),
              "pydl.conv2d_backward: grad_out is on ", grad_out.device(), " but input is on ",
              input.device());
  TORCH_CHECK(!output_mask[2] || bias.has_value(),
              "pydl.conv2d_backward: bias gradient requested without a bias");
  TORCH_CHECK(!output_mask[3] || residual.has_value(),
              "pydl.conv2d_backward: residual gradient requested without a residual");
  const Activation act = parse_activation(activation);
  const at::Tensor gz = preactivation_grad(grad_out, out, act, input, weight, bias, stride,
                                           padding, dilation, groups, residual);

  const at::ScalarType acc = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_input, grad_weight, grad_bias, grad_residual;
  if (output_mask[3]) grad_residual = (act == Activation::None ? gz.clone() : gz).to(residual->scalar_type());
  if (output_mask[2]) grad_bias = gz.sum({0, 2, 3}, false, acc).to(bias->scalar_type());
  if (!output_mask[0] && !output_mask[1]) return {grad_input, grad_weight, grad_bias, grad_residual};

  const auto fmt = conv_memory_format(input);
  if (input.numel() == 0 || grad_out.numel() == 0) {
    if (output_mask[0]) grad_input = at::zeros_like(input, at::MemoryFormat::Preserve);
    if (output_mask[1]) grad_weight = at::zeros_like(weight);
    return {grad_input, grad_weight, grad_bias, grad_residual};
  }

  if (input.is_cpu() && g.is_depthwise()) {
    // Memory-bound: a direct channels_last kernel beats packing + per-tap ATen passes.
    const auto cl = at::MemoryFormat::ChannelsLast;
    const at::Tensor gz_cl = gz.to(acc).contiguous(cl);
    const at::Tensor x_cl = input.to(acc).contiguous(cl);
    const at::Tensor w_taps =
        weight.to(acc).reshape({g.out_channels, g.kernel_h * g.kernel_w}).t().contiguous();
    at::Tensor gx, gw;
    conv_cpu::DepthwiseBackwardArgs args{};
    args.g = g;
    args.is_double = acc == at::kDouble;
    args.grad = gz_cl.const_data_ptr();
    args.input = x_cl.const_data_ptr();
    args.weight = w_taps.const_data_ptr();
    if (output_mask[0]) {
      gx = at::empty_like(x_cl, cl);
      args.grad_input = gx.mutable_data_ptr();
    }
    if (output_mask[1]) {
      gw = at::empty_like(w_taps);
      args.grad_weight = gw.mutable_data_ptr();
    }
    conv_cpu::kernel_for_this_cpu().depthwise_backward(args);
    if (output_mask[0]) grad_input = gx.to(input.scalar_type()).contiguous(fmt);
    if (output_mask[1])
      grad_weight = gw.t().reshape(weight.sizes()).to(weight.scalar_type()).contiguous(
          weight.suggest_memory_format());
    return {grad_input, grad_weight, grad_bias, grad_residual};
  }
  if (g.is_unpadded_pointwise() && g.groups == 1) {
    // A 1x1 convolution is a matmul: no packing needed. NCHW: per image
    // [K x HW] planes; channels_last: one [pixels x K] matrix.
    const int64_t hw = g.in_h * g.in_w;
    const at::Tensor w2 = weight.to(acc).reshape({g.out_channels, g.in_channels});
    if (fmt == at::MemoryFormat::Contiguous) {
      const at::Tensor gz3 = gz.to(acc).contiguous().view({g.batch, g.out_channels, hw});
      if (output_mask[0]) {
        // Per image: at::matmul would broadcast the weight and copy the result.
        at::Tensor gx = at::empty({g.batch, g.in_channels, hw}, gz3.options());
        for (int64_t n = 0; n < g.batch; ++n) {
          at::Tensor gx_n = gx[n];
          at::mm_out(gx_n, w2.t(), gz3[n]);
        }
        grad_input = gx.view(input.sizes()).to(input.scalar_type());
      }
      if (output_mask[1]) {
        const at::Tensor x3 = input.to(acc).contiguous().view({g.batch, g.in_channels, hw});
        grad_weight = at::bmm(gz3, x3.transpose(1, 2)).sum(0);
      }
    } else {
      const int64_t rows = g.batch * hw;
      const at::Tensor gz_rows = gz.to(acc).permute({0, 2, 3, 1}).reshape({rows, g.out_channels});
      if (output_mask[0])
        grad_input = at::mm(gz_rows, w2)
                         .view({g.batch, g.in_h, g.in_w, g.in_channels})
                         .permute({0, 3, 1, 2})
                         .to(input.scalar_type())
                         .contiguous(fmt);
      if (output_mask[1]) {
        const at::Tensor x_rows =
            input.to(acc).permute({0, 2, 3, 1}).reshape({rows, g.in_channels});
        grad_weight = at::mm(gz_rows.t(), x_rows);
      }
    }
    if (output_mask[1])
      grad_weight = grad_weight.view(weight.sizes())
                        .to(weight.scalar_type())
                        .contiguous(weight.suggest_memory_format());
    return {grad_input, grad_weight, grad_bias, grad_residual};
  }

  if (output_mask[0] && takes_transposed_conv(input, g)) {
    grad_input = input_grad_by_conv(gz, input, weight, g, dilation).contiguous(fmt);
    if (!output_mask[1]) return {grad_input, grad_weight, grad_bias, grad_residual};
  }

  const conv_cpu::PackedGeometry p = conv_cpu::packed_geometry(g);
  const int64_t G = g.groups, Cg = g.in_per_group(), Kg = g.out_per_group();
  const int64_t K = g.out_channels, C = g.in_channels;
  const int64_t L = g.batch * p.grid_h * p.grid_w;  // grid rows of one phase
  const bool depthwise = g.is_depthwise();

  // The output gradient on the [n, grid_h, grid_w, K] grid, zero off the output.
  at::Tensor grid = at::zeros({g.batch, p.grid_h, p.grid_w, K}, gz.options().dtype(acc));
  grid.narrow(1, 0, g.out_h).narrow(2, 0, g.out_w).copy_(gz.permute({0, 2, 3, 1}));
  const at::Tensor grid_rows = grid.view({L, K});
  const at::Tensor w_acc = weight.to(acc);  // [K, Cg, kh, kw]

  if (output_mask[1]) {
    const at::Tensor x_rows = pack_phases(input, g, p, acc);
    std::vector<at::Tensor> per_tap;
    for (int64_t r = 0; r < g.kernel_h; ++r) {
      for (int64_t s = 0; s < g.kernel_w; ++s) {
        const at::Tensor x = x_rows.narrow(0, conv_cpu::tap_pixel_offset(g, p, r, s), L);
        if (depthwise) {
          per_tap.push_back((grid_rows * x).sum(0).view({K, 1}));
        } else if (G == 1) {
          per_tap.push_back(at::mm(grid_rows.t(), x));
        } else {
          per_tap.push_back(at::bmm(grid_rows.view({L, G, Kg}).permute({1, 2, 0}),
                                    x.view({L, G, Cg}).transpose(0, 1))
                                .reshape({K, Cg}));
        }
      }
    }
    grad_weight = at::stack(per_tap, 2)
                      .view({K, Cg, g.kernel_h, g.kernel_w})
                      .to(weight.scalar_type())
                      .contiguous(weight.suggest_memory_format());
  }

  if (output_mask[0] && !grad_input.defined()) {
    const int64_t phases = g.stride_h * g.stride_w;
    const int64_t max_shift = (g.dil_h * (g.kernel_h - 1) / g.stride_h) * p.grid_w +
                              g.dil_w * (g.kernel_w - 1) / g.stride_w;
    // Leading zero rows let every tap read G[p - shift] as one contiguous slice.
    const at::Tensor front = at::cat({at::zeros({max_shift, K}, grid_rows.options()), grid_rows});
    at::Tensor dx_rows = at::zeros({phases * L + p.tail_pixels, C}, grid_rows.options());
    for (int64_t r = 0; r < g.kernel_h; ++r) {
      for (int64_t s = 0; s < g.kernel_w; ++s) {
        const int64_t off = conv_cpu::tap_pixel_offset(g, p, r, s);
        const int64_t phase = off / L, shift = off - phase * L;
        const at::Tensor src = front.narrow(0, max_shift - shift, L);  // [L, K]
        at::Tensor dst = dx_rows.narrow(0, phase * L, L);                // [L, C]
        const at::Tensor w_rs = w_acc.select(3, s).select(2, r);        // [K, Cg]
        if (depthwise) {
          dst.addcmul_(src, w_rs.view({1, C}));
        } else if (G == 1) {
          dst.addmm_(src, w_rs);
        } else {
          dst.view({L, G, Cg}).add_(
              at::bmm(src.view({L, G, Kg}).transpose(0, 1), w_rs.view({G, Kg, Cg})).transpose(0, 1));
        }
      }
    }
    grad_input = unpack_phases(dx_rows, g, p).to(input.scalar_type()).contiguous(fmt);
  }
  return {grad_input, grad_weight, grad_bias, grad_residual};
}

}  // namespace pydl
