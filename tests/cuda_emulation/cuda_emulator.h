// A CPU emulator of the CUDA execution model, so the tests can run pydl's
// CUDA kernels, unchanged, on a machine without a GPU.
//
// Each CUDA thread is a fiber (ucontext) with its own stack; one OS thread
// schedules them. A block's threads run until they reach a barrier
// (__syncthreads, __syncwarp, a warp collective such as __shfl_xor_sync / __shfl_sync,
// ldmatrix or mma, or a cooperative grid sync), and a barrier opens only when
// every thread it names has arrived at the same kind of barrier. What a real
// GPU leaves undefined is reported as an error instead of guessed at:
// a barrier some threads of the block (or lanes of the warp) skip or exited
// before, a warp collective over a partial warp, a deadlock. Per launch:
//   - a thread touching an inaccessible address stops the launch with an
//     error naming the address and the thread (CUDA's illegal address);
//   - dynamic shared memory starts as 0xFF bytes (NaN in every float type),
//     so a read of shared memory nothing wrote shows up as NaN, and ends at an
//     inaccessible page, so reading past the end faults (guard_host_allocations
//     does the same for tensors);
//   - cp.async copies land only when a cp.async.wait_group lets them, so a
//     read before the wait sees the old bytes (or, as an option, as soon as
//     they are issued, so a buffer refilled too early shows);
//   - the order in which the scheduler runs the threads between barriers is
//     a choice (lockstep or warp by warp, forward or reversed): a result
//     that changes with it depends on a race between threads.
// Blocks of a normal launch run one after another; a cooperative launch runs
// all its blocks together (grid.sync() is a barrier over all of them).
//
// Include this before any kernel source (-include), with PYDL_CUDA_EMULATION
// defined; csrc/common/cuda_launch.cuh then takes the launch macros from here.
#pragma once

// CUDA and ATen-CUDA headers first: some name parameters blockDim or
// threadIdx, which become macros below.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>

namespace pydl {
namespace emulation {

// What the emulated device reports to the kernels' host code.
struct DeviceConfig {
  int sm_count = 8;
  int max_smem_optin = 227 * 1024;  // an H100's opt-in shared memory per block
  int max_blocks_per_sm = 1;        // for cudaOccupancyMaxActiveBlocksPerMultiprocessor
  bool cooperative_launch = true;
  // Between barriers, run the threads in lockstep (each to its next barrier,
  // warp collectives included) or warp by warp (one warp to its next block
  // barrier before the next warp starts), first-to-last or last-to-first.
  bool warp_greedy = false;
  // Or block by block: each block runs (its threads in lockstep) until none
  // of them can go on (all at a grid barrier, a poll that failed, or done)
  // before the next block starts: blocks as far apart as the grid barriers
  // and the values they wait for allow (catches a block that overwrites a
  // value another has yet to read). With reverse_order, the last block first.
  bool block_greedy = false;
  bool reverse_order = false;
  // cp.async copies land when issued instead of at the latest wait_group that
  // covers them: catches a buffer refilled while other warps still read it.
  bool eager_async_copies = false;
};
DeviceConfig& device();
// Launches, their blocks, warp-level mma instructions and grid barriers,
// since the library was loaded (tests check that a path really ran, and on which grid).
int64_t launch_count();
int64_t block_count();
int64_t mma_count();
int64_t grid_barrier_count();  // grid.sync() barriers opened
void count_mma();
// Shared-memory wavefronts of the emulated ldmatrix instructions: the
// conflict-free minimum and what the addresses cost (bank conflicts).
void count_smem_wavefronts(int64_t ideal, int64_t actual);
std::pair<int64_t, int64_t> smem_wavefronts();

// The running thread.
uint3& thread_idx();
uint3& block_idx();
dim3& block_dim();
dim3& grid_dim();
int lane_id();

void sync_threads();
void sync_warp(unsigned mask);
void sync_grid();
// A thread that polls memory for a value another thread writes (a spin loop:
// csrc/common/cuda_tagged_word.cuh) calls this between its reads: the other
// threads run before it reads again. When every thread left polls and no
// poll succeeds, the launch fails as a deadlock (a value nobody writes, or
// one a block that has not started would write: a normal launch runs its
// blocks one after another, and a GPU need not run them together either).
void poll_wait();
// A poll that has found its value: the scheduler counts it as progress (a
// thread may go on to poll for its next value at once).
void poll_done();
void* dynamic_smem();
// Throws unless [p, p + bytes) lies in the current block's shared memory.
void require_shared(const void* p, size_t bytes, const char* what);

// Warp collective: every lane of the warp passes `bytes` bytes; on return
// `all` holds the 32 lanes' bytes in lane order. `what` names the instruction
// (lanes that meet at different instructions are reported).
void warp_exchange(const void* mine, void* all, size_t bytes, const char* what);
template <typename T>
std::array<T, 32> warp_gather(const T& mine, const char* what) {
  static_assert(std::is_trivially_copyable<T>::value, "warp_gather copies bytes");
  std::array<T, 32> all;
  warp_exchange(&mine, all.data(), sizeof(T), what);
  return all;
}

// cp.async: a 16-byte copy queued in the current thread's open group.
void cp_async_16(void* smem, const void* gmem, bool valid);
void cp_async_commit();
// Completes all but the `pending` most recently committed groups.
void cp_async_wait(int pending);

// While on, every CPU tensor torch allocates (the kernels' "device memory" in
// the emulated ops) ends right before an inaccessible page and starts as
// 0xFF bytes: a kernel's access past a tensor's end is reported like
// CUDA's illegal-address error, and a result element no thread wrote is NaN.
void guard_host_allocations(bool on);

// Runs `body` as every thread of the grid of `kernel` (which must have been
// granted its dynamic shared memory above 48 KB, as on a GPU).
void run_grid(const void* kernel, dim3 grid, dim3 block, size_t smem_bytes, bool cooperative,
              const std::function<void()>& body);

// kernel<<<grid, block, smem>>>(args...): the arguments are converted to the
// kernel's parameter types once, as a launch does, and each thread gets them.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
            Args&&... args) {
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  run_grid(reinterpret_cast<const void*>(kernel), grid, block, smem_bytes, false,
           [&] { std::apply(kernel, params); });
}

// cudaLaunchCooperativeKernel passes the kernel as void* and its arguments as
// void**: a kernel launched that way is registered first with its signature.
using ErasedKernel = std::function<void(void**)>;
void register_erased_kernel(const void* kernel, ErasedKernel run);
template <typename... Params>
void register_cooperative_kernel(void (*kernel)(Params...)) {
  register_erased_kernel(reinterpret_cast<const void*>(kernel), [kernel](void** args) {
    size_t i = 0;
    std::tuple<std::decay_t<Params>...> params{
        *static_cast<std::decay_t<Params>*>(args[i++])...};
    std::apply(kernel, params);
  });
}

}  // namespace emulation
}  // namespace pydl

// ---- the CUDA builtins and intrinsics pydl's kernels use ---------------------

#define threadIdx (::pydl::emulation::thread_idx())
#define blockIdx (::pydl::emulation::block_idx())
#define blockDim (::pydl::emulation::block_dim())
#define gridDim (::pydl::emulation::grid_dim())
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#define __syncthreads() ::pydl::emulation::sync_threads()
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::pydl::emulation::sync_warp(mask); }
// Static __shared__ arrays would be per-thread locals here: the kernels use
// dynamic shared memory (PYDL_DYNAMIC_SMEM) only, and this keeps it so.
#define __shared__ static_assert(false, "static __shared__ memory is not emulated");

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  if (mask != 0xffffffffu || width != 32) {
    throw std::runtime_error("cuda emulator: only full-warp __shfl_xor_sync is emulated");
  }
  const std::array<T, 32> all = ::pydl::emulation::warp_gather(value, "__shfl_xor_sync");
  const int source = ::pydl::emulation::lane_id() ^ lane_mask;
  return source >= 0 && source < 32 ? all[source] : value;  // out of the warp: its own value
}

template <typename T>
inline T __shfl_sync(unsigned mask, T value, int src_lane, int width = 32) {
  if (mask != 0xffffffffu || width != 32) {
    throw std::runtime_error("cuda emulator: only full-warp __shfl_sync is emulated");
  }
  const std::array<T, 32> all = ::pydl::emulation::warp_gather(value, "__shfl_sync");
  return all[src_lane & 31];  // CUDA: a lane outside [0, width) is taken modulo width
}

inline float __expf(float x) { return std::exp(x); }
// One OS thread runs every fiber and none is switched out inside this: the
// read-modify-write is atomic as it is. (The order of a location's adds is
// the schedule's, which the reordering reruns vary.)
inline float atomicAdd(float* address, float value) {
  const float old = *address;
  *address = old + value;
  return old;
}
using std::max;
using std::min;

namespace cooperative_groups {
struct grid_group {
  void sync() const { ::pydl::emulation::sync_grid(); }
};
inline grid_group this_grid() { return {}; }
}  // namespace cooperative_groups
#define _COOPERATIVE_GROUPS_H_  // the real header needs nvcc

// The typed overloads cuda_runtime.h offers only to nvcc.
template <typename T>
cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}
template <typename T>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, T* kernel, int threads,
                                                          size_t smem) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      blocks, reinterpret_cast<const void*>(kernel), threads, smem);
}

// Error checks against the emulated runtime (cuda_emulator.cpp), not c10_cuda.
#undef C10_CUDA_CHECK
#define C10_CUDA_CHECK(expr)                                                      \
  do {                                                                            \
    const cudaError_t pydl_emulated_error = (expr);                               \
    TORCH_CHECK(pydl_emulated_error == cudaSuccess, "cuda emulator: " #expr " -> ", \
                static_cast<int>(pydl_emulated_error));                           \
  } while (0)
#undef C10_CUDA_KERNEL_LAUNCH_CHECK
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())

#define PYDL_LAUNCH_KERNEL(kernel, grid, block, smem_bytes, stream, ...) \
  ::pydl::emulation::launch(kernel, grid, block, smem_bytes, __VA_ARGS__)
#define PYDL_DYNAMIC_SMEM(type, name) \
  type* name = static_cast<type*>(::pydl::emulation::dynamic_smem())
