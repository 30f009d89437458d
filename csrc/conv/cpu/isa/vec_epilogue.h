// Activations, the fused epilogue (bias + residual + activation) and its
// per-pixel / per-channel-run forms.
//
// Part of conv2d_cpu_kernel_isa.cpp, which includes it inside
// namespace pydl::conv_cpu::CPU_CAPABILITY (once per ISA): not a standalone
// header, and it includes nothing itself.
#pragma once

template <typename acc_t>
inline Vec<acc_t> activate(Activation act, Vec<acc_t> v) {
  using V = Vec<acc_t>;
  switch (act) {
    case Activation::Relu:
      return at::vec::maximum(v, V(acc_t(0)));
    case Activation::Gelu:
      return V(acc_t(0.5)) * v * (V(acc_t(1)) + (v * V(acc_t(0.70710678118654752440))).erf());
    case Activation::GeluTanh: {
      const V inner = V(acc_t(0.79788456080286535588)) * (v + V(acc_t(0.044715)) * v * v * v);
      return V(acc_t(0.5)) * v * (V(acc_t(1)) + inner.tanh());
    }
    case Activation::Silu:
      return v / (V(acc_t(1)) + v.neg().exp());
    case Activation::None:
    default:
      return v;
  }
}

// Writes act(acc + bias + residual) for `len` contiguous accumulator values:
// the channels of one pixel (bias_step 1) or the pixels of one channel run
// (bias_step 0: one bias value). `out`/`res` step by `out_step`/`res_step`.
template <typename scalar_t, typename acc_t>
inline void epilogue_run(const acc_t* acc, const acc_t* bias, int64_t bias_step,
                         const scalar_t* res, int64_t res_step, scalar_t* out, int64_t out_step,
                         int64_t len, Activation act) {
  using V = Vec<acc_t>;
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (out_step == 1 && (res == nullptr || res_step == 1)) {
      for (; i + V::size() <= len; i += V::size()) {
        V v = V::loadu(acc + i);
        if (bias) v = v + (bias_step ? V::loadu(bias + i) : V(*bias));
        if (res) v = v + V::loadu(res + i);
        activate<acc_t>(act, v).store(out + i);
      }
    }
  }
  for (; i < len; ++i) {
    acc_t v = acc[i];
    if (bias) v += bias[i * bias_step];
    if (res) v += static_cast<acc_t>(res[i * res_step]);
    out[i * out_step] = static_cast<scalar_t>(apply_activation<acc_t>(act, v));
  }
}

template <typename scalar_t, typename acc_t>
struct Epilogue {
  const ForwardArgs& a;

  scalar_t* out_at(int64_t n, int64_t co, int64_t oh, int64_t ow) const {
    const int64_t* os = a.out_strides;
    return static_cast<scalar_t*>(a.out) + n * os[0] + co * os[1] + oh * os[2] + ow * os[3];
  }
  const scalar_t* res_at(int64_t n, int64_t co, int64_t oh, int64_t ow) const {
    if (!a.residual) return nullptr;
    const int64_t* rs = a.residual_strides;
    return static_cast<const scalar_t*>(a.residual) + n * rs[0] + co * rs[1] + oh * rs[2] +
           ow * rs[3];
  }
  const acc_t* bias_at(int64_t co) const {
    return a.bias ? static_cast<const acc_t*>(a.bias) + co : nullptr;
  }

  // One output pixel (n, oh, ow), channels [co0, co0 + len) contiguous in acc.
  void operator()(const acc_t* acc, int64_t n, int64_t oh, int64_t ow, int64_t co0,
                  int64_t len) const {
    epilogue_run<scalar_t, acc_t>(acc, bias_at(co0), 1, res_at(n, co0, oh, ow),
                                  a.residual_strides[1], out_at(n, co0, oh, ow),
                                  a.out_strides[1], len, a.act);
  }

  // One channel co of the output pixels (n, oh, ow0 .. ow0 + len) of one row.
  void channel_run(const acc_t* acc, int64_t n, int64_t oh, int64_t ow0, int64_t co,
                   int64_t len) const {
    epilogue_run<scalar_t, acc_t>(acc, bias_at(co), 0, res_at(n, co, oh, ow0),
                                  a.residual_strides[3], out_at(n, co, oh, ow0),
                                  a.out_strides[3], len, a.act);
  }
};
