// The phase-packed input (conv2d_cpu_kernel.h) and the im2col runs read from it.
//
// Part of conv2d_cpu_kernel_isa.cpp, which includes it inside
// namespace pydl::conv_cpu::CPU_CAPABILITY (once per ISA): not a standalone
// header, and it includes nothing itself.
#pragma once

// Zero-pads and phase-splits the input (any strides, any dtype) into
// acc_t [phase][n][grid_h][grid_w][C] followed by zeroed tail pixels.
template <typename scalar_t, typename acc_t>
void pack_input(const ForwardArgs& a) {
  const Conv2dGeometry& g = a.g;
  const PackedGeometry& p = a.p;
  const int64_t C = g.in_channels;
  const int64_t sN = a.input_strides[0], sC = a.input_strides[1], sH = a.input_strides[2],
                sW = a.input_strides[3];
  const int64_t phases = g.stride_h * g.stride_w;
  const scalar_t* x = static_cast<const scalar_t*>(a.input);
  acc_t* xp = static_cast<acc_t*>(a.packed);
  const int64_t rows = phases * g.batch * p.grid_h;
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row % p.grid_h;
      const int64_t n = (row / p.grid_h) % g.batch;
      const int64_t phase = row / (p.grid_h * g.batch);
      const int64_t ph_a = phase / g.stride_w, ph_b = phase % g.stride_w;
      acc_t* dst = xp + phase * p.phase_stride + n * p.image_stride + i * p.grid_w * C;
      const int64_t h = i * g.stride_h + ph_a - g.pad_h;
      if (h < 0 || h >= g.in_h) {
        std::fill(dst, dst + p.grid_w * C, acc_t(0));
        continue;
      }
      const scalar_t* src_row = x + n * sN + h * sH;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        // An NCHW row at column stride 1 is a [C][W] matrix: transpose it
        // (at::vec's transpose, blocked for float on AVX-512, where element
        // by element touched a line in every channel plane per pixel; an
        // element loop elsewhere).
        if (sW == 1 && sC != 1 && g.stride_w == 1) {
          std::fill(dst, dst + g.pad_w * C, acc_t(0));
          at::vec::transpose_mxn<acc_t>(src_row, sC, dst + g.pad_w * C, C, C, g.in_w);
          std::fill(dst + (g.pad_w + g.in_w) * C, dst + p.grid_w * C, acc_t(0));
          continue;
        }
      }
      for (int64_t j = 0; j < p.grid_w; ++j) {
        acc_t* d = dst + j * C;
        const int64_t w = j * g.stride_w + ph_b - g.pad_w;
        if (w < 0 || w >= g.in_w) {
          std::fill(d, d + C, acc_t(0));
          continue;
        }
        const scalar_t* s = src_row + w * sW;
        if (sC == 1) {
          for (int64_t c = 0; c < C; ++c) d[c] = static_cast<acc_t>(s[c]);
        } else {
          for (int64_t c = 0; c < C; ++c) d[c] = static_cast<acc_t>(s[c * sC]);
        }
      }
    }
  });
  acc_t* tail = xp + phases * p.phase_stride;
  std::fill(tail, tail + p.tail_pixels * C, acc_t(0));
}

std::vector<int64_t> tap_offsets(const ForwardArgs& a) {
  std::vector<int64_t> offs;
  for (int64_t r = 0; r < a.g.kernel_h; ++r)
    for (int64_t s = 0; s < a.g.kernel_w; ++s) offs.push_back(tap_pixel_offset(a.g, a.p, r, s));
  return offs;
}

// A contiguous piece of one pixel's im2col row: `length` elements read from
// packed pixel offset `offset` (relative to the output pixel's own).
struct CopyRun {
  int64_t offset, length;
};

// The im2col row of a pixel as few contiguous copies: taps in gemm_tap_order,
// neighbouring packed pixels merged when a group spans all channels.
std::vector<CopyRun> im2col_runs(const ForwardArgs& a) {
  const int64_t Cg = a.g.in_per_group();
  std::vector<CopyRun> runs;
  for (int64_t t : gemm_tap_order(a.g, a.p)) {
    const int64_t off = tap_pixel_offset(a.g, a.p, t / a.g.kernel_w, t % a.g.kernel_w);
    if (a.g.groups == 1 && !runs.empty() &&
        runs.back().offset + runs.back().length / Cg == off) {
      runs.back().length += Cg;
    } else {
      runs.push_back({off, Cg});
    }
  }
  return runs;
}

// Copies n elements. Runs shorter than a vector (the stem's 12- and 9-float
// kernel-row runs) take one partial vector load/store instead of memcpy.
template <typename T>
inline void copy_run(T* dst, const T* src, int64_t n) {
  if (n < Vec<T>::size()) {
    Vec<T>::loadu(src, n).store(dst, n);
  } else {
    std::memcpy(dst, src, n * sizeof(T));
  }
}
