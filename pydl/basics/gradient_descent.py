"""Batch gradient descent for linear regression, and the closed form it should reach."""

from __future__ import annotations

import numpy as np


def _check_xy(X, y, theta=None):
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array (samples, features), got shape {X.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"y must be a 1-D array (samples,), got shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} samples but y has {y.shape[0]}")
    if theta is not None:
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (X.shape[1],):
            raise ValueError(f"theta must have shape ({X.shape[1]},) for X of shape {X.shape}, "
                             f"got {theta.shape}")
    return X, y, theta


def mse_loss(X, y, theta) -> float:
    """J(theta) = 1/(2m) * ||X theta - y||^2 (the 1/2 makes the gradient X^T r / m)."""
    X, y, theta = _check_xy(X, y, theta)
    r = X @ theta - y
    return float(r @ r / (2 * X.shape[0]))


def batch_gradient_descent(X, y, theta=None, learning_rate: float = 0.01, iterations: int = 1000):
    """Minimize mse_loss over theta using the full batch at every step.

    X: (m, n) design matrix (add a column of ones yourself for an intercept);
    y: (m,) targets; theta: (n,) start (zeros by default).
    Returns (theta, loss_history) with loss_history[k] the loss *before* step k
    and a final entry after the last step (iterations + 1 values).
    """
    X, y, theta = _check_xy(X, y, theta)
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    if int(iterations) != iterations or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations}")
    m = X.shape[0]
    theta = np.zeros(X.shape[1]) if theta is None else theta.copy()
    history = []
    for _ in range(int(iterations)):
        r = X @ theta - y
        history.append(float(r @ r / (2 * m)))
        theta -= learning_rate * (X.T @ r) / m  # gradient of J: X^T (X theta - y) / m
    r = X @ theta - y
    history.append(float(r @ r / (2 * m)))
    return theta, np.array(history)


def least_squares(X, y):
    """The closed-form minimizer of mse_loss (lstsq: stable even when X^T X is ill-conditioned)."""
    X, y, _ = _check_xy(X, y)
    return np.linalg.lstsq(X, y, rcond=None)[0]
