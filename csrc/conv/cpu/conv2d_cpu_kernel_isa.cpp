// conv2d CPU hot loops, compiled once per ISA (setup.py builds this file with
// CPU_CAPABILITY=DEFAULT / AVX2 / AVX512 and the matching flags; at::vec
// picks its vector width from that macro). See conv2d_cpu_kernel.h for the
// phase-packed layout that turns the convolution into shifted GEMMs.
//
// Keep this translation unit small: no at::Tensor, plain pointers only.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/blas.h"
#include "common/workspace.h"
#include "conv/cpu/conv2d_cpu_kernel.h"

#ifndef CPU_CAPABILITY
#error "conv2d_cpu_kernel_isa.cpp is compiled through setup.py's per-ISA wrappers"
#endif

#define PYDL_CONCAT_(a, b) a##b
#define PYDL_CONCAT(a, b) PYDL_CONCAT_(a, b)

namespace pydl {
namespace conv_cpu {
namespace CPU_CAPABILITY {
namespace {

template <typename T>
using Vec = at::vec::Vectorized<T>;

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename acc_t>
inline Vec<acc_t> activate(Activation act, Vec<acc_t> v) {
  using V = Vec<acc_t>;
  switch (act) {
    case Activation::Relu:
      return at::vec::maximum(v, V(acc_t(0)));
    case Activation::Gelu:
      return V(acc_t(0.5)) * v * (V(acc_t(1)) + (v * V(acc_t(0.70710678118654752440))).erf());
    case Activation::GeluTanh: {
      const V inner = V(acc_t(0.79788456080286535588)) * (v + V(acc_t(0.044715)) * v * v * v);
      return V(acc_t(0.5)) * v * (V(acc_t(1)) + inner.tanh());
    }
    case Activation::Silu:
      return v / (V(acc_t(1)) + v.neg().exp());
    case Activation::None:
    default:
      return v;
  }
}

// Writes act(acc + bias + residual) for `len` contiguous accumulator values:
// the channels of one pixel (bias_step 1) or the pixels of one channel run
// (bias_step 0: one bias value). `out`/`res` step by `out_step`/`res_step`.
template <typename scalar_t, typename acc_t>
inline void epilogue_run(const acc_t* acc, const acc_t* bias, int64_t bias_step,
                         const scalar_t* res, int64_t res_step, scalar_t* out, int64_t out_step,
                         int64_t len, Activation act) {
  using V = Vec<acc_t>;
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (out_step == 1 && (res == nullptr || res_step == 1)) {
      for (; i + V::size() <= len; i += V::size()) {
        V v = V::loadu(acc + i);
        if (bias) v = v + (bias_step ? V::loadu(bias + i) : V(*bias));
        if (res) v = v + V::loadu(res + i);
        activate<acc_t>(act, v).store(out + i);
      }
    }
  }
  for (; i < len; ++i) {
    acc_t v = acc[i];
    if (bias) v += bias[i * bias_step];
    if (res) v += static_cast<acc_t>(res[i * res_step]);
    out[i * out_step] = static_cast<scalar_t>(apply_activation<acc_t>(act, v));
  }
}

template <typename scalar_t, typename acc_t>
struct Epilogue {
  const ForwardArgs& a;

  scalar_t* out_at(int64_t n, int64_t co, int64_t oh, int64_t ow) const {
    const int64_t* os = a.out_strides;
    return static_cast<scalar_t*>(a.out) + n * os[0] + co * os[1] + oh * os[2] + ow * os[3];
  }
  const scalar_t* res_at(int64_t n, int64_t co, int64_t oh, int64_t ow) const {
    if (!a.residual) return nullptr;
    const int64_t* rs = a.residual_strides;
    return static_cast<const scalar_t*>(a.residual) + n * rs[0] + co * rs[1] + oh * rs[2] +
           ow * rs[3];
  }
  const acc_t* bias_at(int64_t co) const {
    return a.bias ? static_cast<const acc_t*>(a.bias) + co : nullptr;
  }

  // One output pixel (n, oh, ow), channels [co0, co0 + len) contiguous in acc.
  void operator()(const acc_t* acc, int64_t n, int64_t oh, int64_t ow, int64_t co0,
                  int64_t len) const {
    epilogue_run<scalar_t, acc_t>(acc, bias_at(co0), 1, res_at(n, co0, oh, ow),
                                  a.residual_strides[1], out_at(n, co0, oh, ow),
                                  a.out_strides[1], len, a.act);
  }

  // One channel co of the output pixels (n, oh, ow0 .. ow0 + len) of one row.
  void channel_run(const acc_t* acc, int64_t n, int64_t oh, int64_t ow0, int64_t co,
                   int64_t len) const {
    epilogue_run<scalar_t, acc_t>(acc, bias_at(co), 0, res_at(n, co, oh, ow0),
                                  a.residual_strides[3], out_at(n, co, oh, ow0),
                                  a.out_strides[3], len, a.act);
  }
};

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

// Copies n elements; short runs (the stem's 3 channels) skip memcpy's call.
template <typename T>
inline void copy_run(T* dst, const T* src, int64_t n) {
  if (n * static_cast<int64_t>(sizeof(T)) >= 64) {
    std::memcpy(dst, src, n * sizeof(T));
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
  }
}

struct Tiles {
  int64_t rows;  // output pixels per tile (GEMM N in the column-major view)
  int64_t cols;  // output channels per tile, within one group (GEMM M)
};

// Tiles: as many output pixels as keep the im2col rows within ~1 MB of L2
// (larger GEMMs run faster, and few pixel tiles means the weights stream
// from memory few times), then a tile count that splits evenly over the
// threads: at::parallel_for hands each thread one contiguous range of tiles.
Tiles choose_tiles(int64_t pixels, int64_t k_depth, int64_t Kg, int64_t groups) {
  const int64_t threads = at::get_num_threads();
  Tiles t;
  t.cols = Kg <= 256 ? Kg : 128;
  const int64_t max_rows =
      std::clamp<int64_t>((262144 / std::max<int64_t>(k_depth, t.cols)) / 16 * 16, 32, 512);
  int64_t m_tiles = ceil_div(pixels, max_rows);
  const auto per_m_tile = [&] { return groups * ceil_div(Kg, t.cols); };
  // Too little work for every thread: narrower channel tiles (down to 64).
  while (m_tiles * per_m_tile() < threads && t.cols >= 128 && t.cols % 32 == 0) t.cols /= 2;
  // Round the tile count up to a multiple of the thread count while tiles
  // keep at least 32 pixels.
  while ((m_tiles * per_m_tile()) % threads != 0 && ceil_div(pixels, m_tiles + 1) >= 32)
    ++m_tiles;
  t.rows = ceil_div(pixels, m_tiles);
  return t;
}

// Dense and grouped convolution as implicit GEMM in cache-sized tiles: a tile
// of output pixels gathers its im2col rows (kh*kw contiguous channel runs per
// pixel, thanks to the packed layout) into an L2-resident buffer, one GEMM
// with K = kh*kw*Cin/g produces the accumulator tile, and the fused epilogue
// writes it out. 1x1 unpadded convolutions read the packed input directly.
template <typename scalar_t, typename acc_t>
void gemm_tiles(const ForwardArgs& a) {
  const Conv2dGeometry& g = a.g;
  const PackedGeometry& p = a.p;
  const int64_t C = g.in_channels, Cg = g.in_per_group(), Kg = g.out_per_group();
  const int64_t G = g.groups;
  const std::vector<CopyRun> runs = im2col_runs(a);
  const int64_t k_depth = g.kernel_h * g.kernel_w * Cg;
  const int64_t pixels = g.batch * g.out_h * g.out_w;
  // Output pixel i is packed row i: no gather needed.
  const bool direct = k_depth == Cg && runs[0].offset == 0 && p.grid_w == g.out_w &&
                      p.grid_h == g.out_h;
  const Tiles t = choose_tiles(pixels, direct ? Cg : k_depth, Kg, G);
  const int64_t m_tiles = ceil_div(pixels, t.rows), k_blocks = ceil_div(Kg, t.cols);
  const int64_t items = m_tiles * G * k_blocks;
  const acc_t* xp = static_cast<const acc_t*>(a.packed);
  const acc_t* wt = static_cast<const acc_t*>(a.weight);  // [G * Kg][taps][Cg]
  const Epilogue<scalar_t, acc_t> epilogue{a};
  const int64_t hw = g.out_h * g.out_w;
  const bool channel_major = a.out_strides[1] != 1;

  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    const SingleThreadedBlas one_thread_per_gemm;
    acc_t* cols_buf = direct ? nullptr : Workspace::get<acc_t>(WorkspaceSlot::Im2colTile, t.rows * k_depth);
    acc_t* tile = Workspace::get<acc_t>(WorkspaceSlot::AccumulatorTile, t.rows * t.cols);
    int64_t gathered = -1;  // (m tile, group) whose im2col rows are in cols_buf
    for (int64_t item = begin; item < end; ++item) {
      const int64_t kb = item % k_blocks;
      const int64_t grp = (item / k_blocks) % G;
      const int64_t mt = item / (k_blocks * G);
      const int64_t m0 = mt * t.rows, rows = std::min(t.rows, pixels - m0);
      const int64_t k0 = kb * t.cols, cols = std::min(t.cols, Kg - k0);
      const acc_t* A;
      int64_t lda;
      if (direct) {
        A = xp + m0 * C + grp * Cg;
        lda = C;
      } else {
        if (gathered != mt * G + grp) {
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t pix = m0 + r, n = pix / hw, oh = (pix % hw) / g.out_w,
                          ow = pix % g.out_w;
            const acc_t* src = xp + n * p.image_stride + (oh * p.grid_w + ow) * C + grp * Cg;
            acc_t* dst = cols_buf + r * k_depth;
            for (const CopyRun& run : runs) {
              copy_run(dst, src + run.offset * C, run.length);
              dst += run.length;
            }
          }
          gathered = mt * G + grp;
        }
        A = cols_buf;
        lda = k_depth;
      }
      const acc_t* w_block = wt + (grp * Kg + k0) * k_depth;
      if (!channel_major) {
        // Column-major view: tile^T[cols x rows] = W[cols x K] * A^T[K x rows],
        // W read as the transpose of its [K x cols] column-major storage.
        gemm(true, cols, rows, k_depth, acc_t(1), w_block, k_depth, A, lda, acc_t(0), tile,
             t.cols);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t pix = m0 + r;
          epilogue(tile + r * t.cols, pix / hw, (pix % hw) / g.out_w, pix % g.out_w,
                   grp * Kg + k0, cols);
        }
      } else {
        // NCHW-like output: tile[rows x cols] column-major, i.e. a run of
        // pixels per channel, so the epilogue writes along the output rows.
        gemm(true, rows, cols, k_depth, acc_t(1), A, lda, w_block, k_depth, acc_t(0), tile,
             t.rows);
        for (int64_t co = 0; co < cols; ++co) {
          for (int64_t r = 0; r < rows;) {
            const int64_t pix = m0 + r, ow = pix % g.out_w;
            const int64_t len = std::min(rows - r, g.out_w - ow);
            epilogue.channel_run(tile + co * t.rows + r, pix / hw, (pix % hw) / g.out_w, ow,
                                 grp * Kg + k0 + co, len);
            r += len;
          }
        }
      }
    }
  });
}

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

template <typename scalar_t, typename acc_t>
void forward_typed(const ForwardArgs& a) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (a.depthwise_direct) return depthwise_direct<acc_t>(a);
    if (a.depthwise_planes) return depthwise_planes<acc_t>(a);
  }
  if (!a.input_is_packed) pack_input<scalar_t, acc_t>(a);
  if (a.g.is_depthwise())
    depthwise<scalar_t, acc_t>(a);
  else
    gemm_tiles<scalar_t, acc_t>(a);
}

void forward(const ForwardArgs& a) {
  switch (a.dtype) {
    case c10::ScalarType::Float:
      return forward_typed<float, float>(a);
    case c10::ScalarType::Double:
      return forward_typed<double, double>(a);
    case c10::ScalarType::BFloat16:
      return forward_typed<c10::BFloat16, float>(a);
    case c10::ScalarType::Half:
      return forward_typed<c10::Half, float>(a);
    default:
      TORCH_CHECK(false, "pydl.conv2d (CPU): unsupported dtype ", a.dtype);
  }
}

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

}  // namespace
}  // namespace CPU_CAPABILITY

KernelTable PYDL_CONCAT(kernel_table_, CPU_CAPABILITY)() {
  return {&CPU_CAPABILITY::forward, &CPU_CAPABILITY::depthwise_backward,
          C10_STRINGIZE(CPU_CAPABILITY)};
}

}  // namespace conv_cpu
}  // namespace pydl
