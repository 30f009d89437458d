"""pydl.ops.conv2d: act(conv2d(x, w) + bias + residual) in one kernel.

Calls ``torch.ops.pydl.conv2d`` when pydl's kernel serves the call (see
pydl/_backend.py), otherwise torch's conv2d followed by the same epilogue.
Registers the op's fake kernel (torch.compile / export); its autograd is in C++.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

from pydl import _backend, _ext

ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu")

IntOrPair = Union[int, Sequence[int]]


def _pair(value: IntOrPair, name: str) -> list[int]:
    if isinstance(value, int):
        return [value, value]
    value = list(value)
    if len(value) == 1:
        return value * 2
    if len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise ValueError(f"pydl.conv2d: {name} must be an int or a pair of ints, got {value}")
    return value


def torch_activation(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "none":
        return x
    if activation == "relu":
        return F.relu(x)
    if activation == "gelu":
        return F.gelu(x)
    if activation == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if activation == "silu":
        return F.silu(x)
    raise ValueError(f"pydl.conv2d: unknown activation {activation!r}; expected one of {ACTIVATIONS}")


def _same_padding(input, weight, stride, dilation):
    """torch's padding='same': returns (input, symmetric padding), pre-padding odd totals."""
    if stride != [1, 1]:
        raise ValueError("pydl.conv2d: padding='same' is not supported for strided convolutions")
    pads = []
    extra = [0, 0, 0, 0]  # F.pad order: left, right, top, bottom
    for dim, (d, k) in enumerate(zip(dilation, weight.shape[2:])):
        total = d * (k - 1)
        left = total // 2
        pads.append(left)
        if total - 2 * left:
            extra[2 * (1 - dim) + 1] = total - 2 * left
    if any(extra):
        input = F.pad(input, extra)
    return input, pads


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    activation: str = "none",
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same arguments and result as ``torch.nn.functional.conv2d``, plus a fused
    epilogue: ``activation(conv2d(input, weight, bias) + residual)`` with
    activation in {"none", "relu", "gelu", "gelu_tanh", "silu"}."""
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"pydl.conv2d: unknown activation {activation!r}; expected one of {ACTIVATIONS}"
        )
    if input.dim() == 3:  # unbatched (C, H, W), as torch accepts
        residual = residual.unsqueeze(0) if residual is not None else None
        out = conv2d(input.unsqueeze(0), weight, bias, stride, padding, dilation, groups,
                     activation, residual)
        return out.squeeze(0)
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            padding = [0, 0]
        elif padding == "same":
            input, padding = _same_padding(input, weight, stride, dilation)
        else:
            raise ValueError(f"pydl.conv2d: padding must be 'same', 'valid' or ints, got {padding!r}")
    else:
        padding = _pair(padding, "padding")
    if torch.is_autocast_enabled(input.device.type):
        dtype = torch.get_autocast_dtype(input.device.type)
        input, weight = input.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
        residual = residual.to(dtype) if residual is not None else None
    if _backend.use_pydl("conv2d", input):
        return torch.ops.pydl.conv2d(
            input, weight, bias, stride, padding, dilation, groups, activation, residual
        )
    return torch_conv2d(input, weight, bias, stride, padding, dilation, groups, activation, residual)


def torch_conv2d(input, weight, bias, stride, padding, dilation, groups, activation, residual):
    """The same function from torch's own ops: the fallback and the benchmarks' baseline."""
    out = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    if residual is not None:
        out = out + residual
    return torch_activation(out, activation)


def _register() -> None:
    """Fake kernels for torch.ops.pydl.conv2d (only when the extension loaded)."""

    @torch.library.register_fake("pydl::conv2d")
    def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups, activation, residual):
        torch._check(input.dim() == 4 and weight.dim() == 4, lambda: "pydl.conv2d: expected 4-D input and weight")
        n, _, h, w = input.shape
        out_h = (h + 2 * padding[0] - dilation[0] * (weight.shape[2] - 1) - 1) // stride[0] + 1
        out_w = (w + 2 * padding[1] - dilation[1] * (weight.shape[3] - 1) - 1) // stride[1] + 1
        fmt = suggest_memory_format(input)
        return input.new_empty((n, weight.shape[0], out_h, out_w)).contiguous(memory_format=fmt)

    @torch.library.register_fake("pydl::conv2d_backward")
    def _conv2d_backward_fake(grad_out, input, weight, bias, residual, out, stride, padding,
                              dilation, groups, activation, output_mask):
        return (
            torch.empty_like(input) if output_mask[0] else None,
            torch.empty_like(weight) if output_mask[1] else None,
            weight.new_empty((weight.shape[0],)) if output_mask[2] else None,
            torch.empty_like(grad_out) if output_mask[3] else None,
        )

    # Autograd: csrc/conv/conv2d_autograd.cpp (in C++: no Python per call).


if _ext.loaded():
    _register()
