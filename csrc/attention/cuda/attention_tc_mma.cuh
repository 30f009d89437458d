// The two warp-level tile products of the tensor-core attention kernels
// (forward and backward), on m16n8k16 mma with fragments from shared memory;
// each takes kMT m-tiles (16 rows each) so that every B fragment loaded
// feeds all of them.
#pragma once

#include <cstdint>

#include "attention/cuda/attention_tc_ptx.cuh"

namespace pydl {
namespace attention_cuda {
namespace tc {

// c[mt][nt] += A_mt x B^T, A_mt
// the 16 rows at a_rows + 16 mt rows (kMT m-tiles: each B fragment feeds
// them all), B stored row-major [n][k] (rows b_rows .. + 8 * kNTiles), the
// k extent kD: the "Q K^T" product shape.
template <typename T, int kD, int kNTiles, int kPitch, int kMT = 1>
__device__ __forceinline__ void mma_abt(float (*c)[kNTiles][4], const T* a_rows, const T* b_rows,
                                        int lane) {
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    uint32_t a[kMT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      ldmatrix_x4(a[mt], a_rows + (mt * 16 + (lane & 15)) * kPitch + kk * 16 + (lane >> 4) * 8);
    }
#pragma unroll
    for (int nt = 0; nt < kNTiles; nt += 2) {
      uint32_t b[4];
      ldmatrix_x4(b, b_rows + (nt * 8 + (lane & 7) + ((lane >> 4) << 3)) * kPitch + kk * 16 +
                         ((lane >> 3) & 1) * 8);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        mma_16816<T>(c[mt][nt], a[mt], b[0], b[1]);
        mma_16816<T>(c[mt][nt + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// acc[mt] += X_mt B where X_mt (16 x 8 * kXTiles) sits in accumulator layout
// in x[mt] (re-packed as A fragments) and B is stored row-major [k][n] at b
// (k rows 0 .. 8 * kXTiles, n extent kD): the "P V" product shape; each B
// fragment feeds the kMT m-tiles.
template <typename T, int kD, int kXTiles, int kPitch, int kMT = 1>
__device__ __forceinline__ void mma_xb(float (*acc)[kD / 8][4], const float (*x)[kXTiles][4],
                                       const T* b, int lane) {
#pragma unroll
  for (int kk = 0; kk < kXTiles / 2; ++kk) {
    uint32_t a[kMT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      a[mt][0] = pack2<T>(x[mt][2 * kk][0], x[mt][2 * kk][1]);
      a[mt][1] = pack2<T>(x[mt][2 * kk][2], x[mt][2 * kk][3]);
      a[mt][2] = pack2<T>(x[mt][2 * kk + 1][0], x[mt][2 * kk + 1][1]);
      a[mt][3] = pack2<T>(x[mt][2 * kk + 1][2], x[mt][2 * kk + 1][3]);
    }
#pragma unroll
    for (int nt = 0; nt < kD / 8; nt += 2) {
      uint32_t bb[4];
      ldmatrix_x4_trans(bb, b + (kk * 16 + (lane & 15)) * kPitch + nt * 8 + (lane >> 4) * 8);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        mma_16816<T>(acc[mt][nt], a[mt], bb[0], bb[1]);
        mma_16816<T>(acc[mt][nt + 1], a[mt], bb[2], bb[3]);
      }
    }
  }
}

// c[mt][nt] += A_mt B where A is stored transposed, row-major [k][m] at a_t
// (k rows 0 .. 16 * kKSteps, m-tile mt the columns 16 mt .. + 16), and B
// row-major [k][n] at b (n extent 8 * kNTiles): the "dS K" product of the dK /
// dV kernel, whose dS sits in shared memory keys-major. ldmatrix.trans turns
// each 8 x 8 block of A^T into the A fragment (thread (g, t) gets A[g][2t],
// A[g][2t + 1]).
template <typename T, int kNTiles, int kKSteps, int kPitchA, int kPitchB, int kMT>
__device__ __forceinline__ void mma_atb(float (*c)[kNTiles][4], const T* a_t, const T* b,
                                        int lane) {
#pragma unroll
  for (int kk = 0; kk < kKSteps; ++kk) {
    uint32_t a[kMT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      // matrices a0..a3: (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15)
      ldmatrix_x4_trans(a[mt], a_t + (kk * 16 + ((lane >> 4) << 3) + (lane & 7)) * kPitchA +
                                   mt * 16 + ((lane >> 3) & 1) * 8);
    }
#pragma unroll
    for (int nt = 0; nt < kNTiles; nt += 2) {
      uint32_t bb[4];
      ldmatrix_x4_trans(bb, b + (kk * 16 + (lane & 15)) * kPitchB + nt * 8 + (lane >> 4) * 8);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        mma_16816<T>(c[mt][nt], a[mt], bb[0], bb[1]);
        mma_16816<T>(c[mt][nt + 1], a[mt], bb[2], bb[3]);
      }
    }
  }
}

}  // namespace tc
}  // namespace attention_cuda
}  // namespace pydl
