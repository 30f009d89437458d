// The CUDA LSTM entry (csrc/lstm/lstm_cuda.cu: the cuBLAS-loop layer, the
// cell, and the choice of the persistent kernel) compiled for the emulator,
// registered as ops of `pydl_emulated` that take CPU tensors. at::mm and
// friends run on the CPU where the GPU build calls cuBLAS.
#include "lstm/lstm_cuda.cu"

#include <torch/library.h>

#include "op_schemas.h"

TORCH_LIBRARY_FRAGMENT(pydl_emulated, m) {
  m.def(pydl::schema::kLstmCell);
  m.def(pydl::schema::kLstmCellBackward);
  m.def(pydl::schema::kLstmLayer);
  m.def(pydl::schema::kLstmLayerBackward);
}

TORCH_LIBRARY_IMPL(pydl_emulated, CPU, m) {
  m.impl("lstm_cell", &pydl::lstm_cuda::lstm_cell_cuda);
  m.impl("lstm_cell_backward", &pydl::lstm_cuda::lstm_cell_backward_cuda);
  m.impl("lstm_layer", &pydl::lstm_cuda::lstm_layer_cuda);
  m.impl("lstm_layer_backward", &pydl::lstm_cuda::lstm_layer_backward_cuda);
}
