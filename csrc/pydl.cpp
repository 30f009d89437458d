// The pydl op library: the schemas (op_schemas.h, with what each op does)
// and a few build facts. Kernels register per backend in
// csrc/<family>/*_cpu.cpp and *_cuda.cu; Python entry points live in
// pydl/ops/<family>.py.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "attention/cpu/tile_gemm.h"
#include "common/blas.h"
#include "common/build_info.h"
#include "op_schemas.h"
#include "conv/cpu/conv2d_cpu_kernel.h"

// A stub module init: the library registers its ops with the dispatcher when
// the .so is loaded; no pybind11 module state is needed.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace {
std::string build_info_op() { return pydl::build_info_string(); }
std::string mkl_code_path_op() {
  if (MKL_Set_Num_Threads_Local == nullptr) return "none";
  return pydl::mkl_runs_generic_code() ? "generic" : "tuned";
}
}  // namespace

TORCH_LIBRARY(pydl, m) {
  // Build facts as "key=value;..." (torch version built against, CUDA, CPU ISAs).
  m.def("build_info() -> str", &build_info_op);
  // Which per-ISA build of the CPU conv2d loops this machine runs.
  m.def("conv2d_cpu_isa() -> str", &pydl::conv_cpu::selected_isa);
  // "tuned" / "generic" (MKL on a processor it gives its generic code: not
  // an Intel one; the CPU LSTM's step products then all take pydl's register
  // kernel) / "none" (another BLAS).
  m.def("mkl_code_path() -> str", &mkl_code_path_op);
  // Whether libtorch exports MKL's bf16 GEMM (the CPU bf16 attention tiles need it).
  m.def("cpu_bf16_gemm_available() -> bool", &pydl::attention_cpu::bf16_gemm_available);

  m.def(pydl::schema::kConv2d);
  m.def(pydl::schema::kConv2dBackward);

  m.def(pydl::schema::kLstmCell);
  m.def(pydl::schema::kLstmCellBackward);

  m.def(pydl::schema::kLstmLayer);
  m.def(pydl::schema::kLstm);
  m.def(pydl::schema::kLstmLayerBackward);

  m.def(pydl::schema::kAttention);
  m.def(pydl::schema::kAttentionBackward);
  m.def(pydl::schema::kAttentionWithWeights);
  m.def(pydl::schema::kAttentionWithWeightsBackward);
  m.def(pydl::schema::kAttentionDropoutKeep);
}
