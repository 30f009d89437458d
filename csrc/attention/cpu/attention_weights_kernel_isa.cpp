// Attention that also returns its weights, on the CPU, compiled once per ISA
// (see setup.py). The caller wants the L x S weights, so this kernel works on
// whole score rows instead of flash tiles:
//
// Forward: one task per (batch, block of query rows), heads inside the task so
// that head-averaged weights accumulate in the task's own output rows (no
// atomics, deterministic). Per head: S = scale Q K^T for the block's full
// rows (one GEMM into a cache-resident tile), mask, exact softmax, dropout,
// write or average the weights, out = P V (one GEMM).
// Backward: one task per (batch, key/value head, share of query blocks).
// P is recomputed from the saved lse; dP = dO V^T plus the weights' own
// gradient; the softmax row term rowsum(P * dP) comes straight from the row
// (no separate pass over O); then dV, dK (task-private accumulators), dQ.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "attention/cpu/attention_weights_kernel.h"
#include "attention/cpu/dropout_keep_simd.h"
#include "attention/cpu/kernel_helpers.h"
#include "attention/cpu/softmax_rows.h"
#include "attention/cpu/tile_gemm.h"
#include "common/blas.h"
#include "common/cpu_isa.h"

#ifndef CPU_CAPABILITY
#error "attention_weights_kernel_isa.cpp is compiled through setup.py's per-ISA wrappers"
#endif

namespace pydl {
namespace attention_cpu {
namespace CPU_CAPABILITY {
namespace {

// Keys [0, key_end) can be visible to some row of the block starting at i0.
inline int64_t block_key_end(const Problem& p, int64_t i0, int64_t nq) {
  return p.causal ? std::clamp<int64_t>(i0 + nq + p.causal_offset, 0, p.len_kv) : p.len_kv;
}

template <typename T>
T row_dot(const T* a, const T* b, int64_t n) {
  using V = Vec<T>;
  V acc(T(0)), acc1(T(0));
  int64_t c = 0;
  for (; c + 2 * V::size() <= n; c += 2 * V::size()) {
    acc = at::vec::fmadd(V::loadu(a + c), V::loadu(b + c), acc);
    acc1 = at::vec::fmadd(V::loadu(a + c + V::size()), V::loadu(b + c + V::size()), acc1);
  }
  acc = acc + acc1;
  for (; c + V::size() <= n; c += V::size()) acc = at::vec::fmadd(V::loadu(a + c), V::loadu(b + c), acc);
  T sum = horizontal_sum(acc);
  for (; c < n; ++c) sum += a[c] * b[c];
  return sum;
}

// dst[c] = src[c] * factor (first) or dst[c] += src[c] * factor.
template <typename T>
void scaled_store(T* dst, const T* src, int64_t n, T factor, bool accumulate) {
  using V = Vec<T>;
  const V f(factor);
  int64_t c = 0;
  if (accumulate) {
    for (; c + V::size() <= n; c += V::size()) {
      at::vec::fmadd(V::loadu(src + c), f, V::loadu(dst + c)).store(dst + c);
    }
    for (; c < n; ++c) dst[c] += src[c] * factor;
  } else {
    for (; c + V::size() <= n; c += V::size()) (V::loadu(src + c) * f).store(dst + c);
    for (; c < n; ++c) dst[c] = src[c] * factor;
  }
}

// --------------------------------------------------------------------------- forward

template <typename T>
void forward_typed(const weights::ForwardArgs& a) {
  const Problem& p = a.p;
  const int64_t L = p.len_q, S = p.len_kv, E = p.dim_qk, Ev = p.dim_v;
  const int64_t group = p.heads_q / p.heads_kv, BQ = p.block_q;
  const int64_t nqb = (L + BQ - 1) / BQ;
  const T scale = static_cast<T>(p.scale);
  const T per_head = T(1) / static_cast<T>(p.heads_q);
  const T* mask = static_cast<const T*>(p.mask.data);
  T* out = static_cast<T*>(a.out);
  T* lse = static_cast<T*>(a.lse);
  T* weights = static_cast<T*>(a.weights);

  at::parallel_for(0, p.batch * nqb, 1, [&](int64_t begin, int64_t end) {
    SingleThreadedBlas single_threaded;
    ThreadScratch<T> scratch((a.average_heads ? BQ * S : 0) + S);
    T* const tile = a.average_heads ? scratch.take(BQ * S) : nullptr;
    T* const keep = scratch.take(S);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / nqb, i0 = (t % nqb) * BQ, nq = std::min(BQ, L - i0);
      const int64_t key_end = block_key_end(p, i0, nq);
      for (int64_t h = 0; h < p.heads_q; ++h) {
        const int64_t nh = n * p.heads_q + h, hk = h / group;
        // Per-head weights are built in place in the output.
        T* P = a.average_heads ? tile : weights + (nh * L + i0) * S;
        const T* q = ptr<T>(p.q, n, h, i0);
        const T* mt = mask ? ptr<T>(p.mask, n, h, i0) : nullptr;
        gemm_rm<T>(false, true, nq, key_end, E, scale, q, p.q.stride_row, ptr<T>(p.k, n, hk, 0),
                   p.k.stride_row, T(0), P, S);
        for (int64_t r = 0; r < nq; ++r) {
          T* row = P + r * S;
          T& row_lse = lse[nh * L + i0 + r];
          const int64_t visible = causal_visible(p, i0 + r, 0, key_end);
          mask_row(row, key_end, visible, mt ? mt + r * p.mask.stride_row : nullptr,
                   p.mask_stride_col);
          const T m = visible > 0 ? row_max(row, visible) : neg_inf<T>();
          if (m == neg_inf<T>()) {  // no visible key: zeros, lse -inf
            std::fill(row, row + S, T(0));
            row_lse = neg_inf<T>();
            continue;
          }
          const T sum = exp_sum(row, key_end, m);  // hidden keys (-inf) give exactly 0
          scale_row(row, key_end, T(1) / sum);
          std::fill(row + key_end, row + S, T(0));
          row_lse = m + std::log(sum);
          if (p.dropout_p > 0.0) {  // the weights returned are the dropped-out ones, as torch's
            dropout_keep_row_simd(keep, key_end, p.dropout_seed, static_cast<uint64_t>(nh * L + i0 + r),
                             0, p.dropout_p);
            mul_rows(row, keep, key_end);
          }
        }
        gemm_rm<T>(false, false, nq, Ev, key_end, T(1), P, S, ptr<T>(p.v, n, hk, 0),
                   p.v.stride_row, T(0), out + (nh * L + i0) * Ev, Ev);
        if (a.average_heads) {
          T* w = weights + (n * L + i0) * S;
          for (int64_t r = 0; r < nq; ++r) scaled_store(w + r * S, P + r * S, S, per_head, h > 0);
        }
      }
    }
  });
}

// --------------------------------------------------------------------------- backward

template <typename T>
void backward_typed(const weights::BackwardArgs& a) {
  const Problem& p = a.p;
  const int64_t L = p.len_q, S = p.len_kv, E = p.dim_qk, Ev = p.dim_v;
  const int64_t group = p.heads_q / p.heads_kv, BQ = p.block_q;
  const int64_t nqb = (L + BQ - 1) / BQ;
  const T scale = static_cast<T>(p.scale);
  const T weight_grad_factor = a.average_heads ? T(1) / static_cast<T>(p.heads_q) : T(1);
  const bool dropout = p.dropout_p > 0.0;
  const T* mask = static_cast<const T*>(p.mask.data);
  const T* dout = static_cast<const T*>(a.grad_out);
  const T* grad_weights = static_cast<const T*>(a.grad_weights);
  const T* lse = static_cast<const T*>(a.lse);
  T* grad_q = static_cast<T*>(a.grad_q);
  T* grad_mask = static_cast<T*>(a.grad_mask);
  const int64_t kv_heads_total = p.batch * p.heads_kv;

  at::parallel_for(0, kv_heads_total * a.chunks, 1, [&](int64_t begin, int64_t end) {
    SingleThreadedBlas single_threaded;
    ThreadScratch<T> scratch(3 * BQ * S + S);
    T* const prob = scratch.take(BQ * S);
    T* const dprob = scratch.take(BQ * S);
    T* const dropped = scratch.take(BQ * S);
    T* const keep = scratch.take(S);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t chunk = t % a.chunks, nhk = t / a.chunks;
      const int64_t n = nhk / p.heads_kv, hk = nhk % p.heads_kv;
      const T* k = ptr<T>(p.k, n, hk, 0);
      const T* v = ptr<T>(p.v, n, hk, 0);
      T* dk = static_cast<T*>(a.grad_k) + (chunk * kv_heads_total + nhk) * S * E;
      T* dv = static_cast<T*>(a.grad_v) + (chunk * kv_heads_total + nhk) * S * Ev;
      for (int64_t qb = chunk; qb < nqb; qb += a.chunks) {
        const int64_t i0 = qb * BQ, nq = std::min(BQ, L - i0);
        const int64_t key_end = block_key_end(p, i0, nq);
        if (key_end == 0) continue;  // no row sees a key: every gradient here is 0
        for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
          const int64_t nh = n * p.heads_q + h;
          const T* q = ptr<T>(p.q, n, h, i0);
          const T* mt = mask ? ptr<T>(p.mask, n, h, i0) : nullptr;
          const T* dO = dout ? dout + (nh * L + i0) * Ev : nullptr;
          // P = exp(score - lse): the forward's weights before dropout.
          gemm_rm<T>(false, true, nq, key_end, E, scale, q, p.q.stride_row, k, p.k.stride_row,
                     T(0), prob, S);
          for (int64_t r = 0; r < nq; ++r) {
            T* row = prob + r * S;
            const T row_lse = lse[nh * L + i0 + r];
            if (row_lse == neg_inf<T>()) {
              std::fill(row, row + key_end, T(0));
              continue;
            }
            mask_row(row, key_end, causal_visible(p, i0 + r, 0, key_end),
                     mt ? mt + r * p.mask.stride_row : nullptr, p.mask_stride_col);
            exp_sum(row, key_end, row_lse);
          }
          // dP (w.r.t. the dropped-out weights) = dO V^T + the weights' gradient.
          if (dO) {
            gemm_rm<T>(false, true, nq, key_end, Ev, T(1), dO, Ev, v, p.v.stride_row, T(0),
                       dprob, S);
          }
          for (int64_t r = 0; r < nq; ++r) {
            T* drow = dprob + r * S;
            if (!dO) std::fill(drow, drow + key_end, T(0));
            if (grad_weights) {
              const int64_t w_row = a.average_heads ? n * L + i0 + r : nh * L + i0 + r;
              scaled_store(drow, grad_weights + w_row * S, key_end, weight_grad_factor, true);
            }
          }
          const T* used = prob;  // the weights that multiplied V
          if (dropout) {
            for (int64_t r = 0; r < nq; ++r) {
              dropout_keep_row_simd(keep, key_end, p.dropout_seed,
                               static_cast<uint64_t>(nh * L + i0 + r), 0, p.dropout_p);
              mul_rows(dprob + r * S, keep, key_end);
              T* z = dropped + r * S;
              std::memcpy(z, prob + r * S, sizeof(T) * key_end);
              mul_rows(z, keep, key_end);
            }
            used = dropped;
          }
          if (a.need_v && dO) {
            gemm_rm<T>(true, false, key_end, Ev, nq, T(1), used, S, dO, Ev, T(1), dv, Ev);
          }
          // dS = P * (dP - rowsum(P * dP)): the softmax backward on whole rows.
          for (int64_t r = 0; r < nq; ++r) {
            T* ds = dprob + r * S;
            const T* pr = prob + r * S;
            const T delta = row_dot(pr, ds, key_end);
            using V = Vec<T>;
            const V d(delta);
            int64_t c = 0;
            for (; c + V::size() <= key_end; c += V::size()) {
              (V::loadu(pr + c) * (V::loadu(ds + c) - d)).store(ds + c);
            }
            for (; c < key_end; ++c) ds[c] = pr[c] * (ds[c] - delta);
            if (grad_mask) std::memcpy(grad_mask + (nh * L + i0 + r) * S, ds, sizeof(T) * key_end);
          }
          if (a.need_k) {
            gemm_rm<T>(true, false, key_end, E, nq, scale, dprob, S, q, p.q.stride_row, T(1), dk,
                       E);
          }
          if (a.need_q) {
            gemm_rm<T>(false, false, nq, E, key_end, scale, dprob, S, k, p.k.stride_row, T(0),
                       grad_q + (nh * L + i0) * E, E);
          }
        }
      }
    }
  });
}

// float32 / float64 only (the host checks; bf16 calls are not routed here).
void forward(const weights::ForwardArgs& a) {
  a.p.storage == Storage::Double ? forward_typed<double>(a) : forward_typed<float>(a);
}

void backward(const weights::BackwardArgs& a) {
  a.p.storage == Storage::Double ? backward_typed<double>(a) : backward_typed<float>(a);
}

}  // namespace
}  // namespace CPU_CAPABILITY

namespace weights {
KernelTable PYDL_ISA_TABLE_FN() { return {&CPU_CAPABILITY::forward, &CPU_CAPABILITY::backward}; }
}  // namespace weights

}  // namespace attention_cpu
}  // namespace pydl
