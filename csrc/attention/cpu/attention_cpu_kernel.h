// Interface between the attention CPU entry points (attention_cpu.cpp) and the
// flash-style tiled loops, compiled once per CPU ISA (attention_cpu_kernel_isa.cpp).
#pragma once

#include <cstdint>

namespace pydl {
namespace attention_cpu {

// A (N, H, rows, cols) operand whose last dim is contiguous; the other dims
// are addressed by stride (stride 0 = broadcast), so transposed layouts such
// as (N, L, H, E).transpose(1, 2) need no copy.
struct Operand {
  const void* data;
  int64_t stride_n, stride_h, stride_row;
};

// What forward and backward share. Key j is visible to query row i when the
// mask allows it and, if causal, j <= i + causal_offset (0: torch's top-left
// alignment, S - L: bottom-right).
// How q, k, v, out (and grad_out) are stored. The kernels compute in
// float64 for Double and float32 otherwise: with BFloat16 the tiles, lse,
// mask, delta and every gradient accumulator are float32, and the tile GEMMs
// take bf16 operands (MKL's bf16 GEMM: AMX / AVX512-BF16 where the CPU has them).
enum class Storage { Float, Double, BFloat16 };

struct Problem {
  int64_t batch, heads_q, heads_kv, len_q, len_kv, dim_qk, dim_v;
  Storage storage;
  double scale;
  bool causal;
  int64_t causal_offset;
  Operand q, k, v;
  // Additive mask in the query's dtype, viewed as (N, Hq, L, S) by strides;
  // data == nullptr when there is none.
  Operand mask;
  int64_t mask_stride_col;
  // Dropout: weights are kept with probability 1 - dropout_p and scaled by
  // 1 / (1 - dropout_p); the keep decision is a counter-based hash of
  // (seed, n, h, i, j), so the backward regenerates the forward's mask.
  double dropout_p;
  uint64_t dropout_seed;
  // Tile: block_q query rows x block_k keys (forward: block_q + 64 <= block_k,
  // so that a causal diagonal tile fits).
  int64_t block_q, block_k;
};

struct ForwardArgs {
  Problem p;
  void* out;  // (N, Hq, L, Ev), contiguous, storage type
  void* lse;  // (N, Hq, L), compute type: log-sum-exp of the scaled, masked scores (-inf: no visible key)
};

// grad_out in the storage type; everything else in the compute type.
struct BackwardArgs {
  Problem p;
  const void* grad_out;  // (N, Hq, L, Ev), contiguous
  const void* lse;       // (N, Hq, L)
  const void* delta;     // (N, Hq, L): rowsum(grad_out * out) - grad_lse
  // dQ accumulators: (chunks, N, Hq, L, E), contiguous and zeroed; key blocks
  // are dealt round-robin to `chunks` tasks per key/value head, chunk c
  // accumulating into slice c (no two threads touch the same dQ row).
  void* grad_q;
  int64_t chunks;
  void* grad_k;     // (N, Hk, S, E), contiguous, zeroed
  void* grad_v;     // (N, Hk, S, Ev), contiguous, zeroed
  void* grad_mask;  // (N, Hq, L, S) contiguous zeroed, or nullptr: d loss / d score
  bool need_q, need_k, need_v;
};

struct KernelTable {
  void (*forward)(const ForwardArgs&);
  void (*backward)(const BackwardArgs&);
  const char* isa;
};

KernelTable kernel_table_DEFAULT();
KernelTable kernel_table_AVX2();
KernelTable kernel_table_AVX512();

const KernelTable& kernel_for_this_cpu();

}  // namespace attention_cpu
}  // namespace pydl
