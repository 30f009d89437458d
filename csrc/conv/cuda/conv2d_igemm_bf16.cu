// bf16 instantiation of the tensor-core implicit GEMM (one file per dtype so
// the build compiles them in parallel).
#include "conv2d_igemm_tc.cuh"

namespace pydl {
namespace conv_cuda {
void launch_igemm_tc_bf16(const ConvParams& p, bool vec, cudaStream_t stream) {
  launch_igemm_tc<__nv_bfloat16>(p, vec, stream);
}
}  // namespace conv_cuda
}  // namespace pydl
