// Kernel launches and dynamic shared memory, spelled as macros so the same
// kernel source also compiles for the CPU emulator of the CUDA execution
// model that the tests use to run these kernels without a GPU
// (tests/cuda_emulation; it defines PYDL_CUDA_EMULATION and both macros).
#pragma once

#ifdef PYDL_CUDA_EMULATION
#include "cuda_emulator.h"
#else
// kernel<<<grid, block, smem_bytes, stream>>>(args...)
#define PYDL_LAUNCH_KERNEL(kernel, grid, block, smem_bytes, stream, ...) \
  kernel<<<grid, block, smem_bytes, stream>>>(__VA_ARGS__)
// The block's dynamic shared memory as `type name[]`, 16-byte aligned.
#define PYDL_DYNAMIC_SMEM(type, name) extern __shared__ __align__(16) type name[]
#endif
