"""Drop-in replacements for torch.nn layers, backed by pydl's kernels."""

from pydl.nn.conv import Conv2d  # noqa: F401
from pydl.nn.rnn import LSTM, LSTMCell  # noqa: F401
from pydl.nn import functional  # noqa: F401
from pydl.nn.attention import MultiheadAttention  # noqa: F401
from pydl.nn.transformer import TransformerEncoder, TransformerEncoderLayer  # noqa: F401
