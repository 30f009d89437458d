// One LSTM layer in one direction over a whole (packed) sequence, on the CPU.
//
// Forward: the input projection of every step is one GEMM (for small fused
// layers, computed inside the fused loop's parallel region); the time loop then
// does, per step, one product for the recurrent GEMM (accumulated into that
// step's rows of the projection) and the fused pointwise pass (which adds the
// biases) — no ATen op, allocation or Python inside the loop.
// Packed batches (sequences sorted longest first) shrink the GEMM to the
// sequences still running: no work on padding.
//
// Backward through time mirrors it; the weight gradients are a few large
// GEMMs over all steps at the end.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "common/blas.h"
#include "common/workspace.h"
#include "lstm/cpu/lstm_cpu_kernel.h"
#include "lstm/lstm_checks.h"
#include "lstm/lstm_gradients.h"
#include "lstm/lstm_steps.h"

namespace pydl {
namespace lstm_cpu {
namespace {

// dst (rows of step t, width) = the previous step's rows of `all`, then the
// initial state for rows that start at step t.
template <typename T>
void gather_previous(const StepSchedule& steps, int64_t t, const T* all, const T* initial,
                     int64_t width, T* dst) {
  const PreviousStep p = steps.previous(t);
  if (p.rows > 0) std::memcpy(dst, all + p.offset * width, sizeof(T) * p.rows * width);
  const int64_t rest = steps.rows(t) - p.rows;
  if (rest > 0) {
    std::memcpy(dst + p.rows * width, initial + p.rows * width, sizeof(T) * rest * width);
  }
}

// c (m x n) = a (m x k) @ b (+ c when accumulate), row-major, b stored (k x n),
// over blas.h's column-major gemm. (MKL runs this "N" layout 15-35% faster
// than a @ w^T with w stored (n x k), measured at LSTM step sizes.)
template <typename T>
void blas_matmul(int64_t m, int64_t n, int64_t k, const T* a, const T* b, T* c, bool accumulate) {
  gemm(/*trans_a=*/false, n, m, k, T(1), b, n, a, k, accumulate ? T(1) : T(0), c, n);
}

// PYDL_LSTM_SMALL_BATCH's value, or -1 when unset (read once per process).
int64_t small_batch_env() {
  static const int64_t value = [] {
    const char* env = std::getenv("PYDL_LSTM_SMALL_BATCH");
    return env ? std::atoll(env) : int64_t(-1);
  }();
  return value;
}

// Up to this many rows per step a product (rows x k) @ (k x n) runs on the
// register kernel on packed panels (small_matmul.h), whose lack of a fixed
// cost per call wins on small products; above it MKL. Against plain sgemm
// (float64; float32 without MKL's packed GEMM) the register kernel won up to
// 64 rows. Against MKL's packed GEMM (float32) it still did, or drew, while
// the operand fits in about 1 MB (that Xeon's L2 is 2 MB per core; LSTM
// inference and training, 2 threads: B16 H256 5.9 vs 6.6 ms, packed batches
// of up to 32 rows at H256 3% faster, B64 H256 even); past that MKL's packed
// GEMM won from about rows * k = 4096 (B16 H512 12 vs 14 ms, B64 H512 40 vs
// 44 ms, B32 H512 training 65 vs 72 ms).
// Those measurements were on Intel processors; where MKL runs its generic
// code (mkl_runs_generic_code: AMD) the register kernel won at every size.
// PYDL_LSTM_SMALL_BATCH sets one fixed limit (for measuring the switch).
int64_t small_batch_limit(int64_t k, int64_t n, at::ScalarType dtype) {
  if (small_batch_env() >= 0) return small_batch_env();
  const bool fits_l2 = k * n * 4 <= (int64_t{1} << 20);
  if (dtype == at::kFloat && PackedRhs::available() && !fits_l2 && !mkl_runs_generic_code()) {
    return std::clamp<int64_t>(4096 / std::max<int64_t>(k, 1), 1, 64);
  }
  return 64;
}

// Rows up to which a step product runs on the register kernel rather than
// BLAS: small_batch_limit, or any number where MKL runs its generic code.
// On an AMD EPYC (Zen 4, 2 threads), LSTM inference against oneDNN went
// 0.55x -> 1.15x at B16 H1024, 0.69x -> 0.92x at B64 H512 (both the fused
// loop, under small_batch_limit's 64 rows), 0.74x -> 0.88x at B128 H512 and
// 0.79x -> 0.91x at B256 H1024 (the step loop on the register kernel). The
// fused loop keeps small_batch_limit.
int64_t register_kernel_limit(int64_t k, int64_t n, at::ScalarType dtype) {
  if (small_batch_env() < 0 && mkl_runs_generic_code()) {
    return std::numeric_limits<int64_t>::max();
  }
  return small_batch_limit(k, n, dtype);
}

// Whether the fused loop computes the input projection itself: where the
// input rows fit in L2 with room to spare (batch-1 sequences, a few short
// batched ones), so each participant's pass over them for its own units
// stays in cache, w_ih (packed on every call) is at most 1 MB, and there
// are rows enough (8) to pay for that packing. There a separate BLAS call
// (MKL's generic code on an AMD EPYC) took 87-144 us of a 276 us B1 H128
// T100 layer. PYDL_LSTM_FUSED_INPUT=0 / 1 turns it off / on for any size
// (tests, A/B; read once per process).
bool fused_input_projection(const at::Tensor& input, const at::Tensor& w_ih) {
  static const char* env = std::getenv("PYDL_LSTM_FUSED_INPUT");
  if (env != nullptr) return std::strcmp(env, "0") != 0;
  constexpr int64_t kInputBytes = 256 * 1024, kWeightBytes = 1024 * 1024;
  return input.size(0) >= 8 && input.numel() * input.element_size() <= kInputBytes &&
         w_ih.numel() * w_ih.element_size() <= kWeightBytes;
}

// gates (N, 4H) = input (N, I) @ w_ih^T: ATen's GEMM, or, where MKL runs
// its generic code, pydl's register kernel over row chunks of about 256 KB
// (they stay in L2 while the panels of w_ih, packed once per call, stream
// past them). PYDL_LSTM_REGISTER_INPUT=0 / 1 forces ATen / the register
// kernel (tests, A/B; read once per process).
at::Tensor input_projection(const at::Tensor& input, const at::Tensor& w_ih) {
  static const char* env = std::getenv("PYDL_LSTM_REGISTER_INPUT");
  const bool register_kernel =
      env != nullptr ? std::strcmp(env, "0") != 0 : mkl_runs_generic_code();
  const int64_t N = input.size(0), I = input.size(1), G = w_ih.size(0);
  if (!register_kernel || N == 0 || I == 0 || G == 0) return at::mm(input, w_ih.t()).contiguous();
  const KernelTable& kernel = kernel_for_this_cpu();
  const bool is_double = input.scalar_type() == at::kDouble;
  const at::Tensor b = w_ih.t();  // (I x 4H), any strides
  void* packed = Workspace::get<unsigned char>(
      WorkspaceSlot::LstmInputWeight, kernel.packed_size(I, G, is_double) * input.element_size());
  kernel.pack(PackArgs{I, G, b.stride(0), b.stride(1), is_double, b.const_data_ptr(), packed});
  const at::Tensor x = input.contiguous();
  at::Tensor gates = at::empty({N, G}, input.options());
  const int64_t elem = input.element_size();
  const int64_t chunk = std::max<int64_t>(4, (256 * 1024) / (I * elem) / 4 * 4);
  const auto* xs = static_cast<const unsigned char*>(x.const_data_ptr());
  auto* gs = static_cast<unsigned char*>(gates.mutable_data_ptr());
  for (int64_t r0 = 0; r0 < N; r0 += chunk) {
    kernel.small_matmul(SmallMatmulArgs{std::min(chunk, N - r0), G, I, is_double,
                                        xs + r0 * I * elem, packed, gs + r0 * G * elem,
                                        /*accumulate=*/false});
  }
  return gates;
}

// Workspace slots of one operand's two packed forms.
struct OperandSlots {
  WorkspaceSlot panels, blas;
};
constexpr OperandSlots kRecurrentSlots{WorkspaceSlot::LstmRecurrentWeight,
                                       WorkspaceSlot::LstmRecurrentWeightBlas};
constexpr OperandSlots kProjectionSlots{WorkspaceSlot::LstmProjectionWeight,
                                        WorkspaceSlot::LstmProjectionWeightBlas};

// The right-hand side B (k x n) of a per-step product c = a @ B, prepared
// once per call in the form(s) the steps need: packed panels for the
// register kernel (small steps); for the larger ones MKL's packed form
// (float32) or a row-major copy for plain BLAS (float64).
class StepOperand {
 public:
  StepOperand() = default;
  // b: a (k x n) view of any strides (e.g. w.t()). The packed forms live in
  // this thread's workspace `slots` (a fresh multi-MB tensor per call would
  // page-fault on every touch: 250 us of a 290 us one-step call at H=256).
  StepOperand(const at::Tensor& b, const StepSchedule& steps, OperandSlots slots)
      : k_(b.size(0)), n_(b.size(1)), small_rows_(register_kernel_limit(k_, n_, b.scalar_type())) {
    if (steps.max_rows() > small_rows_) {
      if (b.scalar_type() == at::kFloat && PackedRhs::available() &&
          PackedRhs::can_pack(k_, n_, b.stride(0), b.stride(1))) {
        void* dest = Workspace::get<unsigned char>(
            slots.blas, static_cast<int64_t>(PackedRhs::bytes(k_, n_, steps.max_rows())));
        mkl_packed_ = PackedRhs(b.const_data_ptr<float>(), k_, n_, b.stride(0), b.stride(1),
                                steps.max_rows(), dest);
      } else {
        dense_ = b.contiguous();
      }
    }
    if (steps.min_rows() <= small_rows_) {
      const KernelTable& kernel = kernel_for_this_cpu();
      const bool is_double = b.scalar_type() == at::kDouble;
      const int64_t bytes = kernel.packed_size(k_, n_, is_double) * b.element_size();
      void* packed = Workspace::get<unsigned char>(slots.panels, bytes);
      kernel.pack(PackArgs{k_, n_, b.stride(0), b.stride(1), is_double, b.const_data_ptr(),
                           packed});
      packed_ = packed;
    }
  }

  bool defined() const { return k_ > 0; }

  // c (rows x n) = a (rows x k) @ B (+ c when accumulate).
  template <typename T>
  void multiply(int64_t rows, const T* a, T* c, bool accumulate) const {
    if (rows <= small_rows_) {
      kernel_for_this_cpu().small_matmul(SmallMatmulArgs{
          rows, n_, k_, std::is_same_v<T, double>, a, packed_, c, accumulate});
      return;
    }
    if constexpr (std::is_same_v<T, float>) {
      if (mkl_packed_.defined()) {
        mkl_packed_.multiply(rows, a, c, accumulate);
      } else {
        blas_matmul<T>(rows, n_, k_, a, dense_.const_data_ptr<T>(), c, accumulate);
      }
    } else {
      blas_matmul<T>(rows, n_, k_, a, dense_.const_data_ptr<T>(), c, accumulate);
    }
  }

 private:
  int64_t k_ = 0, n_ = 0;
  int64_t small_rows_ = 0;  // up to this many rows: the register kernel
  at::Tensor dense_;
  PackedRhs mkl_packed_;
  const void* packed_ = nullptr;
};

at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->contiguous() : at::Tensor();
}

// w_hh = w_hh^T (P x 4H), w_hr = w_hr^T (H x P) or undefined.
template <typename T>
void forward_loop(const StepSchedule& steps, const LstmLayerShape& s, const StepOperand& w_hh,
                  const StepOperand& w_hr, const T* b_ih, const T* b_hh, T* gates, T* cells,
                  T* hidden_pre, T* output, T* h_state, T* c_state) {
  const KernelTable& kernel = kernel_for_this_cpu();
  const int64_t H = s.hidden, P = s.out;
  for (int64_t i = 0; i < steps.count(); ++i) {
    const int64_t t = steps.forward_step(i), rows = steps.rows(t), off = steps.offset(t);
    if (rows == 0) continue;
    T* g = gates + off * 4 * H;
    // gates += h_prev @ w_hh^T; h_state's first `rows` rows are this step's h_prev
    // (sequences sorted longest first keep the running ones at the front).
    w_hh.multiply(rows, h_state, g, /*accumulate=*/true);
    T* h_cell = w_hr.defined() ? hidden_pre + off * H : output + off * P;
    kernel.cell_forward(CellForwardArgs{rows, H, std::is_same_v<T, double>, g, b_ih, b_hh,
                                        c_state, h_cell, cells + off * H});
    if (w_hr.defined()) w_hr.multiply(rows, h_cell, output + off * P, /*accumulate=*/false);
    std::memcpy(h_state, output + off * P, sizeof(T) * rows * P);
    std::memcpy(c_state, cells + off * H, sizeof(T) * rows * H);
  }
}

// Small batches without a projection: one fused pass per step, recurrent
// product and pointwise math together, the whole time loop in one parallel
// region (cpu/fused_step.h). h alternates between two buffers (threads read
// all of h_prev while others write their units of h_next). c is updated in
// place in cy (each unit belongs to one thread): a row's c is left untouched
// once its sequence ends, so cy ends holding every row's last c. hy takes
// each row's h at its own last step.
//
// x: the input rows when the loop computes the input projection itself
// (fused_input_projection), else undefined and gates holds it already.
void fused_forward_loop(const StepSchedule& steps, const LstmLayerShape& s,
                        const at::Tensor& w_hh, const at::Tensor& bi, const at::Tensor& bh,
                        const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& gates,
                        const at::Tensor& cells, const at::Tensor& output, const at::Tensor& h0,
                        const at::Tensor& hy, const at::Tensor& cy) {
  std::vector<int64_t> rows, offsets, ended_from;
  for (int64_t i = 0; i < steps.count(); ++i) {
    const int64_t t = steps.forward_step(i), n = steps.rows(t);
    if (n == 0) continue;
    // Rows the next step does not run end here.
    const int64_t next = i + 1 < steps.count() ? steps.rows(steps.forward_step(i + 1)) : 0;
    rows.push_back(n);
    offsets.push_back(steps.offset(t));
    ended_from.push_back(std::min(next, n));
  }
  const KernelTable& kernel = kernel_for_this_cpu();
  const bool is_double = gates.scalar_type() == at::kDouble;
  // The packed w_hh lives in this thread's workspace (a fresh 256 KB+ tensor
  // per call would page-fault on every touch).
  void* panels = Workspace::get<unsigned char>(
      WorkspaceSlot::LstmRecurrentWeight,
      kernel.gate_panels_size(s.hidden, s.hidden, is_double) * gates.element_size());
  void* panels_ih =
      x.defined() ? Workspace::get<unsigned char>(
                        WorkspaceSlot::LstmInputWeight,
                        kernel.gate_panels_size(s.hidden, s.input_size, is_double) *
                            gates.element_size())
                  : nullptr;
  // Both buffers start as h0 (plain copies: cheaper than Tensor::repeat).
  at::Tensor h_buffers = at::empty({2, s.batch, s.hidden}, gates.options());
  const int64_t state_bytes = s.batch * s.hidden * gates.element_size();
  for (int b = 0; b < 2 && state_bytes > 0; ++b) {
    std::memcpy(static_cast<char*>(h_buffers.mutable_data_ptr()) + b * state_bytes,
                h0.const_data_ptr(), state_bytes);
  }
  kernel.fused_sequence(FusedSequenceArgs{
      static_cast<int64_t>(rows.size()), rows.data(), offsets.data(), ended_from.data(),
      s.batch, s.hidden, is_double, w_hh.const_data_ptr(), panels, gates.mutable_data_ptr(),
      x.defined() ? x.const_data_ptr() : nullptr, s.rows, s.input_size,
      x.defined() ? w_ih.const_data_ptr() : nullptr, panels_ih,
      bi.defined() ? bi.const_data_ptr() : nullptr,
      bh.defined() ? bh.const_data_ptr() : nullptr, cy.mutable_data_ptr(),
      cells.mutable_data_ptr(), output.mutable_data_ptr(), h_buffers.mutable_data_ptr(),
      hy.mutable_data_ptr()});
}

// (output, hy, cy, gates, cells, hidden_pre); the last three feed the backward:
// activated gates (N, 4H), cell states (N, H), and with a projection the
// pre-projection hidden states (N, H) (else an empty tensor).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_layer_cpu(const at::Tensor& input, const at::Tensor& batch_sizes, const at::Tensor& hx,
               const at::Tensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
               const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
               const std::optional<at::Tensor>& w_hr, bool reverse) {
  const LstmLayerShape s =
      check_lstm_layer_args(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr);
  check_lstm_cpu_dtype(input, "pydl.lstm_layer");
  const at::Tensor proj = contiguous_or_undefined(w_hr);
  const StepSchedule steps(batch_sizes, reverse);
  const bool fused =
      !proj.defined() &&
      steps.max_rows() <= small_batch_limit(s.out, 4 * s.hidden, input.scalar_type());
  // The hoisted input projection: one GEMM for all steps (the biases are
  // added by the pointwise pass: no extra pass over all the gates), or, for a
  // small fused layer, inside the fused loop's parallel region.
  // (Not with no input features: at::mm makes the zeros then.)
  const bool project_in_loop = fused && s.input_size > 0 && fused_input_projection(input, w_ih);
  const at::Tensor gates = project_in_loop ? at::empty({s.rows, 4 * s.hidden}, input.options())
                                           : input_projection(input, w_ih);
  const at::Tensor bi = contiguous_or_undefined(b_ih), bh = contiguous_or_undefined(b_hh);
  const auto opts = input.options();
  at::Tensor output = at::empty({s.rows, s.out}, opts);
  at::Tensor cells = at::empty({s.rows, s.hidden}, opts);
  at::Tensor hidden_pre = at::empty({proj.defined() ? s.rows : 0, s.hidden}, opts);
  // The running states; rows of finished sequences keep their last values,
  // which is what hy/cy report for them.
  const at::Tensor h0 = hx.contiguous();
  at::Tensor hy = h0.clone();
  at::Tensor cy = cx.contiguous().clone();
  if (fused) {
    fused_forward_loop(steps, s, w_hh.contiguous(), bi, bh,
                       project_in_loop ? input.contiguous() : at::Tensor(), w_ih.contiguous(),
                       gates, cells, output, h0, hy, cy);
    return {output, hy, cy, gates, cells, hidden_pre};
  }
  const StepOperand whh_t(w_hh.t(), steps, kRecurrentSlots);
  const StepOperand proj_t = proj.defined()
                                 ? StepOperand(proj.t(), steps, kProjectionSlots)
                                 : StepOperand();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pydl.lstm_layer", [&] {
    forward_loop<scalar_t>(steps, s, whh_t, proj_t,
                           bi.defined() ? bi.const_data_ptr<scalar_t>() : nullptr,
                           bh.defined() ? bh.const_data_ptr<scalar_t>() : nullptr,
                           gates.mutable_data_ptr<scalar_t>(), cells.mutable_data_ptr<scalar_t>(),
                           hidden_pre.mutable_data_ptr<scalar_t>(),
                           output.mutable_data_ptr<scalar_t>(), hy.mutable_data_ptr<scalar_t>(),
                           cy.mutable_data_ptr<scalar_t>());
  });
  return {output, hy, cy, gates, cells, hidden_pre};
}

template <typename T>
struct BackwardBuffers {
  const StepOperand& w_hh;  // w_hh (4H x P): dgates @ w_hh
  const StepOperand& w_hr;  // w_hr (P x H) or undefined
  const T *grad_output, *cx, *gates, *cells;
  T *grad_gates, *grad_h, *grad_c;  // grad_h/grad_c: (B, P)/(B, H) running gradients
  T* grad_h_total;                  // (N, P) with a projection (for w_hr's gradient)
  T *h_pre_grad, *c_prev;           // (B, H) scratch
};

template <typename T>
void backward_loop(const StepSchedule& steps, const LstmLayerShape& s,
                   const BackwardBuffers<T>& b) {
  const KernelTable& kernel = kernel_for_this_cpu();
  const int64_t H = s.hidden, P = s.out;
  for (int64_t i = steps.count() - 1; i >= 0; --i) {
    const int64_t t = steps.forward_step(i), rows = steps.rows(t), off = steps.offset(t);
    if (rows == 0) continue;
    // c_prev: straight from the previous step's rows when they cover this step.
    const T* c_prev = b.c_prev;
    const PreviousStep p = steps.previous(t);
    if (p.rows == rows) {
      c_prev = b.cells + p.offset * H;
    } else if (p.rows == 0) {
      c_prev = b.cx;
    } else {
      gather_previous(steps, t, b.cells, b.cx, H, b.c_prev);
    }
    // Gradient reaching this step's h: its output row's plus the recurrent one.
    const T* grad_h = b.grad_h;
    const T* grad_h_extra = b.grad_output + off * P;
    if (b.w_hr.defined()) {
      T* total = b.grad_h_total + off * P;
      for (int64_t k = 0; k < rows * P; ++k) total[k] = b.grad_h[k] + grad_h_extra[k];
      b.w_hr.multiply(rows, total, b.h_pre_grad, /*accumulate=*/false);
      grad_h = b.h_pre_grad;
      grad_h_extra = nullptr;
    }
    T* dgates = b.grad_gates + off * 4 * H;
    kernel.cell_backward(CellBackwardArgs{rows, H, std::is_same_v<T, double>, grad_h,
                                          grad_h_extra, b.grad_c, c_prev, b.cells + off * H,
                                          b.gates + off * 4 * H, dgates, b.grad_c});
    // To the previous step's h: dgates @ w_hh.
    b.w_hh.multiply(rows, dgates, b.grad_h, /*accumulate=*/false);
  }
}

// Gradients (input, hx, cx, w_ih, w_hh, bias, w_hr); bias's is shared by
// b_ih and b_hh. output_mask selects which are computed.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_layer_backward_cpu(const at::Tensor& grad_output, const at::Tensor& grad_hy,
                        const at::Tensor& grad_cy, const at::Tensor& input,
                        const at::Tensor& batch_sizes, const at::Tensor& hx, const at::Tensor& cx,
                        const at::Tensor& w_ih, const at::Tensor& w_hh,
                        const std::optional<at::Tensor>& w_hr, const at::Tensor& output,
                        const at::Tensor& gates, const at::Tensor& cells,
                        const at::Tensor& hidden_pre, bool reverse,
                        std::array<bool, 7> output_mask) {
  const LstmLayerShape s = check_lstm_layer_args(input, batch_sizes, hx, cx, w_ih, w_hh,
                                                 std::nullopt, std::nullopt, w_hr);
  check_lstm_cpu_dtype(input, "pydl.lstm_layer");
  const at::Tensor proj = contiguous_or_undefined(w_hr);
  check_lstm_layer_backward_args(s, proj.defined(), input, grad_output, grad_hy, grad_cy, output,
                                 gates, cells, hidden_pre);

  const auto opts = input.options();
  const at::Tensor go = grad_output.contiguous(), x0 = cx.contiguous(), h0 = hx.contiguous(),
                   whh = w_hh.contiguous(), ws = gates.contiguous(), cs = cells.contiguous(),
                   out = output.contiguous();
  at::Tensor dgates = at::empty({s.rows, 4 * s.hidden}, opts);
  at::Tensor dh = grad_hy.contiguous().clone();
  at::Tensor dc = grad_cy.contiguous().clone();
  at::Tensor dh_total = at::empty({proj.defined() ? s.rows : 0, s.out}, opts);
  at::Tensor scratch = at::empty({2, s.batch, s.hidden}, opts);
  const StepSchedule steps(batch_sizes, reverse);
  const StepOperand whh_op(whh, steps, kRecurrentSlots);
  const StepOperand proj_op = proj.defined()
                                  ? StepOperand(proj, steps, kProjectionSlots)
                                  : StepOperand();
  at::Tensor h_prev;  // (N, P): each step's h_prev, for w_hh's gradient
  if (output_mask[4]) h_prev = at::empty({s.rows, s.out}, opts);

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pydl.lstm_layer_backward", [&] {
    using T = scalar_t;
    BackwardBuffers<T> b{whh_op,
                         proj_op,
                         go.const_data_ptr<T>(),
                         x0.const_data_ptr<T>(),
                         ws.const_data_ptr<T>(),
                         cs.const_data_ptr<T>(),
                         dgates.mutable_data_ptr<T>(),
                         dh.mutable_data_ptr<T>(),
                         dc.mutable_data_ptr<T>(),
                         dh_total.mutable_data_ptr<T>(),
                         scratch[0].mutable_data_ptr<T>(),
                         scratch[1].mutable_data_ptr<T>()};
    backward_loop<T>(steps, s, b);
    if (h_prev.defined()) {
      for (int64_t t = 0; t < steps.count(); ++t) {
        gather_previous(steps, t, out.const_data_ptr<T>(), h0.const_data_ptr<T>(), s.out,
                        h_prev.mutable_data_ptr<T>() + steps.offset(t) * s.out);
      }
    }
  });

  return lstm_layer_gemm_grads(dgates, dh, dc, input, h_prev, w_ih, dh_total, hidden_pre,
                               proj.defined(), output_mask);
}

}  // namespace
}  // namespace lstm_cpu
}  // namespace pydl

TORCH_LIBRARY_IMPL(pydl, CPU, m) {
  m.impl("lstm_layer", &pydl::lstm_cpu::lstm_layer_cpu);
  m.impl("lstm_layer_backward", &pydl::lstm_cpu::lstm_layer_backward_cpu);
}
