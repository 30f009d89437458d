// Depthwise conv2d forward (groups == C == Cout), direct, NHWC.
//
// One thread computes 4 consecutive channels of one output pixel; consecutive
// threads take consecutive channel groups, so a warp reads 128 contiguous
// channels of each input pixel. The weight comes transposed to [KH*KW, C] so
// its reads are contiguous too. kVec: C % 4 == 0 and 4-element-aligned
// pointers, so each access is one vector load / store.
#include <c10/cuda/CUDAException.h>

#include "conv2d_common.cuh"

namespace pydl {
namespace conv_cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kCPT = 4;  // channels per thread

template <typename T>
struct alignas(kCPT * sizeof(T)) Quad {
  T v[kCPT];
};

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) conv2d_depthwise_kernel(const ConvParams p) {
  using A = typename Acc<T>::type;
  const T* __restrict__ in = static_cast<const T*>(p.input);
  const T* __restrict__ wt = static_cast<const T*>(p.weight);
  const T* __restrict__ bias = static_cast<const T*>(p.bias);
  const T* __restrict__ res = static_cast<const T*>(p.residual);
  T* __restrict__ out = static_cast<T*>(p.output);
  const Activation act = static_cast<Activation>(p.activation);

  const int C = p.C;
  const int cgroups = (C + kCPT - 1) / kCPT;
  const int64_t total = p.M * cgroups;
  const int64_t hw = static_cast<int64_t>(p.OH) * p.OW;

  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int c0 = static_cast<int>(idx % cgroups) * kCPT;
    const int64_t pix = idx / cgroups;
    const int64_t img = pix / hw;
    const int rem = static_cast<int>(pix - img * hw);
    const int oh = rem / p.OW;
    const int ow = rem - oh * p.OW;
    const int ih0 = oh * p.stride_h - p.pad_h;
    const int iw0 = ow * p.stride_w - p.pad_w;
    const int64_t img_base = img * p.H * p.W * C + c0;

    A acc[kCPT];
#pragma unroll
    for (int j = 0; j < kCPT; ++j) acc[j] = A(0);

    for (int r = 0; r < p.KH; ++r) {
      const int ih = ih0 + r * p.dil_h;
      if (static_cast<unsigned>(ih) >= static_cast<unsigned>(p.H)) continue;
      for (int s = 0; s < p.KW; ++s) {
        const int iw = iw0 + s * p.dil_w;
        if (static_cast<unsigned>(iw) >= static_cast<unsigned>(p.W)) continue;
        const T* xp = in + img_base + (static_cast<int64_t>(ih) * p.W + iw) * C;
        const T* wp = wt + static_cast<int64_t>(r * p.KW + s) * C + c0;
        if (kVec) {
          const Quad<T> xv = *reinterpret_cast<const Quad<T>*>(xp);
          const Quad<T> wv = *reinterpret_cast<const Quad<T>*>(wp);
#pragma unroll
          for (int j = 0; j < kCPT; ++j) acc[j] = fma(to_acc(xv.v[j]), to_acc(wv.v[j]), acc[j]);
        } else {
#pragma unroll
          for (int j = 0; j < kCPT; ++j)
            if (c0 + j < C) acc[j] = fma(to_acc(xp[j]), to_acc(wp[j]), acc[j]);
        }
      }
    }

    const int64_t o = pix * C + c0;
    if (kVec) {
      Quad<T> q;
#pragma unroll
      for (int j = 0; j < kCPT; ++j)
        q.v[j] = from_acc<T>(epilogue<T, A>(acc[j], bias, res, c0 + j, o + j, act));
      *reinterpret_cast<Quad<T>*>(out + o) = q;
    } else {
#pragma unroll
      for (int j = 0; j < kCPT; ++j)
        if (c0 + j < C) out[o + j] = from_acc<T>(epilogue<T, A>(acc[j], bias, res, c0 + j, o + j, act));
    }
  }
}

template <typename T>
void launch_typed(const ConvParams& p, bool vec, cudaStream_t stream) {
  const int64_t total = p.M * ((p.C + kCPT - 1) / kCPT);
  const int64_t blocks = std::min<int64_t>(ceil_div(total, kThreads), int64_t(1) << 20);
  if (vec) {
    conv2d_depthwise_kernel<T, true><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  } else {
    conv2d_depthwise_kernel<T, false><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void launch_depthwise(const ConvParams& p, DType dtype, bool vec, cudaStream_t stream) {
  switch (dtype) {
    case DType::Half: launch_typed<__half>(p, vec, stream); break;
    case DType::BFloat16: launch_typed<__nv_bfloat16>(p, vec, stream); break;
    case DType::Float: launch_typed<float>(p, vec, stream); break;
    case DType::Double: launch_typed<double>(p, vec, stream); break;
  }
}

}  // namespace conv_cuda
}  // namespace pydl
