// FlashAttention-2-style forward on tensor cores for fp16 / bf16 (float
// accumulators, float lse).
//
// CTA = (n, h, 128 query rows at head dim 128; 64 at 64 and 256; see
// ForwardTraits), 4 warps, each warp owning 32 (16) query rows, two (one)
// m16 tiles, for the whole pass (no inter-warp reductions). The CTA walks the key tiles of
// kBlockN keys up to the causal limit; K/V tiles stream through shared memory
// with cp.async, double-buffered (tile t+1 loads while tile t computes). Per tile:
//   S = Q K^T        mma m16n8k16, Q and K fragments by ldmatrix from smem
//   scale, mask, causal / bounds predicates, online softmax (row max and sum
//   over the 4 lanes that share a fragment row), dropout after the row sum
//   O += P V         P re-packed from the S accumulators as A fragments in
//                    registers, V fragments by ldmatrix.trans
// Head dims are bucketed (kHeadDim = 64 / 128 / 256 >= max(E, Ev)); the
// columns past E (Q, K) and Ev (V) are zero-filled by the loads, so they add
// nothing. Requires E, Ev multiples of 8, unit last-dim strides, other strides
// multiples of 8 and 16-byte aligned bases (the host makes that so or uses
// the CUDA-core kernel). Smem rows are padded by 16 bytes: the 8 rows an
// ldmatrix reads then fall on 8 different 16-byte bank groups.
#pragma once

#include <c10/cuda/CUDAException.h>

#include <cstdlib>
#include <cstring>

#include "attention/cuda/attention_kernels.h"
#include "attention/cuda/attention_launch.h"
#include "attention/cuda/attention_math.cuh"
#include "attention/cuda/attention_tc_mma.cuh"
#include "attention/cuda/attention_tc_ptx.cuh"
#include "attention/dropout_philox.h"
#include "common/cuda_launch.cuh"
#include "common/cuda_storage.cuh"

namespace pydl {
namespace attention_cuda {
namespace tc {

constexpr float kLog2e = 1.4426950408889634f;

// Whole-tile softmax (ForwardArgs::whole_tiles; the default since it was timed
// on an H200, bf16, 2026-11-28: the forward 1.65-2.42x the general path,
// forward + backward 1.3-2.0x; PYDL_ATTENTION_TC_WHOLE_TILES=0 turns it off).
// Per score the general path tests the key's
// visibility (length, causal limit, mask) and computes exp2f with its range
// handling around the SFU's ex2: about 18 instructions, next to 4 mma per
// 32 scores of a thread. Whole-tile mode, on tiles no row sees only in part,
// does a multiply, a max, one FFMA and one ex2.approx. It also rescales O
// lazily: the row's reference max m moves only when a tile's max passes it
// by kLazyRescale (2^8 in weight), so the 32-128 multiplies of O per m-tile
// and tile are skipped almost always. The sums stay exact in float: O and
// l share the stale reference, O / l is unchanged, lse = m + log l still
// holds, and P <= 2^8 loses nothing in the fp16 / bf16 PV mma (their ranges
// reach 6.5e4 and 3e38). The backward takes the same switch where its
// kernels run one m-tile per warp (their default; with
// PYDL_ATTENTION_TC_MTILES=2 only the dK / dV kernel above head dim 64 and
// the dQ kernel at 256 still do): on whole tiles they recompute P with one
// FFMA and one ex2.approx, without the visibility tests
// (attention_tc_backward.cuh).
constexpr float kLazyRescale = 8.f / kLog2e;

// kMTiles: 16-row m-tiles per warp. Two (a 128-row CTA) for head dims up to
// 128, as FlashAttention-2 does: each K / V fragment loaded from shared
// memory then feeds two mma instead of one, which cuts the ldmatrix traffic
// per mma by a third (0.56 -> 0.38 ldmatrix.x4; Q is re-read per key tile,
// and the tiles are half as wide). At one m-tile a warp moved 640 bytes per
// 8192 FLOP of QK^T, about what an H100 SM's shared memory delivers at
// mma.sync's rate. That is the default at head dim 128 only: with the
// whole-tile softmax, one m-tile ran 1.19-1.39x faster at head dim 64 and
// two 1.01-1.25x faster at 128 (H200, bf16, 2026-11-28,
// scripts/attention_tc_ab.py; without it two won at 128 and tied at 64).
// Head dim 256 keeps one (its O accumulators alone take 128 registers).
template <int kHeadDim_, int kMTiles_ = (kHeadDim_ == 128 ? 2 : 1)>
struct ForwardTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kMTiles = kMTiles_;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  // CTAs per SM the registers must allow: 3 (<= 168 registers) at head dim 64
  // with one m-tile, which took 147 registers on its own until its
  // exponential loop lost its dropout branches (then 181: 2 CTAs).
  static constexpr int kMinBlocks = (kHeadDim == 64 && kMTiles == 1) ? 3 : 1;
  static constexpr int kBlockM = 16 * kMTiles * kWarps;
  // Keys per tile: the S accumulators (kMTiles x kBlockN / 2 per thread) and
  // O's (kMTiles x kHeadDim / 2) share 255 registers (two m-tiles with 64
  // keys spilled: 48 bytes at d 64, 256 at d 128).
  static constexpr int kBlockN = (kHeadDim <= 128 && kMTiles == 1) ? 64 : 32;
  static constexpr int kPitch = kHeadDim + 8;                // elements per smem row
  static constexpr int kSmemBytes = (kBlockM + 4 * kBlockN) * kPitch * 2;  // Q, 2 x K, 2 x V
};

// rows x kHeadDim tile of src (row r at src + r * row_stride) into dst (pitch
// kPitch): 16-byte chunks, zero past valid_rows and past cols.
template <typename Tr, typename T>
__device__ __forceinline__ void load_tile_async(T* dst, const T* src, int64_t row_stride,
                                                int rows, int valid_rows, int cols) {
  constexpr int kChunks = Tr::kHeadDim / 8;
  for (int idx = threadIdx.x; idx < rows * kChunks; idx += Tr::kThreads) {
    const int r = idx / kChunks, c = idx - r * kChunks;
    const bool valid = r < valid_rows && c * 8 < cols;
    cp_async_16(dst + r * Tr::kPitch + c * 8, valid ? src + r * row_stride + c * 8 : src, valid);
  }
}

template <typename T, typename Tr>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks) forward_kernel(ForwardArgs a) {
  constexpr int kD = Tr::kHeadDim, kBM = Tr::kBlockM, kBN = Tr::kBlockN, kPitch = Tr::kPitch;
  constexpr int kMT = Tr::kMTiles;
  const Problem& p = a.p;
  PYDL_DYNAMIC_SMEM(unsigned char, smem_raw);
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* Ks = Qs + kBM * kPitch;  // [2][kBN][kPitch]
  T* Vs = Ks + 2 * kBN * kPitch;

  const int nh = blockIdx.x, n = nh / p.heads_q, h = nh % p.heads_q, hk = h / p.group;
  const int i0 = blockIdx.y * kBM, rows_here = min(kBM, p.len_q - i0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const T* q = static_cast<const T*>(p.q) + n * p.sq.n + h * p.sq.h + i0 * p.sq.row;
  const T* k = static_cast<const T*>(p.k) + n * p.sk.n + hk * p.sk.h;
  const T* v = static_cast<const T*>(p.v) + n * p.sv.n + hk * p.sv.h;
  // The warp's rows: m-tile mt covers rows (warp * kMT + mt) * 16 .. + 16 of
  // the CTA's; this thread holds two of each, g and g + 8 ([mt][rr]).
  int row[kMT][2];
  const T* mask_row[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      row[mt][rr] = i0 + (warp * kMT + mt) * 16 + g + 8 * rr;
      mask_row[mt][rr] =
          p.mask ? static_cast<const T*>(p.mask) + n * p.smask.n + h * p.smask.h +
                       static_cast<int64_t>(min(row[mt][rr], p.len_q - 1)) * p.smask.row
                 : nullptr;
    }
  }
  const float scale = static_cast<float>(p.scale), keep_scale = static_cast<float>(p.keep_scale);
  const uint64_t seed = p.dropout ? static_cast<uint64_t>(*p.seed) : 0;

  // No row of this CTA sees a key at or past key_end under the causal rule.
  const int key_end = block_key_end(p, i0, rows_here);
  const int n_tiles = (key_end + kBN - 1) / kBN;
  load_tile_async<Tr>(Qs, q, p.sq.row, kBM, rows_here, p.dim_qk);
  if (n_tiles > 0) {
    load_tile_async<Tr>(Ks, k, p.sk.row, kBN, min(kBN, p.len_kv), p.dim_qk);
    load_tile_async<Tr>(Vs, v, p.sv.row, kBN, min(kBN, p.len_kv), p.dim_v);
  }
  cp_async_commit();

  float o[kMT][kD / 8][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kD / 8; ++nt) o[mt][nt][0] = o[mt][nt][1] = o[mt][nt][2] = o[mt][nt][3] = 0.f;
  }
  float m[kMT][2], l[kMT][2];  // l: this lane's partial row sums (its columns only)
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    m[mt][0] = m[mt][1] = neg_inf<float>();
    l[mt][0] = l[mt][1] = 0.f;
  }

  for (int tile = 0; tile < n_tiles; ++tile) {
    const int j0 = tile * kBN, buf = tile & 1;
    if (tile + 1 < n_tiles) {  // prefetch the next tile into the other buffer
      const int j1 = j0 + kBN, nxt = buf ^ 1;
      load_tile_async<Tr>(Ks + nxt * kBN * kPitch, k + j1 * p.sk.row, p.sk.row, kBN,
                          min(kBN, p.len_kv - j1), p.dim_qk);
      load_tile_async<Tr>(Vs + nxt * kBN * kPitch, v + j1 * p.sv.row, p.sv.row, kBN,
                          min(kBN, p.len_kv - j1), p.dim_v);
      cp_async_commit();
      cp_async_wait<1>();  // everything but the prefetch has landed
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* Kb = Ks + buf * kBN * kPitch;
    const T* Vb = Vs + buf * kBN * kPitch;

    // Whole-tile mode: a tile every row of the CTA sees whole (no mask, all
    // its keys exist and lie within the causal limit of the CTA's first
    // row): all but the tiles on the causal diagonal or at the end of the keys.
    const bool whole = a.whole_tiles && p.mask == nullptr && sees_whole_key_tile(p, i0, j0, kBN);

    // S = Q K^T for this warp's kMT x 16 rows x kBN keys: each K fragment
    // feeds the warp's kMT m-tiles.
    float s[kMT][kBN / 8][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kBN / 8; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
    }
    mma_abt<T, kD, kBN / 8, kPitch, kMT>(s, Qs + warp * kMT * 16 * kPitch, Kb, lane);

#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      // Scale, mask, hide invisible keys; the tile's row maxima. A tile every
      // row sees whole needs only the scale.
      float tile_max[2] = {neg_inf<float>(), neg_inf<float>()};
      if (whole) {
#pragma unroll
        for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[mt][nt][e] *= scale;
            tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[mt][nt][e]);
          }
        }
      } else {
#pragma unroll
        for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int rr = e >> 1, col = j0 + nt * 8 + 2 * t + (e & 1);
            const bool visible = sees_key(p, row[mt][rr], col);
            float x = s[mt][nt][e] * scale;
            if (mask_row[mt][rr] && visible) x += to_acc(mask_row[mt][rr][col * p.smask.col]);
            s[mt][nt][e] = visible ? x : neg_inf<float>();
            tile_max[rr] = fmaxf(tile_max[rr], s[mt][nt][e]);
          }
        }
      }
      float alpha[2], ref[2];
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const float seen = quad_max(tile_max[rr]);
        // Whole-tile mode moves the reference max only when a score would
        // weigh more than 2^8 against it (see kLazyRescale).
        const float m_new = !a.whole_tiles ? fmaxf(m[mt][rr], seen)
                            : seen > m[mt][rr] + kLazyRescale ? seen
                                                               : m[mt][rr];
        // A row that has seen only hidden keys keeps m = -inf: exponentiate
        // against 0 then, so it stays zeros instead of NaN.
        ref[rr] = m_new == neg_inf<float>() ? 0.f : m_new;
        alpha[rr] = exp2f((m[mt][rr] - ref[rr]) * kLog2e);
        m[mt][rr] = m_new;
        l[mt][rr] *= alpha[rr];
      }
      const float ref_log2[2] = {ref[0] * kLog2e, ref[1] * kLog2e};
      // P = exp(S - ref), the row sums, dropout. The common case (whole-tile
      // mode, no dropout) as its own copy, its tests made at compile time:
      // with them in the loop, dropout's inline Philox code and its hoisted
      // address math sat between the exponentials (ncu, H200, 2026-11-28:
      // this kernel issued 6.9 instructions per mma, FlashAttention-2's
      // forward 4.8).
      auto exponentiate = [&](auto fast) {
        constexpr bool kFast = decltype(fast)::value;  // whole-tile mode, no dropout
#pragma unroll
        for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int rr = e >> 1;
            s[mt][nt][e] = kFast || a.whole_tiles
                               ? exp2_approx(fmaf(s[mt][nt][e], kLog2e, -ref_log2[rr]))
                               : exp2f((s[mt][nt][e] - ref[rr]) * kLog2e);
            l[mt][rr] += s[mt][nt][e];  // before dropout: the lse is dropout-free
          }
          if (!kFast && p.dropout) {
            // Columns 2t, 2t+1 of the n-tile share one Philox group (col & 3 is 0 or 2).
            const int col = j0 + nt * 8 + 2 * t;
#pragma unroll
            for (int rr = 0; rr < 2; ++rr) {
              uint32_t words[4];
              attention_dropout::keep_words(words, seed,
                                            static_cast<uint64_t>(nh) * p.len_q + row[mt][rr],
                                            static_cast<uint64_t>(col) >> 2);
              const bool lo = attention_dropout::is_kept(words, col, p.keep_threshold);
              const bool hi = attention_dropout::is_kept(words, col + 1, p.keep_threshold);
              // P stays in [0, 1] ([0, 2^8] in whole-tile mode) for the
              // half-precision PV mma (P / (1 - p) overflows fp16 when p is
              // near 1); the epilogue applies 1 / (1 - p).
              s[mt][nt][2 * rr] = lo ? s[mt][nt][2 * rr] : 0.f;
              s[mt][nt][2 * rr + 1] = hi ? s[mt][nt][2 * rr + 1] : 0.f;
            }
          }
        }
      };
      with_static_flag(a.whole_tiles && !p.dropout, exponentiate);
      if (!a.whole_tiles || alpha[0] != 1.f || alpha[1] != 1.f) {  // (whole-tile mode: rarely)
#pragma unroll
        for (int nt = 0; nt < kD / 8; ++nt) {
          o[mt][nt][0] *= alpha[0];
          o[mt][nt][1] *= alpha[0];
          o[mt][nt][2] *= alpha[1];
          o[mt][nt][3] *= alpha[1];
        }
      }
    }

    // O += P V: the S accumulators of key n-tiles 2kk, 2kk+1 are the A
    // fragment of k-step kk; each V fragment feeds the warp's kMT m-tiles.
    mma_xb<T, kD, kBN / 8, kPitch, kMT>(o, s, Vb, lane);
    __syncthreads();  // this buffer is refilled by the prefetch two tiles on
  }
  cp_async_wait<0>();  // with no key tile, the Q load is still in flight

  // Epilogue: O / l, lse = m + log l; a row with no visible key (l = 0) gets zeros and -inf.
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      const float sum = quad_sum(l[mt][rr]);
      if (row[mt][rr] >= p.len_q) continue;
      // A NaN or +inf score made the sum NaN: the row's output and lse are NaN.
      const bool seen = sum > 0.f || isnan(sum);
      const float inv = seen ? keep_scale / sum : 0.f;  // keep_scale: 1 without dropout
      T* out =
          static_cast<T*>(a.out) + (static_cast<int64_t>(nh) * p.len_q + row[mt][rr]) * p.dim_v;
#pragma unroll
      for (int nt = 0; nt < kD / 8; ++nt) {
        const int col = nt * 8 + 2 * t;
        if (col < p.dim_v) {
          *reinterpret_cast<uint32_t*>(out + col) =
              pack2<T>(o[mt][nt][2 * rr] * inv, o[mt][nt][2 * rr + 1] * inv);
        }
      }
      if (t == 0) {
        static_cast<float*>(a.lse)[static_cast<int64_t>(nh) * p.len_q + row[mt][rr]] =
            seen ? m[mt][rr] + logf(sum) : neg_inf<float>();
      }
    }
  }
}

// The whole-tile softmax (see kLazyRescale) unless
// PYDL_ATTENTION_TC_WHOLE_TILES=0, read per call, so
// scripts/attention_tc_ab.py can time it against the general path in one
// process.
inline bool whole_tiles_requested() {
  const char* env = std::getenv("PYDL_ATTENTION_TC_WHOLE_TILES");
  return env == nullptr || std::strcmp(env, "0") != 0;
}

// PYDL_ATTENTION_TC_MTILES=1 or 2: one or two m-tiles per warp in every
// tensor-core kernel that has both layouts (forward and dQ at head dims 64 /
// 128, dK / dV at 64), read per call: the A/B switch for measuring the
// layouts on a GPU in one process (scripts/attention_tc_ab.py). 0 (unset or
// anything else): each kernel's default.
inline int requested_m_tiles() {
  const char* env = std::getenv("PYDL_ATTENTION_TC_MTILES");
  if (env == nullptr) return 0;
  return std::strcmp(env, "1") == 0 ? 1 : std::strcmp(env, "2") == 0 ? 2 : 0;
}

// Launches with traits Tr; false (nothing launched) when the tiles need more
// shared memory than the card allows.
template <typename T, typename Tr>
bool try_launch_forward(const ForwardArgs& a, cudaStream_t stream) {
  if (Tr::kSmemBytes > max_smem_optin()) return false;
  launch_over_rows(forward_kernel<T, Tr>, int64_t(a.p.batch) * a.p.heads_q, a.p.len_q,
                   Tr::kBlockM, Tr::kThreads, Tr::kSmemBytes, "L", a, stream);
  return true;
}

// The default layout (ForwardTraits above) unless PYDL_ATTENTION_TC_MTILES
// asks for the other; the CUDA-core kernel where the card's opt-in shared
// memory is short of the tiles (d 64 / 128: 36 / 68 KB with two m-tiles,
// 45 / 85 KB with one; d 256: 99 KB, all sm_86 / sm_89 allow).
template <typename T, int kHeadDim>
void launch_forward(const ForwardArgs& args, cudaStream_t stream) {
  ForwardArgs a = args;
  a.whole_tiles = whole_tiles_requested();
  const int requested = requested_m_tiles();
  if constexpr (kHeadDim <= 128) {
    const bool two = requested == 2 || (requested == 0 && ForwardTraits<kHeadDim>::kMTiles == 2);
    if (two && try_launch_forward<T, ForwardTraits<kHeadDim, 2>>(a, stream)) return;
  }
  if (try_launch_forward<T, ForwardTraits<kHeadDim, 1>>(a, stream)) return;
  simt_forward<T>(a, stream);
}

}  // namespace tc
}  // namespace attention_cuda
}  // namespace pydl
