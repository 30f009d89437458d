// The persistent LSTM kernels (csrc/lstm/cuda/lstm_persistent.cu) for the
// emulator; its cooperative launch passes the kernel as void*, so each
// instantiation is registered with its signature.
#include "lstm/cuda/lstm_persistent.cu"

namespace {
// Both kernels for the three storage types, with or without the tagged
// exchange (PYDL_LSTM_TAGGED_EXCHANGE=1).
template <bool kTagged>
void register_kernels() {
  using pydl::emulation::register_cooperative_kernel;
  using namespace pydl::lstm_cuda;
  register_cooperative_kernel(persistent_forward_kernel<float, kTagged>);
  register_cooperative_kernel(persistent_forward_kernel<__half, kTagged>);
  register_cooperative_kernel(persistent_forward_kernel<__nv_bfloat16, kTagged>);
  register_cooperative_kernel(persistent_backward_kernel<float, kTagged>);
  register_cooperative_kernel(persistent_backward_kernel<__half, kTagged>);
  register_cooperative_kernel(persistent_backward_kernel<__nv_bfloat16, kTagged>);
}

const bool registered = [] {
  register_kernels<false>();
  register_kernels<true>();
  return true;
}();
}  // namespace
