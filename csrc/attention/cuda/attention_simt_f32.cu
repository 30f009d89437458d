// float instantiation of the CUDA-core attention kernels (one file per dtype
// so the build compiles them in parallel).
#include "attention/cuda/attention_simt.cuh"

namespace pydl {
namespace attention_cuda {
template <>
void simt_forward<float>(const ForwardArgs& a, cudaStream_t stream) {
  simt::forward<float>(a, stream);
}
template <>
void simt_backward<float>(const BackwardArgs& a, cudaStream_t stream) {
  simt::backward<float>(a, stream);
}
}  // namespace attention_cuda
}  // namespace pydl
