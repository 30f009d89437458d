// Depthwise convolution: packed, channels_last-direct and NCHW-plane paths.
//
// Part of conv2d_cpu_kernel_isa.cpp, which includes it inside
// namespace pydl::conv_cpu::CPU_CAPABILITY (once per ISA): not a standalone
// header, and it includes nothing itself.
#pragma once

// Depthwise: each output channel reads one input channel, so no GEMM; vectors
// run along the (innermost) channel dimension of a channels-last (or packed)
// input. The sums of several pixels or channel vectors run side by side
// (depthwise_block), and for 3/5/7-wide kernels a kernel row's input vectors
// are loaded once for all its taps (depthwise_row_block).
// Where the kernels put their sums: into `acc` ([out_w][C], the generic
// epilogue runs afterwards), or straight into a channels-last output row
// (or a row buffer transposed into an NCHW output) with the epilogue fused.
template <typename acc_t>
struct DepthwiseSink {
  acc_t* acc = nullptr;
  acc_t* out = nullptr;  // output row; pixel stride out_px, channels contiguous
  int64_t out_px = 0;
  const acc_t* res = nullptr;  // residual row, same layout as out
  int64_t res_px = 0;
  const acc_t* bias = nullptr;
  Activation act = Activation::None;

  // Stores the vector of channels [c, c + V::size()) of pixel ow. kLight:
  // the activation is none or ReLU (light()), whose code is short enough to
  // inline beside the FMA loops.
  template <bool kLight = false>
  C10_ALWAYS_INLINE void store(Vec<acc_t> sum, int64_t ow, int64_t c, int64_t C) const {
    if (out == nullptr) return sum.store(acc + ow * C + c);
    if (bias) sum = sum + Vec<acc_t>::loadu(bias + c);
    if (res) sum = sum + Vec<acc_t>::loadu(res + ow * res_px + c);
    if constexpr (kLight) {
      if (act == Activation::Relu) sum = at::vec::maximum(sum, Vec<acc_t>(acc_t(0)));
    } else {
      sum = activate<acc_t>(act, sum);
    }
    sum.store(out + ow * out_px + c);
  }
  bool light() const {
    return out == nullptr || act == Activation::None || act == Activation::Relu;
  }
  // kPix pixels from ow times kVec vectors from c (sums pixel-major). The
  // other activations are not inlined: their constants (erf, tanh) would
  // crowd the FMA loops into spilling accumulators.
  template <int kPix, int kVec>
  C10_ALWAYS_INLINE void store_block(const Vec<acc_t> (&sum)[kPix * kVec], int64_t ow, int64_t c,
                                     int64_t C) const {
    if (!light()) return store_block_heavy<kPix, kVec>(sum, ow, c, C);
#pragma GCC unroll 8
    for (int p = 0; p < kPix; ++p)
#pragma GCC unroll 8
      for (int v = 0; v < kVec; ++v)
        store<true>(sum[p * kVec + v], ow + p, c + v * Vec<acc_t>::size(), C);
  }
  template <int kPix, int kVec>
  C10_NOINLINE void store_block_heavy(const Vec<acc_t> (&sum)[kPix * kVec], int64_t ow,
                                      int64_t c, int64_t C) const {
    for (int p = 0; p < kPix; ++p)
      for (int v = 0; v < kVec; ++v)
        store(sum[p * kVec + v], ow + p, c + v * Vec<acc_t>::size(), C);
  }
  // The channels [c, c + count) of pixel ow, count < V::size(): the
  // C % V::size() tail. (The lanes past count load as 0 and are not stored.)
  void store_part(Vec<acc_t> sum, int64_t ow, int64_t c, int64_t C, int64_t count) const {
    using V = Vec<acc_t>;
    if (out == nullptr) return sum.store(acc + ow * C + c, count);
    if (bias) sum = sum + V::loadu(bias + c, count);
    if (res) sum = sum + V::loadu(res + ow * res_px + c, count);
    activate<acc_t>(act, sum).store(out + ow * out_px + c, count);
  }
};

// kPix output pixels from ow times kVec channel vectors from c: kPix * kVec
// independent FMA chains, so the FMA latency is hidden (one pixel and one
// vector alone is a chain of `nt` dependent FMAs). Pixel blocks share each
// tap's weight load; channel blocks serve single pixels (borders, narrow
// rows). Pixel p, tap k reads x + (ow + p) * step + tap_offs[k] + c.
template <typename acc_t, int kPix, int kVec>
C10_ALWAYS_INLINE void depthwise_block(const acc_t* x, const int64_t* tap_offs,
                                       const int64_t* tap_ids, int64_t nt, const acc_t* wt,
                                       int64_t C, int64_t step, int64_t ow, int64_t c,
                                       const DepthwiseSink<acc_t>& sink) {
  using V = Vec<acc_t>;
  constexpr int kWidth = V::size();
  const acc_t* xq = x + ow * step + c;
  V sum[kPix * kVec];
#pragma GCC unroll 8
  for (int i = 0; i < kPix * kVec; ++i) sum[i] = V(acc_t(0));
  for (int64_t k = 0; k < nt; ++k) {
    const acc_t* wk = wt + tap_ids[k] * C + c;
    const acc_t* xk = xq + tap_offs[k];
    V w[kVec];
#pragma GCC unroll 8
    for (int v = 0; v < kVec; ++v) w[v] = V::loadu(wk + v * kWidth);
#pragma GCC unroll 8
    for (int p = 0; p < kPix; ++p)
#pragma GCC unroll 8
      for (int v = 0; v < kVec; ++v)
        sum[p * kVec + v] = at::vec::fmadd(V::loadu(xk + p * step + v * kWidth), w[v],
                                           sum[p * kVec + v]);
  }
  sink.template store_block<kPix, kVec>(sum, ow, c, C);
}

// Covers pixels [lo, hi) (at least 4) with blocks of 8, then 4; a last
// partial block of 4 moves back to end at hi, recomputing up to 3 pixels
// rather than running them as lone FMA chains. Recomputed pixels are stored
// twice with the same value: safe because the output never aliases an input
// or the residual (conv2d_cpu allocates it). block(integral_constant<int, P>,
// ow) does P pixels from ow.
template <typename Block>
C10_ALWAYS_INLINE void for_pixel_blocks(int64_t lo, int64_t hi, const Block& block) {
  int64_t ow = lo;
  for (; ow + 8 <= hi; ow += 8) block(std::integral_constant<int, 8>{}, ow);
  if (ow + 4 <= hi) {
    block(std::integral_constant<int, 4>{}, ow);
    ow += 4;
  }
  if (ow < hi) block(std::integral_constant<int, 4>{}, hi - 4);
}

// Pixels [lo, hi) of one output row whose taps are all inside the input,
// channels [c0, c1) in whole vectors (depthwise_channel_tail does the
// C % V::size() rest).
// Rows of >= 4 pixels: per channel vector, for_pixel_blocks' 8- and
// 4-pixel blocks (8 accumulators, a weight and an input vector fit AVX2's 16
// registers). Narrower rows: pixel by pixel, blocks of 4, 2, 1 channel
// vectors.
template <typename acc_t>
void depthwise_interior(const acc_t* x, const int64_t* tap_offs, const int64_t* tap_ids,
                        int64_t nt, const acc_t* wt, int64_t C, int64_t step, int64_t lo,
                        int64_t hi, int64_t c0, int64_t c1, const DepthwiseSink<acc_t>& sink) {
  constexpr int64_t kWidth = Vec<acc_t>::size();
  auto block = [&](auto pix, auto vec, int64_t ow, int64_t c) {
    depthwise_block<acc_t, decltype(pix)::value, decltype(vec)::value>(x, tap_offs, tap_ids, nt,
                                                                     wt, C, step, ow, c, sink);
  };
  using One = std::integral_constant<int, 1>;
  using Two = std::integral_constant<int, 2>;
  using Four = std::integral_constant<int, 4>;
  if (hi - lo >= 4) {
    for (int64_t c = c0; c < c1; c += kWidth)
      for_pixel_blocks(lo, hi, [&](auto pix, int64_t ow) { block(pix, One{}, ow, c); });
    return;
  }
  for (int64_t ow = lo; ow < hi; ++ow) {
    int64_t c = c0;
    for (; c + 4 * kWidth <= c1; c += 4 * kWidth) block(One{}, Four{}, ow, c);
    if (c + 2 * kWidth <= c1) {
      block(One{}, Two{}, ow, c);
      c += 2 * kWidth;
    }
    if (c < c1) block(One{}, One{}, ow, c);
  }
}

// Keeps a loaded vector in a register. Without it GCC folds the load into
// every FMA that uses the vector: one load per tap again.
template <typename T>
C10_ALWAYS_INLINE Vec<T> in_register(Vec<T> v) {
#if defined(CPU_CAPABILITY_AVX512)
  std::conditional_t<std::is_same_v<T, float>, __m512, __m512d> raw = v;
#elif defined(CPU_CAPABILITY_AVX2)
  std::conditional_t<std::is_same_v<T, float>, __m256, __m256d> raw = v;
#endif
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  asm("" : "+v"(raw));
  return Vec<T>(raw);
#else
  return v;
#endif
}

// One output row's kernel rows for depthwise_rows: row r, tap s of output
// pixel ow reads x + (ow * SW + s) * C + offs[r], weighted by tap
// taps[r] + s. Every column read must exist (interior pixels, or a padded
// input).
template <typename acc_t>
struct DepthwiseRows {
  const acc_t* x;
  const int64_t* offs;
  const int64_t* taps;
  int64_t count;
};

// kPix output pixels from ow of channel vector c, the kernel's rows taken
// whole: KW taps at consecutive input columns (dilation 1), output pixels SW
// columns apart. Each input vector of a row is loaded once and feeds every
// tap that reads it: (kPix - 1) * SW + KW loads for kPix * KW FMAs, where
// depthwise_block loads once per FMA.
template <typename acc_t, int KW, int SW, int kPix>
C10_ALWAYS_INLINE void depthwise_row_block(const DepthwiseRows<acc_t>& rows, const acc_t* wt,
                                           int64_t C, int64_t ow, int64_t c,
                                           const DepthwiseSink<acc_t>& sink) {
  using V = Vec<acc_t>;
  constexpr int kCols = (kPix - 1) * SW + KW;
  const acc_t* xq = rows.x + ow * SW * C + c;
  V sum[kPix];
#pragma GCC unroll 8
  for (int p = 0; p < kPix; ++p) sum[p] = V(acc_t(0));
  for (int64_t r = 0; r < rows.count; ++r) {
    const acc_t* xr = xq + rows.offs[r];
    const acc_t* wr = wt + rows.taps[r] * C + c;
    V w[KW];
#pragma GCC unroll 8
    for (int s = 0; s < KW; ++s) w[s] = V::loadu(wr + s * C);
#pragma GCC unroll 32
    for (int i = 0; i < kCols; ++i) {
      const V xi = in_register<acc_t>(V::loadu(xr + i * C));
#pragma GCC unroll 8
      for (int s = 0; s < KW; ++s) {
        const int d = i - s;  // column i is tap s of pixel d / SW
        if (d >= 0 && d % SW == 0 && d / SW < kPix)
          sum[d / SW] = at::vec::fmadd(xi, w[s], sum[d / SW]);
      }
    }
  }
  sink.template store_block<kPix, 1>(sum, ow, c, C);
}

// Pixels [lo, hi) (at least 4), channels [c0, c1) in whole vectors, through
// depthwise_row_block, blocked like depthwise_interior's wide rows.
template <typename acc_t, int KW, int SW>
void depthwise_rows(const DepthwiseRows<acc_t>& rows, const acc_t* wt, int64_t C, int64_t lo,
                    int64_t hi, int64_t c0, int64_t c1, const DepthwiseSink<acc_t>& sink) {
  // Channels innermost: the rows are read pixel by pixel, each pixel's
  // channels in one sweep, which the prefetchers follow (measured 1.1-1.2x
  // over channel-vector-outer sweeps at batch 8, where the input streams
  // from DRAM or L3).
  for_pixel_blocks(lo, hi, [&](auto pix, int64_t ow) {
    for (int64_t c = c0; c < c1; c += Vec<acc_t>::size())
      depthwise_row_block<acc_t, KW, SW, decltype(pix)::value>(rows, wt, C, ow, c, sink);
  });
}

// depthwise_rows where it is built for the kernel rows (depthwise_rows_fit:
// 3, 5, 7 wide, column step 1 or 2, dilation 1) and the row has at least 4
// pixels. False where it does not apply: use depthwise_interior.
template <typename acc_t>
bool depthwise_rows_for(int64_t kw, int64_t sw, int64_t dil_w,
                        const DepthwiseRows<acc_t>& rows, const acc_t* wt, int64_t C,
                        int64_t lo, int64_t hi, int64_t c0, int64_t c1,
                        const DepthwiseSink<acc_t>& sink) {
  if (hi - lo < 4 || !depthwise_rows_fit(kw, sw, dil_w)) return false;
  auto by_width = [&](auto stride) {
    constexpr int SW = decltype(stride)::value;
    switch (kw) {
      case 3:
        depthwise_rows<acc_t, 3, SW>(rows, wt, C, lo, hi, c0, c1, sink);
        return true;
      case 5:
        depthwise_rows<acc_t, 5, SW>(rows, wt, C, lo, hi, c0, c1, sink);
        return true;
      case 7:
        depthwise_rows<acc_t, 7, SW>(rows, wt, C, lo, hi, c0, c1, sink);
        return true;
      default:
        return false;  // not reached: depthwise_rows_fit
    }
  };
  return sw == 1 ? by_width(std::integral_constant<int, 1>{})
                 : by_width(std::integral_constant<int, 2>{});
}

// kPix pixels from ow of the channels [c, c + count) past the last whole
// vector, in partial vectors (masked loads and stores on AVX-512): kPix
// independent FMA chains, as depthwise_block's.
template <typename acc_t, int kPix>
C10_ALWAYS_INLINE void depthwise_tail_block(const acc_t* x, const int64_t* tap_offs,
                                            const int64_t* tap_ids, int64_t nt, const acc_t* wt,
                                            int64_t C, int64_t step, int64_t ow, int64_t c,
                                            int64_t count, const DepthwiseSink<acc_t>& sink) {
  using V = Vec<acc_t>;
  const acc_t* xq = x + ow * step + c;
  V sum[kPix];
#pragma GCC unroll 8
  for (int p = 0; p < kPix; ++p) sum[p] = V(acc_t(0));
  for (int64_t k = 0; k < nt; ++k) {
    const V w = V::loadu(wt + tap_ids[k] * C + c, count);
    const acc_t* xk = xq + tap_offs[k];
#pragma GCC unroll 8
    for (int p = 0; p < kPix; ++p)
      sum[p] = at::vec::fmadd(V::loadu(xk + p * step, count), w, sum[p]);
  }
#pragma GCC unroll 8
  for (int p = 0; p < kPix; ++p) sink.store_part(sum[p], ow + p, c, C, count);
}

// The channels past the last whole vector (same tap layout), in partial
// vectors, for_pixel_blocks' blocks of pixels. (Scalar, pixel by pixel, with
// a dependent FMA chain per channel, they had made C = 24 or 40 at 112 x 112
// run at 6 GFLOP/s on one Zen 4 core, against torch's 45-57.)
template <typename acc_t>
void depthwise_channel_tail(const acc_t* x, const int64_t* tap_offs, const int64_t* tap_ids,
                            int64_t nt, const acc_t* wt, int64_t C, int64_t step, int64_t lo,
                            int64_t hi, const DepthwiseSink<acc_t>& sink) {
  const int64_t c = C - C % Vec<acc_t>::size(), count = C - c;
  if (count == 0 || lo >= hi) return;
  if (hi - lo < 4) {
    for (int64_t ow = lo; ow < hi; ++ow)
      depthwise_tail_block<acc_t, 1>(x, tap_offs, tap_ids, nt, wt, C, step, ow, c, count, sink);
    return;
  }
  for_pixel_blocks(lo, hi, [&](auto pix, int64_t ow) {
    depthwise_tail_block<acc_t, decltype(pix)::value>(x, tap_offs, tap_ids, nt, wt, C, step, ow,
                                                      c, count, sink);
  });
}

template <typename scalar_t, typename acc_t>
void depthwise(const ForwardArgs& a) {
  const Conv2dGeometry& g = a.g;
  const PackedGeometry& p = a.p;
  const int64_t C = g.in_channels;
  // Tap k of output pixel ow reads packed pixel ow + tap_offsets[k]; in
  // elements here, with the weights in tap order.
  std::vector<int64_t> offs = tap_offsets(a), ids(offs.size());
  for (size_t k = 0; k < offs.size(); ++k) {
    offs[k] *= C;
    ids[k] = static_cast<int64_t>(k);
  }
  const int64_t taps = static_cast<int64_t>(offs.size());
  // At column stride 1 (one column phase) and dilation 1 a kernel row's taps
  // read neighbouring packed pixels: depthwise_rows takes them whole.
  std::vector<int64_t> row_offs, row_taps;
  const bool rows_apply = g.stride_w == 1 && depthwise_rows_fit(g.kernel_w, 1, g.dil_w);
  for (int64_t t = 0; rows_apply && t < taps; t += g.kernel_w) {
    row_offs.push_back(offs[t]);
    row_taps.push_back(t);
  }
  const acc_t* xp = static_cast<const acc_t*>(a.packed);
  const acc_t* wt = static_cast<const acc_t*>(a.weight);  // [taps][C]
  const Epilogue<scalar_t, acc_t> epilogue{a};
  const int64_t* os = a.out_strides;
  const int64_t* rs = a.residual_strides;
  const bool fused = std::is_same_v<scalar_t, acc_t> && os[1] == 1 &&
                     (a.residual == nullptr || rs[1] == 1);
  const int64_t cv = C - C % Vec<acc_t>::size();  // channels in whole vectors
  // An NCHW output row (compute type, no residual): the sink writes the
  // finished row channels-last into a buffer, and one transpose puts it into
  // the channel planes (at::vec's, blocked for float on AVX-512; element by
  // element elsewhere, as the generic epilogue writes).
  const bool transposed = !fused && std::is_same_v<scalar_t, acc_t> && os[3] == 1 &&
                          a.residual == nullptr;
  at::parallel_for(0, g.batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
    DepthwiseSink<acc_t> sink;
    acc_t* row_buffer = nullptr;
    if (fused || transposed) {
      sink.out_px = fused ? os[3] : C;
      sink.res_px = rs[3];  // no residual when transposed
      sink.bias = static_cast<const acc_t*>(a.bias);
      sink.act = a.act;
    }
    if (transposed) {
      row_buffer = Workspace::get<acc_t>(WorkspaceSlot::AccumulatorTile, g.out_w * C);
      sink.out = row_buffer;
    } else if (!fused) {
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
      // The packed input carries its padding: every column exists.
      const DepthwiseRows<acc_t> kernel_rows{x_row, row_offs.data(), row_taps.data(),
                                             static_cast<int64_t>(row_taps.size())};
      if (!rows_apply ||
          !depthwise_rows_for<acc_t>(g.kernel_w, 1, g.dil_w, kernel_rows, wt, C, 0, g.out_w, 0,
                                     cv, sink))
        depthwise_interior<acc_t>(x_row, offs.data(), ids.data(), taps, wt, C, C, 0, g.out_w, 0,
                                  cv, sink);
      depthwise_channel_tail<acc_t>(x_row, offs.data(), ids.data(), taps, wt, C, C, 0, g.out_w,
                                    sink);
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        if (transposed) {
          acc_t* out_row = static_cast<acc_t*>(a.out) + n * os[0] + oh * os[2];
          at::vec::transpose_mxn<acc_t>(row_buffer, C, out_row, os[1], g.out_w, C);
          continue;
        }
      }
      if (!fused) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) epilogue(sink.acc + ow * C, n, oh, ow, 0, C);
      }
    }
  });
}

// One output row's taps whose input row exists, offsets from the image's
// first element: each tap alone (ids, cols, offs) and each kernel row whole
// (row_taps: its first tap, row_offs), for depthwise_direct.
struct DepthwiseRowTaps {
  std::vector<int64_t> ids, cols, offs, row_taps, row_offs;
};

// Depthwise straight from a channels-last input (no repack), output row by
// output row: the interior pixels through depthwise_rows where it applies,
// else depthwise_interior (no column checks either way); each border pixel
// with the taps whose column exists.
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
  std::vector<DepthwiseRowTaps> taps_by_row(g.out_h);
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    DepthwiseRowTaps& rt = taps_by_row[oh];
    for (int64_t t = 0; t < taps; ++t) {
      const int64_t ih = oh * g.stride_h - g.pad_h + (t / g.kernel_w) * g.dil_h;
      if (ih < 0 || ih >= g.in_h) continue;
      const int64_t col = (t % g.kernel_w) * g.dil_w - g.pad_w;  // + ow * stride_w
      rt.ids.push_back(t);
      rt.cols.push_back(col);
      rt.offs.push_back((ih * W + col) * C);
      if (t % g.kernel_w == 0) {
        rt.row_taps.push_back(t);
        rt.row_offs.push_back(rt.offs.back());
      }
    }
  }
  const int64_t cv = C - C % V::size();  // channels in whole vectors
  const int64_t step = g.stride_w * C;
  at::parallel_for(0, g.batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> edge_ids, edge_offs;  // of one border pixel
    DepthwiseSink<acc_t> sink;
    sink.out_px = os[3];
    sink.res_px = rs[3];
    sink.bias = static_cast<const acc_t*>(a.bias);
    sink.act = a.act;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.out_h, oh = item % g.out_h;
      const DepthwiseRowTaps& rt = taps_by_row[oh];
      const acc_t* xn = x + n * g.in_h * W * C;
      sink.out = static_cast<acc_t*>(a.out) + n * os[0] + oh * os[2];
      if (a.residual) sink.res = static_cast<const acc_t*>(a.residual) + n * rs[0] + oh * rs[2];
      const DepthwiseRows<acc_t> kernel_rows{xn, rt.row_offs.data(), rt.row_taps.data(),
                                             static_cast<int64_t>(rt.row_taps.size())};
      const bool rows_done = depthwise_rows_for<acc_t>(g.kernel_w, g.stride_w, g.dil_w,
                                                       kernel_rows, wt, C, ow_lo, ow_hi, 0, cv,
                                                       sink);
      auto run = [&](const std::vector<int64_t>& offs, const std::vector<int64_t>& ids,
                     int64_t lo, int64_t hi, bool vectors_done) {
        const int64_t nt = static_cast<int64_t>(ids.size());
        if (!vectors_done)
          depthwise_interior<acc_t>(xn, offs.data(), ids.data(), nt, wt, C, step, lo, hi, 0, cv,
                                    sink);
        depthwise_channel_tail<acc_t>(xn, offs.data(), ids.data(), nt, wt, C, step, lo, hi, sink);
      };
      run(rt.offs, rt.ids, ow_lo, ow_hi, rows_done);
      auto border = [&](int64_t ow) {
        edge_offs.clear();
        edge_ids.clear();
        for (size_t k = 0; k < rt.ids.size(); ++k) {
          const int64_t iw = ow * g.stride_w + rt.cols[k];
          if (iw < 0 || iw >= W) continue;
          edge_offs.push_back(rt.offs[k]);
          edge_ids.push_back(rt.ids[k]);
        }
        run(edge_offs, edge_ids, ow, ow + 1, false);
      };
      for (int64_t ow = 0; ow < ow_lo; ++ow) border(ow);
      for (int64_t ow = ow_hi; ow < g.out_w; ++ow) border(ow);
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
