"""The one place where the toolkit's models choose their layers.

Each kernel-backed layer is pydl.nn's when pydl.nn has it and torch.nn's
otherwise, so the models switch to pydl's layers automatically as they land
(pydl.nn.LSTM, MultiheadAttention, ...). Every model in pydl.models builds
its layers from here and nowhere else.
"""

from __future__ import annotations

import torch

import pydl.nn

_KERNEL_LAYERS = ("Conv2d", "LSTM", "MultiheadAttention", "TransformerEncoderLayer")


def _pick(name: str) -> type:
    return getattr(pydl.nn, name) if hasattr(pydl.nn, name) else getattr(torch.nn, name)


Conv2d = _pick("Conv2d")
LSTM = _pick("LSTM")
MultiheadAttention = _pick("MultiheadAttention")
TransformerEncoderLayer = _pick("TransformerEncoderLayer")


def sources() -> dict[str, str]:
    """Which library each kernel-backed layer comes from, e.g. {'Conv2d': 'pydl.nn', ...}."""
    return {name: "pydl.nn" if hasattr(pydl.nn, name) else "torch.nn" for name in _KERNEL_LAYERS}


# Activations by name, for the models' layer lists (Keras-style strings).
_ACTIVATIONS = {
    "relu": torch.nn.ReLU,
    "gelu": torch.nn.GELU,
    "silu": torch.nn.SiLU,
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
    "elu": torch.nn.ELU,
    "leaky_relu": torch.nn.LeakyReLU,
    "linear": torch.nn.Identity,
    "none": torch.nn.Identity,
}
ACTIVATIONS = tuple(_ACTIVATIONS)


def check_activation(name, where: str = "") -> str:
    if not isinstance(name, str) or name.lower() not in _ACTIVATIONS:
        raise ValueError(f"{where}unknown activation {name!r}; expected one of {ACTIVATIONS}")
    return name.lower()


def activation(name: str) -> torch.nn.Module:
    return _ACTIVATIONS[check_activation(name)]()


def conv2d(in_channels: int, out_channels: int, kernel_size: int, activation_name: str = "none",
           padding="same") -> list[torch.nn.Module]:
    """Conv2d followed by its activation: fused into pydl's kernel when the layer supports it."""
    activation_name = check_activation(activation_name)
    fused = getattr(pydl.nn, "Conv2d", None) is Conv2d
    if fused:
        from pydl.ops.conv import ACTIVATIONS as FUSABLE

        name = "none" if activation_name == "linear" else activation_name
        if name in FUSABLE:
            return [Conv2d(in_channels, out_channels, kernel_size, padding=padding, activation=name)]
    return [Conv2d(in_channels, out_channels, kernel_size, padding=padding),
            activation(activation_name)]
