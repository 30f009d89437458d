"""pydl.ops.attention_with_weights: attention that also returns its weights.

What torch.nn.MultiheadAttention computes with ``need_weights=True``: the
output and the attention weights (after dropout, as torch returns them),
averaged over the heads or per head. Torch leaves its fused path for this and
runs several passes over (N, H, L, S) tensors; pydl's CPU kernel
(torch.ops.pydl.attention_with_weights) works on blocks of whole score rows
that stay in cache: one GEMM for the scores, one exact softmax, the weights
written (or head-averaged) once, one GEMM for the output; its backward takes
the gradients of both the output and the weights.

Layout (N, heads, L, E) for the query and (N, kv_heads, S, E | Ev) for key
and value (query heads a multiple of kv heads); ``attn_mask`` bool (True =
attend) or additive float, broadcastable to (N, heads, L, S). A query row
that sees no key gives zero output and zero weights.
"""

from __future__ import annotations

import math

import torch

from pydl import _backend, _ext, reference
from pydl.ops.attention import input_grad_fakes


def kernel_serves(query: torch.Tensor, dtype: torch.dtype | None = None) -> bool:
    """Whether pydl's attention-with-weights kernel runs for this query (CPU,
    float32 / float64); ``dtype``: the one the call will compute in, when it
    differs from the query's (autocast)."""
    dtype = query.dtype if dtype is None else dtype
    if query.device.type != "cpu" or dtype not in (torch.float32, torch.float64):
        return False
    return _backend.explain("attention", "cpu", dtype)[0] == _backend.PYDL


def attention_with_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    *,
    average_heads: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (N, H, L, Ev), weights (N, L, S) or (N, H, L, S)); see the module doc."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dim() != 4:
            raise ValueError(f"pydl.attention_with_weights: {name} must be 4-D (N, heads, L, E), "
                             f"got shape {tuple(t.shape)}")
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"pydl.attention_with_weights: dropout_p must be in [0, 1], got {dropout_p}")
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1]) if query.shape[-1] > 0 else 1.0
    if not (kernel_serves(query) and _backend.use_pydl("attention", query)):
        return _composed(query, key, value, attn_mask, dropout_p, is_causal, scale, average_heads)
    # Keep decisions hash this seed, drawn from torch's generator, so
    # torch.manual_seed reproduces the dropout pattern.
    seed = torch.randint(0, 2**62, (1,), dtype=torch.int64) if dropout_p > 0.0 else None
    out, weights, _ = torch.ops.pydl.attention_with_weights(
        query, key, value, attn_mask, seed, float(dropout_p), bool(is_causal), False,
        float(scale), bool(average_heads))
    return out, weights


def _composed(query, key, value, attn_mask, dropout_p, is_causal, scale, average_heads):
    """torch ops (the reference's math) where pydl's kernel does not serve the call."""
    hq, hk = query.shape[1], key.shape[1]
    if hq != hk:
        key = key.repeat_interleave(hq // hk, dim=1)
        value = value.repeat_interleave(hq // hk, dim=1)
    dropout_mask = None
    if dropout_p > 0.0:
        shape = (query.shape[0], hq, query.shape[2], key.shape[2])
        dropout_mask = torch.rand(shape, device=query.device) >= dropout_p
    return reference.attention_with_weights(query, key, value, attn_mask, dropout_p, is_causal,
                                            scale, dropout_mask=dropout_mask,
                                            average_heads=average_heads)


def _register() -> None:
    """Fake kernels and autograd for torch.ops.pydl.attention_with_weights."""

    @torch.library.register_fake("pydl::attention_with_weights")
    def _fake(query, key, value, attn_mask, dropout_seed, dropout_p, is_causal,
              causal_bottom_right, scale, average_heads):
        torch._check(query.dim() == 4, lambda: "pydl.attention_with_weights: query must be 4-D")
        n, h, length, _ = query.shape
        s = key.shape[2]
        weights = query.new_empty(n, length, s) if average_heads else query.new_empty(n, h, length, s)
        return query.new_empty(n, h, length, value.shape[-1]), weights, query.new_empty(n, h, length)

    @torch.library.register_fake("pydl::attention_with_weights_backward")
    def _backward_fake(grad_out, grad_weights, query, key, value, attn_mask, dropout_seed, lse,
                       dropout_p, is_causal, causal_bottom_right, scale, average_heads,
                       output_mask):
        return input_grad_fakes(query, key, value, attn_mask, output_mask)

    def setup_context(ctx, inputs, output):
        (query, key, value, attn_mask, dropout_seed, dropout_p, is_causal, bottom_right, scale,
         average_heads) = inputs
        _, _, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(query, key, value, attn_mask, dropout_seed, lse)
        ctx.flags = (dropout_p, is_causal, bottom_right, scale, average_heads)

    def backward(ctx, grad_out, grad_weights, _grad_lse):
        query, key, value, attn_mask, dropout_seed, lse = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask_grad = bool(need[3]) and attn_mask is not None and attn_mask.dtype != torch.bool
        g_q, g_k, g_v, g_mask = torch.ops.pydl.attention_with_weights_backward(
            grad_out, grad_weights, query, key, value, attn_mask, dropout_seed, lse, *ctx.flags,
            [need[0], need[1], need[2], mask_grad])
        return g_q, g_k, g_v, g_mask, None, None, None, None, None, None

    torch.library.register_autograd("pydl::attention_with_weights", backward,
                                    setup_context=setup_context)


if _ext.loaded():
    _register()
