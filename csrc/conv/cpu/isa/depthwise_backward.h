// Depthwise backward (channels_last): dgrad and wgrad.
//
// Part of conv2d_cpu_kernel_isa.cpp, which includes it inside
// namespace pydl::conv_cpu::CPU_CAPABILITY (once per ISA): not a standalone
// header, and it includes nothing itself.
#pragma once

// Depthwise backward, channels_last. dgrad gathers, for every input pixel,
// the output pixels whose taps read it; wgrad accumulates per-thread
// [taps][C] partial sums over output pixels and adds them up at the end.
template <typename acc_t>
void depthwise_backward_typed(const DepthwiseBackwardArgs& a) {
  using V = Vec<acc_t>;
  const Conv2dGeometry& g = a.g;
  const int64_t C = g.in_channels, kw = g.kernel_w, taps = g.kernel_h * g.kernel_w;
  const acc_t* gz = static_cast<const acc_t*>(a.grad);
  const acc_t* x = static_cast<const acc_t*>(a.input);
  const acc_t* w = static_cast<const acc_t*>(a.weight);
  // sum[0:C) += p[0:C) * q[0:C)
  auto fma_row = [C](acc_t* sum, const acc_t* p, const acc_t* q) {
    int64_t c = 0;
    for (; c + V::size() <= C; c += V::size())
      at::vec::fmadd(V::loadu(p + c), V::loadu(q + c), V::loadu(sum + c)).store(sum + c);
    for (; c < C; ++c) sum[c] += p[c] * q[c];
  };
  if (a.grad_input) {
    acc_t* dx = static_cast<acc_t*>(a.grad_input);
    at::parallel_for(0, g.batch * g.in_h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / g.in_h, ih = row % g.in_h;
        for (int64_t iw = 0; iw < g.in_w; ++iw) {
          acc_t* out = dx + ((n * g.in_h + ih) * g.in_w + iw) * C;
          std::fill(out, out + C, acc_t(0));
          for (int64_t r = 0; r < g.kernel_h; ++r) {
            const int64_t th = ih + g.pad_h - r * g.dil_h;
            if (th < 0 || th % g.stride_h) continue;
            const int64_t oh = th / g.stride_h;
            if (oh >= g.out_h) continue;
            for (int64_t s = 0; s < kw; ++s) {
              const int64_t tw = iw + g.pad_w - s * g.dil_w;
              if (tw < 0 || tw % g.stride_w) continue;
              const int64_t ow = tw / g.stride_w;
              if (ow >= g.out_w) continue;
              fma_row(out, gz + ((n * g.out_h + oh) * g.out_w + ow) * C, w + (r * kw + s) * C);
            }
          }
        }
      }
    });
  }
  if (a.grad_weight) {
    const int64_t threads = at::get_num_threads();
    std::vector<acc_t> partial(threads * taps * C, acc_t(0));
    const int64_t rows = g.batch * g.out_h;
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t part = begin; part < end; ++part) {
        acc_t* dw = partial.data() + part * taps * C;
        for (int64_t row = part * rows / threads; row < (part + 1) * rows / threads; ++row) {
          const int64_t n = row / g.out_h, oh = row % g.out_h;
          for (int64_t ow = 0; ow < g.out_w; ++ow) {
            const acc_t* gp = gz + ((n * g.out_h + oh) * g.out_w + ow) * C;
            for (int64_t r = 0; r < g.kernel_h; ++r) {
              const int64_t ih = oh * g.stride_h - g.pad_h + r * g.dil_h;
              if (ih < 0 || ih >= g.in_h) continue;
              for (int64_t s = 0; s < kw; ++s) {
                const int64_t iw = ow * g.stride_w - g.pad_w + s * g.dil_w;
                if (iw < 0 || iw >= g.in_w) continue;
                fma_row(dw + (r * kw + s) * C, gp, x + ((n * g.in_h + ih) * g.in_w + iw) * C);
              }
            }
          }
        }
      }
    });
    acc_t* dw = static_cast<acc_t*>(a.grad_weight);
    std::fill(dw, dw + taps * C, acc_t(0));
    for (int64_t part = 0; part < threads; ++part)
      for (int64_t i = 0; i < taps * C; ++i) dw[i] += partial[part * taps * C + i];
  }
}

void depthwise_backward(const DepthwiseBackwardArgs& a) {
  if (a.is_double)
    depthwise_backward_typed<double>(a);
  else
    depthwise_backward_typed<float>(a);
}
