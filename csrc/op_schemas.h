// Every pydl op schema, in one place: csrc/pydl.cpp defines the ops from
// these, and the CUDA emulator (tests/cuda_emulation) registers its copies
// of the CUDA entries under the same schemas, so the two cannot drift.
#pragma once

namespace pydl {
namespace schema {

// out = act(conv2d(input, weight) + bias + residual); act in
// {none, relu, gelu, gelu_tanh, silu}.
inline constexpr char kConv2d[] =
    "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
    "int[2] dilation, int groups, str activation, Tensor? residual) -> Tensor";

// Gradients of conv2d: (grad_input, grad_weight, grad_bias, grad_residual).
// `out` is the forward's output (enough for relu); smooth activations
// recompute the pre-activation. output_mask selects which grads are computed.
inline constexpr char kConv2dBackward[] =
    "conv2d_backward(Tensor grad_out, Tensor input, Tensor weight, Tensor? bias, "
    "Tensor? residual, Tensor out, int[2] stride, int[2] padding, int[2] dilation, "
    "int groups, str activation, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)";

// One LSTM step, torch.nn.LSTMCell's layout and gate order (i, f, g, o):
// (hy, cy, workspace); the workspace (activated gates, (B, 4H)) feeds the backward.
inline constexpr char kLstmCell[] =
    "lstm_cell(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
    "Tensor? b_hh) -> (Tensor, Tensor, Tensor)";

// Gradients (input, hx, cx, w_ih, w_hh, bias); bias's is shared by b_ih and b_hh.
inline constexpr char kLstmCellBackward[] =
    "lstm_cell_backward(Tensor grad_hy, Tensor grad_cy, Tensor input, Tensor hx, Tensor cx, "
    "Tensor cy, Tensor workspace, Tensor w_ih, Tensor w_hh, bool[6] output_mask) -> "
    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)";

// One LSTM layer, one direction, whole sequence, in PackedSequence's layout:
// input (N, I) = the rows of step 0, step 1, ...; batch_sizes (T,) int64 on
// the CPU, non-increasing (a padded (T, B, I) batch: [B] * T). reverse runs
// each sequence from its own last step. Optional projection w_hr (P, H).
// (output (N, P), hy (B, P), cy (B, H), gates, cells, hidden_pre): the last
// three (activated gates, cell states, pre-projection h or empty) feed the backward.
inline constexpr char kLstmLayer[] =
    "lstm_layer(Tensor input, Tensor batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, "
    "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse) -> "
    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)";

// A multi-layer, (bi)directional LSTM as torch's _VF.lstm, over lstm_layer
// (composite: its autograd is lstm_layer's). input: a padded batch (T, B, I)
// time-major with batch_sizes None, or packed rows (N, I) with batch_sizes.
// weights: (w_ih, w_hh, b_ih, b_hh, w_hr) per layer and direction, None
// where absent; hx/cx (L*D, B, *), or None for zeros (padded only). Dropout
// between layers when train. (output (T, B, D*P) or (N, D*P), h_n, c_n).
inline constexpr char kLstm[] =
    "lstm(Tensor input, Tensor? batch_sizes, Tensor? hx, Tensor? cx, Tensor?[] weights, "
    "int num_layers, float dropout, bool train, bool bidirectional) -> "
    "(Tensor, Tensor, Tensor)";

// Gradients (input, hx, cx, w_ih, w_hh, bias, w_hr); bias's is shared by b_ih and b_hh.
inline constexpr char kLstmLayerBackward[] =
    "lstm_layer_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, Tensor input, "
    "Tensor batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? w_hr, "
    "Tensor output, Tensor gates, Tensor cells, Tensor hidden_pre, bool reverse, "
    "bool[7] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)";

// Fused attention, (N, H, L, E) layout: out = softmax(scale * q k^T + mask) v
// with optional causal masking (top-left, or bottom-right alignment),
// grouped-query heads (Hq a multiple of Hk) and dropout keyed by
// dropout_seed; returns (out, lse), lse the log-sum-exp of each score row.
inline constexpr char kAttention[] =
    "attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask, "
    "Tensor? dropout_seed, float dropout_p, bool is_causal, bool causal_bottom_right, "
    "float scale) -> (Tensor, Tensor)";

// Gradients (query, key, value, attn_mask) from the saved out and lse;
// grad_lse is the gradient flowing into lse (None when lse was unused).
inline constexpr char kAttentionBackward[] =
    "attention_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, "
    "Tensor? attn_mask, Tensor? dropout_seed, Tensor out, Tensor lse, Tensor? grad_lse, "
    "float dropout_p, bool is_causal, bool causal_bottom_right, float scale, "
    "bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)";

// The same attention when the caller also wants the weights (after
// dropout): (out, weights, lse), weights (N, L, S) averaged over the heads
// when average_heads, else (N, Hq, L, S). MultiheadAttention's need_weights.
inline constexpr char kAttentionWithWeights[] =
    "attention_with_weights(Tensor query, Tensor key, Tensor value, Tensor? attn_mask, "
    "Tensor? dropout_seed, float dropout_p, bool is_causal, bool causal_bottom_right, "
    "float scale, bool average_heads) -> (Tensor, Tensor, Tensor)";

// Gradients (query, key, value, attn_mask) from those of out and weights
// (either may be None).
inline constexpr char kAttentionWithWeightsBackward[] =
    "attention_with_weights_backward(Tensor? grad_out, Tensor? grad_weights, Tensor query, "
    "Tensor key, Tensor value, Tensor? attn_mask, Tensor? dropout_seed, Tensor lse, "
    "float dropout_p, bool is_causal, bool causal_bottom_right, float scale, "
    "bool average_heads, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)";

// The dropout keep decisions the attention kernels make for dropout_seed
// (dropout_philox.h): bool (batch, heads, query_len, key_len) on the seed's
// device, True where a weight survives (and is scaled by 1 / (1 - p)). For
// rebuilding dropped-out weights outside a fused kernel, e.g. from its lse.
inline constexpr char kAttentionDropoutKeep[] =
    "attention_dropout_keep(Tensor dropout_seed, int batch, int heads, int query_len, "
    "int key_len, float dropout_p) -> Tensor";

}  // namespace schema
}  // namespace pydl
