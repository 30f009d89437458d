"""pydl.nn.Conv2d: torch.nn.Conv2d backed by pydl's conv2d kernels.

A subclass of torch.nn.Conv2d: the same constructor arguments (padding
'same'/'valid', padding_mode), parameter names, initialization and
state_dict, so checkpoints load either way, plus an optional fused
``activation`` and an optional ``residual`` argument to forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pydl.ops.conv import ACTIVATIONS, conv2d


class Conv2d(torch.nn.Conv2d):
    def __init__(self, *args, activation: str = "none", **kwargs):
        super().__init__(*args, **kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"pydl.nn.Conv2d: unknown activation {activation!r}; expected one of {ACTIVATIONS}"
            )
        self.activation = activation

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.activation == "none" else f"{text}, activation={self.activation!r}"

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """act(conv(input) + bias + residual); residual has the output's shape."""
        padding = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return conv2d(
            input,
            self.weight,
            self.bias,
            self.stride,
            padding,
            self.dilation,
            self.groups,
            self.activation,
            residual,
        )
