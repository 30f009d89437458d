"""pydl.ops.scaled_dot_product_attention: torch's SDPA with pydl's fused kernel.

Same signature and semantics as ``torch.nn.functional.scaled_dot_product_attention``
(layout (batch..., heads, L, E)), plus:
  * ``return_lse=True`` also returns the log-sum-exp of each score row, shape
    (batch..., heads, L) (before dropout);
  * ``causal_alignment="bottom_right"``: with ``is_causal``, query i sees keys
    j <= i + S - L (the last query sees every key) instead of torch's
    top-left j <= i; ``is_causal`` may also be combined with ``attn_mask``
    (both apply; torch forbids the combination);
  * an additive float ``attn_mask`` that requires grad gets its gradient,
    summed over the dims it was broadcast along.
As torch's: a float ``attn_mask`` may be float32 whatever the query's dtype
(a float32 mask with bf16/fp16 queries computes in float32 on the CPU, so
the mask is not rounded to the half type; on CUDA pydl's kernels take it in
the half type, keeping the tensor cores, and torch's SDPA as it is; float64
queries take it as float64); under
autocast every floating input but float64 is cast to the autocast dtype;
zero query (or key/value) heads give an empty (or all-zero) result.
Rule for a query row that sees no key (its mask hides every key, or
bottom-right causal with L > S): its output is zeros and its lse is -inf;
no NaN reaches the output or the gradients.

Calls ``torch.ops.pydl.attention`` (CPU: float32/float64, and bfloat16 on
CPUs with bf16 units when a gradient or dropout is needed; CUDA: float16,
bfloat16, float32, float64; lse in float32 for the half types) when pydl's kernel
serves the call; otherwise torch's own SDPA, or pydl.reference for the
extras torch lacks. Registers the op's fake kernels (its autograd is in C++).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pydl import _backend, _ext, reference

CAUSAL_ALIGNMENTS = ("top_left", "bottom_right")


def _fail(message: str):
    raise ValueError(f"pydl.scaled_dot_product_attention: {message}")


def _heads(t: torch.Tensor) -> int:
    return t.shape[-3] if t.dim() >= 3 else 1


def _plan(query, key, value, attn_mask, dropout_p, enable_gqa, causal_alignment):
    """Validates the arguments; returns (batch dims, query heads, output batch dims)."""
    q_dim, k_dim, v_dim = query.dim(), key.dim(), value.dim()
    if q_dim < 2 or k_dim < 2 or v_dim < 2:
        _fail(f"query, key and value need at least 2 dims (L, E), got {q_dim}, {k_dim}, {v_dim}")
    if not (query.dtype == key.dtype == value.dtype) or not query.is_floating_point():
        _fail("query, key and value must share one floating-point dtype, got "
              f"{query.dtype}, {key.dtype}, {value.dtype}")
    if not (query.device == key.device == value.device):
        _fail(f"query, key and value must be on one device, got {query.device}, "
              f"{key.device}, {value.device}")
    q_shape, k_shape, v_shape = query.shape, key.shape, value.shape
    if k_shape[-1] != q_shape[-1]:
        _fail(f"key head dim {k_shape[-1]} differs from query head dim {q_shape[-1]}")
    if v_shape[:-1] != k_shape[:-1]:
        _fail(f"value of shape {tuple(v_shape)} does not match key of shape "
              f"{tuple(k_shape)} (all but the last dim must agree)")
    if causal_alignment not in CAUSAL_ALIGNMENTS:
        _fail(f"causal_alignment must be one of {CAUSAL_ALIGNMENTS}, got {causal_alignment!r}")
    if not 0.0 <= dropout_p <= 1.0:
        _fail(f"dropout_p must be in [0, 1], got {dropout_p}")
    hq = q_shape[-3] if q_dim >= 3 else 1
    hk = k_shape[-3] if k_dim >= 3 else 1
    # Key/value without heads (hk = 0) give query rows that see no key, as in torch.
    if enable_gqa:
        if q_dim < 3 or k_dim < 3 or (hk != 0 and hq % hk != 0):
            _fail(f"enable_gqa needs (..., heads, L, E) inputs with query heads ({hq}) a "
                  f"multiple of key/value heads ({hk})")
    elif hq != hk and hk not in (0, 1) and hq != 1:
        _fail(f"query has {hq} heads and key/value {hk}: they must match or broadcast "
              "(set enable_gqa=True for grouped-query attention)")
    batch = tuple(q_shape[:-3])
    if tuple(k_shape[:-3]) != batch:
        try:
            batch = tuple(torch.broadcast_shapes(batch, tuple(k_shape[:-3])))
        except RuntimeError:
            _fail(f"batch dims of query {tuple(q_shape[:-3])} and key/value "
                  f"{tuple(k_shape[:-3])} do not broadcast")
    heads = hq if enable_gqa or hk in (0, 1) or hq == hk else hk  # (else hq == 1)
    out_batch = batch + ((heads,) if max(q_dim, k_dim) >= 3 else ())
    if attn_mask is not None:
        if attn_mask.dtype not in (torch.bool, query.dtype, torch.float32):
            _fail(f"attn_mask must be bool or the query's dtype ({query.dtype}), or float32; "
                  f"got {attn_mask.dtype}")
        if attn_mask.device != query.device:
            _fail(f"attn_mask is on {attn_mask.device}, query on {query.device}")
        full = out_batch + (q_shape[-2], k_shape[-2])
        shape = tuple(attn_mask.shape)
        ok = len(shape) <= len(full) and all(
            m in (1, f) for m, f in zip(reversed(shape), reversed(full)))
        if not ok:
            _fail(f"attn_mask of shape {shape} does not broadcast to {full}")
    return batch, heads, out_batch


def _as_4d(t: torch.Tensor, batch: tuple, heads: int) -> torch.Tensor:
    """(N, heads, rows, cols) as a view where possible (broadcast dims keep stride 0)."""
    if t.dim() == 4 and len(batch) == 1 and t.shape[0] == batch[0] and t.shape[1] == heads:
        return t  # the common case, without the cost of expand
    t = t.expand(*batch, heads, t.shape[-2], t.shape[-1])
    return t if len(batch) == 1 else t.reshape(-1, heads, t.shape[-2], t.shape[-1])


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    causal_alignment: str = "top_left",
    return_lse: bool = False,
):
    """``softmax(query @ key^T * scale + mask) @ value``, torch's SDPA semantics;
    returns ``out`` or, with ``return_lse``, ``(out, lse)``. See the module doc."""
    if attn_mask is None and dropout_p == 0.0 and not return_lse:
        out = _plain_call(query, key, value, is_causal, scale, causal_alignment)
        if out is not None:
            return out
    query, key, value, attn_mask = _autocast(query, key, value, attn_mask)
    batch, heads, out_batch = _plan(query, key, value, attn_mask, dropout_p, enable_gqa,
                                    causal_alignment)
    L, E = query.shape[-2], query.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(E) if E > 0 else 1.0
    if heads == 0 or (key.dim() >= 3 and _heads(key) == 0):
        # No query heads (an empty result) or no key/value heads (rows that see
        # no key: zeros, lse -inf), as torch's SDPA; the op is not called.
        # Without key heads torch keeps the query's own batch dims (no
        # broadcast against the empty key).
        lead = out_batch if heads == 0 else tuple(query.shape[:-2])
        shapes = [(lead + (L, value.shape[-1]), query.dtype, 0.0)]
        if return_lse:
            shapes.append((lead + (L,), _lse_dtype(query), float("-inf")))
        result = empty_attention(shapes, query, key, value, attn_mask)
        return tuple(result) if return_lse else result[0]
    dtype = query.dtype
    if attn_mask is not None and attn_mask.is_floating_point() and attn_mask.dtype != dtype:
        # A float32 mask (as torch accepts) with a float64 query: exact as float64.
        # With a bf16/fp16 query the call computes in float32 (the half inputs
        # are exact in float32, the half kernels compute in float32 anyway):
        # the mask rounded to the half type would lose accuracy torch keeps.
        # On CUDA the inputs keep their half type: float32 there is the
        # CUDA-core kernel, many times slower than the tensor-core ones; the
        # mask is cast to the half type only for pydl's own kernel (see
        # _attention), torch's SDPA takes it as it is.
        if dtype == torch.float64:
            attn_mask = attn_mask.to(dtype)
        elif not query.is_cuda:
            query, key, value = query.float(), key.float(), value.float()
    result = _attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                        causal_alignment, return_lse, batch, heads, out_batch)
    if query.dtype == dtype:
        return result
    return (result[0].to(dtype), result[1]) if return_lse else result.to(dtype)


def _plain_call(query, key, value, is_causal, scale, causal_alignment):
    """The most common call, (N, H, L, E) float32 / float64 inputs of one
    device and head count, no mask, no dropout, no lse, autocast off, straight
    to the op; None for anything else, which takes the general path. Every
    check below is one the general path makes, so both reach the op with the
    same arguments; this one skips the planning for broadcast, GQA and masks
    (~4 us of Python per call, about half of a one-row decoding step's overhead)."""
    if not (query.dim() == key.dim() == value.dim() == 4
            and query.dtype == key.dtype == value.dtype
            and query.dtype in (torch.float32, torch.float64)
            and query.device == key.device == value.device
            and causal_alignment in CAUSAL_ALIGNMENTS):
        return None
    q_shape, k_shape = query.shape, key.shape
    E = q_shape[3]
    if not (q_shape[:2] == k_shape[:2] and k_shape[:3] == value.shape[:3] and E == k_shape[3]
            and q_shape[1] > 0 and E > 0):
        return None
    if torch.is_autocast_enabled(query.device.type):
        return None
    if query.is_cuda and _needs_extras(query, key, None, is_causal, causal_alignment, False):
        return None  # CUDA bottom-right causal: _use_kernel's rule, not use_pydl's alone
    if not _backend.use_pydl("attention", query) or not _kernel_serves(query, value):
        return None
    if scale is None:
        scale = 1.0 / math.sqrt(E)
    return torch.ops.pydl.attention(query, key, value, None, None, 0.0, bool(is_causal),
                                    causal_alignment == "bottom_right", float(scale))[0]


def _autocast(query, key, value, attn_mask):
    """As torch's SDPA under autocast: every floating input but float64 in the
    autocast dtype (bf16 on CPU: pydl's kernel in training, torch's in
    inference); a float mask too where the query was (float64 queries keep
    theirs, which then goes float64 as without autocast)."""
    device = query.device.type
    if not torch.is_autocast_enabled(device):
        return query, key, value, attn_mask
    dtype = torch.get_autocast_dtype(device)
    cast = lambda t: _backend.autocast_to(t, dtype) if t.device.type == device else t
    query, key, value = cast(query), cast(key), cast(value)
    if attn_mask is not None and query.dtype == dtype:
        attn_mask = cast(attn_mask)
    return query, key, value, attn_mask


def empty_attention(shapes, *inputs) -> tuple:
    """The outputs of an attention call with no heads: a tensor per (shape,
    dtype, fill) in ``shapes``, differentiable with respect to ``inputs``
    (tensors or None; zero gradients of their shapes), without calling an op.
    Each input joins the graph through the sum of an empty slice of it: a
    zero without a copy, whatever its values (inf, NaN)."""
    anchors = [(t if t.dim() else t.reshape(1))[..., :0].sum() for t in inputs
               if t is not None and t.requires_grad]
    device = next(t for t in inputs if t is not None).device
    results = []
    for shape, dtype, fill in shapes:
        result = torch.full(shape, fill, dtype=dtype, device=device)
        for anchor in anchors:
            result = result + anchor  # (a 0-dim float: the dtype stays)
        results.append(result)
    return tuple(results)


def _attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
               causal_alignment, return_lse, batch, heads, out_batch):
    """pydl's kernel, or torch's SDPA / the reference, on validated arguments."""
    L, S = query.shape[-2], key.shape[-2]
    if (_torch_is_faster(query, key, value, attn_mask, dropout_p, is_causal, causal_alignment,
                         return_lse)
            or not _use_kernel(query, key, attn_mask, is_causal, causal_alignment, return_lse)
            or not _kernel_serves(query, value)):
        return _fallback(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                         causal_alignment, return_lse, out_batch)
    q = _as_4d(query, batch, heads)
    k = _as_4d(key, batch, _heads(key))
    v = _as_4d(value, batch, _heads(value))
    mask = attn_mask
    if mask is not None and mask.is_floating_point() and mask.dtype != query.dtype:
        mask = mask.to(query.dtype)  # CUDA, float32 mask with half queries: the kernels' type
    if mask is not None and (mask.dim() > 4 or len(out_batch) > 2):
        mask = mask.expand(*out_batch, L, S).reshape(-1, heads, L, S)
    # The keep decisions are a hash of this seed: drawn from torch's generator
    # on the query's device (CUDA: its generator, read by the kernel in device
    # memory, so no host sync and CUDA-graph replays draw fresh seeds), so
    # torch.manual_seed reproduces the dropout pattern.
    seed = (torch.randint(0, 2**62, (1,), dtype=torch.int64, device=query.device)
            if dropout_p > 0.0 else None)
    out, lse = torch.ops.pydl.attention(q, k, v, mask, seed, float(dropout_p), bool(is_causal),
                                        causal_alignment == "bottom_right", float(scale))
    if len(out_batch) != 2:  # (else out is (batch, heads, L, Ev) already)
        out, lse = out.reshape(*out_batch, L, value.shape[-1]), lse.reshape(*out_batch, L)
    return (out, lse) if return_lse else out


def _use_kernel(query, key, attn_mask, is_causal, causal_alignment, return_lse) -> bool:
    """The backend policy (_backend.use_pydl), plus: on CUDA, where pydl's
    kernels passed the `gpu` tests but torch's SDPA stays the default (it is
    faster), an fp16 / bf16 call SDPA cannot express runs pydl's tensor-core
    kernel, not the O(L x S) reference of _fallback. (float32 / float64 calls
    keep the reference: pydl's CUDA-core kernel ran 0.06-0.21x torch's
    efficient backend, and the reference is cuBLAS matmuls.)"""
    if (query.is_cuda and query.dtype in (torch.float16, torch.bfloat16)
            and _needs_extras(query, key, attn_mask, is_causal, causal_alignment, return_lse)
            and _backend.verified_cuda_serves("attention", query)):
        return True
    return _backend.use_pydl("attention", query)


def _needs_extras(query, key, attn_mask, is_causal, causal_alignment, return_lse) -> bool:
    """Whether the call asks for what torch's SDPA cannot express: the lse,
    bottom-right causal alignment (L != S), or causal combined with a mask."""
    bottom_right = is_causal and causal_alignment == "bottom_right" and query.shape[-2] != key.shape[-2]
    return return_lse or bottom_right or (is_causal and attn_mask is not None)


def _torch_is_faster(query, key, value, attn_mask, dropout_p, is_causal, causal_alignment,
                     return_lse) -> bool:
    """CPU bf16 inference: torch's flash forward (oneDNN AMX micro-kernels) ran
    1.1-1.6x faster than pydl's (MKL bf16 tile GEMMs) on this project's Sapphire
    Rapids, while pydl's forward + backward ran 0.92-2.4x torch's (geomean
    1.35-1.57x) and torch's CPU flash kernel has no dropout. So a bf16 CPU call that torch's flash
    kernel can serve and that needs no gradient goes to torch: a choice of the
    faster kernel, not a fallback (PYDL_STRICT=1 does not object)."""
    if query.device.type != "cpu" or query.dtype != torch.bfloat16 or dropout_p > 0.0:
        return False
    if _needs_extras(query, key, attn_mask, is_causal, causal_alignment, return_lse):
        return False
    tensors = (query, key, value) + ((attn_mask,) if attn_mask is not None else ())
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


# The CUDA kernels' largest head dim (csrc/attention/cuda/attention_kernels.h).
CUDA_MAX_HEAD_DIM = 256


def _kernel_serves(query, value) -> bool:
    """Argument limits of the kernels beyond device and dtype (raises under PYDL_STRICT=1)."""
    if query.device.type != "cuda" or max(query.shape[-1], value.shape[-1]) <= CUDA_MAX_HEAD_DIM:
        return True
    if _backend.strict():
        raise _backend.FallbackError(
            f"PYDL_STRICT=1: attention head dims ({query.shape[-1]}, {value.shape[-1]}) exceed "
            f"the CUDA kernels' {CUDA_MAX_HEAD_DIM}; the call would fall back to torch")
    return False


def _fallback(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
              causal_alignment, return_lse, out_batch):
    """torch's SDPA; pydl.reference for what torch's op cannot express."""
    if not _needs_extras(query, key, attn_mask, is_causal, causal_alignment, return_lse):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask,
                                              dropout_p=dropout_p, is_causal=is_causal,
                                              scale=scale, enable_gqa=enable_gqa)
    dropout_mask = None
    if dropout_p > 0.0:  # materializes L x S: the fallback only
        shape = out_batch + (query.shape[-2], key.shape[-2])
        dropout_mask = torch.rand(shape, device=query.device) >= dropout_p
    # fp16/bf16: computed in float32 like the kernels, the lse returned in float32.
    dtype = query.dtype
    compute = _lse_dtype(query)
    if compute != dtype:
        query, key, value = query.to(compute), key.to(compute), value.to(compute)
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(compute)
    with torch.autocast(query.device.type, enabled=False):  # or its matmuls go back to bf16
        result = reference.scaled_dot_product_attention(
            query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
            dropout_mask=dropout_mask, causal_alignment=causal_alignment, return_lse=return_lse)
    if compute == dtype:
        return result
    return (result[0].to(dtype), result[1]) if return_lse else result.to(dtype)


def _lse_dtype(query: torch.Tensor) -> torch.dtype:
    """The lse's dtype: fp16/bf16 inputs are computed in float32 (CPU and CUDA) and their lse kept so."""
    if query.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return query.dtype


def input_grad_fakes(query, key, value, attn_mask, output_mask):
    """Fake (dq, dk, dv, dmask) of an attention backward op: shaped like the
    inputs; a mask gradient only for a float mask."""
    mask_grad = output_mask[3] and attn_mask is not None and attn_mask.dtype != torch.bool
    return (
        query.new_empty(query.shape) if output_mask[0] else None,
        key.new_empty(key.shape) if output_mask[1] else None,
        value.new_empty(value.shape) if output_mask[2] else None,
        attn_mask.new_empty(attn_mask.shape) if mask_grad else None,
    )


def _register() -> None:
    """Fake kernels for torch.ops.pydl.attention (extension loaded only)."""

    @torch.library.register_fake("pydl::attention")
    def _attention_fake(query, key, value, attn_mask, dropout_seed, dropout_p, is_causal,
                        causal_bottom_right, scale):
        torch._check(query.dim() == 4, lambda: "pydl.attention: query must be 4-D")
        n, h, length, _ = query.shape
        return (query.new_empty(n, h, length, value.shape[-1]),
                query.new_empty(n, h, length, dtype=_lse_dtype(query)))

    @torch.library.register_fake("pydl::attention_backward")
    def _attention_backward_fake(grad_out, query, key, value, attn_mask, dropout_seed, out, lse,
                                 grad_lse, dropout_p, is_causal, causal_bottom_right, scale,
                                 output_mask):
        return input_grad_fakes(query, key, value, attn_mask, output_mask)

    # Autograd: csrc/attention/attention_autograd.cpp (in C++: no Python per call).


if _ext.loaded():
    _register()
