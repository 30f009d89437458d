// Dense convolution as a register-blocked direct kernel (AVX-512, float).
//
// Part of conv2d_cpu_kernel_isa.cpp, which includes it inside
// namespace pydl::conv_cpu::CPU_CAPABILITY for the AVX512 build only: not a
// standalone header, and it includes nothing itself.
//
// Why: the GEMM path (gemm_tiles.h) copies kh*kw*Cin floats per output pixel
// into an im2col tile before MKL sees them, and MKL's small-N tiles run below
// its peak; on ResNet's 3x3 layers that left pydl at 0.72-0.83x of oneDNN.
// Here a block of output pixels of one row keeps its outputs in 28 zmm
// accumulators (14 pixels x 32 channels) and walks (tap, input channel) once: per step 2 weight vectors and 14 broadcast input values
// feed 28 FMAs, read from a thread's cache of zero-padded input rows
// (PaddedRows below), with no im2col or packed copy of the whole input.
#pragma once

constexpr int64_t kDirectBlockChannels = 64;  // output channels per weight block

// acc[p][v] = sum over taps t and channels c of
//   tap_x[t][offset + p * pixel_step + c] * w[(t * C + c) * w_step + 16 * v ...]
// for P output pixels and NV vectors of 16 output channels, stored to
// out[p * kDirectBlockChannels + 16 * v]. 14 x 2 needs 28 accumulators, 2
// weights and a broadcast: 31 of the 32 zmm registers; 7 x 4 needs 33, so
// the compiler keeps one value in memory there (the row tails only).
template <int P, int NV>
inline void direct_block(const float* const* tap_x, int64_t offset, int64_t pixel_step,
                         int64_t C, int64_t taps, const float* __restrict w, int64_t w_step,
                         float* __restrict out) {
  static_assert(P * NV <= 28, "accumulators must fit the 32 zmm registers");
  __m512 acc[P][NV];
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = _mm512_setzero_ps();
  for (int64_t t = 0; t < taps; ++t) {
    const float* xt = tap_x[t] + offset;
    for (int64_t c = 0; c < C; ++c) {
      __m512 wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_ps(w + 16 * v);
      w += w_step;
      for (int p = 0; p < P; ++p) {
        const __m512 xv = _mm512_set1_ps(xt[p * pixel_step + c]);
        for (int v = 0; v < NV; ++v) acc[p][v] = _mm512_fmadd_ps(xv, wv[v], acc[p][v]);
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < NV; ++v)
      _mm512_storeu_ps(out + p * kDirectBlockChannels + 16 * v, acc[p][v]);
}

// Where a row's input is: tap t's pixel for output column 0 is
// tap_x[t][0 .. C), output column ow's is pixel_step * ow floats further on.
struct DirectRow {
  const float* const* tap_x;
  int64_t pixel_step, C, taps;
};

// Pixels [ow, width) of a row, all 64 channels of the block at once, in
// blocks of 7 pixels and one narrower.
void direct_pixels_by_7(const DirectRow& r, const float* w, float* tile, int64_t ow,
                        int64_t width) {
  constexpr int64_t w_step = kDirectBlockChannels;
  for (; ow + 7 <= width; ow += 7)
    direct_block<7, 4>(r.tap_x, ow * r.pixel_step, r.pixel_step, r.C, r.taps, w, w_step,
                       tile + ow * kDirectBlockChannels);
  const int64_t at = ow * r.pixel_step;
  float* tr = tile + ow * kDirectBlockChannels;
  switch (width - ow) {
    case 6: return direct_block<6, 4>(r.tap_x, at, r.pixel_step, r.C, r.taps, w, w_step, tr);
    case 5: return direct_block<5, 4>(r.tap_x, at, r.pixel_step, r.C, r.taps, w, w_step, tr);
    case 4: return direct_block<4, 4>(r.tap_x, at, r.pixel_step, r.C, r.taps, w, w_step, tr);
    case 3: return direct_block<3, 4>(r.tap_x, at, r.pixel_step, r.C, r.taps, w, w_step, tr);
    case 2: return direct_block<2, 4>(r.tap_x, at, r.pixel_step, r.C, r.taps, w, w_step, tr);
    case 1: return direct_block<1, 4>(r.tap_x, at, r.pixel_step, r.C, r.taps, w, w_step, tr);
    default: return;
  }
}

// One output row of `width` pixels for a block of 64 output channels: 14
// pixels x 32 channels at a time (2 weight loads and 14 broadcasts per 28
// FMAs ran 5-8% faster than 7 pixels x 64 channels here), the last pixels
// 7 x 64 at a time.
void direct_row(const DirectRow& r, const float* w, float* tile, int64_t width) {
  int64_t ow = 0;
  for (; ow + 14 <= width; ow += 14)
    for (int64_t half = 0; half < 2; ++half)
      direct_block<14, 2>(r.tap_x, ow * r.pixel_step, r.pixel_step, r.C, r.taps, w + 32 * half,
                          kDirectBlockChannels, tile + ow * kDirectBlockChannels + 32 * half);
  direct_pixels_by_7(r, w, tile, ow, width);
}

// A thread's cache of zero-padded input rows, float [padded_w][C] each, so
// the kernel reads every tap in bounds without a packed copy of the whole
// input (that copy's write and re-read through memory cost ~15% of a
// ResNet 3x3 layer). Input row ih of image n lives in slot ih % slots:
// enough slots that one output row's kh rows never share one. The last
// slot stays zero: the rows above and below the image.
template <typename scalar_t>
class PaddedRows {
 public:
  PaddedRows(const ForwardArgs& a, float* storage)
      : a_(a), row_floats_((a.g.in_w + 2 * a.g.pad_w) * a.g.in_channels),
        slots_((a.g.kernel_h - 1) * a.g.dil_h + 1), storage_(storage),
        tags_(slots_, -1) {
    std::fill(zeros(), zeros() + row_floats_, 0.f);
  }

  static int64_t floats_needed(const Conv2dGeometry& g) {
    return ((g.kernel_h - 1) * g.dil_h + 2) * (g.in_w + 2 * g.pad_w) * g.in_channels;
  }

  // Row ih (may lie in the padding) of image n, with pad_w zero pixels each side.
  const float* row(int64_t n, int64_t ih) {
    const Conv2dGeometry& g = a_.g;
    if (ih < 0 || ih >= g.in_h) return zeros();
    const int64_t slot = ih % slots_;
    float* dst = storage_ + slot * row_floats_;
    const int64_t tag = n * g.in_h + ih;
    if (tags_[slot] != tag) {
      fill(dst, n, ih);
      tags_[slot] = tag;
    }
    return dst;
  }

 private:
  float* zeros() { return storage_ + slots_ * row_floats_; }

  void fill(float* dst, int64_t n, int64_t ih) const {
    const Conv2dGeometry& g = a_.g;
    const int64_t C = g.in_channels;
    const int64_t* st = a_.input_strides;
    const scalar_t* src = static_cast<const scalar_t*>(a_.input) + n * st[0] + ih * st[2];
    std::fill(dst, dst + g.pad_w * C, 0.f);
    float* d = dst + g.pad_w * C;
    if (st[1] == 1) {
      for (int64_t iw = 0; iw < g.in_w; ++iw, d += C) {
        const scalar_t* s = src + iw * st[3];
        if constexpr (std::is_same_v<scalar_t, float>) {
          std::memcpy(d, s, C * sizeof(float));
        } else {
          for (int64_t c = 0; c < C; ++c) d[c] = static_cast<float>(s[c]);
        }
      }
    } else {
      // NCHW-like: channel planes, read along the row one channel at a time.
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* s = src + c * st[1];
        for (int64_t iw = 0; iw < g.in_w; ++iw) d[iw * C + c] = static_cast<float>(s[iw * st[3]]);
      }
      d += g.in_w * C;
    }
    std::fill(d, d + g.pad_w * C, 0.f);
  }

  const ForwardArgs& a_;
  const int64_t row_floats_, slots_;
  float* storage_;
  std::vector<int64_t> tags_;  // n * in_h + ih held by each slot, or -1
};

// The whole convolution, reading the input itself (any strides, any of the
// float-computed dtypes). Weight layout (conv2d_cpu.cpp's direct_weight):
// Cout / 64 blocks of [taps][Cin][64]. Work items are (channel block,
// output row), block-major so a thread's items reuse one block's weights
// from L2.
template <typename scalar_t>
void direct_tiles(const ForwardArgs& a) {
  const Conv2dGeometry& g = a.g;
  const int64_t C = g.in_channels;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t blocks = g.out_channels / kDirectBlockChannels;
  const int64_t rows = g.batch * g.out_h;
  const float* weight = static_cast<const float*>(a.weight);
  const Epilogue<scalar_t, float> epilogue{a};
  const bool channels_last_out = a.out_strides[1] == 1;

  at::parallel_for(0, blocks * rows, 1, [&](int64_t begin, int64_t end) {
    // [out_w][64] accumulators, then (NCHW outputs) their transpose [64][out_w].
    float* tile = Workspace::get<float>(WorkspaceSlot::AccumulatorTile,
                                        2 * g.out_w * kDirectBlockChannels);
    float* by_channel = tile + g.out_w * kDirectBlockChannels;
    PaddedRows<scalar_t> input_rows(
        a, Workspace::get<float>(WorkspaceSlot::Im2colTile, PaddedRows<scalar_t>::floats_needed(g)));
    std::vector<const float*> tap_x(taps);
    const DirectRow r{tap_x.data(), g.stride_w * C, C, taps};
    for (int64_t item = begin; item < end; ++item) {
      const int64_t block = item / rows, row = item % rows;
      const int64_t n = row / g.out_h, oh = row % g.out_h;
      for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
        const float* x = input_rows.row(n, oh * g.stride_h - g.pad_h + kh * g.dil_h);
        for (int64_t kw = 0; kw < g.kernel_w; ++kw) tap_x[kh * g.kernel_w + kw] = x + kw * g.dil_w * C;
      }
      const int64_t co0 = block * kDirectBlockChannels;
      direct_row(r, weight + co0 * taps * C, tile, g.out_w);
      if (channels_last_out) {
        for (int64_t ow = 0; ow < g.out_w; ++ow)
          epilogue(tile + ow * kDirectBlockChannels, n, oh, ow, co0, kDirectBlockChannels);
      } else {
        // NCHW output: a run of pixels per channel, written along the row.
        for (int64_t ow = 0; ow < g.out_w; ++ow)
          for (int64_t co = 0; co < kDirectBlockChannels; ++co)
            by_channel[co * g.out_w + ow] = tile[ow * kDirectBlockChannels + co];
        for (int64_t co = 0; co < kDirectBlockChannels; ++co)
          epilogue.channel_run(by_channel + co * g.out_w, n, oh, 0, co0 + co, g.out_w);
      }
    }
  });
}
