"""pydl.ops.attention_with_weights: attention that also returns its weights.

What torch.nn.MultiheadAttention computes with ``need_weights=True``: the
output and the attention weights (after dropout, as torch returns them),
averaged over the heads or per head. Torch leaves its fused path for this and
runs several passes over (N, H, L, S) tensors; pydl's CPU kernel
(torch.ops.pydl.attention_with_weights) works on blocks of whole score rows
that stay in cache: one GEMM for the scores, one exact softmax, the weights
written (or head-averaged) once, one GEMM for the output; its backward takes
the gradients of both the output and the weights.

Where that kernel does not serve the call (CUDA, CPU bfloat16) and pydl's
fused attention does, the output comes from the fused kernel and the weights
are rebuilt from its log-sum-exp in one extra pass (weights_from_lse), with
the fused kernel's own dropout decisions (torch.ops.pydl.attention_dropout_keep
for the same seed), so the weights are exactly the ones the output used.

Layout (N, heads, L, E) for the query and (N, kv_heads, S, E | Ev) for key
and value (query heads a multiple of kv heads); ``attn_mask`` bool (True =
attend) or additive float, broadcastable to (N, heads, L, S). A query row
that sees no key gives zero output and zero weights.
"""

from __future__ import annotations

import math

import torch

from pydl import _backend, _ext, reference
from pydl.ops.attention import _kernel_serves as fused_kernel_serves
from pydl.ops.attention import empty_attention, input_grad_fakes


def kernel_serves(query: torch.Tensor, dtype: torch.dtype | None = None) -> bool:
    """Whether pydl's attention-with-weights kernel runs for this query (CPU,
    float32 / float64); ``dtype``: the one the call will compute in, when it
    differs from the query's (autocast)."""
    dtype = query.dtype if dtype is None else dtype
    return (query.device.type == "cpu" and dtype in (torch.float32, torch.float64)
            and served(query, dtype))


def served(query: torch.Tensor, dtype: torch.dtype | None = None) -> bool:
    """Whether attention_with_weights runs on pydl's kernels for this query's
    device and dtype (the weights kernel, or the fused kernel plus
    weights_from_lse); ``dtype``: the one the call will compute in (autocast)."""
    dtype = query.dtype if dtype is None else dtype
    return _backend.explain("attention", query.device.type, dtype)[0] == _backend.PYDL


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
    n, heads, length = query.shape[:3]
    if heads == 0 or key.shape[1] == 0:
        # No query heads (empty results; averaged weights over no head: zeros)
        # or no key/value heads (rows that see no key: zeros), as the fused
        # attention gives; the ops are not called.
        keys = key.shape[2]
        shapes = [((n, heads, length, value.shape[-1]), query.dtype, 0.0),
                  ((n, length, keys) if average_heads else (n, heads, length, keys), query.dtype,
                   0.0)]
        out, weights = empty_attention(shapes, query, key, value, attn_mask)
        return out, weights
    # Keep decisions hash this seed, drawn from torch's generator on the
    # query's device, so torch.manual_seed reproduces the dropout pattern.
    seed = lambda: (torch.randint(0, 2**62, (1,), dtype=torch.int64, device=query.device)
                    if dropout_p > 0.0 else None)
    if kernel_serves(query) and _backend.use_pydl("attention", query):
        out, weights, _ = torch.ops.pydl.attention_with_weights(
            query, key, value, attn_mask, seed(), float(dropout_p), bool(is_causal), False,
            float(scale), bool(average_heads))
        return out, weights
    if _backend.use_pydl("attention", query) and fused_kernel_serves(query, value):
        dropout_seed = seed()
        out, lse = torch.ops.pydl.attention(query, key, value, attn_mask, dropout_seed,
                                            float(dropout_p), bool(is_causal), False, float(scale))
        return out, weights_from_lse(query, key, attn_mask, lse, scale, is_causal=is_causal,
                                     dropout_p=dropout_p, dropout_seed=dropout_seed,
                                     average_heads=average_heads)
    return _composed(query, key, value, attn_mask, dropout_p, is_causal, scale, average_heads)


def weights_from_lse(
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: torch.Tensor | None,
    lse: torch.Tensor,
    scale: float,
    *,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    dropout_seed: torch.Tensor | None = None,
    average_heads: bool = True,
) -> torch.Tensor:
    """The attention weights softmax(query key^T * scale + mask), per head
    (N, H, L, S) or averaged over the heads (N, L, S), from the fused kernel's
    log-sum-exp: one GEMM and one pass, no second softmax, differentiable
    (through ``lse`` too). With ``dropout_p`` > 0 the weights are the dropped-out
    ones (kept weights scaled by 1 / (1 - p)), decided as the fused kernel
    decided them for ``dropout_seed``. Top-left ``is_causal``; a row that sees
    no key (lse = -inf) is zeros."""
    if dropout_p > 0.0 and dropout_seed is None:
        raise ValueError("pydl.weights_from_lse: dropout_p > 0 needs the dropout_seed the fused "
                         "kernel used (a one-element int64 tensor)")
    dtype = query.dtype
    n, heads, length, _ = query.shape
    if key.shape[1] != heads:  # grouped-query heads
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
    keep = None
    if dropout_p > 0.0:
        keep = torch.ops.pydl.attention_dropout_keep(dropout_seed, n, heads, length, key.shape[2],
                                                     float(dropout_p))
    keep_scale = 1.0 / (1.0 - dropout_p) if dropout_p < 1.0 else 0.0
    # bf16/fp16 heads: the scores in float32 against the kernel's float32 lse,
    # cast once at the end (bf16-rounded scores minus a float32 lse lose the
    # normalization: 2-3x torch's own error, measured).
    low = dtype in (torch.float16, torch.bfloat16)
    with torch.autocast(query.device.type, enabled=False):
        if low:
            query, key = query.float(), key.float()
            if attn_mask is not None and attn_mask.is_floating_point():
                attn_mask = attn_mask.float()
        weights = _WeightsFromLse.apply(query, key, attn_mask, lse.to(query.dtype), keep,
                                        float(scale), keep_scale, bool(is_causal),
                                        bool(average_heads))
    return weights.to(dtype) if low else weights


class _WeightsFromLse(torch.autograd.Function):
    """W = exp(q k^T * scale + mask - lse) * keep * keep_scale, averaged over
    the heads or not. Its own backward because W's is short: with lse an input
    of its own (the fused op's backward takes lse's gradient),
    dL/ds = dL/dW * W elementwise and dL/dlse = -rowsum of that: one pass
    over the (N, H, L, S) weights, where autograd's chain of sub / exp / mul /
    mean backwards made five (the rebuilt weights cost 0.83x torch's module in
    bf16 training with dropout before)."""

    @staticmethod
    def forward(ctx, query, key, attn_mask, lse, keep, scale, keep_scale, is_causal, average):
        # In place after the one GEMM: each pass over the scores is a memory pass.
        weights = torch.matmul(query * scale, key.transpose(-2, -1))
        if is_causal:
            hidden = torch.ones(weights.shape[-2:], dtype=torch.bool, device=weights.device)
            weights.masked_fill_(hidden.triu_(1), float("-inf"))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                weights.masked_fill_(attn_mask.logical_not(), float("-inf"))
            else:
                weights.add_(attn_mask)
        weights.sub_(lse.masked_fill(torch.isneginf(lse), 0.0).unsqueeze(-1)).exp_()
        if keep is not None:
            weights.mul_(keep).mul_(keep_scale)
        ctx.save_for_backward(query, key, weights)
        ctx.scale, ctx.average = scale, average
        ctx.mask_shape = (attn_mask.shape if attn_mask is not None and attn_mask.dtype != torch.bool
                          else None)
        return weights.mean(dim=1) if average else weights

    @staticmethod
    def backward(ctx, grad_weights):
        query, key, weights = ctx.saved_tensors
        # float32 products even when backward() is called under autocast
        with torch.autocast(query.device.type, enabled=False):
            return _WeightsFromLse._backward(ctx, grad_weights, query, key, weights)

    @staticmethod
    def _backward(ctx, grad_weights, query, key, weights):
        if ctx.average:
            grad_weights = grad_weights.unsqueeze(1) / weights.shape[1]
        grad_scores = weights * grad_weights
        need = ctx.needs_input_grad
        g_q = torch.matmul(grad_scores, key).mul_(ctx.scale) if need[0] else None
        g_k = (torch.matmul(grad_scores.transpose(-2, -1), query).mul_(ctx.scale)
               if need[1] else None)
        g_mask = (grad_scores.sum_to_size(ctx.mask_shape)
                  if need[2] and ctx.mask_shape is not None else None)  # (a 0-dim mask's shape is falsy)
        g_lse = grad_scores.sum(dim=-1).neg_() if need[3] else None
        return g_q, g_k, g_mask, g_lse, None, None, None, None, None


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
    """Fake kernels for torch.ops.pydl.attention_with_weights (its autograd is in C++)."""

    @torch.library.register_fake("pydl::attention_with_weights")
    def _fake(query, key, value, attn_mask, dropout_seed, dropout_p, is_causal,
              causal_bottom_right, scale, average_heads):
        torch._check(query.dim() == 4, lambda: "pydl.attention_with_weights: query must be 4-D")
        n, h, length, _ = query.shape
        s = key.shape[2]
        weights = query.new_empty(n, length, s) if average_heads else query.new_empty(n, h, length, s)
        return query.new_empty(n, h, length, value.shape[-1]), weights, query.new_empty(n, h, length)

    @torch.library.register_fake("pydl::attention_dropout_keep")
    def _keep_fake(dropout_seed, batch, heads, query_len, key_len, dropout_p):
        return dropout_seed.new_empty((batch, heads, query_len, key_len), dtype=torch.bool)

    @torch.library.register_fake("pydl::attention_with_weights_backward")
    def _backward_fake(grad_out, grad_weights, query, key, value, attn_mask, dropout_seed, lse,
                       dropout_p, is_causal, causal_bottom_right, scale, average_heads,
                       output_mask):
        return input_grad_fakes(query, key, value, attn_mask, output_mask)

    # Autograd: csrc/attention/attention_autograd.cpp.


if _ext.loaded():
    _register()
