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
// accumulators (14 pixels x 32 channels) and walks (tap, input channel)
// once: per step 2 weight vectors and 14 broadcast input values feed 28
// FMAs, read from a thread's cache of zero-padded input rows (PaddedRows
// below), with no im2col or packed copy of the whole input.
#pragma once

constexpr int64_t kDirectBlockChannels = 64;  // output channels per weight block

// acc[p][v] = sum over taps t and channels c of
//   tap_x[t][offset + p * pixel_step + c] * w[(t * C + c) * w_step + 16 * v ...]
// for P output pixels and NV vectors of 16 output channels, stored to
// out[p * kDirectBlockChannels + 16 * v]. 14 x 2 needs 28 accumulators, 2
// weights and a broadcast: 31 of the 32 zmm registers; 7 x 4 needs 33, so
// the compiler keeps one value in memory there (the row tails only).
// With kSplit < P the block spans two output rows: pixels [0, kSplit) read
// through tap_x, the rest through tap_x2 (the next row's taps), from the
// same offset on.
template <int P, int NV, int kSplit = P>
inline void direct_block(const float* const* tap_x, const float* const* tap_x2, int64_t offset,
                         int64_t pixel_step, int64_t C, int64_t taps,
                         const float* __restrict w, int64_t w_step, float* __restrict out) {
  static_assert(P * NV <= 28, "accumulators must fit the 32 zmm registers");
  __m512 acc[P][NV];
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = _mm512_setzero_ps();
  for (int64_t t = 0; t < taps; ++t) {
    const float* xt = tap_x[t] + offset;
    const float* xt2 = kSplit < P ? tap_x2[t] + offset : xt;
    for (int64_t c = 0; c < C; ++c) {
      __m512 wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_ps(w + 16 * v);
      w += w_step;
      for (int p = 0; p < P; ++p) {
        const float* x = p < kSplit ? xt + p * pixel_step : xt2 + (p - kSplit) * pixel_step;
        const __m512 xv = _mm512_set1_ps(x[c]);
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
    direct_block<7, 4>(r.tap_x, r.tap_x, ow * r.pixel_step, r.pixel_step, r.C, r.taps, w, w_step,
                       tile + ow * kDirectBlockChannels);
  const int64_t at = ow * r.pixel_step;
  float* tr = tile + ow * kDirectBlockChannels;
  const auto* x = r.tap_x;
  switch (width - ow) {
    case 6: return direct_block<6, 4>(x, x, at, r.pixel_step, r.C, r.taps, w, w_step, tr);
    case 5: return direct_block<5, 4>(x, x, at, r.pixel_step, r.C, r.taps, w, w_step, tr);
    case 4: return direct_block<4, 4>(x, x, at, r.pixel_step, r.C, r.taps, w, w_step, tr);
    case 3: return direct_block<3, 4>(x, x, at, r.pixel_step, r.C, r.taps, w, w_step, tr);
    case 2: return direct_block<2, 4>(x, x, at, r.pixel_step, r.C, r.taps, w, w_step, tr);
    case 1: return direct_block<1, 4>(x, x, at, r.pixel_step, r.C, r.taps, w, w_step, tr);
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
      direct_block<14, 2>(r.tap_x, r.tap_x, ow * r.pixel_step, r.pixel_step, r.C, r.taps,
                          w + 32 * half, kDirectBlockChannels,
                          tile + ow * kDirectBlockChannels + 32 * half);
  direct_pixels_by_7(r, w, tile, ow, width);
}

// Two output rows of 7 pixels (ResNet's last stage) as one 14-pixel block,
// 32 channels at a time: the 14 x 2 tile instead of 7 x 4, which spills.
void direct_row_pair_of_7(const DirectRow& first, const DirectRow& second, const float* w,
                          float* tile) {
  for (int64_t half = 0; half < 2; ++half)
    direct_block<14, 2, 7>(first.tap_x, second.tap_x, 0, first.pixel_step, first.C, first.taps,
                           w + 32 * half, kDirectBlockChannels, tile + 32 * half);
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

// Block `block` of the weight (float [Cout, Cin, kh, kw], element strides
// st) as [taps][Cin][64]: the layout the kernel streams. 16 output channels
// at a time go innermost: one cache line written per (tap, channel), from 16
// source lines that stay in L1 while the loop walks along the source's unit
// stride (Cin for channels_last weights, the taps for NCHW ones). All 64 at
// once would be 64 lines a power-of-two-ish stride apart (e.g. 18 KB for
// 512 x 3 x 3), too many for their few L1 sets.
void lay_out_weight_block(const float* src, const int64_t* st, const Conv2dGeometry& g,
                          int64_t block, float* dst) {
  const int64_t C = g.in_channels, kw_count = g.kernel_w, taps = g.kernel_h * g.kernel_w;
  for (int64_t j0 = 0; j0 < kDirectBlockChannels; j0 += 16) {
    const float* first = src + (block * kDirectBlockChannels + j0) * st[0];
    const auto copy_16 = [&](int64_t t, int64_t c) {
      const float* s = first + c * st[1] + (t / kw_count) * st[2] + (t % kw_count) * st[3];
      float* d = dst + (t * C + c) * kDirectBlockChannels + j0;
      for (int64_t j = 0; j < 16; ++j) d[j] = s[j * st[0]];
    };
    if (st[1] == 1) {
      for (int64_t t = 0; t < taps; ++t)
        for (int64_t c = 0; c < C; ++c) copy_16(t, c);
    } else {
      for (int64_t c = 0; c < C; ++c)
        for (int64_t t = 0; t < taps; ++t) copy_16(t, c);
    }
  }
}

// The whole convolution, reading the input itself (any strides, any of the
// float-computed dtypes) and the float weight as it is. Work items are
// (64-channel block, group of output rows): one row, or two when rows are 7
// pixels wide (they share the 14-pixel tile). Block-major: a thread lays out
// each block's weights it meets (lay_out_weight_block) into its own L2-sized
// buffer, where its rows then reuse them. (A whole-tensor re-layout before
// the kernel wrote them through memory and cost ~17% of a 512 @7 layer.)
template <typename scalar_t>
void direct_tiles(const ForwardArgs& a) {
  const Conv2dGeometry& g = a.g;
  const int64_t C = g.in_channels;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t blocks = g.out_channels / kDirectBlockChannels;
  const int64_t rows = g.batch * g.out_h;
  const int64_t group = g.out_w == 7 ? 2 : 1;
  const int64_t groups = ceil_div(rows, group);
  const float* weight = static_cast<const float*>(a.weight);
  const Epilogue<scalar_t, float> epilogue{a};
  const bool channels_last_out = a.out_strides[1] == 1;
  const int64_t row_tile = g.out_w * kDirectBlockChannels;

  at::parallel_for(0, blocks * groups, 1, [&](int64_t begin, int64_t end) {
    // [group][out_w][64] accumulators, then (NCHW outputs) one row's
    // transpose [64][out_w].
    float* tile = Workspace::get<float>(WorkspaceSlot::AccumulatorTile, (group + 1) * row_tile);
    float* by_channel = tile + group * row_tile;
    // One row cache per row of a group: a cache holds the input rows of one
    // output row (two rows of a pair need stride_h more, and may come from
    // different images).
    const int64_t cache_floats = PaddedRows<scalar_t>::floats_needed(g);
    float* cache = Workspace::get<float>(WorkspaceSlot::Im2colTile, group * cache_floats);
    std::vector<PaddedRows<scalar_t>> input_rows;
    input_rows.reserve(group);
    for (int64_t j = 0; j < group; ++j) input_rows.emplace_back(a, cache + j * cache_floats);
    std::vector<const float*> tap_x(group * taps);
    float* block_weight = Workspace::get<float>(WorkspaceSlot::DirectConvWeightBlock,
                                                taps * C * kDirectBlockChannels);
    int64_t laid_out = -1;  // the block in block_weight
    std::vector<DirectRow> r;
    for (int64_t j = 0; j < group; ++j) r.push_back({&tap_x[j * taps], g.stride_w * C, C, taps});
    for (int64_t item = begin; item < end; ++item) {
      const int64_t block = item / groups, first_row = (item % groups) * group;
      const int64_t count = std::min(group, rows - first_row);
      for (int64_t j = 0; j < count; ++j) {
        const int64_t n = (first_row + j) / g.out_h, oh = (first_row + j) % g.out_h;
        for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
          const float* x = input_rows[j].row(n, oh * g.stride_h - g.pad_h + kh * g.dil_h);
          for (int64_t kw = 0; kw < g.kernel_w; ++kw)
            tap_x[j * taps + kh * g.kernel_w + kw] = x + kw * g.dil_w * C;
        }
      }
      const int64_t co0 = block * kDirectBlockChannels;
      if (block != laid_out) {
        lay_out_weight_block(weight, a.weight_strides, g, block, block_weight);
        laid_out = block;
      }
      const float* w = block_weight;
      if (count == 2) {
        direct_row_pair_of_7(r[0], r[1], w, tile);
      } else {
        direct_row(r[0], w, tile, g.out_w);
      }
      for (int64_t j = 0; j < count; ++j) {
        const int64_t n = (first_row + j) / g.out_h, oh = (first_row + j) % g.out_h;
        const float* row_acc = tile + j * row_tile;
        if (channels_last_out) {
          for (int64_t ow = 0; ow < g.out_w; ++ow)
            epilogue(row_acc + ow * kDirectBlockChannels, n, oh, ow, co0, kDirectBlockChannels);
        } else {
          // NCHW output: a run of pixels per channel, written along the row.
          for (int64_t ow = 0; ow < g.out_w; ++ow)
            for (int64_t co = 0; co < kDirectBlockChannels; ++co)
              by_channel[co * g.out_w + ow] = row_acc[ow * kDirectBlockChannels + co];
          for (int64_t co = 0; co < kDirectBlockChannels; ++co)
            epilogue.channel_run(by_channel + co * g.out_w, n, oh, 0, co0 + co, g.out_w);
        }
      }
    }
  });
}
