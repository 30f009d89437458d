"""pydl.basics: gradient descent vs least squares, hand-written backprop vs autograd and
finite differences, NumPy SGD/Adam vs torch.optim, and the argument checks."""

import numpy as np
import pytest
import torch

from pydl.basics import MLP, SGD, Adam, batch_gradient_descent, least_squares, make_optimizer


def _regression(m=200, n=4, seed=0):
    rng = np.random.default_rng(seed)
    X = np.c_[np.ones(m), rng.standard_normal((m, n - 1))]
    theta = rng.standard_normal(n)
    return X, X @ theta + 0.1 * rng.standard_normal(m)


def test_gradient_descent_reaches_least_squares():
    X, y = _regression()
    theta, history = batch_gradient_descent(X, y, learning_rate=0.1, iterations=2000)
    np.testing.assert_allclose(theta, least_squares(X, y), rtol=1e-8, atol=1e-10)
    assert len(history) == 2001
    assert np.all(np.diff(history) <= 1e-15), "full-batch GD with a small step never increases J"


def test_gradient_descent_too_large_step_diverges():
    X, y = _regression()
    _, history = batch_gradient_descent(X, y, learning_rate=5.0, iterations=50)
    assert history[-1] > 1e6 * history[0]


@pytest.mark.parametrize("bad", [
    {"X": np.ones(5), "y": np.ones(5)},
    {"X": np.ones((5, 2)), "y": np.ones(4)},
    {"X": np.ones((5, 2)), "y": np.ones((5, 2))},
    {"X": np.ones((5, 2)), "y": np.ones(5), "theta": np.ones(3)},
    {"X": np.ones((5, 2)), "y": np.ones(5), "learning_rate": 0},
])
def test_gradient_descent_bad_arguments(bad):
    with pytest.raises(ValueError):
        batch_gradient_descent(**bad)


def _torch_mlp_loss(params, X, y, activation):
    a = torch.from_numpy(X)
    n = len(params) // 2
    for k in range(n):
        z = a @ params[2 * k] + params[2 * k + 1]
        a = z if k == n - 1 else (torch.relu(z) if activation == "relu" else torch.sigmoid(z))
    return torch.nn.functional.cross_entropy(a, torch.from_numpy(y))


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_backprop_matches_autograd(activation):
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((13, 5)), rng.integers(0, 4, 13)
    mlp = MLP([5, 7, 6, 4], activation=activation, seed=2)
    for p in mlp.params[1::2]:  # non-zero biases so their gradients are exercised
        p += rng.standard_normal(p.shape) * 0.1
    loss, grads = mlp.loss_and_grads(X, y)
    tp = [torch.tensor(p, requires_grad=True) for p in mlp.params]
    tloss = _torch_mlp_loss(tp, X, y, activation)
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-12)
    for g, t in zip(grads, tp):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_backprop_matches_finite_differences(activation):
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((6, 3)), rng.integers(0, 3, 6)
    mlp = MLP([3, 5, 3], activation=activation, seed=4)
    _, grads = mlp.loss_and_grads(X, y)
    eps = 1e-6
    for p, g in zip(mlp.params, grads):
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + eps
            up = mlp.loss(X, y)
            p[idx] = old - eps
            down = mlp.loss(X, y)
            p[idx] = old
            assert (up - down) / (2 * eps) == pytest.approx(g[idx], rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("ours,theirs", [
    (lambda: SGD(lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    (lambda: SGD(lr=0.05, momentum=0.9, weight_decay=1e-2),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2)),
    (lambda: Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    (lambda: Adam(lr=0.003, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-3),
     lambda p: torch.optim.Adam(p, lr=0.003, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-3)),
])
def test_optimizers_match_torch_optim(ours, theirs):
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((20, 4)), rng.integers(0, 3, 20)
    mlp = MLP([4, 8, 3], seed=6)
    tp = [torch.tensor(p, requires_grad=True) for p in mlp.params]
    opt, topt = ours(), theirs(tp)
    for step in range(5):
        idx = np.arange(step * 4, step * 4 + 4)
        _, grads = mlp.loss_and_grads(X[idx], y[idx])
        opt.step(mlp.params, grads)
        topt.zero_grad()
        _torch_mlp_loss(tp, X[idx], y[idx], "relu").backward()
        topt.step()
    for p, t in zip(mlp.params, tp):
        np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.5), ("adam", 0.01)])
def test_mlp_learns(optimizer, lr):
    # Two interleaved spirals-lite: XOR-like blobs that no linear model separates.
    rng = np.random.default_rng(7)
    X = rng.standard_normal((400, 2))
    y = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(np.int64)
    mlp = MLP([2, 32, 2], activation="relu", seed=8)
    history = mlp.fit(X, y, epochs=60, batch_size=32, optimizer=optimizer, learning_rate=lr)
    assert history[-1] < 0.5 * history[0]
    assert mlp.accuracy(X, y) > 0.9


def test_mlp_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        MLP([2, 3], activation="swish")
    with pytest.raises(ValueError, match="layer_sizes"):
        MLP([2])
    mlp = MLP([2, 3])
    with pytest.raises(ValueError, match="X must have shape"):
        mlp.loss_and_grads(np.ones((4, 3)), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="y must have shape"):
        mlp.loss_and_grads(np.ones((4, 2)), np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="class labels"):
        mlp.loss_and_grads(np.ones((4, 2)), np.full(4, 3))
    with pytest.raises(ValueError, match="unknown optimizer"):
        mlp.fit(np.ones((4, 2)), np.zeros(4, dtype=int), optimizer="lbfgs")
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("rmsprop", lr=0.1)
