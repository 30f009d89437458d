"""pydl.nn.LSTM and pydl.nn.LSTMCell: torch.nn.LSTM / LSTMCell backed by
pydl's fused LSTM kernels.

Subclasses of torch's modules: same constructor arguments, parameter names,
initialization and state_dict, so a checkpoint loads either way. LSTM takes
(T, B, I), batch_first (B, T, I), unbatched (T, I) or a PackedSequence, like
torch's; calls pydl's kernels do not serve (other devices/dtypes) run torch's
own forward.
"""

from __future__ import annotations

import os

import torch
from torch.nn.utils.rnn import PackedSequence

from pydl import _backend
from pydl.ops.lstm import lstm, lstm_cell

# Which CUDA calls run pydl's LSTM by default (not under
# PYDL_EXPERIMENTAL_CUDA=1, which runs pydl's kernel on every call it serves):
# those its persistent kernel takes (no projection, not float64, hidden <=
# min(1024, 8 x SMs)) at batch <= 16, or packed at batch <= 32 with hidden <=
# 256, unless torch would run one of cuDNN's persistent algorithms there
# (below). Elsewhere pydl's cuBLAS loop ran 0.3-1.0x cuDNN, so those calls run
# torch's LSTM: a choice of the faster kernel, not a fallback (PYDL_STRICT=1
# does not object). Measured on an H200, 2026-11-28 (quick benchmarks):
# persistent kernel over cuDNN at batch 1-16, bf16 1.2-6.4x; float32 and fp16
# 1.2-5.6x where cuDNN runs its standard algorithm, 0.16-0.6x where it runs a
# persistent one; packed batch 32 hidden 256 1.8-2.3x in all three dtypes.
CUDA_DEFAULT_MAX_BATCH = 16
CUDA_DEFAULT_MAX_PACKED_BATCH = 32
CUDA_DEFAULT_MAX_PACKED_HIDDEN = 256
CUDA_DEFAULT_MAX_HIDDEN = 1024
# The persistent kernel runs one block per SM with at most 8 hidden units each
# (csrc/lstm/cuda/lstm_persistent.cu, kMaxUnits).
PERSISTENT_UNITS_PER_SM = 8
_DEVICE: dict[int, tuple[int, int, int]] = {}  # per device index: (major, minor, SMs)


def _device_facts(device: torch.device) -> tuple[int, int, int]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _DEVICE:
        props = torch.cuda.get_device_properties(index)
        _DEVICE[index] = (props.major, props.minor, props.multi_processor_count)
    return _DEVICE[index]


def _persistent_hidden_limit(device: torch.device) -> int:
    """The largest hidden size the persistent kernel takes on `device` (and
    that was measured)."""
    return min(CUDA_DEFAULT_MAX_HIDDEN, PERSISTENT_UNITS_PER_SM * _device_facts(device)[2])


def _torch_runs_cudnn_persistent(module: torch.nn.LSTM, data: torch.Tensor, batch: int,
                                 packed: bool, device_known: bool) -> bool:
    """Whether torch's LSTM would run one of cuDNN's persistent algorithms on
    this forward (the rule of torch's aten/src/ATen/native/cudnn/RNN.cpp,
    get_algo, restated): then cuDNN beat pydl's kernel on the H200 (float32
    and fp16 at hidden 64-128: 1.1-2.2 us per step against pydl's 3.7; fp16
    at batch 8-16: 3-6x). bf16 is left out: cuDNN ran it at 23 us per step
    even there. `device_known` False (under torch.compile tracing): assume
    the device clause holds, which picks cuDNN."""
    if packed or module.proj_size > 0 or data.dtype not in (torch.float32, torch.float16):
        return False
    if module.hidden_size <= 192:  # PERSIST_STATIC_SMALL_H (the forward's bound)
        return True
    if data.dtype != torch.float16:
        return False
    # PERSIST_STATIC: fp16, one layer, one direction, sizes multiples of 128,
    # and on sm_80+ cards with 98+ SMs but sm_86, batch a multiple of 8 <= 128.
    if not (module.num_layers == 1 and not module.bidirectional
            and module.hidden_size <= 1024 and module.hidden_size % 128 == 0
            and module.input_size % 128 == 0 and batch % 8 == 0 and batch <= 128):
        return False
    if not device_known:
        return True
    major, minor, sms = _device_facts(data.device)
    return major >= 8 and sms >= 98 and minor != 6


def _cudnn_is_faster(module: torch.nn.LSTM, input, data: torch.Tensor) -> bool:
    """Whether this CUDA call runs torch's LSTM by default (see above): what
    the persistent kernel does not take (a projection, float64, more rows or
    hidden units than it serves, CUDA-graph capture, PYDL_LSTM_PERSISTENT=0),
    and what cuDNN's persistent algorithms run faster."""
    if not data.is_cuda or _backend.experimental_cuda():
        return False
    if module.proj_size > 0 or data.dtype == torch.float64:
        return True
    tracing = torch.compiler.is_compiling()
    if tracing:
        # Traced: no device queries in the graph (the SM count, capture state
        # and environment are the run's, not the trace's); the measured bound.
        if module.hidden_size > CUDA_DEFAULT_MAX_HIDDEN:
            return True
    elif (module.hidden_size > _persistent_hidden_limit(data.device)
            or os.environ.get("PYDL_LSTM_PERSISTENT") == "0"
            or torch.cuda.is_current_stream_capturing()):
        return True
    packed = isinstance(input, PackedSequence)
    if packed:
        batch = int(input.batch_sizes[0]) if input.batch_sizes.numel() > 0 else 0
    else:
        batch = 1 if input.dim() < 3 else input.shape[0 if module.batch_first else 1]
    # The op's own limit, when lowered: batches past it would run the cuBLAS loop.
    limit = os.environ.get("PYDL_LSTM_PERSISTENT_MAX_BATCH", "")
    if not tracing and limit.isdigit() and batch > int(limit):
        return True
    if packed and batch > CUDA_DEFAULT_MAX_BATCH:
        return (batch > CUDA_DEFAULT_MAX_PACKED_BATCH
                or module.hidden_size > CUDA_DEFAULT_MAX_PACKED_HIDDEN)
    return batch > CUDA_DEFAULT_MAX_BATCH or _torch_runs_cudnn_persistent(
        module, data, batch, packed, device_known=not tracing)


class LSTM(torch.nn.LSTM):
    def forward(self, input, hx=None):
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        if torch.is_autocast_enabled(data.device.type) and data.dtype != torch.float64:
            # the dtype the kernel will see
            data = data.new_empty(0, dtype=torch.get_autocast_dtype(data.device.type))
        if not _backend.use_pydl("lstm", data) or _cudnn_is_faster(self, input, data):
            return super().forward(input, hx)
        if torch.jit.is_tracing():  # the tracer cannot record pydl::lstm's Tensor?[] weights
            if _backend.strict():
                raise _backend.FallbackError(
                    "PYDL_STRICT=1: pydl.nn.LSTM under torch.jit.trace would run torch's LSTM")
            return super().forward(input, hx)
        directions = 2 if self.bidirectional else 1
        out_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        states = self.num_layers * directions
        if packed:
            rows, batch_sizes, sorted_indices, unsorted_indices = input
            batch = int(batch_sizes[0]) if batch_sizes.numel() > 0 else 0
            unbatched = False
        else:
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"pydl.nn.LSTM: expected a 3-D input (or 2-D unbatched), got "
                    f"{input.dim()}-D of shape {tuple(input.shape)}"
                )
            unbatched = input.dim() == 2
            # A padded batch, time-major (T, B, I): the op takes it as is.
            rows = input.unsqueeze(1) if unbatched else (
                input.transpose(0, 1) if self.batch_first else input)
            batch = rows.shape[1]
            if rows.shape[2] != self.input_size:
                raise ValueError(
                    f"pydl.nn.LSTM: input has {rows.shape[2]} features, expected {self.input_size}"
                )
            batch_sizes = sorted_indices = unsorted_indices = None
        if hx is not None:
            hx = self._checked_states(hx, unbatched, states, batch, out_size)
            hx = self.permute_hidden(hx, sorted_indices)
        elif packed:  # the op makes the zeros of a padded batch itself
            hx = (rows.new_zeros(states, batch, out_size),
                  rows.new_zeros(states, batch, self.hidden_size))
        output, h_n, c_n = lstm(rows, batch_sizes, hx, self._layer_weights(), self.num_layers,
                                self.dropout, self.training, self.bidirectional)
        if packed:
            hidden = self.permute_hidden((h_n, c_n), unsorted_indices)
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), hidden
        if unbatched:
            return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        return (output.transpose(0, 1) if self.batch_first else output), (h_n, c_n)

    def _checked_states(self, hx, unbatched, states, batch, out_size):
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise ValueError("pydl.nn.LSTM: hx must be a pair (h0, c0) or None")
        h0, c0 = hx
        if unbatched:
            if h0.dim() != 2 or c0.dim() != 2:
                raise ValueError(
                    f"pydl.nn.LSTM: for unbatched 2-D input, h0 and c0 must be 2-D, got "
                    f"{h0.dim()}-D and {c0.dim()}-D"
                )
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        for name, t, size in (("h0", h0, out_size), ("c0", c0, self.hidden_size)):
            if tuple(t.shape) != (states, batch, size):
                raise ValueError(
                    f"pydl.nn.LSTM: {name} must have shape {(states, batch, size)} "
                    f"(num_layers*num_directions, batch, {'proj_size' if name == 'h0' and self.proj_size else 'hidden_size'}), "
                    f"got {tuple(t.shape)}"
                )
        return h0, c0

    def _layer_weights(self) -> list:
        """(w_ih, w_hh, b_ih, b_hh, w_hr) per layer and direction, one flat list,
        None where absent.

        The names are computed once per module shape; each call looks them up
        in ``_parameters`` first (ten ``getattr`` per call cost ~4 us, a tenth
        of a one-step call) and through ``getattr`` otherwise, so parametrized
        weights and ``torch.func.functional_call``'s substitutes are seen, as
        in torch's own forward. (torch's ``_flat_weights`` is not current for
        those until its ``_update_flat_weights`` runs.)
        """
        key = (self.num_layers, self.bidirectional)
        layout = self.__dict__.get("_pydl_weight_names")
        if layout is None or layout[0] != key:
            suffixes = ("", "_reverse")[: 2 if self.bidirectional else 1]
            names = [f"{name}_l{layer}{suffix}" for layer in range(self.num_layers)
                     for suffix in suffixes
                     for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")]
            layout = (key, names)
            self.__dict__["_pydl_weight_names"] = layout
        params = self._parameters
        return [params[n] if n in params else getattr(self, n, None) for n in layout[1]]


class LSTMCell(torch.nn.LSTMCell):
    def forward(
        self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Checked here for torch's messages; kept cheap (it runs once per step).
        if input.dim() not in (1, 2):
            raise ValueError(
                f"pydl.nn.LSTMCell: expected input of shape (batch, {self.input_size}) or "
                f"({self.input_size},), got {tuple(input.shape)}"
            )
        if input.shape[-1] != self.input_size:
            raise ValueError(
                f"pydl.nn.LSTMCell: input has {input.shape[-1]} features, expected "
                f"{self.input_size}"
            )
        if hx is not None:
            expected = (*input.shape[:-1], self.hidden_size)
            h0, c0 = hx
            if h0.shape != expected or c0.shape != expected:
                name, t = ("h0", h0) if h0.shape != expected else ("c0", c0)
                raise ValueError(
                    f"pydl.nn.LSTMCell: {name} must have shape {expected}, got "
                    f"{tuple(t.shape)}"
                )
        return lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
