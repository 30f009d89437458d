// The attention dropout keep decisions as a bool tensor
// (attention_dropout_keep on the CPU), compiled once per CPU ISA
// (dropout_mask_kernel_isa.cpp) so the Philox rounds run vectorized, as in
// the flash and weights kernels (dropout_keep_simd.h).
#pragma once

#include <cstdint>

namespace pydl {
namespace attention_cpu {
namespace keep_mask {

struct KernelTable {
  // keep[r * cols + c] = whether weight (head_row r, column c) survives, for
  // r < rows; head_row = (n * heads + h) * query_len + i.
  void (*fill)(bool* keep, int64_t rows, int64_t cols, uint64_t seed, double dropout_p);
};

KernelTable kernel_table_DEFAULT();
KernelTable kernel_table_AVX2();
KernelTable kernel_table_AVX512();

const KernelTable& kernel_for_this_cpu();

}  // namespace keep_mask
}  // namespace attention_cpu
}  // namespace pydl
