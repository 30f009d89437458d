// A persistent LSTM layer forward and backward for small batches (csrc/lstm/cuda/
// lstm_persistent.cu): one cooperative launch for the whole sequence. Each
// block keeps the recurrent weights of its slice of hidden units in
// registers for all steps and the grid synchronizes between steps, so a step
// costs one grid barrier instead of a cuBLAS call plus a pointwise launch.
// No ATen here (see lstm_cuda.cu for the entry that prepares the buffers).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace pydl {
namespace lstm_cuda {

enum class StorageType { Float, Half, BFloat16 };

// What both kernels take: the layer's shape, its steps and w_hh.
struct PersistentLayer {
  StorageType dtype;
  int steps, batch, hidden;       // T, rows of the largest step (batch_sizes[0]), H (= P)
  bool reverse;
  // The blocks hand each other h (forward) and the dh shares (backward) as
  // tagged words, with no grid barrier per step (PYDL_LSTM_TAGGED_EXCHANGE):
  // h_words / dh_share_words instead of h_buffers / dh_shares. (Each pair
  // shares its place, so the grid-barrier kernels' parameters stay as they were.)
  bool tagged_exchange;
  const int* step_rows;           // device [T]: rows of each step (non-increasing)
  const int* step_offsets;        // device [T]: first packed row of each step
  const void* w_hh;               // [4H, H]
};

struct PersistentForwardArgs : PersistentLayer {
  void* gates;                    // [N, 4H]: input projection with biases in, activated gates out
  const void* h0;                 // [B, H]
  const void* c0;                 // [B, H]
  void* output;                   // [N, H]
  void* cells;                    // [N, H]
  void* hy;                       // [B, H]: written for every row that runs at least one step
  void* cy;                       // [B, H]
  union {
    float* h_buffers;             // device scratch [2, B, H]
    uint64_t* h_words;            // tagged_exchange: device scratch [2, B, H]
  };
  float* c_state;                 // device scratch [B, H]
};

// The layer's backward through time for the same small batches: one
// cooperative launch for all steps. Block b keeps the same rows of w_hh as
// in the forward in registers; per step it applies the cell's pointwise
// backward to its units, multiplies their gate gradients into its share of
// dh_prev = dgates w_hh for every k, and after a grid barrier sums every
// block's share for its own units. The weight and input gradients are the
// caller's GEMMs afterwards, as for the cuBLAS loop.
struct PersistentBackwardArgs : PersistentLayer {  // reverse: the forward's direction
  const void* grad_output;        // [N, H]: the gradient reaching each step's h from above
  const void* gates;              // [N, 4H]: the forward's activated gates (i, f, g, o)
  const void* cells;              // [N, H]: the forward's c
  const void* c0;                 // [B, H]
  void* grad_gates;               // [N, 4H] out: the gate pre-activations' gradients
  float* dh;                      // device [B, H]: grad_hy in, the gradient of h0 out
  float* dc;                      // device [B, H]: grad_cy in, the gradient of c0 out
  union {
    float* dh_shares;             // device scratch [2, blocks, B, H]
    uint64_t* dh_share_words;     // tagged_exchange: device scratch [2, blocks, B, H]
  };
};

// PYDL_LSTM_TAGGED_EXCHANGE=1: the multi-block kernels exchange h and the dh
// shares as 64-bit words of (value, step) that readers poll, instead of
// meeting at a grid barrier every step. Opt-in until it has run on a GPU.
// Read per call; the caller reads it once and passes it to both functions
// below (as the args' tagged_exchange), so they agree.
bool tagged_exchange_requested();

// The number of blocks the kernel runs this layer with on the current device
// (hidden units spread over the SMs, at most 8 per block, their weights in
// registers; a cooperative launch), or 0 when it cannot: checked before the
// caller allocates anything for it. 1 where the opt-in single-block forward
// serves (PYDL_LSTM_SINGLE_BLOCK=1, hidden <= 64, batch <= 8: h in shared
// memory, no grid barrier; it leaves h_buffers and c_state unused).
int persistent_forward_blocks(StorageType dtype, int hidden, int batch, bool tagged_exchange);

// Runs the layer and returns true, or returns false without launching when
// the device cannot hold the problem or would not use `blocks` blocks.
bool persistent_forward(const PersistentForwardArgs& args, int blocks, cudaStream_t stream);

// The same two for the backward kernel.
int persistent_backward_blocks(StorageType dtype, int hidden, int batch, bool tagged_exchange);
bool persistent_backward(const PersistentBackwardArgs& args, int blocks, cudaStream_t stream);

}  // namespace lstm_cuda
}  // namespace pydl
