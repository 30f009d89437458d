// Host-side launch helpers shared by the attention kernels.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <utility>

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

}  // namespace attention_cuda
}  // namespace pydl
