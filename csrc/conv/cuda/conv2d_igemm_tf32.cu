// fp32 (TF32 tensor cores) instantiation of the tensor-core implicit GEMM (one file per dtype so
// the build compiles them in parallel).
#include "conv2d_igemm_tc.cuh"

namespace pydl {
namespace conv_cuda {
void launch_igemm_tc_tf32(const ConvParams& p, bool vec, cudaStream_t stream) {
  launch_igemm_tc<float>(p, vec, stream);
}
}  // namespace conv_cuda
}  // namespace pydl
