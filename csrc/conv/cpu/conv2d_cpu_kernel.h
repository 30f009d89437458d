// Interface between the conv2d CPU entry point (conv2d_cpu.cpp) and its
// hot loops, which are compiled once per CPU ISA (conv2d_cpu_kernel_*.cpp)
// and picked at run time. Only plain pointers and sizes cross this boundary,
// so the ISA-specific translation units stay small.
#pragma once

#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>
#include <vector>
#include <string>

#include "../../common/activation.h"
#include "../conv2d_geometry.h"

namespace pydl {
namespace conv_cpu {

// The "phase-packed" input layout that turns a convolution into a sum of
// shifted GEMMs. The zero-padded input is split into stride_h*stride_w phases;
// phase (a, b) holds padded pixels (i*stride_h + a, j*stride_w + b) as a
// [batch, grid_h, grid_w, channels] block. In that layout every kernel tap
// (r, s) reads, for output grid position q = oh*grid_w + ow, the packed pixel
// q + shift(r, s) of one phase: a GEMM over contiguous rows with no im2col.
// Output columns ow in [out_w, grid_w) are computed and discarded.
struct PackedGeometry {
  int64_t grid_h, grid_w;      // per-phase spatial size
  int64_t phase_stride;        // elements between phases
  int64_t image_stride;        // elements between images inside a phase
  int64_t tail_pixels;         // zero pixels after the last image (shift overrun)
};

PackedGeometry packed_geometry(const Conv2dGeometry& g);

// Kernel rows the depthwise kernels take whole (isa/depthwise.h,
// depthwise_rows): 3, 5 or 7 taps wide at dilation 1, output columns 1 or 2
// input columns apart.
inline bool depthwise_rows_fit(int64_t kernel_w, int64_t column_step, int64_t dil_w) {
  return dil_w == 1 && (column_step == 1 || column_step == 2) &&
         (kernel_w == 3 || kernel_w == 5 || kernel_w == 7);
}

// Offset (in pixels, from the start of phase 0) of tap (r, s) relative to q.
inline int64_t tap_pixel_offset(const Conv2dGeometry& g, const PackedGeometry& p, int64_t r,
                                int64_t s) {
  const int64_t ry = r * g.dil_h, sx = s * g.dil_w;
  const int64_t phase = (ry % g.stride_h) * g.stride_w + (sx % g.stride_w);
  return phase * (p.phase_stride / g.in_channels) + (ry / g.stride_h) * p.grid_w +
         (sx / g.stride_w);
}

// The GEMM path's order of kernel taps along K: sorted by packed offset, so
// taps that read adjacent packed pixels (a kernel row within one phase) are
// neighbours and, with groups == 1, one contiguous copy. The weight's K
// order follows it (conv2d_cpu.cpp). Identity for stride-1 kernels.
inline std::vector<int64_t> gemm_tap_order(const Conv2dGeometry& g, const PackedGeometry& p) {
  std::vector<int64_t> order(g.kernel_h * g.kernel_w);
  std::vector<int64_t> offset(order.size());
  for (int64_t t = 0; t < static_cast<int64_t>(order.size()); ++t) {
    order[t] = t;
    offset[t] = tap_pixel_offset(g, p, t / g.kernel_w, t % g.kernel_w);
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t x, int64_t y) { return offset[x] < offset[y]; });
  return order;
}

struct ForwardArgs {
  Conv2dGeometry g;
  PackedGeometry p;
  c10::ScalarType dtype;     // of input/residual/output
  Activation act;
  const void* input;         // dtype, strides in input_strides (n, c, h, w)
  int64_t input_strides[4];
  void* packed;              // acc type, p.phase_stride * phases + tail; may alias input
                             // (a per-thread workspace, see common/workspace.h)
  bool input_is_packed;      // 1x1/stride-1/unpadded channels_last: no copy needed
  bool input_planes;         // 1x1/stride-1/unpadded on a contiguous NCHW input (and
                             // NCHW output): the GEMM reads the [C x HW] planes
  bool depthwise_direct;     // depthwise reading the channels_last input itself
                             // (input and output channels_last, compute dtype)
  bool depthwise_planes;     // depthwise reading a contiguous NCHW input per channel
                             // plane (output NCHW, compute dtype)
  const void* weight;        // acc type; GEMM: [Cout, taps in gemm_tap_order, Cin/g],
                             // or [Cout, Cin/g, kh * kw] if k_channel_major;
                             // depthwise: [kh, kw, C]
  bool k_channel_major;      // GEMM K order is (channel, tap): the NCHW weight as is
  bool direct;               // the direct kernel (KernelTable::has_direct; float compute,
                             // groups 1): weight is float [Cout, Cin, kh, kw] with
                             // strides in weight_strides, re-laid out per block
  int64_t weight_strides[4];
  const void* bias;          // acc type [Cout] or nullptr
  const void* residual;      // dtype, strides in residual_strides, or nullptr
  int64_t residual_strides[4];
  void* out;                 // dtype, strides in out_strides
  int64_t out_strides[4];
};

using ForwardFn = void (*)(const ForwardArgs&);

// Depthwise backward on channels_last tensors in the compute dtype (float or
// double), read and written in place: no repacking, unlike the generic
// ATen backward whose copies dominate this memory-bound case.
struct DepthwiseBackwardArgs {
  Conv2dGeometry g;
  bool is_double;
  const void* grad;     // d loss / d pre-activation, [N, OH, OW, C]
  const void* input;    // [N, H, W, C]
  const void* weight;   // [kh * kw, C]
  void* grad_input;     // [N, H, W, C], or nullptr
  void* grad_weight;    // [kh * kw, C], or nullptr
};

using DepthwiseBackwardFn = void (*)(const DepthwiseBackwardArgs&);

// One implementation per ISA; each file defines its own in a namespace named
// after the ISA and registers it here.
struct KernelTable {
  ForwardFn forward;
  DepthwiseBackwardFn depthwise_backward;
  bool has_direct;  // ForwardArgs::direct is supported (isa/direct_avx512.h)
  const char* isa;
};

// Named after ATen's CPU_CAPABILITY values; the x86 variants exist only when
// setup.py built them (PYDL_HAVE_AVX2_KERNELS / PYDL_HAVE_AVX512_KERNELS).
KernelTable kernel_table_DEFAULT();
KernelTable kernel_table_AVX2();
KernelTable kernel_table_AVX512();

// The table for the CPU we run on (respects ATEN_CPU_CAPABILITY).
const KernelTable& kernel_for_this_cpu();
std::string selected_isa();

}  // namespace conv_cpu
}  // namespace pydl
