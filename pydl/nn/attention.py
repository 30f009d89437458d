"""pydl.nn.MultiheadAttention: torch.nn.MultiheadAttention on pydl's fused attention.

A subclass of torch.nn.MultiheadAttention: same constructor arguments,
parameter names, initialization and state_dict, and the same forward
(batch_first, key_padding_mask, attn_mask bool/float of (L, S) or
(B*heads, L, S), is_causal hint, need_weights, average_attn_weights,
unbatched input). The heads are strided views of the projections, so the
fused kernel reads them without a transpose copy. need_weights=True runs
pydl.ops.attention_with_weights: on the CPU in float32 / float64 one kernel
gives the output and the weights from one pass over blocks of whole score
rows; elsewhere (CUDA, CPU bfloat16) the fused kernel gives the output and
the weights are rebuilt from its log-sum-exp in one extra pass. Either way
the weights are torch's (after dropout, with the same dropped weights the
output used; averaged or per head) and differentiable. A query row whose
keys are all masked gives zeros (output and weights), where torch gives NaN.
One exception by choice: CPU bfloat16 with need_weights=True, no mask and no
dropout runs torch's module, faster there (see _torch_is_faster).

Served by torch's own module instead: add_bias_kv / add_zero_attn, and
need_weights=True with dropout active where pydl's attention does not serve
the device and dtype; PYDL_STRICT=1 makes those raise pydl.FallbackError.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pydl import _backend
from pydl.ops.attention import scaled_dot_product_attention
from pydl.ops.attention_weights import attention_with_weights, served, weights_from_lse


def _projected_dtype(query: torch.Tensor) -> torch.dtype:
    """The dtype the heads will have: the autocast dtype under autocast (which
    casts every floating dtype but float64, as for F.linear)."""
    device = query.device.type
    if (torch.is_autocast_enabled(device) and query.is_floating_point()
            and query.dtype != torch.float64):
        return torch.get_autocast_dtype(device)
    return query.dtype


class MultiheadAttention(torch.nn.MultiheadAttention):
    def _torch_reason(self, query: torch.Tensor, need_weights: bool) -> str | None:
        if self.bias_k is not None or self.add_zero_attn:
            return "add_bias_kv / add_zero_attn"
        if _backend.functorch_transform_active():
            return "a torch.func transform is active (pydl's ops have no functorch rules)"
        if (need_weights and self.training and self.dropout > 0.0
                and not served(query, _projected_dtype(query))):
            return "need_weights=True with dropout active (torch returns the dropped-out weights)"
        return None

    def _torch_is_faster(self, query, need_weights, attn_mask, key_padding_mask) -> bool:
        """CPU bfloat16, need_weights=True, no mask, no dropout: pydl's weights
        kernel serves float32 / float64 only, and its other route (the fused
        kernel, then the weights rebuilt from its lse in float32) ran at
        0.52x / 0.75x torch's module in inference / training at B8 L128 E512
        (8 heads) and 1.06x / 0.99x at B2 L1024 on this project's Sapphire
        Rapids, where torch's unfused path multiplies in bf16 on AMX. So such
        calls go to torch: a choice of the faster path, not a fallback
        (PYDL_STRICT=1 does not object). With dropout in training pydl's
        route was the faster (forward under no_grad / forward + backward,
        dropout 0.1: 1.66x / 1.10x at B8 L128, 1.58x / 1.39x at B2 L1024;
        torch's module then runs a separate dropout pass) and serves the call;
        with a mask it serves it too (fully masked rows give zeros where
        torch's module gives NaN)."""
        return (need_weights and query.device.type == "cpu" and attn_mask is None
                and key_padding_mask is None and not (self.training and self.dropout > 0.0)
                and _projected_dtype(query) == torch.bfloat16)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        reason = self._torch_reason(query, need_weights)
        if reason is not None:
            if _backend.strict():
                raise _backend.FallbackError(
                    f"PYDL_STRICT=1: pydl.nn.MultiheadAttention would fall back to torch: {reason}")
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)
        if self._torch_is_faster(query, need_weights, attn_mask, key_padding_mask):
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                "pydl.nn.MultiheadAttention: query, key and value must all be 3-D (batched) or "
                f"2-D (unbatched), got {query.dim()}-D, {key.dim()}-D, {value.dim()}-D")
        self_attention = query is key and key is value  # one fused projection GEMM
        unbatched = query.dim() == 2
        # Work in the caller's layout, (B, L, E) or (L, B, E): a transposed view
        # would make each projection copy its input first.
        batch_first = self.batch_first or unbatched
        if unbatched:
            if key_padding_mask is not None and key_padding_mask.shape != key.shape[:1]:
                raise ValueError(
                    "pydl.nn.MultiheadAttention: for unbatched (2-D) inputs key_padding_mask must "
                    f"be 1-D of shape ({key.shape[0]},), got shape {tuple(key_padding_mask.shape)}")
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if batch_first:
            (B, L, E), S = query.shape, key.shape[1]
        else:
            (L, B, E), S = query.shape, key.shape[0]
        if E != self.embed_dim or key.shape[-1] != self.kdim or value.shape[-1] != self.vdim:
            raise ValueError(
                f"pydl.nn.MultiheadAttention: expected feature sizes (query {self.embed_dim}, "
                f"key {self.kdim}, value {self.vdim}), got ({E}, {key.shape[-1]}, "
                f"{value.shape[-1]})")
        if key.shape[:2] != value.shape[:2] or key.shape[0 if batch_first else 1] != B:
            raise ValueError(
                f"pydl.nn.MultiheadAttention: key {tuple(key.shape)} and value "
                f"{tuple(value.shape)} must share (S, batch) with batch {B} of the query")
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "pydl.nn.MultiheadAttention: is_causal is a hint that attn_mask is the causal "
                "mask (as in torch); pass attn_mask too")

        H, hd = self.num_heads, self.head_dim
        q, k, v = self._project(query, key, value, self_attention)

        def heads(t, n):  # -> (B, H, n, hd): a strided view, no copy
            if batch_first:
                return t.view(B, n, H, hd).transpose(1, 2)
            return t.view(n, B, H, hd).permute(1, 2, 0, 3)

        q, k, v = heads(q, L), heads(k, S), heads(v, S)

        mask = self._merged_mask(attn_mask, key_padding_mask, B, L, S, q.dtype)
        causal = False
        if is_causal and key_padding_mask is None and not need_weights:
            mask, causal = None, True  # trust the hint, as torch does
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if need_weights and served(q):
            out, weights = attention_with_weights(q, k, v, mask, dropout_p,
                                                  average_heads=average_attn_weights)
        else:
            out = scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                               is_causal=causal, return_lse=need_weights)
            if need_weights:  # torch's SDPA ran (no dropout here: see _torch_reason)
                out, lse = out
                weights = weights_from_lse(q, k, mask, lse, hd ** -0.5,
                                           average_heads=average_attn_weights)
        out = (out.transpose(1, 2).reshape(B, L, E) if batch_first
               else out.permute(2, 0, 1, 3).reshape(L, B, E))
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)

        if unbatched:
            out = out.squeeze(0)
            weights = None if weights is None else weights.squeeze(0)
        return out, weights

    def _project(self, query, key, value, self_attention):
        E = self.embed_dim
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.split(E)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.split(E)
        if self._qkv_same_embed_dim and self_attention:
            return F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)

    def _merged_mask(self, attn_mask, key_padding_mask, B, L, S, dtype):
        """torch's masks (bool True = do NOT attend, or additive float) as one
        mask for the fused op (bool True = attend, or additive), broadcastable
        to (B, H, L, S)."""
        def canonical(m, name):
            if m is None:
                return None
            if m.dtype == torch.bool:
                return m.logical_not()
            if not m.is_floating_point():
                raise ValueError(f"pydl.nn.MultiheadAttention: {name} must be bool or float, "
                                 f"got {m.dtype}")
            return m.to(dtype)

        mask = canonical(attn_mask, "attn_mask")
        if mask is not None:
            if mask.dim() == 3:
                if mask.shape != (B * self.num_heads, L, S):
                    raise ValueError(
                        f"pydl.nn.MultiheadAttention: 3-D attn_mask must be "
                        f"({B * self.num_heads}, {L}, {S}), got {tuple(mask.shape)}")
                mask = mask.view(B, self.num_heads, L, S)
            elif mask.shape != (L, S):
                raise ValueError(f"pydl.nn.MultiheadAttention: 2-D attn_mask must be ({L}, {S}), "
                                 f"got {tuple(mask.shape)}")
        pad = canonical(key_padding_mask, "key_padding_mask")
        if pad is None:
            return mask
        if pad.shape != (B, S):
            raise ValueError(f"pydl.nn.MultiheadAttention: key_padding_mask must be ({B}, {S}), "
                             f"got {tuple(pad.shape)}")
        pad = pad.view(B, 1, 1, S)
        if mask is None:
            return pad
        if mask.dtype == torch.bool and pad.dtype == torch.bool:
            return mask & pad
        to_float = lambda m: (torch.zeros(m.shape, dtype=dtype, device=m.device)
                              .masked_fill(m.logical_not(), float("-inf"))
                              if m.dtype == torch.bool else m)
        return to_float(mask) + to_float(pad)
