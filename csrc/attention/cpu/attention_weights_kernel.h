// Interface of the attention-with-weights CPU kernel (the path behind
// MultiheadAttention's need_weights=True), compiled once per CPU ISA
// (attention_weights_kernel_isa.cpp). Unlike the flash kernel it works on
// whole score rows: the caller asked for the L x S weights, so a task holds a
// block of full rows in cache, normalizes them exactly once, writes (or
// head-averages) them, and multiplies them by V — no online rescaling, and in
// the backward the softmax row term comes from the row itself.
#pragma once

#include <cstdint>

#include "attention/cpu/attention_cpu_kernel.h"

namespace pydl {
namespace attention_cpu {
namespace weights {

struct ForwardArgs {
  Problem p;        // block_q: rows per task; block_k unused
  void* out;        // (N, Hq, L, Ev), contiguous
  void* lse;        // (N, Hq, L)
  void* weights;    // (N, L, S) when average_heads, else (N, Hq, L, S); contiguous
  bool average_heads;
};

struct BackwardArgs {
  Problem p;                  // block_q: rows per task
  const void* grad_out;       // (N, Hq, L, Ev) contiguous, or nullptr (no gradient)
  const void* grad_weights;   // the weights' layout, contiguous, or nullptr
  bool average_heads;
  const void* lse;            // (N, Hq, L)
  void* grad_q;               // (N, Hq, L, E), contiguous (every row written)
  // dK / dV accumulators (chunks, N, Hk, S, E|Ev), contiguous and zeroed: query
  // blocks are dealt round-robin to `chunks` tasks per key/value head.
  void* grad_k;
  void* grad_v;
  int64_t chunks;
  void* grad_mask;            // (N, Hq, L, S) contiguous zeroed, or nullptr
  bool need_q, need_k, need_v;
};

struct KernelTable {
  void (*forward)(const ForwardArgs&);
  void (*backward)(const BackwardArgs&);
};

KernelTable kernel_table_DEFAULT();
KernelTable kernel_table_AVX2();
KernelTable kernel_table_AVX512();

const KernelTable& kernel_for_this_cpu();

}  // namespace weights
}  // namespace attention_cpu
}  // namespace pydl
