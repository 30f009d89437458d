// Small pieces shared by the per-ISA attention kernels (the flash kernel and
// the attention-with-weights kernel). Included only by *_kernel_isa.cpp files,
// once per ISA build: everything lives in that build's CPU_CAPABILITY namespace
// (the same inline function compiled for two ISAs under one name would let the
// linker hand AVX-512 code to a machine without it).
#pragma once

#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "attention/cpu/attention_cpu_kernel.h"

#ifndef CPU_CAPABILITY
#error "kernel_helpers.h belongs to a per-ISA translation unit"
#endif

namespace pydl {
namespace attention_cpu {
namespace CPU_CAPABILITY {

// The type the kernels compute in for each storage type: bf16 inputs are
// computed in float32 (tiles, softmax, accumulators).
template <typename S>
struct ComputeType {
  using type = S;
};
template <>
struct ComputeType<c10::BFloat16> {
  using type = float;
};
template <typename S>
using Compute = typename ComputeType<S>::type;

// rows x cols of a compute-type tile (row stride ld) as storage-type GEMM
// operands: the tile itself when the types agree, else converted into
// `converted` (same row stride).
template <typename S, typename T>
const S* as_storage(const T* tile, S* converted, int64_t rows, int64_t cols, int64_t ld) {
  if constexpr (std::is_same_v<S, T>) {
    return tile;
  } else {
    for (int64_t r = 0; r < rows; ++r) at::vec::convert(tile + r * ld, converted + r * ld, cols);
    return converted;
  }
}

// Per-thread tile memory, kept between calls: a fresh 256 KiB allocation per
// call would come from mmap, and its page faults cost as much as a small problem.
template <typename T>
class ThreadScratch {
 public:
  explicit ThreadScratch(int64_t count) {
    thread_local std::vector<double> storage;  // double-aligned for either T
    const size_t doubles = (static_cast<size_t>(count) * sizeof(T) + 7) / 8;
    if (storage.size() < doubles) storage.resize(doubles);
    next_ = reinterpret_cast<T*>(storage.data());
  }
  T* take(int64_t count) {
    T* out = next_;
    next_ += count;
    return out;
  }

 private:
  T* next_;
};

// Keys of block [j0, j0 + nk) visible to query row i under the causal rule.
inline int64_t causal_visible(const Problem& p, int64_t i, int64_t j0, int64_t nk) {
  if (!p.causal) return nk;
  return std::clamp<int64_t>(i + p.causal_offset - j0 + 1, 0, nk);
}

template <typename T>
const T* ptr(const Operand& o, int64_t n, int64_t h, int64_t row) {
  return static_cast<const T*>(o.data) + n * o.stride_n + h * o.stride_h + row * o.stride_row;
}

}  // namespace CPU_CAPABILITY
}  // namespace attention_cpu
}  // namespace pydl
