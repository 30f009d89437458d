// Flash-style attention on the CPU, compiled once per ISA (see setup.py).
//
// Forward: one task per (batch, head, block of query rows); the task walks the
// key/value blocks with an online softmax (running row max m and sum l), so
// only a [block_q x block_k] score tile ever exists, never L x S. Tiles that
// the causal rule or the mask hide entirely are skipped before any GEMM.
// Backward (FlashAttention-2): probabilities are recomputed from the saved
// log-sum-exp; one task per (batch, key/value head, share of key blocks) owns
// its dK/dV rows outright (summing over the query heads of its GQA group) and
// adds into its own dQ slice, so no two threads write the same memory.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "attention/cpu/attention_cpu_kernel.h"
#include "attention/cpu/dropout_keep_simd.h"
#include "attention/cpu/kernel_helpers.h"
#include "attention/cpu/softmax_rows.h"
#include "attention/cpu/tile_gemm.h"
#include "common/blas.h"
#include "common/cpu_isa.h"

#ifndef CPU_CAPABILITY
#error "attention_cpu_kernel_isa.cpp is compiled through setup.py's per-ISA wrappers"
#endif

namespace pydl {
namespace attention_cpu {
namespace CPU_CAPABILITY {
namespace {

// Causal diagonal tiles (see forward_typed): row slab height, and the
// narrowest full-height tile worth a GEMM call of its own.
constexpr int64_t kDiagonalRows = 32, kMinFullWidth = 64;

// Query block visited by task slot t of nb: 0, nb-1, 1, nb-2, ... so that a
// thread's contiguous range of slots mixes cheap and expensive causal blocks.
inline int64_t balanced_block(int64_t t, int64_t nb) { return t % 2 == 0 ? t / 2 : nb - 1 - t / 2; }

// --------------------------------------------------------------------------- forward

// S: how q, k, v, out are stored; T: the compute type (Compute<S>).
template <typename S>
void forward_typed(const ForwardArgs& a) {
  using T = Compute<S>;
  constexpr bool kConvert = !std::is_same_v<S, T>;  // bf16: tiles in float32
  const Problem& p = a.p;
  const int64_t L = p.len_q, S_len = p.len_kv, E = p.dim_qk, Ev = p.dim_v;
  const int64_t group = p.heads_q / p.heads_kv;
  const int64_t kFwdBlockQ = p.block_q, kFwdBlockK = p.block_k;
  const int64_t nqb = (L + kFwdBlockQ - 1) / kFwdBlockQ;
  const T scale = static_cast<T>(p.scale);
  const bool dropout = p.dropout_p > 0.0;
  const T* mask = static_cast<const T*>(p.mask.data);
  S* out = static_cast<S*>(a.out);
  T* lse = static_cast<T*>(a.lse);

  at::parallel_for(0, p.batch * p.heads_q * nqb, 1, [&](int64_t begin, int64_t end) {
    SingleThreadedBlas single_threaded;
    const int64_t tile_size = kFwdBlockQ * kFwdBlockK;
    ThreadScratch<T> scratch(tile_size + 2 * kFwdBlockQ + kFwdBlockK +
                             (kConvert ? tile_size + kFwdBlockQ * Ev : 0));
    T* const tile = scratch.take(tile_size);
    T* const m = scratch.take(kFwdBlockQ);
    T* const l = scratch.take(kFwdBlockQ);
    T* const keep = scratch.take(kFwdBlockK);
    // bf16: the probabilities in bf16 for the P V GEMM, and a float32 output block.
    S* const tile_s = kConvert ? reinterpret_cast<S*>(scratch.take(tile_size)) : nullptr;
    T* const o_acc = kConvert ? scratch.take(kFwdBlockQ * Ev) : nullptr;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t nh = t / nqb, n = nh / p.heads_q, h = nh % p.heads_q, hk = h / group;
      const int64_t i0 = balanced_block(t % nqb, nqb) * kFwdBlockQ;
      const int64_t nq = std::min(kFwdBlockQ, L - i0);
      const S* q = ptr<S>(p.q, n, h, i0);
      const S* k = ptr<S>(p.k, n, hk, 0);
      const S* v = ptr<S>(p.v, n, hk, 0);
      const T* mtile = mask ? ptr<T>(p.mask, n, h, i0) : nullptr;
      T* o = kConvert ? o_acc : reinterpret_cast<T*>(out + (nh * L + i0) * Ev);
      // o is written by the first P V product (beta 0) of a full-height
      // tile, or zeroed before the first diagonal tile's slabs.
      bool o_written = false;
      std::fill(m, m + nq, neg_inf<T>());
      std::fill(l, l + nq, T(0));
      // Causal: no row of this block sees keys past its last row's limit.
      const int64_t key_end =
          p.causal ? std::clamp<int64_t>(i0 + nq + p.causal_offset, 0, S_len) : S_len;
      // Keys before full_end are visible to every row of the block: full-height
      // tiles. The rest, the causal diagonal (at most block_q - 1 keys, plus a
      // leftover of fewer than kMinFullWidth), is one tile done in slabs of
      // kDiagonalRows rows, each only as wide as its last row sees, so the
      // hidden triangle costs ~kDiagonalRows / L of the work.
      const int64_t full_end =
          p.causal ? std::clamp<int64_t>(i0 + p.causal_offset + 1, 0, key_end) : key_end;
      for (int64_t j0 = 0, nk = 0; j0 < key_end; j0 += nk) {
        const bool crosses = full_end - j0 < std::min(kMinFullWidth, key_end - j0);
        nk = crosses ? key_end - j0 : std::min(kFwdBlockK, full_end - j0);
        const T* mt = mtile ? mtile + j0 * p.mask_stride_col : nullptr;
        if (mt && tile_all_masked(mt, p.mask.stride_row, p.mask_stride_col, nq, nk)) continue;
        const int64_t slab = crosses ? kDiagonalRows : nq;
        if (crosses && !o_written) {
          std::fill(o, o + nq * Ev, T(0));
          o_written = true;
        }
        for (int64_t r0 = 0; r0 < nq; r0 += slab) {
          const int64_t r1 = std::min(nq, r0 + slab);
          const int64_t width = crosses ? causal_visible(p, i0 + r1 - 1, j0, nk) : nk;
          if (width == 0) continue;  // these rows see none of the block
          T* s = tile + r0 * kFwdBlockK;
          gemm_rm(false, true, r1 - r0, width, E, scale, q + r0 * p.q.stride_row,
                  p.q.stride_row, k + j0 * p.k.stride_row, p.k.stride_row, T(0), s, kFwdBlockK);
          for (int64_t r = r0; r < r1; ++r) {
            T* row = tile + r * kFwdBlockK;
            const int64_t visible = causal_visible(p, i0 + r, j0, width);
            mask_row(row, width, visible, mt ? mt + r * p.mask.stride_row : nullptr,
                     p.mask_stride_col);
            const T m_new = nan_max(m[r], visible > 0 ? row_max(row, visible) : neg_inf<T>());
            // A row that has seen only hidden keys keeps m = -inf; exponentiate
            // against 0 then, so that it stays all zeros instead of NaN.
            const T ref = m_new == neg_inf<T>() ? T(0) : m_new;
            const T alpha = std::exp(m[r] - ref);
            const T sum = exp_sum(row, width, ref);
            // Until a row sees a key (m = -inf) its output row is zero (or
            // not yet written): nothing to rescale.
            if (alpha != T(1) && m[r] != neg_inf<T>()) scale_row(o + r * Ev, Ev, alpha);
            l[r] = l[r] * alpha + sum;
            m[r] = m_new;
            if (dropout) {  // l sums the weights before dropout: lse is dropout-free
              dropout_keep_row_simd(keep, width, p.dropout_seed,
                               static_cast<uint64_t>(nh * L + i0 + r), j0, p.dropout_p);
              mul_rows(row, keep, width);
            }
          }
          gemm_rm(false, false, r1 - r0, Ev, width, T(1),
                  as_storage(s, tile_s ? tile_s + r0 * kFwdBlockK : nullptr, r1 - r0, width,
                             kFwdBlockK),
                  kFwdBlockK, v + j0 * p.v.stride_row, p.v.stride_row, T(o_written ? 1 : 0),
                  o + r0 * Ev, Ev);
        }
        o_written = true;
      }
      // Rule for a row with no visible key (l = 0): output zeros, lse = -inf.
      // A NaN or +inf score made l NaN: the row's output and lse are NaN.
      for (int64_t r = 0; r < nq; ++r) {
        if (l[r] > T(0) || std::isnan(l[r])) {
          scale_row(o + r * Ev, Ev, T(1) / l[r]);
          lse[nh * L + i0 + r] = m[r] + std::log(l[r]);
        } else {
          std::fill(o + r * Ev, o + (r + 1) * Ev, T(0));
          lse[nh * L + i0 + r] = neg_inf<T>();
        }
      }
      if constexpr (kConvert) at::vec::convert(o, out + (nh * L + i0) * Ev, nq * Ev);
    }
  });
}

// --------------------------------------------------------------------------- backward

template <typename S>
void backward_typed(const BackwardArgs& a) {
  using T = Compute<S>;
  constexpr bool kConvert = !std::is_same_v<S, T>;  // bf16: tiles in float32
  const Problem& p = a.p;
  const int64_t L = p.len_q, S_len = p.len_kv, E = p.dim_qk, Ev = p.dim_v;
  const int64_t group = p.heads_q / p.heads_kv;
  const int64_t kBwdBlockQ = p.block_q, kBwdBlockK = p.block_k;
  const int64_t nqb = (L + kBwdBlockQ - 1) / kBwdBlockQ;
  const int64_t nkb = (S_len + kBwdBlockK - 1) / kBwdBlockK;
  const T scale = static_cast<T>(p.scale);
  const bool dropout = p.dropout_p > 0.0;
  const T* mask = static_cast<const T*>(p.mask.data);
  const S* dout = static_cast<const S*>(a.grad_out);
  const T* lse = static_cast<const T*>(a.lse);
  const T* delta = static_cast<const T*>(a.delta);
  T* grad_k = static_cast<T*>(a.grad_k);
  T* grad_v = static_cast<T*>(a.grad_v);
  T* grad_mask = static_cast<T*>(a.grad_mask);
  const int64_t dq_slice = p.batch * p.heads_q * L * E;

  at::parallel_for(0, p.batch * p.heads_kv * a.chunks, 1, [&](int64_t begin, int64_t end) {
    using V = Vec<T>;
    SingleThreadedBlas single_threaded;
    const int64_t kTile = kBwdBlockQ * kBwdBlockK;
    ThreadScratch<T> scratch((kConvert ? 4 : 3) * kTile);
    T* const prob = scratch.take(kTile);
    T* const dprob = scratch.take(kTile);
    T* const kept = scratch.take(kTile);
    // bf16: P and dS converted for the GEMMs that take them as operands.
    S* const tile_s = kConvert ? reinterpret_cast<S*>(scratch.take(kTile)) : nullptr;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t chunk = t % a.chunks, nhk = t / a.chunks;
      const int64_t n = nhk / p.heads_kv, hk = nhk % p.heads_kv;
      T* dq_base = static_cast<T*>(a.grad_q) + chunk * dq_slice;
      for (int64_t kb = chunk; kb < nkb; kb += a.chunks) {
        const int64_t j0 = kb * kBwdBlockK, nk_block = std::min(kBwdBlockK, S_len - j0);
        const S* k = ptr<S>(p.k, n, hk, j0);
        const S* v = ptr<S>(p.v, n, hk, j0);
        T* dk = grad_k + (nhk * S_len + j0) * E;
        T* dv = grad_v + (nhk * S_len + j0) * Ev;
        // Causal: rows before j0 - offset see none of these keys.
        const int64_t i_first = p.causal ? std::max<int64_t>(0, j0 - p.causal_offset) : 0;
        for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
          const int64_t nh = n * p.heads_q + h;
          for (int64_t qb = i_first / kBwdBlockQ; qb < nqb && i_first < L; ++qb) {
            const int64_t i0 = qb * kBwdBlockQ, nq = std::min(kBwdBlockQ, L - i0);
            // Causal: the tile is only as wide as its last row sees.
            const int64_t nk = p.causal
                ? std::clamp<int64_t>(i0 + nq + p.causal_offset - j0, 0, nk_block) : nk_block;
            if (nk == 0) continue;
            const T* mt = mask ? ptr<T>(p.mask, n, h, i0) + j0 * p.mask_stride_col : nullptr;
            if (mt && tile_all_masked(mt, p.mask.stride_row, p.mask_stride_col, nq, nk)) continue;
            const S* q = ptr<S>(p.q, n, h, i0);
            const S* dO = dout + (nh * L + i0) * Ev;
            T* P = prob;
            T* dP = dprob;
            gemm_rm(false, true, nq, nk, E, scale, q, p.q.stride_row, k, p.k.stride_row, T(0), P,
                    kBwdBlockK);
            // P = exp(score - lse): the forward's softmax, recomputed.
            for (int64_t r = 0; r < nq; ++r) {
              T* row = P + r * kBwdBlockK;
              const T row_lse = lse[nh * L + i0 + r];
              if (row_lse == neg_inf<T>()) {
                std::fill(row, row + nk, T(0));
                continue;
              }
              mask_row(row, nk, causal_visible(p, i0 + r, j0, nk),
                       mt ? mt + r * p.mask.stride_row : nullptr, p.mask_stride_col);
              exp_sum(row, nk, row_lse);
            }
            // dP = dO V^T (gradient w.r.t. the dropped-out weights).
            gemm_rm(false, true, nq, nk, Ev, T(1), dO, Ev, v, p.v.stride_row, T(0), dP,
                    kBwdBlockK);
            const T* P_used = P;  // the weights that multiplied V in the forward
            if (dropout) {
              for (int64_t r = 0; r < nq; ++r) {
                T* z = kept + r * kBwdBlockK;
                dropout_keep_row_simd(z, nk, p.dropout_seed, static_cast<uint64_t>(nh * L + i0 + r),
                                 j0, p.dropout_p);
                mul_rows(dP + r * kBwdBlockK, z, nk);
                mul_rows(z, P + r * kBwdBlockK, nk);
              }
              P_used = kept;
            }
            if (a.need_v) {
              gemm_rm(true, false, nk, Ev, nq, T(1),
                      as_storage(P_used, tile_s, nq, nk, kBwdBlockK), kBwdBlockK, dO, Ev, T(1),
                      dv, Ev);
            }
            // dS = P * (dP - delta_i): the softmax backward, delta_i = rowsum(dO * O) - dlse_i.
            for (int64_t r = 0; r < nq; ++r) {
              T* ds = dP + r * kBwdBlockK;
              const T* pr = P + r * kBwdBlockK;
              const V d(delta[nh * L + i0 + r]);
              int64_t c = 0;
              for (; c + V::size() <= nk; c += V::size()) {
                (V::loadu(pr + c) * (V::loadu(ds + c) - d)).store(ds + c);
              }
              for (; c < nk; ++c) ds[c] = pr[c] * (ds[c] - delta[nh * L + i0 + r]);
              if (grad_mask) {
                std::memcpy(grad_mask + (nh * L + i0 + r) * S_len + j0, ds, sizeof(T) * nk);
              }
            }
            const auto* dS = (a.need_k || a.need_q) ? as_storage(dP, tile_s, nq, nk, kBwdBlockK)
                                                   : nullptr;
            if (a.need_k) {
              gemm_rm(true, false, nk, E, nq, scale, dS, kBwdBlockK, q, p.q.stride_row, T(1), dk,
                      E);
            }
            if (a.need_q) {
              gemm_rm(false, false, nq, E, nk, scale, dS, kBwdBlockK, k, p.k.stride_row, T(1),
                      dq_base + (nh * L + i0) * E, E);
            }
          }
        }
      }
    }
  });
}

void forward(const ForwardArgs& a) {
  switch (a.p.storage) {
    case Storage::Float: return forward_typed<float>(a);
    case Storage::Double: return forward_typed<double>(a);
    case Storage::BFloat16: return forward_typed<c10::BFloat16>(a);
  }
}

void backward(const BackwardArgs& a) {
  switch (a.p.storage) {
    case Storage::Float: return backward_typed<float>(a);
    case Storage::Double: return backward_typed<double>(a);
    case Storage::BFloat16: return backward_typed<c10::BFloat16>(a);
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY

KernelTable PYDL_ISA_TABLE_FN() {
  return {&CPU_CAPABILITY::forward, &CPU_CAPABILITY::backward, C10_STRINGIZE(CPU_CAPABILITY)};
}

}  // namespace attention_cpu
}  // namespace pydl
