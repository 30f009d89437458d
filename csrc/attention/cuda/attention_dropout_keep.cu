// The attention dropout keep decisions as a bool tensor on the GPU
// (attention_dropout_keep): one thread per group of four columns of a score
// row, i.e. per Philox call, exactly as the attention kernels draw them.
#include <c10/cuda/CUDAException.h>

#include "attention/cuda/attention_kernels.h"
#include "attention/dropout_philox.h"
#include "common/cuda_launch.cuh"

namespace pydl {
namespace attention_cuda {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    keep_mask_kernel(bool* keep, const int64_t* seed, int64_t rows, int64_t cols,
                     uint32_t threshold) {
  const int64_t groups_per_row = (cols + 3) / 4;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= rows * groups_per_row) return;
  const int64_t row = idx / groups_per_row, group = idx - row * groups_per_row;
  uint32_t words[4];
  attention_dropout::keep_words(words, static_cast<uint64_t>(*seed), static_cast<uint64_t>(row),
                                static_cast<uint64_t>(group));
  bool* out = keep + row * cols + 4 * group;
  const int64_t valid = cols - 4 * group;  // the row's last group may be short
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    if (w < valid) out[w] = attention_dropout::is_kept(words[w], threshold);
  }
}

}  // namespace

void dropout_keep_mask(bool* keep, const int64_t* seed, int64_t rows, int64_t cols,
                       uint32_t threshold, cudaStream_t stream) {
  const int64_t threads = rows * ((cols + 3) / 4);
  if (threads == 0) return;
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  PYDL_LAUNCH_KERNEL(keep_mask_kernel, static_cast<unsigned>(blocks), kThreads, 0, stream, keep,
                     seed, rows, cols, threshold);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace attention_cuda
}  // namespace pydl
