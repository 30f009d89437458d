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

// Writes act(acc + bias + residual) for `len` channels of one output pixel.
// `out`/`res` step by `out_cs`/`res_cs` between channels.
template <typename scalar_t, typename acc_t>
inline void epilogue_pixel(const acc_t* acc, const acc_t* bias, const scalar_t* res, int64_t res_cs,
                           scalar_t* out, int64_t out_cs, int64_t len, Activation act) {
  using V = Vec<acc_t>;
  int64_t c = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (out_cs == 1 && (res == nullptr || res_cs == 1)) {
      for (; c + V::size() <= len; c += V::size()) {
        V v = V::loadu(acc + c);
        if (bias) v = v + V::loadu(bias + c);
        if (res) v = v + V::loadu(res + c);
        activate<acc_t>(act, v).store(out + c);
      }
    }
  }
  for (; c < len; ++c) {
    acc_t v = acc[c];
    if (bias) v += bias[c];
    if (res) v += static_cast<acc_t>(res[c * res_cs]);
    out[c * out_cs] = static_cast<scalar_t>(apply_activation<acc_t>(act, v));
  }
}

template <typename scalar_t, typename acc_t>
struct Epilogue {
  const ForwardArgs& a;
  // One output pixel (n, oh, ow), channels [co0, co0 + len).
  void operator()(const acc_t* acc, int64_t n, int64_t oh, int64_t ow, int64_t co0,
                  int64_t len) const {
    const int64_t* os = a.out_strides;
    scalar_t* out = static_cast<scalar_t*>(a.out) + n * os[0] + co0 * os[1] + oh * os[2] + ow * os[3];
    const scalar_t* res = nullptr;
    int64_t res_cs = 0;
    if (a.residual) {
      const int64_t* rs = a.residual_strides;
      res = static_cast<const scalar_t*>(a.residual) + n * rs[0] + co0 * rs[1] + oh * rs[2] +
            ow * rs[3];
      res_cs = rs[1];
    }
    const acc_t* bias = a.bias ? static_cast<const acc_t*>(a.bias) + co0 : nullptr;
    epilogue_pixel<scalar_t, acc_t>(acc, bias, res, res_cs, out, os[1], len, a.act);
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
// (few pixel tiles means the weights stream from memory few times; small
// late-stage layers then take all their pixels in one tile), then shrunk
// until every thread has a few tiles.
Tiles choose_tiles(int64_t pixels, int64_t k_depth, int64_t Kg, int64_t groups) {
  Tiles t;
  t.cols = Kg <= 256 ? Kg : 128;
  t.rows = std::clamp<int64_t>((262144 / std::max<int64_t>(k_depth, t.cols)) / 16 * 16, 32, 512);
  t.rows = ceil_div(pixels, ceil_div(pixels, t.rows));  // balanced tiles
  const int64_t want = 4 * at::get_num_threads();
  auto items = [&] { return ceil_div(pixels, t.rows) * groups * ceil_div(Kg, t.cols); };
  // Narrow channel tiles make poor GEMMs: split pixels first, down to 128.
  while (items() < want && t.rows > 128) t.rows = std::max<int64_t>(128, ceil_div(t.rows, 2));
  while (items() < want && t.cols >= 128 && t.cols % 32 == 0) t.cols /= 2;
  while (items() < want && t.rows > 32) t.rows = std::max<int64_t>(32, ceil_div(t.rows, 2));
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
      // Column-major view: tile^T[cols x rows] = W[cols x K] * A^T[K x rows],
      // W read as the transpose of its [K x cols] column-major storage.
      gemm(true, cols, rows, k_depth, acc_t(1), wt + (grp * Kg + k0) * k_depth, k_depth, A, lda,
           acc_t(0), tile, t.cols);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t pix = m0 + r;
        epilogue(tile + r * t.cols, pix / hw, (pix % hw) / g.out_w, pix % g.out_w, grp * Kg + k0,
                 cols);
      }
    }
  });
}

// Depthwise: each output channel reads one input channel, so no GEMM; vectors
// run along the (innermost) channel dimension of the packed input. For each
// channel vector the kernel taps' weights are loaded once per output row
// (kept in registers when kTaps is known at compile time, e.g. 3x3).
template <typename acc_t, int kTaps>
void depthwise_row(const acc_t* x_row, const int64_t* offs, int64_t taps, const acc_t* wt,
                   int64_t C, int64_t out_w, acc_t* acc) {
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
        sum.store(acc + ow * C + c);
      }
    } else {
      for (int64_t ow = 0; ow < out_w; ++ow) {
        const acc_t* xq = x_row + ow * C + c;
        V sum(acc_t(0));
        for (int64_t t = 0; t < taps; ++t)
          sum = at::vec::fmadd(V::loadu(xq + offs[t] * C), V::loadu(wt + t * C + c), sum);
        sum.store(acc + ow * C + c);
      }
    }
  }
  for (; c < C; ++c) {
    for (int64_t ow = 0; ow < out_w; ++ow) {
      acc_t sum = 0;
      for (int64_t t = 0; t < taps; ++t) sum += x_row[(ow + offs[t]) * C + c] * wt[t * C + c];
      acc[ow * C + c] = sum;
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
  at::parallel_for(0, g.batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
    acc_t* acc = Workspace::get<acc_t>(WorkspaceSlot::AccumulatorTile, g.out_w * C);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.out_h, oh = item % g.out_h;
      const acc_t* x_row = xp + n * p.image_stride + oh * p.grid_w * C;
      if (taps == 9)
        depthwise_row<acc_t, 9>(x_row, offs.data(), taps, wt, C, g.out_w, acc);
      else
        depthwise_row<acc_t, 0>(x_row, offs.data(), taps, wt, C, g.out_w, acc);
      for (int64_t ow = 0; ow < g.out_w; ++ow) epilogue(acc + ow * C, n, oh, ow, 0, C);
    }
  });
}

template <typename scalar_t, typename acc_t>
void forward_typed(const ForwardArgs& a) {
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

}  // namespace
}  // namespace CPU_CAPABILITY

KernelTable PYDL_CONCAT(kernel_table_, CPU_CAPABILITY)() {
  return {&CPU_CAPABILITY::forward, C10_STRINGIZE(CPU_CAPABILITY)};
}

}  // namespace conv_cpu
}  // namespace pydl
