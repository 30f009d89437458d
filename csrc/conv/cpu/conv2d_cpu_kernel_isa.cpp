// conv2d CPU hot loops, compiled once per ISA (setup.py builds this file with
// CPU_CAPABILITY=DEFAULT / AVX2 / AVX512 and the matching flags; at::vec
// picks its vector width from that macro). See conv2d_cpu_kernel.h for the
// phase-packed layout that turns the convolution into shifted GEMMs.
//
// Keep this translation unit small: no at::Tensor, plain pointers only. Its
// parts live in isa/*.h, included below inside the per-ISA namespace:
//   vec_epilogue.h        activations and the fused epilogue
//   pack.h                the phase-packed input and im2col runs
//   gemm_tiles.h          dense/grouped convolution as implicit GEMM tiles
//   depthwise.h           depthwise forward paths
//   depthwise_backward.h  depthwise backward
//   direct_avx512.h       dense convolution as a register-blocked direct kernel
//                         (AVX512 build only)
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include "common/blas.h"
#include "common/cpu_isa.h"
#include "common/workspace.h"
#include "conv/cpu/conv2d_cpu_kernel.h"

#ifndef CPU_CAPABILITY
#error "conv2d_cpu_kernel_isa.cpp is compiled through setup.py's per-ISA wrappers"
#endif

namespace pydl {
namespace conv_cpu {
namespace CPU_CAPABILITY {
namespace {

template <typename T>
using Vec = at::vec::Vectorized<T>;

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

#include "conv/cpu/isa/vec_epilogue.h"

#include "conv/cpu/isa/pack.h"

#include "conv/cpu/isa/gemm_tiles.h"

#include "conv/cpu/isa/depthwise.h"

#if defined(CPU_CAPABILITY_AVX512)
#include "conv/cpu/isa/direct_avx512.h"
constexpr bool kHasDirect = true;
#else
constexpr bool kHasDirect = false;
#endif

template <typename scalar_t, typename acc_t>
void forward_typed(const ForwardArgs& a) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (a.depthwise_direct) return depthwise_direct<acc_t>(a);
    if (a.depthwise_planes) return depthwise_planes<acc_t>(a);
  }
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<acc_t, float>) {
    if (a.direct) return direct_tiles<scalar_t>(a);
  }
#endif
  TORCH_CHECK(!a.direct, "pydl.conv2d (CPU): no direct kernel in this build");
  if (!a.input_is_packed && !a.input_planes) pack_input<scalar_t, acc_t>(a);
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

#include "conv/cpu/isa/depthwise_backward.h"

}  // namespace
}  // namespace CPU_CAPABILITY

KernelTable PYDL_ISA_TABLE_FN() {
  return {&CPU_CAPABILITY::forward, &CPU_CAPABILITY::depthwise_backward,
          CPU_CAPABILITY::kHasDirect, C10_STRINGIZE(CPU_CAPABILITY)};
}

}  // namespace conv_cpu
}  // namespace pydl
