// keep_mask::KernelTable for one CPU ISA (see dropout_mask_kernel.h).
#include <ATen/Parallel.h>

#include <algorithm>

#include "attention/cpu/dropout_keep_simd.h"
#include "attention/cpu/dropout_mask_kernel.h"
#include "common/cpu_isa.h"

namespace pydl {
namespace attention_cpu {
namespace CPU_CAPABILITY {
namespace {

void fill(bool* keep, int64_t rows, int64_t cols, uint64_t seed, double dropout_p) {
  // About 32k weights per task: one Philox call serves four of them.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    // The generator code the kernels run, so the same decisions; as bool its
    // keep factor 1 / (1 - p) reads true and 0 false.
    for (int64_t r = r0; r < r1; ++r) {
      dropout_keep_row_simd(keep + r * cols, cols, seed, static_cast<uint64_t>(r), 0, dropout_p);
    }
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY

namespace keep_mask {
KernelTable PYDL_ISA_TABLE_FN() { return {&CPU_CAPABILITY::fill}; }
}  // namespace keep_mask

}  // namespace attention_cpu
}  // namespace pydl
