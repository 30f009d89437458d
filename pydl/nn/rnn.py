"""pydl.nn.LSTMCell: torch.nn.LSTMCell backed by pydl's fused LSTM cell.

A subclass of torch.nn.LSTMCell: same constructor arguments, parameter names,
initialization and state_dict; batched (B, I) and unbatched (I,) input.
"""

from __future__ import annotations

import torch

from pydl.ops.lstm import lstm_cell


class LSTMCell(torch.nn.LSTMCell):
    def forward(
        self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
            expected = input.shape[:-1] + (self.hidden_size,)
            for name, t in zip(("h0", "c0"), hx):
                if tuple(t.shape) != tuple(expected):
                    raise ValueError(
                        f"pydl.nn.LSTMCell: {name} must have shape {tuple(expected)}, got "
                        f"{tuple(t.shape)}"
                    )
        return lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
