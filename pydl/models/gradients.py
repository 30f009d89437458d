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


def clipping_demo(X=None, y=None, clip_norm: float = 0.1, learning_rate: float = 20.0,
                  epochs: int = 10, num_layers: int = 4, hidden: int = 32, n: int | None = None,
                  seed: int = 0, progress: bool = False) -> dict:
    """Train the same deep (``num_layers`` stacked bidirectional layers) LSTM twice with plain
    SGD at a large step, without and with gradient-norm clipping.

    Data: (X, y) sequences, by default the digits read row by row (first ``n`` training
    samples). Without clipping, the first steep gradients throw the weights far off, the
    gates saturate and the loss diverges (to many times its starting value); clipping the
    norm to ``clip_norm`` bounds every update to learning_rate x clip_norm and the same
    network keeps training. Returns {"unclipped": History, "clipped": History}.
    """
    from pydl.models.bilstm import BiLSTMClassifier
    from pydl.models.training import fit

    if X is None:
        from pydl.datasets import load_digits

        X, _, y, _ = load_digits("sequences", seed=seed)
    if n is not None:
        X, y = X[:n], y[:n]
    runs = {}
    # Saturated gates produce denormal floats, which are slow on x86: flush them to zero.
    flush = torch.set_flush_denormal(True)
    try:
        for label, clip in (("unclipped", None), ("clipped", clip_norm)):
            torch.manual_seed(seed)
            model = BiLSTMClassifier(input_size=X.shape[-1], num_classes=int(y.max()) + 1,
                                     lstm_layers=[hidden] * num_layers)
            runs[label] = fit(model, X, y, epochs=epochs, batch_size=32,
                              learning_rate=learning_rate, optimizer="sgd", clip_grad_norm=clip,
                              seed=seed, progress=progress)
    finally:
        if flush:
            torch.set_flush_denormal(False)
    return runs
