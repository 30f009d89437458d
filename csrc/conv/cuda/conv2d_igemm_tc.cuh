// Implicit-GEMM conv2d forward on tensor cores (nvcuda::wmma), NHWC.
//
//   GEMM view, per group g:  out[m, n] = sum_k A[m, k] * B[n, k]
//     m = output pixel (n_img, oh, ow)            M = N * OH * OW
//     n = output channel within the group         N = Cout / groups
//     k = (r, s, c), c innermost                   K = KH * KW * Cin_g
//   A[m, k] = input[n_img, oh*sh - ph + r*dh, ow*sw - pw + s*dw, g*Cin_g + c]
//             (zero outside the image: padding is a bounds check, not a copy)
//   B[n, k] = weight[g*Cout_g + n, r, s, c]        (weight is [Cout, KH, KW, Cin_g])
//
// Block tile 128 x 128 x BK, 8 warps as 2 (M) x 4 (N), each warp 64 x 32 =
// 4 x 2 wmma accumulators of 16 x 16 (fp32). BK is 64 bytes of K for fp16 /
// bf16 (32 elements) and for fp32/TF32 (16 elements), so each thread moves
// exactly two 16-byte chunks of A and two of B per K step. Operand tiles are
// double-buffered in shared memory with a register prefetch: the global loads
// of step k+1 are in flight while the tensor cores work on step k.
//
// Epilogue: accumulators go through shared memory (64 rows at a time), then
// each warp writes one output row of 128 channels: + bias, + residual, the
// activation, conversion to T, and 4-wide stores when Cout_g % 4 == 0.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <mma.h>

#include "conv2d_common.cuh"

namespace pydl {
namespace conv_cuda {

namespace tc {

template <typename T>
struct FragType;
template <>
struct FragType<__half> {
  using type = __half;
  static constexpr int kFK = 16;
};
template <>
struct FragType<__nv_bfloat16> {
  using type = __nv_bfloat16;
  static constexpr int kFK = 16;
};
template <>
struct FragType<float> {
  using type = nvcuda::wmma::precision::tf32;
  static constexpr int kFK = 8;
};

constexpr int kBM = 128;
constexpr int kBN = 128;
constexpr int kThreads = 256;
constexpr int kStageLd = kBN + 4;  // fp32 staging row stride for the epilogue

template <typename T>
struct Tile {
  static constexpr int kVE = 16 / sizeof(T);        // elements per 16-byte chunk
  static constexpr int kBK = 4 * kVE;               // K per step (64 bytes)
  static constexpr int kLd = kBK + kVE;             // padded smem row (80 bytes)
  static constexpr int kOperandBytes = 2 * (kBM + kBN) * kLd * sizeof(T);
  static constexpr int kStageBytes = (kBM / 2) * kStageLd * sizeof(float);
  static constexpr int kSmemBytes = kOperandBytes > kStageBytes ? kOperandBytes : kStageBytes;
};

template <typename T>
struct alignas(16) Chunk {
  T v[16 / sizeof(T)];
};

template <typename T>
struct alignas(4 * sizeof(T)) Quad {
  T v[4];
};

template <typename T>
__device__ __forceinline__ void zero_chunk(Chunk<T>& c) {
  *reinterpret_cast<uint4*>(&c) = make_uint4(0u, 0u, 0u, 0u);
}

}  // namespace tc

template <typename T, bool kVec>
__global__ void __launch_bounds__(tc::kThreads)
    conv2d_igemm_tc_kernel(const ConvParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // bf16 / tf32 wmma need sm_80; the host never launches this there.
#else
  using namespace nvcuda;
  using tc::kBM;
  using tc::kBN;
  using FT = typename tc::FragType<T>::type;
  constexpr int kFK = tc::FragType<T>::kFK;
  constexpr int kVE = tc::Tile<T>::kVE;
  constexpr int kBK = tc::Tile<T>::kBK;
  constexpr int kLd = tc::Tile<T>::kLd;

  __shared__ __align__(128) unsigned char smem[tc::Tile<T>::kSmemBytes];
  T* const sA = reinterpret_cast<T*>(smem);     // [2][kBM][kLd]
  T* const sB = sA + 2 * kBM * kLd;             // [2][kBN][kLd]

  const T* __restrict__ in = static_cast<const T*>(p.input);
  const T* __restrict__ wt = static_cast<const T*>(p.weight);

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int warp_m = warp >> 2;  // 0..1
  const int warp_n = warp & 3;   // 0..3
  const int g = blockIdx.z;
  const int64_t m_block = static_cast<int64_t>(blockIdx.x) * kBM;
  const int n_block = blockIdx.y * kBN;
  const int K = static_cast<int>(p.K);

  // Each thread loads rows (tid / 4) and (tid / 4 + 64) of both operand
  // tiles, 16 bytes at K offset (tid % 4) * kVE.
  const int ld_row = tid >> 2;
  const int ld_k = (tid & 3) * kVE;

  int64_t a_base[2];
  int a_ih0[2], a_iw0[2];
  int64_t b_base[2];
  bool b_ok[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const PixelWindow window = pixel_window(p, m_block + ld_row + 64 * i, g);
    a_base[i] = window.base;
    a_ih0[i] = window.ih0;
    a_iw0[i] = window.iw0;
    const int n = n_block + ld_row + 64 * i;
    b_ok[i] = n < p.cout_g;
    b_base[i] = (static_cast<int64_t>(g) * p.cout_g + (b_ok[i] ? n : 0)) * p.K;
  }

  tc::Chunk<T> ra[2], rb[2];

  auto load_tile = [&](int kt) {
    const int k = kt * kBK + ld_k;
    if (kVec) {
      // Cin_g % kVE == 0: the chunk lies in one kernel tap, and K % kVE == 0.
      const bool k_ok = k < K;
      const KernelTap tap = k_ok ? kernel_tap(p, k) : KernelTap{0, 0, 0};
      const int r = tap.r, s = tap.s, c = tap.c;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int ih = a_ih0[i] + r * p.dil_h;
        const int iw = a_iw0[i] + s * p.dil_w;
        if (k_ok && static_cast<unsigned>(ih) < static_cast<unsigned>(p.H) &&
            static_cast<unsigned>(iw) < static_cast<unsigned>(p.W)) {
          ra[i] = *reinterpret_cast<const tc::Chunk<T>*>(
              in + a_base[i] + (static_cast<int64_t>(ih) * p.W + iw) * p.C + c);
        } else {
          tc::zero_chunk(ra[i]);
        }
        if (k_ok && b_ok[i]) {
          rb[i] = *reinterpret_cast<const tc::Chunk<T>*>(wt + b_base[i] + k);
        } else {
          tc::zero_chunk(rb[i]);
        }
      }
    } else {
      // Element by element: the chunk may span kernel taps and the K tail.
      const KernelTap tap = k < K ? kernel_tap(p, k) : KernelTap{0, 0, 0};
      int r = tap.r, s = tap.s, c = tap.c;  // advanced element by element below
#pragma unroll
      for (int j = 0; j < kVE; ++j) {
        const bool k_ok = k + j < K;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int ih = a_ih0[i] + r * p.dil_h;
          const int iw = a_iw0[i] + s * p.dil_w;
          T va = from_acc<T>(0.0f);
          if (k_ok && static_cast<unsigned>(ih) < static_cast<unsigned>(p.H) &&
              static_cast<unsigned>(iw) < static_cast<unsigned>(p.W)) {
            va = in[a_base[i] + (static_cast<int64_t>(ih) * p.W + iw) * p.C + c];
          }
          ra[i].v[j] = va;
          T vb = from_acc<T>(0.0f);
          if (k_ok && b_ok[i]) vb = wt[b_base[i] + k + j];
          rb[i].v[j] = vb;
        }
        if (++c == p.cin_g) {
          c = 0;
          if (++s == p.KW) {
            s = 0;
            ++r;
          }
        }
      }
    }
  };

  auto store_tile = [&](int buf) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = ld_row + 64 * i;
      *reinterpret_cast<tc::Chunk<T>*>(sA + (buf * kBM + row) * kLd + ld_k) = ra[i];
      *reinterpret_cast<tc::Chunk<T>*>(sB + (buf * kBN + row) * kLd + ld_k) = rb[i];
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, kFK, float> acc[4][2];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  const int num_k_tiles = (K + kBK - 1) / kBK;
  load_tile(0);
  store_tile(0);
  __syncthreads();

  for (int kt = 0; kt < num_k_tiles; ++kt) {
    const int buf = kt & 1;
    const bool has_next = kt + 1 < num_k_tiles;
    if (has_next) load_tile(kt + 1);

    const T* a_tile = sA + (buf * kBM + warp_m * 64) * kLd;
    const T* b_tile = sB + (buf * kBN + warp_n * 32) * kLd;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += kFK) {
      wmma::fragment<wmma::matrix_b, 16, 16, kFK, FT, wmma::col_major> fb[2];
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::load_matrix_sync(fb[j], b_tile + j * 16 * kLd + kk, kLd);
        if constexpr (std::is_same<T, float>::value) {
#pragma unroll
          for (int t = 0; t < fb[j].num_elements; ++t) fb[j].x[t] = wmma::__float_to_tf32(fb[j].x[t]);
        }
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        wmma::fragment<wmma::matrix_a, 16, 16, kFK, FT, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, a_tile + i * 16 * kLd + kk, kLd);
        if constexpr (std::is_same<T, float>::value) {
#pragma unroll
          for (int t = 0; t < fa.num_elements; ++t) fa.x[t] = wmma::__float_to_tf32(fa.x[t]);
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa, fb[j], acc[i][j]);
      }
    }

    if (has_next) store_tile(buf ^ 1);
    __syncthreads();
  }

  // ---- epilogue (the loop ended with __syncthreads: smem is free) ----
  float* const stage = reinterpret_cast<float*>(smem);  // [64][kStageLd]
  const T* __restrict__ bias = static_cast<const T*>(p.bias);
  const T* __restrict__ res = static_cast<const T*>(p.residual);
  T* __restrict__ out = static_cast<T*>(p.output);
  const Activation act = static_cast<Activation>(p.activation);
  const int col = (tid & 31) * 4;
  const int n0 = n_block + col;
  const int co0 = g * p.cout_g + n0;
  const bool quad_store = (p.cout_g & 3) == 0;

#pragma unroll 1
  for (int half = 0; half < 2; ++half) {
    if (warp_m == half) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
          wmma::store_matrix_sync(stage + (i * 16) * tc::kStageLd + warp_n * 32 + j * 16,
                                  acc[i][j], tc::kStageLd, wmma::mem_row_major);
    }
    __syncthreads();
    if (n0 < p.cout_g) {
#pragma unroll 2
      for (int it = 0; it < 8; ++it) {
        const int row = (tid >> 5) + 8 * it;
        const int64_t m = m_block + half * 64 + row;
        if (m >= p.M) break;
        const float4 v4 = *reinterpret_cast<const float4*>(stage + row * tc::kStageLd + col);
        const float v[4] = {v4.x, v4.y, v4.z, v4.w};
        const int64_t o = m * p.Cout + co0;
        if (quad_store) {
          tc::Quad<T> q;
#pragma unroll
          for (int j = 0; j < 4; ++j)
            q.v[j] = from_acc<T>(epilogue<T, float>(v[j], bias, res, co0 + j, o + j, act));
          *reinterpret_cast<tc::Quad<T>*>(out + o) = q;
        } else {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            if (n0 + j < p.cout_g)
              out[o + j] = from_acc<T>(epilogue<T, float>(v[j], bias, res, co0 + j, o + j, act));
          }
        }
      }
    }
    __syncthreads();
  }
#endif
}

template <typename T>
void launch_igemm_tc(const ConvParams& p, bool vec, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(ceil_div(p.M, tc::kBM)),
                  static_cast<unsigned>(ceil_div(p.cout_g, tc::kBN)),
                  static_cast<unsigned>(p.groups));
  if (vec) {
    conv2d_igemm_tc_kernel<T, true><<<grid, tc::kThreads, 0, stream>>>(p);
  } else {
    conv2d_igemm_tc_kernel<T, false><<<grid, tc::kThreads, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace conv_cuda
}  // namespace pydl
