// Attention on CUDA cores, exact accumulator math (float; double for double),
// for every dtype; the path for float32 / float64 (FlashAttention has no
// fp32 path, and torch's default keeps TF32 off for matmuls).
//
// Flash-style tiling, never an L x S buffer: a CTA owns R rows (R = 8, 16 or
// 32, the largest whose shared memory fits) with 4 threads per row. In a
// score tile of R x R each thread owns R / 4 adjacent columns of its row, so
// row reductions are two xor-shuffles among the row's 4 lanes, and a row's
// probabilities are shared through shared memory with a __syncwarp (the 4
// lanes sit in one warp). Operand tiles live in shared memory as the
// accumulator type, rows padded by one element against bank conflicts;
// rows/keys past the end are zero-filled so the inner loops need no bounds.
//
//   forward   CTA = (n, h, R query rows), loops over key tiles, online softmax.
//   dK / dV   CTA = (n, hk, R keys), loops over the GQA group's heads and the
//             query tiles; owns its dK / dV rows (no atomics); writes dS to
//             the mask-gradient buffer when asked.
//   dQ        CTA = (n, h, R query rows), loops over key tiles (deterministic).
#pragma once

#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "attention/cuda/attention_kernels.h"
#include "attention/cuda/attention_launch.h"
#include "attention/cuda/attention_math.cuh"
#include "attention/dropout_philox.h"
#include "common/cuda_launch.cuh"
#include "common/cuda_storage.cuh"

namespace pydl {
namespace attention_cuda {
namespace simt {

constexpr int kMaxRows = 32;
constexpr int kMaxColsPerThread = kMaxRows / 4;

// Shared-memory pitches (elements) of a tile row: head dims + 1, tile width + 1.
struct Pitches {
  int qk, v, tile;
  __host__ __device__ Pitches(const Problem& p, int rows)
      : qk(p.dim_qk + 1), v(p.dim_v + 1), tile(rows + 1) {}
};

// dst[r][c] = src row (row0 + r), column c, for r < rows (zero past `valid`), c < cols.
template <typename T, typename AccT>
__device__ void load_tile(AccT* dst, int pitch, const T* src, int64_t row_stride,
                          int64_t col_stride, int valid, int rows, int cols) {
  for (int idx = threadIdx.x; idx < rows * cols; idx += blockDim.x) {
    const int r = idx / cols, c = idx - r * cols;
    dst[r * pitch + c] = r < valid ? to_acc(src[r * row_stride + c * col_stride]) : AccT(0);
  }
}

template <typename AccT>
__device__ void zero_tile(AccT* dst, int count) {
  for (int idx = threadIdx.x; idx < count; idx += blockDim.x) dst[idx] = AccT(0);
}

template <typename AccT>
__device__ __forceinline__ AccT dot(const AccT* a, const AccT* b, int count) {
  AccT sum = AccT(0);
  for (int e = 0; e < count; ++e) sum += a[e] * b[e];
  return sum;
}

// Reduction over the 4 lanes of one row (lanes 4r .. 4r + 3 of a warp).
template <typename AccT>
__device__ __forceinline__ AccT row_max4(AccT v) {
  v = fmax(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmax(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
template <typename AccT>
__device__ __forceinline__ AccT row_sum4(AccT v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

template <typename T>
__device__ __forceinline__ const T* head_ptr(const void* base, const Strides& s, int n, int h) {
  return static_cast<const T*>(base) + n * s.n + h * s.h;
}

// ----------------------------------------------------------------------------- forward

template <typename T>
__global__ void __launch_bounds__(4 * kMaxRows) forward_kernel(ForwardArgs a, int R) {
  using AccT = typename Acc<T>::type;
  const Problem& p = a.p;
  PYDL_DYNAMIC_SMEM(unsigned char, smem_raw);
  const Pitches pitch(p, R);
  AccT* Qs = reinterpret_cast<AccT*>(smem_raw);
  AccT* Ks = Qs + R * pitch.qk;
  AccT* Vs = Ks + R * pitch.qk;
  AccT* Os = Vs + R * pitch.v;
  AccT* Ps = Os + R * pitch.v;

  const int nh = blockIdx.x, n = nh / p.heads_q, h = nh % p.heads_q, hk = h / p.group;
  const int i0 = blockIdx.y * R, rows_here = min(R, p.len_q - i0);
  const int r = threadIdx.x >> 2, part = threadIdx.x & 3, C = R >> 2;
  const int i = i0 + r;
  const bool row_valid = r < rows_here;
  const T* q = head_ptr<T>(p.q, p.sq, n, h) + i0 * p.sq.row;
  const T* k = head_ptr<T>(p.k, p.sk, n, hk);
  const T* v = head_ptr<T>(p.v, p.sv, n, hk);
  const T* mrow = p.mask ? head_ptr<T>(p.mask, p.smask, n, h) +
                               static_cast<int64_t>(row_valid ? i : i0) * p.smask.row
                         : nullptr;
  const AccT scale = static_cast<AccT>(p.scale), keep_scale = static_cast<AccT>(p.keep_scale);
  const uint64_t seed = p.dropout ? static_cast<uint64_t>(*p.seed) : 0;
  const uint64_t head_row = static_cast<uint64_t>(nh) * p.len_q + i;

  load_tile(Qs, pitch.qk, q, p.sq.row, p.sq.col, rows_here, R, p.dim_qk);
  zero_tile(Os, R * pitch.v);
  __syncthreads();  // Os is zeroed by all threads and read per row, even with no key tile
  AccT m = neg_inf<AccT>(), l = AccT(0);
  // No row of this CTA sees a key at or past key_end under the causal rule.
  const int key_end = block_key_end(p, i0, rows_here);
  for (int j0 = 0; j0 < key_end; j0 += R) {
    const int keys_here = min(R, p.len_kv - j0);
    __syncthreads();  // the previous tile's readers are done
    load_tile(Ks, pitch.qk, k + j0 * p.sk.row, p.sk.row, p.sk.col, keys_here, R, p.dim_qk);
    load_tile(Vs, pitch.v, v + j0 * p.sv.row, p.sv.row, p.sv.col, keys_here, R, p.dim_v);
    __syncthreads();
    AccT s[kMaxColsPerThread];
    AccT tile_max = neg_inf<AccT>();
#pragma unroll
    for (int jj = 0; jj < kMaxColsPerThread; ++jj) {
      s[jj] = neg_inf<AccT>();
      const int jl = part * C + jj, j = j0 + jl;
      if (jj < C && row_valid && j < p.len_kv && (!p.causal || j <= i + p.causal_offset)) {
        AccT x = dot(Qs + r * pitch.qk, Ks + jl * pitch.qk, p.dim_qk) * scale;
        if (mrow) x += to_acc(mrow[j * p.smask.col]);
        s[jj] = x;
        tile_max = fmax(tile_max, x);
      }
    }
    const AccT m_new = fmax(m, row_max4(tile_max));
    // A row that has seen only hidden keys keeps m = -inf: exponentiate
    // against 0 then, so it stays all zeros instead of NaN.
    const AccT ref = m_new == neg_inf<AccT>() ? AccT(0) : m_new;
    const AccT alpha = exp_acc(m - ref);
    AccT sum = AccT(0);
    uint32_t words[4];
#pragma unroll
    for (int jj = 0; jj < kMaxColsPerThread; ++jj) {
      if (jj < C) {
        const int jl = part * C + jj;
        AccT pj = exp_acc(s[jj] - ref);
        sum += pj;  // l sums the weights before dropout: the lse is dropout-free
        if (p.dropout) {
          const uint64_t col = static_cast<uint64_t>(j0 + jl);
          if (jj == 0 || (col & 3) == 0) attention_dropout::keep_words(words, seed, head_row, col >> 2);
          pj = attention_dropout::is_kept(words, col, p.keep_threshold) ? pj * keep_scale
                                                                           : AccT(0);
        }
        Ps[r * pitch.tile + jl] = pj;
      }
    }
    l = l * alpha + row_sum4(sum);
    m = m_new;
    __syncwarp();  // the row's 4 lanes wrote Ps[r]
    for (int c = part; c < p.dim_v; c += 4) {
      AccT o = Os[r * pitch.v + c] * alpha;
      for (int jl = 0; jl < keys_here; ++jl) o += Ps[r * pitch.tile + jl] * Vs[jl * pitch.v + c];
      Os[r * pitch.v + c] = o;
    }
  }
  if (row_valid) {
    // A row with no visible key (l = 0): output zeros, lse = -inf. A NaN or
    // +inf score made l NaN: the row's output and lse are NaN, as in torch.
    const bool seen = l > AccT(0) || isnan(l);
    const AccT inv = seen ? AccT(1) / l : AccT(0);
    T* o = static_cast<T*>(a.out) + (static_cast<int64_t>(nh) * p.len_q + i) * p.dim_v;
    for (int c = part; c < p.dim_v; c += 4) o[c] = from_acc<T>(Os[r * pitch.v + c] * inv);
    if (part == 0) {
      static_cast<AccT*>(a.lse)[static_cast<int64_t>(nh) * p.len_q + i] =
          seen ? m + log_acc(l) : neg_inf<AccT>();
    }
  }
}

// ----------------------------------------------------------------------------- backward

// For one visible score s of a row with a finite lse: the weight that
// multiplied V in the forward (P, dropped out and rescaled) and
// dS = P * (dP * z - delta), z the dropout factor (0 or keep_scale).
template <typename AccT>
struct ScoreGrad {
  AccT p_used, ds;
};

template <typename AccT>
__device__ __forceinline__ ScoreGrad<AccT> score_grad(AccT s, AccT row_lse, AccT dp, AccT delta,
                                                      bool kept, bool dropout, AccT keep_scale) {
  const AccT prob = exp_acc(s - row_lse);
  AccT p_used = prob;
  if (dropout) {
    const AccT z = kept ? keep_scale : AccT(0);
    dp *= z;
    p_used = prob * z;
  }
  return {p_used, prob * (dp - delta)};
}

template <typename T>
__global__ void __launch_bounds__(4 * kMaxRows) dkdv_kernel(BackwardArgs a, int R) {
  using AccT = typename Acc<T>::type;
  const Problem& p = a.p;
  PYDL_DYNAMIC_SMEM(unsigned char, smem_raw);
  const Pitches pitch(p, R);
  AccT* Ks = reinterpret_cast<AccT*>(smem_raw);
  AccT* dKs = Ks + R * pitch.qk;
  AccT* Qs = dKs + R * pitch.qk;
  AccT* Vs = Qs + R * pitch.qk;
  AccT* dVs = Vs + R * pitch.v;
  AccT* dOs = dVs + R * pitch.v;
  AccT* Ps = dOs + R * pitch.v;
  AccT* dSs = Ps + R * pitch.tile;
  AccT* lse_s = dSs + R * pitch.tile;
  AccT* delta_s = lse_s + R;

  const int nhk = blockIdx.x, n = nhk / p.heads_kv, hk = nhk % p.heads_kv;
  const int j0 = blockIdx.y * R, keys_here = min(R, p.len_kv - j0);
  const int r = threadIdx.x >> 2, part = threadIdx.x & 3, C = R >> 2;
  const int j = j0 + r;
  const bool key_valid = r < keys_here;
  const AccT scale = static_cast<AccT>(p.scale), keep_scale = static_cast<AccT>(p.keep_scale);
  const uint64_t seed = p.dropout ? static_cast<uint64_t>(*p.seed) : 0;
  const AccT* lse = static_cast<const AccT*>(a.lse);
  const AccT* delta = static_cast<const AccT*>(a.delta);
  AccT* grad_scores = static_cast<AccT*>(a.grad_scores);

  load_tile(Ks, pitch.qk, head_ptr<T>(p.k, p.sk, n, hk) + j0 * p.sk.row, p.sk.row, p.sk.col,
            keys_here, R, p.dim_qk);
  load_tile(Vs, pitch.v, head_ptr<T>(p.v, p.sv, n, hk) + j0 * p.sv.row, p.sv.row, p.sv.col,
            keys_here, R, p.dim_v);
  zero_tile(dKs, R * pitch.qk);
  zero_tile(dVs, R * pitch.v);
  __syncthreads();  // read per key row at the end, even with no query tile
  // Causal: query rows before j0 - offset see none of these keys.
  const int i_first = p.causal ? max(0, j0 - p.causal_offset) : 0;
  for (int h = hk * p.group; h < (hk + 1) * p.group; ++h) {
    const int64_t nh = static_cast<int64_t>(n) * p.heads_q + h;
    const T* q = head_ptr<T>(p.q, p.sq, n, h);
    const T* dout = static_cast<const T*>(a.grad_out) + nh * p.len_q * p.dim_v;
    const T* mhead = p.mask ? head_ptr<T>(p.mask, p.smask, n, h) : nullptr;
    for (int i0 = (i_first / R) * R; i0 < p.len_q; i0 += R) {
      const int rows_here = min(R, p.len_q - i0);
      __syncthreads();
      load_tile(Qs, pitch.qk, q + i0 * p.sq.row, p.sq.row, p.sq.col, rows_here, R, p.dim_qk);
      load_tile(dOs, pitch.v, dout + static_cast<int64_t>(i0) * p.dim_v, p.dim_v, 1, rows_here,
                R, p.dim_v);
      for (int t = threadIdx.x; t < R; t += blockDim.x) {
        lse_s[t] = t < rows_here ? lse[nh * p.len_q + i0 + t] : neg_inf<AccT>();
        delta_s[t] = t < rows_here ? delta[nh * p.len_q + i0 + t] : AccT(0);
      }
      __syncthreads();
#pragma unroll
      for (int ii = 0; ii < kMaxColsPerThread; ++ii) {
        const int il = part * C + ii, i = i0 + il;
        if (ii >= C) continue;
        AccT p_used = AccT(0), ds = AccT(0);
        const bool visible = key_valid && il < rows_here && (!p.causal || j <= i + p.causal_offset);
        if (visible && lse_s[il] != neg_inf<AccT>()) {
          AccT s = dot(Qs + il * pitch.qk, Ks + r * pitch.qk, p.dim_qk) * scale;
          if (mhead) s += to_acc(mhead[i * p.smask.row + j * p.smask.col]);
          const AccT dp = dot(dOs + il * pitch.v, Vs + r * pitch.v, p.dim_v);
          bool kept = true;
          if (p.dropout) {
            uint32_t words[4];
            attention_dropout::keep_words(words, seed, static_cast<uint64_t>(nh * p.len_q + i),
                                          static_cast<uint64_t>(j) >> 2);
            kept = attention_dropout::is_kept(words, j, p.keep_threshold);
          }
          const ScoreGrad<AccT> g =
              score_grad(s, lse_s[il], dp, delta_s[il], kept, p.dropout, keep_scale);
          p_used = g.p_used;
          ds = g.ds;
          if (grad_scores) grad_scores[(nh * p.len_q + i) * p.len_kv + j] = ds;
        }
        Ps[r * pitch.tile + il] = p_used;
        dSs[r * pitch.tile + il] = ds;
      }
      __syncwarp();  // the row's 4 lanes wrote Ps[r], dSs[r]
      for (int c = part; c < p.dim_v; c += 4) {
        AccT acc = dVs[r * pitch.v + c];
        for (int il = 0; il < rows_here; ++il) acc += Ps[r * pitch.tile + il] * dOs[il * pitch.v + c];
        dVs[r * pitch.v + c] = acc;
      }
      for (int e = part; e < p.dim_qk; e += 4) {
        AccT acc = dKs[r * pitch.qk + e];
        for (int il = 0; il < rows_here; ++il) acc += dSs[r * pitch.tile + il] * Qs[il * pitch.qk + e];
        dKs[r * pitch.qk + e] = acc;
      }
    }
  }
  if (!key_valid) return;
  const int64_t row = static_cast<int64_t>(nhk) * p.len_kv + j;
  if (a.grad_k) {
    T* dk = static_cast<T*>(a.grad_k) + row * p.dim_qk;
    for (int e = part; e < p.dim_qk; e += 4) dk[e] = from_acc<T>(dKs[r * pitch.qk + e] * scale);
  }
  if (a.grad_v) {
    T* dv = static_cast<T*>(a.grad_v) + row * p.dim_v;
    for (int c = part; c < p.dim_v; c += 4) dv[c] = from_acc<T>(dVs[r * pitch.v + c]);
  }
}

template <typename T>
__global__ void __launch_bounds__(4 * kMaxRows) dq_kernel(BackwardArgs a, int R) {
  using AccT = typename Acc<T>::type;
  const Problem& p = a.p;
  PYDL_DYNAMIC_SMEM(unsigned char, smem_raw);
  const Pitches pitch(p, R);
  AccT* Qs = reinterpret_cast<AccT*>(smem_raw);
  AccT* dQs = Qs + R * pitch.qk;
  AccT* Ks = dQs + R * pitch.qk;
  AccT* dOs = Ks + R * pitch.qk;
  AccT* Vs = dOs + R * pitch.v;
  AccT* dSs = Vs + R * pitch.v;

  const int nh = blockIdx.x, n = nh / p.heads_q, h = nh % p.heads_q, hk = h / p.group;
  const int i0 = blockIdx.y * R, rows_here = min(R, p.len_q - i0);
  const int r = threadIdx.x >> 2, part = threadIdx.x & 3, C = R >> 2;
  const int i = i0 + r;
  const bool row_valid = r < rows_here;
  const int64_t row = static_cast<int64_t>(nh) * p.len_q + i;
  const AccT scale = static_cast<AccT>(p.scale), keep_scale = static_cast<AccT>(p.keep_scale);
  const uint64_t seed = p.dropout ? static_cast<uint64_t>(*p.seed) : 0;
  const AccT row_lse = row_valid ? static_cast<const AccT*>(a.lse)[row] : neg_inf<AccT>();
  const AccT row_delta = row_valid ? static_cast<const AccT*>(a.delta)[row] : AccT(0);
  const T* k = head_ptr<T>(p.k, p.sk, n, hk);
  const T* v = head_ptr<T>(p.v, p.sv, n, hk);
  const T* mrow = p.mask ? head_ptr<T>(p.mask, p.smask, n, h) +
                               static_cast<int64_t>(row_valid ? i : i0) * p.smask.row
                         : nullptr;

  load_tile(Qs, pitch.qk, head_ptr<T>(p.q, p.sq, n, h) + i0 * p.sq.row, p.sq.row, p.sq.col,
            rows_here, R, p.dim_qk);
  load_tile(dOs, pitch.v,
            static_cast<const T*>(a.grad_out) + (static_cast<int64_t>(nh) * p.len_q + i0) * p.dim_v,
            p.dim_v, 1, rows_here, R, p.dim_v);
  zero_tile(dQs, R * pitch.qk);
  __syncthreads();  // read per row at the end, even with no key tile
  const int key_end = block_key_end(p, i0, rows_here);
  for (int j0 = 0; j0 < key_end; j0 += R) {
    const int keys_here = min(R, p.len_kv - j0);
    __syncthreads();
    load_tile(Ks, pitch.qk, k + j0 * p.sk.row, p.sk.row, p.sk.col, keys_here, R, p.dim_qk);
    load_tile(Vs, pitch.v, v + j0 * p.sv.row, p.sv.row, p.sv.col, keys_here, R, p.dim_v);
    __syncthreads();
    uint32_t words[4];
#pragma unroll
    for (int jj = 0; jj < kMaxColsPerThread; ++jj) {
      if (jj >= C) continue;
      const int jl = part * C + jj, j = j0 + jl;
      // Words for the group of 4 columns, drawn on every group's first column
      // (and the thread's first) whether or not it is visible.
      if (p.dropout && (jj == 0 || (j & 3) == 0)) {
        attention_dropout::keep_words(words, seed, static_cast<uint64_t>(row),
                                      static_cast<uint64_t>(j) >> 2);
      }
      AccT ds = AccT(0);
      if (row_valid && row_lse != neg_inf<AccT>() && j < p.len_kv &&
          (!p.causal || j <= i + p.causal_offset)) {
        AccT s = dot(Qs + r * pitch.qk, Ks + jl * pitch.qk, p.dim_qk) * scale;
        if (mrow) s += to_acc(mrow[j * p.smask.col]);
        const AccT dp = dot(dOs + r * pitch.v, Vs + jl * pitch.v, p.dim_v);
        const bool kept = !p.dropout || attention_dropout::is_kept(words, j, p.keep_threshold);
        ds = score_grad(s, row_lse, dp, row_delta, kept, p.dropout, keep_scale).ds;
      }
      dSs[r * pitch.tile + jl] = ds;
    }
    __syncwarp();
    for (int e = part; e < p.dim_qk; e += 4) {
      AccT acc = dQs[r * pitch.qk + e];
      for (int jl = 0; jl < keys_here; ++jl) acc += dSs[r * pitch.tile + jl] * Ks[jl * pitch.qk + e];
      dQs[r * pitch.qk + e] = acc;
    }
  }
  if (!row_valid) return;
  T* dq = static_cast<T*>(a.grad_q) + row * p.dim_qk;
  for (int e = part; e < p.dim_qk; e += 4) dq[e] = from_acc<T>(dQs[r * pitch.qk + e] * scale);
}

// ----------------------------------------------------------------------------- launch

// Shared-memory bytes of each kernel for R rows.
template <typename AccT>
size_t forward_smem(const Problem& p, int R) {
  const Pitches pt(p, R);
  return sizeof(AccT) * R * (2 * pt.qk + 2 * pt.v + pt.tile);
}
template <typename AccT>
size_t dkdv_smem(const Problem& p, int R) {
  const Pitches pt(p, R);
  return sizeof(AccT) * R * (3 * pt.qk + 3 * pt.v + 2 * pt.tile + 2);
}
template <typename AccT>
size_t dq_smem(const Problem& p, int R) {
  const Pitches pt(p, R);
  return sizeof(AccT) * R * (3 * pt.qk + 2 * pt.v + pt.tile);
}

// Largest R in {32, 16, 8} whose tiles fit; launches kernel over (heads, ceil(rows / R)).
template <typename Kernel, typename Args, typename SmemFn>
void launch_rows(Kernel kernel, const Args& a, int heads, int rows, SmemFn smem,
                 cudaStream_t stream) {
  const size_t limit = static_cast<size_t>(max_smem_optin());
  int R = kMaxRows;
  while (R > 8 && smem(a.p, R) > limit) R /= 2;
  const size_t bytes = smem(a.p, R);
  TORCH_CHECK(bytes <= limit, "pydl.attention (CUDA): head dims (", a.p.dim_qk, ", ", a.p.dim_v,
              ") need ", bytes, " bytes of shared memory, more than the device's ", limit);
  const int64_t blocks = (static_cast<int64_t>(rows) + R - 1) / R;
  TORCH_CHECK(blocks <= 65535, "pydl.attention (CUDA): sequence of ", rows,
              " rows is too long for the CUDA-core kernel");
  if (heads == 0 || blocks == 0) return;
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), static_cast<int>(bytes));
  PYDL_LAUNCH_KERNEL(kernel, dim3(heads, static_cast<unsigned>(blocks)), 4 * R, bytes, stream, a,
                     R);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void forward(const ForwardArgs& a, cudaStream_t stream) {
  using AccT = typename Acc<T>::type;
  launch_rows(forward_kernel<T>, a, a.p.batch * a.p.heads_q, a.p.len_q, forward_smem<AccT>,
              stream);
}

template <typename T>
void backward(const BackwardArgs& a, cudaStream_t stream) {
  using AccT = typename Acc<T>::type;
  if (a.grad_k || a.grad_v || a.grad_scores) {
    launch_rows(dkdv_kernel<T>, a, a.p.batch * a.p.heads_kv, a.p.len_kv, dkdv_smem<AccT>, stream);
  }
  if (a.grad_q) {
    launch_rows(dq_kernel<T>, a, a.p.batch * a.p.heads_q, a.p.len_q, dq_smem<AccT>, stream);
  }
}

}  // namespace simt
}  // namespace attention_cuda
}  // namespace pydl
