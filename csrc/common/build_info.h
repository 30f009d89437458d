// What this binary was built with, reported through torch.ops.pydl.build_info
// so that pydl.info() can detect a build made for another torch.
// setup.py generates pydl_build_config.h (PYDL_TORCH_VERSION) and defines
// PYDL_WITH_CUDA when it builds the CUDA kernels.
#pragma once

#include <string>

#include "pydl_build_config.h"

namespace pydl {

inline std::string build_info_string() {
  std::string s = "torch=" PYDL_TORCH_VERSION;
#ifdef PYDL_WITH_CUDA
  s += ";cuda=1";
#else
  s += ";cuda=0";
#endif
  return s;
}

}  // namespace pydl
