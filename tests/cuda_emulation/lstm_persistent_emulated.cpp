// The persistent LSTM kernels (csrc/lstm/cuda/lstm_persistent.cu) for the
// emulator; its cooperative launch passes the kernel as void*, so each
// instantiation is registered with its signature.
#include "lstm/cuda/lstm_persistent.cu"

namespace {
const bool registered = [] {
  using pydl::emulation::register_cooperative_kernel;
  using namespace pydl::lstm_cuda;
  register_cooperative_kernel(persistent_forward_kernel<float, false>);
  register_cooperative_kernel(persistent_forward_kernel<__half, false>);
  register_cooperative_kernel(persistent_forward_kernel<__nv_bfloat16, false>);
  register_cooperative_kernel(persistent_backward_kernel<float, false>);
  register_cooperative_kernel(persistent_backward_kernel<__half, false>);
  register_cooperative_kernel(persistent_backward_kernel<__nv_bfloat16, false>);
  // The tagged exchange (PYDL_LSTM_TAGGED_EXCHANGE=1).
  register_cooperative_kernel(persistent_forward_kernel<float, true>);
  register_cooperative_kernel(persistent_forward_kernel<__half, true>);
  register_cooperative_kernel(persistent_forward_kernel<__nv_bfloat16, true>);
  register_cooperative_kernel(persistent_backward_kernel<float, true>);
  register_cooperative_kernel(persistent_backward_kernel<__half, true>);
  register_cooperative_kernel(persistent_backward_kernel<__nv_bfloat16, true>);
  return true;
}();
}  // namespace
