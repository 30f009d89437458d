// The CUDA LSTM entry (csrc/lstm/lstm_cuda.cu: the cuBLAS-loop layer, the
// cell, and the choice of the persistent kernel) compiled for the emulator,
// registered as ops of `pydl_emulated` that take CPU tensors. at::mm and
// friends run on the CPU where the GPU build calls cuBLAS.
#include "lstm/lstm_cuda.cu"

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pydl_emulated, m) {
  m.def(
      "lstm_cell(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh) -> (Tensor, Tensor, Tensor)");
  m.def(
      "lstm_cell_backward(Tensor grad_hy, Tensor grad_cy, Tensor input, Tensor hx, Tensor cx, "
      "Tensor cy, Tensor workspace, Tensor w_ih, Tensor w_hh, bool[6] output_mask) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lstm_layer(Tensor input, Tensor batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lstm_layer_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, Tensor input, "
      "Tensor batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? w_hr, "
      "Tensor output, Tensor gates, Tensor cells, Tensor hidden_pre, bool reverse, "
      "bool[7] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pydl_emulated, CPU, m) {
  m.impl("lstm_cell", &pydl::lstm_cuda::lstm_cell_cuda);
  m.impl("lstm_cell_backward", &pydl::lstm_cuda::lstm_cell_backward_cuda);
  m.impl("lstm_layer", &pydl::lstm_cuda::lstm_layer_cuda);
  m.impl("lstm_layer_backward", &pydl::lstm_cuda::lstm_layer_backward_cuda);
}
