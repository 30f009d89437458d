// __half instantiations of the tensor-core attention backward, head dims 64 /
// 128 / 256 (one file per dtype so the build compiles them in parallel).
#include "attention/cuda/attention_tc_backward.cuh"

namespace pydl {
namespace attention_cuda {
template <>
void tc_backward<__half>(const BackwardArgs& a, int head_dim_bucket, cudaStream_t stream) {
  switch (head_dim_bucket) {
    case 64: tc::launch_backward<__half, 64>(a, stream); break;
    case 128: tc::launch_backward<__half, 128>(a, stream); break;
    default: tc::launch_backward<__half, 256>(a, stream); break;
  }
}
}  // namespace attention_cuda
}  // namespace pydl
