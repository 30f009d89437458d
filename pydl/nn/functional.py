"""pydl.nn.functional: torch.nn.functional's signatures, backed by pydl's kernels."""

from pydl.ops.attention import scaled_dot_product_attention  # noqa: F401
