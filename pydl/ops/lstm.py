"""LSTM entry points: one step (``lstm_cell``, torch.nn.LSTMCell's layout) and
whole sequences (``lstm``, torch.nn.LSTM's semantics over packed rows).

``lstm_cell`` calls ``torch.ops.pydl.lstm_cell`` (two GEMMs + one fused
pointwise pass) when pydl's kernel serves the call, otherwise torch's own
cell. ``lstm`` runs ``torch.ops.pydl.lstm``, which calls ``lstm_layer`` per
layer and direction (the caller, pydl.nn.LSTM, falls back to torch as a
whole). Registers the ops' fake kernels; their autograd is C++
(csrc/lstm/lstm_autograd.cpp; ``lstm`` is composite, csrc/lstm/lstm_stack.cpp).
"""

from __future__ import annotations

import torch

from pydl import _backend, _ext


def lstm_cell(
    input: torch.Tensor,
    hx: tuple[torch.Tensor, torch.Tensor] | None,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor | None = None,
    b_hh: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, c) after one step, as ``torch.nn.LSTMCell``: input (B, I) or (I,),
    hx = (h0, c0) of (B, H) / (H,) or None for zeros, w_ih (4H, I),
    w_hh (4H, H), gate order (i, f, g, o)."""
    if input.dim() not in (1, 2):
        raise ValueError(f"pydl.lstm_cell: expected a 1-D or 2-D input, got {input.dim()}-D")
    unbatched = input.dim() == 1
    if unbatched:
        input = input.unsqueeze(0)
        hx = None if hx is None else (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
    if hx is None:
        zeros = input.new_zeros(input.shape[0], w_hh.shape[1])
        hx = (zeros, zeros)
    if input.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        # As torch's CUDA autocast rule for lstm_cell (lower precision): every
        # floating tensor but float64 in the autocast dtype. CPU autocast has
        # no lstm_cell rule, so nothing is cast there and the result keeps the
        # input's dtype, as torch's; torch's cell does run its inner linear
        # layers in bf16 there (autocast's linear rule), pydl's cell computes
        # in float32 (more accurate, not bit-equal). Torch's own cell, where
        # it runs, sees the autocast state itself.
        dtype = torch.get_autocast_dtype("cuda")
        cast = lambda t: _backend.autocast_to(t, dtype)
        input, hx = cast(input), (cast(hx[0]), cast(hx[1]))
        w_ih, w_hh, b_ih, b_hh = cast(w_ih), cast(w_hh), cast(b_ih), cast(b_hh)
    # On CUDA pydl's cell ran 0.7-3.2x torch's one step and 1.05-1.09x in a
    # 20-step training loop (H200, bf16, 2026-11-27): no clear win, so torch's
    # cell stays the default there (PYDL_EXPERIMENTAL_CUDA=1 runs pydl's).
    torch_is_default = input.is_cuda and not _backend.experimental_cuda()
    if not torch_is_default and _backend.use_pydl("lstm", input):
        h, c, _ = torch.ops.pydl.lstm_cell(input, hx[0], hx[1], w_ih, w_hh, b_ih, b_hh)
    else:
        h, c = torch._VF.lstm_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
    return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)


def lstm(
    data: torch.Tensor,
    batch_sizes: torch.Tensor | None,
    hx: tuple[torch.Tensor, torch.Tensor] | None,
    weights: list,
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A multi-layer (bi)LSTM over PackedSequence rows, as torch's ``_VF.lstm``.

    data: packed rows (N, I) (step 0's rows, then step 1's, ...) with
    batch_sizes (T,) int64 on the CPU, non-increasing; or a padded batch
    (T, B, I) time-major with batch_sizes None. hx = (h0 (L*D, B, P),
    c0 (L*D, B, H)), or None for zeros (padded only). weights: the flat list
    (w_ih, w_hh, b_ih, b_hh, w_hr) per layer and direction (index
    ``5 * (layer * D + direction)``), None where absent. Dropout (training
    only) acts between layers. Returns (output, h_n, c_n), output (N, D*P)
    for packed rows, (T, B, D*P) for a padded batch.
    The stack runs in C++ (``torch.ops.pydl.lstm``, over ``lstm_layer``).
    """
    if torch.is_autocast_enabled(data.device.type):
        # As torch's RNNs under autocast: every floating tensor but float64 in
        # the autocast dtype.
        dtype = torch.get_autocast_dtype(data.device.type)
        cast = lambda t: _backend.autocast_to(t, dtype)
        data = cast(data)
        hx = None if hx is None else (cast(hx[0]), cast(hx[1]))
        weights = [cast(w) for w in weights]
    h0, c0 = (None, None) if hx is None else hx
    return torch.ops.pydl.lstm(data, batch_sizes, h0, c0, weights, num_layers, dropout,
                               training, bidirectional)


def _register() -> None:
    """Fake kernels for torch.ops.pydl.lstm_cell and lstm_layer (extension loaded
    only); their autograd is C++ (csrc/lstm/lstm_autograd.cpp: a Python bridge
    per step cost more than the step)."""

    @torch.library.register_fake("pydl::lstm_cell")
    def _lstm_cell_fake(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
        torch._check(input.dim() == 2, lambda: "pydl.lstm_cell: expected a 2-D input")
        hidden = w_hh.shape[1]
        batch = input.shape[0]
        return (input.new_empty(batch, hidden), input.new_empty(batch, hidden),
                input.new_empty(batch, 4 * hidden))

    @torch.library.register_fake("pydl::lstm_cell_backward")
    def _lstm_cell_backward_fake(grad_hy, grad_cy, input, hx, cx, cy, workspace, w_ih, w_hh,
                                 output_mask):
        shapes = (input, hx, cx, w_ih, w_hh, w_ih[:, 0])
        return tuple(torch.empty_like(t) if m else None for t, m in zip(shapes, output_mask))

    _register_layer()


def _register_layer() -> None:
    """Fake kernels for torch.ops.pydl.lstm_layer and its backward."""

    @torch.library.register_fake("pydl::lstm_layer")
    def _lstm_layer_fake(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
        torch._check(input.dim() == 2, lambda: "pydl.lstm_layer: expected input rows (N, I)")
        rows, hidden = input.shape[0], w_hh.shape[0] // 4
        out = hidden if w_hr is None else w_hr.shape[0]
        # hy/cy come back contiguous whatever hx/cx's strides (the kernels clone them).
        return (input.new_empty(rows, out), hx.new_empty(hx.shape), cx.new_empty(cx.shape),
                input.new_empty(rows, 4 * hidden), input.new_empty(rows, hidden),
                input.new_empty(rows if w_hr is not None else 0, hidden))

    @torch.library.register_fake("pydl::lstm_layer_backward")
    def _lstm_layer_backward_fake(grad_output, grad_hy, grad_cy, input, batch_sizes, hx, cx,
                                  w_ih, w_hh, w_hr, output, gates, cells, hidden_pre, reverse,
                                  output_mask):
        like = (input, hx, cx, w_ih, w_hh, w_ih[:, 0], w_hr)
        return tuple(torch.empty_like(t) if m and t is not None else None
                     for t, m in zip(like, output_mask))


if _ext.loaded():
    _register()
