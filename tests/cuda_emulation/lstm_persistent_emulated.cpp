// The persistent LSTM kernels (csrc/lstm/cuda/lstm_persistent.cu) for the
// emulator; its cooperative launch passes the kernel as void*, so each
// instantiation is registered with its signature.
#include "lstm/cuda/lstm_persistent.cu"

namespace {
const bool registered = [] {
  using pydl::emulation::register_cooperative_kernel;
  register_cooperative_kernel(pydl::lstm_cuda::persistent_forward_kernel<float>);
  register_cooperative_kernel(pydl::lstm_cuda::persistent_forward_kernel<__half>);
  register_cooperative_kernel(pydl::lstm_cuda::persistent_forward_kernel<__nv_bfloat16>);
  register_cooperative_kernel(pydl::lstm_cuda::persistent_backward_kernel<float>);
  register_cooperative_kernel(pydl::lstm_cuda::persistent_backward_kernel<__half>);
  register_cooperative_kernel(pydl::lstm_cuda::persistent_backward_kernel<__nv_bfloat16>);
  return true;
}();
}  // namespace
