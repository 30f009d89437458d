"""Python entry points of pydl's ops: torch.ops.pydl.* with fake kernels,
autograd and the fallback to torch's own ops."""

from pydl.ops.conv import conv2d  # noqa: F401
from pydl.ops.lstm import lstm, lstm_cell  # noqa: F401
from pydl.ops.attention import scaled_dot_product_attention  # noqa: F401
from pydl.ops.attention_weights import attention_with_weights  # noqa: F401
