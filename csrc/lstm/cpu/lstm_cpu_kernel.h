// Interface between the LSTM CPU entry points (lstm_cpu.cpp) and the fused
// pointwise loops, compiled once per CPU ISA (lstm_cpu_kernel_isa.cpp).
#pragma once

#include <cstdint>

namespace pydl {
namespace lstm_cpu {

// Gate order (i, f, g, o), as torch.nn.LSTM / LSTMCell.
struct CellForwardArgs {
  int64_t batch, hidden;
  bool is_double;
  void* gates;       // [B, 4H] pre-activations (without bias) in; activated gates out
                     // (the backward's workspace)
  const void* b_ih;  // [4H] or nullptr; added here rather than by a separate op
  const void* b_hh;  // [4H] or nullptr
  const void* cx;    // [B, H]
  void* hy;          // [B, H]
  void* cy;          // [B, H]
};

struct CellBackwardArgs {
  int64_t batch, hidden;
  bool is_double;
  const void* grad_hy;    // [B, H]
  const void* grad_h_extra;  // [B, H] added to grad_hy, or nullptr (a sequence's
                             // output gradient beside the recurrent one)
  const void* grad_cy;    // [B, H]; may alias grad_cx (read before written)
  const void* cx;         // [B, H]
  const void* cy;         // [B, H]
  const void* workspace;  // [B, 4H] activated gates
  void* grad_gates;       // [B, 4H] gradient w.r.t. the pre-activations
  void* grad_cx;          // [B, H]
};

// c (rows x n) (+)= a (rows x k) @ b (k x n), row-major and contiguous: the
// per-step products of a small batch (see small_matmul.h).
struct SmallMatmulArgs {
  int64_t rows, n, k;
  bool is_double;
  const void* a;
  const void* b;
  void* c;
  bool accumulate;  // c += a @ b, else c = a @ b
};

struct KernelTable {
  void (*cell_forward)(const CellForwardArgs&);
  void (*cell_backward)(const CellBackwardArgs&);
  void (*small_matmul)(const SmallMatmulArgs&);
  const char* isa;
};

KernelTable kernel_table_DEFAULT();
KernelTable kernel_table_AVX2();
KernelTable kernel_table_AVX512();

const KernelTable& kernel_for_this_cpu();

}  // namespace lstm_cpu
}  // namespace pydl
