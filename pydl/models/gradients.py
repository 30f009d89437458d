"""Gradient diagnostics: per-layer gradient norms, and the exploding-gradient demonstration.

A "layer" is a module that owns parameters directly (a Linear, a Conv2d, an
LSTM, a LayerNorm ...), named by its path in the model.
"""

from __future__ import annotations

import torch


def _layers(model: torch.nn.Module):
    for name, module in model.named_modules():
        params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if params:
            yield name or type(model).__name__, params


def layer_grad_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{layer name: L2 norm of its gradients} as 0-d tensors (no host sync)."""
    norms = {}
    for name, params in _layers(model):
        grads = [p.grad.detach().flatten() for p in params if p.grad is not None]
        if grads:
            norms[name] = torch.linalg.vector_norm(torch.cat(grads).float())
    return norms


def layer_grad_norms(model: torch.nn.Module) -> dict[str, float]:
    """{layer name: L2 norm of its parameters' current gradients}."""
    return {k: float(v) for k, v in layer_grad_tensors(model).items()}


def deep_lstm_task(n: int = 256, seq_len: int = 60, seed: int = 0):
    """A long-memory task: classify the sign of the first step's value, seen 60 steps earlier.

    Returns (X (n, seq_len, 1), y (n,)); the rest of the sequence is noise.
    """
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, seq_len, 1, generator=g) * 0.5
    y = (torch.rand(n, generator=g) < 0.5).long()
    X[:, 0, 0] = torch.where(y == 1, 1.0, -1.0)
    return X, y


def clipping_demo(clip_norm: float = 1.0, epochs: int = 4, seq_len: int = 60, num_layers: int = 4,
                  hidden: int = 32, learning_rate: float = 1.0, weight_scale: float = 3.0,
                  n: int = 256, seed: int = 0, progress: bool = False):
    """Train the same deep, long LSTM twice with plain SGD, without and with gradient clipping.

    The recurrent weights start large (``weight_scale`` x torch's init), the regime where
    backpropagation through time multiplies many Jacobians with norm > 1 and the
    gradient explodes. Returns {"unclipped": History, "clipped": History}; the unclipped
    run's loss blows up (or turns NaN) while the clipped one keeps training.
    """
    from pydl.models.bilstm import BiLSTMClassifier
    from pydl.models.training import fit

    X, y = deep_lstm_task(n, seq_len, seed)
    runs = {}
    for label, clip in (("unclipped", None), ("clipped", clip_norm)):
        torch.manual_seed(seed)
        model = BiLSTMClassifier(input_size=1, num_classes=2, lstm_layers=[hidden] * num_layers)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.startswith("rnns.") and "weight" in name:
                    p.mul_(weight_scale)
        runs[label] = fit(model, X, y, epochs=epochs, batch_size=32, learning_rate=learning_rate,
                          optimizer="sgd", clip_grad_norm=clip, seed=seed, progress=progress,
                          stop_on_nonfinite=True)
    return runs
