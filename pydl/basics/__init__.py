"""The core of deep learning written out in NumPy: gradient descent, backprop, optimizers.

These are teaching-grade, checked implementations (tests compare them with the
closed-form least-squares solution, torch.autograd, finite differences and
torch.optim); the models in pydl.models use torch and pydl's kernels instead.
"""

from pydl.basics.gradient_descent import batch_gradient_descent, least_squares, mse_loss  # noqa: F401
from pydl.basics.mlp import MLP  # noqa: F401
from pydl.basics.optimizers import SGD, Adam, make_optimizer  # noqa: F401
