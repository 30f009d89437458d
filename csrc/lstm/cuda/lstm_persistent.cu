// Persistent LSTM layer forward and backward (see lstm_persistent.h).
//
// Block b owns hidden units [b*U, b*U + U) (U <= 8) and keeps the 4U rows of
// w_hh that produce their gates in registers, as float, for the whole
// sequence: 256 threads hold up to 128 weights each, up to 4U x H = 32K.
// Shared memory or L2 never streams a weight again after the first step.
//
// Forward, per step: the block copies the step's rows of h_prev (written by
// every block in the step before: in L2) into shared memory, once; each warp
// multiplies its registers (the 8 gate rows of 2 units over a slice of k)
// with them, 4 batch rows at a time, so one shared-memory load of h feeds 8
// FMAs; a warp reduce-scatter sums over the slice's lanes and the partial
// sums of the slices meet in shared memory, where one thread per (row, unit)
// applies the cell's pointwise math. h is double buffered in global memory
// (every block reads all of h_prev while others write h_next); c of a unit
// only ever lives in its own block.
//
// Backward, per step: one thread per (row, unit) applies the pointwise
// backward to the block's units; with the same weights in registers (here,
// each warp all 4U rows over its eighth of k) the block multiplies its own
// gate gradients into its share of dh_prev for every k, written to global
// memory; after the grid barrier each block sums the shares of its own units
// over all blocks. So no block reads another's gate gradients (4H per row)
// and no weight is read from memory inside the time loop.
//
// Why registers: with w_hh in shared memory every FMA needed its own
// shared-memory load of a weight, and an SM loads 32 floats per clock where
// it multiplies 128: the step ran at a quarter of the FMA rate.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>

#include "common/cuda_launch.cuh"
#include "common/cuda_storage.cuh"
#include "common/cuda_tagged_word.cuh"
#include "common/env_switch.h"
#include "lstm/cuda/lstm_persistent.h"

namespace pydl {
namespace lstm_cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxUnits = 8;   // hidden units per block, both kernels
constexpr int kRowBlock = 4;   // batch rows per pass over the registers

// The forward's warps: `groups` of 2 units (8 gate rows) times `parts`
// slices of k; a lane holds its group's 8 rows at k_per_lane values of k
// (k = part * 32 * k_per_lane + lane + 32 j), at most 8 x 16.
constexpr int kForwardRows = 8;
constexpr int kForwardMaxK = 16;
// The backward's warps: all 4U gate rows times an eighth of k each, at most
// 32 x 4 per lane.
constexpr int kBackwardRows = 4 * kMaxUnits;
constexpr int kBackwardMaxK = 4;

__host__ __device__ inline int div_up(int a, int b) { return (a + b - 1) / b; }

struct ForwardLayout {
  int groups, parts, k_per_lane;
  __host__ __device__ ForwardLayout(int units, int hidden)
      : groups(units <= 2 ? 1 : units <= 4 ? 2 : 4),
        parts(kWarps / groups),
        k_per_lane(div_up(hidden, 32 * parts)) {}
};

// What each kernel needs of a plan (units per block) and its shared memory.
struct ForwardShape {
  static bool fits(int units, int hidden) {
    return units <= kMaxUnits && ForwardLayout(units, hidden).k_per_lane <= kForwardMaxK;
  }
  // The step's rows of h, and each k slice's partial gate sums.
  static size_t smem_bytes(int units, int hidden, int batch) {
    const size_t parts = ForwardLayout(units, hidden).parts;
    return (size_t(batch) * hidden + parts * batch * 4 * units) * sizeof(float);
  }
};

__host__ __device__ inline int backward_k_per_lane(int hidden) {
  return div_up(hidden, 32 * kWarps);
}
// Threads summing the blocks' shares of one unit's dh: every block's share
// is read once, spread over this many slots.
__host__ __device__ inline int backward_slots(int units) { return kThreads / units; }

struct BackwardShape {
  static bool fits(int units, int hidden) {
    return units <= kMaxUnits && backward_k_per_lane(hidden) <= kBackwardMaxK;
  }
  // The step's gate gradients of the block's units, and the slots' sums.
  static size_t smem_bytes(int units, int, int batch) {
    return (size_t(batch) * 4 * units + size_t(batch) * backward_slots(units) * units) *
           sizeof(float);
  }
};

__device__ __forceinline__ float sigmoidf(float x) { return 1.f / (1.f + __expf(-x)); }

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

// A lane's weights: w[r][j] = w_hh[gate r % 4 of unit first_unit + r / 4]
// [k_begin + lane + 32 j] as float, 0 past `units` units, k_per_lane values
// or the hidden size. Fully unrolled, so w stays in registers.
template <int Rows, int MaxK, typename T>
__device__ __forceinline__ void load_weights(float (&w)[Rows][MaxK], const T* w_hh, int hidden,
                                             int first_unit, int units, int k_begin,
                                             int k_per_lane, int lane) {
#pragma unroll
  for (int r = 0; r < Rows; ++r) {
#pragma unroll
    for (int j = 0; j < MaxK; ++j) {
      const int k = k_begin + lane + 32 * j;
      w[r][j] = r / 4 < units && j < k_per_lane && k < hidden
                    ? to_acc(w_hh[(int64_t(r % 4) * hidden + first_unit + r / 4) * hidden + k])
                    : 0.f;
    }
  }
}

// Step s of the forward's order (time t = s, or T - 1 - s reversed): its
// rows, first packed row, and the rows of the steps before and after it in
// that order: a row starts here when the previous step did not run it, and
// ends here when the next won't.
struct ForwardStep {
  int rows, prev, next;
  int64_t off;
  __device__ ForwardStep(const PersistentLayer& a, int s) {
    const int T_ = a.steps, t = a.reverse ? T_ - 1 - s : s;
    rows = a.step_rows[t];
    off = a.step_offsets[t];
    prev = a.reverse ? (t + 1 < T_ ? a.step_rows[t + 1] : 0) : (t > 0 ? a.step_rows[t - 1] : 0);
    next = a.reverse ? (t > 0 ? a.step_rows[t - 1] : 0) : (t + 1 < T_ ? a.step_rows[t + 1] : 0);
  }
};

// Step s's rows of h_prev from the blocks' tagged words (kTagged): rows that
// start at this step take h0, the others wait for the words the step before
// wrote (tag s). Each thread issues kInFlight reads before it waits on any,
// so their round trips through L2 overlap (the grid-barrier kernel's copy
// has 16 loads in flight too).
template <typename T>
__device__ __forceinline__ void gather_tagged_h(float* h_s, const uint64_t* words, const T* h0,
                                                int rows, int H, int prev, int s) {
  constexpr int kInFlight = 16;
  const int n = rows * H;
  // Rows below `prev` ran the step before; h is row-major, so they are the
  // words before polled_end (no division per word).
  const int polled_end = s == 0 ? 0 : min(rows, prev) * H;
  for (int base = threadIdx.x; base < n; base += kInFlight * kThreads) {
    uint64_t word[kInFlight];
#pragma unroll
    for (int k = 0; k < kInFlight; ++k) {
      const int idx = base + k * kThreads;
      word[k] = idx < polled_end ? load_relaxed_gpu(words + idx) : 0;
    }
#pragma unroll
    for (int k = 0; k < kInFlight; ++k) {
      const int idx = base + k * kThreads;
      if (idx >= n) break;
      h_s[idx] = idx >= polled_end ? to_acc(h0[idx]) : wait_for_tag(words + idx, word[k], s);
    }
  }
}

// Zeroes n tagged words, spread over the grid (no stale word may carry a tag
// a reader waits for), then the kernel's one grid barrier: no block reads a
// word before it is zeroed.
__device__ __forceinline__ void zero_words_then_sync(cg::grid_group& grid, uint64_t* words,
                                                     int64_t n) {
  for (int64_t idx = int64_t(blockIdx.x) * kThreads + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * kThreads) {
    store_relaxed_gpu(words + idx, 0);
  }
  grid.sync();
}

// kTagged (PYDL_LSTM_TAGGED_EXCHANGE=1, see tagged_exchange_requested): the
// blocks hand h to each other as tagged words (common/cuda_tagged_word.cuh)
// and meet at no grid barrier after the first; a block reading step s's h
// waits only for the words it reads. Two more cuts of a step's latency ride
// on the same switch (one A/B for the new step): the gate inputs are read a
// step ahead (into registers, one (row, unit) task per thread), and the
// products load four rows of h before their FMAs (no branch between).
template <typename T, bool kTagged>
__global__ void __launch_bounds__(kThreads, 1)
    persistent_forward_kernel(PersistentForwardArgs a, int units_per_block) {
  PYDL_DYNAMIC_SMEM(float, smem);
  cg::grid_group grid = cg::this_grid();
  const int H = a.hidden, B = a.batch, T_ = a.steps;
  const int u0 = blockIdx.x * units_per_block;
  const int units = max(0, min(units_per_block, H - u0));
  const ForwardLayout layout(units_per_block, H);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = warp % layout.groups, part = warp / layout.groups;
  const int unit0 = 2 * group;  // the warp's first unit within the block
  const int kpl = layout.k_per_lane, k_begin = part * 32 * kpl;
  float w[kForwardRows][kForwardMaxK];
  load_weights(w, static_cast<const T*>(a.w_hh), H, u0 + unit0, max(0, min(2, units - unit0)),
               k_begin, kpl, lane);

  float* h_s = smem;                                  // [B][H]: the step's rows of h_prev
  float* partial_s = smem + int64_t(B) * H;           // [parts][B][4U]: gate sums per k slice
  const int gate_rows = 4 * units_per_block;
  T* gates = static_cast<T*>(a.gates);
  const T* h0 = static_cast<const T*>(a.h0);
  const T* c0 = static_cast<const T*>(a.c0);
  T* output = static_cast<T*>(a.output);
  T* cells = static_cast<T*>(a.cells);
  T* hy = static_cast<T*>(a.hy);
  T* cy = static_cast<T*>(a.cy);
  if constexpr (kTagged) zero_words_then_sync(grid, a.h_words, 2 * int64_t(B) * H);
  // kTagged: the gate inputs of this thread's first (row, unit) task of step
  // s, read during the step before (see load_gate_inputs).
  float gate_in[4] = {0.f, 0.f, 0.f, 0.f};
  auto load_gate_inputs = [&](int s, float (&in)[4]) {
    const ForwardStep step(a, s);
    const int task = threadIdx.x;
    if (task < step.rows * units) {
      const int b = task / units, j = u0 + task % units;
      const T* g = gates + (step.off + b) * 4 * H;
#pragma unroll
      for (int q = 0; q < 4; ++q) in[q] = to_acc(g[q * H + j]);
    }
  };
  if constexpr (kTagged) load_gate_inputs(0, gate_in);

  for (int s = 0; s < T_; ++s) {
    const ForwardStep step(a, s);
    const int rows = step.rows, prev = step.prev, next = step.next;
    const int64_t off = step.off;
    const float* h_read = a.h_buffers + int64_t(s % 2) * B * H;
    float* h_write = a.h_buffers + int64_t((s + 1) % 2) * B * H;
    float next_gate_in[4] = {0.f, 0.f, 0.f, 0.f};
    if constexpr (kTagged) {
      if (s + 1 < T_) load_gate_inputs(s + 1, next_gate_in);
      gather_tagged_h(h_s, a.h_words + int64_t(s % 2) * B * H, h0, rows, H, prev, s);
    } else {
      for (int idx = threadIdx.x; idx < rows * H; idx += kThreads) {
        const bool first = s == 0 || idx / H >= prev;
        h_s[idx] = first ? to_acc(h0[idx]) : h_read[idx];
      }
    }
    __syncthreads();

    for (int b0 = 0; b0 < rows; b0 += kRowBlock) {
      float acc[kForwardRows * kRowBlock];  // [gate row r][batch row br] at r * kRowBlock + br
#pragma unroll
      for (int v = 0; v < kForwardRows * kRowBlock; ++v) acc[v] = 0.f;
#pragma unroll
      for (int j = 0; j < kForwardMaxK; ++j) {
        const int k = k_begin + lane + 32 * j;
        if (j < kpl && kTagged) {
          // The four rows' h first, then their 32 FMAs: no branch between a
          // load and its FMAs (below, each row's test is one, and each load's
          // latency stood exposed with 2 warps per scheduler). Rows past the
          // step's last read its last row, into sums nobody stores.
          float hk[kRowBlock];
#pragma unroll
          for (int br = 0; br < kRowBlock; ++br) {
            hk[br] = k < H ? h_s[min(b0 + br, rows - 1) * H + k] : 0.f;
          }
#pragma unroll
          for (int br = 0; br < kRowBlock; ++br) {
#pragma unroll
            for (int r = 0; r < kForwardRows; ++r) acc[r * kRowBlock + br] += w[r][j] * hk[br];
          }
        } else if (j < kpl) {
#pragma unroll
          for (int br = 0; br < kRowBlock; ++br) {
            if (b0 + br < rows) {
              // Past the hidden size the weights are 0; h_s there is not ours.
              const float hk = k < H ? h_s[(b0 + br) * H + k] : 0.f;
#pragma unroll
              for (int r = 0; r < kForwardRows; ++r) acc[r * kRowBlock + br] += w[r][j] * hk;
            }
          }
        }
      }
      const float sum = warp_reduce_scatter(acc, lane);
      const int r = lane / kRowBlock, b = b0 + lane % kRowBlock;
      if (unit0 + r / 4 < units && b < rows) {
        partial_s[(part * B + b) * gate_rows + (unit0 + r / 4) * 4 + r % 4] = sum;
      }
    }
    __syncthreads();

    for (int task = threadIdx.x; task < rows * units; task += kThreads) {
      const int b = task / units, u = task - b * units, j = u0 + u;
      const bool first = s == 0 || b >= prev;
      float pre[4] = {0.f, 0.f, 0.f, 0.f};
      for (int p = 0; p < layout.parts; ++p) {
#pragma unroll
        for (int q = 0; q < 4; ++q) pre[q] += partial_s[(p * B + b) * gate_rows + u * 4 + q];
      }
      T* g = gates + (off + b) * 4 * H;
      float in[4];  // the gate inputs: read here, or (kTagged, first task) a step ago
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        in[q] = !kTagged || task >= kThreads ? to_acc(g[q * H + j]) : gate_in[q];
      }
      const float i = sigmoidf(pre[0] + in[0]);
      const float f = sigmoidf(pre[1] + in[1]);
      const float gg = tanhf(pre[2] + in[2]);
      const float o = sigmoidf(pre[3] + in[3]);
      const float c_prev = first ? to_acc(c0[int64_t(b) * H + j]) : a.c_state[int64_t(b) * H + j];
      const float c = f * c_prev + i * gg;
      const float h = o * tanhf(c);
      g[j] = from_acc<T>(i);
      g[H + j] = from_acc<T>(f);
      g[2 * H + j] = from_acc<T>(gg);
      g[3 * H + j] = from_acc<T>(o);
      cells[(off + b) * H + j] = from_acc<T>(c);
      output[(off + b) * H + j] = from_acc<T>(h);
      a.c_state[int64_t(b) * H + j] = c;
      if constexpr (kTagged) {
        store_relaxed_gpu(a.h_words + int64_t((s + 1) % 2) * B * H + int64_t(b) * H + j,
                          tagged_word(h, s + 1));
      } else {
        h_write[int64_t(b) * H + j] = h;
      }
      if (b >= next) {
        hy[int64_t(b) * H + j] = from_acc<T>(h);
        cy[int64_t(b) * H + j] = from_acc<T>(c);
      }
    }
    if constexpr (kTagged) {
      // No barrier: the next step's reads of h_s follow the __syncthreads
      // after its gather (this step's reads of h_s ended at the one before
      // the pointwise part), and its writes to partial_s the same barrier.
      // Its words go to the other buffer: a block can be at most one step
      // ahead of any other, as each step needs every block's h of the last.
#pragma unroll
      for (int q = 0; q < 4; ++q) gate_in[q] = next_gate_in[q];
    } else {
      grid.sync();  // h_next complete; h_s and partial_s free again
    }
  }
}

// Single-block forward (opt-in, PYDL_LSTM_SINGLE_BLOCK=1, see
// single_block_requested): the whole layer in one block, for hidden <= 64 and
// batch <= 8. Warp w owns units 8w .. 8w + 8, i.e. 32 gate rows; lane l owns
// row l (gate l % 4 of unit 8w + l / 4) and holds its 64 weights (64
// registers), so a row's sum is the lane's own dot product with h, read from
// shared memory 4 values at a time (the same address in every lane: a
// broadcast). Lanes over k instead, as first written, took a 31-shuffle
// reduce-scatter per batch row: ~200 instructions per row and warp in the
// sm_90 SASS, about twice this. h lives in shared memory, double buffered,
// so a step ends at a __syncthreads instead of a grid barrier and h never
// goes through L2. The multi-block kernel's step took 3.4-4.3 us at 8 to 128
// blocks on an H200 (scripts/lstm_persistent_ab.py, 2026-11-28), cuDNN's
// float32 one 1.4 us at batch 1 hidden 64: the grid barrier and the L2
// round trip of h, not the arithmetic.
// Same arguments and outputs as persistent_forward_kernel (h_buffers and
// c_state unused), so the persistent backward runs after it unchanged.
constexpr int kSingleBlockHidden = 8 * kWarps;  // 8 units per warp
constexpr int kSingleBlockRows = 8;             // batch rows

template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    single_block_forward_kernel(PersistentForwardArgs a) {
  constexpr int kH = kSingleBlockHidden, kRows = kSingleBlockRows;
  PYDL_DYNAMIC_SMEM(float, smem);
  float* h_s = smem;                  // [2][kRows][kH]: h_prev, h_next (columns past H stay 0)
  float* c_s = smem + 2 * kRows * kH;  // [kRows][kH]
  const int H = a.hidden, T_ = a.steps;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // This lane's gate row: gate q of unit u, row q * H + u of w_hh (i, f, g, o).
  const int u = 8 * warp + lane / 4, q = lane % 4;
  const bool owns = u < H;
  float w_row[kH];  // 0 past the hidden size (and for rows past it)
  {
    const T* w_hh_row = static_cast<const T*>(a.w_hh) + (int64_t(q) * H + (owns ? u : 0)) * H;
#pragma unroll
    for (int k = 0; k < kH; ++k) w_row[k] = owns && k < H ? to_acc(w_hh_row[k]) : 0.f;
  }
  for (int idx = threadIdx.x; idx < 2 * kRows * kH; idx += kThreads) h_s[idx] = 0.f;
  __syncthreads();  // before step 0 writes h0 over it (in another thread's order)
  T* gates = static_cast<T*>(a.gates);
  const T* h0 = static_cast<const T*>(a.h0);
  const T* c0 = static_cast<const T*>(a.c0);
  // The gate inputs (x W_ih^T + biases) of this lane's row for each batch row
  // of step s: read a step ahead, so their latency hides behind a step.
  auto load_inputs = [&](int s, float (&in)[kRows]) {
    const ForwardStep step(a, s);
#pragma unroll
    for (int b = 0; b < kRows; ++b) {
      in[b] = owns && b < step.rows ? to_acc(gates[(step.off + b) * 4 * H + q * H + u]) : 0.f;
    }
  };
  float inputs[kRows];
  load_inputs(0, inputs);
  for (int s = 0; s < T_; ++s) {
    const ForwardStep step(a, s);
    const int rows = step.rows, prev = step.prev, next = step.next;
    const int64_t off = step.off;
    float* h_cur = h_s + (s % 2) * kRows * kH;
    float* h_next = h_s + ((s + 1) % 2) * kRows * kH;
    // Rows that start at this step take h0 (c0 is read where it is used).
    // Block-uniform test: the extra barrier only on such steps.
    if (s == 0 || rows > prev) {
      const int first_row = s == 0 ? 0 : prev;
      for (int idx = threadIdx.x; idx < (rows - first_row) * H; idx += kThreads) {
        const int b = first_row + idx / H, k = idx % H;
        h_cur[b * kH + k] = to_acc(h0[int64_t(b) * H + k]);
      }
      __syncthreads();
    }
    float next_inputs[kRows] = {};
    if (s + 1 < T_) load_inputs(s + 1, next_inputs);
#pragma unroll
    for (int b = 0; b < kRows; ++b) {
      if (b >= rows) break;  // block-uniform
      // Four partial sums: four FMA chains of 16 instead of one of 64.
      const float4* h4 = reinterpret_cast<const float4*>(h_cur + b * kH);
      float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int k4 = 0; k4 < kH / 4; ++k4) {
        const float4 hv = h4[k4];
        acc[0] += w_row[4 * k4] * hv.x;
        acc[1] += w_row[4 * k4 + 1] * hv.y;
        acc[2] += w_row[4 * k4 + 2] * hv.z;
        acc[3] += w_row[4 * k4 + 3] * hv.w;
      }
      const float pre = (acc[0] + acc[1]) + (acc[2] + acc[3]) + inputs[b];  // row `lane`'s sum
      const float act = q == 2 ? tanhf(pre) : sigmoidf(pre);
      // The unit's four gates meet in its first lane (every lane shuffles).
      const int base = lane & ~3;
      const float gi = __shfl_sync(0xffffffffu, act, base);
      const float gf = __shfl_sync(0xffffffffu, act, base + 1);
      const float gg = __shfl_sync(0xffffffffu, act, base + 2);
      const float go = __shfl_sync(0xffffffffu, act, base + 3);
      if (!owns) continue;
      gates[(off + b) * 4 * H + q * H + u] = from_acc<T>(act);
      if (q != 0) continue;
      const bool first = s == 0 || b >= prev;
      const float c_prev = first ? to_acc(c0[int64_t(b) * H + u]) : c_s[b * kH + u];
      const float c = gf * c_prev + gi * gg;
      const float h = go * tanhf(c);
      c_s[b * kH + u] = c;
      h_next[b * kH + u] = h;
      static_cast<T*>(a.cells)[(off + b) * H + u] = from_acc<T>(c);
      static_cast<T*>(a.output)[(off + b) * H + u] = from_acc<T>(h);
      if (b >= next) {
        static_cast<T*>(a.hy)[int64_t(b) * H + u] = from_acc<T>(h);
        static_cast<T*>(a.cy)[int64_t(b) * H + u] = from_acc<T>(c);
      }
    }
    __syncthreads();  // h_next complete; h_cur free for the step after next
#pragma unroll
    for (int b = 0; b < kRows; ++b) inputs[b] = next_inputs[b];
  }
}

// Backward (see lstm_persistent.h). Steps in the reverse of the forward's
// order; rows a step does not run keep their dh / dc: grad_hy / grad_cy
// before their last forward step comes up, the gradients of h0 / c0 after
// their first.
// Thread (slot, u)'s sum over the blocks slot, slot + slots, ... of their
// tagged shares of row b, unit u0 + u (kTagged): kInFlight reads issued
// before it waits on any; the order of the adds is the grid barrier path's.
__device__ __forceinline__ float sum_tagged_shares(const uint64_t* words, int blocks, int slots,
                                                   int slot, int64_t block_stride,
                                                   int64_t offset, uint32_t tag) {
  constexpr int kInFlight = 4;
  float sum = 0.f;
  for (int blk0 = slot; blk0 < blocks; blk0 += kInFlight * slots) {
    uint64_t word[kInFlight];
#pragma unroll
    for (int k = 0; k < kInFlight; ++k) {
      const int blk = blk0 + k * slots;
      word[k] = blk < blocks ? load_relaxed_gpu(words + blk * block_stride + offset) : 0;
    }
#pragma unroll
    for (int k = 0; k < kInFlight; ++k) {
      const int blk = blk0 + k * slots;
      if (blk < blocks) sum += wait_for_tag(words + blk * block_stride + offset, word[k], tag);
    }
  }
  return sum;
}

// kTagged (PYDL_LSTM_TAGGED_EXCHANGE=1): the shares go out as tagged words
// and each block waits only for the words of its own units, with no grid
// barrier after the first (as in the forward); the share products have no
// branch between a load and its FMAs either (sm_90 SASS: 99 branches in the
// kernel against 217).
template <typename T, bool kTagged>
__global__ void __launch_bounds__(kThreads, 1)
    persistent_backward_kernel(PersistentBackwardArgs a, int units_per_block) {
  PYDL_DYNAMIC_SMEM(float, smem);
  cg::grid_group grid = cg::this_grid();
  const int H = a.hidden, B = a.batch, T_ = a.steps;
  const int u0 = blockIdx.x * units_per_block;
  const int units = max(0, min(units_per_block, H - u0));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kpl = backward_k_per_lane(H), k_begin = warp * 32 * kpl;
  float w[kBackwardRows][kBackwardMaxK];
  load_weights(w, static_cast<const T*>(a.w_hh), H, u0, units, k_begin, kpl, lane);

  const int gate_rows = 4 * units_per_block;
  const int slots = backward_slots(units_per_block);
  float* dg_s = smem;                             // [B][4U]: the step's gate gradients, unit-major
  float* slot_s = smem + int64_t(B) * gate_rows;  // [B][slots][U]
  const T* gates = static_cast<const T*>(a.gates);
  const T* cells = static_cast<const T*>(a.cells);
  const T* c0 = static_cast<const T*>(a.c0);
  const T* grad_output = static_cast<const T*>(a.grad_output);
  T* grad_gates = static_cast<T*>(a.grad_gates);
  if constexpr (kTagged) {
    zero_words_then_sync(grid, a.dh_share_words, 2 * int64_t(gridDim.x) * B * H);
  }

  for (int s = T_ - 1; s >= 0; --s) {  // s: the step's place in the forward's order
    const int t = a.reverse ? T_ - 1 - s : s;
    const int rows = a.step_rows[t];
    const int64_t off = a.step_offsets[t];
    // The forward's previous step held the rows' c_prev (rows past it start from c0).
    const int prev_t = a.reverse ? t + 1 : t - 1;
    const int prev_rows = s > 0 ? a.step_rows[prev_t] : 0;
    const int64_t prev_off = s > 0 ? a.step_offsets[prev_t] : 0;
    // Double buffered: a block may write step s - 1's shares while a slower
    // one still sums step s's.
    float* shares = a.dh_shares + int64_t(s % 2) * gridDim.x * B * H;  // [blocks][B][H]
    // kTagged: the same layout in tagged words, tagged with the steps done
    // (a lambda, so the grid-barrier instance never computes it).
    auto share_words = [&] { return a.dh_share_words + int64_t(s % 2) * gridDim.x * B * H; };
    const uint32_t tag = static_cast<uint32_t>(T_ - s);

    // Pointwise backward of this block's units: one thread per (row, unit).
    for (int task = threadIdx.x; task < rows * units; task += kThreads) {
      const int b = task / units, u = task - b * units, j = u0 + u;
      const int64_t row = off + b, state = int64_t(b) * H + j;
      const T* g = gates + row * 4 * H;
      const float i = to_acc(g[j]), f = to_acc(g[H + j]);
      const float gg = to_acc(g[2 * H + j]), o = to_acc(g[3 * H + j]);
      const float tc = tanhf(to_acc(cells[row * H + j]));
      const float c_prev =
          b < prev_rows ? to_acc(cells[(prev_off + b) * H + j]) : to_acc(c0[state]);
      const float gh = a.dh[state] + to_acc(grad_output[row * H + j]);
      const float gc = a.dc[state] + gh * o * (1.f - tc * tc);
      const T d[4] = {from_acc<T>(gc * gg * i * (1.f - i)),
                      from_acc<T>(gc * c_prev * f * (1.f - f)),
                      from_acc<T>(gc * i * (1.f - gg * gg)),
                      from_acc<T>(gh * tc * o * (1.f - o))};
      T* out = grad_gates + row * 4 * H;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        out[q * H + j] = d[q];
        // As stored: the weight gradients' GEMMs afterwards read these too.
        dg_s[b * gate_rows + u * 4 + q] = to_acc(d[q]);
      }
      a.dc[state] = gc * f;
    }
    __syncthreads();

    // This block's share of dh_prev[b, k] = sum over its own 4U gate rows r
    // of dgates[b, r] w_hh[r, k], for every k: warp w covers the eighth of k
    // it holds the weights of. Each (row, k) is one lane's.
    float* own_share = shares + int64_t(blockIdx.x) * B * H;
    for (int b0 = 0; b0 < rows; b0 += kRowBlock) {
      float acc[kRowBlock][kBackwardMaxK];
#pragma unroll
      for (int br = 0; br < kRowBlock; ++br) {
#pragma unroll
        for (int j = 0; j < kBackwardMaxK; ++j) acc[br][j] = 0.f;
      }
#pragma unroll
      for (int r = 0; r < kBackwardRows; ++r) {
        if (r < 4 * units) {
#pragma unroll
          for (int br = 0; br < kRowBlock; ++br) {
            // kTagged: no branch between the loads and their FMAs, as in the
            // forward (rows past the step's last read its last row, into
            // sums nobody stores).
            if (kTagged || b0 + br < rows) {
              const int b = kTagged ? min(b0 + br, rows - 1) : b0 + br;
              const float d = dg_s[b * gate_rows + r];  // one address: a broadcast
#pragma unroll
              for (int j = 0; j < kBackwardMaxK; ++j) {
                if (j < kpl) acc[br][j] += d * w[r][j];
              }
            }
          }
        }
      }
#pragma unroll
      for (int br = 0; br < kRowBlock; ++br) {
#pragma unroll
        for (int j = 0; j < kBackwardMaxK; ++j) {
          const int k = k_begin + lane + 32 * j;
          if (b0 + br < rows && j < kpl && k < H) {
            if constexpr (kTagged) {
              store_relaxed_gpu(share_words() + int64_t(blockIdx.x) * B * H + (b0 + br) * H + k,
                                tagged_word(acc[br][j], tag));
            } else {
              own_share[(b0 + br) * H + k] = acc[br][j];
            }
          }
        }
      }
    }
    if constexpr (!kTagged) grid.sync();  // every block's share of this step is written

    // dh_prev of this block's units: the sum of all blocks' shares, each read
    // once; thread (slot, u) sums blocks slot, slot + slots, ... in a fixed
    // order, then one thread per (row, unit) sums the slots.
    const int u = threadIdx.x % units_per_block, slot = threadIdx.x / units_per_block;
    if (slot < slots && u < units) {
      for (int b = 0; b < rows; ++b) {
        float sum = 0.f;
        if constexpr (kTagged) {
          sum = sum_tagged_shares(share_words(), gridDim.x, slots, slot, int64_t(B) * H,
                                  int64_t(b) * H + u0 + u, tag);
        } else {
          for (int blk = slot; blk < int(gridDim.x); blk += slots) {
            sum += shares[(int64_t(blk) * B + b) * H + u0 + u];
          }
        }
        slot_s[(b * slots + slot) * units_per_block + u] = sum;
      }
    }
    __syncthreads();
    const int used_slots = min(slots, int(gridDim.x));
    for (int task = threadIdx.x; task < rows * units; task += kThreads) {
      const int b = task / units, v = task - b * units;
      float sum = 0.f;
      for (int k = 0; k < used_slots; ++k) sum += slot_s[(b * slots + k) * units_per_block + v];
      a.dh[int64_t(b) * H + u0 + v] = sum;
    }
    __syncthreads();  // the next step's pointwise part reads this block's dh; slot_s is free
  }
}

// Grid shape for a layer on the current device: one block per SM, each with
// an equal slice of hidden units (at most kMaxUnits); blocks == 0 when it
// does not fit.
struct LaunchPlan {
  int blocks = 0, units = 0;
  size_t smem = 0;
};

// PYDL_LSTM_PERSISTENT_UNITS=N (1-8): at least N hidden units per block, so
// fewer blocks meet at each step's grid barrier. The A/B switch
// (scripts/lstm_persistent_ab.py) for whether a step's latency falls with the
// block count: at batch 1 a step took 3.7 us at hidden 64, 128 and 256 alike
// (64-128 blocks) on an H200, against cuDNN's 1.1-2.2 us at 64-128 in
// float32. Answered there (2026-11-28): no, 3.7-4.3 us at 8 to 128 blocks
// alike; the default stays. Read per call; unset or any other value:
// ceil(hidden / SMs).
int requested_units() {
  const char* env = std::getenv("PYDL_LSTM_PERSISTENT_UNITS");
  const int units = env == nullptr ? 0 : std::atoi(env);
  return units >= 1 && units <= kMaxUnits ? units : 0;
}

// The plan depends on the kernel, the hidden size, the batch and the device
// (its SM count and shared memory, read every call: cheap, and an emulated
// device can change them), so it is cached: the attribute call and the
// occupancy query cost microseconds per call, which a small batch's whole
// layer can take only a few hundred of. Plans made while a CUDA call failed
// are not cached.
template <typename Shape, typename Kernel>
LaunchPlan plan_launch(Kernel kernel, int hidden, int batch) {
  int device = 0, sms = 0, cooperative = 0, smem_optin = 0;
  // Never swallow an error some earlier kernel left behind.
  if (hidden <= 0 || batch <= 0 || cudaPeekAtLastError() != cudaSuccess ||
      cudaGetDevice(&device) != cudaSuccess) {
    return {};
  }
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device);
  cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (!cooperative || sms == 0) return {};
  const int min_units = std::min(requested_units(), hidden);
  using Key = std::tuple<const void*, int, int, int, int, int, int>;
  static std::mutex mutex;
  static std::map<Key, LaunchPlan> plans;
  const Key key{reinterpret_cast<const void*>(kernel), device, sms, smem_optin, hidden, batch,
                min_units};
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto found = plans.find(key); found != plans.end()) return found->second;
  const int units = std::max(div_up(hidden, sms), min_units);
  const int blocks = div_up(hidden, units);
  const size_t smem = Shape::smem_bytes(units, hidden, batch);
  if (!Shape::fits(units, hidden) || smem > size_t(smem_optin)) return plans[key] = LaunchPlan{};
  // Grant what this plan needs, not the whole opt-in cap: the grant plus
  // the kernel's static shared memory must stay within the cap, and the
  // sm_90 cubins list 1 KB of it (cuobjdump's SHARED:1024, whatever it is
  // for), so asking for the cap could fail. The grant per kernel and device
  // only ever grows, so a smaller one can never lower it under another
  // thread's launch.
  static std::map<std::pair<const void*, int>, size_t> granted;
  size_t& grant = granted[{reinterpret_cast<const void*>(kernel), device}];
  if (smem > grant) {
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(smem)) != cudaSuccess) {
      cudaGetLastError();  // ours: clear it; the caller takes the cuBLAS path
      return {};
    }
    grant = smem;
  }
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem) !=
      cudaSuccess) {
    cudaGetLastError();
    return {};
  }
  return plans[key] = per_sm * sms < blocks ? LaunchPlan{} : LaunchPlan{blocks, units, smem};
}

// Launches on the plan's grid; false (nothing launched) when the plan is
// empty or not the `blocks` the caller sized its scratch for.
template <typename Shape, typename Kernel, typename Args>
bool launch(Kernel kernel, const Args& a, int blocks, cudaStream_t stream) {
  const LaunchPlan plan = plan_launch<Shape>(kernel, a.hidden, a.batch);
  if (plan.blocks == 0 || plan.blocks != blocks || a.steps == 0) return false;
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

// PYDL_LSTM_SINGLE_BLOCK=1: the forward in one block where it fits
// (single_block_forward_kernel). Opt-in until it has run on a GPU: written
// and checked on the CPU emulator only (2026-11-28). Read per call.
bool single_block_requested() { return env_switch_on("PYDL_LSTM_SINGLE_BLOCK"); }
bool single_block_serves(int hidden, int batch) {
  return single_block_requested() && hidden >= 1 && hidden <= kSingleBlockHidden && batch >= 1 &&
         batch <= kSingleBlockRows;
}
constexpr size_t kSingleBlockSmem = 3 * kSingleBlockRows * kSingleBlockHidden * sizeof(float);

template <typename Fn>
int with_storage_type(StorageType dtype, Fn&& fn) {
  switch (dtype) {
    case StorageType::Float: return fn(float{});
    case StorageType::Half: return fn(__half{});
    case StorageType::BFloat16: return fn(__nv_bfloat16{});
  }
  return 0;
}

// fn(the multi-block forward / backward kernel for the storage type, with or
// without the tagged exchange).
template <typename Fn>
int with_forward_kernel(StorageType dtype, bool tagged, Fn&& fn) {
  return with_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    return tagged ? fn(persistent_forward_kernel<T, true>) : fn(persistent_forward_kernel<T, false>);
  });
}
template <typename Fn>
int with_backward_kernel(StorageType dtype, bool tagged, Fn&& fn) {
  return with_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    return tagged ? fn(persistent_backward_kernel<T, true>)
                  : fn(persistent_backward_kernel<T, false>);
  });
}

}  // namespace

// Written and checked on the CPU emulator only (2026-11-28): opt-in.
bool tagged_exchange_requested() { return env_switch_on("PYDL_LSTM_TAGGED_EXCHANGE"); }

int persistent_forward_blocks(StorageType dtype, int hidden, int batch, bool tagged_exchange) {
  // (Never swallow an error some earlier kernel left behind: plan_launch's rule.)
  if (single_block_serves(hidden, batch)) return cudaPeekAtLastError() == cudaSuccess ? 1 : 0;
  return with_forward_kernel(dtype, tagged_exchange, [&](auto kernel) {
    return plan_launch<ForwardShape>(kernel, hidden, batch).blocks;
  });
}

bool persistent_forward(const PersistentForwardArgs& a, int blocks, cudaStream_t stream) {
  if (single_block_serves(a.hidden, a.batch)) {
    if (blocks != 1 || a.steps == 0 || cudaPeekAtLastError() != cudaSuccess) return false;
    return with_storage_type(a.dtype, [&](auto tag) {
      auto kernel = single_block_forward_kernel<decltype(tag)>;
      PYDL_LAUNCH_KERNEL(kernel, 1, kThreads, kSingleBlockSmem, stream, a);
      if (cudaPeekAtLastError() == cudaSuccess) return 1;
      cudaGetLastError();  // a refused launch: ours, clear it and fall back
      return 0;
    }) != 0;
  }
  return with_forward_kernel(a.dtype, a.tagged_exchange, [&](auto kernel) {
    return int(launch<ForwardShape>(kernel, a, blocks, stream));
  }) != 0;
}

int persistent_backward_blocks(StorageType dtype, int hidden, int batch, bool tagged_exchange) {
  return with_backward_kernel(dtype, tagged_exchange, [&](auto kernel) {
    return plan_launch<BackwardShape>(kernel, hidden, batch).blocks;
  });
}

bool persistent_backward(const PersistentBackwardArgs& a, int blocks, cudaStream_t stream) {
  return with_backward_kernel(a.dtype, a.tagged_exchange, [&](auto kernel) {
    return int(launch<BackwardShape>(kernel, a, blocks, stream));
  }) != 0;
}

}  // namespace lstm_cuda
}  // namespace pydl
