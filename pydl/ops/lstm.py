"""pydl.ops.lstm_cell: one LSTM step with torch.nn.LSTMCell's layout.

Calls ``torch.ops.pydl.lstm_cell`` (two GEMMs + one fused pointwise pass)
when pydl's kernel serves the call, otherwise torch's own LSTM cell.
Registers the op's fake kernels and autograd.
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
    if _backend.use_pydl("lstm", input):
        h, c, _ = torch.ops.pydl.lstm_cell(input, hx[0], hx[1], w_ih, w_hh, b_ih, b_hh)
    else:
        h, c = torch._VF.lstm_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
    return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)


def _register() -> None:
    """Fake kernels and autograd for torch.ops.pydl.lstm_cell (extension loaded only)."""

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

    def setup_context(ctx, inputs, output):
        input, hx, cx, w_ih, w_hh, b_ih, b_hh = inputs
        _, cy, workspace = output
        ctx.save_for_backward(input, hx, cx, cy, workspace, w_ih, w_hh)
        ctx.has_bias = (b_ih is not None, b_hh is not None)

    def backward(ctx, grad_hy, grad_cy, _grad_workspace):
        input, hx, cx, cy, workspace, w_ih, w_hh = ctx.saved_tensors
        grad_hy = torch.zeros_like(cy) if grad_hy is None else grad_hy
        grad_cy = torch.zeros_like(cy) if grad_cy is None else grad_cy
        need = ctx.needs_input_grad
        mask = [need[0], need[1], need[2], need[3], need[4], need[5] or need[6]]
        g_input, g_hx, g_cx, g_w_ih, g_w_hh, g_bias = torch.ops.pydl.lstm_cell_backward(
            grad_hy, grad_cy, input, hx, cx, cy, workspace, w_ih, w_hh, mask
        )
        g_b_ih = g_bias if need[5] else None
        g_b_hh = g_bias if need[6] else None
        return g_input, g_hx, g_cx, g_w_ih, g_w_hh, g_b_ih, g_b_hh

    torch.library.register_autograd("pydl::lstm_cell", backward, setup_context=setup_context)


if _ext.loaded():
    _register()
