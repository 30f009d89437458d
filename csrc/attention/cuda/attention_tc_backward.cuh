// FlashAttention-2-style backward on tensor cores for fp16 / bf16, head dims
// bucketed to 64 / 128 / 256. At 256 the dK + dV (or dQ) accumulators of 16
// rows would not fit one warp's registers, so the CTA has 8 warps and the two
// warps of each 16-row group split the accumulator columns; both compute the
// group's score tile (the QK^T and dO V^T products twice, the price of no
// shared-memory round trip). Probabilities are
// recomputed from the saved lse; delta = rowsum(dO * O) - grad_lse comes in.
// Deterministic by default: every output element has exactly one writer, no
// atomics. (The opt-in atomic dQ, PYDL_ATTENTION_TC_DQ_ATOMIC=1, replaces the
// dQ kernel: the dK / dV kernel also writes each query tile's dS, keys-major,
// to shared memory and adds dQ += dS K into a float buffer with atomics,
// FlashAttention-2's scheme; dq_from_accum_kernel scales and converts it.)
//
// dK / dV kernel: CTA = (n, hk, 64 keys), 4 row groups of one 16-key m-tile
//   (128 keys, two m-tiles, at head dim 64 with PYDL_ATTENTION_TC_MTILES=2;
//   BackwardTraits). It walks the query tiles (32 rows)
//   of every query head of its GQA group; Q / dO tiles stream through shared
//   memory, double-buffered with cp.async. A warp computes its m-tiles'
//   16 x 32 slices of the TRANSPOSED scores, so P^T and dS^T come
//   out as accumulators that are re-packed directly as A fragments:
//     S^T  = K Q^T          dP^T = V dO^T
//     P^T  = exp(S^T * scale + mask - lse)   (dropout: P_used^T = P^T * z)
//     dS^T = P^T * (dP^T * z - delta)        (written to the mask-grad buffer if asked)
//     dV  += P_used^T dO    dK  += dS^T Q    (dK scaled at the end)
// dQ kernel: CTA = (n, h, 64 query rows), 4 row groups of one 16-row m-tile
//   (128 rows, two m-tiles, at head dims 64 / 128 with
//   PYDL_ATTENTION_TC_MTILES=2), walks the key tiles (64 keys; 32 with two
//   m-tiles or at head dim 256) up to the causal limit, K / V
//   double-buffered:
//     S = Q K^T, dP = dO V^T, dS = P * (dP * z - delta), dQ += dS K.
#pragma once

#include <c10/cuda/CUDAException.h>

#include "attention/cuda/attention_kernels.h"
#include "attention/cuda/attention_launch.h"
#include "attention/cuda/attention_math.cuh"
#include "attention/cuda/attention_tc_forward.cuh"
#include "attention/cuda/attention_tc_mma.cuh"
#include "attention/cuda/attention_tc_ptx.cuh"
#include "attention/dropout_philox.h"
#include "common/cuda_launch.cuh"
#include "common/cuda_storage.cuh"

namespace pydl {
namespace attention_cuda {
namespace tc {

// kMTiles_: 16-row m-tiles per warp. Two are possible where the accumulators
// fit (as in the forward, each B fragment read from shared memory then feeds
// both): the dQ kernel at head dims up to 128 (with 32-key tiles to keep the
// S and dP accumulators in registers), the dK / dV kernel at head dim 64
// (its dK + dV accumulators of 32 keys x 128 columns would not fit at 128).
// The default is one: only kernels with one m-tile per warp take the
// whole-tile softmax (attention_tc_forward.cuh; the dK / dV kernel has one at
// head dims 128 / 256 even with PYDL_ATTENTION_TC_MTILES=2), and with it one
// m-tile ran forward + backward 1.15-1.19x faster than two at head dim 128
// (H200, bf16, 2026-11-28, two runs, full, L 4096, scripts/attention_tc_ab.py).
// Without it the two were within 1% at 128, and one 1.3x faster at 64
// (2026-11-27).
// PYDL_ATTENTION_TC_MTILES=1 / 2 forces one / two (the A/B switch).
template <int kHeadDim_, int kMTiles_ = 1>
struct BackwardTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kDqMTiles = kMTiles_;
  static constexpr int kDkdvMTiles = kHeadDim == 64 ? kMTiles_ : 1;
  static constexpr int kSplit = kHeadDim > 128 ? 2 : 1;  // warps per 16-row group
  static constexpr int kAccCols = kHeadDim / kSplit;     // accumulator columns per warp
  static constexpr int kGroups = 4;                      // row groups per CTA
  static constexpr int kWarps = kGroups * kSplit;
  static constexpr int kThreads = 32 * kWarps;
  // CTAs per SM the registers must allow: 3 (<= 168 registers) at head dim 64
  // with one m-tile, where both kernels took 167-168 on their own until the
  // whole-tile loops lost their dropout branches (then the dQ kernel took
  // 232, 2 CTAs; capped, it keeps one reload per key tile on sm_90). Not the
  // atomic dQ's dK / dV kernel: capped, it spilled inside its score loop
  // (225-233 registers uncapped: 2 CTAs, as with its 174 before). (On an
  // A100 three dQ CTAs would not fit its shared memory anyway: 3 x 55 KB.)
  static constexpr int kMinBlocks = (kHeadDim == 64 && kMTiles_ == 1) ? 3 : 1;
  static constexpr int kPitch = kHeadDim + 8;
  // dK / dV kernel: 16 x kDkdvMTiles keys per row group, query tiles of 32 rows.
  static constexpr int kKeys = 16 * kDkdvMTiles * kGroups;
  static constexpr int kQueryTile = 32;
  // K, V, 2 x (Q, dO), then 2 x (lse, delta) of the query tile's rows in float.
  static constexpr int kDkdvSmemBytes =
      (2 * kKeys + 4 * kQueryTile) * kPitch * 2 + 4 * kQueryTile * 4;
  // With the atomic dQ (BackwardArgs::dq_accum): shared memory for dS of a
  // query tile, keys-major; each warp computes kDqColsPerWarp of its dQ columns.
  static constexpr int kDsPitch = kQueryTile + 8;
  static constexpr int kDkdvAtomicSmemBytes = kDkdvSmemBytes + kKeys * kDsPitch * 2;
  static constexpr int kDqColsPerWarp = kHeadDim / kWarps;
  // dQ kernel: 16 x kDqMTiles query rows per row group, key tiles of 64 (32
  // with two m-tiles, and at head dim 256: smem).
  static constexpr int kRows = 16 * kDqMTiles * kGroups;
  static constexpr int kKeyTile = (kHeadDim > 128 || kDqMTiles == 2) ? 32 : 64;
  static constexpr int kDqSmemBytes = (2 * kRows + 4 * kKeyTile) * kPitch * 2;  // Q, dO, 2 x (K, V)
};

template <int kN>
__device__ __forceinline__ void zero_acc(float (*c)[4]) {
#pragma unroll
  for (int i = 0; i < kN; ++i) c[i][0] = c[i][1] = c[i][2] = c[i][3] = 0.f;
}

// Whether weight (head_row, col) survives dropout (one Philox call per weight).
__device__ __forceinline__ bool kept_at(const Problem& p, uint64_t seed, uint64_t head_row,
                                        int col) {
  uint32_t words[4];
  attention_dropout::keep_words(words, seed, head_row, static_cast<uint64_t>(col) >> 2);
  return attention_dropout::is_kept(words, static_cast<uint64_t>(col), p.keep_threshold);
}

// Dropout of one weight in the dK / dV pass: dp scaled by 1 / (1 - p) and
// the weight kept in `used`, or both zeroed.
__device__ __forceinline__ void drop_weight(const Problem& p, uint64_t seed, uint64_t head_row,
                                            int col, float keep_scale, float& dp, float& used) {
  const bool kept = kept_at(p, seed, head_row, col);
  dp = kept ? dp * keep_scale : 0.f;
  used = kept ? used : 0.f;
}

// Whole-tile mode (BackwardArgs::whole_tiles, as the forward's: see
// kLazyRescale): a tile no score of which is hidden, masked or recorded
// (grad_scores) recomputes P = 2^(s * scale * log2 e - lse * log2 e) by one
// FFMA and one ex2.approx, without the per-score visibility tests. A query
// row past L (or one that saw no key) has lse = -inf: its base is +inf, so
// its weights come out 0, as the general path's.
__device__ __forceinline__ float whole_tile_base(float row_lse) {
  return row_lse == -INFINITY ? INFINITY : row_lse * kLog2e;
}

// Writes rows x kD accumulators (this lane's fragment rows r0 + g, r0 + g + 8)
// times `factor` to out (row-major, `cols` valid columns, `rows` valid rows).
template <typename T, int kD>
__device__ __forceinline__ void store_acc(const float (*acc)[4], T* out, int64_t row_stride,
                                          int r0, int rows, int cols, float factor, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int r = r0 + g + 8 * rr;
    if (r >= rows) continue;
#pragma unroll
    for (int nt = 0; nt < kD / 8; ++nt) {
      const int col = nt * 8 + 2 * t;
      if (col < cols) {
        *reinterpret_cast<uint32_t*>(out + r * row_stride + col) =
            pack2<T>(acc[nt][2 * rr] * factor, acc[nt][2 * rr + 1] * factor);
      }
    }
  }
}

// ----------------------------------------------------------------------------- dK / dV

// kAtomicDq: also dQ += dS K per query tile into a.dq_accum (float atomics;
// see tc_dq_atomic_requested), one m-tile per warp only.
template <typename T, typename Tr, bool kAtomicDq = false>
__global__ void __launch_bounds__(Tr::kThreads, kAtomicDq ? 1 : Tr::kMinBlocks)
    dkdv_kernel(BackwardArgs a) {
  constexpr int kD = Tr::kHeadDim, kPitch = Tr::kPitch, kKeys = Tr::kKeys, kQT = Tr::kQueryTile;
  constexpr int kAcc = Tr::kAccCols, kMT = Tr::kDkdvMTiles;
  static_assert(!kAtomicDq || kMT == 1, "the atomic dQ takes one m-tile per warp");
  const Problem& p = a.p;
  PYDL_DYNAMIC_SMEM(unsigned char, smem_raw);
  T* Ks = reinterpret_cast<T*>(smem_raw);
  T* Vs = Ks + kKeys * kPitch;
  T* Qs = Vs + kKeys * kPitch;  // [2][kQT][kPitch]
  T* dOs = Qs + 2 * kQT * kPitch;
  // [2][lse, delta][kQT]: the tile's row statistics, staged (see load_stat).
  float* stats = reinterpret_cast<float*>(dOs + 2 * kQT * kPitch);
  T* dSs = reinterpret_cast<T*>(stats + 4 * kQT);  // [kKeys][kDsPitch], kAtomicDq only

  const int nhk = blockIdx.x, n = nhk / p.heads_kv, hk = nhk % p.heads_kv;
  const int j0 = blockIdx.y * kKeys, keys_here = min(kKeys, p.len_kv - j0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  // Row group rg (its keys) and which accumulator columns [half * kAcc, + kAcc) this warp owns.
  const int rg = warp / Tr::kSplit, half = warp % Tr::kSplit;
  const float scale = static_cast<float>(p.scale), keep_scale = static_cast<float>(p.keep_scale);
  const uint64_t seed = p.dropout ? static_cast<uint64_t>(*p.seed) : 0;
  const float* lse = static_cast<const float*>(a.lse);
  const float* delta = static_cast<const float*>(a.delta);
  float* grad_scores = static_cast<float*>(a.grad_scores);
  // Row group rg's m-tile mt: keys (rg * kMT + mt) * 16 .. + 16 of the CTA's;
  // this lane holds fragment rows g and g + 8 of each.
  const int r0 = rg * kMT * 16;

  load_tile_async<Tr>(Ks, static_cast<const T*>(p.k) + n * p.sk.n + hk * p.sk.h +
                                             j0 * p.sk.row,
                                     p.sk.row, kKeys, keys_here, p.dim_qk);
  load_tile_async<Tr>(Vs, static_cast<const T*>(p.v) + n * p.sv.n + hk * p.sv.h +
                                             j0 * p.sv.row,
                                     p.sv.row, kKeys, keys_here, p.dim_v);
  // Query tiles: (head of the group, tile) flattened; causal rows before
  // j0 - offset see none of these keys.
  const int i_first = p.causal ? max(0, j0 - p.causal_offset) : 0;
  const int first_tile = i_first / kQT;
  const int tiles_per_head = max(0, (p.len_q + kQT - 1) / kQT - first_tile);
  const int n_tiles = tiles_per_head * p.group;
  // Query tile `tile`'s head, first row and (n, head) row index.
  struct QueryTile {
    int h, i0;
    int64_t nh;
  };
  auto query_tile = [&](int tile) {
    const int h = hk * p.group + tile / tiles_per_head;
    return QueryTile{h, (first_tile + tile % tiles_per_head) * kQT,
                     static_cast<int64_t>(n) * p.heads_q + h};
  };
  auto load_q_tile = [&](int tile, int buf) {
    const QueryTile q_tile = query_tile(tile);
    const int h = q_tile.h, i0 = q_tile.i0;
    const int64_t nh = q_tile.nh;
    load_tile_async<Tr>(
        Qs + buf * kQT * kPitch,
        static_cast<const T*>(p.q) + n * p.sq.n + h * p.sq.h + i0 * p.sq.row, p.sq.row, kQT,
        min(kQT, p.len_q - i0), p.dim_qk);
    load_tile_async<Tr>(
        dOs + buf * kQT * kPitch,
        static_cast<const T*>(a.grad_out) + (nh * p.len_q + i0) * p.dim_v, p.dim_v, kQT,
        min(kQT, p.len_q - i0), p.dim_v);
  };
  // The lse and delta of a tile's rows (-inf and 0 past L): thread x < kQT
  // reads row x's lse, kQT <= x < 2 kQT row x - kQT's delta. Read from global
  // memory inside the score loop, these loads' latency stalled every tile;
  // now each is issued a tile ahead (into a register, stored to shared memory
  // at the tile's end, before the barrier that publishes it).
  auto load_stat = [&](int tile) {
    const QueryTile q_tile = query_tile(tile);
    const int h = q_tile.h, i0 = q_tile.i0;
    const int64_t nh = q_tile.nh;
    const int r = threadIdx.x % kQT, qi = i0 + r;
    if (threadIdx.x < kQT) return qi < p.len_q ? lse[nh * p.len_q + qi] : neg_inf<float>();
    return qi < p.len_q ? delta[nh * p.len_q + qi] : 0.f;
  };
  const bool stages_stats = threadIdx.x < 2 * kQT;
  if (n_tiles > 0) {
    load_q_tile(0, 0);
    if (stages_stats) stats[threadIdx.x] = load_stat(0);
  }
  cp_async_commit();

  float dk[kMT][kAcc / 8][4], dv[kMT][kAcc / 8][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    zero_acc<kAcc / 8>(dk[mt]);
    zero_acc<kAcc / 8>(dv[mt]);
  }
  for (int tile = 0; tile < n_tiles; ++tile) {
    const int buf = tile & 1;
    const float next_stat = stages_stats && tile + 1 < n_tiles ? load_stat(tile + 1) : 0.f;
    if (tile + 1 < n_tiles) {
      load_q_tile(tile + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const QueryTile q_tile = query_tile(tile);
    const int h = q_tile.h, i0 = q_tile.i0;
    const int64_t nh = q_tile.nh;
    const T* Qb = Qs + buf * kQT * kPitch;
    const T* dOb = dOs + buf * kQT * kPitch;
    const T* mhead = p.mask ? static_cast<const T*>(p.mask) + n * p.smask.n + h * p.smask.h
                            : nullptr;

    float st[kMT][kQT / 8][4], dpt[kMT][kQT / 8][4];  // S^T, dP^T: 16 keys x 32 queries each
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      zero_acc<kQT / 8>(st[mt]);
      zero_acc<kQT / 8>(dpt[mt]);
    }
    mma_abt<T, kD, kQT / 8, kPitch, kMT>(st, Ks + r0 * kPitch, Qb, lane);
    mma_abt<T, kD, kQT / 8, kPitch, kMT>(dpt, Vs + r0 * kPitch, dOb, lane);
    // Whole-tile mode: every query of the tile sees every key of the CTA
    // (query rows past L only read lse = -inf). One m-tile per warp only: at
    // two (255 registers) its second copy of the score loop spilled (16 bytes
    // at head dim 64, sm_90).
    const bool whole = kMT == 1 && a.whole_tiles && mhead == nullptr && grad_scores == nullptr &&
                       sees_whole_key_tile(p, i0, j0, kKeys);
    const float* tile_lse = stats + buf * 2 * kQT;  // this lane's query column c: [c]
    const float* tile_delta = tile_lse + kQT;
    if (whole) {
      // Dropout's test hoisted out of the score loop (a compile-time flag
      // inside): with it inside, its Philox code and the address math the
      // compiler hoisted above its branches doubled the loop's instructions
      // (sm_90 SASS; the dK / dV kernel issued 6.9 instructions per mma,
      // FlashAttention-2's backward 3.2: ncu, H200, 2026-11-28).
      const float scale_log2 = scale * kLog2e;
      auto whole_tile = [&](auto with_dropout) {
#pragma unroll
        for (int nt = 0; nt < kQT / 8; ++nt) {
#pragma unroll
          for (int qc = 0; qc < 2; ++qc) {  // this lane's query columns 2t, 2t + 1
            const int c = nt * 8 + 2 * t + qc;
            const float base = whole_tile_base(tile_lse[c]), row_delta = tile_delta[c];
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
              for (int rr = 0; rr < 2; ++rr) {
                const int e = 2 * rr + qc;
                const float prob = exp2_approx(fmaf(st[mt][nt][e], scale_log2, -base));
                float dp = dpt[mt][nt][e], used = prob;
                if constexpr (decltype(with_dropout)::value) {
                  drop_weight(p, seed, static_cast<uint64_t>(nh * p.len_q + i0 + c),
                              j0 + r0 + mt * 16 + g + 8 * rr, keep_scale, dp, used);
                }
                st[mt][nt][e] = used;                       // P_used^T
                dpt[mt][nt][e] = prob * (dp - row_delta);  // dS^T
              }
            }
          }
        }
      };
      with_static_flag(p.dropout, whole_tile);
    } else {
#pragma unroll
      for (int nt = 0; nt < kQT / 8; ++nt) {
#pragma unroll
        for (int qc = 0; qc < 2; ++qc) {  // this lane's query columns 2t, 2t + 1
          // The query row's lse and delta, read once for all of the lane's keys.
          const int qi = i0 + nt * 8 + 2 * t + qc;
          const float row_lse = tile_lse[nt * 8 + 2 * t + qc];
          const float row_delta = tile_delta[nt * 8 + 2 * t + qc];
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
            for (int rr = 0; rr < 2; ++rr) {
              const int e = 2 * rr + qc, kj = j0 + r0 + mt * 16 + g + 8 * rr;
              float prob = 0.f, ds = 0.f;
              if (sees_key(p, qi, kj) && row_lse != neg_inf<float>()) {
                float x = st[mt][nt][e] * scale;
                if (mhead) x += to_acc(mhead[qi * p.smask.row + kj * p.smask.col]);
                prob = exp2f((x - row_lse) * kLog2e);
                float dp = dpt[mt][nt][e];
                float used = prob;
                if (p.dropout) {
                  // used stays in [0, 1] for the half-precision dV mma; dV is
                  // scaled by 1 / (1 - p) when stored.
                  drop_weight(p, seed, static_cast<uint64_t>(nh * p.len_q + qi), kj, keep_scale,
                              dp, used);
                }
                ds = prob * (dp - row_delta);
                prob = used;
                if (grad_scores && half == 0) {
                  grad_scores[(nh * p.len_q + qi) * p.len_kv + kj] = ds;
                }
              }
              st[mt][nt][e] = prob;  // P_used^T
              dpt[mt][nt][e] = ds;   // dS^T
            }
          }
        }
      }
    }
    if constexpr (kAtomicDq) {
      // dS^T to shared memory, keys-major, once per row group (both halves
      // of a split row group hold the same dS).
      if (half == 0) {
#pragma unroll
        for (int nt = 0; nt < kQT / 8; ++nt) {
#pragma unroll
          for (int rr = 0; rr < 2; ++rr) {
            *reinterpret_cast<uint32_t*>(dSs + (r0 + g + 8 * rr) * Tr::kDsPitch + nt * 8 + 2 * t) =
                pack2<T>(dpt[0][nt][2 * rr], dpt[0][nt][2 * rr + 1]);
          }
        }
      }
    }
    mma_xb<T, kAcc, kQT / 8, kPitch, kMT>(dv, st, dOb + half * kAcc, lane);
    mma_xb<T, kAcc, kQT / 8, kPitch, kMT>(dk, dpt, Qb + half * kAcc, lane);
    if constexpr (kAtomicDq) {
      __syncthreads();  // every row group's dS is in dSs
      // This warp's columns of the tile's dQ: dS (kQT queries x kKeys) K,
      // 16 queries at a time (the accumulators of both at once spilled at
      // head dim 128 beside dK and dV).
      constexpr int kCols = Tr::kDqColsPerWarp;
      const int col0 = warp * kCols;
      float* dq_rows = a.dq_accum + (nh * p.len_q + i0) * p.dim_qk + col0;
#pragma unroll
      for (int mt = 0; mt < kQT / 16; ++mt) {
        float dq[1][kCols / 8][4];
        zero_acc<kCols / 8>(dq[0]);
        mma_atb<T, kCols / 8, kKeys / 16, Tr::kDsPitch, kPitch, 1>(dq, dSs + mt * 16, Ks + col0,
                                                                   lane);
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
          const int q = mt * 16 + g + 8 * rr;
          if (i0 + q >= p.len_q) continue;
#pragma unroll
          for (int nt = 0; nt < kCols / 8; ++nt) {
            const int col = nt * 8 + 2 * t;
            if (col0 + col < p.dim_qk) {
              atomic_add_pair(dq_rows + q * p.dim_qk + col, dq[0][nt][2 * rr],
                              dq[0][nt][2 * rr + 1]);
            }
          }
        }
      }
    }
    if (stages_stats && tile + 1 < n_tiles) stats[(buf ^ 1) * 2 * kQT + threadIdx.x] = next_stat;
    __syncthreads();  // this Q / dO buffer is refilled two tiles on, dSs one tile on;
                      // the next tile's statistics are in place
  }
  cp_async_wait<0>();  // with no tile, the first group (K, V) is still in flight
  const int64_t key_row0 = static_cast<int64_t>(nhk) * p.len_kv + j0;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    if (a.grad_k) {
      store_acc<T, kAcc>(dk[mt], static_cast<T*>(a.grad_k) + key_row0 * p.dim_qk + half * kAcc,
                         p.dim_qk, r0 + mt * 16, keys_here, p.dim_qk - half * kAcc, scale, lane);
    }
    if (a.grad_v) {
      store_acc<T, kAcc>(dv[mt], static_cast<T*>(a.grad_v) + key_row0 * p.dim_v + half * kAcc,
                         p.dim_v, r0 + mt * 16, keys_here, p.dim_v - half * kAcc, keep_scale,
                         lane);
    }
  }
}

// ----------------------------------------------------------------------------- dQ

template <typename T, typename Tr>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks) dq_kernel(BackwardArgs a) {
  constexpr int kD = Tr::kHeadDim, kPitch = Tr::kPitch, kBM = Tr::kRows, kBN = Tr::kKeyTile;
  constexpr int kAcc = Tr::kAccCols, kMT = Tr::kDqMTiles;
  const Problem& p = a.p;
  PYDL_DYNAMIC_SMEM(unsigned char, smem_raw);
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* dOs = Qs + kBM * kPitch;
  T* Ks = dOs + kBM * kPitch;  // [2][kBN][kPitch]
  T* Vs = Ks + 2 * kBN * kPitch;

  const int nh = blockIdx.x, n = nh / p.heads_q, h = nh % p.heads_q, hk = h / p.group;
  const int i0 = blockIdx.y * kBM, rows_here = min(kBM, p.len_q - i0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int rg = warp / Tr::kSplit, half = warp % Tr::kSplit;  // as in dkdv_kernel
  const float scale = static_cast<float>(p.scale), keep_scale = static_cast<float>(p.keep_scale);
  const uint64_t seed = p.dropout ? static_cast<uint64_t>(*p.seed) : 0;
  const T* k = static_cast<const T*>(p.k) + n * p.sk.n + hk * p.sk.h;
  const T* v = static_cast<const T*>(p.v) + n * p.sv.n + hk * p.sv.h;
  // Row group rg's m-tile mt: rows (rg * kMT + mt) * 16 .. + 16 of the CTA's.
  const int r0 = rg * kMT * 16;
  int row[kMT][2];
  float row_lse[kMT][2], row_delta[kMT][2];
  const T* mask_row[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      row[mt][rr] = i0 + r0 + mt * 16 + g + 8 * rr;
      const bool valid = row[mt][rr] < p.len_q;
      const int64_t idx = static_cast<int64_t>(nh) * p.len_q + row[mt][rr];
      row_lse[mt][rr] = valid ? static_cast<const float*>(a.lse)[idx] : neg_inf<float>();
      row_delta[mt][rr] = valid ? static_cast<const float*>(a.delta)[idx] : 0.f;
      mask_row[mt][rr] =
          p.mask ? static_cast<const T*>(p.mask) + n * p.smask.n + h * p.smask.h +
                       static_cast<int64_t>(min(row[mt][rr], p.len_q - 1)) * p.smask.row
                 : nullptr;
    }
  }

  const int key_end = block_key_end(p, i0, rows_here);
  const int n_tiles = (key_end + kBN - 1) / kBN;
  load_tile_async<Tr>(Qs, static_cast<const T*>(p.q) + n * p.sq.n + h * p.sq.h +
                                             i0 * p.sq.row,
                                     p.sq.row, kBM, rows_here, p.dim_qk);
  load_tile_async<Tr>(
      dOs, static_cast<const T*>(a.grad_out) + (static_cast<int64_t>(nh) * p.len_q + i0) * p.dim_v,
      p.dim_v, kBM, rows_here, p.dim_v);
  auto load_kv_tile = [&](int tile, int buf) {
    const int j0 = tile * kBN;
    load_tile_async<Tr>(Ks + buf * kBN * kPitch, k + j0 * p.sk.row, p.sk.row, kBN,
                                       min(kBN, p.len_kv - j0), p.dim_qk);
    load_tile_async<Tr>(Vs + buf * kBN * kPitch, v + j0 * p.sv.row, p.sv.row, kBN,
                                       min(kBN, p.len_kv - j0), p.dim_v);
  };
  if (n_tiles > 0) load_kv_tile(0, 0);
  cp_async_commit();

  float dq[kMT][kAcc / 8][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) zero_acc<kAcc / 8>(dq[mt]);
  for (int tile = 0; tile < n_tiles; ++tile) {
    const int j0 = tile * kBN, buf = tile & 1;
    if (tile + 1 < n_tiles) {
      load_kv_tile(tile + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* Kb = Ks + buf * kBN * kPitch;
    const T* Vb = Vs + buf * kBN * kPitch;
    float s[kMT][kBN / 8][4], dp[kMT][kBN / 8][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      zero_acc<kBN / 8>(s[mt]);
      zero_acc<kBN / 8>(dp[mt]);
    }
    mma_abt<T, kD, kBN / 8, kPitch, kMT>(s, Qs + r0 * kPitch, Kb, lane);
    mma_abt<T, kD, kBN / 8, kPitch, kMT>(dp, dOs + r0 * kPitch, Vb, lane);
    // Whole-tile mode: every row of the CTA sees every key of the tile (rows
    // past L only read lse = -inf). One m-tile per warp only, as in dkdv_kernel
    // (two at head dim 128 spilled 72 bytes on sm_90).
    const bool whole =
        kMT == 1 && a.whole_tiles && p.mask == nullptr && sees_whole_key_tile(p, i0, j0, kBN);
    if (whole) {
      // Dropout's test out of the loop, as in dkdv_kernel.
      const float scale_log2 = scale * kLog2e;
      auto whole_tile = [&](auto with_dropout) {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          const float base[2] = {whole_tile_base(row_lse[mt][0]),
                                 whole_tile_base(row_lse[mt][1])};
#pragma unroll
          for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int rr = e >> 1;
              const float prob = exp2_approx(fmaf(s[mt][nt][e], scale_log2, -base[rr]));
              float d = dp[mt][nt][e];
              if constexpr (decltype(with_dropout)::value) {
                d = kept_at(p, seed, static_cast<uint64_t>(nh) * p.len_q + row[mt][rr],
                            j0 + nt * 8 + 2 * t + (e & 1))
                        ? d * keep_scale : 0.f;
              }
              s[mt][nt][e] = prob * (d - row_delta[mt][rr]);
            }
          }
        }
      };
      with_static_flag(p.dropout, whole_tile);
    } else {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int rr = e >> 1, col = j0 + nt * 8 + 2 * t + (e & 1);
            // sees_key() spelled out: through the call this kernel, at 254
            // registers, spilled 8 bytes on sm_90.
            const bool visible = row[mt][rr] < p.len_q && col < p.len_kv &&
                                 (!p.causal || col <= row[mt][rr] + p.causal_offset);
            float ds = 0.f;
            if (visible && row_lse[mt][rr] != neg_inf<float>()) {
              float x = s[mt][nt][e] * scale;
              if (mask_row[mt][rr]) x += to_acc(mask_row[mt][rr][col * p.smask.col]);
              const float prob = exp2f((x - row_lse[mt][rr]) * kLog2e);
              float d = dp[mt][nt][e];
              if (p.dropout) {
                d = kept_at(p, seed, static_cast<uint64_t>(nh) * p.len_q + row[mt][rr], col)
                        ? d * keep_scale : 0.f;
              }
              ds = prob * (d - row_delta[mt][rr]);
            }
            s[mt][nt][e] = ds;
          }
        }
      }
    }
    mma_xb<T, kAcc, kBN / 8, kPitch, kMT>(dq, s, Kb + half * kAcc, lane);
    __syncthreads();
  }
  cp_async_wait<0>();  // with no key tile, the Q / dO load is still in flight
  if (a.grad_q) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      store_acc<T, kAcc>(dq[mt], static_cast<T*>(a.grad_q) +
                                     (static_cast<int64_t>(nh) * p.len_q + i0) * p.dim_qk +
                                     half * kAcc,
                         p.dim_qk, r0 + mt * 16, rows_here, p.dim_qk - half * kAcc, scale, lane);
    }
  }
}

// dq = dq_accum * scale in T (the atomic dQ's last step).
template <typename T>
__global__ void __launch_bounds__(256)
    dq_from_accum_kernel(const float* dq_accum, T* dq, int64_t n, float scale) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * 256) {
    dq[i] = from_acc<T>(dq_accum[i] * scale);
  }
}

// The atomic dQ (BackwardArgs::dq_accum): the dK / dV kernel with it, then
// dq_from_accum_kernel; false (nothing launched) in the two-m-tile layout
// (PYDL_ATTENTION_TC_MTILES=2) or where the tiles need more shared memory than
// the card allows.
template <typename T, typename Tr>
bool try_launch_backward_atomic_dq(const BackwardArgs& a, cudaStream_t stream) {
  if constexpr (Tr::kDkdvMTiles != 1 || Tr::kDqMTiles != 1) {
    return false;
  } else {
    if (Tr::kDkdvAtomicSmemBytes > max_smem_optin()) return false;
    launch_over_rows(dkdv_kernel<T, Tr, true>, int64_t(a.p.batch) * a.p.heads_kv, a.p.len_kv,
                     Tr::kKeys, Tr::kThreads, Tr::kDkdvAtomicSmemBytes, "S", a, stream);
    const int64_t n = int64_t(a.p.batch) * a.p.heads_q * a.p.len_q * a.p.dim_qk;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 4096));
    auto kernel = dq_from_accum_kernel<T>;
    PYDL_LAUNCH_KERNEL(kernel, blocks, 256, 0, stream, static_cast<const float*>(a.dq_accum),
                       static_cast<T*>(a.grad_q), n, static_cast<float>(a.p.scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return true;
  }
}

// Launches the backward kernels with traits Tr; false (nothing launched)
// when their tiles need more shared memory than the card allows.
template <typename T, typename Tr>
bool try_launch_backward(const BackwardArgs& a, cudaStream_t stream) {
  if (a.dq_accum != nullptr && a.grad_q != nullptr &&
      try_launch_backward_atomic_dq<T, Tr>(a, stream)) {
    return true;
  }
  const int optin = max_smem_optin();
  if (Tr::kDkdvSmemBytes > optin || Tr::kDqSmemBytes > optin) return false;
  if (a.grad_k || a.grad_v || a.grad_scores) {
    launch_over_rows(dkdv_kernel<T, Tr>, int64_t(a.p.batch) * a.p.heads_kv, a.p.len_kv,
                     Tr::kKeys, Tr::kThreads, Tr::kDkdvSmemBytes, "S", a, stream);
  }
  if (a.grad_q) {
    launch_over_rows(dq_kernel<T, Tr>, int64_t(a.p.batch) * a.p.heads_q, a.p.len_q, Tr::kRows,
                     Tr::kThreads, Tr::kDqSmemBytes, "L", a, stream);
  }
  return true;
}

// The default layout (BackwardTraits above) unless PYDL_ATTENTION_TC_MTILES
// asks for the other; the CUDA-core kernels where the card's opt-in shared
// memory is short of the tiles (sm_86 / sm_89 allow 99 KB; head dims 128 and
// 256 need more).
template <typename T, int kHeadDim>
void launch_backward(const BackwardArgs& args, cudaStream_t stream) {
  BackwardArgs a = args;
  a.whole_tiles = whole_tiles_requested();
  const int requested = requested_m_tiles();
  if constexpr (kHeadDim <= 128) {
    const bool two = requested == 2 || (requested == 0 && BackwardTraits<kHeadDim>::kDqMTiles == 2);
    if (two && try_launch_backward<T, BackwardTraits<kHeadDim, 2>>(a, stream)) return;
  }
  if (try_launch_backward<T, BackwardTraits<kHeadDim, 1>>(a, stream)) return;
  simt_backward<T>(a, stream);
}

}  // namespace tc
}  // namespace attention_cuda
}  // namespace pydl
