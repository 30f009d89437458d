// 64-bit words that carry a float and a tag (the step that wrote it), for the
// blocks of a cooperative launch to hand values to each other without a grid
// barrier: the writer puts value and tag in one 64-bit store, a reader reads
// the word until it carries the tag it waits for. The value is then the one
// written with that tag (one single-copy-atomic access: no fence, no flag in
// another word to order against). A grid barrier costs a fence, an atomic
// and a spin, and the data's own round trip comes after it; here the data's
// round trip is the only one. Readers spin, so the blocks must be resident
// together (cooperative launch), and a buffer must not hold a stale word with
// a tag a reader will wait for (zero it before its first step).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/cuda_launch.cuh"

namespace pydl {

__host__ __device__ __forceinline__ uint64_t tagged_word(float value, uint32_t tag) {
#ifdef __CUDA_ARCH__
  const uint32_t bits = __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
#endif
  return (static_cast<uint64_t>(tag) << 32) | bits;
}

__host__ __device__ __forceinline__ float tagged_value(uint64_t word) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(static_cast<uint32_t>(word));
#else
  const uint32_t bits = static_cast<uint32_t>(word);
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
#endif
}

__host__ __device__ __forceinline__ uint32_t word_tag(uint64_t word) {
  return static_cast<uint32_t>(word >> 32);
}

// Loads and stores at GPU scope: they go to L2, where every SM's accesses to
// the word meet (a plain load could keep hitting a stale line in this SM's L1).
__device__ __forceinline__ uint64_t load_relaxed_gpu(const uint64_t* p) {
#ifdef PYDL_CUDA_EMULATION
  return *static_cast<const volatile uint64_t*>(p);
#else
  uint64_t word;
  asm volatile("ld.relaxed.gpu.global.b64 %0, [%1];" : "=l"(word) : "l"(p) : "memory");
  return word;
#endif
}

__device__ __forceinline__ void store_relaxed_gpu(uint64_t* p, uint64_t word) {
#ifdef PYDL_CUDA_EMULATION
  *static_cast<volatile uint64_t*>(p) = word;
#else
  asm volatile("st.relaxed.gpu.global.b64 [%0], %1;" : : "l"(p), "l"(word) : "memory");
#endif
}

// The value of the word at p once it carries `tag`; `word` is a read of p
// already made (callers issue several reads before waiting on any, so their
// round trips overlap).
__device__ __forceinline__ float wait_for_tag(const uint64_t* p, uint64_t word, uint32_t tag) {
  while (word_tag(word) != tag) {
    word = load_relaxed_gpu(p);
#ifdef PYDL_CUDA_EMULATION
    if (word_tag(word) != tag) ::pydl::emulation::poll_wait();  // let the writer run
#endif
  }
#ifdef PYDL_CUDA_EMULATION
  ::pydl::emulation::poll_done();  // a wait that ended is progress
#endif
  return tagged_value(word);
}

}  // namespace pydl
