// conv2d CUDA forward: the plain-C++ interface between the host code
// (conv2d_cuda.cu, which sees ATen) and the kernel files (which do not, so
// they compile quickly). All tensors are NHWC-contiguous; see conv2d_cuda.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace pydl {
namespace conv_cuda {

inline int64_t ceil_div_host(int64_t a, int64_t b) { return (a + b - 1) / b; }

enum class DType : int { Half = 0, BFloat16 = 1, Float = 2, Double = 3 };

struct ConvParams {
  const void* input;     // [N, H, W, C] contiguous
  const void* weight;    // implicit GEMM: [Cout, KH, KW, Cin_g]; depthwise: [KH*KW, C]
  const void* bias;      // [Cout] or nullptr
  const void* residual;  // [N, OH, OW, Cout] contiguous, or nullptr
  void* output;          // [N, OH, OW, Cout] contiguous

  int64_t M;  // N * OH * OW (output pixels)
  int64_t K;  // KH * KW * Cin_g
  int N, H, W, C;
  int OH, OW, Cout;
  int KH, KW;
  int stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int groups, cin_g, cout_g;
  int activation;  // pydl::Activation
};

// Implicit GEMM on tensor cores: fp16 / bf16 operands (fp32 accumulate) or
// fp32 operands rounded to TF32. `vec` selects 16-byte operand loads (needs
// Cin_g a multiple of 16 bytes worth of elements and 16-byte aligned bases).
void launch_igemm_tc_half(const ConvParams& p, bool vec, cudaStream_t stream);
void launch_igemm_tc_bf16(const ConvParams& p, bool vec, cudaStream_t stream);
void launch_igemm_tc_tf32(const ConvParams& p, bool vec, cudaStream_t stream);

// Implicit GEMM on CUDA cores, exact fp32 / fp64 arithmetic.
void launch_igemm_simt(const ConvParams& p, DType dtype, cudaStream_t stream);

// Depthwise (groups == C == Cout) direct convolution. `vec`: C % 4 == 0 and
// every pointer aligned to 4 elements.
void launch_depthwise(const ConvParams& p, DType dtype, bool vec, cudaStream_t stream);

}  // namespace conv_cuda
}  // namespace pydl
