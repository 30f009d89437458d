// __nv_bfloat16 instantiation of the CUDA-core attention kernels (one file per dtype
// so the build compiles them in parallel).
#include "attention/cuda/attention_simt.cuh"

namespace pydl {
namespace attention_cuda {
template <>
void simt_forward<__nv_bfloat16>(const ForwardArgs& a, cudaStream_t stream) {
  simt::forward<__nv_bfloat16>(a, stream);
}
template <>
void simt_backward<__nv_bfloat16>(const BackwardArgs& a, cudaStream_t stream) {
  simt::backward<__nv_bfloat16>(a, stream);
}
}  // namespace attention_cuda
}  // namespace pydl
