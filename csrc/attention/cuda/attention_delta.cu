// The backward's row term delta_i = rowsum(dO_i * O_i) - dlse_i (the softmax
// backward's correction, with the lse gradient folded in: d lse_i / d s_ij =
// P_ij), in the accumulator type: one warp per row, read once.
#include <c10/cuda/CUDAException.h>

#include "attention/cuda/attention_kernels.h"
#include "common/cuda_launch.cuh"
#include "common/cuda_storage.cuh"

namespace pydl {
namespace attention_cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

template <typename T>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    delta_kernel(const T* grad_out, const T* out, const typename Acc<T>::type* grad_lse,
                 typename Acc<T>::type* delta, int64_t rows, int dim) {
  using AccT = typename Acc<T>::type;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;  // whole warps leave together
  const T* go = grad_out + row * dim;
  const T* o = out + row * dim;
  AccT sum = AccT(0);
  for (int c = lane; c < dim; c += 32) sum += to_acc(go[c]) * to_acc(o[c]);
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0) delta[row] = sum - (grad_lse ? grad_lse[row] : AccT(0));
}

}  // namespace

template <typename T>
void row_delta(const T* grad_out, const T* out, const void* grad_lse, void* delta, int64_t rows,
               int dim, cudaStream_t stream) {
  using AccT = typename Acc<T>::type;
  if (rows == 0) return;
  const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  auto kernel = delta_kernel<T>;
  PYDL_LAUNCH_KERNEL(kernel, static_cast<unsigned>(blocks), 32 * kWarpsPerBlock, 0, stream,
                     grad_out, out, static_cast<const AccT*>(grad_lse), static_cast<AccT*>(delta),
                     rows, dim);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void row_delta<__half>(const __half*, const __half*, const void*, void*, int64_t, int,
                                cudaStream_t);
template void row_delta<__nv_bfloat16>(const __nv_bfloat16*, const __nv_bfloat16*, const void*,
                                       void*, int64_t, int, cudaStream_t);
template void row_delta<float>(const float*, const float*, const void*, void*, int64_t, int,
                               cudaStream_t);
template void row_delta<double>(const double*, const double*, const void*, void*, int64_t, int,
                                cudaStream_t);

}  // namespace attention_cuda
}  // namespace pydl
