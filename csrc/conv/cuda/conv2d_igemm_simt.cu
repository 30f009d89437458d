// Implicit-GEMM conv2d forward on CUDA cores with exact arithmetic: fp32
// when TF32 is disabled, and fp64 (the accuracy path). Same GEMM view as
// conv2d_igemm_tc.cuh (M = output pixels, N = Cout_g, K = KH*KW*Cin_g with
// Cin innermost), simpler tiling: 64 x 64 x 16 per block of 256 threads,
// each thread a 4 x 4 register tile; operands double-buffered in shared
// memory (k-major, so the inner product reads are broadcasts / conflict
// free) with a register prefetch of the next K step.
#include <c10/cuda/CUDAException.h>

#include "conv2d_common.cuh"

namespace pydl {
namespace conv_cuda {

namespace {

constexpr int kBM = 64;
constexpr int kBN = 64;
constexpr int kBK = 16;
constexpr int kThreads = 256;
constexpr int kPad = 4;

template <typename T>
__global__ void __launch_bounds__(kThreads) conv2d_igemm_simt_kernel(const ConvParams p) {
  __shared__ T sA[2][kBK][kBM + kPad];
  __shared__ T sB[2][kBK][kBN + kPad];

  const T* __restrict__ in = static_cast<const T*>(p.input);
  const T* __restrict__ wt = static_cast<const T*>(p.weight);
  const int tid = threadIdx.x;
  const int g = blockIdx.z;
  const int64_t m_block = static_cast<int64_t>(blockIdx.x) * kBM;
  const int n_block = blockIdx.y * kBN;
  const int K = static_cast<int>(p.K);

  // Loader: thread loads K column (tid % 16) of rows tid / 16 + 16 * i.
  const int ld_k = tid & 15;
  const int ld_row = tid >> 4;
  int64_t a_base[4];
  int a_ih0[4], a_iw0[4];
  int64_t b_base[4];
  bool b_ok[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const PixelWindow window = pixel_window(p, m_block + ld_row + 16 * i, g);
    a_base[i] = window.base;
    a_ih0[i] = window.ih0;
    a_iw0[i] = window.iw0;
    const int n = n_block + ld_row + 16 * i;
    b_ok[i] = n < p.cout_g;
    b_base[i] = (static_cast<int64_t>(g) * p.cout_g + (b_ok[i] ? n : 0)) * p.K;
  }

  T ra[4], rb[4];
  auto load_tile = [&](int kt) {
    const int k = kt * kBK + ld_k;
    const bool k_ok = k < K;
    const KernelTap tap = k_ok ? kernel_tap(p, k) : KernelTap{0, 0, 0};
    const int r = tap.r, s = tap.s, c = tap.c;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int ih = a_ih0[i] + r * p.dil_h;
      const int iw = a_iw0[i] + s * p.dil_w;
      ra[i] = (k_ok && static_cast<unsigned>(ih) < static_cast<unsigned>(p.H) &&
               static_cast<unsigned>(iw) < static_cast<unsigned>(p.W))
                  ? in[a_base[i] + (static_cast<int64_t>(ih) * p.W + iw) * p.C + c]
                  : T(0);
      rb[i] = (k_ok && b_ok[i]) ? wt[b_base[i] + k] : T(0);
    }
  };
  auto store_tile = [&](int buf) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      sA[buf][ld_k][ld_row + 16 * i] = ra[i];
      sB[buf][ld_k][ld_row + 16 * i] = rb[i];
    }
  };

  // Compute: thread owns rows tm + 16 i and columns tn + 16 j.
  const int tn = tid & 15;
  const int tm = tid >> 4;
  T acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = T(0);

  const int num_k_tiles = (K + kBK - 1) / kBK;
  load_tile(0);
  store_tile(0);
  __syncthreads();
  for (int kt = 0; kt < num_k_tiles; ++kt) {
    const int buf = kt & 1;
    const bool has_next = kt + 1 < num_k_tiles;
    if (has_next) load_tile(kt + 1);
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      T a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = sA[buf][kk][tm + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = sB[buf][kk][tn + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
    if (has_next) store_tile(buf ^ 1);
    __syncthreads();
  }

  const T* __restrict__ bias = static_cast<const T*>(p.bias);
  const T* __restrict__ res = static_cast<const T*>(p.residual);
  T* __restrict__ out = static_cast<T*>(p.output);
  const Activation act = static_cast<Activation>(p.activation);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m_block + tm + 16 * i;
    if (m >= p.M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int n = n_block + tn + 16 * j;
      if (n >= p.cout_g) continue;
      const int co = g * p.cout_g + n;
      const int64_t o = m * p.Cout + co;
      out[o] = epilogue<T, T>(acc[i][j], bias, res, co, o, act);
    }
  }
}

}  // namespace

void launch_igemm_simt(const ConvParams& p, DType dtype, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(ceil_div(p.M, kBM)),
                  static_cast<unsigned>(ceil_div(p.cout_g, kBN)),
                  static_cast<unsigned>(p.groups));
  if (dtype == DType::Double) {
    conv2d_igemm_simt_kernel<double><<<grid, kThreads, 0, stream>>>(p);
  } else {
    conv2d_igemm_simt_kernel<float><<<grid, kThreads, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace conv_cuda
}  // namespace pydl
