"""A multi-layer perceptron with hand-written backpropagation (NumPy).

Hidden layers: affine + sigmoid or ReLU; output: affine + softmax, trained on
the mean cross-entropy. ``loss_and_grads`` is the backward pass written out
with the chain rule, layer by layer; tests check it against torch.autograd
and finite differences.
"""

from __future__ import annotations

import itertools

import numpy as np

from pydl.basics.optimizers import _Optimizer, make_optimizer


def _sigmoid(z):
    # Split by sign so exp never overflows.
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1 / (1 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1 + e)
    return out


# name -> (activation, derivative expressed through the activation's output a and input z)
ACTIVATIONS = {
    "sigmoid": (_sigmoid, lambda z, a: a * (1 - a)),
    "relu": (lambda z: np.maximum(z, 0), lambda z, a: (z > 0).astype(z.dtype)),
}


def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class MLP:
    def __init__(self, layer_sizes, activation: str = "relu", seed: int | None = 0,
                 dtype=np.float64):
        sizes = list(layer_sizes)
        if len(sizes) < 2 or not all(int(s) == s and s > 0 for s in sizes):
            raise ValueError(f"layer_sizes must list >= 2 positive ints (inputs, ..., classes), "
                             f"got {layer_sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of "
                             f"{sorted(ACTIVATIONS)}")
        self.layer_sizes = [int(s) for s in sizes]
        self.activation = activation
        rng = np.random.default_rng(seed)
        self.params: list[np.ndarray] = []  # [W1, b1, W2, b2, ...], W_k of shape (in, out)
        for fan_in, fan_out in itertools.pairwise(sizes):
            # He init for ReLU, Xavier/Glorot for sigmoid: keeps activations from vanishing.
            scale = np.sqrt(2.0 / fan_in) if activation == "relu" else np.sqrt(1.0 / fan_in)
            self.params.append((rng.standard_normal((fan_in, fan_out)) * scale).astype(dtype))
            self.params.append(np.zeros(fan_out, dtype=dtype))

    @property
    def num_classes(self) -> int:
        return self.layer_sizes[-1]

    def _check(self, X, y=None):
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.layer_sizes[0]:
            raise ValueError(f"X must have shape (samples, {self.layer_sizes[0]}), got {X.shape}")
        if y is None:
            return X, None
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise ValueError(f"y must have shape ({X.shape[0]},) for X of shape {X.shape}, "
                             f"got {y.shape}")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= self.num_classes:
            raise ValueError(f"y must hold integer class labels in [0, {self.num_classes})")
        return X, y

    def forward(self, X, cache: list | None = None):
        """Logits for X; when cache is a list, appends (input, pre-activation, output) per layer."""
        act, _ = ACTIVATIONS[self.activation]
        a = X
        n_layers = len(self.params) // 2
        for k in range(n_layers):
            W, b = self.params[2 * k], self.params[2 * k + 1]
            z = a @ W + b
            out = z if k == n_layers - 1 else act(z)
            if cache is not None:
                cache.append((a, z, out))
            a = out
        return a

    def loss(self, X, y) -> float:
        X, y = self._check(X, y)
        return float(-log_softmax(self.forward(X))[np.arange(len(y)), y].mean())

    def loss_and_grads(self, X, y):
        """(mean softmax cross-entropy, [dW1, db1, dW2, db2, ...]) by backpropagation."""
        X, y = self._check(X, y)
        cache: list = []
        logits = self.forward(X, cache)
        logp = log_softmax(logits)
        m = X.shape[0]
        loss = float(-logp[np.arange(m), y].mean())
        # d(mean CE)/d(logits) = (softmax - onehot) / m
        delta = np.exp(logp)
        delta[np.arange(m), y] -= 1
        delta /= m
        _, dact = ACTIVATIONS[self.activation]
        grads: list = [None] * len(self.params)
        for k in reversed(range(len(cache))):
            a_in, _, _ = cache[k]
            grads[2 * k] = a_in.T @ delta  # dL/dW = input^T . dL/dz
            grads[2 * k + 1] = delta.sum(axis=0)
            if k > 0:
                _, z_prev, a_prev = cache[k - 1]
                # through this layer's weights, then the previous layer's activation
                delta = (delta @ self.params[2 * k].T) * dact(z_prev, a_prev)
        return loss, grads

    def predict(self, X):
        X, _ = self._check(X)
        return self.forward(X).argmax(axis=1)

    def accuracy(self, X, y) -> float:
        X, y = self._check(X, y)
        return float((self.predict(X) == y).mean())

    def fit(self, X, y, epochs: int = 10, batch_size: int = 32, optimizer="sgd",
            learning_rate: float = 0.1, seed: int | None = 0):
        """Mini-batch training; optimizer is 'sgd', 'adam' or a pydl.basics optimizer.

        Returns the mean training loss of each epoch.
        """
        X, y = self._check(X, y)
        if isinstance(optimizer, str):
            optimizer = make_optimizer(optimizer, lr=learning_rate)
        elif not isinstance(optimizer, _Optimizer):
            raise TypeError(f"optimizer must be 'sgd', 'adam' or a pydl.basics optimizer, "
                             f"got {type(optimizer).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rng = np.random.default_rng(seed)
        history = []
        for _ in range(epochs):
            order = rng.permutation(len(y))
            total = 0.0
            for start in range(0, len(y), batch_size):
                idx = order[start:start + batch_size]
                loss, grads = self.loss_and_grads(X[idx], y[idx])
                optimizer.step(self.params, grads)
                total += loss * len(idx)
            history.append(total / len(y))
        return history
