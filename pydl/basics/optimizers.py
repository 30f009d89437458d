"""SGD (with momentum) and Adam written out in NumPy, step for step as torch.optim does them.

Both update a list of parameter arrays in place from a matching list of
gradients, so they drive pydl.basics.MLP (or anything else holding arrays).
"""

from __future__ import annotations

import math

import numpy as np


class _Optimizer:
    def __init__(self, lr: float, weight_decay: float):
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.lr = lr
        self.weight_decay = weight_decay
        self.state: list[dict] | None = None

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        if len(params) != len(grads):
            raise ValueError(f"got {len(params)} parameters but {len(grads)} gradients")
        if self.state is None:
            self.state = [{} for _ in params]
        elif len(self.state) != len(params):
            raise ValueError("the parameter list changed between steps")
        for p, g, s in zip(params, grads, self.state):
            if p.shape != g.shape:
                raise ValueError(f"gradient shape {g.shape} does not match parameter {p.shape}")
            if self.weight_decay:
                g = g + self.weight_decay * p  # L2 added to the gradient, as torch.optim.SGD/Adam
            self._update(p, g, s)


class SGD(_Optimizer):
    """p -= lr * buf, buf = momentum * buf + g (buf = g on the first step): torch.optim.SGD."""

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum

    def _update(self, p, g, s):
        if self.momentum:
            buf = s.get("buf")
            s["buf"] = buf = g.copy() if buf is None else self.momentum * buf + g
            g = buf
        p -= self.lr * g


class Adam(_Optimizer):
    """Adam with bias correction, in torch.optim.Adam's order of operations."""

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.betas = tuple(betas)
        self.eps = eps

    def _update(self, p, g, s):
        b1, b2 = self.betas
        if not s:
            s.update(t=0, m=np.zeros_like(p), v=np.zeros_like(p))
        s["t"] += 1
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        bc1 = 1 - b1 ** s["t"]
        bc2 = 1 - b2 ** s["t"]
        # torch: denom = sqrt(v) / sqrt(bc2) + eps; p -= (lr / bc1) * m / denom
        denom = np.sqrt(s["v"]) / math.sqrt(bc2) + self.eps
        p -= (self.lr / bc1) * s["m"] / denom


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def make_optimizer(name: str, **kwargs) -> _Optimizer:
    try:
        cls = OPTIMIZERS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}") from None
    return cls(**kwargs)
