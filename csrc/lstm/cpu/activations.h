// The LSTM gate activations on at::vec vectors, per CPU ISA (included by
// lstm_cpu_kernel_isa.cpp and fused_step.h only).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <type_traits>

namespace pydl {
namespace lstm_cpu {
namespace CPU_CAPABILITY {

// exp for the gates. Float: at::vec's exp_u20 (a degree-5 polynomial, <= 20
// ulp, ~1e-6 relative) instead of Sleef's 1-ulp exp, which took 4% of a
// batch-8, hidden-256 sequence (five exps per unit and row); a gate's value
// is then off by ~1e-6 relative, far inside float32 LSTM tolerances.
template <typename T>
inline at::vec::Vectorized<T> gate_exp(at::vec::Vectorized<T> x) {
  if constexpr (std::is_same_v<T, float>) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}

// NaN stays NaN, as in torch: exp_u20 clamps its argument (NaN included) to
// a finite range and the tanh below selects by comparisons a NaN fails, so
// without this a NaN input or state came out as a finite number.
template <typename T>
inline at::vec::Vectorized<T> keep_nan(at::vec::Vectorized<T> result, at::vec::Vectorized<T> x) {
  return at::vec::Vectorized<T>::blendv(result, x, x != x);
}

template <typename T>
inline at::vec::Vectorized<T> sigmoid(at::vec::Vectorized<T> x) {
  const auto one = at::vec::Vectorized<T>(T(1));
  return keep_nan(one / (one + gate_exp<T>(x.neg())), x);
}

// tanh. For float not through at::vec's tanh (Sleef's tanhf16_u10 took 11% of
// a whole LSTM step at batch 8, hidden 256, against under 1% for three exps):
// a Taylor polynomial where |x| < 0.25 (error < 1e-8 relative), and
// 1 - 2 / (exp(2|x|) + 1) above (a few ulp: no cancellation at |tanh| > 0.24).
template <typename T>
inline at::vec::Vectorized<T> tanh_act(at::vec::Vectorized<T> x) {
  if constexpr (std::is_same_v<T, float>) {
    using V = at::vec::Vectorized<float>;
    const V one(1.f), two(2.f);
    const V ax = x.abs();
    const V tail = one - two / (gate_exp<float>(ax + ax) + one);
    const V x2 = x * x;
    V p(62.f / 2835.f);
    p = at::vec::fmadd(p, x2, V(-17.f / 315.f));
    p = at::vec::fmadd(p, x2, V(2.f / 15.f));
    p = at::vec::fmadd(p, x2, V(-1.f / 3.f));
    p = at::vec::fmadd(p, x2, one);
    const V near_zero = x * p;
    const V signed_tail = V::blendv(tail.neg(), tail, x >= V(0.f));
    return keep_nan(V::blendv(signed_tail, near_zero, ax < V(0.25f)), x);
  } else {
    return x.tanh();
  }
}

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

}  // namespace CPU_CAPABILITY
}  // namespace lstm_cpu
}  // namespace pydl
