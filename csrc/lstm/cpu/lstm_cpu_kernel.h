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

// The per-step products of a small batch (see small_matmul.h):
// c (rows x n) (+)= a (rows x k) @ B, with B (k x n) prepacked into column
// panels by `pack` (B(p, j) read from b[p * stride_k + j * stride_n]).
struct PackArgs {
  int64_t k, n, stride_k, stride_n;
  bool is_double;
  const void* b;
  void* out;  // packed_size(k, n, is_double) elements
};

struct SmallMatmulArgs {
  int64_t rows, n, k;
  bool is_double;
  const void* a;       // (rows x k), contiguous
  const void* packed;  // B packed by `pack`
  void* c;             // (rows x n), contiguous
  bool accumulate;     // c += a @ B, else c = a @ B
};

// A whole sequence for a small batch without projection (see fused_step.h):
// per step the recurrent product on gate-interleaved panels and the pointwise
// math in one pass, the time loop inside one parallel region.
struct FusedSequenceArgs {
  int64_t steps;              // non-empty steps, in the order they run
  const int64_t* rows;        // [steps] rows of each
  const int64_t* row_offset;  // [steps] its first packed row
  const int64_t* ended_from;  // [steps] rows [ended_from, rows) end there: h -> hy
  int64_t batch, hidden;
  bool is_double;
  const void* w_hh;    // (4H, H) row-major
  void* panels;        // gate_panels_size(H, H) elements: w_hh packed by the kernel
  void* gates;         // (N, 4H): input projection in (or computed from x), activated gates out
  const void* x;       // (N, I) or nullptr: the kernel computes the input projection itself
  int64_t x_rows, input_size;
  const void* w_ih;    // (4H, I) row-major, with x
  void* panels_ih;     // gate_panels_size(H, I) elements, with x: w_ih packed by the kernel
  const void* b_ih;    // (4H) or nullptr
  const void* b_hh;    // (4H) or nullptr
  void* c_state;       // (B, H): c0 in, each row's last c out
  void* cells;         // (N, H): c out
  void* output;        // (N, H): h out
  void* h_buffers;     // (2, B, H): h0 in both
  void* hy;            // (B, H): each row's last h out
};

// The cell's products for a few rows without MKL (see row_dot_matmul.h and
// weight_grad_matmul.h); every pointer contiguous.
// gates (B, 4H) = x (B, I) @ w_ih^T + h (B, H) @ w_hh^T.
// A whole cell step for a few rows: gates = x @ w_ih^T + h @ w_hh^T by the
// register kernel, then CellForwardArgs' pointwise pass, in one parallel
// region (each thread owns a range of hidden units, all four gates of them).
struct CellStepArgs {
  int64_t batch, input_size, hidden;
  bool is_double;
  const void* x;     // (B, I)
  const void* h;     // (B, H)
  const void* w_ih;  // (4H, I)
  const void* w_hh;  // (4H, H)
  CellForwardArgs pointwise;  // its gates: (B, 4H) out, the activated gates
};

// grad_w (n, k) = grad_gates (rows, n)^T @ a (rows, k) for `count` (1 or
// 2) operands sharing grad_gates, in one parallel region; rows, n, k >= 1.
struct WeightGradOperand {
  int64_t k;
  const void* a;
  void* grad_w;
};

struct WeightGradArgs {
  int64_t rows, n;
  bool is_double;
  const void* grad_gates;
  WeightGradOperand operands[2];
  int count;
};

struct KernelTable {
  void (*cell_forward)(const CellForwardArgs&);
  void (*cell_backward)(const CellBackwardArgs&);
  void (*cell_step)(const CellStepArgs&);
  void (*weight_grad)(const WeightGradArgs&);
  // out (n) = the sum of src's rows (rows x n).
  void (*column_sums)(int64_t rows, int64_t n, bool is_double, const void* src, void* out);
  int64_t (*packed_size)(int64_t k, int64_t n, bool is_double);
  void (*pack)(const PackArgs&);
  void (*small_matmul)(const SmallMatmulArgs&);
  // Elements of fused_sequence's packed w_hh.
  int64_t (*gate_panels_size)(int64_t hidden, int64_t k, bool is_double);
  void (*fused_sequence)(const FusedSequenceArgs&);
  const char* isa;
};

KernelTable kernel_table_DEFAULT();
KernelTable kernel_table_AVX2();
KernelTable kernel_table_AVX512();

const KernelTable& kernel_for_this_cpu();

}  // namespace lstm_cpu
}  // namespace pydl
