// The time steps of one LSTM layer over a packed batch (PackedSequence
// layout: step t's batch_sizes[t] rows follow step t-1's), shared by the CPU
// and CUDA entries: where each step's rows start, the order the forward pass
// visits them, and which step feeds each one its previous state.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace pydl {

// The step that feeds step t its previous state (t-1 forward, t+1 in
// reverse), and how many of step t's rows take it from there; the remaining
// rows (sequences that start at step t, which only happens in reverse) start
// from the initial state.
struct PreviousStep {
  int64_t offset = 0;  // packed row offset of the previous step
  int64_t rows = 0;    // rows of step t fed by it
};

class StepSchedule {
 public:
  // batch_sizes: 1-D int64 on the CPU, validated by check_lstm_layer_args.
  StepSchedule(const at::Tensor& batch_sizes, bool reverse) : reverse_(reverse) {
    const at::Tensor sizes = batch_sizes.contiguous();
    const int64_t* bs = sizes.const_data_ptr<int64_t>();
    rows_.assign(bs, bs + sizes.numel());
    offsets_.assign(rows_.size() + 1, 0);
    for (size_t t = 0; t < rows_.size(); ++t) offsets_[t + 1] = offsets_[t] + rows_[t];
  }

  int64_t count() const { return static_cast<int64_t>(rows_.size()); }
  bool reverse() const { return reverse_; }
  int64_t rows(int64_t t) const { return rows_[t]; }
  int64_t offset(int64_t t) const { return offsets_[t]; }
  int64_t max_rows() const { return rows_.empty() ? 0 : rows_[0]; }
  // The smallest non-empty step (sizes are non-increasing).
  int64_t min_rows() const {
    for (auto it = rows_.rbegin(); it != rows_.rend(); ++it) {
      if (*it > 0) return *it;
    }
    return 0;
  }
  // The forward pass visits steps in this order (the backward in the opposite).
  int64_t forward_step(int64_t i) const { return reverse_ ? count() - 1 - i : i; }

  PreviousStep previous(int64_t t) const {
    const int64_t p = reverse_ ? t + 1 : t - 1;
    if (p < 0 || p >= count()) return {};
    return {offsets_[p], std::min(rows_[p], rows_[t])};
  }

 private:
  std::vector<int64_t> rows_, offsets_;
  bool reverse_;
};

}  // namespace pydl
