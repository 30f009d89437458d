// __half instantiation of the CUDA-core attention kernels (one file per dtype
// so the build compiles them in parallel).
#include "attention/cuda/attention_simt.cuh"

namespace pydl {
namespace attention_cuda {
template <>
void simt_forward<__half>(const ForwardArgs& a, cudaStream_t stream) {
  simt::forward<__half>(a, stream);
}
template <>
void simt_backward<__half>(const BackwardArgs& a, cudaStream_t stream) {
  simt::backward<__half>(a, stream);
}
}  // namespace attention_cuda
}  // namespace pydl
