// double instantiation of the CUDA-core attention kernels (one file per dtype
// so the build compiles them in parallel).
#include "attention/cuda/attention_simt.cuh"

namespace pydl {
namespace attention_cuda {
template <>
void simt_forward<double>(const ForwardArgs& a, cudaStream_t stream) {
  simt::forward<double>(a, stream);
}
template <>
void simt_backward<double>(const BackwardArgs& a, cudaStream_t stream) {
  simt::backward<double>(a, stream);
}
}  // namespace attention_cuda
}  // namespace pydl
