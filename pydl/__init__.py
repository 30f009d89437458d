"""pydl: fast C++/CUDA convolution, attention and LSTM kernels as drop-in torch.nn layers.

    import pydl
    print(pydl.info())                 # which backend each op uses, and why
    conv = pydl.nn.Conv2d(64, 64, 3, padding=1, activation="relu")
    model = pydl.convert(model)        # swap torch.nn layers for pydl's
"""

__version__ = "0.1.0"

from pydl import (  # noqa: F401
    _ext,
    nn,
    ops,
    reference,
)
from pydl._backend import FallbackError  # noqa: F401
from pydl._info import info  # noqa: F401
from pydl.convert import convert  # noqa: F401
