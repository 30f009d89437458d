// Row-block copies between packed LSTM buffers, coalesced: the CUDA layer
// loop assembles each sequence's final state and every row's previous h
// (for w_hh's gradient) from the steps' rows. Copied step by step that was
// one ATen copy per step and state, host overhead that dominated a step at
// batch 64; runs of steps whose rows continue each other in both buffers
// (all of a padded batch, the steps between length changes of a packed one)
// merge into one copy.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace pydl {

class RowCopies {
 public:
  explicit RowCopies(at::Tensor dst) : dst_(std::move(dst)) {}

  // dst rows [dst_row, dst_row + rows) = src rows [src_row, src_row + rows).
  // Blocks merge only with the same source tensor (is_same).
  void add(int64_t dst_row, const at::Tensor& src, int64_t src_row, int64_t rows) {
    if (rows == 0) return;
    if (!blocks_.empty()) {
      Block& last = blocks_.back();
      if (last.src.is_same(src) && last.dst_row + last.rows == dst_row &&
          last.src_row + last.rows == src_row) {
        last.rows += rows;
        return;
      }
    }
    blocks_.push_back({dst_row, src, src_row, rows});
  }

  void run() const {
    for (const Block& b : blocks_) {
      dst_.narrow(0, b.dst_row, b.rows).copy_(b.src.narrow(0, b.src_row, b.rows));
    }
  }

 private:
  struct Block {
    int64_t dst_row;
    at::Tensor src;
    int64_t src_row;
    int64_t rows;
  };
  at::Tensor dst_;
  std::vector<Block> blocks_;
};

}  // namespace pydl
