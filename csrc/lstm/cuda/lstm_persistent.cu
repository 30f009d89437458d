// Persistent LSTM layer forward and backward (see lstm_persistent.h).
//
// Block b owns hidden units [b*U, b*U + U): the 4U rows of w_hh that produce
// their gates live in shared memory (as float) for the whole sequence. Per
// step, one warp per (batch row, chunk of up to kUnitChunk units: fewer when
// the rows are too few to give every warp a task) reads the row of h_prev
// once and computes the chunk's 4 x kUnitChunk dot products,
// then one lane per unit applies the cell's pointwise math. h is double
// buffered in global memory (every block reads all of h_prev while others
// write h_next); c of a unit only ever lives in its own block.
//
// Why chunks: a warp per (row, unit) read the row once per unit, U times per
// block and step, all of it from L2 (other blocks wrote it): at H 1024 on
// 132 SMs (U = 8), batch 16, that is 132 x 16 x 8 x 4 KB = 64 MB of L2 reads
// per step, ~12 us at L2 speed, more than the step's math. A chunk of 8
// reads it once.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "common/cuda_launch.cuh"
#include "common/cuda_storage.cuh"
#include "lstm/cuda/lstm_persistent.h"

namespace pydl {
namespace lstm_cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Units a warp task covers: its accumulators (4 gates x 8 units forward, 8
// backward) stay in registers.
constexpr int kUnitChunk = 8;

__device__ __forceinline__ float sigmoidf(float x) { return 1.f / (1.f + __expf(-x)); }

// Units per warp task for a step of `rows` rows: up to kUnitChunk, but few
// enough that the rows x chunks tasks keep every warp busy (at batch 1 a task
// per unit, as many tasks as units).
__device__ __forceinline__ int units_per_task(int rows, int units) {
  return max(1, min(kUnitChunk, rows * units / kWarps));
}

// One halving step of warp_reduce_scatter and the ones after it: lanes with
// bit Half set keep the upper Half values (and send the lower), the others
// the lower; each adds what its partner sent. Template recursion keeps every
// index a constant, so v stays in registers (counted loops with a
// step-dependent inner bound were left rolled and put v in local memory).
template <int Half, int N>
__device__ __forceinline__ void halve_and_add(float (&v)[N], int lane) {
  if constexpr (Half >= 1) {
    const bool upper = (lane & Half) != 0;
#pragma unroll
    for (int i = 0; i < Half; ++i) {
      const float lo = v[i], hi = v[i + Half];
      v[i] = (upper ? hi : lo) + __shfl_xor_sync(0xffffffffu, upper ? lo : hi, Half);
    }
    halve_and_add<Half / 2>(v, lane);
  }
}

// Sums each of the N values v[0..N) over the warp's 32 lanes (N a power of
// two <= 32) and returns the sum of value lane % N: the halving steps send
// half the remaining values to the partner and keep the other half, so 32
// values take 31 shuffles where a full reduction of each would take 160.
template <int N>
__device__ __forceinline__ float warp_reduce_scatter(float (&v)[N], int lane) {
  static_assert(N >= 1 && N <= 32 && (N & (N - 1)) == 0, "N: a power of two <= 32");
#pragma unroll
  for (int d = 16; d >= N; d /= 2) {  // lane bits above N: plain sums
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] += __shfl_xor_sync(0xffffffffu, v[i], d);
  }
  halve_and_add<N / 2>(v, lane);  // lane bits below N
  return v[0];
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    persistent_forward_kernel(PersistentForwardArgs a, int units_per_block) {
  PYDL_DYNAMIC_SMEM(float, w_smem);  // [4][U][H]
  cg::grid_group grid = cg::this_grid();
  const int H = a.hidden, T_ = a.steps;
  const int u0 = blockIdx.x * units_per_block;
  const int units = max(0, min(units_per_block, H - u0));
  const T* w_hh = static_cast<const T*>(a.w_hh);
  for (int idx = threadIdx.x; idx < 4 * units * H; idx += kThreads) {
    const int q = idx / (units * H), rest = idx - q * units * H;
    const int u = rest / H, k = rest - u * H;
    w_smem[idx] = to_acc(w_hh[(int64_t(q) * H + u0 + u) * H + k]);
  }
  __syncthreads();

  T* gates = static_cast<T*>(a.gates);
  const T* h0 = static_cast<const T*>(a.h0);
  const T* c0 = static_cast<const T*>(a.c0);
  T* output = static_cast<T*>(a.output);
  T* cells = static_cast<T*>(a.cells);
  T* hy = static_cast<T*>(a.hy);
  T* cy = static_cast<T*>(a.cy);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  for (int s = 0; s < T_; ++s) {
    const int t = a.reverse ? T_ - 1 - s : s;
    const int rows = a.step_rows[t];
    const int64_t off = a.step_offsets[t];
    // Rows of the step processed before / after this one: a row starts here
    // when the previous step did not run it, and ends here when the next won't.
    const int prev = a.reverse ? (t + 1 < T_ ? a.step_rows[t + 1] : 0)
                               : (t > 0 ? a.step_rows[t - 1] : 0);
    const int next = a.reverse ? (t > 0 ? a.step_rows[t - 1] : 0)
                               : (t + 1 < T_ ? a.step_rows[t + 1] : 0);
    const float* h_read = a.h_buffers + int64_t(s % 2) * a.batch * H;
    float* h_write = a.h_buffers + int64_t((s + 1) % 2) * a.batch * H;
    const int per_task = units_per_task(rows, units);
    const int chunks = (units + per_task - 1) / per_task;
    for (int task = warp; task < rows * chunks; task += kWarps) {
      const int b = task / chunks, chunk0 = (task - b * chunks) * per_task;
      const int n = min(per_task, units - chunk0);  // units in this chunk
      const bool first = s == 0 || b >= prev;
      float acc[4 * kUnitChunk];  // [gate q][unit u] at q * kUnitChunk + u
#pragma unroll
      for (int v = 0; v < 4 * kUnitChunk; ++v) acc[v] = 0.f;
      for (int k = lane; k < H; k += 32) {
        const float hk = first ? to_acc(h0[int64_t(b) * H + k]) : h_read[int64_t(b) * H + k];
#pragma unroll
        for (int u = 0; u < kUnitChunk; ++u) {
          if (u < n) {
#pragma unroll
            for (int q = 0; q < 4; ++q) {
              acc[q * kUnitChunk + u] += w_smem[(q * units + chunk0 + u) * H + k] * hk;
            }
          }
        }
      }
      // Lane l ends with value l: gate l / 8 of unit l % 8; lanes 0..n-1
      // gather their unit's four gates.
      const float mine = warp_reduce_scatter(acc, lane);
      float pre[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        pre[q] = __shfl_sync(0xffffffffu, mine, q * kUnitChunk + (lane % kUnitChunk));
      }
      if (lane < n) {
        const int j = u0 + chunk0 + lane;
        T* g = gates + (off + b) * 4 * H;
        const float i = sigmoidf(pre[0] + to_acc(g[j]));
        const float f = sigmoidf(pre[1] + to_acc(g[H + j]));
        const float gg = tanhf(pre[2] + to_acc(g[2 * H + j]));
        const float o = sigmoidf(pre[3] + to_acc(g[3 * H + j]));
        const float c_prev =
            first ? to_acc(c0[int64_t(b) * H + j]) : a.c_state[int64_t(b) * H + j];
        const float c = f * c_prev + i * gg;
        const float h = o * tanhf(c);
        g[j] = from_acc<T>(i);
        g[H + j] = from_acc<T>(f);
        g[2 * H + j] = from_acc<T>(gg);
        g[3 * H + j] = from_acc<T>(o);
        cells[(off + b) * H + j] = from_acc<T>(c);
        output[(off + b) * H + j] = from_acc<T>(h);
        a.c_state[int64_t(b) * H + j] = c;
        h_write[int64_t(b) * H + j] = h;
        if (b >= next) {
          hy[int64_t(b) * H + j] = from_acc<T>(h);
          cy[int64_t(b) * H + j] = from_acc<T>(c);
        }
      }
    }
    grid.sync();
  }
}

// Backward (see lstm_persistent.h). Steps in the reverse of the forward's
// order; rows a step does not run keep their dh / dc: grad_hy / grad_cy
// before their last forward step comes up, the gradients of h0 / c0 after
// their first.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    persistent_backward_kernel(PersistentBackwardArgs a, int units_per_block) {
  // [U][4H]: w_hh's columns of this block's units, each contiguous so that
  // the lanes of a warp (consecutive r) read consecutive banks.
  PYDL_DYNAMIC_SMEM(float, w_smem);
  cg::grid_group grid = cg::this_grid();
  const int H = a.hidden, T_ = a.steps;
  const int u0 = blockIdx.x * units_per_block;
  const int units = max(0, min(units_per_block, H - u0));
  const T* w_hh = static_cast<const T*>(a.w_hh);
  for (int idx = threadIdx.x; idx < 4 * H * units; idx += kThreads) {
    const int r = idx / units, u = idx - r * units;  // global reads along u: coalesced
    w_smem[u * 4 * H + r] = to_acc(w_hh[int64_t(r) * H + u0 + u]);
  }
  __syncthreads();

  const T* gates = static_cast<const T*>(a.gates);
  const T* cells = static_cast<const T*>(a.cells);
  const T* c0 = static_cast<const T*>(a.c0);
  const T* grad_output = static_cast<const T*>(a.grad_output);
  T* grad_gates = static_cast<T*>(a.grad_gates);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  for (int s = T_ - 1; s >= 0; --s) {  // s: the step's place in the forward's order
    const int t = a.reverse ? T_ - 1 - s : s;
    const int rows = a.step_rows[t];
    const int64_t off = a.step_offsets[t];
    // The forward's previous step held the rows' c_prev (rows past it start from c0).
    const int prev_t = a.reverse ? t + 1 : t - 1;
    const int prev_rows = s > 0 ? a.step_rows[prev_t] : 0;
    const int64_t prev_off = s > 0 ? a.step_offsets[prev_t] : 0;
    // Pointwise backward of this block's units: one thread per (row, unit).
    for (int task = threadIdx.x; task < rows * units; task += kThreads) {
      const int b = task / units, j = u0 + task % units;
      const int64_t row = off + b, state = int64_t(b) * H + j;
      const T* g = gates + row * 4 * H;
      const float i = to_acc(g[j]), f = to_acc(g[H + j]);
      const float gg = to_acc(g[2 * H + j]), o = to_acc(g[3 * H + j]);
      const float tc = tanhf(to_acc(cells[row * H + j]));
      const float c_prev =
          b < prev_rows ? to_acc(cells[(prev_off + b) * H + j]) : to_acc(c0[state]);
      const float gh = a.dh[state] + to_acc(grad_output[row * H + j]);
      const float gc = a.dc[state] + gh * o * (1.f - tc * tc);
      T* d = grad_gates + row * 4 * H;
      d[j] = from_acc<T>(gc * gg * i * (1.f - i));
      d[H + j] = from_acc<T>(gc * c_prev * f * (1.f - f));
      d[2 * H + j] = from_acc<T>(gc * i * (1.f - gg * gg));
      d[3 * H + j] = from_acc<T>(gh * tc * o * (1.f - o));
      a.dc[state] = gc * f;
    }
    grid.sync();  // every block's gate gradients of this step are written
    // dh_prev[b, k] = sum_r dgates[row b, r] w_hh[r, k] for this block's units
    // k: one warp per (row, chunk of units), lanes over r, so the row of gate
    // gradients (written by every block: read from L2) is read once per
    // chunk, not once per unit. Only this block reads the results.
    const int per_task = units_per_task(rows, units);
    const int chunks = (units + per_task - 1) / per_task;
    for (int task = warp; task < rows * chunks; task += kWarps) {
      const int b = task / chunks, chunk0 = (task - b * chunks) * per_task;
      const int n = min(per_task, units - chunk0);
      const T* d = grad_gates + (off + b) * 4 * H;
      float acc[kUnitChunk];
#pragma unroll
      for (int u = 0; u < kUnitChunk; ++u) acc[u] = 0.f;
      for (int r = lane; r < 4 * H; r += 32) {
        const float dr = to_acc(d[r]);
#pragma unroll
        for (int u = 0; u < kUnitChunk; ++u) {
          if (u < n) acc[u] += dr * w_smem[(chunk0 + u) * 4 * H + r];
        }
      }
      const float sum = warp_reduce_scatter(acc, lane);  // lane l: unit l % 8
      if (lane < n) a.dh[int64_t(b) * H + u0 + chunk0 + lane] = sum;
    }
    __syncthreads();  // the next step's pointwise part reads this block's dh
  }
}

// Grid shape for a hidden size on the current device: one block per SM, each
// with an equal slice of hidden units; blocks == 0 when it does not fit.
struct LaunchPlan {
  int blocks = 0, units = 0;
  size_t smem = 0;
};

// (Both kernels hold 4 x units x hidden floats of w_hh.)
// The plan depends on the kernel, the hidden size and the device (its SM
// count and shared memory, read every call: cheap, and an emulated device can
// change them), so it is cached: the attribute call and the occupancy query
// cost microseconds per call, which a small batch's whole layer can take only
// a few hundred of. Plans made while a CUDA call failed are not cached.
template <typename Kernel>
LaunchPlan plan_launch(Kernel kernel, int hidden) {
  int device = 0, sms = 0, cooperative = 0, smem_optin = 0;
  // Never swallow an error some earlier kernel left behind.
  if (hidden <= 0 || cudaPeekAtLastError() != cudaSuccess ||
      cudaGetDevice(&device) != cudaSuccess) {
    return {};
  }
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device);
  cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (!cooperative || sms == 0) return {};
  using Key = std::tuple<const void*, int, int, int, int>;
  static std::mutex mutex;
  static std::map<Key, LaunchPlan> plans;
  const Key key{reinterpret_cast<const void*>(kernel), device, sms, smem_optin, hidden};
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto found = plans.find(key); found != plans.end()) return found->second;
  const int units = (hidden + sms - 1) / sms;
  const int blocks = (hidden + units - 1) / units;
  const size_t smem = size_t(4) * units * hidden * sizeof(float);
  if (smem > size_t(smem_optin)) return plans[key] = LaunchPlan{};
  // The cap is the device's opt-in maximum, the same on every call: a
  // per-call size would let two host threads lower it under each other's launch.
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin) !=
      cudaSuccess) {
    cudaGetLastError();  // ours: clear it; the caller takes the cuBLAS path
    return {};
  }
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem) !=
      cudaSuccess) {
    cudaGetLastError();
    return {};
  }
  return plans[key] = per_sm * sms < blocks ? LaunchPlan{} : LaunchPlan{blocks, units, smem};
}

template <typename Kernel, typename Args>
bool launch(Kernel kernel, const Args& a, cudaStream_t stream) {
  const LaunchPlan plan = plan_launch(kernel, a.hidden);
  if (plan.blocks == 0 || a.steps == 0) return false;
  Args args = a;
  int units_per_block = plan.units;
  void* params[] = {&args, &units_per_block};
  const cudaError_t err = cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kernel), plan.blocks,
                                                      kThreads, params, plan.smem, stream);
  if (err != cudaSuccess) {
    cudaGetLastError();  // a refused launch is not sticky: clear it and fall back
    return false;
  }
  return true;
}

template <typename Fn>
bool with_storage_type(StorageType dtype, Fn&& fn) {
  switch (dtype) {
    case StorageType::Float: return fn(float{});
    case StorageType::Half: return fn(__half{});
    case StorageType::BFloat16: return fn(__nv_bfloat16{});
  }
  return false;
}

}  // namespace

bool persistent_forward_fits(StorageType dtype, int hidden) {
  return with_storage_type(dtype, [&](auto tag) {
    return plan_launch(persistent_forward_kernel<decltype(tag)>, hidden).blocks > 0;
  });
}

bool persistent_forward(const PersistentForwardArgs& a, cudaStream_t stream) {
  return with_storage_type(a.dtype, [&](auto tag) {
    return launch(persistent_forward_kernel<decltype(tag)>, a, stream);
  });
}

bool persistent_backward_fits(StorageType dtype, int hidden) {
  return with_storage_type(dtype, [&](auto tag) {
    return plan_launch(persistent_backward_kernel<decltype(tag)>, hidden).blocks > 0;
  });
}

bool persistent_backward(const PersistentBackwardArgs& a, cudaStream_t stream) {
  return with_storage_type(a.dtype, [&](auto tag) {
    return launch(persistent_backward_kernel<decltype(tag)>, a, stream);
  });
}

}  // namespace lstm_cuda
}  // namespace pydl
