// Host-side launch helpers shared by the attention kernels.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include "common/cuda_launch.cuh"

namespace pydl {
namespace attention_cuda {

// Raises a kernel's dynamic shared-memory limit to `bytes` on the current
// device, once (and again only for a larger size): the driver call then stays
// out of the hot path and out of CUDA-graph capture, whose warm-up call sets it.
inline void allow_dynamic_smem(const void* kernel, int bytes) {
  if (bytes <= 48 * 1024) return;  // the default limit
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int> granted;
  const std::lock_guard<std::mutex> lock(mutex);
  int& limit = granted[{kernel, device}];
  if (limit >= bytes) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  limit = bytes;
}

// The most dynamic shared memory a block may opt in to on the current device.
inline int max_smem_optin() {
  int device = 0, bytes = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return bytes;
}

// Launches kernel(args) on a (heads, ceil(len / rows_per_cta)) grid of
// `threads`-thread blocks with `smem` bytes of dynamic shared memory each,
// raising the kernel's limit first; `dim` names the length in the error
// ("L", "S"). Nothing is launched when there are no heads or no rows.
template <typename Args>
void launch_over_rows(void (*kernel)(Args), int64_t heads, int64_t len, int rows_per_cta,
                      int threads, int smem, const char* dim, const Args& args,
                      cudaStream_t stream) {
  const int64_t blocks = (len + rows_per_cta - 1) / rows_per_cta;
  TORCH_CHECK(blocks <= 65535, "pydl.attention (CUDA): ", dim, " = ", len, " is too long");
  if (heads == 0 || blocks == 0) return;
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
  PYDL_LAUNCH_KERNEL(kernel, dim3(static_cast<unsigned>(heads), static_cast<unsigned>(blocks)),
                     threads, smem, stream, args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace attention_cuda
}  // namespace pydl
