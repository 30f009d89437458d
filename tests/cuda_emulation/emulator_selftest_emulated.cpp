// Deliberately broken kernels, one per kind of mistake the emulator promises
// to catch (tests/test_cuda_emulation_selftest.py checks each is reported),
// plus a correct one. Exposed as pydl_emulated::emulator_case(name, buffer).
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <string>

#include "attention/cuda/attention_tc_ptx.cuh"
#include "common/cuda_launch.cuh"
#include "common/cuda_tagged_word.cuh"

namespace {

// Correct: a block-wide sum through shared memory with barriers.
__global__ void block_sum(float* data, int n) {
  PYDL_DYNAMIC_SMEM(float, partial);
  partial[threadIdx.x] = threadIdx.x < unsigned(n) ? data[threadIdx.x] : 0.f;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (unsigned i = 0; i < blockDim.x; ++i) s += partial[i];
    data[0] = s;
  }
}

// Half the block leaves before a __syncthreads the other half waits at.
__global__ void divergent_barrier(float* data, int) {
  if (threadIdx.x >= 16) return;
  __syncthreads();
  data[threadIdx.x] = 1.f;
}

// A full-warp shuffle in a block of 48 threads: the second warp is partial.
__global__ void partial_warp_shuffle(float* data, int) {
  data[threadIdx.x] = __shfl_xor_sync(0xffffffffu, data[threadIdx.x], 1);
}

// Lanes 0-15 wait at __syncthreads, lanes 16-31 at a shuffle: nothing opens.
__global__ void mismatched_barriers(float* data, int) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    data[threadIdx.x] = __shfl_xor_sync(0xffffffffu, data[threadIdx.x], 1);
  }
}

// Reads one element past the end of the tensor.
__global__ void read_past_end(float* data, int n) {
  if (threadIdx.x == 0) data[0] = data[n];
}

// Thread 1 reads what thread 0 writes, with no barrier in between.
__global__ void unsynchronized_read(float* data, int) {
  PYDL_DYNAMIC_SMEM(float, slot);
  if (threadIdx.x == 0) slot[0] = 42.f;
  if (threadIdx.x == 1) data[1] = slot[0];
}

// Reads shared memory a cp.async still has in flight (no wait_group).
__global__ void read_before_cp_async_wait(float* data, int) {
  PYDL_DYNAMIC_SMEM(float, tile);
  if (threadIdx.x == 0) {
    pydl::attention_cuda::tc::cp_async_16(tile, data, true);
    pydl::attention_cuda::tc::cp_async_commit();
    data[1] = tile[0];  // the copy has not landed: the initial NaN bytes
    pydl::attention_cuda::tc::cp_async_wait<0>();
  }
}

// grid.sync() in a kernel launched the normal way.
__global__ void grid_sync_without_cooperative_launch(float*, int) {
  cooperative_groups::this_grid().sync();
}

// Block 1 waits for the two tagged words per thread that block 0 writes (no
// grid barrier), both read before it waits on either, as the LSTM kernels
// do: right in a cooperative launch, whichever block the scheduler runs
// first. words: data + 128 (8-byte aligned: the tensor's start is 16-byte
// aligned); out: data[32 + t] and data[64 + t].
__global__ void tagged_handoff(float* data, int) {
  uint64_t* words = reinterpret_cast<uint64_t*>(data + 128);
  const unsigned t = threadIdx.x;
  if (blockIdx.x == 0) {
    pydl::store_relaxed_gpu(words + t, pydl::tagged_word(2.f * data[t], 1));
    pydl::store_relaxed_gpu(words + 32 + t, pydl::tagged_word(3.f * data[t], 1));
  } else {
    const uint64_t first = pydl::load_relaxed_gpu(words + t);
    const uint64_t second = pydl::load_relaxed_gpu(words + 32 + t);
    data[32 + t] = pydl::wait_for_tag(words + t, first, 1);
    data[64 + t] = pydl::wait_for_tag(words + 32 + t, second, 1);
  }
}

// Waits for a tag nobody writes.
__global__ void poll_never_written(float* data, int) {
  uint64_t* words = reinterpret_cast<uint64_t*>(data + 128);
  data[threadIdx.x] = pydl::wait_for_tag(words, pydl::load_relaxed_gpu(words), 7);
}

const bool registered = [] {
  pydl::emulation::register_cooperative_kernel(tagged_handoff);
  pydl::emulation::register_cooperative_kernel(poll_never_written);
  return true;
}();

using Kernel = void (*)(float*, int);

at::Tensor emulator_case(const std::string& name, const at::Tensor& buffer) {
  TORCH_CHECK(buffer.scalar_type() == at::kFloat && buffer.is_contiguous(), "float buffer");
  at::Tensor data = buffer.clone();
  float* p = data.mutable_data_ptr<float>();
  const int n = static_cast<int>(data.numel());
  Kernel kernel = nullptr;
  unsigned threads = 32;
  size_t smem = 64;
  if (name == "block_sum") kernel = block_sum, smem = 32 * sizeof(float);
  if (name == "divergent_barrier") kernel = divergent_barrier;
  if (name == "partial_warp_shuffle") kernel = partial_warp_shuffle, threads = 48;
  if (name == "mismatched_barriers") kernel = mismatched_barriers;
  if (name == "read_past_end") kernel = read_past_end;
  if (name == "unsynchronized_read") kernel = unsynchronized_read;
  if (name == "read_before_cp_async_wait") kernel = read_before_cp_async_wait;
  if (name == "grid_sync_without_cooperative_launch") {
    kernel = grid_sync_without_cooperative_launch;
  }
  if (name == "large_smem_without_attribute") kernel = block_sum, smem = 64 * 1024;
  // Two blocks, launched cooperatively or (the "_normal_launch" cases) not.
  unsigned blocks = 1;
  bool cooperative = false;
  if (name == "tagged_handoff" || name == "tagged_handoff_normal_launch") {
    TORCH_CHECK(n >= 256, "tagged_handoff: a buffer of 256 floats or more");
    kernel = tagged_handoff, blocks = 2, cooperative = name == "tagged_handoff";
  }
  if (name == "poll_never_written") kernel = poll_never_written, blocks = 2, cooperative = true;
  TORCH_CHECK(kernel != nullptr, "no emulator case ", name);
  if (cooperative) {
    void* args[] = {&p, const_cast<int*>(&n)};
    TORCH_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), blocks,
                                            threads, args, smem, nullptr) == cudaSuccess,
                "cooperative launch refused");
  } else {
    PYDL_LAUNCH_KERNEL(kernel, blocks, threads, smem, nullptr, p, n);
  }
  return data;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pydl_emulated, m) {
  m.def("emulator_case(str name, Tensor buffer) -> Tensor", &emulator_case);
}
