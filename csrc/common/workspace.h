// Per-thread scratch buffers that persist across calls.
//
// Fresh multi-megabyte allocations are mmap-backed, so every call would pay a
// page fault per 4 KB touched (measured: the input repack of a 1x32x112x112
// depthwise conv spent most of its time faulting). Each thread keeps a few
// grow-only buffers instead: the memory held is the largest request seen.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace pydl {

enum class WorkspaceSlot : int {
  PackedInput = 0,
  Im2colTile = 1,
  AccumulatorTile = 2,
  LstmRecurrentWeight = 3,   // a layer call's packed w_hh (lstm_layer_cpu.cpp)
  LstmProjectionWeight = 4,  // and its packed w_hr
  LstmRecurrentWeightBlas = 5,   // the same, packed by MKL for the larger steps
  LstmProjectionWeightBlas = 6,
  DirectConvWeightBlock = 7,  // one 64-channel block of conv weights, re-laid out
  LstmInputWeight = 8,        // a fused layer call's packed w_ih (lstm_layer_cpu.cpp)
  kCount = 9
};

class Workspace {
 public:
  // A buffer of at least `count` T, 64-byte aligned, valid until the next
  // request for the same slot on this thread.
  template <typename T>
  static T* get(WorkspaceSlot slot, int64_t count) {
    return static_cast<T*>(raw(slot, static_cast<size_t>(count) * sizeof(T)));
  }

 private:
  struct Buffer {
    std::unique_ptr<unsigned char[]> data;
    size_t capacity = 0;
  };

  static void* raw(WorkspaceSlot slot, size_t bytes) {
    thread_local Buffer buffers[static_cast<int>(WorkspaceSlot::kCount)];
    Buffer& b = buffers[static_cast<int>(slot)];
    if (b.capacity < bytes) {
      b.data.reset(new unsigned char[bytes + 64]);
      b.capacity = bytes;
    }
    const auto address = reinterpret_cast<uintptr_t>(b.data.get());
    return reinterpret_cast<void*>((address + 63) & ~uintptr_t(63));
  }
};

}  // namespace pydl
