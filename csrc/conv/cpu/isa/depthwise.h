// Depthwise convolution: packed, channels_last-direct and NCHW-plane paths.
//
// Part of conv2d_cpu_kernel_isa.cpp, which includes it inside
// namespace pydl::conv_cpu::CPU_CAPABILITY (once per ISA): not a standalone
// header, and it includes nothing itself.
#pragma once

// Depthwise: each output channel reads one input channel, so no GEMM; vectors
// run along the (innermost) channel dimension of the packed input. For each
// channel vector the kernel taps' weights are loaded once per output row
// (kept in registers when kTaps is known at compile time, e.g. 3x3).
// Where depthwise_row puts its sums: into `acc` ([out_w][C], the generic
// epilogue runs afterwards), or, when the output is channels-last in the
// compute type, straight into the output row with the epilogue fused.
template <typename acc_t>
struct DepthwiseSink {
  acc_t* acc = nullptr;
  acc_t* out = nullptr;  // output row; pixel stride out_px, channels contiguous
  int64_t out_px = 0;
  const acc_t* res = nullptr;  // residual row, same layout as out
  int64_t res_px = 0;
  const acc_t* bias = nullptr;
  Activation act = Activation::None;

  // Stores the vector of channels [c, c + V::size()) of pixel ow.
  void store(Vec<acc_t> sum, int64_t ow, int64_t c, int64_t C) const {
    if (out == nullptr) return sum.store(acc + ow * C + c);
    if (bias) sum = sum + Vec<acc_t>::loadu(bias + c);
    if (res) sum = sum + Vec<acc_t>::loadu(res + ow * res_px + c);
    activate<acc_t>(act, sum).store(out + ow * out_px + c);
  }
  void store(acc_t sum, int64_t ow, int64_t c, int64_t C) const {
    if (out == nullptr) {
      acc[ow * C + c] = sum;
      return;
    }
    if (bias) sum += bias[c];
    if (res) sum += res[ow * res_px + c];
    out[ow * out_px + c] = apply_activation<acc_t>(act, sum);
  }
};

template <typename acc_t, int kTaps>
void depthwise_row(const acc_t* x_row, const int64_t* offs, int64_t taps, const acc_t* wt,
                   int64_t C, int64_t out_w, const DepthwiseSink<acc_t>& sink) {
  using V = Vec<acc_t>;
  int64_t c = 0;
  for (; c + V::size() <= C; c += V::size()) {
    if constexpr (kTaps > 0) {
      V w[kTaps];
      int64_t o[kTaps];
      for (int t = 0; t < kTaps; ++t) {
        w[t] = V::loadu(wt + t * C + c);
        o[t] = offs[t] * C + c;
      }
      for (int64_t ow = 0; ow < out_w; ++ow) {
        const acc_t* xq = x_row + ow * C;
        V sum = V::loadu(xq + o[0]) * w[0];
        for (int t = 1; t < kTaps; ++t) sum = at::vec::fmadd(V::loadu(xq + o[t]), w[t], sum);
        sink.store(sum, ow, c, C);
      }
    } else {
      for (int64_t ow = 0; ow < out_w; ++ow) {
        const acc_t* xq = x_row + ow * C + c;
        V sum(acc_t(0));
        for (int64_t t = 0; t < taps; ++t)
          sum = at::vec::fmadd(V::loadu(xq + offs[t] * C), V::loadu(wt + t * C + c), sum);
        sink.store(sum, ow, c, C);
      }
    }
  }
  for (; c < C; ++c) {
    for (int64_t ow = 0; ow < out_w; ++ow) {
      acc_t sum = 0;
      for (int64_t t = 0; t < taps; ++t) sum += x_row[(ow + offs[t]) * C + c] * wt[t * C + c];
      sink.store(sum, ow, c, C);
    }
  }
}

template <typename scalar_t, typename acc_t>
void depthwise(const ForwardArgs& a) {
  const Conv2dGeometry& g = a.g;
  const PackedGeometry& p = a.p;
  const int64_t C = g.in_channels;
  const std::vector<int64_t> offs = tap_offsets(a);
  const int64_t taps = static_cast<int64_t>(offs.size());
  const acc_t* xp = static_cast<const acc_t*>(a.packed);
  const acc_t* wt = static_cast<const acc_t*>(a.weight);  // [taps][C]
  const Epilogue<scalar_t, acc_t> epilogue{a};
  const int64_t* os = a.out_strides;
  const int64_t* rs = a.residual_strides;
  const bool fused = std::is_same_v<scalar_t, acc_t> && os[1] == 1 &&
                     (a.residual == nullptr || rs[1] == 1);
  at::parallel_for(0, g.batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
    DepthwiseSink<acc_t> sink;
    if (fused) {
      sink.out_px = os[3];
      sink.res_px = rs[3];
      sink.bias = static_cast<const acc_t*>(a.bias);
      sink.act = a.act;
    } else {
      sink.acc = Workspace::get<acc_t>(WorkspaceSlot::AccumulatorTile, g.out_w * C);
    }
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.out_h, oh = item % g.out_h;
      const acc_t* x_row = xp + n * p.image_stride + oh * p.grid_w * C;
      if (fused) {
        sink.out = reinterpret_cast<acc_t*>(static_cast<scalar_t*>(a.out) + n * os[0] + oh * os[2]);
        if (a.residual)
          sink.res = reinterpret_cast<const acc_t*>(static_cast<const scalar_t*>(a.residual) +
                                                    n * rs[0] + oh * rs[2]);
      }
      if (taps == 9)
        depthwise_row<acc_t, 9>(x_row, offs.data(), taps, wt, C, g.out_w, sink);
      else
        depthwise_row<acc_t, 0>(x_row, offs.data(), taps, wt, C, g.out_w, sink);
      if (!fused)
        for (int64_t ow = 0; ow < g.out_w; ++ow) epilogue(sink.acc + ow * C, n, oh, ow, 0, C);
    }
  });
}

// Interior output pixels [ow_lo, ow_hi) of one row with kTaps valid taps:
// per channel vector, the taps' weights stay in registers along the row.
template <typename acc_t, int kTaps>
void depthwise_interior(const acc_t* x, const int64_t* tap_offs, const int64_t* tap_ids,
                        const acc_t* wt, int64_t C, int64_t stride_w, int64_t ow_lo,
                        int64_t ow_hi, const DepthwiseSink<acc_t>& sink) {
  using V = Vec<acc_t>;
  for (int64_t c = 0; c < C; c += V::size()) {
    V w[kTaps];
    for (int k = 0; k < kTaps; ++k) w[k] = V::loadu(wt + tap_ids[k] * C + c);
    for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
      const acc_t* xq = x + ow * stride_w * C + c;
      V sum = V::loadu(xq + tap_offs[0]) * w[0];
      for (int k = 1; k < kTaps; ++k) sum = at::vec::fmadd(V::loadu(xq + tap_offs[k]), w[k], sum);
      sink.store(sum, ow, c, C);
    }
  }
}

// Depthwise straight from a channels-last input (no repack): per output row,
// the taps whose input row exists; interior pixels skip the column checks.
template <typename acc_t>
void depthwise_direct(const ForwardArgs& a) {
  using V = Vec<acc_t>;
  const Conv2dGeometry& g = a.g;
  const int64_t C = g.in_channels, W = g.in_w, taps = g.kernel_h * g.kernel_w;
  const acc_t* x = static_cast<const acc_t*>(a.input);
  const acc_t* wt = static_cast<const acc_t*>(a.weight);  // [taps][C]
  const int64_t* os = a.out_strides;
  const int64_t* rs = a.residual_strides;
  // Output columns whose every tap column lies inside the input.
  const int64_t ow_lo = std::min(g.out_w, ceil_div(g.pad_w, g.stride_w));
  const int64_t last_start = W - 1 + g.pad_w - (g.kernel_w - 1) * g.dil_w;  // of ow * stride_w
  const int64_t ow_hi =
      last_start < 0 ? ow_lo : std::max(ow_lo, std::min(g.out_w, last_start / g.stride_w + 1));
  at::parallel_for(0, g.batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> tap_ids, tap_cols, tap_offs;  // valid taps of this row
    DepthwiseSink<acc_t> sink;
    sink.out_px = os[3];
    sink.res_px = rs[3];
    sink.bias = static_cast<const acc_t*>(a.bias);
    sink.act = a.act;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.out_h, oh = item % g.out_h;
      tap_ids.clear();
      tap_cols.clear();
      tap_offs.clear();
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t ih = oh * g.stride_h - g.pad_h + (t / g.kernel_w) * g.dil_h;
        if (ih < 0 || ih >= g.in_h) continue;
        const int64_t col = (t % g.kernel_w) * g.dil_w - g.pad_w;  // + ow * stride_w
        tap_ids.push_back(t);
        tap_cols.push_back(col);
        tap_offs.push_back(((n * g.in_h + ih) * W + col) * C);
      }
      sink.out = static_cast<acc_t*>(a.out) + n * os[0] + oh * os[2];
      if (a.residual) sink.res = static_cast<const acc_t*>(a.residual) + n * rs[0] + oh * rs[2];
      const int64_t nt = static_cast<int64_t>(tap_ids.size());
      auto pixel = [&](int64_t ow, bool check) {
        const int64_t base = ow * g.stride_w;
        int64_t c = 0;
        for (; c + V::size() <= C; c += V::size()) {
          V sum(acc_t(0));
          for (int64_t k = 0; k < nt; ++k) {
            if (check && (base + tap_cols[k] < 0 || base + tap_cols[k] >= W)) continue;
            sum = at::vec::fmadd(V::loadu(x + tap_offs[k] + base * C + c),
                                 V::loadu(wt + tap_ids[k] * C + c), sum);
          }
          sink.store(sum, ow, c, C);
        }
        for (; c < C; ++c) {
          acc_t sum = 0;
          for (int64_t k = 0; k < nt; ++k) {
            if (check && (base + tap_cols[k] < 0 || base + tap_cols[k] >= W)) continue;
            sum += x[tap_offs[k] + base * C + c] * wt[tap_ids[k] * C + c];
          }
          sink.store(sum, ow, c, C);
        }
      };
      for (int64_t ow = 0; ow < ow_lo; ++ow) pixel(ow, true);
      if (nt == 9 && C % V::size() == 0) {
        depthwise_interior<acc_t, 9>(x, tap_offs.data(), tap_ids.data(), wt, C,
                                     g.stride_w, ow_lo, ow_hi, sink);
      } else {
        for (int64_t ow = ow_lo; ow < ow_hi; ++ow) pixel(ow, false);
      }
      for (int64_t ow = ow_hi; ow < g.out_w; ++ow) pixel(ow, true);
    }
  });
}

// Depthwise straight from a contiguous NCHW input into an NCHW output: each
// channel is a 2-D stencil; a row accumulates tap by tap, vectorized along
// the output row when stride_w == 1.
template <typename acc_t>
void depthwise_planes(const ForwardArgs& a) {
  using V = Vec<acc_t>;
  const Conv2dGeometry& g = a.g;
  const int64_t C = g.in_channels, H = g.in_h, W = g.in_w, OW = g.out_w;
  const acc_t* x = static_cast<const acc_t*>(a.input);
  const acc_t* wt = static_cast<const acc_t*>(a.weight);  // [taps][C]
  const Epilogue<acc_t, acc_t> epilogue{a};
  at::parallel_for(0, g.batch * C, 1, [&](int64_t begin, int64_t end) {
    acc_t* row = Workspace::get<acc_t>(WorkspaceSlot::AccumulatorTile, OW);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / C, c = plane % C;
      const acc_t* xp = x + plane * H * W;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        std::fill(row, row + OW, acc_t(0));
        for (int64_t r = 0; r < g.kernel_h; ++r) {
          const int64_t ih = oh * g.stride_h - g.pad_h + r * g.dil_h;
          if (ih < 0 || ih >= H) continue;
          const acc_t* x_row = xp + ih * W;
          for (int64_t s = 0; s < g.kernel_w; ++s) {
            const acc_t wv = wt[(r * g.kernel_w + s) * C + c];
            const int64_t col = s * g.dil_w - g.pad_w;  // input column of output column 0
            // Output columns whose input column col + ow * stride_w is inside [0, W).
            const int64_t lo = col >= 0 ? 0 : ceil_div(-col, g.stride_w);
            const int64_t hi = std::min(OW, W - 1 - col < 0 ? 0 : (W - 1 - col) / g.stride_w + 1);
            int64_t ow = lo;
            if (g.stride_w == 1) {
              const V wvec(wv);
              for (; ow + V::size() <= hi; ow += V::size())
                at::vec::fmadd(V::loadu(x_row + col + ow), wvec, V::loadu(row + ow)).store(row + ow);
            }
            for (; ow < hi; ++ow) row[ow] += x_row[col + ow * g.stride_w] * wv;
          }
        }
        epilogue.channel_run(row, n, oh, 0, c, OW);
      }
    }
  });
}
