// LSTM cell and layer on CUDA: cuBLAS GEMMs through ATen (on the current
// stream, following torch's TF32 settings) around one fused pointwise kernel
// per step (cuda/lstm_pointwise.cuh), the large-batch path of the LSTM issue.
// The layer follows lstm_layer_cpu.cpp step for step: the input projection of
// all steps in one GEMM, then per step one recurrent GEMM into that step's
// rows and the pointwise kernel; packed batches shrink each step to the
// sequences still running. batch_sizes lives on the host, so the loop bounds
// need no synchronization.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "common/cuda_launch.cuh"
#include "lstm/cuda/lstm_persistent.h"
#include "lstm/cuda/lstm_pointwise.cuh"
#include "lstm/lstm_checks.h"
#include "lstm/lstm_gradients.h"
#include "lstm/lstm_row_copies.h"
#include "lstm/lstm_steps.h"

namespace pydl {
namespace lstm_cuda {
namespace {

// The CUDA guard and stream, or, compiled for the tests' CPU emulator
// (host tensors, no device), a no-op guard and no stream.
#ifdef PYDL_CUDA_EMULATION
struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};
cudaStream_t current_stream() { return nullptr; }
#else
using DeviceGuard = c10::cuda::CUDAGuard;
cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream(); }
#endif

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

dim3 grid_for(int64_t elements, int threads) {
  const int64_t blocks = (elements + threads - 1) / threads;
  return dim3(static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535)));
}

constexpr int kThreads = 256;

// The previous cell states of a step's `rows` rows: rows below `split` from
// c_prev, the others from c_rest (see PreviousCells); either may be undefined
// when it supplies no row.
template <typename T>
PreviousCells previous_cells(int64_t split, const at::Tensor& c_prev, const at::Tensor& c_rest) {
  return {split, ptr_or_null<T>(c_prev), ptr_or_null<T>(c_rest)};
}

// Pointwise forward over `rows` rows: gates activated in place.
void launch_forward(int64_t rows, int64_t hidden, const at::Tensor& gates, const at::Tensor& b_ih,
                    const at::Tensor& b_hh, int64_t split, const at::Tensor& c_prev,
                    const at::Tensor& c_rest, const at::Tensor& hy, const at::Tensor& cy) {
  if (rows == 0 || hidden == 0) return;
  const auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(),
                                  "pydl.lstm (CUDA pointwise)", [&] {
    using Acc = at::opmath_type<scalar_t>;
    auto kernel = cell_forward_kernel<scalar_t, Acc>;
    PYDL_LAUNCH_KERNEL(kernel, grid_for(rows * hidden, kThreads), kThreads, 0, stream,
        rows, hidden, gates.mutable_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(b_ih),
        ptr_or_null<scalar_t>(b_hh), previous_cells<scalar_t>(split, c_prev, c_rest),
        hy.mutable_data_ptr<scalar_t>(), cy.mutable_data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_backward(int64_t rows, int64_t hidden, const at::Tensor& grad_hy,
                     const at::Tensor& grad_h_extra, const at::Tensor& grad_cy, int64_t split,
                     const at::Tensor& c_prev, const at::Tensor& c_rest, const at::Tensor& cy,
                     const at::Tensor& workspace, const at::Tensor& grad_gates,
                     const at::Tensor& grad_cx) {
  if (rows == 0 || hidden == 0) return;
  const auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_gates.scalar_type(),
                                  "pydl.lstm_backward (CUDA pointwise)", [&] {
    using Acc = at::opmath_type<scalar_t>;
    auto kernel = cell_backward_kernel<scalar_t, Acc>;
    PYDL_LAUNCH_KERNEL(kernel, grid_for(rows * hidden, kThreads), kThreads, 0, stream,
        rows, hidden, grad_hy.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(grad_h_extra),
        grad_cy.const_data_ptr<scalar_t>(), previous_cells<scalar_t>(split, c_prev, c_rest),
        cy.const_data_ptr<scalar_t>(), workspace.const_data_ptr<scalar_t>(),
        grad_gates.mutable_data_ptr<scalar_t>(), grad_cx.mutable_data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor defined_contiguous(const std::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->contiguous() : at::Tensor();
}

// ---- the cell ------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_cuda(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh) {
  const LstmCellShape s = check_lstm_cell_args(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  const DeviceGuard guard(input.device());
  at::Tensor gates = at::mm(input, w_ih.t());
  gates.addmm_(hx, w_hh.t());
  at::Tensor hy = at::empty({s.batch, s.hidden}, input.options());
  at::Tensor cy = at::empty({s.batch, s.hidden}, input.options());
  launch_forward(s.batch, s.hidden, gates, defined_contiguous(b_ih), defined_contiguous(b_hh),
                 s.batch, cx.contiguous(), at::Tensor(), hy, cy);
  return {hy, cy, gates};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_cell_backward_cuda(const at::Tensor& grad_hy, const at::Tensor& grad_cy,
                        const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                        const at::Tensor& cy, const at::Tensor& workspace, const at::Tensor& w_ih,
                        const at::Tensor& w_hh, std::array<bool, 6> output_mask) {
  const LstmCellShape s =
      check_lstm_cell_args(input, hx, cx, w_ih, w_hh, std::nullopt, std::nullopt);
  check_lstm_cell_backward_args(s, input, grad_hy, grad_cy, cy, workspace);
  const DeviceGuard guard(input.device());
  at::Tensor dgates = at::empty({s.batch, 4 * s.hidden}, input.options());
  at::Tensor dcx = at::empty({s.batch, s.hidden}, input.options());
  launch_backward(s.batch, s.hidden, grad_hy.contiguous(), at::Tensor(), grad_cy.contiguous(),
                  s.batch, cx.contiguous(), at::Tensor(), cy.contiguous(), workspace.contiguous(),
                  dgates, dcx);
  return lstm_cell_gemm_grads(dgates, dcx, input, hx, w_ih, w_hh, output_mask);
}

// ---- the layer -----------------------------------------------------------------

// Every row's previous state into `copies` (a buffer laid out like the
// steps' rows): the previous step's rows of `all`, or the initial state's
// for rows that start at their step. Visited in step order, so a padded
// batch takes two copies whichever the direction.
void add_previous_rows(const StepSchedule& plan, const at::Tensor& all, const at::Tensor& initial,
                       RowCopies& copies) {
  for (int64_t t = 0; t < plan.count(); ++t) {
    const PreviousStep p = plan.previous(t);
    copies.add(plan.offset(t), all, p.offset, p.rows);
    copies.add(plan.offset(t) + p.rows, initial, p.rows, plan.rows(t) - p.rows);
  }
}

// Each sequence's state after its last step, from `all` (the steps' rows)
// into `copies` (batch rows; rows no step runs are left alone). Forward, rows
// [rows(t + 1), rows(t)) end at step t; reversed, every row ends at step 0.
void add_final_rows(const StepSchedule& plan, const at::Tensor& all, RowCopies& copies) {
  if (plan.reverse()) {
    if (plan.count() > 0) copies.add(0, all, plan.offset(0), plan.rows(0));
    return;
  }
  for (int64_t t = plan.count() - 1; t >= 0; --t) {
    const int64_t continuing = t + 1 < plan.count() ? plan.rows(t + 1) : 0;
    copies.add(continuing, all, plan.offset(t) + continuing, plan.rows(t) - continuing);
  }
}

// The persistent kernel serves small batches without a projection: up to
// 32 rows per step; larger batches take the cuBLAS loop. On an H200 it ran
// 1.2-6.4x cuDNN's standard algorithm at batch 1-16 (bf16, 2026-11-27/28) and a
// packed batch of 32 (hidden 256) 2.6-3.6x faster than the cuBLAS loop, while
// at batch 64 the loop was faster (persistent 0.6-0.86x cuDNN, loop
// 0.96-1.01x, bf16). The kernel itself runs any batch its shared memory holds
// (B x H floats of h per block); PYDL_LSTM_PERSISTENT_MAX_BATCH=N moves the
// limit, read per call, so the LSTM benchmarks' "pydl persistent" rows can
// time the two paths at batch 64 in one process. PYDL_LSTM_PERSISTENT=0
// turns it off.
constexpr int64_t kPersistentMaxBatch = 32;

int64_t persistent_max_batch() {
  const char* env = std::getenv("PYDL_LSTM_PERSISTENT");
  if (env != nullptr && std::strcmp(env, "0") == 0) return 0;
  const char* limit = std::getenv("PYDL_LSTM_PERSISTENT_MAX_BATCH");
  if (limit == nullptr) return kPersistentMaxBatch;
  char* end = nullptr;
  const long long value = std::strtoll(limit, &end, 10);
  TORCH_CHECK(end != limit && *end == '\0' && value >= 0,
              "pydl: PYDL_LSTM_PERSISTENT_MAX_BATCH must be a count of rows (>= 0), got '",
              limit, "'");
  return value;
}

// The storage type the persistent kernels would run this layer in, or
// nothing when they may not: a projection, float64, more rows per step than
// persistent_max_batch() allows, sizes past int, PYDL_LSTM_PERSISTENT=0,
// or CUDA-graph capture (the step table's copy below would be recorded with
// the address of a pinned buffer freed right after, and a replay could read
// whatever reuses it; the cuBLAS loop, its step sizes baked into its
// launches, captures safely).
std::optional<StorageType> persistent_storage(const StepSchedule& plan, const LstmLayerShape& s,
                                              at::ScalarType dtype) {
  const int64_t max_batch = persistent_max_batch();  // first: a bad value raises on every call
  if (s.out != s.hidden || dtype == at::kDouble || plan.max_rows() == 0 ||
      plan.max_rows() > max_batch || s.rows >= INT_MAX || s.hidden >= INT_MAX / 4 ||
      plan.count() >= INT_MAX) {
    return std::nullopt;
  }
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(current_stream(), &capture));
  if (capture != cudaStreamCaptureStatusNone) return std::nullopt;
  return dtype == at::kHalf       ? StorageType::Half
         : dtype == at::kBFloat16 ? StorageType::BFloat16
                                  : StorageType::Float;
}

// The step table on `like`'s device: rows of each step, then offsets; copied
// from pinned memory (no host sync).
at::Tensor device_step_table(const StepSchedule& plan, const at::Tensor& like) {
  at::Tensor table = at::empty(
      {2, plan.count()}, at::TensorOptions().dtype(at::kInt).pinned_memory(like.is_cuda()));
  int* host = table.mutable_data_ptr<int>();
  for (int64_t t = 0; t < plan.count(); ++t) {
    host[t] = static_cast<int>(plan.rows(t));
    host[plan.count() + t] = static_cast<int>(plan.offset(t));
  }
  return table.to(like.device(), /*non_blocking=*/true);
}

// The fields both persistent kernels take.
void fill_layer(PersistentLayer& layer, StorageType storage, const StepSchedule& plan,
                const LstmLayerShape& s, const at::Tensor& table, const at::Tensor& w_hh) {
  layer.dtype = storage;
  layer.steps = static_cast<int>(plan.count());
  // Plan, shared memory and scratch for the largest step's rows
  // (batch_sizes[0]), not hx's: rows beyond it never run and keep hx (hy is
  // hx's clone), so an hx with more rows costs nothing.
  layer.batch = static_cast<int>(plan.max_rows());
  layer.hidden = static_cast<int>(s.hidden);
  layer.reverse = plan.reverse();
  layer.step_rows = table.const_data_ptr<int>();
  layer.step_offsets = table.const_data_ptr<int>() + plan.count();
  layer.w_hh = w_hh.const_data_ptr();
}

// Runs the whole layer in one cooperative launch when it can (see
// cuda/lstm_persistent.h); false leaves everything untouched.
bool try_persistent_forward(const StepSchedule& plan, const LstmLayerShape& s,
                            const at::Tensor& w_hh, const at::Tensor& gates, const at::Tensor& hx,
                            const at::Tensor& cx, const at::Tensor& output, const at::Tensor& cells,
                            const at::Tensor& hy, const at::Tensor& cy) {
  const std::optional<StorageType> storage = persistent_storage(plan, s, gates.scalar_type());
  if (!storage) return false;
  const int64_t rows = plan.max_rows();  // see fill_layer
  const bool tagged = tagged_exchange_requested();  // read once: the kernel and its scratch agree
  const int blocks = persistent_forward_blocks(*storage, static_cast<int>(s.hidden),
                                               static_cast<int>(rows), tagged);
  if (blocks == 0) return false;
  const at::Tensor table = device_step_table(plan, gates);
  // h [2, rows, H] then c [rows, H], in float; with the tagged exchange h as
  // (value, step) words, twice the bytes.
  const int64_t h_planes = tagged ? 4 : 2;
  at::Tensor scratch =
      at::empty({h_planes + 1, rows, s.hidden}, gates.options().dtype(at::kFloat));
  float* scratch_base = scratch.mutable_data_ptr<float>();
  PersistentForwardArgs args{};
  fill_layer(args, *storage, plan, s, table, w_hh);
  args.tagged_exchange = tagged;
  if (tagged) {
    args.h_words = reinterpret_cast<uint64_t*>(scratch_base);
  } else {
    args.h_buffers = scratch_base;
  }
  args.c_state = scratch_base + h_planes * rows * s.hidden;
  args.gates = gates.mutable_data_ptr();
  args.h0 = hx.const_data_ptr();
  args.c0 = cx.const_data_ptr();
  args.output = output.mutable_data_ptr();
  args.cells = cells.mutable_data_ptr();
  args.hy = hy.mutable_data_ptr();
  args.cy = cy.mutable_data_ptr();
  return persistent_forward(args, blocks, current_stream());
}

// The backward's time loop in one cooperative launch when it can: fills
// dgates and turns dh / dc (grad_hy / grad_cy in) into the gradients of h0 /
// c0, as the cuBLAS loop does; false leaves everything untouched.
bool try_persistent_backward(const StepSchedule& plan, const LstmLayerShape& s,
                             const at::Tensor& w_hh, const at::Tensor& grad_output,
                             const at::Tensor& gates, const at::Tensor& cells,
                             const at::Tensor& cx, const at::Tensor& dgates, const at::Tensor& dh,
                             const at::Tensor& dc) {
  const std::optional<StorageType> storage = persistent_storage(plan, s, gates.scalar_type());
  if (!storage) return false;
  const int64_t rows = plan.max_rows();  // see fill_layer
  const bool tagged = tagged_exchange_requested();  // read once, as in the forward
  const int blocks = persistent_backward_blocks(*storage, static_cast<int>(s.hidden),
                                                static_cast<int>(rows), tagged);
  if (blocks == 0) return false;
  const at::Tensor table = device_step_table(plan, gates);
  // Each block's share of dh_prev per step, double buffered (as tagged words
  // with the tagged exchange).
  at::Tensor shares = at::empty({2, blocks, rows, s.hidden},
                                gates.options().dtype(tagged ? at::kLong : at::kFloat));
  // The state gradients in float between steps (as the forward keeps h and
  // c): dh / dc themselves when float (they are the caller's private copies).
  const bool is_float = dh.scalar_type() == at::kFloat;
  at::Tensor dh_f = is_float ? dh : dh.to(at::kFloat);
  at::Tensor dc_f = is_float ? dc : dc.to(at::kFloat);
  PersistentBackwardArgs args{};
  fill_layer(args, *storage, plan, s, table, w_hh);
  args.grad_output = grad_output.const_data_ptr();
  args.gates = gates.const_data_ptr();
  args.cells = cells.const_data_ptr();
  args.c0 = cx.const_data_ptr();
  args.grad_gates = dgates.mutable_data_ptr();
  args.dh = dh_f.mutable_data_ptr<float>();
  args.dc = dc_f.mutable_data_ptr<float>();
  args.tagged_exchange = tagged;
  if (tagged) {
    args.dh_share_words = reinterpret_cast<uint64_t*>(shares.mutable_data_ptr<int64_t>());
  } else {
    args.dh_shares = shares.mutable_data_ptr<float>();
  }
  if (!persistent_backward(args, blocks, current_stream())) return false;
  if (!is_float) {
    dh.copy_(dh_f);
    dc.copy_(dc_f);
  }
  return true;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_layer_cuda(const at::Tensor& input, const at::Tensor& batch_sizes, const at::Tensor& hx,
                const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                const std::optional<at::Tensor>& w_hr, bool reverse) {
  const LstmLayerShape s =
      check_lstm_layer_args(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr);
  const DeviceGuard guard(input.device());
  const at::Tensor proj = defined_contiguous(w_hr);
  const at::Tensor bi = defined_contiguous(b_ih), bh = defined_contiguous(b_hh);
  at::Tensor gates = bi.defined() || bh.defined()
                         ? at::addmm(bi.defined() && bh.defined() ? bi + bh
                                                                  : (bi.defined() ? bi : bh),
                                     input, w_ih.t())
                         : at::mm(input, w_ih.t());
  gates = gates.contiguous();
  const auto opts = input.options();
  at::Tensor output = at::empty({s.rows, s.out}, opts);
  at::Tensor cells = at::empty({s.rows, s.hidden}, opts);
  at::Tensor hidden_pre = at::empty({proj.defined() ? s.rows : 0, s.hidden}, opts);
  const at::Tensor h0 = hx.contiguous(), c0 = cx.contiguous();
  at::Tensor hy = h0.clone();  // rows past the first step's never run and keep h0 / c0
  at::Tensor cy = c0.clone();
  const StepSchedule plan(batch_sizes, reverse);
  if (try_persistent_forward(plan, s, w_hh.contiguous(), gates, h0, c0, output, cells, hy, cy)) {
    return {output, hy, cy, gates, cells, hidden_pre};
  }
  // Per step: h_prev W_hh^T into the step's gate rows and the pointwise
  // kernel, both reading the previous state where the previous step left it
  // (its output and cell rows) or, for rows that start at this step, in h0 /
  // c0: no per-step copies (host time per ATen call, not GPU time, bounds
  // this loop at batch 64).
  const at::Tensor whh_t = w_hh.t();
  for (int64_t i = 0; i < plan.count(); ++i) {
    const int64_t t = plan.forward_step(i), rows = plan.rows(t), off = plan.offset(t);
    if (rows == 0) continue;
    const PreviousStep prev = plan.previous(t);
    const int64_t starting = rows - prev.rows;  // sequences that start here (reversed, packed)
    at::Tensor g = gates.narrow(0, off, rows);
    if (prev.rows > 0) {
      g.narrow(0, 0, prev.rows).addmm_(output.narrow(0, prev.offset, prev.rows), whh_t);
    }
    if (starting > 0) {
      g.narrow(0, prev.rows, starting).addmm_(h0.narrow(0, prev.rows, starting), whh_t);
    }
    at::Tensor out_rows = output.narrow(0, off, rows);
    const at::Tensor h_cell = proj.defined() ? hidden_pre.narrow(0, off, rows) : out_rows;
    const at::Tensor c_prev =
        prev.rows > 0 ? cells.narrow(0, prev.offset, prev.rows) : at::Tensor();
    launch_forward(rows, s.hidden, g, at::Tensor(), at::Tensor(), prev.rows, c_prev, c0, h_cell,
                   cells.narrow(0, off, rows));
    if (proj.defined()) at::mm_out(out_rows, h_cell, proj.t());
  }
  RowCopies final_h(hy), final_c(cy);
  add_final_rows(plan, output, final_h);
  add_final_rows(plan, cells, final_c);
  final_h.run();
  final_c.run();
  return {output, hy, cy, gates, cells, hidden_pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_layer_backward_cuda(const at::Tensor& grad_output, const at::Tensor& grad_hy,
                         const at::Tensor& grad_cy, const at::Tensor& input,
                         const at::Tensor& batch_sizes, const at::Tensor& hx,
                         const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                         const std::optional<at::Tensor>& w_hr, const at::Tensor& output,
                         const at::Tensor& gates, const at::Tensor& cells,
                         const at::Tensor& hidden_pre, bool reverse,
                         std::array<bool, 7> output_mask) {
  const LstmLayerShape s = check_lstm_layer_args(input, batch_sizes, hx, cx, w_ih, w_hh,
                                                 std::nullopt, std::nullopt, w_hr);
  const at::Tensor proj = defined_contiguous(w_hr);
  check_lstm_layer_backward_args(s, proj.defined(), input, grad_output, grad_hy, grad_cy, output,
                                 gates, cells, hidden_pre);
  const DeviceGuard guard(input.device());
  const auto opts = input.options();
  const at::Tensor go = grad_output.contiguous(), c0 = cx.contiguous(), h0 = hx.contiguous(),
                   ws = gates.contiguous(), cs = cells.contiguous(), out = output.contiguous();
  at::Tensor dgates = at::empty({s.rows, 4 * s.hidden}, opts);
  at::Tensor dh = grad_hy.contiguous().clone();
  at::Tensor dc = grad_cy.contiguous().clone();
  at::Tensor dh_total = at::empty({proj.defined() ? s.rows : 0, s.out}, opts);
  at::Tensor h_pre_grad = at::empty({proj.defined() ? s.batch : 0, s.hidden}, opts);
  const StepSchedule plan(batch_sizes, reverse);
  // (A projection never takes it: persistent_storage refuses out != hidden.)
  const bool persistent =
      try_persistent_backward(plan, s, w_hh.contiguous(), go, ws, cs, c0, dgates, dh, dc);
  for (int64_t i = persistent ? -1 : plan.count() - 1; i >= 0; --i) {
    const int64_t t = plan.forward_step(i), rows = plan.rows(t), off = plan.offset(t);
    if (rows == 0) continue;
    const PreviousStep prev = plan.previous(t);
    at::Tensor grad_h = dh.narrow(0, 0, rows);
    at::Tensor grad_h_extra = go.narrow(0, off, rows);
    if (proj.defined()) {
      at::Tensor total = dh_total.narrow(0, off, rows);
      at::add_out(total, grad_h, grad_h_extra);
      grad_h = h_pre_grad.narrow(0, 0, rows);
      at::mm_out(grad_h, total, proj);
      grad_h_extra = at::Tensor();
    }
    const at::Tensor dg = dgates.narrow(0, off, rows);
    const at::Tensor dc_rows = dc.narrow(0, 0, rows);
    const at::Tensor c_prev = prev.rows > 0 ? cs.narrow(0, prev.offset, prev.rows) : at::Tensor();
    launch_backward(rows, s.hidden, grad_h, grad_h_extra, dc_rows, prev.rows, c_prev, c0,
                    cs.narrow(0, off, rows), ws.narrow(0, off, rows), dg, dc_rows);
    at::Tensor dh_rows = dh.narrow(0, 0, rows);
    at::mm_out(dh_rows, dg, w_hh);
  }
  at::Tensor h_prev;  // (N, P): each step's h_prev, for w_hh's gradient
  if (output_mask[4]) {
    h_prev = at::empty({s.rows, s.out}, opts);
    RowCopies previous(h_prev);
    add_previous_rows(plan, out, h0, previous);
    previous.run();
  }
  return lstm_layer_gemm_grads(dgates, dh, dc, input, h_prev, w_ih, dh_total, hidden_pre,
                               proj.defined(), output_mask);
}

}  // namespace
}  // namespace lstm_cuda
}  // namespace pydl

#ifndef PYDL_CUDA_EMULATION
TORCH_LIBRARY_IMPL(pydl, CUDA, m) {
  m.impl("lstm_cell", &pydl::lstm_cuda::lstm_cell_cuda);
  m.impl("lstm_cell_backward", &pydl::lstm_cuda::lstm_cell_backward_cuda);
  m.impl("lstm_layer", &pydl::lstm_cuda::lstm_layer_cuda);
  m.impl("lstm_layer_backward", &pydl::lstm_cuda::lstm_layer_backward_cuda);
}
#endif  // PYDL_CUDA_EMULATION
