// Fused-epilogue activations shared by every kernel (CPU and CUDA).
//
// The op schemas take the activation as a string; kernels switch on this enum
// once per call (never per element), and the scalar functions below are the
// single definition of each activation and of its derivative.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <string>

namespace pydl {

enum class Activation : int { None = 0, Relu = 1, Gelu = 2, GeluTanh = 3, Silu = 4 };

inline Activation parse_activation(c10::string_view name) {
  if (name == "none" || name.empty()) return Activation::None;
  if (name == "relu") return Activation::Relu;
  if (name == "gelu") return Activation::Gelu;
  if (name == "gelu_tanh") return Activation::GeluTanh;
  if (name == "silu") return Activation::Silu;
  TORCH_CHECK(false, "pydl: unknown activation '", std::string(name),
              "'; expected one of none, relu, gelu, gelu_tanh, silu");
}

// y = act(z). Written for float/double; CUDA kernels call it with float.
template <typename T>
C10_HOST_DEVICE inline T apply_activation(Activation act, T z) {
  switch (act) {
    case Activation::Relu:
      return z > T(0) ? z : T(0);
    case Activation::Gelu:
      return T(0.5) * z * (T(1) + ::erf(z * T(0.70710678118654752440)));
    case Activation::GeluTanh: {
      const T inner = T(0.79788456080286535588) * (z + T(0.044715) * z * z * z);
      return T(0.5) * z * (T(1) + ::tanh(inner));
    }
    case Activation::Silu:
      return z / (T(1) + ::exp(-z));
    case Activation::None:
    default:
      return z;
  }
}

// d act(z) / dz.
template <typename T>
C10_HOST_DEVICE inline T activation_derivative(Activation act, T z) {
  switch (act) {
    case Activation::Relu:
      return z > T(0) ? T(1) : T(0);
    case Activation::Gelu: {
      const T cdf = T(0.5) * (T(1) + ::erf(z * T(0.70710678118654752440)));
      const T pdf = ::exp(T(-0.5) * z * z) * T(0.39894228040143267794);
      return cdf + z * pdf;
    }
    case Activation::GeluTanh: {
      const T k = T(0.79788456080286535588);
      const T inner = k * (z + T(0.044715) * z * z * z);
      const T t = ::tanh(inner);
      const T dinner = k * (T(1) + T(3) * T(0.044715) * z * z);
      return T(0.5) * (T(1) + t) + T(0.5) * z * (T(1) - t * t) * dinner;
    }
    case Activation::Silu: {
      const T s = T(1) / (T(1) + ::exp(-z));
      return s * (T(1) + z * (T(1) - s));
    }
    case Activation::None:
    default:
      return T(1);
  }
}

}  // namespace pydl
