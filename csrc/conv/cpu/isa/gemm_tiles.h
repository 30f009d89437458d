// Dense and grouped convolution: implicit GEMM over im2col tiles.
//
// Part of conv2d_cpu_kernel_isa.cpp, which includes it inside
// namespace pydl::conv_cpu::CPU_CAPABILITY (once per ISA): not a standalone
// header, and it includes nothing itself.
#pragma once

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
  const std::vector<int64_t> natural_offs = tap_offsets(a);  // (r, s) order
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t k_depth = taps * Cg;
  const int64_t pixels = g.batch * g.out_h * g.out_w;
  // A 1x1 kernel (any stride or padding): output pixel i is packed row i of
  // phase 0, whose grid is exactly the output's, so no gather is needed.
  const bool direct = g.kernel_h == 1 && g.kernel_w == 1;
  const int64_t hw = g.out_h * g.out_w;
  // a.input_planes (1x1 on a contiguous NCHW input): A is read straight from
  // the [C x HW] planes, so pixel tiles stay inside one image.
  const bool planes = a.input_planes;
  const Tiles t = planes ? choose_tiles(hw, Cg, Kg, G * g.batch)
                         : choose_tiles(pixels, direct ? Cg : k_depth, Kg, G);
  const int64_t image_tiles = ceil_div(hw, t.rows);
  const int64_t m_tiles = planes ? g.batch * image_tiles : ceil_div(pixels, t.rows);
  const int64_t k_blocks = ceil_div(Kg, t.cols);
  const int64_t items = m_tiles * G * k_blocks;
  const acc_t* xp = static_cast<const acc_t*>(a.packed);
  // [G * Kg][k_depth]: K order (tap, channel), or (channel, tap) if k_channel_major.
  const acc_t* wt = static_cast<const acc_t*>(a.weight);
  const Epilogue<scalar_t, acc_t> epilogue{a};
  // Channel-major tiles (a run of pixels per channel) for NCHW-like outputs,
  // and whenever a tile has fewer pixels than channels: MKL ran those shapes
  // faster that way round (3x3 512@7, batch 1: 1.45 -> 1.05 ms).
  const bool channel_major = planes || a.out_strides[1] != 1 || t.rows < t.cols;

  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    const SingleThreadedBlas one_thread_per_gemm;
    acc_t* cols_buf = (direct || planes)
                          ? nullptr
                          : Workspace::get<acc_t>(WorkspaceSlot::Im2colTile, t.rows * k_depth);
    acc_t* tile = Workspace::get<acc_t>(WorkspaceSlot::AccumulatorTile, t.rows * t.cols);
    int64_t gathered = -1;  // (m tile, group) whose im2col rows are in cols_buf
    for (int64_t item = begin; item < end; ++item) {
      const int64_t kb = item % k_blocks;
      const int64_t grp = (item / k_blocks) % G;
      const int64_t mt = item / (k_blocks * G);
      // m0: the tile's first output pixel (global index n * hw + ...).
      int64_t m0, rows;
      if (planes) {
        const int64_t n = mt / image_tiles, first = (mt % image_tiles) * t.rows;
        m0 = n * hw + first;
        rows = std::min(t.rows, hw - first);
      } else {
        m0 = mt * t.rows;
        rows = std::min(t.rows, pixels - m0);
      }
      const int64_t k0 = kb * t.cols, cols = std::min(t.cols, Kg - k0);
      const acc_t* A;
      int64_t lda;
      if (planes) {
        // Element (pixel r, channel c) at c * hw + r: column-major [rows x Cg].
        const int64_t n = m0 / hw;
        A = xp + (n * C + grp * Cg) * hw + (m0 - n * hw);
        lda = hw;
      } else if (direct) {
        A = xp + m0 * C + grp * Cg;
        lda = C;
      } else {
        if (gathered != mt * G + grp) {
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t pix = m0 + r, n = pix / hw, oh = (pix % hw) / g.out_w,
                          ow = pix % g.out_w;
            const acc_t* src = xp + n * p.image_stride + (oh * p.grid_w + ow) * C + grp * Cg;
            acc_t* dst = cols_buf + r * k_depth;
            if (a.k_channel_major) {
              // K index c * taps + t: a transposing gather, cheap for few pixels.
              for (int64_t tap = 0; tap < taps; ++tap) {
                const acc_t* from = src + natural_offs[tap] * C;
                for (int64_t c = 0; c < Cg; ++c) dst[c * taps + tap] = from[c];
              }
              continue;
            }
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
        gemm(!planes, rows, cols, k_depth, acc_t(1), A, lda, w_block, k_depth, acc_t(0), tile,
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
